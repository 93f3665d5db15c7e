//! Whole-path benchmark: the real control plane (in this process, real gRPC on loopback), the
//! real `runner` binary (release build), and a scripted LLM that answers at once.
//!
//! Prints: runner start-to-ready (ms, median of several starts), idle RSS (MiB), the
//! per-execution latency (create → terminal state seen by a subscriber; p50/p99) and
//! throughput at concurrency 1 and 32, and the dispatch overhead (create → the runner's first
//! LLM request) at concurrency 1, locally and through Redis.
//!
//! Run: `cargo bench -p runner --bench e2e` (or `scripts/bench`).

mod common;

use common::{percentile, rss_kib};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stigmer_proto::agentexecution::v1::ExecutionPhase;
use testkit::control_plane::{Executions, TestControlPlane, phase};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr, http_get};

const STARTS: usize = 9;
const SEQUENTIAL: usize = 300;
const CONCURRENT_WORKERS: usize = 32;
const CONCURRENT_TOTAL: usize = 3_000;

/// When each tagged execution was created, or when its first LLM request arrived.
type Times = Arc<Mutex<HashMap<String, Instant>>>;

/// A scripted LLM that answers at once and records when the first request naming each tag
/// (`bench-...` in the user message) arrived.
async fn recording_llm(first_call: Times) -> ScriptedLlm {
    ScriptedLlm::with_handler(move |req| {
        let body = req.body.to_string();
        if let Some(start) = body.find("bench-") {
            let tag: String = body[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            first_call
                .lock()
                .expect("lock")
                .entry(tag)
                .or_insert_with(Instant::now);
        }
        Reply::Text("done".into())
    })
    .await
}

/// Create -> first LLM request, in ms, for every tag seen by both.
fn dispatch_latencies(created_at: &Times, first_call: &Times) -> Vec<f64> {
    let firsts = first_call.lock().expect("lock").clone();
    created_at
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(tag, t0)| {
            firsts
                .get(tag)
                .map(|t1| t1.duration_since(*t0).as_secs_f64() * 1e3)
        })
        .collect()
}

/// Summary rows (figure, aim, measured), printed as a Markdown table at the end.
static ROWS: std::sync::Mutex<Vec<(String, &'static str, String)>> =
    std::sync::Mutex::new(Vec::new());

fn row(figure: String, aim: &'static str, value: String) {
    ROWS.lock().expect("rows").push((figure, aim, value));
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
    println!("| figure | aim | measured |");
    println!("|---|---|---|");
    for (figure, aim, value) in ROWS.lock().expect("rows").iter() {
        println!("| {figure} | {aim} | {value} |");
    }
}

fn runner_env(cp: &TestControlPlane, llm: &ScriptedLlm, root: &Path) -> BTreeMap<String, String> {
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
        ("STIGMER_MAX_CONCURRENCY", "64".into()),
        ("LOG_LEVEL", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn bench() {
    // `BENCH_ONLY=cloud`: the cloud stack alone (for profiling it); `local` skips it.
    if std::env::var("BENCH_ONLY").is_ok_and(|o| o == "cloud") {
        let dir = tempfile::tempdir().expect("tempdir");
        cloud_dispatch(&dir, Path::new(env!("CARGO_BIN_EXE_runner"))).await;
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = Arc::new(TestControlPlane::start(&dir.path().join("data")).await);
    let first_call: Times = Arc::default();
    let llm = recording_llm(first_call.clone()).await;
    cp.apply_agent("bench", "").await;
    let bin = Path::new(env!("CARGO_BIN_EXE_runner"));
    let logs = dir.path().join("logs");

    // Start to ready.
    let mut ready_ms = Vec::new();
    for i in 0..STARTS {
        let env = runner_env(&cp, &llm, dir.path());
        let started = Instant::now();
        let mut runner = ChildProcess::spawn(bin, &env, &logs, &format!("start-{i}"));
        let addr = runner.http_addr.expect("http addr");
        loop {
            if http_get(addr, "/readyz")
                .await
                .is_some_and(|(c, _)| c == 200)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "runner not ready\n{}",
                runner.output()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        ready_ms.push(started.elapsed().as_secs_f64() * 1e3);
        runner.signal(nix::sys::signal::Signal::SIGTERM);
        runner.wait_exit(Duration::from_secs(10)).await;
    }

    // The runner that serves the load.
    let env = runner_env(&cp, &llm, dir.path());
    let mut runner = ChildProcess::spawn(bin, &env, &logs, "load");
    runner.wait_ready(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(runner.pid().as_raw());

    let created_at: Times = Arc::default();
    let (c1, c1_rate) = load(&cp, 1, SEQUENTIAL, &created_at).await;
    let mut c1_dispatch = dispatch_latencies(&created_at, &first_call);
    if let Ok(path) = std::env::var("BENCH_PIDS") {
        // Profiling hook: where a profiler finds the runner while the concurrency-32 load runs.
        let _ = std::fs::write(
            path,
            format!("{} {}", std::process::id(), runner.pid().as_raw()),
        );
    }
    let (c32, c32_rate) = load(&cp, CONCURRENT_WORKERS, CONCURRENT_TOTAL, &Times::default()).await;
    let busy_rss = rss_mib(runner.pid().as_raw());
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(Duration::from_secs(30)).await;

    println!(
        "runner start to ready:   median {:.1} ms (min {:.1}, max {:.1}; {STARTS} starts)",
        percentile(&mut ready_ms, 50.0),
        percentile(&mut ready_ms, 0.0),
        percentile(&mut ready_ms, 100.0)
    );
    println!("runner idle RSS:         {idle_rss:.1} MiB (after load: {busy_rss:.1} MiB)");
    row(
        "runner start to ready".into(),
        "< 50 ms",
        format!("median {:.1} ms", percentile(&mut ready_ms, 50.0)),
    );
    row(
        "runner idle RSS".into(),
        "< 20 MiB",
        format!("{idle_rss:.1} MiB ({busy_rss:.1} MiB after load)"),
    );
    print_load("local, concurrency 1", c1, c1_rate);
    println!(
        "concurrency 1 dispatch: create -> first LLM request p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut c1_dispatch, 50.0),
        percentile(&mut c1_dispatch, 99.0)
    );
    print_load("local, concurrency 32", c32, c32_rate);

    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "local") {
        return;
    }
    cloud_dispatch(&dir, bin).await;
}

/// Cloud mode: the control plane in its Redis configuration, several runners in `MODE=cloud`
/// reading the queue stream, a Daytona contract server (sandboxes start at once) and the
/// scripted LLM. Measures create -> the runner's first LLM request (dispatch overhead through
/// Redis) and executions per second.
async fn cloud_dispatch(dir: &tempfile::TempDir, bin: &Path) {
    const RUNNERS: usize = 3;
    let stack = common::CloudStack::start(dir.path(), Duration::ZERO).await;
    let first_call: Times = Arc::default();
    let llm = recording_llm(first_call.clone()).await;
    let runners = stack
        .runners(
            bin,
            dir.path(),
            RUNNERS,
            &llm.base_url(),
            &[
                ("STIGMER_MAX_CONCURRENCY", "32"),
                ("STIGMER_CLAIM_WAIT_MS", "1000"),
            ],
            "cloud",
        )
        .await;
    let cp = stack.cp.clone();
    for (label, workers, total) in [("concurrency 1 ", 1, 200), ("concurrency 32", 32, 2_000)] {
        first_call.lock().expect("lock").clear();
        let created_at: Times = Arc::default();
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(total));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (cp, created_at, remaining) = (cp.clone(), created_at.clone(), remaining.clone());
            tasks.push(tokio::spawn(async move {
                // One connection per client, as a real client keeps.
                let mut client = cp.executions().await;
                let mut n = 0;
                while remaining
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |r| r.checked_sub(1),
                    )
                    .is_ok()
                {
                    let tag = format!("bench-{w}-{n}");
                    n += 1;
                    created_at
                        .lock()
                        .expect("lock")
                        .insert(tag.clone(), Instant::now());
                    let id = create(&mut client, &tag).await;
                    let done = wait_terminal(&mut client, &id).await;
                    assert_eq!(
                        phase(&done),
                        ExecutionPhase::ExecutionCompleted,
                        "{:?}",
                        done.status.as_ref().map(|s| &s.error)
                    );
                }
            }));
        }
        for t in tasks {
            t.await.expect("cloud load task");
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        let mut dispatch = dispatch_latencies(&created_at, &first_call);
        row(
            format!("cloud {}, {RUNNERS} runners", label.trim()),
            if workers == 1 {
                "p50 < 5 ms"
            } else {
                "1,500/s"
            },
            format!(
                "create -> first LLM request p50 {:.2} ms, p99 {:.2} ms; {rate:.0} executions/s",
                percentile(&mut dispatch, 50.0),
                percentile(&mut dispatch, 99.0)
            ),
        );
        println!(
            "cloud {label} ({RUNNERS} runners): create -> first LLM request p50 {:.2} ms, p99 {:.2} ms; {:.0} executions/s ({total})",
            percentile(&mut dispatch, 50.0),
            percentile(&mut dispatch, 99.0),
            rate
        );
    }
    for mut r in runners {
        r.signal(nix::sys::signal::Signal::SIGTERM);
        r.wait_exit(Duration::from_secs(30)).await;
    }
}

fn print_load(label: &str, mut latencies: Vec<f64>, rate: f64) {
    let value = format!(
        "p50 {:.2} ms, p99 {:.2} ms, {:.0} executions/s ({} executions)",
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
        rate,
        latencies.len()
    );
    println!("{label}: {value}");
    let aim = if label.ends_with("32") {
        "2,000/s, p99 < 40 ms"
    } else {
        "p50 < 5 ms"
    };
    row(format!("{label}, create -> terminal seen"), aim, value);
}

/// `workers` clients each create an execution and wait for its terminal state, until `total`.
/// Each message is a tag whose creation time goes into `created_at`.
async fn load(
    cp: &Arc<TestControlPlane>,
    workers: usize,
    total: usize,
    created_at: &Times,
) -> (Vec<f64>, f64) {
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(total));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let cp = cp.clone();
        let remaining = remaining.clone();
        let created_at = created_at.clone();
        tasks.push(tokio::spawn(async move {
            // One connection per client, as a real client keeps.
            let mut client = cp.executions().await;
            let mut lat = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let tag = format!("bench-local-{w}-{}", lat.len());
                let t = Instant::now();
                created_at.lock().expect("lock").insert(tag.clone(), t);
                let id = create(&mut client, &tag).await;
                let done = wait_terminal(&mut client, &id).await;
                assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (all, rate)
}

fn rss_mib(pid: i32) -> f64 {
    rss_kib(pid) / 1024.0
}

async fn create(client: &mut Executions, tag: &str) -> String {
    use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, CreateExecutionRequest};
    let created = client
        .create_execution(CreateExecutionRequest {
            spec: Some(AgentExecutionSpec {
                agent_id: "bench".into(),
                message: tag.into(),
                ..Default::default()
            }),
            labels: Default::default(),
        })
        .await
        .expect("create execution")
        .into_inner();
    created.metadata.expect("metadata").id
}

/// Follows the execution's `Subscribe` stream to its terminal state.
async fn wait_terminal(
    client: &mut Executions,
    id: &str,
) -> stigmer_proto::agentexecution::v1::AgentExecution {
    use stigmer_proto::agentexecution::v1::SubscribeExecutionRequest;
    let follow = async {
        let mut stream = client
            .subscribe(SubscribeExecutionRequest { id: id.into() })
            .await
            .expect("subscribe")
            .into_inner();
        let mut last = None;
        while let Some(state) = stream.message().await.expect("stream item") {
            last = Some(state);
        }
        last.expect("a state")
    };
    tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .unwrap_or_else(|_| panic!("execution {id} not terminal within 60 s"))
}
