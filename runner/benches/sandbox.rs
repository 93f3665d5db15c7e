//! Per-command cost of confinement: `true` and `ls` through `run_command`, confined with every
//! layer this machine grants vs `STIGMER_SANDBOX=off`, in one run (interleaved, so that machine
//! noise hits both alike). Prints a table BENCHMARKS.md takes as is.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use runner::sandbox::confine::{SandboxMode, SandboxSettings};
use runner::sandbox::{CommandRequest, Confinement, Network, Sandbox, SandboxRoot};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 300;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn sandbox(dir: &Path, mode: SandboxMode) -> (Sandbox, String) {
    let mut root = SandboxRoot::new(dir).expect("root");
    let settings = SandboxSettings {
        mode,
        ..SandboxSettings::default()
    };
    let helper = Path::new(env!("CARGO_BIN_EXE_runner"));
    let probe = root.probe_dir().expect("probe");
    let confinement = Confinement::detect(&settings, helper, &probe)
        .await
        .expect("detect");
    let layers = confinement
        .status()
        .enforced
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("+");
    root.set_confinement(confinement);
    (root.open("bench").expect("open"), layers)
}

async fn once(sandbox: &Sandbox, command: &str) -> Duration {
    let env = BTreeMap::new();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let out = sandbox
        .run_command(CommandRequest {
            command,
            timeout: Duration::from_secs(30),
            env: &env,
            cancel: &cancel,
            output_limit: 32 * 1024,
            network: Network::None,
        })
        .await
        .expect("command");
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    started.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (confined, layers) = sandbox(&dir.path().join("confined"), SandboxMode::Auto).await;
    let (off, _) = sandbox(&dir.path().join("off"), SandboxMode::Off).await;
    println!(
        "## Confinement overhead per command ({RUNS} runs each, interleaved; layers: {layers})"
    );
    println!();
    println!("| command | off p50 | off p99 | confined p50 | confined p99 | overhead p50 |");
    println!("|---|---|---|---|---|---|");
    for command in ["true", "ls"] {
        // Warm the page cache and the helper binary.
        for _ in 0..10 {
            once(&confined, command).await;
            once(&off, command).await;
        }
        let (mut a, mut b) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
        for _ in 0..RUNS {
            a.push(once(&off, command).await.as_secs_f64() * 1e3);
            b.push(once(&confined, command).await.as_secs_f64() * 1e3);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (a50, a99, b50, b99) = (
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&b, 0.5),
            percentile(&b, 0.99),
        );
        println!(
            "| `{command}` | {a50:.2} ms | {a99:.2} ms | {b50:.2} ms | {b99:.2} ms | {:.2} ms |",
            b50 - a50
        );
    }
}
