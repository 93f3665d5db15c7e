//! Resource limits and capabilities of the command's processes.

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{Resource, setrlimit};

use super::error::HelperError;
use super::policy::Limits;

/// Sets the per-process limits the command inherits.
///
/// `RLIMIT_NPROC` counts the processes of the user *in the command's user namespace* (Linux
/// 5.14+), so with namespaces it bounds this command alone, root included. Without them it
/// counts every process of the user on the machine, so it is raised by what the user already
/// runs (`processes_now`), and the kernel does not apply it to root at all (a cgroup does).
pub fn apply_rlimits(limits: &Limits, processes_now: u64) -> Result<(), HelperError> {
    let set = |resource, value: u64, what| {
        setrlimit(resource, value, value).map_err(|e| HelperError::sys(what, e))
    };
    set(
        Resource::RLIMIT_NPROC,
        limits.max_processes.saturating_add(processes_now),
        "limiting the number of processes",
    )?;
    set(
        Resource::RLIMIT_FSIZE,
        limits.max_file_bytes,
        "limiting the file size",
    )?;
    set(Resource::RLIMIT_CPU, limits.cpu_secs, "limiting CPU time")?;
    set(
        Resource::RLIMIT_NOFILE,
        limits.max_open_files,
        "limiting open files",
    )?;
    // A core dump of a command could be written outside the session (core_pattern), and
    // holds its memory: none.
    set(Resource::RLIMIT_CORE, 0, "disabling core dumps")?;
    Ok(())
}

/// Processes the real user runs now (all namespaces), for the no-namespace process limit.
pub fn processes_of_current_user() -> u64 {
    let uid = nix::unistd::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.filter_map(Result::ok) {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let owner = std::os::unix::fs::MetadataExt::uid(&match entry.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        });
        if owner == uid {
            count += 1;
        }
    }
    count
}

/// The capabilities the init needs to build the filesystem view, raised as ambient so that
/// they survive its execve (a non-root user in a new user namespace has them until then).
const SETUP_CAPABILITIES: [Capability; 3] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SETPCAP,
    Capability::CAP_SYS_CHROOT,
];

pub fn pass_setup_capabilities() -> Result<(), HelperError> {
    let wanted: CapsHashSet = SETUP_CAPABILITIES.into_iter().collect();
    let fail = |e: caps::errors::CapsError| HelperError::Capabilities(e.to_string());
    caps::set(None, CapSet::Inheritable, &wanted).map_err(fail)?;
    for cap in SETUP_CAPABILITIES {
        caps::raise(None, CapSet::Ambient, cap).map_err(fail)?;
    }
    Ok(())
}

/// Drops every capability for good: the bounding set (so that no execve, not even of a
/// set-uid program or as root, can regain one), ambient, inheritable, permitted, effective.
///
/// A process without capabilities (an ordinary user without namespaces) has nothing to drop
/// and may not touch the bounding set; that is not an error.
pub fn drop_all_capabilities() -> Result<(), HelperError> {
    let fail = |e: caps::errors::CapsError| HelperError::Capabilities(e.to_string());
    let permitted = caps::read(None, CapSet::Permitted).map_err(fail)?;
    if permitted.is_empty() {
        return Ok(());
    }
    caps::clear(None, CapSet::Ambient).map_err(fail)?;
    if permitted.contains(&Capability::CAP_SETPCAP) {
        caps::clear(None, CapSet::Bounding).map_err(fail)?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(fail)?;
    caps::clear(None, CapSet::Effective).map_err(fail)?;
    caps::clear(None, CapSet::Permitted).map_err(fail)?;
    Ok(())
}
