//! Local mode: one directory per session under the sandbox root.
//!
//! File operations go through a cap-std `Dir` opened on the session directory, so the kernel
//! (openat2 `RESOLVE_BENEATH` where available, or cap-std's checked resolution) refuses any
//! path, symlink or `..` that would lead outside, including symlinks planted by commands.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use nix::fcntl::OFlag;

use super::confine::Confinement;
use super::paths::relative_to_session;
use super::{CommandOutput, CommandRequest, DirEntry, SandboxError, command};

/// Files larger than this are not read whole: the model's context could not take them anyway.
pub const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;

/// Where temporary files of commands go, inside the session so they are confined and cleaned
/// up with it.
const TMP_DIR: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct FsSandbox {
    id: String,
    /// Canonical path of the session directory; only commands use it (as their cwd).
    path: PathBuf,
    dir: Arc<Dir>,
    confinement: Arc<Confinement>,
}

impl FsSandbox {
    /// Opens `<root>/<id>`, creating it. `id` is already validated.
    pub(super) fn open(
        root: &Dir,
        root_path: &Path,
        id: &str,
        confinement: Arc<Confinement>,
    ) -> Result<Self, SandboxError> {
        let io_err = |action, source| SandboxError::Io {
            action,
            path: root_path.join(id).display().to_string(),
            source,
        };
        match root.create_dir(id) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating the session directory", e)),
        }
        // A symlink here would make commands (which use the path) and file tools (which use
        // the handle) disagree about where the session is.
        let meta = root
            .symlink_metadata(id)
            .map_err(|e| io_err("inspecting the session directory", e))?;
        if !meta.is_dir() {
            return Err(SandboxError::NotADirectory {
                path: root_path.join(id).display().to_string(),
            });
        }
        let dir = root
            .open_dir(id)
            .map_err(|e| io_err("opening the session directory", e))?;
        Ok(Self {
            id: id.to_owned(),
            path: root_path.join(id),
            dir: Arc::new(dir),
            confinement,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn run_command(
        &self,
        req: CommandRequest<'_>,
    ) -> Result<CommandOutput, SandboxError> {
        self.blocking(|dir| {
            if let Err(e) = dir.create_dir_all(TMP_DIR) {
                // Not fatal: most commands never use TMPDIR, and the model can fix the path.
                tracing::warn!(error = %e, "could not create the command temp directory");
            }
            Ok(())
        })
        .await?;
        let tmp = self.path.join(TMP_DIR);
        command::run(&self.path, &tmp, req, &self.confinement).await
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        let raw = path.to_owned();
        self.blocking(move |dir| read_blocking(dir, &rel, &raw))
            .await
    }

    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        let raw = path.to_owned();
        let contents = contents.to_vec();
        self.blocking(move |dir| write_blocking(dir, &rel, &raw, &contents))
            .await
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        let raw = path.to_owned();
        self.blocking(move |dir| list_blocking(dir, &rel, &raw))
            .await
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, SandboxError>
    where
        T: Send + 'static,
        F: FnOnce(&Dir) -> Result<T, SandboxError> + Send + 'static,
    {
        let dir = Arc::clone(&self.dir);
        tokio::task::spawn_blocking(move || work(&dir))
            .await
            .map_err(|source| SandboxError::Task { source })?
    }
}

/// Opens without blocking so that a FIFO planted by a command cannot hang a blocking thread;
/// the caller then refuses anything that is not a regular file.
fn open_options(write: bool) -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.read(!write)
        .write(write)
        .create(write)
        .custom_flags(OFlag::O_NONBLOCK.bits());
    opts
}

fn read_blocking(dir: &Dir, rel: &Path, raw: &str) -> Result<Vec<u8>, SandboxError> {
    let action = "reading";
    let file = dir
        .open_with(rel, &open_options(false))
        .map_err(|e| map_io(action, raw, e))?;
    let meta = file.metadata().map_err(|e| map_io(action, raw, e))?;
    ensure_regular_file(&meta, raw)?;
    let too_large = |size| SandboxError::FileTooLarge {
        path: raw.to_owned(),
        size,
        limit: MAX_READ_BYTES,
    };
    if meta.len() > MAX_READ_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut contents = Vec::new();
    // The file may grow while it is read: never read more than one byte past the limit.
    file.take(MAX_READ_BYTES + 1)
        .read_to_end(&mut contents)
        .map_err(|e| map_io(action, raw, e))?;
    if contents.len() as u64 > MAX_READ_BYTES {
        return Err(too_large(contents.len() as u64));
    }
    Ok(contents)
}

fn write_blocking(dir: &Dir, rel: &Path, raw: &str, contents: &[u8]) -> Result<(), SandboxError> {
    if rel == Path::new(".") {
        return Err(SandboxError::IsADirectory {
            path: raw.to_owned(),
        });
    }
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_parent(dir, parent, raw)?;
    }
    let action = "writing";
    let mut file = dir
        .open_with(rel, &open_options(true))
        .map_err(|e| map_io(action, raw, e))?;
    let meta = file.metadata().map_err(|e| map_io(action, raw, e))?;
    ensure_regular_file(&meta, raw)?;
    // Truncate only once we know it is a regular file.
    file.set_len(0).map_err(|e| map_io(action, raw, e))?;
    file.write_all(contents)
        .map_err(|e| map_io(action, raw, e))?;
    Ok(())
}

/// Creates the missing parent directories of `raw`. Looks first, because `create_dir_all`
/// reports a parent that is a symlink leading outside as merely "already exists".
fn ensure_parent(dir: &Dir, parent: &Path, raw: &str) -> Result<(), SandboxError> {
    let action = "creating the parent directory of";
    match dir.metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SandboxError::NotADirectory {
            path: parent.display().to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => dir
            .create_dir_all(parent)
            .map_err(|e| map_io(action, raw, e)),
        Err(e) => Err(map_io(action, raw, e)),
    }
}

fn list_blocking(dir: &Dir, rel: &Path, raw: &str) -> Result<Vec<DirEntry>, SandboxError> {
    let action = "listing";
    let entries = dir.read_dir(rel).map_err(|e| map_io(action, raw, e))?;
    let mut listed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| map_io(action, raw, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().map_err(|e| map_io(action, raw, e))?;
        let (is_dir, size) = if file_type.is_symlink() {
            // Described by what it points to, as long as that is inside the sandbox.
            dir.metadata(rel.join(&name))
                .map(|m| (m.is_dir(), m.len()))
                .unwrap_or((false, 0))
        } else {
            let meta = entry.metadata().map_err(|e| map_io(action, raw, e))?;
            (file_type.is_dir(), meta.len())
        };
        listed.push(DirEntry { name, is_dir, size });
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listed)
}

fn ensure_regular_file(meta: &cap_std::fs::Metadata, raw: &str) -> Result<(), SandboxError> {
    if meta.is_dir() {
        return Err(SandboxError::IsADirectory {
            path: raw.to_owned(),
        });
    }
    if !meta.is_file() {
        return Err(SandboxError::NotARegularFile {
            path: raw.to_owned(),
        });
    }
    Ok(())
}

/// Turns an I/O error into the error the model can act on.
fn map_io(action: &'static str, raw: &str, err: io::Error) -> SandboxError {
    let path = raw.to_owned();
    match err.kind() {
        io::ErrorKind::NotFound => SandboxError::NotFound { path },
        io::ErrorKind::IsADirectory => SandboxError::IsADirectory { path },
        io::ErrorKind::NotADirectory => SandboxError::NotADirectory { path },
        // cap-std reports an escape (a symlink or `..` leading outside) as PermissionDenied
        // without an OS error code; a real EACCES carries one.
        io::ErrorKind::PermissionDenied if err.raw_os_error().is_none() => {
            SandboxError::PathEscape { path }
        }
        _ => SandboxError::Io {
            action,
            path,
            source: err,
        },
    }
}
