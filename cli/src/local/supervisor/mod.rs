//! The supervisor: `stigmer local start --foreground`, whether typed by a person or started
//! detached by `stigmer local start`.
//!
//! It owns both children, each a [`Child`] described by data (`components`): the control
//! plane starts first and must answer its gRPC health check; then the runner, which must
//! report ready on `/readyz`. From then on a runner that exits, or stays unready for several
//! checks, is restarted with exponential backoff until a bounded number of restarts within a
//! window, where the supervisor gives up and says so in the state file and the log. On
//! SIGTERM, SIGINT or SIGHUP the runner is asked to drain first (its in-flight executions
//! finish), then the control plane stops; a second signal forces. This file holds only that
//! order and the event loop; `child` does the rest, the same for both.
//!
//! The children run in their own process groups, so that a Ctrl-C typed at the terminal
//! reaches the supervisor only and the order above holds. Their output is piped through the
//! supervisor into size-rotated log files, with the LLM key scrubbed should it ever appear.

mod child;
mod components;
mod signals;
mod words;

pub use words::describe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use self::child::{Child, Exit, Probe, STARTING_POLL};
use self::signals::{Events, Signals};
use super::keys::PlatformKeys;
use super::logs;
use super::pidfile;
use super::restart::RestartPolicy;
use super::secrets::{LlmSettings, Secret};
use super::state::{ChildPhase, ComponentState, Phase, State};
use super::{LocalError, Paths};
use crate::args::Component;

/// Everything the supervisor needs, resolved by `start` before anything runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub server_bin: PathBuf,
    pub runner_bin: PathBuf,
    /// Control plane port on 127.0.0.1; 0 lets the server pick one.
    pub port: u16,
    pub runner_http_port: Option<u16>,
    pub llm: LlmSettings,
    /// The runner's `SANDBOX_ROOT_DIR`: absolute, outside the data directory's contents.
    pub sandbox_root: PathBuf,
    /// The platform's keys: the control plane reads both from their files; the runner gets
    /// the runner key in its environment.
    pub keys: PlatformKeys,
    pub policy: RestartPolicy,
    pub health_interval: Duration,
    pub unhealthy_after: u32,
    pub startup_timeout: Duration,
    pub runner_stop_timeout: Duration,
    pub server_stop_timeout: Duration,
    pub log_max_bytes: u64,
    /// In front of a person: supervisor events and the children's output also go to the
    /// terminal. A detached supervisor's stderr already is its log file.
    pub interactive: bool,
}

/// Runs the supervisor until it is told to stop. Returns its exit code.
pub async fn run(settings: Settings, on_ready: impl FnOnce(&State)) -> Result<u8, LocalError> {
    let paths = settings.paths.clone();
    paths.create_all()?;
    let Some(_lock) = pidfile::try_lock(&paths)? else {
        return Err(already_running(&paths));
    };
    // Installed before any child exists, so that no signal can find a half-started platform
    // without a handler.
    let mut signals = Signals::install()?;
    if settings.interactive {
        // A detaching `start` rotates before it starts us, so that its own error output
        // lands in the new file.
        for c in Component::ALL {
            logs::rotate(&paths.log(c), logs::KEEP)?;
        }
    }
    let events = Events::open(&paths, settings.interactive)?;
    let previous_state = State::read(&paths.state_file()).ok();
    let orphans = [
        (
            Component::Runner,
            binary_name(
                previous_state.as_ref().map(|s| &s.runner),
                &settings.runner_bin,
            ),
        ),
        (
            Component::Server,
            binary_name(
                previous_state.as_ref().map(|s| &s.server),
                &settings.server_bin,
            ),
        ),
    ];
    for note in pidfile::clean_stale(&paths, &orphans, Duration::from_secs(10)).await? {
        events.log(&note);
    }
    pidfile::write_pid(&paths.pid_file(Component::Supervisor), std::process::id())?;

    let mut sup = Supervisor::new(settings, events)?;
    sup.save();
    sup.events.log(&format!(
        "supervisor {} starting in {} (LLM: {})",
        std::process::id(),
        paths.root().display(),
        sup.settings.llm.summary()
    ));

    let started = tokio::select! {
        result = sup.start_all() => Some(result),
        name = signals.recv() => {
            sup.events.log(&format!("{name} during start-up: stopping"));
            None
        }
    };
    let code = match started {
        Some(Ok(())) => {
            sup.state.phase = Phase::Running;
            sup.save();
            sup.events.log(&format!(
                "platform ready: control plane {} (pid {}), runner pid {} (health http://{})",
                sup.state.endpoint,
                sup.state.server.pid.unwrap_or(0),
                sup.state.runner.pid.unwrap_or(0),
                sup.runner_addr
            ));
            on_ready(&sup.state);
            let reason = sup.supervise(&mut signals).await;
            sup.events.log(&format!("{reason}: stopping"));
            sup.shutdown(&mut signals).await
        }
        Some(Err(err)) => {
            sup.events.log(&format!("start-up failed: {err}"));
            sup.state.phase = Phase::Failed;
            sup.state.message = Some(err.to_string());
            sup.save();
            sup.shutdown(&mut signals).await;
            sup.state.phase = Phase::Failed;
            sup.save();
            sup.remove_pid_files();
            return Err(err);
        }
        None => sup.shutdown(&mut signals).await,
    };
    sup.remove_pid_files();
    Ok(code)
}

fn already_running(paths: &Paths) -> LocalError {
    LocalError::AlreadyRunning {
        pid: pidfile::read_pid(&paths.pid_file(Component::Supervisor)).unwrap_or(0),
        endpoint: State::read(&paths.state_file())
            .map(|s| s.endpoint)
            .unwrap_or_else(|_| "unknown".into()),
    }
}

/// The file name to recognise an orphan by: the one recorded by the previous supervisor,
/// else the one this supervisor would run.
fn binary_name(previous: Option<&ComponentState>, current: &std::path::Path) -> String {
    previous
        .map(|c| c.binary.as_str())
        .filter(|b| !b.is_empty())
        .map(std::path::Path::new)
        .unwrap_or(current)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Why the supervisor wakes up in its loop.
enum Event {
    Exited(Component, std::io::Result<ExitStatus>),
    RestartDue(Component),
    KillDue(Component),
    HealthCheck,
    Signal(&'static str),
}

/// The order of things: the control plane before the runner (which needs its endpoint), the
/// runner drained before the control plane stops; and the loop that waits for whatever
/// happens next.
struct Supervisor {
    settings: Settings,
    events: Events,
    /// The platform as a whole; the children's records are copied in at each save.
    state: State,
    server: Child,
    runner: Child,
    server_addr: SocketAddr,
    runner_addr: SocketAddr,
    next_health_at: tokio::time::Instant,
}

impl Supervisor {
    fn new(settings: Settings, events: Events) -> Result<Self, LocalError> {
        let paths = &settings.paths;
        let server = Child::new(
            components::control_plane(&settings),
            paths,
            settings.log_max_bytes,
            events.clone(),
        )?;
        let runner = Child::new(
            components::runner(&settings),
            paths,
            settings.log_max_bytes,
            events.clone(),
        )?;
        let state = State {
            phase: Phase::Starting,
            supervisor_pid: std::process::id(),
            started_at: jiff::Timestamp::now().to_string(),
            endpoint: String::new(),
            data_dir: paths.root().display().to_string(),
            sandbox_root: settings.sandbox_root.display().to_string(),
            logs_dir: paths.logs().display().to_string(),
            llm: settings.llm.summary(),
            server: server.record.clone(),
            runner: runner.record.clone(),
            stop_timeout_secs: (settings.runner_stop_timeout + settings.server_stop_timeout)
                .as_secs()
                + 10,
            message: None,
        };
        let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(Self {
            settings,
            events,
            state,
            server,
            runner,
            server_addr: unspecified,
            runner_addr: unspecified,
            next_health_at: tokio::time::Instant::now(),
        })
    }

    fn child(&mut self, component: Component) -> &mut Child {
        match component {
            Component::Runner => &mut self.runner,
            _ => &mut self.server,
        }
    }

    fn save(&mut self) {
        self.state.server = self.server.record.clone();
        self.state.runner = self.runner.record.clone();
        if let Err(e) = self.state.write(&self.settings.paths.state_file()) {
            self.events
                .log(&format!("cannot write the state file: {e}"));
        }
    }

    fn remove_pid_files(&self) {
        for c in Component::ALL {
            pidfile::remove(&self.settings.paths.pid_file(c));
        }
    }

    /// Every secret the children could print: the LLM key and the platform's keys.
    fn redaction(&self) -> Vec<Secret> {
        let keys = &self.settings.keys;
        self.settings
            .llm
            .key
            .iter()
            .map(|k| k.value.clone())
            .chain([keys.client.clone(), keys.runner.clone()])
            .collect()
    }

    // ---- start-up ------------------------------------------------------------------------

    async fn start_all(&mut self) -> Result<(), LocalError> {
        let deadline = tokio::time::Instant::now() + self.settings.startup_timeout;
        let announced = self.spawn(
            Component::Server,
            components::server_command(&self.settings, self.settings.port),
        )?;
        self.server_addr = self.server.wait_announced(announced, deadline).await?;
        self.state.endpoint = format!("http://{}", self.server_addr);
        self.server.record.addr = Some(self.server_addr.to_string());
        self.server
            .set_probe(Probe::Grpc(self.state.endpoint.clone()));
        self.save();
        self.server.wait_healthy(deadline).await?;
        self.server.record.phase = ChildPhase::Running;
        self.events.log(&format!(
            "control plane serving on {} (pid {})",
            self.state.endpoint,
            self.server.record.pid.unwrap_or(0)
        ));
        self.spawn_runner()?;
        self.save();
        self.runner.wait_healthy(deadline).await?;
        self.runner.record.phase = ChildPhase::Running;
        Ok(())
    }

    fn spawn(
        &mut self,
        component: Component,
        cmd: tokio::process::Command,
    ) -> Result<tokio::sync::oneshot::Receiver<SocketAddr>, LocalError> {
        let redact = self.redaction();
        let echo = self.settings.interactive;
        self.child(component).spawn(cmd, redact, echo)
    }

    /// The runner needs the control plane's endpoint, and a health port of its own.
    fn spawn_runner(&mut self) -> Result<(), LocalError> {
        let port = match self.settings.runner_http_port {
            Some(p) => p,
            None => free_port()?,
        };
        self.runner_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let cmd =
            components::runner_command(&self.settings, &self.state.endpoint, self.runner_addr);
        self.spawn(Component::Runner, cmd)?;
        self.runner.record.addr = Some(self.runner_addr.to_string());
        self.runner.set_probe(Probe::Ready(self.runner_addr));
        self.next_health_at = tokio::time::Instant::now() + STARTING_POLL;
        Ok(())
    }

    // ---- supervision ---------------------------------------------------------------------

    /// Watches both children until a signal arrives, or the supervisor gives up on the
    /// control plane; returns why it stopped watching.
    async fn supervise(&mut self, signals: &mut Signals) -> String {
        loop {
            let event = {
                let (server_restart, server_kill) =
                    (self.server.restart_at(), self.server.kill_at());
                let (runner_restart, runner_kill) =
                    (self.runner.restart_at(), self.runner.kill_at());
                tokio::select! {
                    status = self.runner.exited() => Event::Exited(Component::Runner, status),
                    status = self.server.exited() => Event::Exited(Component::Server, status),
                    _ = sleep_until(runner_restart) => Event::RestartDue(Component::Runner),
                    _ = sleep_until(server_restart) => Event::RestartDue(Component::Server),
                    _ = sleep_until(runner_kill) => Event::KillDue(Component::Runner),
                    _ = sleep_until(server_kill) => Event::KillDue(Component::Server),
                    _ = tokio::time::sleep_until(self.next_health_at) => Event::HealthCheck,
                    name = signals.recv() => Event::Signal(name),
                }
            };
            let (changed, exit) = match event {
                Event::Signal(name) => return name.to_string(),
                Event::Exited(component, status) => {
                    (true, Some(self.child(component).on_exit(status)))
                }
                Event::RestartDue(component) => (true, self.restart(component)),
                Event::KillDue(component) => {
                    self.child(component).kill_overdue();
                    (false, None)
                }
                Event::HealthCheck => (self.check_health().await, None),
            };
            if let Some(Exit::GaveUp {
                name,
                message,
                stop_platform,
            }) = exit
            {
                self.state.message = Some(message);
                if stop_platform {
                    self.state.phase = Phase::Failed;
                    self.save();
                    return format!("{name} given up");
                }
            }
            if changed {
                self.save();
            }
        }
    }

    /// Starts a child again after its backoff: the control plane on the port it had, so that
    /// the runner's endpoint stays valid; the runner against that endpoint.
    fn restart(&mut self, component: Component) -> Option<Exit> {
        if !self.child(component).take_restart() {
            return None;
        }
        let started = match component {
            Component::Runner => self.spawn_runner(),
            _ => {
                let cmd = components::server_command(&self.settings, self.server_addr.port());
                self.spawn(Component::Server, cmd).map(drop)
            }
        };
        let child = match component {
            Component::Runner => &mut self.runner,
            _ => &mut self.server,
        };
        match started {
            Ok(()) => None,
            Err(e) => {
                self.events
                    .log(&format!("cannot restart {}: {e}", child.spec.name));
                Some(child.on_exit(Err(std::io::Error::other(e.to_string()))))
            }
        }
    }

    /// The runner's readiness, and with it the control plane's health for `status`. Returns
    /// whether either record changed.
    async fn check_health(&mut self) -> bool {
        if !self.runner.is_running() {
            self.next_health_at = tokio::time::Instant::now() + self.settings.health_interval;
            return false;
        }
        let startup_timeout = self.settings.startup_timeout;
        let runner_changed = self.runner.check(startup_timeout).await;
        let server_changed = self.server.check(startup_timeout).await;
        let next = if self.runner.record.phase == ChildPhase::Starting {
            STARTING_POLL
        } else {
            self.settings.health_interval
        };
        self.next_health_at = tokio::time::Instant::now() + next;
        runner_changed || server_changed
    }

    // ---- shutdown ------------------------------------------------------------------------

    /// Drains the runner, then stops the control plane. A second signal forces. Returns the
    /// exit code.
    async fn shutdown(&mut self, signals: &mut Signals) -> u8 {
        self.state.phase = Phase::Stopping;
        self.save();
        let forced = self.runner.stop(signals, false).await;
        self.save();
        let forced = self.server.stop(signals, forced).await;
        if self.state.phase != Phase::Failed {
            self.state.phase = Phase::Stopped;
        }
        self.save();
        self.events.log("stopped");
        if forced { 130 } else { 0 }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn free_port() -> Result<u16, LocalError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LocalError::StartFailed(format!("no free loopback port: {e}")))
}
