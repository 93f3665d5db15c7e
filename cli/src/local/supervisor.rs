//! The supervisor: `stigmer local start --foreground`, whether typed by a person or started
//! detached by `stigmer local start`.
//!
//! It owns both children. The control plane starts first and must answer its gRPC health
//! check; then the runner, which must report ready on `/readyz`. From then on a runner that
//! exits, or stays unready for several checks, is restarted with exponential backoff until a
//! bounded number of restarts within a window, where the supervisor gives up and says so in
//! the state file and the log. On SIGTERM, SIGINT or SIGHUP the runner is asked to drain
//! first (its in-flight executions finish), then the control plane stops; a second signal
//! forces.
//!
//! The children run in their own process groups, so that a Ctrl-C typed at the terminal
//! reaches the supervisor only and the order above holds. Their output is piped through the
//! supervisor into size-rotated log files, with the LLM key scrubbed should it ever appear.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use super::health::{self, ServerHealth};
use super::keys::{self, PlatformKeys};
use super::logs::{self, RotatingLog};
use super::pidfile;
use super::restart::{Decision, RestartPolicy, RestartTracker};
use super::secrets::{KEY_VARIABLES, LlmSettings, Secret};
use super::state::{ComponentState, Phase, State};
use super::{LocalError, Paths};
use crate::args::Component;
use stigmer_contract::env as vars;

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

const SERVER_ANNOUNCE: &str = "stigmer-server listening on ";
/// Readiness is polled this often while a component is starting.
const STARTING_POLL: Duration = Duration::from_millis(200);
/// After a forced stop of the runner, how long before SIGKILL.
const FORCE_GRACE: Duration = Duration::from_secs(5);

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

/// SIGTERM, SIGINT and SIGHUP all mean "stop".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, LocalError> {
        let make = |kind| {
            signal(kind)
                .map_err(|e| LocalError::Signal(format!("cannot install a signal handler: {e}")))
        };
        Ok(Self {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// The supervisor's own log: timestamped lines to stderr, and to `supervisor.log` when
/// stderr is a terminal.
#[derive(Clone)]
struct Events {
    file: Option<RotatingLog>,
}

impl Events {
    fn open(paths: &Paths, interactive: bool) -> Result<Self, LocalError> {
        let file = if interactive {
            Some(RotatingLog::open(
                &paths.log(Component::Supervisor),
                u64::MAX,
            )?)
        } else {
            None
        };
        Ok(Self { file })
    }

    fn log(&self, message: &str) {
        let line = format!("{:.3} supervisor: {message}\n", jiff::Timestamp::now());
        // Not `eprint!`, which panics when stderr (a detached supervisor's log file) fails.
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(file) = &self.file {
            file.write_line(line.as_bytes());
        }
    }
}

struct Running {
    child: Child,
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

/// Why the supervisor leaves its loop.
enum Event {
    RunnerExited(std::io::Result<ExitStatus>),
    ServerExited(std::io::Result<ExitStatus>),
    RestartRunner,
    RestartServer,
    KillRunner,
    HealthCheck,
    Signal(&'static str),
}

struct Supervisor {
    settings: Settings,
    events: Events,
    state: State,
    server: Option<Running>,
    runner: Option<Running>,
    server_addr: SocketAddr,
    runner_addr: SocketAddr,
    server_restarts: RestartTracker,
    runner_restarts: RestartTracker,
    restart_runner_at: Option<tokio::time::Instant>,
    restart_server_at: Option<tokio::time::Instant>,
    /// Set when the supervisor itself stopped an unhealthy runner: SIGKILL if it is still
    /// there at this time.
    kill_runner_at: Option<tokio::time::Instant>,
    next_health_at: tokio::time::Instant,
    failed_checks: u32,
    runner_logs: RotatingLog,
    server_logs: RotatingLog,
}

impl Supervisor {
    fn new(settings: Settings, events: Events) -> Result<Self, LocalError> {
        let paths = &settings.paths;
        let runner_logs = RotatingLog::open(&paths.log(Component::Runner), settings.log_max_bytes)?;
        let server_logs = RotatingLog::open(&paths.log(Component::Server), settings.log_max_bytes)?;
        let state = State {
            phase: Phase::Starting,
            supervisor_pid: std::process::id(),
            started_at: jiff::Timestamp::now().to_string(),
            endpoint: String::new(),
            data_dir: paths.root().display().to_string(),
            logs_dir: paths.logs().display().to_string(),
            llm: settings.llm.summary(),
            server: ComponentState {
                binary: settings.server_bin.display().to_string(),
                state: "starting".into(),
                ..Default::default()
            },
            runner: ComponentState {
                binary: settings.runner_bin.display().to_string(),
                state: "starting".into(),
                ..Default::default()
            },
            stop_timeout_secs: (settings.runner_stop_timeout + settings.server_stop_timeout)
                .as_secs()
                + 10,
            message: None,
        };
        let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(Self {
            server_restarts: RestartTracker::new(settings.policy),
            runner_restarts: RestartTracker::new(settings.policy),
            settings,
            events,
            state,
            server: None,
            runner: None,
            server_addr: unspecified,
            runner_addr: unspecified,
            restart_runner_at: None,
            restart_server_at: None,
            kill_runner_at: None,
            next_health_at: tokio::time::Instant::now(),
            failed_checks: 0,
            runner_logs,
            server_logs,
        })
    }

    fn save(&self) {
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
        let announced = self.spawn_server(self.settings.port)?;
        self.server_addr = self.wait_server_listening(announced, deadline).await?;
        self.state.endpoint = format!("http://{}", self.server_addr);
        self.state.server.addr = Some(self.server_addr.to_string());
        self.save();
        self.wait_server_serving(deadline).await?;
        self.state.server.state = "running".into();
        self.events.log(&format!(
            "control plane serving on {} (pid {})",
            self.state.endpoint,
            self.state.server.pid.unwrap_or(0)
        ));
        self.spawn_runner()?;
        self.save();
        self.wait_runner_ready(deadline).await?;
        self.state.runner.state = "running".into();
        Ok(())
    }

    async fn wait_server_listening(
        &mut self,
        announced: oneshot::Receiver<SocketAddr>,
        deadline: tokio::time::Instant,
    ) -> Result<SocketAddr, LocalError> {
        let failure = tokio::select! {
            addr = announced => match addr {
                Ok(addr) => return Ok(addr),
                // Its output closed: it is exiting. Say how, if it does so promptly.
                Err(_) => match tokio::time::timeout(Duration::from_secs(2), wait(&mut self.server)).await {
                    Ok(status) => format!("the control plane exited during start-up ({})", describe(status.ok())),
                    Err(_) => "the control plane closed its output before it was listening".to_string(),
                },
            },
            status = wait(&mut self.server) => {
                format!("the control plane exited during start-up ({})", describe(status.ok()))
            }
            _ = tokio::time::sleep_until(deadline) => {
                "the control plane did not start listening in time".to_string()
            }
        };
        Err(self.start_error(Component::Server, &failure).await)
    }

    async fn wait_server_serving(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(), LocalError> {
        loop {
            if health::server_health(&self.state.endpoint).await == ServerHealth::Serving {
                return Ok(());
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|s| s.child.try_wait().ok().flatten())
            {
                let how = describe(Some(status));
                return Err(self
                    .start_error(
                        Component::Server,
                        &format!("the control plane exited during start-up ({how})"),
                    )
                    .await);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self
                    .start_error(
                        Component::Server,
                        "the control plane did not report healthy in time",
                    )
                    .await);
            }
            tokio::time::sleep(STARTING_POLL).await;
        }
    }

    async fn wait_runner_ready(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(), LocalError> {
        loop {
            if health::runner_ready(self.runner_addr).await {
                return Ok(());
            }
            if let Some(status) = self
                .runner
                .as_mut()
                .and_then(|r| r.child.try_wait().ok().flatten())
            {
                let how = describe(Some(status));
                let err = self
                    .start_error(
                        Component::Runner,
                        &format!("the runner exited during start-up ({how})"),
                    )
                    .await;
                self.runner = None;
                self.state.runner.pid = None;
                self.state.runner.last_exit = Some(how);
                return Err(err);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self
                    .start_error(Component::Runner, "the runner did not become ready in time")
                    .await);
            }
            tokio::time::sleep(STARTING_POLL).await;
        }
    }

    /// A start-up error with the end of the component's log, which usually says why.
    async fn start_error(&mut self, component: Component, what: &str) -> LocalError {
        // Whatever the child printed last must be in the file before it is quoted.
        let child = match component {
            Component::Runner => self.runner.as_mut(),
            _ => self.server.as_mut(),
        };
        if let Some(child) = child {
            child.output_flushed().await;
        }
        let path = self.settings.paths.log(component);
        let tail = logs::last_lines(&path, 15);
        let hint = if component == Component::Server && tail.contains("in use") {
            "\nAnother program holds the port: stop it, or pick another one with --port."
        } else {
            ""
        };
        LocalError::StartFailed(format!(
            "{what}. The end of {}:\n{}{hint}",
            path.display(),
            indent(&tail)
        ))
    }

    // ---- children ------------------------------------------------------------------------

    /// Starts the control plane on `port` (0: any; a restart reuses the first one's port, so
    /// that the runner's endpoint stays valid).
    fn spawn_server(&mut self, port: u16) -> Result<oneshot::Receiver<SocketAddr>, LocalError> {
        let s = &self.settings;
        let mut cmd = Command::new(&s.server_bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(s.paths.server_data())
            // Files, not values: a key on the command line is visible in `ps`. With role
            // keys, the well-known local key opens nothing.
            .arg("--runner-key-file")
            .arg(keys::Role::Runner.file(&s.paths))
            .arg("--client-key-file")
            .arg(keys::Role::Client.file(&s.paths))
            // A key for every API, should the user's shell set one, must not come along.
            .env_remove("STIGMER_SERVER_API_KEYS")
            .env_remove("STIGMER_SERVER_RUNNER_KEY_FILE")
            .env_remove("STIGMER_SERVER_CLIENT_KEY_FILE")
            // Log files are read with less and grep: no colour codes in them.
            .env("NO_COLOR", "1")
            .current_dir(s.paths.root());
        // The control plane has no use for the LLM key.
        for var in KEY_VARIABLES {
            cmd.env_remove(var);
        }
        let (mut child, pid) = spawn(cmd, "the control plane", &s.server_bin)?;
        let (tx, rx) = oneshot::channel();
        let echo = s.interactive.then_some("server");
        let pipes = [
            pipe(
                child.stdout.take(),
                self.server_logs.clone(),
                echo,
                self.redaction(),
                Some(tx),
            ),
            pipe(
                child.stderr.take(),
                self.server_logs.clone(),
                echo,
                self.redaction(),
                None,
            ),
        ];
        pidfile::write_pid(&s.paths.pid_file(Component::Server), pid)?;
        self.state.server.pid = Some(pid);
        self.state.server.state = "starting".into();
        self.server = Some(Running {
            child,
            pid,
            since: Instant::now(),
            pipes: pipes.into_iter().flatten().collect(),
        });
        Ok(rx)
    }

    fn spawn_runner(&mut self) -> Result<(), LocalError> {
        let s = &self.settings;
        let port = match s.runner_http_port {
            Some(p) => p,
            None => free_port()?,
        };
        self.runner_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(&s.runner_bin);
        cmd.envs(runner_env(s, &self.state.endpoint, self.runner_addr))
            .current_dir(s.paths.runner_cwd());
        if let Some(key) = &s.llm.key {
            // The one place the key leaves this process: the runner's environment.
            cmd.env(key.variable, key.value.expose());
        }
        let (mut child, pid) = spawn(cmd, "the runner", &s.runner_bin)?;
        let echo = s.interactive.then_some("runner");
        let pipes = [
            pipe(
                child.stdout.take(),
                self.runner_logs.clone(),
                echo,
                self.redaction(),
                None,
            ),
            pipe(
                child.stderr.take(),
                self.runner_logs.clone(),
                echo,
                self.redaction(),
                None,
            ),
        ];
        pidfile::write_pid(&s.paths.pid_file(Component::Runner), pid)?;
        self.state.runner.pid = Some(pid);
        self.state.runner.addr = Some(self.runner_addr.to_string());
        self.state.runner.state = "starting".into();
        self.runner = Some(Running {
            child,
            pid,
            since: Instant::now(),
            pipes: pipes.into_iter().flatten().collect(),
        });
        self.failed_checks = 0;
        self.next_health_at = tokio::time::Instant::now() + STARTING_POLL;
        Ok(())
    }

    // ---- supervision ---------------------------------------------------------------------

    /// Watches both children until a signal arrives; returns the signal's name.
    async fn supervise(&mut self, signals: &mut Signals) -> &'static str {
        loop {
            let event = {
                let runner = &mut self.runner;
                let server = &mut self.server;
                tokio::select! {
                    status = wait(runner) => Event::RunnerExited(status),
                    status = wait(server) => Event::ServerExited(status),
                    _ = sleep_until(self.restart_runner_at) => Event::RestartRunner,
                    _ = sleep_until(self.restart_server_at) => Event::RestartServer,
                    _ = sleep_until(self.kill_runner_at) => Event::KillRunner,
                    _ = tokio::time::sleep_until(self.next_health_at) => Event::HealthCheck,
                    name = signals.recv() => Event::Signal(name),
                }
            };
            match event {
                Event::Signal(name) => return name,
                Event::RunnerExited(status) => self.on_runner_exit(status),
                Event::ServerExited(status) => {
                    if self.on_server_exit(status) {
                        return "control plane given up";
                    }
                }
                Event::RestartRunner => {
                    self.restart_runner_at = None;
                    if let Err(e) = self.spawn_runner() {
                        self.events.log(&format!("cannot restart the runner: {e}"));
                        self.on_runner_exit(Err(std::io::Error::other(e.to_string())));
                    }
                    self.save();
                }
                Event::RestartServer => {
                    self.restart_server_at = None;
                    match self.spawn_server(self.server_addr.port()) {
                        Ok(_announced) => self.save(),
                        Err(e) => {
                            self.events
                                .log(&format!("cannot restart the control plane: {e}"));
                            if self.on_server_exit(Err(std::io::Error::other(e.to_string()))) {
                                return "control plane given up";
                            }
                        }
                    }
                }
                Event::KillRunner => {
                    self.kill_runner_at = None;
                    if let Some(r) = &self.runner {
                        self.events.log(&format!(
                            "the runner (pid {}) did not stop in time: killing it",
                            r.pid
                        ));
                        let _ = pidfile::signal(r.pid, Signal::SIGKILL);
                    }
                }
                Event::HealthCheck => self.check_health().await,
            }
        }
    }

    fn on_runner_exit(&mut self, status: std::io::Result<ExitStatus>) {
        let ran_for = self.runner.as_ref().map(|r| r.since.elapsed());
        self.runner = None;
        // Set only while the supervisor itself is stopping an unhealthy runner.
        let was_unhealthy = self.kill_runner_at.take().is_some();
        let how = describe(status.ok());
        self.state.runner.pid = None;
        self.state.runner.last_exit = Some(how.clone());
        pidfile::remove(&self.settings.paths.pid_file(Component::Runner));
        self.events.log(&format!(
            "the runner {} ({how}) after {}",
            if was_unhealthy {
                "that was not ready stopped"
            } else {
                "exited unexpectedly"
            },
            ran_for.map(human).unwrap_or_else(|| "0s".into())
        ));
        match self.runner_restarts.on_exit(Instant::now()) {
            Decision::RestartAfter(delay) => {
                self.state.runner.restarts = self.runner_restarts.total();
                self.state.runner.state = "restarting".into();
                self.events.log(&format!(
                    "restarting the runner in {} (restart {}; at most {} within {})",
                    human(delay),
                    self.runner_restarts.total(),
                    self.settings.policy.max_restarts,
                    human(self.settings.policy.window)
                ));
                self.restart_runner_at = Some(tokio::time::Instant::now() + delay);
            }
            Decision::GiveUp => {
                self.state.runner.state = "gave_up".into();
                self.state.runner.gave_up = true;
                let message = format!(
                    "gave up on the runner: it exited {} times within {} (last: {how}). \
                     See `stigmer local logs --component runner`; then `stigmer local stop` \
                     and start again",
                    self.settings.policy.max_restarts + 1,
                    human(self.settings.policy.window)
                );
                self.events.log(&message);
                self.state.message = Some(message);
            }
        }
        self.save();
    }

    /// Returns true when the supervisor gave up on the control plane: without it nothing
    /// works, so the whole platform stops.
    fn on_server_exit(&mut self, status: std::io::Result<ExitStatus>) -> bool {
        self.server = None;
        let how = describe(status.ok());
        self.state.server.pid = None;
        self.state.server.last_exit = Some(how.clone());
        pidfile::remove(&self.settings.paths.pid_file(Component::Server));
        self.events
            .log(&format!("the control plane exited unexpectedly ({how})"));
        let gave_up = match self.server_restarts.on_exit(Instant::now()) {
            Decision::RestartAfter(delay) => {
                self.state.server.restarts = self.server_restarts.total();
                self.state.server.state = "restarting".into();
                self.events
                    .log(&format!("restarting the control plane in {}", human(delay)));
                self.restart_server_at = Some(tokio::time::Instant::now() + delay);
                false
            }
            Decision::GiveUp => {
                self.state.server.state = "gave_up".into();
                self.state.server.gave_up = true;
                let message = format!(
                    "gave up on the control plane: it exited {} times within {} (last: {how}); \
                     see `stigmer local logs --component server`",
                    self.settings.policy.max_restarts + 1,
                    human(self.settings.policy.window)
                );
                self.events.log(&message);
                self.state.message = Some(message);
                self.state.phase = Phase::Failed;
                true
            }
        };
        self.save();
        gave_up
    }

    /// Readiness of the runner (and, for `status`, of the control plane). A runner that is
    /// alive but stays unready for `unhealthy_after` checks in a row is stopped, and then
    /// restarted like any runner that exits.
    async fn check_health(&mut self) {
        let Some(runner) = &self.runner else {
            self.next_health_at = tokio::time::Instant::now() + self.settings.health_interval;
            return;
        };
        let (pid, age) = (runner.pid, runner.since.elapsed());
        let ready = health::runner_ready(self.runner_addr).await;
        let starting = self.state.runner.state == "starting";
        let mut changed = false;
        if ready {
            self.failed_checks = 0;
            if starting {
                self.events.log(&format!("the runner (pid {pid}) is ready"));
                self.state.runner.state = "running".into();
                changed = true;
            }
        } else if starting {
            if age > self.settings.startup_timeout && self.kill_runner_at.is_none() {
                self.events.log(&format!(
                    "the runner (pid {pid}) did not become ready within {}: restarting it",
                    human(self.settings.startup_timeout)
                ));
                self.stop_unhealthy_runner(pid);
            }
        } else if self.kill_runner_at.is_none() {
            self.failed_checks += 1;
            self.events.log(&format!(
                "the runner (pid {pid}) is not ready ({} of {} checks)",
                self.failed_checks, self.settings.unhealthy_after
            ));
            if self.failed_checks >= self.settings.unhealthy_after {
                self.events.log(&format!(
                    "the runner (pid {pid}) stays unready: restarting it"
                ));
                self.stop_unhealthy_runner(pid);
            }
            changed = true;
        }
        let server_state = match health::server_health(&self.state.endpoint).await {
            ServerHealth::Serving => "running",
            ServerHealth::NotServing => "not serving",
            ServerHealth::Unreachable if self.server.is_some() => "unreachable",
            ServerHealth::Unreachable => self.state.server.state.as_str(),
        }
        .to_string();
        if self.server.is_some() && server_state != self.state.server.state {
            self.state.server.state = server_state;
            changed = true;
        }
        if changed {
            self.save();
        }
        let next = if self.state.runner.state == "starting" {
            STARTING_POLL
        } else {
            self.settings.health_interval
        };
        self.next_health_at = tokio::time::Instant::now() + next;
    }

    fn stop_unhealthy_runner(&mut self, pid: u32) {
        let _ = pidfile::signal(pid, Signal::SIGTERM);
        self.kill_runner_at = Some(tokio::time::Instant::now() + self.settings.runner_stop_timeout);
    }

    // ---- shutdown ------------------------------------------------------------------------

    /// Drains the runner, then stops the control plane. A second signal forces: the runner
    /// gets the signal again (its own "exit now"), then SIGKILL. Returns the exit code.
    async fn shutdown(&mut self, signals: &mut Signals) -> u8 {
        self.state.phase = Phase::Stopping;
        self.restart_runner_at = None;
        self.restart_server_at = None;
        self.save();
        let mut forced = false;
        if let Some(mut runner) = self.runner.take() {
            self.events.log(&format!(
                "stopping the runner (pid {}): in-flight executions drain first (signal again to force)",
                runner.pid
            ));
            let _ = pidfile::signal(runner.pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + self.settings.runner_stop_timeout;
            let status = tokio::select! {
                status = runner.child.wait() => status.ok(),
                _ = tokio::time::sleep_until(deadline) => {
                    self.events.log("the runner did not drain in time: killing it");
                    kill_and_reap(&mut runner).await
                }
                name = signals.recv() => {
                    forced = true;
                    self.events.log(&format!("{name} again: forcing the runner to exit"));
                    let _ = pidfile::signal(runner.pid, Signal::SIGTERM);
                    match tokio::time::timeout(FORCE_GRACE, runner.child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => kill_and_reap(&mut runner).await,
                    }
                }
            };
            let how = describe(status);
            self.events.log(&format!("the runner stopped ({how})"));
            self.state.runner.last_exit = Some(how);
        }
        self.state.runner.pid = None;
        self.state.runner.state = "stopped".into();
        pidfile::remove(&self.settings.paths.pid_file(Component::Runner));
        self.save();
        if let Some(mut server) = self.server.take() {
            self.events
                .log(&format!("stopping the control plane (pid {})", server.pid));
            let _ = pidfile::signal(server.pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + self.settings.server_stop_timeout;
            let status = tokio::select! {
                status = server.child.wait() => status.ok(),
                _ = tokio::time::sleep_until(deadline) => {
                    self.events.log("the control plane did not stop in time: killing it");
                    kill_and_reap(&mut server).await
                }
                _ = signals.recv(), if !forced => {
                    forced = true;
                    kill_and_reap(&mut server).await
                }
            };
            let how = describe(status);
            self.events
                .log(&format!("the control plane stopped ({how})"));
            self.state.server.last_exit = Some(how);
        }
        self.state.server.pid = None;
        self.state.server.state = "stopped".into();
        pidfile::remove(&self.settings.paths.pid_file(Component::Server));
        if self.state.phase != Phase::Failed {
            self.state.phase = Phase::Stopped;
        }
        self.save();
        self.events.log("stopped");
        if forced { 130 } else { 0 }
    }
}

/// The runner's environment on top of the supervisor's own (which carries the user's
/// `STIGMER_LLM_*` settings): local mode, this control plane, this data directory, its runner
/// key. No `.env`: the runner's configuration is exactly this environment, so nothing a tool
/// command writes can come back as configuration at the next start.
fn runner_env(s: &Settings, endpoint: &str, http_addr: SocketAddr) -> Vec<(String, String)> {
    vec![
        (vars::MODE.into(), "local".into()),
        (vars::DOTENV.into(), "off".into()),
        (vars::BACKEND_ENDPOINT.into(), endpoint.to_string()),
        (vars::API_KEY.into(), s.keys.runner.expose().to_string()),
        (
            vars::SANDBOX_ROOT_DIR.into(),
            s.paths.workspace().display().to_string(),
        ),
        (vars::HTTP_ADDR.into(), http_addr.to_string()),
        ("NO_COLOR".into(), "1".into()),
    ]
}

fn spawn(
    mut cmd: Command,
    what: &'static str,
    path: &std::path::Path,
) -> Result<(Child, u32), LocalError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal must reach the supervisor only,
        // which then stops the children in order.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|source| LocalError::Spawn {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let pid = child
        .id()
        .ok_or_else(|| LocalError::StartFailed(format!("{what} exited at once")))?;
    Ok((child, pid))
}

/// Copies a child's output into its log line by line (and to the terminal when `echo`
/// names the component), scrubbing the LLM key. The control plane's first stdout line
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

async fn wait(child: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match child {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn kill_and_reap(r: &mut Running) -> Option<ExitStatus> {
    let _ = pidfile::signal(r.pid, Signal::SIGKILL);
    tokio::time::timeout(FORCE_GRACE, r.child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

fn free_port() -> Result<u16, LocalError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LocalError::StartFailed(format!("no free loopback port: {e}")))
}

/// "exit status 3", "killed by SIGKILL".
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        None => "status unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => s.to_string(),
        },
    }
}

pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(
            describe(Some(ExitStatus::from_raw(3 << 8))),
            "exit status 3"
        );
        assert_eq!(describe(Some(ExitStatus::from_raw(9))), "killed by SIGKILL");
        assert_eq!(describe(None), "status unknown");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }

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
