//! The helper process, stage one (`runner __sandbox-exec`): started by the runner for every
//! confined command, with the plan on its stdin.
//!
//! Why a separate process: namespaces, Landlock and seccomp apply to the calling process (and
//! `unshare(CLONE_NEWUSER)` only to a single-threaded one), and the runner is a multi-threaded
//! async program that must stay unconfined. So the runner re-executes its own binary:
//!
//! ```text
//! runner ──▶ __sandbox-exec (this: namespaces, cgroup, watchdog, reaper)
//!               └──▶ __sandbox-init (PID 1 of the new PID namespace: filesystem view,
//!                       limits, Landlock, capabilities, seccomp)
//!                       └──▶ sh -c <command>
//! ```
//!
//! This stage stays outside every restriction so that it can always end the command: it
//! watches its stdin (closed by the runner on cancellation, or when the runner dies) and its
//! own deadline, and kills the init, which takes the whole PID namespace with it. Without
//! namespaces it is a child subreaper and kills every process that was reparented to it.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::CommandCgroup;
use super::error::HelperError;
use super::policy::{CommandPlan, EXIT_PREFIX, Layer, Network, PLAN_ENV, SETUP_FAILED_EXIT};
use super::reap;

/// Extra time the helper gives the command past the runner's own deadline before it acts.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// Runs stage one; returns the process exit code.
pub fn exec_main() -> i32 {
    super::error::exit_code(run())
}

fn run() -> Result<i32, HelperError> {
    let mut stdin = std::io::stdin().lock();
    // A stdio server's plan comes in a variable: our stdin is the server's.
    let plan = match std::env::var(PLAN_ENV) {
        Ok(json) => serde_json::from_str(&json).map_err(|e| HelperError::Plan(e.to_string()))?,
        Err(_) => read_plan_line(&mut stdin)?,
    };
    // Orphans of the command come to us (not to the runner or init) so that we can end them.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| HelperError::sys("becoming a child subreaper", e))?;
    let cgroup = match &plan.cgroup {
        Some(parent) if plan.has(Layer::Cgroup) => Some(CommandCgroup::create_and_join(
            parent,
            &plan.cgroup_name,
            &plan.limits,
        )?),
        _ => None,
    };
    if plan.has(Layer::Namespaces) {
        enter_namespaces(plan.network)?;
    }
    // SIGCHLD is blocked and read from a signalfd, so that one thread can wait for the init,
    // the runner's lifeline and the deadline at once (no threads: a process that unshared
    // its PID namespace cannot create any).
    let sigchld = SigSet::from(Signal::SIGCHLD);
    sigchld
        .thread_block()
        .map_err(|e| HelperError::sys("blocking SIGCHLD", e))?;
    let child_exits =
        SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| HelperError::sys("creating a signalfd", e))?;
    let init = spawn_init(&plan)?;
    let init_pid = Pid::from_raw(i32::try_from(init.id()).map_err(|_| HelperError::NoPid)?);
    // A server has no deadline: it lives as long as the execution that started it.
    let deadline = (!plan.stdio)
        .then(|| {
            Instant::now().checked_add(Duration::from_millis(plan.timeout_ms) + DEADLINE_GRACE)
        })
        .flatten();
    // Only the init and the command hold the output now: its end of file means they are done.
    let devnull =
        std::fs::File::open("/dev/null").map_err(|e| HelperError::io("opening /dev/null", e))?;
    nix::unistd::dup2_stdout(&devnull).map_err(|e| HelperError::sys("closing our output", e))?;
    let lifeline = if plan.stdio {
        // The server's input is the server's alone: were we to hold it, a runner writing to
        // a dead server would block instead of failing.
        nix::unistd::dup2_stdin(&devnull).map_err(|e| HelperError::sys("closing our input", e))?;
        Lifeline::StatusReader
    } else {
        Lifeline::Stdin
    };
    let code = supervise(&mut stdin, lifeline, &child_exits, init_pid, deadline);
    // Without namespaces the survivors are ours to end; with them the kernel already has.
    if !plan.has(Layer::Namespaces) {
        reap::kill_descendants(cgroup.as_ref());
    }
    // The runner removes the cgroup directory once we are gone (we are still in it). Our own
    // exit tears the namespaces down, which can take milliseconds: report first.
    eprintln!("{EXIT_PREFIX}{code}");
    let _ = nix::unistd::dup2_stderr(&devnull);
    Ok(code)
}

fn read_plan_line(stdin: &mut impl BufRead) -> Result<CommandPlan, HelperError> {
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| HelperError::io("reading the plan", e))?;
    serde_json::from_str(&line).map_err(|e| HelperError::Plan(e.to_string()))
}

/// A new user namespace (mapping the caller's own ids) and, owned by it, new mount, PID, IPC
/// and UTS namespaces, and a network namespace with nothing in it when the agent has no
/// network. The init process we start next is PID 1 there.
fn enter_namespaces(network: Network) -> Result<(), HelperError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| HelperError::sys("creating a user namespace", e))?;
    write_proc_self("setgroups", "deny")?;
    write_proc_self("uid_map", &format!("{uid} {uid} 1"))?;
    write_proc_self("gid_map", &format!("{gid} {gid} 1"))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| HelperError::sys("creating namespaces", e))?;
    // The init is a new program (execve), and a non-root user loses every capability across
    // it; ambient capabilities carry the ones it needs to build the filesystem view. It drops
    // them all before the command starts.
    super::limits::pass_setup_capabilities()
}

fn write_proc_self(file: &str, contents: &str) -> Result<(), HelperError> {
    std::fs::write(format!("/proc/self/{file}"), contents)
        .map_err(|e| HelperError::io("writing the user namespace's id maps", e))
}

/// Starts stage two from our own binary and hands it the plan (a stdio server's in a
/// variable, its stdin being the server's).
fn spawn_init(plan: &CommandPlan) -> Result<std::process::Child, HelperError> {
    let json = serde_json::to_vec(plan).map_err(|e| HelperError::Plan(e.to_string()))?;
    let mut init = Command::new("/proc/self/exe");
    init.arg(super::INIT_ARG)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .env_clear();
    if plan.stdio {
        let json = String::from_utf8(json).map_err(|e| HelperError::Plan(e.to_string()))?;
        return init
            .env(PLAN_ENV, json)
            .stdin(Stdio::inherit())
            .spawn()
            .map_err(|e| HelperError::io("starting the sandbox init", e));
    }
    let mut init = init
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| HelperError::io("starting the sandbox init", e))?;
    if let Some(mut pipe) = init.stdin.take() {
        // A failed write means the init died; waiting for it reports why.
        let _ = pipe.write_all(&json);
    }
    Ok(init)
}

/// How the runner tells us to end the command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lifeline {
    /// A command: our stdin, closed by the runner (or by its death).
    Stdin,
    /// A stdio server, whose stdin is its own: our status channel (stderr), whose read end the
    /// runner closes (or its death does); poll reports that as an error on the write end.
    StatusReader,
}

/// Waits for the init to exit; kills it when the runner cuts the lifeline (cancellation, or
/// the runner died) or when our own deadline (if any) passes. Returns its exit code.
fn supervise(
    stdin: &mut impl Read,
    kind: Lifeline,
    child_exits: &SignalFd,
    init: Pid,
    deadline: Option<Instant>,
) -> i32 {
    let stdin_fd = std::io::stdin();
    let status_fd = std::io::stderr();
    let mut watching_lifeline = true;
    let mut killed = false;
    loop {
        if let Some(code) = exit_code(init, WaitPidFlag::WNOHANG) {
            return code;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) && !killed {
            let _ = kill(init, Signal::SIGKILL);
            killed = true;
        }
        let millis = match left {
            _ if killed => 100,
            Some(left) => u16::try_from(left.as_millis()).unwrap_or(u16::MAX),
            None => u16::MAX,
        };
        let mut fds = vec![PollFd::new(child_exits.as_fd(), PollFlags::POLLIN)];
        if watching_lifeline {
            fds.push(match kind {
                Lifeline::Stdin => PollFd::new(stdin_fd.as_fd(), PollFlags::POLLIN),
                // No event asked for: POLLERR (reader gone) is always reported.
                Lifeline::StatusReader => PollFd::new(status_fd.as_fd(), PollFlags::empty()),
            });
        }
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(_) => continue,
            Ok(_) => {}
        }
        let lifeline_ready = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty());
        // Drain the signalfd; the exit itself is read by waitpid above.
        while let Ok(Some(_)) = child_exits.read_signal() {}
        if lifeline_ready && kind == Lifeline::StatusReader {
            watching_lifeline = false;
            let _ = kill(init, Signal::SIGKILL);
            killed = true;
        } else if lifeline_ready {
            let mut buf = [0u8; 64];
            if matches!(stdin.read(&mut buf), Ok(0) | Err(_)) {
                watching_lifeline = false;
                let _ = kill(init, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}

/// The init's exit code once it exited (128 + n when a signal ended it, as shells report).
fn exit_code(init: Pid, flags: WaitPidFlag) -> Option<i32> {
    match waitpid(init, Some(flags)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        Ok(_) | Err(nix::errno::Errno::EINTR) => None,
        Err(_) => Some(SETUP_FAILED_EXIT),
    }
}
