//! The runner process is killed for real (SIGKILL) at each point of an execution, in local mode
//! and in cloud mode (Redis dispatch, Daytona contract server). Each test checks the final
//! phase, that the side-effecting tool call (`echo x >> log.txt` in the sandbox) ran at most
//! once, that the model was not asked to start the execution again, and that nothing is left
//! PENDING or IN_PROGRESS: a second runner ("survivor") is started after the kill and the
//! control plane runs with short leases, so the lease-expiry sweep acts within a second.
//!
//! How each point is reached deterministically:
//! - The victim runner talks to the control plane through `testkit::runner_proxy`, an
//!   in-process forwarding proxy of the runner API. It holds one chosen call (before the
//!   control plane sees it, or after the control plane answered it), and the test kills the
//!   runner once the call is held: "after the claim" (the start is held), "during the terminal
//!   report" (the terminal status is held) and, in cloud mode, "between the model's tool call
//!   and its execution" (the call storing the new Daytona sandbox on the session, which the
//!   runner awaits before running the tool, is held).
//! - The proxy also answers every status update 300 ms late, as a loaded control plane would,
//!   so a coalesced status update in flight when the runner dies dies with it. (This is what
//!   made executions run twice before the start was made durable.)
//! - "During the first model call": the scripted LLM stalls (`Reply::Stall`) and the test
//!   kills the runner once the request has arrived.
//! - Local mode, "between the model's tool call and its execution": the model asks for two
//!   calls in one turn; the first blocks (a `sleep` that writes its pid first), the second is
//!   the side effect. The runner is killed while the first blocks, i.e. after it received the
//!   side-effecting call and before it ran it.
//! - "During a tool call": the command appends to the log, writes its pid, then sleeps; the
//!   runner is killed once the pid file exists.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{READY_TIMEOUT, execution_id, status};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgid};
use serde_json::json;
use stigmer_proto::agentexecution::v1::{AgentExecution, ExecutionPhase, ListExecutionsRequest};
use stigmer_proto::runner::v1::UpdateStatusRequest;
use stigmer_server::{RedisSettings, RedisTarget, ServerConfig};
use tempfile::TempDir;
use testkit::control_plane::{TestControlPlane, phase};
use testkit::daytona::{DaytonaOptions, DaytonaServer};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr};
use testkit::redis::RedisServer;
use testkit::runner_proxy::{Call, HoldPoint, RunnerProxy};

const SIDE_EFFECT: &str = "echo x >> log.txt";
const LOG: &str = "log.txt";
const DAYTONA_KEY: &str = "dtn-test-key";
/// Long enough for the lease to expire, the sweep to act and (cloud) the survivor to reclaim
/// the dead runner's queue entry.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How late the proxy answers status updates.
const SLOW_STATUS: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Local,
    Cloud,
}

fn run_command(command: &str) -> (String, serde_json::Value) {
    ("run_command".into(), json!({ "command": command }))
}

fn tool_calls(commands: &[&str]) -> Reply {
    Reply::ToolCalls {
        text: None,
        calls: commands.iter().map(|c| run_command(c)).collect(),
    }
}

/// One control plane (short leases), the scripted LLM, the runner-API proxy and, in cloud
/// mode, Redis and the Daytona contract server.
/// The blocking commands' sleeps, unique so that their processes can be found by command line.
const GATE_SLEEP: &str = "sleep 31.7";
const BUSY_SLEEP: &str = "sleep 32.9";

struct World {
    mode: Mode,
    dir: TempDir,
    cp: TestControlPlane,
    llm: ScriptedLlm,
    /// Model requests that start the execution (no tool result in the conversation yet).
    first_turns: Arc<AtomicUsize>,
    proxy: RunnerProxy,
    redis: Option<RedisServer>,
    daytona: Option<DaytonaServer>,
    jwt: String,
}

impl World {
    /// `first_turn(n)` answers the n-th request that starts the execution (0: the victim's;
    /// any later one is a second run); requests carrying a tool result get "done".
    async fn new(mode: Mode, first_turn: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let first_turns = Arc::new(AtomicUsize::new(0));
        let counter = first_turns.clone();
        let llm = ScriptedLlm::with_handler(move |req| {
            if req.body.to_string().contains("tool_result") {
                return Reply::Text("done".into());
            }
            first_turn(counter.fetch_add(1, Ordering::SeqCst))
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let jwt = testkit::pki::unsigned_jwt("runner");
        let mut config = ServerConfig::local(dir.path().join("data"));
        config.lease_ttl = Duration::from_millis(800);
        config.sweep_interval = Duration::from_millis(100);
        let (redis, daytona) = match mode {
            Mode::Local => (None, None),
            Mode::Cloud => {
                let redis = RedisServer::start();
                let mut options = DaytonaOptions::new(DAYTONA_KEY);
                options.start_delay = Duration::from_millis(20);
                let daytona = DaytonaServer::start(options).await;
                config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
                config.redis = Some(RedisSettings::new(RedisTarget::Url(redis.url())));
                (Some(redis), Some(daytona))
            }
        };
        let cp = TestControlPlane::start_with(config, None).await;
        cp.apply_agent("a", "").await;
        let proxy = RunnerProxy::start(cp.channel().await).await;
        proxy.delay_status_updates(SLOW_STATUS);
        Self {
            mode,
            dir,
            cp,
            llm,
            first_turns,
            proxy,
            redis,
            daytona,
            jwt,
        }
    }

    fn sandbox_root(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    fn runner_env(&self, endpoint: &str, runner_id: &str) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("STIGMER_BACKEND_ENDPOINT", endpoint.to_string()),
            ("STIGMER_RUNNER_ID", runner_id.into()),
            ("STIGMER_HTTP_ADDR", free_addr().to_string()),
            ("STIGMER_CLAIM_WAIT_MS", "300".into()),
            ("STIGMER_STATUS_FLUSH_MS", "50".into()),
            ("STIGMER_LLM_PROVIDER", "anthropic".into()),
            ("ANTHROPIC_API_KEY", "sk-test".into()),
            ("STIGMER_LLM_BASE_URL", self.llm.base_url()),
            ("LOG_LEVEL", "debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        match (self.mode, &self.redis, &self.daytona) {
            (Mode::Cloud, Some(redis), Some(daytona)) => {
                set("MODE", "cloud".into());
                set("STIGMER_BACKEND_INSECURE", "true".into());
                set("STIGMER_API_KEY", self.jwt.clone());
                set("REDIS_URL", redis.url());
                set("DAYTONA_API_URL", daytona.api_url());
                set("DAYTONA_API_KEY", DAYTONA_KEY.into());
                set("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "dev-tools".into());
                // Queue entries of a dead runner are reclaimable after 20 heartbeats (2 s).
                set("STIGMER_HEARTBEAT_INTERVAL_MS", "100".into());
            }
            _ => {
                set("MODE", "local".into());
                set(
                    "SANDBOX_ROOT_DIR",
                    self.sandbox_root().display().to_string(),
                );
                set("STIGMER_HEARTBEAT_INTERVAL_MS", "200".into());
            }
        }
        env
    }

    async fn start_runner(&self, endpoint: &str, name: &str) -> ChildProcess {
        let mut runner = ChildProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_runner")),
            &self.runner_env(endpoint, name),
            &self.dir.path().join("logs"),
            name,
        );
        runner.wait_ready(READY_TIMEOUT).await;
        runner
    }

    /// The runner that gets killed: it talks to the control plane through the proxy.
    async fn start_victim(&self) -> ChildProcess {
        self.start_runner(&self.proxy.endpoint(), "victim").await
    }

    /// Started after the kill, straight to the control plane: it would run anything handed
    /// out again.
    async fn start_survivor(&self) -> ChildProcess {
        self.start_runner(&self.cp.endpoint(), "survivor").await
    }

    /// Every sandbox directory: the local sandbox root, or each Daytona sandbox's.
    fn sandbox_dirs(&self) -> Vec<PathBuf> {
        match &self.daytona {
            None => vec![self.sandbox_root()],
            Some(daytona) => daytona
                .sandboxes()
                .iter()
                .filter_map(|s| daytona.sandbox_root(&s.id))
                .collect(),
        }
    }

    fn files_named(&self, name: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in self.sandbox_dirs() {
            find_files(&dir, name, &mut found);
        }
        found
    }

    /// How many times the side effect happened, in any sandbox.
    fn side_effects(&self) -> usize {
        self.files_named(LOG)
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    }

    async fn wait_for_file(&self, name: &str) -> PathBuf {
        let deadline = tokio::time::Instant::now() + common::RUN_TIMEOUT;
        loop {
            if let Some(path) = self.files_named(name).into_iter().next()
                && std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty())
            {
                return path;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never appeared in a sandbox"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Local mode: commands are confined, and the sandbox helper ends every process of a
    /// command when its runner dies (the helper's lifeline closes): asserted here, by command
    /// line, since `$$` inside the command's PID namespace is not a host pid. Cloud mode: the
    /// Daytona stand-in runs commands as plain processes in their own group (which SIGKILL of
    /// the runner does not reach), killed here by the pids they wrote.
    async fn kill_orphans(&self) {
        if matches!(self.mode, Mode::Local) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            for marker in [GATE_SLEEP, BUSY_SLEEP] {
                while !testkit::process::pids_running(marker).is_empty() {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "'{marker}' outlived its killed runner"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            return;
        }
        for name in ["gate.pid", "busy.pid"] {
            for path in self.files_named(name) {
                let Ok(pid) = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .parse::<i32>()
                else {
                    continue;
                };
                // The shell that wrote its pid may not lead its group (Daytona's wraps it).
                // Never group 0 or 1: killpg(0) would be this test's own group.
                if let Ok(group) = getpgid(Some(Pid::from_raw(pid)))
                    && group.as_raw() > 1
                {
                    let _ = killpg(group, Signal::SIGKILL);
                }
            }
        }
    }

    /// The final state, with the invariants every test shares: terminal, the side effect ran
    /// at most `side_effects` times, the execution was started by the model `first_turns`
    /// times, nothing is left PENDING or IN_PROGRESS, and (cloud) the dead runner's queue
    /// entry was reclaimed and settled.
    async fn settle(
        &self,
        id: &str,
        survivor: &ChildProcess,
        side_effects: usize,
        first_turns: usize,
    ) -> AgentExecution {
        let done = tokio::time::timeout(SETTLE_TIMEOUT, self.cp.follow(id, |_| {}))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "execution {id} not terminal within {SETTLE_TIMEOUT:?}\n{}",
                    survivor.output()
                )
            });
        let open = self
            .cp
            .executions()
            .await
            .list_executions(ListExecutionsRequest {
                phases: vec![
                    ExecutionPhase::ExecutionPending.into(),
                    ExecutionPhase::ExecutionInProgress.into(),
                ],
                ..Default::default()
            })
            .await
            .expect("list executions")
            .into_inner()
            .executions;
        assert!(open.is_empty(), "left open: {open:?}");
        if let Some(redis) = &self.redis {
            wait_queue_settled(redis, survivor).await;
        }
        // A second run, had there been one, has had every chance to show by now.
        assert_eq!(
            self.side_effects(),
            side_effects,
            "the side-effecting tool call ran a wrong number of times\n{}",
            survivor.output()
        );
        assert_eq!(
            self.first_turns.load(Ordering::SeqCst),
            first_turns,
            "the execution was started by the model a wrong number of times"
        );
        done
    }
}

fn find_files(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_files(&path, name, found);
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
}

/// XPENDING's summary: count, first and last id, and entries per consumer.
type XPendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Cloud: waits until the queue has no pending entry left. Only runners acknowledge entries,
/// and the dead runner's entry is acknowledged only by a runner that reclaimed it (XAUTOCLAIM)
/// and had its claim settled by the control plane, so this proves that path ran.
async fn wait_queue_settled(redis: &RedisServer, survivor: &ChildProcess) {
    let client = ::redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let pending: XPendingSummary = ::redis::cmd("XPENDING")
            .arg("stigmer:queue")
            .arg("runners")
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        let length: u64 = ::redis::cmd("XLEN")
            .arg("stigmer:queue")
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        if pending.0 == 0 && length == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue not settled: {pending:?}, {length} entries\n{}",
            survivor.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kill(mut victim: ChildProcess) -> String {
    victim.signal(Signal::SIGKILL);
    victim.wait_exit(Duration::from_secs(10)).await;
    victim.output()
}

fn is_start(call: &Call<'_>) -> bool {
    matches!(call, Call::UpdateStatus(_))
}

fn is_terminal(call: &Call<'_>) -> bool {
    matches!(call, Call::UpdateStatus(UpdateStatusRequest { status: Some(s), .. })
        if s.phase() == ExecutionPhase::ExecutionCompleted)
}

fn assert_runner_lost(done: &AgentExecution, victim_log: &str) {
    assert_eq!(phase(done), ExecutionPhase::ExecutionFailed, "{victim_log}");
    assert!(
        status(done)
            .error
            .starts_with("runner lost: lease expired (runner victim)"),
        "{}",
        status(done).error
    );
}

/// Killed after the claim, before its start reached the control plane: the execution never
/// started, so it is handed out again and runs exactly once, on the survivor.
async fn after_the_claim(mode: Mode) {
    let w = World::new(mode, |_| tool_calls(&[SIDE_EFFECT])).await;
    let mut held = w.proxy.hold(HoldPoint::BeforeForwarding, is_start);
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    held.wait(common::RUN_TIMEOUT).await;
    let claimed = w.cp.get_execution(&id).await;
    assert_eq!(phase(&claimed), ExecutionPhase::ExecutionPending);
    assert!(status(&claimed).started_at.is_empty());
    assert_eq!(
        w.llm.request_count(),
        0,
        "the model was called before the start was recorded"
    );
    kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 1, 1).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        survivor.output()
    );
}

/// The start was stored but its answer never reached the runner: the runner did nothing, yet
/// the control plane must assume it started, so the execution fails rather than run twice.
async fn after_the_start_was_stored(mode: Mode) {
    let w = World::new(mode, |_| tool_calls(&[SIDE_EFFECT])).await;
    let mut held = w.proxy.hold(HoldPoint::AfterForwarding, is_start);
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    held.wait(common::RUN_TIMEOUT).await;
    let started = w.cp.get_execution(&id).await;
    assert_eq!(phase(&started), ExecutionPhase::ExecutionInProgress);
    assert!(!status(&started).started_at.is_empty());
    assert_eq!(w.llm.request_count(), 0);
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 0, 0).await;
    assert_runner_lost(&done, &victim_log);
}

/// Killed while the model is answering: the start is already durable, so the execution fails
/// ("runner lost") and the model call is not paid twice.
async fn during_the_first_model_call(mode: Mode) {
    let w = World::new(mode, |n| {
        if n == 0 {
            Reply::Stall {
                text: "thinking".into(),
            }
        } else {
            tool_calls(&[SIDE_EFFECT])
        }
    })
    .await;
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    let deadline = tokio::time::Instant::now() + common::RUN_TIMEOUT;
    while w.llm.request_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no model request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What an operator sees while the model thinks: started, not PENDING.
    let thinking = w.cp.get_execution(&id).await;
    assert_eq!(phase(&thinking), ExecutionPhase::ExecutionInProgress);
    assert!(!status(&thinking).started_at.is_empty());
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 0, 1).await;
    assert_runner_lost(&done, &victim_log);
}

/// Killed after the model asked for the side-effecting call and before it ran.
async fn between_the_tool_call_and_its_execution(mode: Mode) {
    match mode {
        Mode::Local => between_local().await,
        Mode::Cloud => between_cloud().await,
    }
}

/// Local: the side-effecting call is the second of the turn; the first blocks.
async fn between_local() {
    let w = World::new(Mode::Local, |n| {
        if n == 0 {
            tool_calls(&[&format!("echo $$ > gate.pid; {GATE_SLEEP}"), SIDE_EFFECT])
        } else {
            tool_calls(&[SIDE_EFFECT])
        }
    })
    .await;
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    w.wait_for_file("gate.pid").await;
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 0, 1).await;
    w.kill_orphans().await;
    assert_runner_lost(&done, &victim_log);
}

/// Cloud: the first tool call creates the session's Daytona sandbox and stores its id on the
/// session; the runner waits for that answer before it runs the command, and it is held.
async fn between_cloud() {
    let w = World::new(Mode::Cloud, |_| tool_calls(&[SIDE_EFFECT])).await;
    let mut held = w.proxy.hold(
        HoldPoint::BeforeForwarding,
        |call| matches!(call, Call::UpdateSession(r) if !r.sandbox_id.is_empty()),
    );
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    held.wait(common::RUN_TIMEOUT).await;
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 0, 1).await;
    assert_runner_lost(&done, &victim_log);
}

/// Killed while the side-effecting command runs: it ran once and is not run again.
async fn during_a_tool_call(mode: Mode) {
    let w = World::new(mode, |n| {
        if n == 0 {
            tool_calls(&[&format!(
                "echo x >> log.txt; echo $$ > busy.pid; {BUSY_SLEEP}"
            )])
        } else {
            tool_calls(&[SIDE_EFFECT])
        }
    })
    .await;
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    w.wait_for_file("busy.pid").await;
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 1, 1).await;
    w.kill_orphans().await;
    assert_runner_lost(&done, &victim_log);
}

/// Killed after the control plane stored the terminal status and before the runner heard
/// back: the execution stays COMPLETED (and, in cloud mode, its queue entry is settled by the
/// runner that reclaims it).
async fn during_the_terminal_report_once_stored(mode: Mode) {
    let w = World::new(mode, |_| tool_calls(&[SIDE_EFFECT])).await;
    let mut held = w.proxy.hold(HoldPoint::AfterForwarding, is_terminal);
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    held.wait(common::RUN_TIMEOUT).await;
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 1, 1).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{victim_log}"
    );
}

/// Killed with the terminal status on its way: the control plane never got it, so the
/// started execution fails ("runner lost"); its tool call is not run again.
async fn during_the_terminal_report_before_stored(mode: Mode) {
    let w = World::new(mode, |_| tool_calls(&[SIDE_EFFECT])).await;
    let mut held = w.proxy.hold(HoldPoint::BeforeForwarding, is_terminal);
    let victim = w.start_victim().await;
    let id = execution_id(&w.cp.create_execution("a", "", "go").await);
    held.wait(common::RUN_TIMEOUT).await;
    let victim_log = kill(victim).await;

    let survivor = w.start_survivor().await;
    let done = w.settle(&id, &survivor, 1, 1).await;
    assert_runner_lost(&done, &victim_log);
}

macro_rules! both_modes {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Mode::Local).await;
                }
            )*
        }
        mod cloud {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Mode::Cloud).await;
                }
            )*
        }
    };
}

both_modes!(
    after_the_claim,
    after_the_start_was_stored,
    during_the_first_model_call,
    between_the_tool_call_and_its_execution,
    during_a_tool_call,
    during_the_terminal_report_once_stored,
    during_the_terminal_report_before_stored,
);
