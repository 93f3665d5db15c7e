//! Running one shell command for a local sandbox.
//!
//! The command gets its own process group so that everything it starts can be killed
//! together: on timeout, on cancellation, when its caller stops waiting (the future is
//! dropped), and when the shell exits while background children still hold the output pipe.
//! It gets a minimal environment because the runner's own holds credentials (the LLM key).
//!
//! With confinement (`confine`), the process started is the runner's own binary as the
//! sandbox helper, which confines and runs the shell; its stdin is a lifeline: closing it
//! (cancellation, timeout, a dropped future, the runner dying) makes the helper end every
//! process of the command, including those that left the process group.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe::Receiver;
use tokio::process::{Child, ChildStderr, ChildStdin, Command};

use super::capped::CappedBuffer;
use super::confine::{self, CommandSpec, Confinement};
use super::{CommandOutput, CommandRequest, SandboxError};

const SHELL: &str = "/bin/sh";
pub const BASE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long to keep reading output once the command is over. Bounded because a process that
/// left the group (setsid, daemons) may hold the pipe open indefinitely.
const DRAIN_DEADLINE: Duration = Duration::from_millis(500);
/// How long to wait for a SIGKILLed shell to be reaped.
const REAP_DEADLINE: Duration = Duration::from_secs(5);
/// How long a confined command's helper gets to end its processes once told to stop, before
/// its process group is killed outright.
const STOP_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 8192;

/// The environment every command starts from; `req.env` is added on top.
pub(super) fn base_env(cwd: &Path, tmp: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".to_owned(), BASE_PATH.to_owned()),
        ("HOME".to_owned(), cwd.display().to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("TMPDIR".to_owned(), tmp.display().to_string()),
    ])
}

pub(super) async fn run(
    cwd: &Path,
    session_tmp: &Path,
    req: CommandRequest<'_>,
    confinement: &Confinement,
) -> Result<CommandOutput, SandboxError> {
    if req.cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    let tmp = confinement.tmp_dir(session_tmp);
    let (mut child, pipe, mut helper) = if confinement.enabled() {
        let (child, pipe, helper) = spawn_confined(cwd, tmp, &req, confinement).await?;
        (child, pipe, Some(helper))
    } else {
        let (child, pipe) = spawn(cwd, tmp, &req)?;
        (child, pipe, None)
    };
    let _cgroup = CgroupGuard {
        cleanup: helper.as_ref().and_then(|h| h.cgroup.clone()),
    };
    let mut group = GroupGuard::for_child(&child)?;
    let mut output = Output::new(pipe, req.output_limit);

    let cancelled = req.cancel.cancelled();
    tokio::pin!(cancelled);
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);

    let ending = loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break Ending::Cancelled,
            finish = finished(&mut child, helper.as_mut()) => {
                break Ending::Exited(finish.map_err(|source| SandboxError::Wait { source })?)
            }
            () = &mut deadline => break Ending::TimedOut,
            () = output.read_some() => {}
        }
    };

    // Whatever happened, nothing the command started may outlive it. A confined command's
    // helper does that itself once its lifeline is cut; it gets a moment before the group is
    // killed outright.
    if let Some(helper) = helper.as_mut() {
        helper.lifeline.take();
        if !matches!(ending, Ending::Exited(_)) {
            let _ = tokio::time::timeout(STOP_GRACE, helper.read_status()).await;
        }
    }
    group.kill();
    let exit_code = match ending {
        Ending::Cancelled => {
            reap(&mut child, &mut group).await;
            return Err(SandboxError::Cancelled);
        }
        Ending::TimedOut => {
            reap(&mut child, &mut group).await;
            None
        }
        Ending::Exited(Finish::SetupFailed(reason)) => {
            return Err(SandboxError::Confinement { reason });
        }
        Ending::Exited(Finish::Code(code)) => {
            // A confined command's helper may still be tearing its namespaces down: it was
            // killed above and is reaped in the background.
            group.disarm();
            code
        }
    };
    output.drain(DRAIN_DEADLINE).await;
    let truncated_bytes = output.buf.dropped();
    Ok(CommandOutput {
        exit_code,
        output: output.buf.into_string(),
        timed_out: matches!(ending, Ending::TimedOut),
        truncated_bytes,
    })
}

enum Ending {
    Exited(Finish),
    TimedOut,
    Cancelled,
}

/// How a command ended.
enum Finish {
    /// Its exit code; None when a signal ended it.
    Code(Option<i32>),
    /// The sandbox could not confine it; it did not run.
    SetupFailed(String),
}

/// Completes when the command is over: the shell's exit, or for a confined command the end of
/// its helper's status channel. Cancel safe (what was read is kept in the helper).
async fn finished(child: &mut Child, helper: Option<&mut Helper>) -> io::Result<Finish> {
    match helper {
        None => Ok(Finish::Code(child.wait().await?.code())),
        Some(helper) => {
            helper.read_status().await;
            Ok(helper.finish())
        }
    }
}

/// A confined command's helper: its lifeline (stdin; closing it stops the command) and its
/// status channel (stderr: setup errors and the exit code).
struct Helper {
    lifeline: Option<ChildStdin>,
    status: Option<ChildStderr>,
    text: Vec<u8>,
    /// The command's cgroup, removed when the command is over.
    cgroup: Option<(confine::CgroupParent, String)>,
}

impl Helper {
    /// Reads the status channel to its end. Cancel safe.
    async fn read_status(&mut self) {
        let Some(status) = self.status.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 512];
        loop {
            match status.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                // Bounded: a helper writes a few short lines.
                Ok(n) if self.text.len() < 64 * 1024 => self.text.extend_from_slice(&chunk[..n]),
                Ok(_) => {}
            }
        }
        self.status = None;
    }

    fn finish(&self) -> Finish {
        let text = String::from_utf8_lossy(&self.text);
        if let Some(reason) = text
            .lines()
            .find_map(|l| l.strip_prefix(confine::ERROR_PREFIX))
        {
            return Finish::SetupFailed(reason.to_owned());
        }
        let code = text
            .lines()
            .find_map(|l| l.strip_prefix(confine::EXIT_PREFIX))
            .and_then(|c| c.trim().parse::<i32>().ok());
        Finish::Code(code)
    }
}

/// Starts the shell with stdout and stderr on one pipe, so their lines stay in the order the
/// command wrote them, and returns the pipe's read end.
fn spawn(
    cwd: &Path,
    tmp: &Path,
    req: &CommandRequest<'_>,
) -> Result<(Child, Receiver), SandboxError> {
    let spawn_err = |source| SandboxError::Spawn { source };
    let (read_end, write_end) = output_pipe().map_err(spawn_err)?;
    let pipe = Receiver::from_owned_fd(read_end).map_err(spawn_err)?;
    let stderr_end = write_end.try_clone().map_err(spawn_err)?;
    // The Command (and with it the parent's copies of the write end) is dropped at the end of
    // this statement, so the pipe reaches end of file once the command's processes are gone.
    let child = Command::new(SHELL)
        .arg("-c")
        .arg(req.command)
        .current_dir(cwd)
        .env_clear()
        .envs(base_env(cwd, tmp))
        .envs(req.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr_end))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    Ok((child, pipe))
}

/// Starts the sandbox helper (the runner's own binary) and hands it the plan. The returned
/// stdin is the command's lifeline: closing it stops the command.
async fn spawn_confined(
    cwd: &Path,
    tmp: &Path,
    req: &CommandRequest<'_>,
    confinement: &Confinement,
) -> Result<(Child, Receiver, Helper), SandboxError> {
    let spawn_err = |source| SandboxError::Spawn { source };
    let (read_end, write_end) = output_pipe().map_err(spawn_err)?;
    let pipe = Receiver::from_owned_fd(read_end).map_err(spawn_err)?;
    let mut env = base_env(cwd, tmp);
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let plan = confinement.plan(CommandSpec {
        command: req.command,
        session_dir: cwd,
        env,
        network: req.network,
        timeout: req.timeout,
    });
    let mut line = serde_json::to_vec(&plan).map_err(|e| spawn_err(io::Error::other(e)))?;
    line.push(b'\n');
    let mut child = Command::new(confinement.helper())
        .arg(confine::EXEC_ARG)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let mut lifeline = child.stdin.take();
    if let Some(stdin) = lifeline.as_mut() {
        // A helper that died before reading its plan says why on its status channel.
        let _ = stdin.write_all(&line).await;
    }
    let helper = Helper {
        lifeline,
        status: child.stderr.take(),
        text: Vec::new(),
        cgroup: plan
            .cgroup
            .clone()
            .filter(|_| plan.has(confine::Layer::Cgroup))
            .map(|parent| (parent, plan.cgroup_name.clone())),
    };
    Ok((child, pipe, helper))
}

/// Removes a confined command's cgroup once the command is over, killing what is left in it
/// (for instance when the helper itself was killed).
struct CgroupGuard {
    cleanup: Option<(confine::CgroupParent, String)>,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let Some((parent, name)) = self.cleanup.take() else {
            return;
        };
        // The helper may still be exiting (tearing its namespaces down): the directory can
        // only go once it is gone, so this waits off the async threads.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || confine::remove_cgroup(&parent, &name));
            }
            Err(_) => confine::remove_cgroup(&parent, &name),
        }
    }
}

/// A pipe whose ends are close-on-exec, so that commands started concurrently by other
/// sessions never inherit (and hold open) this command's output.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Without pipe2 the flag is set right after creation, as std does for its own pipes.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let (read_end, write_end) = nix::unistd::pipe()?;
    for fd in [&read_end, &write_end] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok((read_end, write_end))
}

/// Reaps the killed shell so it does not linger as a zombie; after that its group id may be
/// reused by an unrelated process, so the guard must not signal it any more.
async fn reap(child: &mut Child, group: &mut GroupGuard) {
    match tokio::time::timeout(REAP_DEADLINE, child.wait()).await {
        Ok(_) => group.disarm(),
        Err(_) => tracing::warn!("killed command did not exit within {REAP_DEADLINE:?}"),
    }
}

/// SIGKILLs the command's process group when dropped, unless disarmed.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn for_child(child: &Child) -> Result<Self, SandboxError> {
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| SandboxError::Spawn {
                source: io::Error::other("the started command has no process id"),
            })?;
        // With process_group(0) the shell leads a new group whose id is its pid.
        Ok(Self {
            pgid: Some(Pid::from_raw(pid)),
        })
    }

    fn kill(&self) {
        let Some(pgid) = self.pgid else { return };
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(%pgid, error = %e, "could not kill command process group"),
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The command's merged stdout and stderr, kept within the cap as they arrive.
struct Output {
    pipe: Option<Receiver>,
    buf: CappedBuffer,
    chunk: Box<[u8]>,
}

impl Output {
    fn new(pipe: Receiver, limit: usize) -> Self {
        Self {
            pipe: Some(pipe),
            buf: CappedBuffer::new(limit),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// Reads one chunk; never completes once the pipe is closed (end of file or error).
    /// Cancel safe: a read that has not completed has consumed nothing.
    async fn read_some(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.chunk).await {
            Ok(0) => self.pipe = None,
            Ok(n) => self.buf.push(&self.chunk[..n]),
            Err(e) => {
                tracing::debug!(error = %e, "reading command output failed; treating as closed");
                self.pipe = None;
            }
        }
    }

    /// Reads what is left until the pipe closes or `deadline` passes.
    async fn drain(&mut self, deadline: Duration) {
        let drained = async {
            while self.pipe.is_some() {
                self.read_some().await;
            }
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            tracing::debug!("command output still open after the command ended; not waiting");
        }
    }
}
