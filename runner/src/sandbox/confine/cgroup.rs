//! A cgroup per command, where one can be had (root, or a delegated subtree): the kernel then
//! bounds the command's process count and memory whatever its user, and lists its members.
//!
//! The helper creates `<parent>/<name>` in each hierarchy (the runner names it
//! `cmd-<runner pid>-<n>`), writes the limits and moves itself in before anything else starts,
//! so every process of the command is born inside. The runner removes the directories once the
//! helper is gone ([`remove`]), killing any member left behind by a helper that was itself
//! killed; directories left by a runner that died are swept at the next start ([`sweep`]).

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::HelperError;
use super::policy::{CgroupParent, Limits};

#[derive(Debug)]
pub struct CommandCgroup {
    /// The directory whose `cgroup.procs` lists the members (v2, or v1's `pids`).
    procs_dir: PathBuf,
}

impl CommandCgroup {
    pub fn create_and_join(
        parent: &CgroupParent,
        name: &str,
        limits: &Limits,
    ) -> Result<Self, HelperError> {
        let me = std::process::id();
        let dirs = dirs_for(parent, name);
        let set = |dir: &Path, file: &str, value: String| {
            let path = dir.join(file);
            std::fs::write(&path, value).map_err(|e| HelperError::path("writing", &path, e))
        };
        for dir in &dirs.all {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                // Left by a runner of the same pid that died: empty it and take it over.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    kill_members(dir);
                }
                Err(e) => return Err(HelperError::path("creating cgroup", dir, e)),
            }
        }
        match parent {
            CgroupParent::V2(_) => {
                set(&dirs.procs, "pids.max", limits.max_processes.to_string())?;
                set(&dirs.procs, "memory.max", limits.memory_bytes.to_string())?;
                // Without swap the memory bound is the bound; a failure means no swap
                // controller, which is fine.
                let _ = set(&dirs.procs, "memory.swap.max", "0".into());
            }
            CgroupParent::V1 { .. } => {
                set(&dirs.procs, "pids.max", limits.max_processes.to_string())?;
                if let Some(memory) = &dirs.memory {
                    set(
                        memory,
                        "memory.limit_in_bytes",
                        limits.memory_bytes.to_string(),
                    )?;
                }
            }
        }
        for dir in &dirs.all {
            set(dir, "cgroup.procs", me.to_string())?;
        }
        Ok(Self {
            procs_dir: dirs.procs,
        })
    }

    pub fn members(&self) -> Vec<Pid> {
        read_members(&self.procs_dir)
    }
}

struct Dirs {
    procs: PathBuf,
    memory: Option<PathBuf>,
    all: Vec<PathBuf>,
}

fn dirs_for(parent: &CgroupParent, name: &str) -> Dirs {
    match parent {
        CgroupParent::V2(dir) => {
            let procs = dir.join(name);
            Dirs {
                all: vec![procs.clone()],
                procs,
                memory: None,
            }
        }
        CgroupParent::V1 { pids, memory } => {
            let procs = pids.join(name);
            let memory = memory.as_ref().map(|m| m.join(name));
            let mut all = vec![procs.clone()];
            all.extend(memory.clone());
            Dirs { procs, memory, all }
        }
    }
}

fn read_members(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
        .collect()
}

fn kill_members(dir: &Path) {
    for pid in read_members(dir) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Runner side, after the command's helper exited: kills whatever is left in its cgroup and
/// removes the directories. Best effort: a failure is logged, never fatal to the command.
pub fn remove(parent: &CgroupParent, name: &str) {
    let dirs = dirs_for(parent, name);
    for _ in 0..100 {
        kill_members(&dirs.procs);
        let mut left = false;
        for dir in dirs.all.iter().rev() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => left = true,
            }
        }
        if !left {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    tracing::warn!(cgroup = %dirs.procs.display(), "could not remove a command's cgroup");
}

/// Runner side, at start: removes the command cgroups of runners that are no longer running
/// (`cmd-<pid>-<n>` whose pid is gone), which a killed runner leaves behind.
pub fn sweep(parent: &CgroupParent) {
    let roots: Vec<&Path> = match parent {
        CgroupParent::V2(dir) => vec![dir.as_path()],
        CgroupParent::V1 { pids, memory } => std::iter::once(pids.as_path())
            .chain(memory.as_deref())
            .collect(),
    };
    let me = std::process::id();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(owner) = name
                .to_str()
                .and_then(|n| n.strip_prefix("cmd-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if owner != me && !Path::new(&format!("/proc/{owner}")).exists() {
                kill_members(&entry.path());
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}
