//! Scale e2e test: `E2E_SCALE=N` AgentRunners applied at once in a fresh namespace, with a
//! nodeSelector no node matches (so no image is pulled and the pods stay Pending), must all
//! converge: their Deployment exists and their status has `observedGeneration`. Prints the
//! converge time, the API server's write floor measured in the same run (as many server-side
//! applies from as many clients), the operator's API requests per AgentRunner (from its
//! request counter) and the RSS of the in-process operator. Skipped unless `E2E_SCALE` is set
//! and a cluster is named (`E2E_KUBECONFIG`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{E2eError, OperatorMode, Result, TestNs, cluster, scenario, skip};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use operator::AgentRunner;
use serde_json::{Value, json};

const TEST: &str = "n_agentrunners_converge";
/// Clients applying AgentRunners at once, like `kubectl apply` of many files in parallel.
const WRITERS: usize = 8;

fn spec() -> Value {
    json!({
        "mode": "cloud",
        "replicas": 1,
        "llm": {"provider": "anthropic", "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
        "cloud": {
            "backend": {"endpoint": "https://backend.example.com:443"},
            "jwtSecretRef": {"name": "cloud", "key": "jwt"},
            "redis": {"host": "redis.example.com", "port": 6379,
                      "passwordSecretRef": {"name": "cloud", "key": "redis-password"}},
            "daytona": {"apiUrl": "https://daytona.example.com/api",
                        "apiKeySecretRef": {"name": "cloud", "key": "daytona"}},
        },
        "pod": {"nodeSelector": {"e2e.stigmer.ai/no-such-node": "true"}},
    })
}

/// Resident set size of this process in KiB (the in-process operator and the test).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What the watches have shown so far: the AgentRunners whose status has caught up with
/// their spec, and the Deployments that exist. Watches, not a LIST per poll: listing a
/// thousand AgentRunners four times a second would itself load the API server whose speed
/// the test measures.
#[derive(Default)]
struct Convergence {
    observed: BTreeSet<String>,
    deployments: BTreeSet<String>,
}

/// One object from either watch.
enum Seen {
    Runner(Box<AgentRunner>),
    Deployment(String),
}

impl Convergence {
    fn see(&mut self, seen: Seen) {
        match seen {
            Seen::Runner(r) => {
                let observed = r.status.as_ref().and_then(|s| s.observed_generation);
                let caught_up = observed.is_some() && observed == r.metadata.generation;
                if caught_up {
                    self.observed.insert(r.name_any());
                } else {
                    // A newer generation than the status shows: not converged (again).
                    self.observed.remove(&r.name_any());
                }
            }
            Seen::Deployment(name) => {
                self.deployments.insert(name);
            }
        }
    }

    /// (AgentRunners observed, AgentRunners with a Deployment) among `scale-0..n`.
    fn counts(&self, n: usize) -> (usize, usize) {
        let names = || (0..n).map(|i| format!("scale-{i}"));
        (
            names().filter(|name| self.observed.contains(name)).count(),
            names()
                .filter(|name| self.deployments.contains(name))
                .count(),
        )
    }
}

/// Every AgentRunner and Deployment of the namespace as it changes (Deployments as metadata
/// only), starting with what exists.
fn watch_convergence(t: &TestNs) -> BoxStream<'static, std::result::Result<Seen, watcher::Error>> {
    let runners = watcher(t.api::<AgentRunner>(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map_ok(|r| Seen::Runner(Box::new(r)));
    let deployment_meta: Api<PartialObjectMeta<Deployment>> = Api::namespaced(t.client(), &t.ns);
    let deployments = watcher(deployment_meta, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map_ok(|d| Seen::Deployment(d.name_any()));
    futures_util::stream::select(runners.boxed(), deployments.boxed()).boxed()
}

async fn run(t: Arc<TestNs>, n: usize) -> Result<()> {
    t.secret("llm", &[("api-key", "sk-e2e")]).await?;
    t.secret(
        "cloud",
        &[
            ("jwt", "e2e.jwt"),
            ("redis-password", "pw"),
            ("daytona", "dk"),
        ],
    )
    .await?;
    // The API server's own write floor in this run: as many server-side applies as the
    // operator needs (5 objects + 1 status per AgentRunner), from as many parallel clients.
    let floor = write_floor(&t, n * WRITES_PER_RUNNER).await?;
    let before = t.operator_metrics().await.map(|m| api_requests(&m));
    let rss_before = rss_kib();
    let started = Instant::now();
    from_writers(&t, n, |t, i| async move {
        t.agentrunner(&format!("scale-{i}"), spec()).await
    })
    .await?;
    let applied = started.elapsed();
    // Generous: the aim is seconds for a thousand, the timeout only ends a hung run.
    let timeout = Duration::from_secs(120) + Duration::from_millis(500) * n as u32;
    let mut peak_rss = rss_before.unwrap_or(0);
    let mut seen = watch_convergence(&t);
    let mut state = Convergence::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let (observed, with_deployment) = state.counts(n);
        if observed == n && with_deployment == n {
            break;
        }
        if started.elapsed() > timeout {
            return Err(E2eError::Timeout(
                timeout,
                format!(
                    "{n} AgentRunners to converge ({observed} observed, {with_deployment} Deployments)"
                ),
            ));
        }
        tokio::select! {
            next = seen.next() => match next {
                Some(Ok(object)) => state.see(object),
                // The watcher backs off and resumes by itself; a lasting failure ends in the
                // timeout above with the counts reached.
                Some(Err(e)) => eprintln!("watch error (retrying): {e}"),
                None => return Err(E2eError::Setup("the watches ended".into())),
            },
            _ = tick.tick() => peak_rss = peak_rss.max(rss_kib().unwrap_or(0)),
        }
    }
    let took = started.elapsed();
    eprintln!(
        "E2E_SCALE={n}: applied in {:.1} s, converged in {:.1} s ({:.1} AgentRunners/s)",
        applied.as_secs_f64(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    eprintln!(
        "API server write floor: {} applies from {WRITERS} clients in {:.1} s; converge/floor = {:.2}",
        n * WRITES_PER_RUNNER,
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64()
    );
    match (before, t.operator_metrics().await.map(|m| api_requests(&m))) {
        (Some(before), Some(after)) => {
            let mut by_verb: BTreeMap<String, f64> = BTreeMap::new();
            for (key, count) in &after {
                let delta = count - before.get(key).copied().unwrap_or(0.0);
                *by_verb.entry(key.0.clone()).or_default() += delta;
            }
            let total: f64 = by_verb.values().sum();
            let detail: Vec<String> = by_verb
                .iter()
                .filter(|(_, c)| **c > 0.0)
                .map(|(verb, c)| format!("{verb} {:.2}", c / n as f64))
                .collect();
            eprintln!(
                "API requests per AgentRunner (operator's agentrunner_operator_api_requests_total): \
                 {:.2} ({})",
                total / n as f64,
                detail.join(", ")
            );
        }
        _ => eprintln!(
            "API requests per AgentRunner: not measured (the operator's metrics could not be read)"
        ),
    }
    match t.cluster.operator {
        OperatorMode::InProcess => eprintln!(
            "RSS of the test process with the in-process operator: {} MiB before, {} MiB peak",
            rss_before.unwrap_or(0) / 1024,
            peak_rss / 1024
        ),
        OperatorMode::Installed { .. } => {
            eprintln!("operator RSS: not measured for an installed operator (read it from its pod)")
        }
    }
    Ok(())
}

/// Server-side applies per AgentRunner the operator cannot avoid: 5 owned objects + status.
const WRITES_PER_RUNNER: usize = 6;

/// Time for `objects` server-side applies of small ConfigMaps from [`WRITERS`] clients.
async fn write_floor(t: &Arc<TestNs>, objects: usize) -> Result<Duration> {
    let started = Instant::now();
    from_writers(t, objects, |t, i| async move {
        t.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("floor-{i}")},
            "data": {"MAX_CONCURRENCY": "4", "LOG_LEVEL": "info"},
        }))
        .await
        .map(|_| ())
    })
    .await?;
    Ok(started.elapsed())
}

/// Runs `write(t, i)` for every `i` below `count`, from [`WRITERS`] parallel clients, like
/// `kubectl apply` of many files at once.
async fn from_writers<F, Fut>(t: &Arc<TestNs>, count: usize, write: F) -> Result<()>
where
    F: Fn(Arc<TestNs>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (t, next, write) = (t.clone(), next.clone(), write.clone());
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), E2eError>(());
                }
                write(t.clone(), i).await?;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.map_err(|e| E2eError::Setup(format!("writer task: {e}")))??;
    }
    Ok(())
}

/// `agentrunner_operator_api_requests_total` by (verb, resource), from OpenMetrics text.
fn api_requests(metrics: &str) -> BTreeMap<(String, String), f64> {
    let label = |labels: &str, name: &str| {
        labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_default()
    };
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("agentrunner_operator_api_requests_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let value: f64 = value.trim().parse().ok()?;
            Some(((label(labels, "verb"), label(labels, "resource")), value))
        })
        .collect()
}

#[test]
fn request_counts_are_read_from_the_metrics_text() {
    let text = "# TYPE agentrunner_operator_api_requests counter\n\
        agentrunner_operator_api_requests_total{verb=\"apply\",resource=\"deployments\"} 12\n\
        agentrunner_operator_api_requests_total{verb=\"watch\",resource=\"secrets\"} 1\n\
        agentrunner_operator_reconciles_total 5\n";
    let counts = api_requests(text);
    assert_eq!(counts.len(), 2);
    assert_eq!(
        counts[&("apply".to_owned(), "deployments".to_owned())],
        12.0
    );
    assert_eq!(counts[&("watch".to_owned(), "secrets".to_owned())], 1.0);
}

#[test]
fn convergence_counts_runners_whose_status_caught_up_and_their_deployments() {
    let runner = |name: &str, generation: i64, observed: Option<i64>| {
        let mut r = AgentRunner::new(name, Default::default());
        r.metadata.generation = Some(generation);
        r.status = observed.map(|g| operator::crd::AgentRunnerStatus {
            observed_generation: Some(g),
            ..Default::default()
        });
        Seen::Runner(Box::new(r))
    };
    let mut state = Convergence::default();
    state.see(runner("scale-0", 1, None));
    state.see(runner("scale-1", 1, Some(1)));
    state.see(runner("other", 1, Some(1)));
    state.see(Seen::Deployment("scale-1".into()));
    assert_eq!(state.counts(2), (1, 1));
    // A spec edit the status has not caught up with yet: no longer converged.
    state.see(runner("scale-1", 2, Some(1)));
    state.see(runner("scale-0", 1, Some(1)));
    state.see(Seen::Deployment("scale-0".into()));
    assert_eq!(state.counts(2), (1, 2));
}

#[tokio::test]
async fn n_agentrunners_converge() {
    let Some(n) = std::env::var("E2E_SCALE").ok() else {
        skip(
            TEST,
            "set E2E_SCALE=<number of AgentRunners> to run the scale test",
        );
        return;
    };
    let n: usize = match n.parse() {
        Ok(n) if n > 0 => n,
        _ => panic!("E2E_SCALE must be a positive number of AgentRunners, got {n:?}"),
    };
    let Some(cluster) = cluster(TEST).await else {
        return;
    };
    // The namespace (and with it every AgentRunner and owned object) is deleted afterwards.
    scenario(cluster, TEST, move |t| run(t, n)).await;
}
