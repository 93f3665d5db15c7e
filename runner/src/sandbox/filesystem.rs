//! Local mode: one directory per session under the sandbox root.
//!
//! File operations go through a cap-std `Dir` opened on the session directory, so the kernel
//! (openat2 `RESOLVE_BENEATH` where available, or cap-std's checked resolution) refuses any
//! path, symlink or `..` that would lead outside, including symlinks planted by commands.
//! A hard link cannot be refused that way (it is an ordinary directory entry), so a regular
//! file with more than one link is used only when every link is found inside the session.
//!
//! Directories the runner creates here are private to its user (0700): sessions hold the
//! user's files.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt as _, MetadataExt as _, OpenOptions, OpenOptionsExt,
    Permissions, PermissionsExt as _,
};
use nix::fcntl::OFlag;

use super::confine::Confinement;
use super::paths::relative_to_session;
use super::{CommandOutput, CommandRequest, DirEntry, SandboxError, command};
use crate::printable;

/// Files larger than this are not read whole: the model's context could not take them anyway.
pub const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;

/// Mode of the session directories the runner creates: private to its user.
pub(super) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Directory entries looked at, at most, to find where a multiply linked file's links are. A
/// session holding more cannot prove the file lies within it, and the file is refused.
pub const MAX_LINK_SCAN_ENTRIES: usize = 100_000;

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
        let mut private = DirBuilder::new();
        private.mode(PRIVATE_DIR_MODE);
        match root.create_dir_with(id, &private) {
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
        // A session directory made by an older runner (0755) is tightened too: it is the
        // runner's own, and other local users have no business in it. Best effort: one this
        // user cannot chmod (not its own) still works as before.
        if meta.mode() & 0o077 != 0
            && let Err(e) = root.set_permissions(id, Permissions::from_mode(PRIVATE_DIR_MODE))
        {
            tracing::warn!(session = id, error = %e, "could not make the session directory private (0700)");
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

    pub async fn spawn_server(
        &self,
        req: super::ServerRequest<'_>,
    ) -> Result<super::ServerProcess, SandboxError> {
        self.blocking(|dir| {
            if let Err(e) = dir.create_dir_all(TMP_DIR) {
                tracing::warn!(error = %e, "could not create the server temp directory");
            }
            Ok(())
        })
        .await?;
        let tmp = self.path.join(TMP_DIR);
        super::server::spawn(&self.path, &tmp, req, &self.confinement)
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        // Only ever shown, in messages to the model.
        let raw = printable::escape(path);
        self.blocking(move |dir| read_blocking(dir, &rel, &raw))
            .await
    }

    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        let raw = printable::escape(path);
        let contents = contents.to_vec();
        self.blocking(move |dir| write_blocking(dir, &rel, &raw, &contents))
            .await
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        let rel = relative_to_session(&self.path, path)?;
        let raw = printable::escape(path);
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
    ensure_links_inside(dir, &meta, raw, MAX_LINK_SCAN_ENTRIES)?;
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
    ensure_links_inside(dir, &meta, raw, MAX_LINK_SCAN_ENTRIES)?;
    // Truncate only once we know it is a regular file of this session alone.
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
            path: printable::escape_bytes(parent.as_os_str().as_bytes()),
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
        let file_name = entry.file_name();
        let file_type = entry.file_type().map_err(|e| map_io(action, raw, e))?;
        let (is_dir, size) = if file_type.is_symlink() {
            // Described by what it points to, as long as that is inside the sandbox.
            dir.metadata(rel.join(&file_name))
                .map(|m| (m.is_dir(), m.len()))
                .unwrap_or((false, 0))
        } else {
            let meta = entry.metadata().map_err(|e| map_io(action, raw, e))?;
            (file_type.is_dir(), meta.len())
        };
        // Escaped, so that a name with a newline cannot forge a line of the listing.
        let name = printable::escape_bytes(file_name.as_bytes());
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

/// Refuses a regular file with several hard links unless every one of them is inside the
/// session. A command can `ln` a file of the user's (`~/.bashrc`) into the session; the link
/// is an ordinary entry that no path check sees through, so the link count is what gives it
/// away, and the session (at most `max_entries` entries of it) is searched for the others.
pub(super) fn ensure_links_inside(
    dir: &Dir,
    meta: &cap_std::fs::Metadata,
    raw: &str,
    max_entries: usize,
) -> Result<(), SandboxError> {
    let links = meta.nlink();
    if links <= 1 {
        return Ok(());
    }
    match links_in_session(dir, meta.dev(), meta.ino(), links, max_entries) {
        LinkScan::Found(found) if found >= links => Ok(()),
        LinkScan::Found(_) | LinkScan::Unreadable => Err(SandboxError::HardLinked {
            path: raw.to_owned(),
            links,
        }),
        LinkScan::TooManyEntries => Err(SandboxError::LinkScanTooLarge {
            path: raw.to_owned(),
            links,
            limit: max_entries,
        }),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum LinkScan {
    /// Entries of the session that are this file (it counts itself).
    Found(u64),
    /// The session has more entries than the scan may look at.
    TooManyEntries,
    /// Part of the session could not be read, so the links there are unknown.
    Unreadable,
}

/// Counts the entries beneath `root` that are the file `(dev, ino)`, stopping once `wanted`
/// are found or after `max_entries` entries. Symlinks are not followed (a symlinked directory
/// is not part of the session) and directories are opened beneath `root`, so the search
/// itself cannot leave the session.
pub(super) fn links_in_session(
    root: &Dir,
    dev: u64,
    ino: u64,
    wanted: u64,
    max_entries: usize,
) -> LinkScan {
    let mut pending = vec![PathBuf::from(".")];
    let mut seen = 0usize;
    let mut found = 0u64;
    while let Some(rel) = pending.pop() {
        let Ok(entries) = root.read_dir(&rel) else {
            return LinkScan::Unreadable;
        };
        for entry in entries {
            seen += 1;
            if seen > max_entries {
                return LinkScan::TooManyEntries;
            }
            let Ok(entry) = entry else {
                return LinkScan::Unreadable;
            };
            let Ok(file_type) = entry.file_type() else {
                return LinkScan::Unreadable;
            };
            if file_type.is_dir() {
                pending.push(rel.join(entry.file_name()));
            } else if file_type.is_file() {
                let Ok(meta) = entry.metadata() else {
                    return LinkScan::Unreadable;
                };
                if meta.dev() == dev && meta.ino() == ino {
                    found += 1;
                    if found >= wanted {
                        return LinkScan::Found(found);
                    }
                }
            }
        }
    }
    LinkScan::Found(found)
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
