//! Finding the `runner` and `stigmer-server` executables: an explicit path (flag or
//! environment) first, then next to the `stigmer` executable (one `cargo build` or one
//! install directory holds all three), then `PATH`.

use std::path::{Path, PathBuf};

use super::LocalError;

pub const RUNNER: &str = "runner";
pub const SERVER: &str = "stigmer-server";

pub fn locate(
    name: &str,
    explicit: Option<&Path>,
    flag: &str,
    variable: &str,
) -> Result<PathBuf, LocalError> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            std::path::absolute(path).map_err(|e| LocalError::io(path, e))
        } else {
            Err(LocalError::Config(format!(
                "{} (from {flag} / {variable}) is not an executable file",
                path.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(path) = beside.as_ref().filter(|p| is_executable(p)) {
        return Ok(path.clone());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    });
    on_path.ok_or_else(|| {
        LocalError::Config(format!(
            "cannot find the `{name}` executable next to stigmer{} or on PATH; build it with \
             `cargo build -p {name}`, or pass {flag} (or set {variable})",
            beside
                .as_ref()
                .and_then(|p| p.parent())
                .map(|d| format!(" ({})", d.display()))
                .unwrap_or_default()
        ))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_must_be_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("runner");
        std::fs::write(&plain, "").expect("write");
        let err = locate(RUNNER, Some(&plain), "--runner-bin", "STIGMER_RUNNER_BIN")
            .expect_err("not executable");
        assert!(err.to_string().contains("--runner-bin"), "{err}");
        let sh = Path::new("/bin/sh");
        assert_eq!(
            locate(RUNNER, Some(sh), "--runner-bin", "STIGMER_RUNNER_BIN").expect("found"),
            sh
        );
    }

    #[test]
    fn a_missing_binary_says_how_to_get_it() {
        let err = locate(
            "surely-not-a-binary",
            None,
            "--runner-bin",
            "STIGMER_RUNNER_BIN",
        )
        .expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("cargo build -p surely-not-a-binary"), "{msg}");
        assert!(msg.contains("STIGMER_RUNNER_BIN"), "{msg}");
    }
}
