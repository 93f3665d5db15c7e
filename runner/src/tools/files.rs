//! `read_file`, `write_file`, `edit_file` and `list_directory`.
//!
//! Every path these tools print is escaped (`crate::printable`), so that a name with a newline
//! or a terminal escape cannot forge output; listed names come escaped from the sandbox.

use serde::Deserialize;

use super::{Failure, ToolContext, ToolOutcome, parse_input};
use crate::printable;
use crate::sandbox::{DirEntry, MAX_READ_BYTES, SandboxError};

/// Lines returned when the model gives no `limit`: enough for most source files, and the
/// output cap still applies.
pub(super) const DEFAULT_READ_LINES: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadInput {
    path: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

pub(super) async fn read_file(
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, Failure> {
    let input: ReadInput = parse_input("read_file", input)?;
    let offset = input.offset.unwrap_or(1);
    let limit = input.limit.unwrap_or(DEFAULT_READ_LINES);
    if offset == 0 {
        return Err(Failure::Model(
            "offset is 1-based: use 1 for the first line".into(),
        ));
    }
    if limit == 0 {
        return Err(Failure::Model("limit must be at least 1".into()));
    }
    let bytes = read_whole(ctx, &input.path).await?;
    let text = String::from_utf8_lossy(&bytes);
    line_window(&text, &printable::escape(&input.path), offset, limit).map(ToolOutcome::ok)
}

/// The file's bytes; a file too large to read whole comes with a way to read parts of it.
async fn read_whole(ctx: &ToolContext<'_>, path: &str) -> Result<Vec<u8>, Failure> {
    match ctx.sandbox.read_file(path).await {
        Ok(bytes) => Ok(bytes),
        Err(e @ SandboxError::FileTooLarge { .. }) => Err(Failure::Model(format!(
            "{e}; use run_command with head, tail, grep or sed -n to look at parts of it"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Lines `offset..offset+limit` (1-based) with their line endings, plus a note saying where
/// the window is when it is not the whole file.
fn line_window(text: &str, path: &str, offset: usize, limit: usize) -> Result<String, Failure> {
    if text.is_empty() {
        return Ok("(empty file)".into());
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let total = lines.len();
    if offset > total {
        return Err(Failure::Model(format!(
            "offset {offset} is past the end of {path}, which has {total} lines"
        )));
    }
    let end = offset.saturating_add(limit - 1).min(total);
    let mut window = lines[offset - 1..end].concat();
    if offset > 1 || end < total {
        if !window.ends_with('\n') {
            window.push('\n');
        }
        window.push_str(&format!(
            "[lines {offset}-{end} of {total}; use offset and limit to read other lines]"
        ));
    }
    Ok(window)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteInput {
    path: String,
    content: String,
}

pub(super) async fn write_file(
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, Failure> {
    let input: WriteInput = parse_input("write_file", input)?;
    ctx.sandbox
        .write_file(&input.path, input.content.as_bytes())
        .await?;
    Ok(ToolOutcome::ok(format!(
        "wrote {} bytes to {}",
        input.content.len(),
        printable::escape(&input.path)
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditInput {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

pub(super) async fn edit_file(
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, Failure> {
    let input: EditInput = parse_input("edit_file", input)?;
    let shown = printable::escape(&input.path);
    // Files above the read limit are refused here, so the text held below is bounded too.
    let bytes = read_whole(ctx, &input.path).await?;
    // Lossy decoding would silently rewrite the bytes that are not UTF-8.
    let text = String::from_utf8(bytes).map_err(|_| {
        Failure::Model(format!(
            "{shown} is not valid UTF-8 text; edit_file only edits text files"
        ))
    })?;
    let (edited, count) = replace(&text, &input, &shown, MAX_READ_BYTES)?;
    ctx.sandbox
        .write_file(&input.path, edited.as_bytes())
        .await?;
    let noun = if count == 1 {
        "occurrence"
    } else {
        "occurrences"
    };
    Ok(ToolOutcome::ok(format!(
        "replaced {count} {noun} in {shown}"
    )))
}

/// The edited text and the number of replacements, or why the edit is refused. `path` is the
/// path as shown to the model. A result larger than `limit` bytes is refused before it is
/// built: `replace_all` of a short string by a long one could otherwise multiply the file
/// (8 MB of one-byte matches, each replaced by 250 bytes, is 2 GB of runner memory).
fn replace(
    text: &str,
    input: &EditInput,
    path: &str,
    limit: u64,
) -> Result<(String, usize), Failure> {
    let old = input.old_string.as_str();
    if old.is_empty() {
        return Err(Failure::Model(
            "old_string must not be empty; to create or overwrite a whole file use write_file"
                .into(),
        ));
    }
    if old == input.new_string {
        return Err(Failure::Model(
            "old_string and new_string are identical; there is nothing to change".into(),
        ));
    }
    let count = text.matches(old).count();
    match count {
        0 => {
            return Err(Failure::Model(format!(
                "old_string was not found in {path}; read the file and copy the exact text, \
                 including whitespace and indentation"
            )));
        }
        1 => {}
        _ if input.replace_all => {}
        n => {
            return Err(Failure::Model(format!(
                "old_string occurs {n} times in {path}; include more context to make it \
                 unique, or set replace_all"
            )));
        }
    }
    let size =
        edited_size(text.len(), old.len(), input.new_string.len(), count).unwrap_or(u64::MAX);
    if size > limit {
        return Err(Failure::Model(format!(
            "the edit would make {path} {size} bytes, more than the {limit}-byte limit for a \
             file the tools read or edit; replace fewer occurrences or a shorter text"
        )));
    }
    Ok((text.replace(old, &input.new_string), count))
}

/// Bytes of `text_len` after `count` replacements of `old_len` bytes by `new_len` bytes;
/// `None` when that does not fit in a `u64`.
fn edited_size(text_len: usize, old_len: usize, new_len: usize, count: usize) -> Option<u64> {
    let [text_len, old_len, new_len, count] =
        [text_len, old_len, new_len, count].map(|n| u64::try_from(n).ok());
    let (text_len, old_len, new_len, count) = (text_len?, old_len?, new_len?, count?);
    // Every match lies in the text, so the removed bytes never exceed it.
    let kept = text_len.checked_sub(old_len.checked_mul(count)?)?;
    kept.checked_add(new_len.checked_mul(count)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListInput {
    path: Option<String>,
}

pub(super) async fn list_directory(
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, Failure> {
    let input: ListInput = parse_input("list_directory", input)?;
    let path = input.path.as_deref().unwrap_or(".");
    let entries = ctx.sandbox.list_dir(path).await?;
    Ok(ToolOutcome::ok(format_entries(&entries)))
}

fn format_entries(entries: &[DirEntry]) -> String {
    if entries.is_empty() {
        return "(empty directory)".into();
    }
    entries
        .iter()
        .map(|e| {
            // `name` is escaped by the sandbox: one entry, one line.
            if e.is_dir {
                format!("{}/", e.name)
            } else {
                format!("{} ({} bytes)", e.name, e.size)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(text: &str, offset: usize, limit: usize) -> String {
        match line_window(text, "f.txt", offset, limit) {
            Ok(w) => w,
            Err(Failure::Model(m)) => panic!("unexpected refusal: {m}"),
            Err(Failure::Cancelled) => panic!("unexpected cancel"),
        }
    }

    #[test]
    fn whole_file_is_returned_verbatim() {
        assert_eq!(window("a\nb\nc", 1, 10), "a\nb\nc");
        assert_eq!(window("a\r\nb\r\n", 1, 10), "a\r\nb\r\n");
        assert_eq!(window("", 1, 10), "(empty file)");
    }

    #[test]
    fn partial_window_says_where_it_is() {
        assert_eq!(
            window("1\n2\n3\n4\n5\n", 2, 2),
            "2\n3\n[lines 2-3 of 5; use offset and limit to read other lines]"
        );
        assert_eq!(
            window("1\n2\n3", 3, 100),
            "3\n[lines 3-3 of 3; use offset and limit to read other lines]"
        );
        assert_eq!(
            window("1\n2\n3", 1, 1),
            "1\n[lines 1-1 of 3; use offset and limit to read other lines]"
        );
    }

    #[test]
    fn huge_limit_does_not_overflow() {
        assert_eq!(
            window("1\n2\n", 2, usize::MAX),
            "2\n[lines 2-2 of 2; use offset and limit to read other lines]"
        );
    }

    #[test]
    fn offset_past_the_end_is_refused() {
        match line_window("1\n2\n", "f.txt", 3, 1) {
            Err(Failure::Model(m)) => {
                assert_eq!(m, "offset 3 is past the end of f.txt, which has 2 lines")
            }
            _ => panic!("expected a refusal"),
        }
    }

    fn edit(old: &str, new: &str, replace_all: bool) -> EditInput {
        EditInput {
            path: "f.txt".into(),
            old_string: old.into(),
            new_string: new.into(),
            replace_all,
        }
    }

    #[test]
    fn edits_up_to_the_limit_are_built_and_beyond_it_refused() {
        // "abab" → "xyzxyz": 6 bytes.
        let (text, count) = match replace("abab", &edit("ab", "xyz", true), "f.txt", 6) {
            Ok(done) => done,
            Err(_) => panic!("an edit to exactly the limit is allowed"),
        };
        assert_eq!((text.as_str(), count), ("xyzxyz", 2));
        match replace("abab", &edit("ab", "xyz", true), "f.txt", 5) {
            Err(Failure::Model(m)) => assert!(
                m.starts_with("the edit would make f.txt 6 bytes, more than the 5-byte limit"),
                "{m}"
            ),
            _ => panic!("expected a refusal"),
        }
        // Shrinking edits of a file at the limit stay allowed.
        assert!(replace("abab", &edit("ab", "", true), "f.txt", 4).is_ok());
    }

    #[test]
    fn edited_size_is_exact_and_checked() {
        assert_eq!(edited_size(10, 2, 5, 3), Some(19));
        assert_eq!(edited_size(10, 2, 0, 5), Some(0));
        assert_eq!(edited_size(1, 1, usize::MAX, 2), None);
    }

    #[test]
    fn entries_show_kind_and_size() {
        let entries = [
            DirEntry {
                name: "a.txt".into(),
                is_dir: false,
                size: 3,
            },
            DirEntry {
                name: "src".into(),
                is_dir: true,
                size: 4096,
            },
        ];
        assert_eq!(format_entries(&entries), "a.txt (3 bytes)\nsrc/");
        assert_eq!(format_entries(&[]), "(empty directory)");
    }
}
