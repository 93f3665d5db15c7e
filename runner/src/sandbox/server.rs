//! Long-lived processes that talk over their stdin and stdout (MCP stdio servers), started in a
//! session's sandbox with the same confinement as commands.
//!
//! Unlike a command, a server has no deadline and no captured output: its stdout and stdin are
//! handed to the caller, and its stderr (logs) is kept, the last few KiB, for error messages.
//! Confined, the helper gets the plan in a variable (its stdin is the server's), and its
//! lifeline is the status channel: dropping our read end (on [`ServerProcess::stop`], on drop,
//! or when the runner dies) makes it end every process of the server. Unconfined, the server
//! leads its own process group, which is killed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::SandboxError;
use super::command::base_env;
use super::confine::{self, CommandSpec, Confinement, Network};

/// How much of the server's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// How long a server gets to exit on its own once its stdin is closed (the MCP way to stop a
/// stdio server) before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long the helper gets to end the server's processes once its lifeline is cut.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A server to start: a program with its arguments, run directly (no shell expansion).
pub struct ServerRequest<'a> {
    /// Absolute path of the program.
    pub program: &'a Path,
    pub args: &'a [String],
    /// Added to the minimal base environment (a `PATH` here replaces the base one).
    pub env: &'a BTreeMap<String, String>,
    pub network: Network,
    /// Read-only paths the server needs beside the system directories (what was installed for
    /// it); only used when confined.
    pub read_paths: &'a [PathBuf],
}

/// A started server: take its pipes with [`ServerProcess::take_pipes`], end it with
/// [`ServerProcess::stop`] (or by dropping it, which kills it at once).
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// Reads stderr (confined: the helper's status channel) into `tail`; aborting it closes
    /// the read end, which is the confined server's lifeline.
    reader: Option<JoinHandle<()>>,
    tail: Arc<Mutex<Tail>>,
    pgid: Option<Pid>,
    cgroup: Option<(confine::CgroupParent, String)>,
}

/// The end of the server's stderr, and what the helper said on its status channel.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// The helper could not confine the server (it never ran).
    setup_error: Option<String>,
    exit_code: Option<i32>,
    closed: bool,
}

impl ServerProcess {
    pub fn take_pipes(&mut self) -> Option<(ChildStdout, ChildStdin)> {
        Some((self.stdout.take()?, self.stdin.take()?))
    }

    /// What the server wrote on stderr last, and how it ended if it did, for error messages.
    pub fn diagnostics(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = &tail.setup_error {
            return format!("the sandbox could not confine it, so it did not run: {reason}");
        }
        let mut parts = Vec::new();
        if let Some(code) = tail.exit_code {
            parts.push(match code {
                127 => "it exited with code 127 (command not found)".to_owned(),
                code => format!("it exited with code {code}"),
            });
        }
        let text = String::from_utf8_lossy(&tail.bytes);
        let text = text.trim();
        if !text.is_empty() {
            parts.push(format!("its stderr ended with: {text}"));
        }
        parts.join("; ")
    }

    /// Whether the server's process is gone (its stderr closed).
    pub fn exited(&self) -> bool {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    /// Ends the server: closes its stdin and gives it a moment to exit, then cuts the helper's
    /// lifeline (or kills its process group) and waits for it. Nothing it started survives.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        drop(self.stdout.take());
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            if let Some(reader) = self.reader.take() {
                reader.abort();
            }
            if tokio::time::timeout(STOP_GRACE, self.child.wait())
                .await
                .is_err()
            {
                self.kill_group();
                let _ = tokio::time::timeout(STOP_GRACE, self.child.wait()).await;
            }
        }
        // Confined without namespaces the helper kills what is left; unconfined, a process
        // that outlived the server in its group goes now.
        self.kill_group();
        self.pgid = None;
    }

    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(%pgid, error = %e, "could not kill an MCP server's process group")
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
        self.kill_group();
        if let Some((parent, name)) = self.cgroup.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || confine::remove_cgroup(&parent, &name));
                }
                Err(_) => confine::remove_cgroup(&parent, &name),
            }
        }
    }
}

/// Starts the server in `cwd` (the session directory).
pub(super) fn spawn(
    cwd: &Path,
    session_tmp: &Path,
    req: ServerRequest<'_>,
    confinement: &Confinement,
) -> Result<ServerProcess, SandboxError> {
    let spawn_err = |source| SandboxError::Spawn { source };
    let tmp = confinement.tmp_dir(session_tmp);
    let mut env = base_env(cwd, tmp);
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut cgroup = None;
    let mut command = if confinement.enabled() {
        let mut plan = confinement.plan(CommandSpec {
            command: &exec_line(req.program, req.args),
            session_dir: cwd,
            env,
            network: req.network,
            timeout: Duration::ZERO,
        });
        plan.stdio = true;
        plan.read_paths.extend(req.read_paths.iter().cloned());
        cgroup = plan
            .cgroup
            .clone()
            .filter(|_| plan.has(confine::Layer::Cgroup))
            .map(|parent| (parent, plan.cgroup_name.clone()));
        let json = serde_json::to_string(&plan).map_err(|e| spawn_err(io::Error::other(e)))?;
        let mut command = Command::new(confinement.helper());
        command
            .arg(confine::EXEC_ARG)
            .env_clear()
            .env(confine::PLAN_ENV, json);
        command
    } else {
        let mut command = Command::new(req.program);
        command.args(req.args).env_clear().envs(&env);
        command
    };
    let mut child = command
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let reader = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(read_stderr(stderr, tail.clone())));
    Ok(ServerProcess {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        child,
        reader,
        tail,
        pgid,
        cgroup,
    })
}

/// `exec 'program' 'arg'...`: the shell the helper runs replaces itself with the server, whose
/// arguments are passed as given (single-quoted, so nothing in them is expanded).
fn exec_line(program: &Path, args: &[String]) -> String {
    let mut line = String::from("exec ");
    line.push_str(&quote(&program.display().to_string()));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Keeps the last [`STDERR_TAIL`] bytes of the server's stderr, and the helper's status lines.
async fn read_stderr(mut stderr: ChildStderr, tail: Arc<Mutex<Tail>>) {
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .absorb(&chunk[..n], false);
    }
    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    tail.absorb(&[], true);
    tail.closed = true;
}

impl Tail {
    /// Adds `bytes` read from the channel and takes out the helper's status lines. A line is
    /// read only once it is complete (a read can end anywhere, in a status line too), or at
    /// the end of the channel (`end`).
    fn absorb(&mut self, bytes: &[u8], end: bool) {
        self.bytes.extend_from_slice(bytes);
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        let mut kept = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let complete = end || line.ends_with('\n');
            if complete && let Some(reason) = line.strip_prefix(confine::ERROR_PREFIX) {
                self.setup_error = Some(reason.trim().to_owned());
            } else if complete && let Some(code) = line.strip_prefix(confine::EXIT_PREFIX) {
                self.exit_code = code.trim().parse().ok();
            } else {
                kept.push_str(line);
            }
        }
        let cut = kept.len().saturating_sub(STDERR_TAIL);
        let cut = (cut..kept.len())
            .find(|i| kept.is_char_boundary(*i))
            .unwrap_or(0);
        self.bytes = kept.as_bytes()[cut..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_split_across_reads_are_still_read() {
        let channel = format!("boom-on-stderr\n{}3\n", confine::EXIT_PREFIX);
        // Every place a read can end, the status line's middle included.
        for split in 0..=channel.len() {
            let mut tail = Tail::default();
            tail.absorb(&channel.as_bytes()[..split], false);
            tail.absorb(&channel.as_bytes()[split..], false);
            tail.absorb(&[], true);
            assert_eq!(tail.exit_code, Some(3), "split at {split}");
            assert_eq!(
                String::from_utf8_lossy(&tail.bytes),
                "boom-on-stderr\n",
                "split at {split}"
            );
        }
        // A last status line without its newline still counts at the end.
        let mut tail = Tail::default();
        tail.absorb(format!("{}7", confine::EXIT_PREFIX).as_bytes(), false);
        assert_eq!(tail.exit_code, None);
        tail.absorb(&[], true);
        assert_eq!(tail.exit_code, Some(7));
    }

    #[test]
    fn exec_line_quotes_every_word() {
        let line = exec_line(
            Path::new("/opt/my server/bin"),
            &["a b".into(), "it's".into(), "$HOME".into()],
        );
        assert_eq!(line, r"exec '/opt/my server/bin' 'a b' 'it'\''s' '$HOME'");
    }
}
