//! Where `stigmer local` keeps its files. One data directory holds everything, so that two
//! platforms (for example a test's and the user's) never share a PID file, a log or a port
//! record.

use std::path::{Path, PathBuf};

use crate::args::Component;

use super::LocalError;

#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// `--data-dir` / `STIGMER_HOME` when given, else `$HOME/.stigmer`. Made absolute, because
    /// the supervisor and the runner run in other working directories.
    pub fn resolve(data_dir: Option<&Path>) -> Result<Self, LocalError> {
        let root = match data_dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|home| PathBuf::from(home).join(".stigmer"))
                .ok_or_else(|| {
                    LocalError::Config(
                        "$HOME is not set; pass --data-dir or set STIGMER_HOME".into(),
                    )
                })?,
        };
        let root = std::path::absolute(&root).map_err(|e| LocalError::io(&root, e))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The control plane's database directory (`stigmer-server --data-dir`).
    pub fn server_data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `SANDBOX_ROOT_DIR` of the runner: one directory per session below it.
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }

    /// The runner's working directory. Its own, so that the runner's `./.env` lookup never
    /// picks up a file from wherever `stigmer local start` happened to be typed.
    pub fn runner_cwd(&self) -> PathBuf {
        self.root.join("runner")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log(&self, component: Component) -> PathBuf {
        self.logs().join(format!("{}.log", component.name()))
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn pid_file(&self, component: Component) -> PathBuf {
        self.run().join(format!("{}.pid", component.name()))
    }

    /// Held (flock) by the live supervisor for its whole life: the kernel releases it when the
    /// supervisor dies, however it dies, which is what makes stale PID files detectable.
    pub fn lock_file(&self) -> PathBuf {
        self.run().join("supervisor.lock")
    }

    /// The supervisor's view of the platform, for `status` and for a detaching `start`.
    pub fn state_file(&self) -> PathBuf {
        self.run().join("state.json")
    }

    /// Creates every directory the platform writes to, private to the user (0700 from the
    /// start: the database, the keys and the sandboxes hold the user's data). Directories an
    /// older version left open are made private too.
    pub fn create_all(&self) -> Result<(), LocalError> {
        use std::os::unix::fs::DirBuilderExt as _;
        for dir in [
            self.root.clone(),
            self.server_data(),
            self.workspace(),
            self.runner_cwd(),
            self.logs(),
            self.run(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| LocalError::io(&dir, e))?;
            set_private(&dir);
        }
        Ok(())
    }
}

/// Best effort: on a shared machine the data directory should not be readable by others.
fn set_private(dir: &Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o077 != 0) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_under_the_data_dir() {
        let p = Paths::resolve(Some(Path::new("/tmp/sd"))).expect("resolves");
        assert_eq!(p.server_data(), Path::new("/tmp/sd/data"));
        assert_eq!(
            p.log(Component::Runner),
            Path::new("/tmp/sd/logs/runner.log")
        );
        assert_eq!(
            p.pid_file(Component::Supervisor),
            Path::new("/tmp/sd/run/supervisor.pid")
        );
        assert_eq!(p.state_file(), Path::new("/tmp/sd/run/state.json"));
    }

    #[test]
    fn relative_data_dir_becomes_absolute() {
        let p = Paths::resolve(Some(Path::new("rel/dir"))).expect("resolves");
        assert!(p.root().is_absolute());
        assert!(p.root().ends_with("rel/dir"));
    }
}
