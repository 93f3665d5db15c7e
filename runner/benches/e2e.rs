//! Whole-path benchmark: the real control plane (in this process, real gRPC on loopback), the
//! real `runner` binary (release build), and a scripted LLM that answers at once.
//!
//! Prints: runner start-to-ready (ms, median of several starts), idle RSS (MiB), and the
//! per-execution latency (create → terminal state seen by a subscriber; p50/p99) and
//! throughput at concurrency 1 and 32.
//!
//! Run: `cargo bench -p runner --bench e2e` (or `scripts/bench`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stigmer_proto::agentexecution::v1::ExecutionPhase;
use testkit::control_plane::{TestControlPlane, phase};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr, http_get};

const STARTS: usize = 9;
const SEQUENTIAL: usize = 300;
const CONCURRENT_WORKERS: usize = 32;
const CONCURRENT_TOTAL: usize = 3_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
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
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = Arc::new(TestControlPlane::start(&dir.path().join("data")).await);
    let llm = ScriptedLlm::with_handler(|_| Reply::Text("done".into())).await;
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

    let (c1, c1_rate) = load(&cp, 1, SEQUENTIAL).await;
    let (c32, c32_rate) = load(&cp, CONCURRENT_WORKERS, CONCURRENT_TOTAL).await;
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
    print_load("concurrency 1 ", c1, c1_rate);
    print_load("concurrency 32", c32, c32_rate);
}

fn print_load(label: &str, mut latencies: Vec<f64>, rate: f64) {
    println!(
        "{label}:          p50 {:.2} ms, p99 {:.2} ms, {:.0} executions/s ({} executions)",
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
        rate,
        latencies.len()
    );
}

/// `workers` clients each create an execution and wait for its terminal state, until `total`.
async fn load(cp: &Arc<TestControlPlane>, workers: usize, total: usize) -> (Vec<f64>, f64) {
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(total));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let cp = cp.clone();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let t = Instant::now();
                let created = cp.create_execution("bench", "", "go").await;
                let id = created.metadata.expect("metadata").id;
                let done = cp.wait_terminal(&id, Duration::from_secs(30)).await;
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

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[idx.min(values.len() - 1)]
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
