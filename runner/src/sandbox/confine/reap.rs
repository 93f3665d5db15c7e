//! Ending every process a command started, when no PID namespace does it for us.
//!
//! The helper is a child subreaper: a process that leaves its parent (`setsid -f`, double
//! forks, daemons) is reparented to the helper, not to the system's init. So after the
//! command, every survivor is a child of the helper, or a descendant of one; killing the
//! children round after round (their orphans arrive as new children) ends them all. A cgroup,
//! when there is one, names the members directly, including ones that are mid-reparenting.

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::cgroup::CommandCgroup;

/// Bounded so that a fork bomb racing the rounds cannot keep the helper busy forever (the
/// process limits bound it too).
const MAX_ROUNDS: usize = 1000;

pub fn kill_descendants(cgroup: Option<&CommandCgroup>) {
    let me = nix::unistd::getpid();
    for _ in 0..MAX_ROUNDS {
        // Reaping what already exited reparents its children to us. No live child (and no
        // other cgroup member) means no descendant: any survivor would have been reparented
        // to us. This spares the /proc scan after a command that leaves nothing behind.
        let children = reap_exited();
        let mut victims: Vec<Pid> = cgroup
            .map(CommandCgroup::members)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if !children && victims.is_empty() {
            return;
        }
        if children {
            victims.extend(children_of(me));
        }
        for pid in &victims {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Reaps exited children; true while a live one remains.
fn reap_exited() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => return true,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Processes whose parent is `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// The parent pid in `/proc/<pid>/stat`: the field after the state, which follows the
/// command name in parentheses (a name may itself contain parentheses and spaces).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

fn parse_ppid(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_is_read_after_a_hostile_name() {
        assert_eq!(parse_ppid("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (a) S 9 (b) R 1) S 3 1 1"), Some(3));
        assert_eq!(parse_ppid("42 (x"), None);
    }
}
