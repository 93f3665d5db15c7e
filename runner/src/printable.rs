//! Names and paths as tools print them: one unambiguous line each.
//!
//! A file name may hold any byte except `/` and NUL. Printed verbatim, a name containing a
//! newline forges extra lines of a listing (`"a\nsecret.txt (12 bytes)"`), and terminal escape
//! sequences or bidirectional-text controls change what the model (or a person reading the
//! log) sees. So every name or path a tool prints goes through here:
//!
//! - `\n`, `\r`, `\t` become those two-character escapes; other ASCII control characters
//!   (`\x1b` ...) become `\xNN`, and other Unicode control, line/paragraph separator and
//!   bidirectional formatting characters become `\u{NNNN}`;
//! - bytes that are not UTF-8 become `\xNN`;
//! - a backslash becomes `\\`, so an escape can never be confused with a name that spells one
//!   out (a file literally named `a\x1b` is shown as `a\\x1b`).
//!
//! Everything else, non-ASCII letters included, is shown as it is.

use std::fmt::Write as _;

/// `raw` (a name as the filesystem stores it, any bytes) in printable form.
pub fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            push_byte(&mut out, *byte);
        }
    }
    out
}

/// `raw` (a UTF-8 name or path) in printable form.
pub fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    push_escaped(&mut out, raw);
    out
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => push_byte(out, c as u8),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

fn push_byte(out: &mut String, byte: u8) {
    let _ = write!(out, "\\x{byte:02x}");
}

/// The characters the CLI escapes on a terminal too (`stigmer_contract::text`).
fn needs_escape(c: char) -> bool {
    stigmer_contract::text::hides_or_reorders(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_unchanged() {
        for name in [
            "a.txt",
            "src",
            "my file (1).rs",
            "naïve—ü.md",
            "日本語",
            "don't",
        ] {
            assert_eq!(escape(name), name);
            assert_eq!(escape_bytes(name.as_bytes()), name);
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\nsecret.txt (12 bytes)"),
            "a\\nsecret.txt (12 bytes)"
        );
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape("del\x7f"), "del\\x7f");
        assert_eq!(escape("nul\0"), "nul\\x00");
        assert_eq!(escape("c1\u{85}"), "c1\\u{0085}");
        assert_eq!(escape("line\u{2028}sep"), "line\\u{2028}sep");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_stay_unambiguous() {
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_ne!(escape("a\\nb"), escape("a\nb"));
        assert_eq!(escape_bytes(b"\\xff"), "\\\\xff");
        assert_ne!(escape_bytes(b"\\xff"), escape_bytes(b"\xff"));
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"bad\xff\xfe.txt"), "bad\\xff\\xfe.txt");
        // A truncated multi-byte sequence, then valid text.
        assert_eq!(escape_bytes(b"\xe6\x97x"), "\\xe6\\x97x");
        assert_eq!(escape_bytes("é\n".as_bytes()), "é\\n");
    }

    #[test]
    fn output_is_always_one_printable_line() {
        let all: Vec<u8> = (0..=255).collect();
        let shown = escape_bytes(&all);
        assert!(
            shown.chars().all(|c| !c.is_control()),
            "control character left in {shown:?}"
        );
        assert!(!shown.contains('\n'));
    }
}
