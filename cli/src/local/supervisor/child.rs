//! One supervised child, whichever it is: spawning it with its output piped into its log,
//! waiting for it to become healthy, its health checks, what happens when it exits (restart
//! with backoff, or give up), and stopping it. What differs between the control plane and the
//! runner is data, in a [`Spec`] (see `components`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

use super::super::health::{self, ServerHealth};
use super::super::logs::{self, RotatingLog};
use super::super::pidfile;
use super::super::restart::{Decision, RestartPolicy, RestartTracker};
use super::super::secrets::Secret;
use super::super::state::{ChildPhase, ComponentState};
use super::super::{LocalError, Paths};
use super::signals::{Events, Signals};
use super::words::{describe, human, indent};
use crate::args::Component;

const SERVER_ANNOUNCE: &str = "stigmer-server listening on ";
/// Readiness is polled this often while a child is starting.
pub(super) const STARTING_POLL: Duration = Duration::from_millis(200);
/// After a forced stop of a draining child, how long before SIGKILL.
const FORCE_GRACE: Duration = Duration::from_secs(5);

/// What one kind of child is, as opposed to how any child is supervised.
pub(super) struct Spec {
    /// Names its log file and PID file.
    pub component: Component,
    /// For people: "the runner".
    pub name: &'static str,
    pub binary: PathBuf,
    /// How long a stop may take before SIGKILL.
    pub stop_timeout: Duration,
    /// Stopping lets its work finish first (the runner's in-flight executions): a second
    /// signal repeats SIGTERM, its own "exit now", before SIGKILL. Otherwise a second signal
    /// kills at once.
    pub drains: bool,
    pub liveness: Liveness,
    pub policy: RestartPolicy,
    pub on_give_up: GiveUp,
    /// Appended to a start-up error when the end of the log contains the first string.
    pub start_hint: Option<(&'static str, &'static str)>,
}

/// What a failed health check of a running child leads to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Liveness {
    /// Nothing but the phase: `not serving` or `unreachable`.
    Report,
    /// A restart, after `after` failed checks in a row, or when it does not become ready
    /// within the start-up timeout.
    Restart { after: u32 },
}

/// What giving up on a child means for the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GiveUp {
    /// Nothing works without it: the whole platform stops.
    StopPlatform,
    /// The rest stays up for a person to look at.
    KeepPlatform,
}

/// How a child's health is asked.
#[derive(Debug, Clone)]
pub(super) enum Probe {
    /// gRPC health of the control plane at this endpoint.
    Grpc(String),
    /// The runner's `/readyz`.
    Ready(SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    NotServing,
    Unreachable,
}

impl Probe {
    async fn check(&self) -> Health {
        match self {
            Probe::Grpc(endpoint) => match health::server_health(endpoint).await {
                ServerHealth::Serving => Health::Healthy,
                ServerHealth::NotServing => Health::NotServing,
                ServerHealth::Unreachable => Health::Unreachable,
            },
            Probe::Ready(addr) => {
                if health::runner_ready(*addr).await {
                    Health::Healthy
                } else {
                    Health::NotServing
                }
            }
        }
    }
}

/// What became of a child that exited.
pub(super) enum Exit {
    Restarting,
    /// No further restart; the message says why and what to do.
    GaveUp {
        name: &'static str,
        message: String,
        stop_platform: bool,
    },
}

struct Running {
    child: tokio::process::Child,
    pid: u32,
    since: Instant,
    /// The tasks copying its output into the log.
    pipes: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits (briefly) until the output of an exited child is in its log.
    async fn output_flushed(&mut self) {
        for pipe in &mut self.pipes {
            let _ = tokio::time::timeout(Duration::from_secs(2), pipe).await;
        }
        self.pipes.clear();
    }
}

pub(super) struct Child {
    pub spec: Spec,
    /// What `state.json` says about it.
    pub record: ComponentState,
    running: Option<Running>,
    probe: Option<Probe>,
    restarts: RestartTracker,
    restart_at: Option<tokio::time::Instant>,
    /// Set when the supervisor itself stopped it for being unhealthy: SIGKILL if it is still
    /// there at this time.
    kill_at: Option<tokio::time::Instant>,
    failed_checks: u32,
    log: RotatingLog,
    log_path: PathBuf,
    pid_file: PathBuf,
    events: Events,
}

impl Child {
    pub(super) fn new(
        spec: Spec,
        paths: &Paths,
        log_max_bytes: u64,
        events: Events,
    ) -> Result<Self, LocalError> {
        let log_path = paths.log(spec.component);
        Ok(Self {
            record: ComponentState {
                binary: spec.binary.display().to_string(),
                phase: ChildPhase::Starting,
                ..Default::default()
            },
            running: None,
            probe: None,
            restarts: RestartTracker::new(spec.policy),
            restart_at: None,
            kill_at: None,
            failed_checks: 0,
            log: RotatingLog::open(&log_path, log_max_bytes)?,
            log_path,
            pid_file: paths.pid_file(spec.component),
            events,
            spec,
        })
    }

    pub(super) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub(super) fn set_probe(&mut self, probe: Probe) {
        self.probe = Some(probe);
    }

    /// When a scheduled restart is due.
    pub(super) fn restart_at(&self) -> Option<tokio::time::Instant> {
        self.restart_at
    }

    /// When an unhealthy child that was asked to stop gets SIGKILL.
    pub(super) fn kill_at(&self) -> Option<tokio::time::Instant> {
        self.kill_at
    }

    pub(super) fn take_restart(&mut self) -> bool {
        self.restart_at.take().is_some()
    }

    // ---- start ---------------------------------------------------------------------------

    /// Starts it in its own process group with its output piped into its log (and the
    /// terminal when `echo`), every secret in `redact` scrubbed. The receiver gets the address
    /// the control plane announces on its first stdout line.
    pub(super) fn spawn(
        &mut self,
        mut cmd: Command,
        redact: Vec<Secret>,
        echo: bool,
    ) -> Result<oneshot::Receiver<SocketAddr>, LocalError> {
        let what = self.spec.name;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal must reach the supervisor only,
            // which then stops the children in order.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
            what,
            path: self.spec.binary.clone(),
            source,
        })?;
        let pid = child
            .id()
            .ok_or_else(|| LocalError::StartFailed(format!("{what} exited at once")))?;
        let (tx, rx) = oneshot::channel();
        let echo = echo.then_some(self.spec.component.name());
        let pipes = [
            pipe(
                child.stdout.take(),
                self.log.clone(),
                echo,
                redact.clone(),
                Some(tx),
            ),
            pipe(child.stderr.take(), self.log.clone(), echo, redact, None),
        ];
        pidfile::write_pid(&self.pid_file, pid)?;
        self.record.pid = Some(pid);
        self.record.phase = ChildPhase::Starting;
        self.running = Some(Running {
            child,
            pid,
            since: Instant::now(),
            pipes: pipes.into_iter().flatten().collect(),
        });
        self.failed_checks = 0;
        Ok(rx)
    }

    /// Waits for the address the child announces (the control plane, started on port 0).
    pub(super) async fn wait_announced(
        &mut self,
        announced: oneshot::Receiver<SocketAddr>,
        deadline: tokio::time::Instant,
    ) -> Result<SocketAddr, LocalError> {
        let name = self.spec.name;
        let failure = tokio::select! {
            addr = announced => match addr {
                Ok(addr) => return Ok(addr),
                // Its output closed: it is exiting. Say how, if it does so promptly.
                Err(_) => match tokio::time::timeout(Duration::from_secs(2), self.exited()).await {
                    Ok(status) => format!("{name} exited during start-up ({})", describe(status.ok())),
                    Err(_) => format!("{name} closed its output before it was listening"),
                },
            },
            status = self.exited() => {
                format!("{name} exited during start-up ({})", describe(status.ok()))
            }
            _ = tokio::time::sleep_until(deadline) => {
                format!("{name} did not start listening in time")
            }
        };
        Err(self.start_error(&failure).await)
    }

    /// Polls its health check until it is healthy, it exits, or `deadline`.
    pub(super) async fn wait_healthy(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(), LocalError> {
        let name = self.spec.name;
        loop {
            if let Some(probe) = &self.probe
                && probe.check().await == Health::Healthy
            {
                return Ok(());
            }
            if let Some(status) = self
                .running
                .as_mut()
                .and_then(|r| r.child.try_wait().ok().flatten())
            {
                let how = describe(Some(status));
                let err = self
                    .start_error(&format!("{name} exited during start-up ({how})"))
                    .await;
                self.running = None;
                self.record.pid = None;
                self.record.last_exit = Some(how);
                return Err(err);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self
                    .start_error(&format!("{name} did not become healthy in time"))
                    .await);
            }
            tokio::time::sleep(STARTING_POLL).await;
        }
    }

    /// A start-up error with the end of the child's log, which usually says why.
    async fn start_error(&mut self, what: &str) -> LocalError {
        // Whatever the child printed last must be in the file before it is quoted.
        if let Some(running) = &mut self.running {
            running.output_flushed().await;
        }
        let tail = logs::last_lines(&self.log_path, 15);
        let hint = match self.spec.start_hint {
            Some((needle, hint)) if tail.contains(needle) => hint,
            _ => "",
        };
        LocalError::StartFailed(format!(
            "{what}. The end of {}:\n{}{hint}",
            self.log_path.display(),
            indent(&tail)
        ))
    }

    // ---- supervision ---------------------------------------------------------------------

    /// Resolves when the running child exits; never while none runs.
    pub(super) async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.running {
            Some(r) => r.child.wait().await,
            None => std::future::pending().await,
        }
    }

    /// The child exited unexpectedly (or could not be restarted): restart it after a backoff,
    /// or give up.
    pub(super) fn on_exit(&mut self, status: std::io::Result<ExitStatus>) -> Exit {
        let name = self.spec.name;
        let ran_for = self.running.take().map(|r| r.since.elapsed());
        // Set only while the supervisor itself is stopping an unhealthy child.
        let was_unhealthy = self.kill_at.take().is_some();
        let how = describe(status.ok());
        self.record.pid = None;
        self.record.last_exit = Some(how.clone());
        pidfile::remove(&self.pid_file);
        self.events.log(&format!(
            "{name} {} ({how}) after {}",
            if was_unhealthy {
                "that was not ready stopped"
            } else {
                "exited unexpectedly"
            },
            ran_for.map(human).unwrap_or_else(|| "0s".into())
        ));
        let policy = self.spec.policy;
        match self.restarts.on_exit(Instant::now()) {
            Decision::RestartAfter(delay) => {
                self.record.restarts = self.restarts.total();
                self.record.phase = ChildPhase::Restarting;
                self.events.log(&format!(
                    "restarting {name} in {} (restart {}; at most {} within {})",
                    human(delay),
                    self.restarts.total(),
                    policy.max_restarts,
                    human(policy.window)
                ));
                self.restart_at = Some(tokio::time::Instant::now() + delay);
                Exit::Restarting
            }
            Decision::GiveUp => {
                self.record.phase = ChildPhase::GaveUp;
                let stop_platform = self.spec.on_give_up == GiveUp::StopPlatform;
                let message = format!(
                    "gave up on {name}: it exited {} times within {} (last: {how}). \
                     See `stigmer local logs --component {}`{}",
                    policy.max_restarts + 1,
                    human(policy.window),
                    self.spec.component.name(),
                    if stop_platform {
                        ""
                    } else {
                        "; then `stigmer local stop` and start again"
                    }
                );
                self.events.log(&message);
                Exit::GaveUp {
                    name,
                    message,
                    stop_platform,
                }
            }
        }
    }

    /// One health check of a running child; returns whether its record changed. Under
    /// [`Liveness::Restart`], a child that is alive but stays unready for that many checks in
    /// a row (or past `startup_timeout` while starting) is stopped, and then restarted like
    /// any child that exits.
    pub(super) async fn check(&mut self, startup_timeout: Duration) -> bool {
        let (Some(running), Some(probe)) = (&self.running, &self.probe) else {
            return false;
        };
        let name = self.spec.name;
        let (pid, age) = (running.pid, running.since.elapsed());
        let health = probe.check().await;
        match self.spec.liveness {
            Liveness::Report => {
                let phase = match health {
                    Health::Healthy => ChildPhase::Running,
                    Health::NotServing => ChildPhase::NotServing,
                    Health::Unreachable => ChildPhase::Unreachable,
                };
                let changed = phase != self.record.phase;
                self.record.phase = phase;
                changed
            }
            Liveness::Restart { after } => {
                let starting = self.record.phase == ChildPhase::Starting;
                if health == Health::Healthy {
                    self.failed_checks = 0;
                    if starting {
                        self.events.log(&format!("{name} (pid {pid}) is ready"));
                        self.record.phase = ChildPhase::Running;
                    }
                    return starting;
                }
                if self.kill_at.is_some() {
                    return false;
                }
                if starting {
                    if age > startup_timeout {
                        self.events.log(&format!(
                            "{name} (pid {pid}) did not become ready within {}: restarting it",
                            human(startup_timeout)
                        ));
                        self.stop_unhealthy(pid);
                    }
                    return false;
                }
                self.failed_checks += 1;
                self.events.log(&format!(
                    "{name} (pid {pid}) is not ready ({} of {after} checks)",
                    self.failed_checks
                ));
                if self.failed_checks >= after {
                    self.events
                        .log(&format!("{name} (pid {pid}) stays unready: restarting it"));
                    self.stop_unhealthy(pid);
                }
                true
            }
        }
    }

    fn stop_unhealthy(&mut self, pid: u32) {
        let _ = pidfile::signal(pid, Signal::SIGTERM);
        self.kill_at = Some(tokio::time::Instant::now() + self.spec.stop_timeout);
    }

    /// An unhealthy child asked to stop did not: SIGKILL.
    pub(super) fn kill_overdue(&mut self) {
        self.kill_at = None;
        if let Some(r) = &self.running {
            self.events.log(&format!(
                "{} (pid {}) did not stop in time: killing it",
                self.spec.name, r.pid
            ));
            let _ = pidfile::signal(r.pid, Signal::SIGKILL);
        }
    }

    // ---- stop ----------------------------------------------------------------------------

    /// Stops it for good: SIGTERM, then SIGKILL after its stop timeout. A signal to the
    /// supervisor meanwhile forces (unless `forced` already): see [`Spec::drains`]. Returns
    /// whether the stop was forced.
    pub(super) async fn stop(&mut self, signals: &mut Signals, mut forced: bool) -> bool {
        let name = self.spec.name;
        self.restart_at = None;
        if let Some(mut running) = self.running.take() {
            let pid = running.pid;
            self.events.log(&format!(
                "stopping {name} (pid {pid}){}",
                if self.spec.drains {
                    ": in-flight executions drain first (signal again to force)"
                } else {
                    ""
                }
            ));
            let _ = pidfile::signal(pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + self.spec.stop_timeout;
            let status = tokio::select! {
                status = running.child.wait() => status.ok(),
                _ = tokio::time::sleep_until(deadline) => {
                    self.events.log(&format!(
                        "{name} did not {} in time: killing it",
                        if self.spec.drains { "drain" } else { "stop" }
                    ));
                    kill_and_reap(&mut running).await
                }
                signal = signals.recv(), if !forced => {
                    forced = true;
                    self.events.log(&format!("{signal} again: forcing {name} to exit"));
                    if self.spec.drains {
                        let _ = pidfile::signal(pid, Signal::SIGTERM);
                        match tokio::time::timeout(FORCE_GRACE, running.child.wait()).await {
                            Ok(status) => status.ok(),
                            Err(_) => kill_and_reap(&mut running).await,
                        }
                    } else {
                        kill_and_reap(&mut running).await
                    }
                }
            };
            let how = describe(status);
            self.events.log(&format!("{name} stopped ({how})"));
            self.record.last_exit = Some(how);
        }
        self.record.pid = None;
        // A child given up on stays so in the record: `status` goes by it.
        if self.record.phase != ChildPhase::GaveUp {
            self.record.phase = ChildPhase::Stopped;
        }
        pidfile::remove(&self.pid_file);
        forced
    }
}

async fn kill_and_reap(r: &mut Running) -> Option<ExitStatus> {
    let _ = pidfile::signal(r.pid, Signal::SIGKILL);
    tokio::time::timeout(FORCE_GRACE, r.child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// Copies a child's output into its log line by line (and to the terminal when `echo`
/// names the component), scrubbing the keys. The control plane's first stdout line
/// announces its address.
fn pipe(
    output: Option<impl AsyncRead + Unpin + Send + 'static>,
    log: RotatingLog,
    echo: Option<&'static str>,
    redact: Vec<Secret>,
    mut announce: Option<oneshot::Sender<SocketAddr>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let output = output?;
    Some(tokio::spawn(async move {
        let mut reader = BufReader::new(output);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let text = scrub(&String::from_utf8_lossy(&line), &redact);
            if let Some(addr) = text
                .strip_prefix(SERVER_ANNOUNCE)
                .and_then(|rest| rest.trim().parse::<SocketAddr>().ok())
                && let Some(tx) = announce.take()
            {
                let _ = tx.send(addr);
            }
            log.write_line(text.as_bytes());
            if let Some(name) = echo {
                let _ = write!(std::io::stderr(), "{name} | {text}");
            }
        }
    }))
}

/// Replaces the keys with `<redacted>`, should a child ever print one. Keys too short to be
/// real are left alone (they would match ordinary text).
fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut text = text.to_string();
    for s in secrets {
        if s.expose().len() >= 8 && text.contains(s.expose()) {
            text = text.replace(s.expose(), "<redacted>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_scrubbed_from_child_output() {
        let key = Secret::new("sk-ant-0123456789".into());
        let runner = Secret::new("stigmer-runner-0123abcd".into());
        let both = [key.clone(), runner];
        assert_eq!(
            scrub("auth sk-ant-0123456789 failed\n", &both),
            "auth <redacted> failed\n"
        );
        assert_eq!(
            scrub("sk-ant-0123456789 stigmer-runner-0123abcd\n", &both),
            "<redacted> <redacted>\n"
        );
        assert_eq!(scrub("nothing here\n", &both), "nothing here\n");
        let short = Secret::new("abc".into());
        assert_eq!(scrub("abc\n", &[short]), "abc\n");
    }
}
