//! Lexical checks on the paths tools give, done before touching the filesystem.
//!
//! This is not what confines the tools (cap-std does that, beneath the session directory,
//! symlinks included); it turns the obvious escapes into a clear message and turns absolute
//! paths inside the session into the relative paths cap-std needs.

use std::path::{Component, Path, PathBuf};

use super::SandboxError;
use crate::printable;

/// Resolves `raw` to a path relative to the session directory `base` (canonical), without
/// `.` or `..` components. `"."` stands for the directory itself. Errors show `raw` escaped
/// (see [`printable`]).
pub(crate) fn relative_to_session(base: &Path, raw: &str) -> Result<PathBuf, SandboxError> {
    if raw.is_empty() {
        return Err(SandboxError::InvalidPath {
            path: printable::escape(raw),
            reason: "the path is empty",
        });
    }
    if raw.contains('\0') {
        return Err(SandboxError::InvalidPath {
            path: printable::escape(raw),
            reason: "the path contains a NUL byte",
        });
    }
    let escape = || SandboxError::PathEscape {
        path: printable::escape(raw),
    };
    let path = Path::new(raw);
    let inside = if path.is_absolute() {
        path.strip_prefix(base).map_err(|_| escape())?
    } else {
        path
    };
    let mut kept: Vec<&std::ffi::OsStr> = Vec::new();
    for component in inside.components() {
        match component {
            Component::Normal(name) => kept.push(name),
            Component::CurDir => {}
            // `..` is resolved by name, not by following symlinks: the model means the
            // parent of what it wrote, and the result can only stay inside.
            Component::ParentDir => {
                kept.pop().ok_or_else(escape)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    if kept.is_empty() {
        return Ok(PathBuf::from("."));
    }
    Ok(kept.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(raw: &str) -> Result<PathBuf, SandboxError> {
        relative_to_session(Path::new("/srv/sandboxes/s1"), raw)
    }

    fn ok(raw: &str) -> PathBuf {
        resolve(raw).expect("path inside the sandbox")
    }

    fn assert_escape(raw: &str) {
        match resolve(raw) {
            Err(SandboxError::PathEscape { path }) => assert_eq!(path, raw),
            other => panic!("{raw}: expected PathEscape, got {other:?}"),
        }
    }

    #[test]
    fn relative_paths_stay_relative() {
        assert_eq!(ok("a/b.txt"), PathBuf::from("a/b.txt"));
        assert_eq!(ok("./a/./b"), PathBuf::from("a/b"));
        assert_eq!(ok("a/../b"), PathBuf::from("b"));
        assert_eq!(ok("."), PathBuf::from("."));
        assert_eq!(ok("a/.."), PathBuf::from("."));
    }

    #[test]
    fn absolute_paths_inside_become_relative() {
        assert_eq!(
            ok("/srv/sandboxes/s1/src/main.rs"),
            PathBuf::from("src/main.rs")
        );
        assert_eq!(ok("/srv/sandboxes/s1"), PathBuf::from("."));
    }

    #[test]
    fn escapes_are_refused() {
        assert_escape("../x");
        assert_escape("a/../../x");
        assert_escape("..");
        assert_escape("/etc/passwd");
        assert_escape("/srv/sandboxes/s1/../s2/x");
        // A sibling whose name starts with the session's name is still outside.
        assert_escape("/srv/sandboxes/s10/x");
    }

    #[test]
    fn escape_message_names_the_path() {
        let err = resolve("../x").expect_err("escape");
        assert_eq!(err.to_string(), "path '../x' is outside the sandbox");
    }

    #[test]
    fn refusals_show_the_path_escaped() {
        let err = resolve("../a\nb").expect_err("escape");
        assert_eq!(err.to_string(), "path '../a\\nb' is outside the sandbox");
    }

    #[test]
    fn empty_and_nul_paths_are_invalid() {
        assert!(matches!(resolve(""), Err(SandboxError::InvalidPath { .. })));
        assert!(matches!(
            resolve("a\0b"),
            Err(SandboxError::InvalidPath { .. })
        ));
    }
}
