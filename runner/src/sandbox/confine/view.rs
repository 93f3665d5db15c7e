//! The command's filesystem, built in its own mount namespace: a fresh root holding only the
//! system directories (read-only), a minimal `/dev`, a `/proc` of its own PID namespace, a
//! private `/tmp`, and the session directory (read-write) at its usual path. Nothing else of
//! the host exists there: not `$HOME`, not the runner's data or working directory, not other
//! sessions.
//!
//! The new root is a tmpfs mounted over `/tmp` (every system has `/tmp`; the mount is private
//! to this namespace). Sources that could be hidden by that mount (a session directory under
//! `/tmp`) are opened first and bound from their file descriptors.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};

use super::error::HelperError;
use super::policy::CommandPlan;

const NEW_ROOT: &str = "/tmp";
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// What goes into the view at `at` (a path as the command sees it).
enum Entry {
    /// A read-only bind of this opened file or directory.
    Bind {
        at: PathBuf,
        source: OwnedFd,
        dir: bool,
    },
    /// A symlink whose target is itself in the view (`/bin -> usr/bin` on merged-/usr systems).
    Symlink { at: PathBuf, target: PathBuf },
}

/// Builds the view and enters it. Returns whether a private `/proc` could be mounted (it
/// cannot where the host's `/proc` has masked paths, as in many containers).
pub fn build(plan: &CommandPlan) -> Result<bool, HelperError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| HelperError::sys("making mounts private", e))?;
    let entries = open_entries(&plan.read_paths)?;
    let session = open_path(&plan.session_dir)?;
    let root = Path::new(NEW_ROOT);
    mount_tmpfs(root, "mode=0755,size=1m")?;
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let tmp = inside(Path::new("/tmp"));
    mkdirs(&tmp)?;
    mount_tmpfs(&tmp, &format!("mode=1777,size={}", plan.limits.tmp_bytes))?;
    build_dev(&inside(Path::new("/dev")), plan.limits.tmp_bytes)?;
    let proc_dir = inside(Path::new("/proc"));
    mkdirs(&proc_dir)?;
    let proc_mounted = mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .is_ok();
    for entry in &entries {
        match entry {
            Entry::Bind { at, source, dir } => bind(source, &inside(at), *dir, Access::ReadOnly)?,
            Entry::Symlink { at, target } => {
                let link = inside(at);
                if let Some(parent) = link.parent() {
                    mkdirs(parent)?;
                }
                std::os::unix::fs::symlink(target, &link)
                    .map_err(|e| HelperError::path("creating symlink", &link, e))?;
            }
        }
    }
    bind(
        &session,
        &inside(&plan.session_dir),
        true,
        Access::ReadWrite,
    )?;
    remount_readonly_root(root)?;
    enter(root)?;
    Ok(proc_mounted)
}

/// Opens every read path that exists; a symlink whose target lies inside another read path
/// is recreated as a symlink, any other is bound by what it points to.
fn open_entries(read_paths: &[PathBuf]) -> Result<Vec<Entry>, HelperError> {
    let canonical: Vec<(&PathBuf, PathBuf)> = read_paths
        .iter()
        .filter_map(|p| Some((p, p.canonicalize().ok()?)))
        .collect();
    let mut entries = Vec::new();
    for path in read_paths {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let Ok(resolved) = path.canonicalize() else {
                continue;
            };
            let covered = canonical
                .iter()
                .any(|(other, real)| *other != path && resolved.starts_with(real));
            if covered && is_top_level(path) {
                let target = std::fs::read_link(path)
                    .map_err(|e| HelperError::path("reading symlink", path, e))?;
                entries.push(Entry::Symlink {
                    at: path.clone(),
                    target,
                });
                continue;
            }
        }
        let Ok(source) = open_path(path) else {
            continue;
        };
        entries.push(Entry::Bind {
            at: path.clone(),
            dir: path.is_dir(),
            source,
        });
    }
    Ok(entries)
}

/// `/bin`, `/lib`, ...: the merged-/usr links worth keeping as links.
fn is_top_level(path: &Path) -> bool {
    path.parent() == Some(Path::new("/"))
}

fn open_path(path: &Path) -> Result<OwnedFd, HelperError> {
    open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| HelperError::path("opening", path, e.into()))
}

fn mkdirs(path: &Path) -> Result<(), HelperError> {
    std::fs::create_dir_all(path).map_err(|e| HelperError::path("creating", path, e))
}

fn mount_tmpfs(at: &Path, options: &str) -> Result<(), HelperError> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
    .map_err(|e| HelperError::path("mounting a tmpfs on", at, e.into()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
    /// A device node: read-write, and device files must work there.
    Device,
}

/// Binds `source` at `at` (creating the mount point), then remounts it with `access`; set-uid
/// programs never take effect. A remount in a user namespace must keep the flags the source
/// mount has (they are locked), so those are read first.
fn bind(source: &OwnedFd, at: &Path, dir: bool, access: Access) -> Result<(), HelperError> {
    if dir {
        mkdirs(at)?;
    } else {
        if let Some(parent) = at.parent() {
            mkdirs(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(at)
            .map_err(|e| HelperError::path("creating mount point", at, e))?;
    }
    let from = format!("/proc/self/fd/{}", source.as_raw_fd());
    mount(
        Some(from.as_str()),
        at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| HelperError::path("bind-mounting", at, e.into()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | locked_flags(at);
    match access {
        Access::ReadOnly => flags |= MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        Access::ReadWrite => flags |= MsFlags::MS_NODEV,
        Access::Device => {}
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>)
        .map_err(|e| HelperError::path("remounting", at, e.into()))
}

fn locked_flags(at: &Path) -> MsFlags {
    let Ok(stat) = statvfs(at) else {
        return MsFlags::empty();
    };
    let fs = stat.flags();
    let mut flags = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if fs.contains(st) {
            flags |= ms;
        }
    }
    flags
}

/// A `/dev` with only harmless devices, the standard fd links and a private `/dev/shm`.
fn build_dev(dev: &Path, shm_bytes: u64) -> Result<(), HelperError> {
    mkdirs(dev)?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| HelperError::path("mounting a tmpfs on", dev, e.into()))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let Ok(source) = open_path(&host) else {
            continue;
        };
        // The device nodes are the host's, bound one by one: devices cannot be created in a
        // user namespace, and binding keeps them working.
        bind(&source, &dev.join(name), false, Access::Device)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dev.join(link);
        std::os::unix::fs::symlink(target, &at)
            .map_err(|e| HelperError::path("creating symlink", &at, e))?;
    }
    let shm = dev.join("shm");
    mkdirs(&shm)?;
    mount_tmpfs(&shm, &format!("mode=1777,size={shm_bytes}"))
}

fn remount_readonly_root(root: &Path) -> Result<(), HelperError> {
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| HelperError::path("remounting read-only", root, e.into()))
}

/// Makes `root` the root of this mount namespace and detaches the old one, so that no path
/// leads back to the host's filesystem.
fn enter(root: &Path) -> Result<(), HelperError> {
    nix::unistd::chdir(root).map_err(|e| HelperError::sys("entering the new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| HelperError::sys("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| HelperError::sys("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| HelperError::sys("entering the new root", e))
}
