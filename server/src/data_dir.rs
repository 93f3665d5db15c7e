//! The data directory is private: created 0700, and the database with its `-wal` and `-shm`
//! files 0600, whatever the process umask. The database holds agents' env and secret runtime
//! env in clear, so other local users must not read it.
//!
//! Modes are set explicitly rather than through `umask`, which is process-wide and would also
//! change what an embedding program (or a test binary) creates elsewhere.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt,
};
use std::path::{Path, PathBuf};

use crate::store::DB_FILE;

/// Mode of the directories created for the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database files.
pub const FILE_MODE: u32 = 0o600;
/// Group and other permission bits.
const SHARED_BITS: u32 = 0o077;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {} exists but is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot create database file {} (mode 0600): {source}", path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` (and missing parents) 0700, creates the database file 0600 before SQLite
/// does (SQLite gives the `-wal` and `-shm` files the database file's mode), and tightens
/// database files an older version left readable by others.
pub fn prepare(dir: &Path) -> Result<(), DataDirError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| DataDirError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    let meta = std::fs::metadata(dir).map_err(|source| DataDirError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory(dir.to_path_buf()));
    }
    if meta.mode() & SHARED_BITS != 0 {
        // Not changed here: a directory the user made (or chose, such as a shared one) is
        // theirs to decide about. The files in it are private anyway.
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.mode() & 0o777),
            "the data directory is open to other users; its database files are private (0600), \
             but `chmod 700` it to hide them entirely"
        );
    }
    let db = dir.join(DB_FILE);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(DataDirError::CreateFile { path: db, source }),
    }
    for suffix in ["", "-wal", "-shm"] {
        tighten(&dir.join(format!("{DB_FILE}{suffix}")));
    }
    Ok(())
}

/// Makes an existing regular file 0600 when it is open to others. A symlink is left alone
/// (SQLite would follow it; chmod would change its target, which may be anything).
fn tighten(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_file() || meta.mode() & SHARED_BITS == 0 {
        return;
    }
    match std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
        Ok(()) => tracing::info!(
            file = %path.display(),
            was = format!("{:o}", meta.mode() & 0o777),
            "made the database file private (0600)"
        ),
        Err(e) => tracing::warn!(
            file = %path.display(),
            error = %e,
            "the database file is open to other users and cannot be made private"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn creates_private_directories_and_database_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("data");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "parents too");
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        // Idempotent, and the existing file is kept.
        std::fs::write(dir.join(DB_FILE), b"x").unwrap();
        prepare(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join(DB_FILE)).unwrap(), b"x");
    }

    #[test]
    fn tightens_files_an_older_version_left_open() {
        let tmp = tempfile::tempdir().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let path = tmp.path().join(format!("{DB_FILE}{suffix}"));
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o755)).unwrap();
        prepare(tmp.path()).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(&tmp.path().join(format!("{DB_FILE}{suffix}"))), 0o600);
        }
        // The directory is the user's: only warned about.
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data");
        std::fs::write(&file, b"").unwrap();
        let err = prepare(&file).unwrap_err().to_string();
        assert!(err.contains("data"), "{err}");
    }
}
