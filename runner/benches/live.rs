//! What a user of a runner feels: token-to-screen latency of live text, and how many slow
//! executions one runner holds. The real control plane (in this process, real gRPC on
//! loopback), the real `runner` binary (release build), a scripted model.
//!
//! - Token to subscriber: the model streams numbered pieces at a fixed pace; a `SubscribeLive`
//!   client notes when each piece arrives. Latency = arrival - the moment the scripted model
//!   handed the piece to its connection. Local mode, and cloud mode (3 runners, real
//!   `redis-server`). Also the bytes the subscriber received per byte of text, for two text
//!   lengths (linear: the ratio stays flat).
//! - Capacity: one runner with `STIGMER_MAX_CONCURRENCY=1000`, 1000 executions against a model
//!   that takes 10 s per answer: RSS per in-flight execution and the runner's CPU while all wait;
//!   in local mode, then in cloud mode (dispatch through a real `redis-server`).
//!
//! Run: `cargo bench -p runner --bench live` (or `scripts/bench`). Prints a Markdown table.

mod common;

use common::{percentile, rss_kib};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use stigmer_proto::agentexecution::v1::{SubscribeExecutionRequest, execution_event};
use testkit::control_plane::TestControlPlane;
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr};

const PACE: Duration = Duration::from_millis(20);
const EXECUTIONS: usize = 10;
const PIECES: usize = 50;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

fn rows() -> &'static std::sync::Mutex<Vec<(String, String, String)>> {
    static ROWS: std::sync::OnceLock<std::sync::Mutex<Vec<(String, String, String)>>> =
        std::sync::OnceLock::new();
    ROWS.get_or_init(Default::default)
}

fn row(figure: &str, aim: &str, value: String) {
    eprintln!("{figure}: {value}");
    rows()
        .lock()
        .expect("rows")
        .push((figure.into(), aim.into(), value));
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = Path::new(env!("CARGO_BIN_EXE_runner"));
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "latency" {
        token_latency_local(&dir, bin).await;
        token_latency_cloud(&dir, bin).await;
    }
    if only.is_empty() || only == "capacity" {
        capacity(&dir, bin).await;
        capacity_cloud(&dir, bin).await;
    }
    println!("| figure | aim | measured |");
    println!("|---|---|---|");
    for (figure, aim, value) in rows().lock().expect("rows").iter() {
        println!("| {figure} | {aim} | {value} |");
    }
}

/// Each execution's pieces name it (`e3p017 `), so arrivals can be matched to departures.
fn paced_llm_pieces(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{tag}p{i:03} ")).collect()
}

async fn paced_llm(count: usize) -> ScriptedLlm {
    ScriptedLlm::with_handler(move |req| {
        let body = req.body.to_string();
        let tag = body
            .find("live-")
            .map(|at| {
                body[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
            })
            .unwrap_or_default();
        Reply::Paced {
            pieces: paced_llm_pieces(&tag, count),
            every: PACE,
        }
    })
    .await
}

fn local_env(cp: &TestControlPlane, llm: &ScriptedLlm, root: &Path) -> BTreeMap<String, String> {
    [
        ("MODE", "local".to_string()),
        ("STIGMER_BACKEND_ENDPOINT", cp.endpoint()),
        (
            "SANDBOX_ROOT_DIR",
            root.join("workspace").display().to_string(),
        ),
        ("STIGMER_HTTP_ADDR", free_addr().to_string()),
        ("STIGMER_LLM_PROVIDER", "anthropic".into()),
        ("ANTHROPIC_API_KEY", "bench-key".into()),
        ("STIGMER_LLM_BASE_URL", llm.base_url()),
        ("LOG_LEVEL", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Runs `EXECUTIONS` executions one after the other, each followed live; returns the
/// token latencies (ms) and the bytes of text events received per byte of text (states, which
/// are cumulative and coalesced as for `Subscribe`, are not counted).
async fn follow_live(
    cp: &Arc<TestControlPlane>,
    llm: &ScriptedLlm,
    prefix: &str,
) -> (Vec<f64>, f64) {
    let mut arrivals: HashMap<String, Instant> = HashMap::new();
    let mut received_bytes = 0usize;
    let mut text_bytes = 0usize;
    for n in 0..EXECUTIONS {
        let tag = format!("live-{prefix}{n}");
        let created = cp.create_execution("bench", "", &tag).await;
        let id = created.metadata.expect("metadata").id;
        let mut stream = cp
            .executions()
            .await
            .subscribe_live(SubscribeExecutionRequest { id })
            .await
            .expect("subscribe live")
            .into_inner();
        while let Some(event) = stream.message().await.expect("live event") {
            let now = Instant::now();
            let size = event.encoded_len();
            match event.event {
                Some(execution_event::Event::Text(delta)) => {
                    received_bytes += size;
                    text_bytes += delta.text.len();
                    for piece in delta.text.split_inclusive(' ') {
                        arrivals.entry(piece.to_string()).or_insert(now);
                    }
                }
                Some(execution_event::Event::Execution(_))
                | Some(execution_event::Event::Gap(_))
                | None => {}
            }
        }
    }
    let latencies = llm
        .sent_pieces()
        .into_iter()
        .filter(|(piece, _)| piece.starts_with(&format!("live-{prefix}")))
        .filter_map(|(piece, sent)| {
            arrivals
                .get(&piece)
                .map(|at| at.saturating_duration_since(sent).as_secs_f64() * 1e3)
        })
        .collect();
    let ratio = received_bytes as f64 / text_bytes.max(1) as f64;
    (latencies, ratio)
}

async fn token_latency_local(dir: &tempfile::TempDir, bin: &Path) {
    let cp = Arc::new(TestControlPlane::start(&dir.path().join("local-data")).await);
    cp.apply_agent("bench", "").await;
    let llm = paced_llm(PIECES).await;
    let env = local_env(&cp, &llm, dir.path());
    let mut runner = ChildProcess::spawn(bin, &env, &dir.path().join("logs"), "live-local");
    runner.wait_ready(Duration::from_secs(20)).await;
    let (mut latencies, ratio) = follow_live(&cp, &llm, "l").await;
    latency_row(
        "token to subscriber, local (model piece every 20 ms)",
        &mut latencies,
    );
    // Linear bytes: the same ratio for a text four times as long.
    let long = paced_llm(PIECES * 4).await;
    drop(runner);
    let env = local_env(&cp, &long, dir.path());
    let mut runner = ChildProcess::spawn(bin, &env, &dir.path().join("logs"), "live-local-long");
    runner.wait_ready(Duration::from_secs(20)).await;
    let (_, long_ratio) = follow_live(&cp, &long, "x").await;
    row(
        "live text events: bytes received per byte of text (50 / 200 pieces of about 12 bytes)",
        "linear (flat ratio)",
        format!("{ratio:.2} / {long_ratio:.2}"),
    );
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(Duration::from_secs(10)).await;
}

/// The token-to-subscriber row: median and tail of `latencies` (ms).
fn latency_row(figure: &str, latencies: &mut [f64]) {
    row(
        figure,
        "p50 < 20 ms, p99 < 50 ms",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms ({} pieces)",
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            latencies.len()
        ),
    );
}

async fn token_latency_cloud(dir: &tempfile::TempDir, bin: &Path) {
    // The stand-in's default start delay, like a sandbox that takes a moment.
    let stack = common::CloudStack::start(dir.path(), Duration::from_millis(50)).await;
    let llm = paced_llm(PIECES).await;
    let runners = stack
        .runners(bin, dir.path(), 3, &llm.base_url(), &[], "live-cloud")
        .await;
    let cp = stack.cp.clone();
    let (mut latencies, _) = follow_live(&cp, &llm, "c").await;
    latency_row(
        "token to subscriber, cloud via Redis (3 runners)",
        &mut latencies,
    );
    for mut r in runners {
        r.signal(nix::sys::signal::Signal::SIGTERM);
        r.wait_exit(Duration::from_secs(10)).await;
    }
}

/// Executions held at once by one runner in the capacity rows.
const HELD: usize = 1000;

/// A model that answers each request after 10 s: executions pile up waiting for it.
async fn slow_llm() -> ScriptedLlm {
    ScriptedLlm::with_handler(|_| {
        Reply::Delay(
            Duration::from_secs(10),
            Box::new(Reply::Text("done".into())),
        )
    })
    .await
}

/// A profiling hook: a program that runs the runner (it gets the runner's path in
/// `BENCH_RUNNER` and must exec it, keeping the pid), e.g. a script that sets allocator
/// variables.
fn wrapped(bin: &Path, env: &mut BTreeMap<String, String>) -> std::path::PathBuf {
    match std::env::var_os("BENCH_RUNNER_WRAPPER") {
        Some(wrapper) => {
            env.insert("BENCH_RUNNER".into(), bin.display().to_string());
            wrapper.into()
        }
        None => bin.to_path_buf(),
    }
}

async fn capacity(dir: &tempfile::TempDir, bin: &Path) {
    let cp = Arc::new(TestControlPlane::start(&dir.path().join("capacity-data")).await);
    cp.apply_agent("bench", "").await;
    let llm = slow_llm().await;
    let mut env = local_env(&cp, &llm, dir.path());
    env.insert("STIGMER_MAX_CONCURRENCY".into(), HELD.to_string());
    let bin = wrapped(bin, &mut env);
    let mut runner = ChildProcess::spawn(&bin, &env, &dir.path().join("logs"), "capacity");
    runner.wait_ready(Duration::from_secs(20)).await;
    hold(&cp, &llm, &runner, "capacity").await;
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(Duration::from_secs(30)).await;
}

/// The same with one cloud runner: dispatch through Redis, the control plane in its Redis
/// configuration, the Daytona stand-in (no sandbox is opened: the model calls no tool).
async fn capacity_cloud(dir: &tempfile::TempDir, bin: &Path) {
    let stack = common::CloudStack::start(dir.path(), Duration::ZERO).await;
    let llm = slow_llm().await;
    let held = HELD.to_string();
    let runners = stack
        .runners(
            bin,
            dir.path(),
            1,
            &llm.base_url(),
            &[("STIGMER_MAX_CONCURRENCY", held.as_str())],
            "capacity-cloud",
        )
        .await;
    for mut runner in runners {
        hold(&stack.cp, &llm, &runner, "capacity, cloud").await;
        runner.signal(nix::sys::signal::Signal::SIGTERM);
        runner.wait_exit(Duration::from_secs(30)).await;
    }
}

/// Creates [`HELD`] executions, waits until all of them wait for the model, and reports the
/// runner's RSS per waiting execution and its CPU while they wait.
async fn hold(cp: &TestControlPlane, llm: &ScriptedLlm, runner: &ChildProcess, label: &str) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = runner.pid().as_raw();
    let idle = rss_kib(pid);
    let mut ids = Vec::new();
    for n in 0..HELD {
        let created = cp.create_execution("bench", "", &format!("cap-{n}")).await;
        ids.push(created.metadata.expect("metadata").id);
    }
    let started = Instant::now();
    while llm.request_count() < HELD {
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "only {} of {HELD} executions reached the model",
            llm.request_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_waiting = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu =
        (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second() / window.elapsed().as_secs_f64();
    let held = rss_kib(pid);
    eprintln!(
        "largest mappings with {HELD} held (kB):\n{}",
        largest_mappings(pid)
    );
    for id in &ids {
        cp.wait_terminal(id, Duration::from_secs(60)).await;
    }
    row(
        &format!("{label}: RSS per in-flight execution ({HELD} held, model 10 s)"),
        "<= 128 KiB",
        format!(
            "{:.1} KiB ({:.1} MiB idle, {:.1} MiB with {HELD} waiting; the last reached the model {:.2} s after the last create)",
            (held - idle) / HELD as f64,
            idle / 1024.0,
            held / 1024.0,
            all_waiting.as_secs_f64()
        ),
    );
    row(
        &format!("{label}: runner CPU while {HELD} wait"),
        "< 5% of one core",
        format!("{:.2}% of one core (5 s window, 10 ms ticks)", cpu * 100.0),
    );
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    field(11) + field(12)
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The runner's five largest resident mappings, to tell heap from stacks and files.
fn largest_mappings(pid: i32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut mappings = Vec::new();
    let mut name = String::new();
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            let kb: u64 = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            mappings.push((kb, name.clone()));
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            name = line.to_string();
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    mappings
        .iter()
        .take(5)
        .map(|(kb, name)| format!("  {kb} {name}"))
        .collect::<Vec<_>>()
        .join("\n")
}
