//! Per-command cost of confinement: `true` and `ls` through `run_command`, confined with every
//! layer this machine grants, the same without the cgroup layer, and `STIGMER_SANDBOX=off`, in
//! one run (interleaved, so that machine noise hits all alike). Prints a table BENCHMARKS.md
//! takes as is.

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

async fn sandbox(dir: &Path, mode: SandboxMode, cgroup: bool) -> (Sandbox, String) {
    let mut root = SandboxRoot::new(dir).expect("root");
    let settings = SandboxSettings {
        mode,
        cgroup_parent: (!cgroup).then_some(None),
        ..SandboxSettings::default()
    };
    // As the runner picks it: `runner-sandbox` beside the runner binary.
    let helper = runner::sandbox::confine::helper_binary(Path::new(env!("CARGO_BIN_EXE_runner")));
    let probe = root.probe_dir().expect("probe");
    let confinement = Confinement::detect(&settings, &helper, &probe)
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
    let (off, _) = sandbox(&dir.path().join("off"), SandboxMode::Off, false).await;
    let (all, all_layers) = sandbox(&dir.path().join("all"), SandboxMode::Auto, true).await;
    let (no_cgroup, layers) = sandbox(&dir.path().join("nocg"), SandboxMode::Auto, false).await;
    let variants = [
        ("off", &off),
        (all_layers.as_str(), &all),
        (layers.as_str(), &no_cgroup),
    ];
    println!("## Confinement overhead per command ({RUNS} runs each, interleaved)");
    println!();
    println!("| command | sandbox | p50 | p99 | overhead p50 vs off |");
    println!("|---|---|---|---|---|");
    for command in ["true", "ls"] {
        // Warm the page cache and the helper binary.
        for _ in 0..10 {
            for (_, sandbox) in &variants {
                once(sandbox, command).await;
            }
        }
        let mut samples = vec![Vec::with_capacity(RUNS); variants.len()];
        for _ in 0..RUNS {
            for (i, (_, sandbox)) in variants.iter().enumerate() {
                samples[i].push(once(sandbox, command).await.as_secs_f64() * 1e3);
            }
        }
        for s in &mut samples {
            s.sort_by(f64::total_cmp);
        }
        let off50 = percentile(&samples[0], 0.5);
        for ((name, _), s) in variants.iter().zip(&samples) {
            let (p50, p99) = (percentile(s, 0.5), percentile(s, 0.99));
            println!(
                "| `{command}` | {name} | {p50:.2} ms | {p99:.2} ms | {:.2} ms |",
                p50 - off50
            );
        }
    }
}
