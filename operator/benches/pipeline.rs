//! Time of the pure pipeline steps (validate + resolve Secrets + build) per AgentRunner.
//!
//! `cargo bench -p operator --bench pipeline` prints the median, p90 and max per object for
//! the local and cloud fixtures. Each sample times a batch of objects so that the clock's
//! resolution does not dominate.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use operator::build;
use operator::config::OperatorConfig;
use operator::crd::AgentRunner;
use operator::{secrets, validate};

const SAMPLES: usize = 201;
const BATCH: usize = 200;

fn pipeline(
    runner: &AgentRunner,
    found: &BTreeMap<String, Secret>,
    cfg: &OperatorConfig,
) -> build::Desired {
    let v = validate::validate(runner, cfg).unwrap_or_else(|e| panic!("invalid fixture: {e:?}"));
    let digest =
        secrets::resolve(runner, found).unwrap_or_else(|m| panic!("missing secrets: {m:?}"));
    build::build(&v, &digest)
}

fn measure(name: &str, runner: &AgentRunner, found: &BTreeMap<String, Secret>) {
    let cfg = OperatorConfig::default();
    // Warm caches and the allocator.
    for _ in 0..BATCH {
        black_box(pipeline(black_box(runner), found, &cfg));
    }
    let mut per_object: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                black_box(pipeline(black_box(runner), found, &cfg));
            }
            start.elapsed().as_secs_f64() * 1e6 / BATCH as f64
        })
        .collect();
    per_object.sort_by(f64::total_cmp);
    let at = |q: f64| per_object[((per_object.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<6} validate+build per AgentRunner: median {:.1} µs, p90 {:.1} µs, max {:.1} µs ({} samples x {} objects)",
        at(0.5),
        at(0.9),
        at(1.0),
        SAMPLES,
        BATCH
    );
}

fn main() {
    measure("local", &common::runner("local.yaml"), &BTreeMap::new());
    measure(
        "cloud",
        &common::runner("cloud.yaml"),
        &common::secrets("cloud-secrets.yaml"),
    );
}
