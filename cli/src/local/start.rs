//! `stigmer local start`: checks that nothing runs yet, finds the binaries, gets the LLM key
//! (asking for it on a terminal), then either supervises in the foreground or starts a
//! detached supervisor and waits until it reports both components healthy.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::binaries::{self, RUNNER, SERVER};
use super::restart::RestartPolicy;
use super::secrets::{self, LlmSettings, Terminal};
use super::state::{Phase, State};
use super::supervisor::{self, Settings};
use super::{LocalError, Paths, keys, logs, pidfile};
use crate::args::{Component, Output, StartArgs};

pub async fn run(paths: Paths, args: StartArgs, output: Output) -> Result<u8, LocalError> {
    if args.detached_child {
        // Leave the terminal's session: a hangup or a Ctrl-C there must not reach the
        // platform that `start` left running. Fails only for a group leader, which the
        // detaching parent does not make us; carry on in that case.
        let _ = nix::unistd::setsid();
    }
    // Before asking for a key: there is no point typing one for a platform that runs.
    if let Some(pid) = pidfile::running_supervisor(&paths) {
        return Err(LocalError::AlreadyRunning {
            pid,
            endpoint: State::read(&paths.state_file())
                .map(|s| s.endpoint)
                .unwrap_or_else(|_| "unknown".into()),
        });
    }
    let settings = prepare(&paths, &args)?;
    launch(&paths, &args, settings, output).await
}

/// `stigmer local restart`: everything a start needs (the key too, possibly asked for) is
/// settled while the old platform still runs, then it is stopped and the new one started.
pub async fn restart(paths: Paths, args: StartArgs, output: Output) -> Result<u8, LocalError> {
    let settings = prepare(&paths, &args)?;
    super::stop::run(&paths, crate::args::StopArgs { timeout: None }, output).await?;
    launch(&paths, &args, settings, output).await
}

/// Finds the binaries, the LLM key (asking for a missing one on a terminal) and the
/// platform's client and runner keys (created on the first start).
fn prepare(paths: &Paths, args: &StartArgs) -> Result<Settings, LocalError> {
    let server_bin = binaries::locate(
        SERVER,
        args.server_bin.as_deref(),
        "--server-bin",
        "STIGMER_SERVER_BIN",
    )?;
    let runner_bin = binaries::locate(
        RUNNER,
        args.runner_bin.as_deref(),
        "--runner-bin",
        "STIGMER_RUNNER_BIN",
    )?;
    let sandbox_root = sandbox_root(paths, args.sandbox_root.as_deref())?;
    let llm = secrets::resolve(&|k| std::env::var(k).ok(), &mut Terminal)?;
    // After the LLM key: a start that cannot go on must leave nothing behind.
    paths.create_all()?;
    create_private_dir(&sandbox_root)?;
    let keys = keys::ensure(paths)?;
    let settings = Settings {
        paths: paths.clone(),
        server_bin,
        runner_bin,
        port: args.port,
        runner_http_port: args.runner_http_port,
        llm,
        sandbox_root,
        keys,
        policy: RestartPolicy {
            initial_backoff: Duration::from_millis(args.restart_backoff_ms),
            max_backoff: Duration::from_millis(args.restart_backoff_max_ms),
            max_restarts: args.max_restarts,
            window: Duration::from_secs(args.restart_window_secs),
        },
        health_interval: Duration::from_millis(args.health_interval_ms.max(50)),
        unhealthy_after: args.unhealthy_after.max(1),
        startup_timeout: Duration::from_secs(args.wait_timeout),
        runner_stop_timeout: Duration::from_secs(args.runner_stop_timeout_secs),
        server_stop_timeout: Duration::from_secs(args.server_stop_timeout_secs),
        log_max_bytes: args.log_max_bytes.max(1024),
        interactive: !args.detached_child,
    };
    // Checked here, before anything is stopped or started.
    detach_wait(args, &settings)?;
    Ok(settings)
}

/// `--sandbox-root` / `SANDBOX_ROOT_DIR`, made absolute (the runner runs elsewhere), or
/// `<data-dir>/workspace`. A root that is, or holds, the data directory is refused: session
/// directories would sit beside the database and the keys.
fn sandbox_root(paths: &Paths, chosen: Option<&std::path::Path>) -> Result<PathBuf, LocalError> {
    let Some(chosen) = chosen.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(paths.workspace());
    };
    let root = std::path::absolute(chosen).map_err(|e| LocalError::io(chosen, e))?;
    // Lexically, without `..`, so that the check cannot be walked around.
    let normal: PathBuf = root.components().collect();
    if normal
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(LocalError::Config(format!(
            "SANDBOX_ROOT_DIR / --sandbox-root {} must not contain '..'",
            root.display()
        )));
    }
    if paths.root().starts_with(&normal) {
        return Err(LocalError::Config(format!(
            "SANDBOX_ROOT_DIR / --sandbox-root {} is or contains the data directory {}; \
             choose a directory of its own, e.g. {}",
            normal.display(),
            paths.root().display(),
            paths.workspace().display()
        )));
    }
    Ok(normal)
}

/// Creates the sandbox root 0700 when missing; an existing directory keeps its mode (it is
/// the user's), but must be a directory.
fn create_private_dir(dir: &std::path::Path) -> Result<(), LocalError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LocalError::io(dir, e))
}

/// How long a detaching start waits for its supervisor: the start-up wait, plus the stops it
/// may go through when start-up fails, plus a margin. The flags' ranges keep the sum small;
/// the arithmetic is checked all the same, so that no setting can end in a panic.
fn detach_wait(args: &StartArgs, settings: &Settings) -> Result<Duration, LocalError> {
    [
        settings.runner_stop_timeout,
        settings.server_stop_timeout,
        Duration::from_secs(10),
    ]
    .into_iter()
    .try_fold(
        Duration::from_secs(args.wait_timeout),
        Duration::checked_add,
    )
    .ok_or_else(|| {
        LocalError::Config(
            "--wait-timeout, --runner-stop-timeout-secs and --server-stop-timeout-secs add up to \
             more than a process can wait; use smaller values"
                .into(),
        )
    })
}

/// Supervises in the foreground, or detaches.
async fn launch(
    paths: &Paths,
    args: &StartArgs,
    settings: Settings,
    output: Output,
) -> Result<u8, LocalError> {
    let llm = settings.llm.clone();
    if args.foreground {
        let interactive = settings.interactive;
        return supervisor::run(settings, |state| {
            if interactive {
                eprintln!("{}", banner(state, &llm, true));
            }
        })
        .await;
    }
    detach(paths, args, settings, &llm, output).await
}

/// Starts `stigmer local start --foreground --detached-child` in its own session with its
/// output in `supervisor.log`, and waits for it to report the platform healthy.
async fn detach(
    paths: &Paths,
    args: &StartArgs,
    settings: Settings,
    llm: &LlmSettings,
    output: Output,
) -> Result<u8, LocalError> {
    // Before the supervisor exists, so that a refusal leaves nothing behind.
    let deadline = tokio::time::Instant::now()
        .checked_add(detach_wait(args, &settings)?)
        .ok_or_else(|| LocalError::Config("--wait-timeout is too large".into()))?;
    paths.create_all()?;
    for c in Component::ALL {
        logs::rotate(&paths.log(c), logs::KEEP)?;
    }
    let log_path = paths.log(Component::Supervisor);
    let log = logs::open_append(&log_path)?;
    let log_err = log.try_clone().map_err(|e| LocalError::io(&log_path, e))?;
    let exe = std::env::current_exe()
        .map_err(|e| LocalError::StartFailed(format!("cannot find the stigmer executable: {e}")))?;
    let mut cmd = std::process::Command::new(&exe);
    // The platform's keys are not passed on: the supervisor reads them from their files.
    cmd.args(supervisor_args(paths, args, &settings))
        .current_dir(paths.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if let Some(key) = &llm.key {
        // The supervisor passes it on to each runner it starts, through the environment.
        cmd.env(key.variable, key.value.expose());
    }
    let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
        what: "the supervisor",
        path: exe.clone(),
        source,
    })?;
    let pid = child.id();
    if output == Output::Text {
        eprintln!(
            "starting stigmer local in the background (supervisor pid {pid}, log {})...",
            log_path.display()
        );
    }
    let mut interrupted = false;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let why = State::read(&paths.state_file())
                .ok()
                .filter(|s| s.supervisor_pid == pid)
                .and_then(|s| s.message)
                .unwrap_or_else(|| logs::last_lines(&log_path, 20));
            return Err(LocalError::StartFailed(format!(
                "stigmer local did not start (supervisor {}):\n{}\nLogs: {}",
                supervisor::describe(Some(status)),
                why.trim_end(),
                paths.logs().display()
            )));
        }
        if let Ok(state) = State::read(&paths.state_file())
            && state.supervisor_pid == pid
            && state.phase == Phase::Running
        {
            match output {
                Output::Text => println!("{}", banner(&state, llm, false)),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string(&state).unwrap_or_else(|_| "{}".into())
                ),
            }
            return Ok(0);
        }
        if tokio::time::Instant::now() >= deadline && !interrupted {
            eprintln!("stigmer local did not become healthy in time: stopping it");
            let _ = pidfile::signal(pid, nix::sys::signal::Signal::SIGTERM);
            interrupted = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                eprintln!("\ninterrupted: stopping the platform that was starting");
                let _ = pidfile::signal(pid, nix::sys::signal::Signal::SIGTERM);
                interrupted = true;
            }
        }
    }
}

/// The detached supervisor's arguments: everything resolved already, nothing secret.
fn supervisor_args(paths: &Paths, args: &StartArgs, s: &Settings) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "local".into(),
        "--data-dir".into(),
        paths.root().display().to_string(),
        "start".into(),
        "--foreground".into(),
        "--detached-child".into(),
        "--port".into(),
        s.port.to_string(),
        "--server-bin".into(),
        s.server_bin.display().to_string(),
        "--runner-bin".into(),
        s.runner_bin.display().to_string(),
        "--sandbox-root".into(),
        s.sandbox_root.display().to_string(),
        "--wait-timeout".into(),
        args.wait_timeout.to_string(),
        "--health-interval-ms".into(),
        args.health_interval_ms.to_string(),
        "--unhealthy-after".into(),
        args.unhealthy_after.to_string(),
        "--restart-backoff-ms".into(),
        args.restart_backoff_ms.to_string(),
        "--restart-backoff-max-ms".into(),
        args.restart_backoff_max_ms.to_string(),
        "--max-restarts".into(),
        args.max_restarts.to_string(),
        "--restart-window-secs".into(),
        args.restart_window_secs.to_string(),
        "--runner-stop-timeout-secs".into(),
        args.runner_stop_timeout_secs.to_string(),
        "--server-stop-timeout-secs".into(),
        args.server_stop_timeout_secs.to_string(),
        "--log-max-bytes".into(),
        args.log_max_bytes.to_string(),
    ];
    if let Some(port) = s.runner_http_port {
        argv.push("--runner-http-port".into());
        argv.push(port.to_string());
    }
    argv
}

/// What a person needs once the platform is up: where it is and what to do next.
fn banner(state: &State, llm: &LlmSettings, foreground: bool) -> String {
    let runner = state.runner.addr.as_deref().unwrap_or("?");
    let mut lines = vec![
        "stigmer local is running".to_string(),
        format!("  endpoint       {}", state.endpoint),
        format!(
            "  control plane  pid {}",
            state.server.pid.unwrap_or_default()
        ),
        format!(
            "  runner         pid {} (health http://{runner}/status)",
            state.runner.pid.unwrap_or_default()
        ),
        format!("  LLM            {}", llm.summary()),
        format!("  data dir       {}", state.data_dir),
        format!("  sandbox root   {}", state.sandbox_root),
        format!(
            "  logs           {}  (stigmer local logs -f)",
            state.logs_dir
        ),
        String::new(),
    ];
    let endpoint_flag = if state.endpoint.ends_with(":50051") {
        String::new()
    } else {
        format!(" --endpoint {}", state.endpoint)
    };
    lines.push(format!(
        "Next: stigmer{endpoint_flag} agent apply -f agent.yaml; stigmer{endpoint_flag} run \"Hello\""
    ));
    // Other `local` commands find this platform by its data directory.
    let default_dir = Paths::resolve(
        std::env::var_os("STIGMER_HOME")
            .map(PathBuf::from)
            .as_deref(),
    )
    .ok()
    .map(|p| p.root().display().to_string());
    let data_dir_flag = if default_dir.as_deref() == Some(state.data_dir.as_str()) {
        String::new()
    } else {
        format!(" --data-dir {}", state.data_dir)
    };
    lines.push(if foreground {
        "Ctrl-C drains the runner and stops both.".into()
    } else {
        format!(
            "Status: stigmer local{data_dir_flag} status; stop: stigmer local{data_dir_flag} stop"
        )
    });
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command, LocalCommand};
    use clap::Parser as _;

    fn settings(paths: &Paths) -> Settings {
        Settings {
            paths: paths.clone(),
            server_bin: "/bin/stigmer-server".into(),
            runner_bin: "/bin/runner".into(),
            port: 50099,
            runner_http_port: Some(8091),
            sandbox_root: "/srv/sessions".into(),
            llm: LlmSettings {
                provider: secrets::Provider::Ollama,
                model: None,
                base_url: None,
                key: None,
            },
            keys: keys::PlatformKeys {
                client: secrets::Secret::new("c".into()),
                runner: secrets::Secret::new("r".into()),
            },
            policy: RestartPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                max_restarts: 1,
                window: Duration::from_secs(1),
            },
            health_interval: Duration::from_millis(100),
            unhealthy_after: 2,
            startup_timeout: Duration::from_secs(1),
            runner_stop_timeout: Duration::from_secs(1),
            server_stop_timeout: Duration::from_secs(1),
            log_max_bytes: 4096,
            interactive: false,
        }
    }

    #[test]
    fn the_longest_accepted_waits_add_up_without_overflow() {
        let paths = Paths::resolve(Some(std::path::Path::new("/tmp/sd"))).expect("paths");
        let max = |range: std::ops::RangeInclusive<u64>| range.end().to_string();
        use crate::args::ranges;
        let cli = Cli::try_parse_from([
            "stigmer".to_string(),
            "local".into(),
            "start".into(),
            "--wait-timeout".into(),
            max(ranges::WAIT_TIMEOUT_SECS),
            "--runner-stop-timeout-secs".into(),
            max(ranges::RUNNER_STOP_TIMEOUT_SECS),
            "--server-stop-timeout-secs".into(),
            max(ranges::SERVER_STOP_TIMEOUT_SECS),
        ])
        .expect("parses");
        let Command::Local(local) = cli.command else {
            panic!("not local")
        };
        let LocalCommand::Start(args) = local.command else {
            panic!("not start")
        };
        let mut s = settings(&paths);
        s.runner_stop_timeout = Duration::from_secs(args.runner_stop_timeout_secs);
        s.server_stop_timeout = Duration::from_secs(args.server_stop_timeout_secs);
        let wait = detach_wait(&args, &s).expect("fits");
        assert_eq!(wait, Duration::from_secs(86_400 + 86_400 + 3_600 + 10));
        assert!(tokio::time::Instant::now().checked_add(wait).is_some());
    }

    #[test]
    fn waits_that_overflow_are_a_configuration_error() {
        let paths = Paths::resolve(Some(std::path::Path::new("/tmp/sd"))).expect("paths");
        let cli = Cli::try_parse_from(["stigmer", "local", "start"]).expect("parses");
        let Command::Local(local) = cli.command else {
            panic!("not local")
        };
        let LocalCommand::Start(args) = local.command else {
            panic!("not start")
        };
        let mut s = settings(&paths);
        s.runner_stop_timeout = Duration::MAX;
        let err = detach_wait(&args, &s).expect_err("overflow");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--wait-timeout"), "{err}");
    }

    #[test]
    fn the_detached_supervisor_gets_every_setting_back() {
        let paths = Paths::resolve(Some(std::path::Path::new("/tmp/sd"))).expect("paths");
        let cli = Cli::try_parse_from([
            "stigmer",
            "local",
            "start",
            "--port",
            "50099",
            "--max-restarts",
            "4",
            "--health-interval-ms",
            "100",
        ])
        .expect("parses");
        let Command::Local(local) = cli.command else {
            panic!("not local")
        };
        let LocalCommand::Start(args) = local.command else {
            panic!("not start")
        };
        let argv = supervisor_args(&paths, &args, &settings(&paths));
        let reparsed = Cli::try_parse_from(std::iter::once("stigmer".to_string()).chain(argv))
            .expect("the supervisor's arguments parse");
        let Command::Local(local) = reparsed.command else {
            panic!("not local")
        };
        assert_eq!(
            local.data_dir.as_deref(),
            Some(std::path::Path::new("/tmp/sd"))
        );
        let LocalCommand::Start(child) = local.command else {
            panic!("not start")
        };
        assert!(child.foreground && child.detached_child);
        assert_eq!(child.port, 50099);
        assert_eq!(child.max_restarts, 4);
        assert_eq!(child.health_interval_ms, 100);
        assert_eq!(child.runner_http_port, Some(8091));
        assert_eq!(
            child.runner_bin.as_deref(),
            Some(std::path::Path::new("/bin/runner"))
        );
        assert_eq!(
            child.sandbox_root.as_deref(),
            Some(std::path::Path::new("/srv/sessions"))
        );
    }

    #[test]
    fn the_sandbox_root_is_absolute_and_outside_the_data_dir() {
        let paths = Paths::resolve(Some(std::path::Path::new("/tmp/sd"))).expect("paths");
        let root = |p: Option<&str>| sandbox_root(&paths, p.map(std::path::Path::new));
        assert_eq!(root(None).expect("default"), paths.workspace());
        assert_eq!(root(Some("")).expect("empty is unset"), paths.workspace());
        assert_eq!(
            root(Some("/srv/sessions")).expect("own dir"),
            PathBuf::from("/srv/sessions")
        );
        assert!(root(Some("rel")).expect("relative").is_absolute());
        assert_eq!(
            root(Some("/tmp/sd/other")).expect("inside the data dir is fine"),
            PathBuf::from("/tmp/sd/other")
        );
        for bad in ["/tmp/sd", "/tmp", "/", "/tmp/sd/"] {
            let err = root(Some(bad)).expect_err(bad);
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().contains("contains the data directory"),
                "{err}"
            );
        }
        let err = root(Some("/tmp/x/../sd")).expect_err("dot-dot");
        assert!(err.to_string().contains("'..'"), "{err}");
    }
}
