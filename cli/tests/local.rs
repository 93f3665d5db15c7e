//! `stigmer local` end to end: the real `stigmer`, `stigmer-server` and `runner` binaries as
//! processes, and a scripted LLM server speaking the Anthropic / OpenAI streaming wire
//! formats (a stand-in for the real APIs, which CI cannot reach).

mod common;

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use testkit::llm::{Reply, ScriptedLlm};

/// CI has no terminal and no key: `start` must say which variable to set, exit non-zero,
/// and start nothing (no PID file, no state, no process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_terminal_and_no_key_is_a_clear_error_and_starts_nothing() {
    let llm = ScriptedLlm::start(vec![]).await;
    for (wire, variable) in [
        (Wire::Anthropic, "ANTHROPIC_API_KEY"),
        (Wire::OpenAi, "OPENAI_API_KEY"),
    ] {
        let p = Platform::new(wire, &llm.base_url());
        for extra in [&[][..], &["--foreground"][..]] {
            let out = p.run(p.start_args(extra)).await;
            assert_eq!(out.status.code(), Some(2), "{}", text(&out));
            let err = stderr(&out);
            assert!(err.contains(variable), "{err}");
            assert!(err.contains("no terminal"), "{err}");
            assert!(err.contains("nothing was started"), "{err}");
            let run_dir = p.data_dir().join("run");
            for file in ["supervisor.pid", "server.pid", "runner.pid", "state.json"] {
                assert!(!run_dir.join(file).exists(), "{file} was written");
            }
        }
        let status = p.local(&["status"]).await;
        assert_eq!(status.status.code(), Some(1), "{}", text(&status));
        assert!(stdout(&status).contains("not running"));
    }
    assert_eq!(llm.request_count(), 0);
}

/// Durations too large to add to a clock are refused while parsing, with the flag and its
/// range named, exit 2 and nothing started (they used to panic after the supervisor was
/// spawned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_durations_are_refused_before_anything_starts() {
    let p = Platform::new(Wire::Anthropic, "http://127.0.0.1:9").with_key();
    for (flag, range) in [
        ("--wait-timeout", "1..=86400"),
        ("--runner-stop-timeout-secs", "1..=86400"),
    ] {
        for extra in [&[][..], &["--foreground"][..]] {
            let mut args = extra.to_vec();
            args.extend([flag, "18446744073709551615"]);
            let out = p.run(p.start_args(&args)).await;
            assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
            let err = stderr(&out);
            assert!(err.contains(flag) && err.contains(range), "{err}");
            assert!(!err.contains("panicked"), "{err}");
            assert!(
                !p.data_dir().join("run").exists(),
                "{flag}: something was started"
            );
        }
    }
}

/// The key typed at a masked prompt on a real pseudo-terminal reaches the runner's
/// environment (the LLM server receives it as `x-api-key`) and nowhere else: not echoed on
/// the terminal, not in any command line, not in the control plane's environment, not in a
/// log or state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_key_reaches_the_runner_environment_and_nothing_else() {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};

    let llm = ScriptedLlm::start(vec![Reply::Text("Hello from the model.".into())]).await;
    let p = Platform::new(Wire::Anthropic, &llm.base_url());

    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("openpty");
    let mut cmd = CommandBuilder::new(STIGMER);
    cmd.args(p.start_args(&[]));
    cmd.env_clear();
    for (k, v) in &p.env {
        cmd.env(k, v);
    }
    cmd.cwd(p.dir.path());
    let mut child = pair.slave.spawn_command(cmd).expect("spawn on the pty");
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().expect("reader");
    let mut writer = pair.master.take_writer().expect("writer");
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = screen.clone();
    let reading = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("screen").extend_from_slice(&buf[..n]);
        }
    });
    let shown = |screen: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&screen.lock().expect("screen")).to_string()
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !shown(&screen).contains("(input hidden)") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no prompt; the terminal shows:\n{}",
            shown(&screen)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shown(&screen).contains("ANTHROPIC_API_KEY is not set"));
    // Typed like a person: one key at a time, then Enter.
    for c in TEST_KEY.chars() {
        write!(writer, "{c}").expect("type");
        writer.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.write_all(b"\r").expect("enter");
    writer.flush().expect("flush");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "start did not return\n{}\n{}",
            shown(&screen),
            p.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(writer);
    let _ = reading.join();
    let terminal = shown(&screen);
    assert!(
        status.success(),
        "start failed: {status:?}\n{terminal}\n{}",
        p.all_logs()
    );
    assert!(
        !terminal.contains(TEST_KEY),
        "the key was echoed:\n{terminal}"
    );
    assert!(terminal.contains("stigmer local is running"), "{terminal}");
    assert!(
        terminal.contains("key set (ANTHROPIC_API_KEY, entered at the prompt)"),
        "{terminal}"
    );

    // The runner has it in its environment, and not on its command line.
    let runner = p.pid("runner").expect("runner pid");
    let server = p.pid("server").expect("server pid");
    let supervisor = p.pid("supervisor").expect("supervisor pid");
    let environ = proc_entries(runner, "environ");
    assert!(
        environ.contains(&format!("ANTHROPIC_API_KEY={TEST_KEY}")),
        "runner environment lacks the key"
    );
    for pid in [runner, server, supervisor] {
        let cmdline = proc_entries(pid, "cmdline").join(" ");
        assert!(
            !cmdline.contains(TEST_KEY),
            "pid {pid} has the key on its command line: {cmdline}"
        );
    }
    assert!(
        !proc_entries(server, "environ")
            .iter()
            .any(|e| e.contains(TEST_KEY)),
        "the control plane got the key"
    );

    // It is the key the model API receives.
    let out = p.cli(&["run", "Say hello"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(
        stdout(&out).contains("Hello from the model."),
        "{}",
        text(&out)
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("x-api-key"), Some(TEST_KEY));

    // Never written down: no log (at debug level), no state or PID file.
    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    for entry in walk(&p.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(TEST_KEY),
            "the key is in {}",
            entry.display()
        );
    }
    assert!(
        p.log("runner").contains("ANTHROPIC_API_KEY"),
        "{}",
        p.log("runner")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A killed runner is restarted (new pid, counted in `status`); after the limit the
/// supervisor gives up, says so in `status` (exit 3) and its log, and keeps the control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_is_restarted_until_the_supervisor_gives_up() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&["--max-restarts", "2", "--restart-window-secs", "300"])
        .await;

    let mut previous = p.pid("runner").expect("runner pid");
    for restart in 1..=2u64 {
        kill(previous, Signal::SIGKILL);
        let state = p
            .wait_state("the runner restarted and ready", |s| {
                s["runner"]["restarts"] == restart
                    && s["runner"]["state"] == "running"
                    && s["runner"]["pid"]
                        .as_i64()
                        .is_some_and(|pid| pid != previous as i64)
            })
            .await;
        let pid = state["runner"]["pid"].as_i64().expect("pid") as i32;
        assert!(alive(pid));
        assert_eq!(p.pid("runner"), Some(pid), "PID file follows the restart");
        assert!(
            state["runner"]["last_exit"]
                .as_str()
                .is_some_and(|e| e.contains("SIGKILL")),
            "{state}"
        );
        let status = p.local(&["status"]).await;
        assert_eq!(status.status.code(), Some(0), "{}", text(&status));
        assert!(
            stdout(&status).contains(&format!("restarts {restart}")),
            "{}",
            text(&status)
        );
        previous = pid;
    }

    kill(previous, Signal::SIGKILL);
    p.wait_state("the supervisor gave up", |s| s["runner"]["gave_up"] == true)
        .await;
    let status = p.local(&["status"]).await;
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    assert!(stdout(&status).contains("gave up"), "{}", text(&status));
    let json = p
        .run(
            ["-o", "json", "local", "--data-dir"]
                .iter()
                .map(|s| s.to_string())
                .chain([p.data_dir().display().to_string(), "status".into()]),
        )
        .await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(json["runner"]["gave_up"], true);
    assert_eq!(json["server"]["health"], "serving");
    assert!(
        p.log("supervisor").contains("gave up on the runner"),
        "{}",
        p.log("supervisor")
    );
    // No further restart happens once given up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(p.state()["runner"]["pid"], serde_json::Value::Null);

    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
}

/// `stop` lets the runner finish an execution that is in flight before anything exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_an_in_flight_execution() {
    let llm = ScriptedLlm::start(vec![Reply::Delay(
        Duration::from_secs(4),
        Box::new(Reply::Text("Finished after the stop was asked for.".into())),
    )])
    .await;
    let p = Platform::new(Wire::Anthropic, &llm.base_url()).with_key();
    p.start(&[]).await;
    let out = p.cli(&["run", "--detach", "Take your time"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = detached_id(&out);
    // Following the execution from another process: it must see the end.
    let watch = p
        .command(["--endpoint", &p.endpoint(), "execution", "watch", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    // In flight once the model has been called (its answer takes seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while llm.request_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no model call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runner = p.pid("runner").expect("runner pid");
    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    assert!(!alive(runner));
    let watched = watch.wait_with_output().await.expect("watch output");
    assert_eq!(
        watched.status.code(),
        Some(0),
        "the execution did not complete\n{}\n{}",
        text(&watched),
        p.all_logs()
    );
    assert!(
        stdout(&watched).contains("Finished after the stop was asked for."),
        "{}",
        text(&watched)
    );
    let supervisor_log = p.log("supervisor");
    let drained = supervisor_log.find("the runner stopped (exit status 0)");
    let server_stop = supervisor_log.find("stopping the control plane");
    assert!(
        drained.is_some() && drained < server_stop,
        "runner first, then the control plane:\n{supervisor_log}"
    );
    for file in ["supervisor.pid", "server.pid", "runner.pid"] {
        assert!(!p.data_dir().join("run").join(file).exists(), "{file} left");
    }
    assert_eq!(p.state()["phase"], "stopped");
}

/// A second `start` refuses while one runs; after a supervisor crash, `status` reports stale
/// PID files and the next `start` stops the orphans and starts cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_refuses_and_a_crashed_one_is_cleaned_up() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;
    let first = p.state();

    let again = p.run(p.start_args(&[])).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        text(&again)
    );
    assert!(
        stderr(&again).contains(first["endpoint"].as_str().expect("endpoint")),
        "{}",
        text(&again)
    );
    assert_eq!(p.state(), first, "the running platform was not disturbed");

    // The supervisor dies without cleaning up; its children live on as orphans.
    let supervisor = p.pid("supervisor").expect("supervisor");
    let runner = p.pid("runner").expect("runner");
    let server = p.pid("server").expect("server");
    kill(supervisor, Signal::SIGKILL);
    wait_dead(supervisor, Duration::from_secs(10)).await;
    assert!(alive(runner) && alive(server));
    let status = p.local(&["status"]).await;
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(
        stdout(&status).contains("stale PID files"),
        "{}",
        text(&status)
    );

    p.start(&[]).await;
    wait_dead(runner, Duration::from_secs(30)).await;
    wait_dead(server, Duration::from_secs(30)).await;
    let log = p.log("supervisor");
    assert!(
        log.contains("left running by a previous supervisor"),
        "{log}"
    );
    let status = p.local(&["status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));

    // A PID file of a process that is long gone is only removed.
    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    std::fs::write(p.data_dir().join("run/supervisor.pid"), "4194303\n").expect("write");
    std::fs::write(p.data_dir().join("run/runner.pid"), "4194304\n").expect("write");
    p.start(&[]).await;
    assert!(p.log("supervisor").contains("removed stale PID file"));
    assert_ne!(p.pid("runner"), Some(4_194_304));
}

/// In the foreground, Ctrl-C reaches the supervisor (not the children directly), which
/// drains the runner and stops the control plane; the child output goes to the terminal and
/// the log files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_start_stops_in_order_on_ctrl_c() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    let child = p
        .command(p.start_args(&["--foreground"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let supervisor = child.id().expect("pid") as i32;
    p.wait_state("running", |s| s["phase"] == "running").await;
    let runner = p.pid("runner").expect("runner");
    kill(supervisor, Signal::SIGINT);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("stopped in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!alive(runner));
    let err = stderr(&out);
    assert!(err.contains("stigmer local is running"), "{err}");
    assert!(
        err.contains("runner | "),
        "child output on the terminal: {err}"
    );
    assert!(err.contains("SIGINT: stopping"), "{err}");
    assert!(
        p.log("runner").contains("draining") || p.log("runner").contains("shutdown"),
        "{}",
        p.log("runner")
    );
    assert_eq!(p.state()["phase"], "stopped");
    let logs = p.local(&["logs", "-c", "supervisor", "-n", "5"]).await;
    assert_eq!(logs.status.code(), Some(0), "{}", text(&logs));
    assert!(stdout(&logs).contains("stopped"), "{}", text(&logs));
}

/// A runner that is alive but does not answer (stopped with SIGSTOP) is replaced after the
/// configured number of failed readiness checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_runner_is_replaced() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&["--unhealthy-after", "2", "--runner-stop-timeout-secs", "1"])
        .await;
    let frozen = p.pid("runner").expect("runner pid");
    kill(frozen, Signal::SIGSTOP);
    let state = p
        .wait_state("a new runner", |s| {
            s["runner"]["state"] == "running"
                && s["runner"]["pid"]
                    .as_i64()
                    .is_some_and(|pid| pid != frozen as i64)
        })
        .await;
    wait_dead(frozen, Duration::from_secs(10)).await;
    assert_eq!(state["runner"]["restarts"], 1, "{state}");
    let log = p.log("supervisor");
    assert!(log.contains("is not ready (1 of 2 checks)"), "{log}");
    assert!(log.contains("stays unready: restarting it"), "{log}");
    assert!(log.contains("did not stop in time: killing it"), "{log}");
}

/// While the runner drains a long execution, a second Ctrl-C forces it out at once instead
/// of waiting for the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_the_stop() {
    let llm = ScriptedLlm::start(vec![Reply::Stall {
        text: "Working on it".into(),
    }])
    .await;
    let p = Platform::new(Wire::Anthropic, &llm.base_url()).with_key();
    let child = p
        .command(p.start_args(&["--foreground"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let supervisor = child.id().expect("pid") as i32;
    p.wait_state("running", |s| s["phase"] == "running").await;
    let runner = p.pid("runner").expect("runner");
    let out = p.cli(&["run", "--detach", "Never finish"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while llm.request_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no model call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = tokio::time::Instant::now();
    kill(supervisor, Signal::SIGINT);
    p.wait_state("stopping", |s| s["phase"] == "stopping").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(runner), "the runner drains after the first signal");
    kill(supervisor, Signal::SIGINT);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stopped in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "forced, not drained (drain timeout is 20 s)"
    );
    assert!(!alive(runner));
    assert!(
        stderr(&out).contains("again: forcing the runner to exit"),
        "{}",
        text(&out)
    );
    for file in ["supervisor.pid", "server.pid", "runner.pid"] {
        assert!(!p.data_dir().join("run").join(file).exists(), "{file} left");
    }
}

/// `restart` drains and stops the running platform, then starts a new one on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replaces_the_running_platform() {
    let llm = ScriptedLlm::start(vec![Reply::Text("Still here.".into())]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;
    let before = p.state();
    let old_runner = p.pid("runner").expect("runner");
    let mut args = p.start_args(&[]);
    args[1] = "restart".into();
    let out = p.run(args).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(
        stdout(&out).contains("stigmer local is running"),
        "{}",
        text(&out)
    );
    let after = p.state();
    assert_ne!(after["supervisor_pid"], before["supervisor_pid"]);
    assert!(!alive(old_runner));
    let run = p.cli(&["run", "Are you there?"]).await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // The previous run's logs are kept, rotated.
    assert!(p.data_dir().join("logs/supervisor.log.1").exists());
}
