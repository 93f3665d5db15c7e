//! Throughput check, run on demand:
//! `cargo test -p stigmer-server --release --test throughput -- --ignored --nocapture`
//! (`THROUGHPUT_EXECUTIONS` sets the count). Pushes executions through create, claim, five
//! status updates and a terminal one with concurrent clients and runners, then prints the rate.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use stigmer_proto::ExecutionPhase;

const CREATORS: usize = 4;
const RUNNERS: usize = 4;
const SLOTS_PER_RUNNER: u32 = 32;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run on demand"]
async fn executions_per_second() {
    let total: usize = std::env::var("THROUGHPUT_EXECUTIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.lease_ttl = Duration::from_secs(30);
    let server = Arc::new(TestServer::start(config).await);
    apply_agent(&server, "bench").await;

    let completed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / CREATORS {
                create(&server, "bench", "").await;
            }
        }));
    }
    for runner in 0..RUNNERS {
        let server = Arc::clone(&server);
        let completed = Arc::clone(&completed);
        tasks.push(tokio::spawn(async move {
            let runner_id = format!("runner-{runner}");
            while completed.load(Ordering::Relaxed) < total {
                let claimed = claim(&server, &runner_id, SLOTS_PER_RUNNER, 200).await;
                let mut work = Vec::new();
                for execution in claimed {
                    let server = Arc::clone(&server);
                    let completed = Arc::clone(&completed);
                    work.push(tokio::spawn(async move {
                        let mut runners = server.runners();
                        for step in 1..=5 {
                            let update = phase_update(
                                &execution,
                                ExecutionPhase::ExecutionInProgress,
                                ai_messages(step, 200),
                            );
                            runners.update_status(update).await.unwrap();
                        }
                        report(&server, &execution, ExecutionPhase::ExecutionCompleted).await;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }));
                }
                for handle in work {
                    handle.await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("{total} executions in {elapsed:.2?}: {rate:.0} executions/s");
    assert_eq!(
        completed.load(Ordering::Relaxed),
        total / CREATORS * CREATORS
    );
}
