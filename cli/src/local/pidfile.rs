//! PID files, the supervisor lock, and the process checks that tell a live platform from the
//! remains of a crashed one.
//!
//! Liveness of the supervisor is decided by an exclusive `flock` on `run/supervisor.lock`,
//! not by the PID file: the kernel drops the lock when the process dies (even by SIGKILL), and
//! a recycled PID cannot fake it. PID files are still written, for people and for `stop`, and
//! a child PID is only ever signalled after checking that the process still runs the expected
//! binary.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{LocalError, Paths};
use crate::args::Component;

/// The exclusive lock of the running supervisor; released when dropped or when the process
/// dies.
pub struct SupervisorLock {
    _lock: Flock<File>,
}

/// Takes the supervisor lock, or returns `None` when another live supervisor holds it.
pub fn try_lock(paths: &Paths) -> Result<Option<SupervisorLock>, LocalError> {
    let path = paths.lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| LocalError::io(&path, e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(SupervisorLock { _lock: lock })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(LocalError::io(&path, errno.into())),
    }
}

/// The PID of the live supervisor of this data directory, if there is one.
pub fn running_supervisor(paths: &Paths) -> Option<u32> {
    if !paths.lock_file().exists() {
        return None;
    }
    match try_lock(paths) {
        // Free: nobody runs (the probe's lock is released at once).
        Ok(Some(_probe)) => None,
        Ok(None) => Some(read_pid(&paths.pid_file(Component::Supervisor)).unwrap_or(0)),
        Err(_) => None,
    }
}

pub fn write_pid(path: &Path, pid: u32) -> Result<(), LocalError> {
    let tmp = path.with_extension("pid.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o644)
            .open(&tmp)?;
        writeln!(f, "{pid}")?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| LocalError::io(path, e))
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
}

pub fn remove(path: &Path) {
    // Already gone is fine: removal is idempotent cleanup.
    let _ = std::fs::remove_file(path);
}

/// True while the process exists and is not a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// Whether `pid` runs a binary named `binary_name`: guards against signalling a process that
/// reused the PID of a long-dead child. Without /proc (not Linux) this cannot be checked and
/// the PID is trusted.
pub fn runs_binary(pid: u32, binary_name: &str) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    if !Path::new("/proc/self").exists() {
        return true;
    }
    if let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) {
        // A rebuilt binary shows as "<path> (deleted)".
        let exe = exe
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        if Path::new(&exe)
            .file_name()
            .is_some_and(|n| n == binary_name)
        {
            return true;
        }
    }
    std::fs::read(proc_dir.join("cmdline"))
        .ok()
        .and_then(|cmdline| {
            let argv0 = cmdline.split(|b| *b == 0).next()?.to_vec();
            let argv0 = String::from_utf8(argv0).ok()?;
            Some(
                Path::new(&argv0)
                    .file_name()
                    .is_some_and(|n| n == binary_name),
            )
        })
        .unwrap_or(false)
}

pub fn signal(pid: u32, signal: Signal) -> Result<(), LocalError> {
    let raw =
        i32::try_from(pid).map_err(|_| LocalError::Signal(format!("pid {pid} is out of range")))?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(LocalError::Signal(format!(
            "cannot send {signal} to pid {pid}: {e}"
        ))),
    }
}

/// Polls until the process is gone or `timeout` passes; true when it is gone.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL after `grace`. Returns true when it had to kill.
pub async fn terminate(pid: u32, grace: Duration) -> Result<bool, LocalError> {
    signal(pid, Signal::SIGTERM)?;
    if wait_gone(pid, grace).await {
        return Ok(false);
    }
    signal(pid, Signal::SIGKILL)?;
    wait_gone(pid, Duration::from_secs(5)).await;
    Ok(true)
}

/// With the supervisor lock held: stops the children a crashed supervisor left behind (the
/// runner first, so that it drains before its control plane goes) and removes stale PID
/// files. Returns what it did, for the log.
pub async fn clean_stale(
    paths: &Paths,
    binary_names: &[(Component, String)],
    grace: Duration,
) -> Result<Vec<String>, LocalError> {
    let mut notes = Vec::new();
    for (component, name) in binary_names {
        let path = paths.pid_file(*component);
        let Some(pid) = read_pid(&path) else {
            if path.exists() {
                notes.push(format!("removed unreadable PID file {}", path.display()));
                remove(&path);
            }
            continue;
        };
        if is_alive(pid) && runs_binary(pid, name) {
            let killed = terminate(pid, grace).await?;
            notes.push(format!(
                "stopped the {} (pid {pid}) left running by a previous supervisor{}",
                component.name(),
                if killed { " (killed)" } else { "" }
            ));
        } else {
            notes.push(format!(
                "removed stale PID file of the {} (pid {pid} is not running)",
                component.name()
            ));
        }
        remove(&path);
    }
    let supervisor = paths.pid_file(Component::Supervisor);
    if let Some(pid) = read_pid(&supervisor) {
        notes.push(format!(
            "removed stale PID file of the supervisor (pid {pid} is not running)"
        ));
    }
    remove(&supervisor);
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::resolve(Some(dir.path())).expect("paths");
        paths.create_all().expect("dirs");
        (dir, paths)
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let (_dir, paths) = paths();
        let held = try_lock(&paths).expect("lock").expect("free");
        assert!(try_lock(&paths).expect("lock").is_none());
        write_pid(&paths.pid_file(Component::Supervisor), 4242).expect("pid");
        assert_eq!(running_supervisor(&paths), Some(4242));
        drop(held);
        assert_eq!(running_supervisor(&paths), None);
        assert!(try_lock(&paths).expect("lock").is_some());
    }

    #[test]
    fn pid_files_round_trip_and_reject_garbage() {
        let (_dir, paths) = paths();
        let path = paths.pid_file(Component::Runner);
        write_pid(&path, 1234).expect("write");
        assert_eq!(read_pid(&path), Some(1234));
        std::fs::write(&path, "not a pid").expect("write");
        assert_eq!(read_pid(&path), None);
        std::fs::write(&path, "1\n").expect("write");
        assert_eq!(read_pid(&path), None, "never treat init as ours");
    }

    #[test]
    fn liveness_and_binary_checks() {
        let me = std::process::id();
        assert!(is_alive(me));
        let exe = std::env::current_exe().expect("exe");
        let name = exe.file_name().expect("name").to_string_lossy().to_string();
        assert!(runs_binary(me, &name));
        assert!(!runs_binary(me, "surely-not-this-binary"));
        // A PID above the kernel's maximum never exists.
        assert!(!is_alive(4_194_305));
    }

    #[tokio::test]
    async fn stale_files_are_removed_and_live_strangers_are_left_alone() {
        let (_dir, paths) = paths();
        // Our own PID stands for "a live process that is not the runner".
        write_pid(&paths.pid_file(Component::Runner), std::process::id()).expect("pid");
        write_pid(&paths.pid_file(Component::Server), 4_194_305).expect("pid");
        write_pid(&paths.pid_file(Component::Supervisor), 4_194_306).expect("pid");
        let notes = clean_stale(
            &paths,
            &[
                (Component::Runner, "runner".into()),
                (Component::Server, "stigmer-server".into()),
            ],
            Duration::from_millis(100),
        )
        .await
        .expect("clean");
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes.iter().all(|n| n.contains("stale PID file")),
            "{notes:?}"
        );
        for c in Component::ALL {
            assert!(!paths.pid_file(c).exists());
        }
    }
}
