//! The local platform's own credentials: a random client key (for `stigmer agent/run/
//! execution`) and a separate random runner key, one pair per data directory.
//!
//! Before these, every local user and every tool command knew the one well-known key that
//! opened the whole API, `Claim` included (which hands out secret runtime env). Now the
//! control plane accepts the runner key on the runner API only and the client key on the
//! client APIs only, and both are files only their owner can read.
//!
//! Each file is created with `O_EXCL` and mode 0600 from the start (never widened, then
//! narrowed), written in full under a temporary name and then hard-linked into place, so a
//! reader never sees half a key and two racing starts end up with the same one. A file that
//! is open to others, belongs to someone else or is not a regular file is refused: someone
//! else may know (or have planted) that key.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::secrets::Secret;
use super::{LocalError, Paths};

/// Random bytes per key (256 bits).
const KEY_BYTES: usize = 32;

/// The role a key file is for; also its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Runner,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Runner => "runner",
        }
    }

    pub fn file(self, paths: &Paths) -> PathBuf {
        paths.root().join(format!("{}.key", self.name()))
    }
}

/// Both keys of a platform.
#[derive(Debug, Clone)]
pub struct PlatformKeys {
    pub client: Secret,
    pub runner: Secret,
}

/// Reads the platform's keys, creating those that do not exist yet. The data directory must
/// exist.
pub fn ensure(paths: &Paths) -> Result<PlatformKeys, LocalError> {
    Ok(PlatformKeys {
        client: ensure_one(&Role::Client.file(paths), Role::Client)?,
        runner: ensure_one(&Role::Runner.file(paths), Role::Runner)?,
    })
}

fn ensure_one(path: &Path, role: Role) -> Result<Secret, LocalError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => read(path),
        Err(e) if e.kind() == ErrorKind::NotFound => create(path, role),
        Err(e) => Err(LocalError::io(path, e)),
    }
}

/// A new random key in `path`; if another start created it first, that one.
fn create(path: &Path, role: Role) -> Result<Secret, LocalError> {
    let mut random = [0u8; KEY_BYTES];
    getrandom::fill(&mut random).map_err(|e| {
        LocalError::StartFailed(format!(
            "cannot get random bytes for the {} key: {e}",
            role.name()
        ))
    })?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("stigmer-{}-{hex}", role.name());
    let mut suffix = [0u8; 8];
    let _ = getrandom::fill(&mut suffix);
    let tmp = path.with_file_name(format!(
        ".{}.key.{}.{}.tmp",
        role.name(),
        std::process::id(),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        file.write_all(key.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(LocalError::io(&tmp, e));
    }
    // A hard link fails when the name exists: the key appears whole, or not at all.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Secret::new(key)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(LocalError::io(path, e)),
    }
}

/// Reads a key file after checking that only its owner, the current user, can read it.
pub fn read(path: &Path) -> Result<Secret, LocalError> {
    let unsafe_file = |reason: String| LocalError::UnsafeKeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                unsafe_file("it is a symbolic link; remove it and start again".into())
            }
            _ => LocalError::io(path, e),
        })?;
    // Checked on the open file, so it cannot be swapped between the check and the read.
    let meta = file.metadata().map_err(|e| LocalError::io(path, e))?;
    if !meta.is_file() {
        return Err(unsafe_file(
            "it is not a regular file; remove it and start again".into(),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_file(format!(
            "it belongs to uid {}, not to you (uid {me}); remove it, and the next \
             `stigmer local start` creates a new one",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_file(format!(
            "its mode is {mode:04o}, so other users may have read the key; it must be \
             readable by you only: `chmod 600 {}` (or remove it, and the next \
             `stigmer local start` creates a new key)",
            path.display()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| LocalError::io(path, e))?;
    let key = text.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(unsafe_file(
            "it does not hold a key; remove it and start again".into(),
        ));
    }
    Ok(Secret::new(key.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn paths() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::resolve(Some(dir.path())).expect("paths");
        (dir, paths)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").mode() & 0o777
    }

    #[test]
    fn creates_two_private_random_keys_and_reuses_them() {
        let (_dir, paths) = paths();
        let keys = ensure(&paths).expect("created");
        assert_ne!(keys.client.expose(), keys.runner.expose());
        assert!(keys.client.expose().starts_with("stigmer-client-"));
        assert_eq!(keys.client.expose().len(), "stigmer-client-".len() + 64);
        for role in [Role::Client, Role::Runner] {
            assert_eq!(mode(&role.file(&paths)), 0o600, "{role:?}");
        }
        let again = ensure(&paths).expect("reused");
        assert_eq!(again.client.expose(), keys.client.expose());
        assert_eq!(again.runner.expose(), keys.runner.expose());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(paths.root())
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_key_file_open_to_others_is_refused() {
        let (_dir, paths) = paths();
        ensure(&paths).expect("created");
        let file = Role::Client.file(&paths);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = ensure(&paths).expect_err("refused").to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("mode is 0640"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn symlinks_and_empty_files_are_refused() {
        let (dir, paths) = paths();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "stigmer-client-planted\n").expect("write");
        std::os::unix::fs::symlink(&elsewhere, Role::Client.file(&paths)).expect("symlink");
        let err = ensure(&paths).expect_err("refused").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::remove_file(Role::Client.file(&paths)).expect("rm");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(Role::Client.file(&paths))
            .expect("empty file");
        let err = ensure(&paths).expect_err("refused").to_string();
        assert!(err.contains("does not hold a key"), "{err}");
    }

    /// Needs root to give the file to another user; CI runs as root.
    #[test]
    fn a_key_file_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("NOT CHECKED: giving a file to another user needs root");
            return;
        }
        let (_dir, paths) = paths();
        ensure(&paths).expect("created");
        let file = Role::Runner.file(&paths);
        nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = ensure(&paths).expect_err("refused").to_string();
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }
}
