//! The reconcile loop: wires validate → dereference → build → apply → status, and the
//! watches that trigger it.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::backoff::ErrorBackoff;
use crate::build::{self, MANAGED_BY, names, selector_string};
use crate::caches::Caches;
use crate::config::{FIELD_MANAGER, OperatorConfig};
use crate::crd::{AgentRunner, AgentRunnerStatus, GROUP, VERSION};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::secrets;
use crate::status::{self, Blocked, BlockedReason, Observed};
use crate::validate::{self, Invalid};

/// Controller name in events.
pub const CONTROLLER_NAME: &str = "agentrunner-operator";

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Publishes events on AgentRunners.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Current time; replaceable so that tests get stable condition timestamps.
    pub clock: fn() -> Timestamp,
    /// Retry delays of the AgentRunners whose last reconcile failed.
    pub backoff: ErrorBackoff<ObjectRef<AgentRunner>>,
    /// Watch caches of Secrets and owned objects, set by [`run`] for its lifetime (a
    /// re-elected leader gets fresh ones); `None` reads them with GET and LIST.
    caches: RwLock<Option<Caches>>,
}

impl Context {
    /// A context reporting events as `identity` (the pod name, when known).
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
        identity: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: identity,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            clock: now_seconds,
            backoff: ErrorBackoff::default(),
            caches: RwLock::new(None),
        }
    }

    /// Read Secrets and owned objects from `caches` instead of the API (or, with `None`,
    /// from the API again).
    pub fn set_caches(&self, caches: Option<Caches>) {
        if let Ok(mut slot) = self.caches.write() {
            *slot = caches;
        }
    }
}

/// The current time, whole seconds: the apiserver stores condition times with second
/// precision, and a finer local value would never compare equal to the stored one.
pub fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Reconcile one AgentRunner.
#[instrument(skip_all, fields(namespace = runner.namespace().unwrap_or_default(), name = runner.name_any()))]
pub async fn reconcile(runner: Arc<AgentRunner>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconcile_started();
    let result = reconcile_inner(&runner, &ctx).await;
    ctx.metrics.reconcile_finished(started.elapsed());
    if result.is_ok() {
        ctx.backoff.succeeded(&ObjectRef::from_obj(&*runner));
    }
    result
}

async fn reconcile_inner(runner: &AgentRunner, ctx: &Context) -> Result<Action, Error> {
    let v = match validate::validate(runner, &ctx.config) {
        Ok(v) => v,
        Err(Invalid::Metadata(field)) => return Err(Error::MissingMetadata(field)),
        Err(Invalid::Spec(invalid)) => {
            let blocked = Blocked {
                reason: BlockedReason::InvalidSpec,
                message: invalid.to_string(),
            };
            ctx.metrics.failure(blocked.reason.metric_label());
            return report_blocked(runner, ctx, blocked).await;
        }
    };
    let caches = ready_caches(ctx).await;
    let names = secrets::referenced_names(runner);
    let found = match caches {
        Some(ref c) => secrets::from_cache(&c.secrets, &v.namespace, &names),
        None => {
            let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &v.namespace);
            secrets::fetch(&secret_api, &v.namespace, &names).await?
        }
    };
    let digest = match secrets::resolve(runner, &found) {
        Ok(digest) => digest,
        Err(missing) => {
            let reason = missing
                .first()
                .map_or(BlockedReason::SecretNotFound, |m| m.reason());
            let message = missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            ctx.metrics.failure(reason.metric_label());
            return report_blocked(runner, ctx, Blocked { reason, message }).await;
        }
    };
    // Secret values are needed only for the digest; do not keep them through the apply.
    drop(found);
    let desired = build::build(&v, &digest);
    let deployment = match crate::apply::apply(&ctx.client, caches.as_ref(), &v, &desired).await {
        Ok(d) => d,
        Err(e) => {
            // Show the failure on the resource too, then let the error policy count and retry.
            let blocked = Blocked {
                reason: BlockedReason::ApplyFailed,
                message: e.to_string(),
            };
            if let Err(status_err) = report_blocked(runner, ctx, blocked).await {
                warn!(error = %status_err, "could not report the apply failure in status");
            }
            return Err(e);
        }
    };
    let selector = selector_string(&v.name);
    let observed = Observed {
        desired_replicas: v.replicas,
        deployment: Some(&deployment),
        blocked: None,
        selector: &selector,
    };
    let new_status = status::compute(runner, observed, (ctx.clock)());
    write_status(runner, ctx, &new_status).await?;
    Ok(Action::requeue(ctx.config.resync))
}

/// The watch caches, once they hold their first full LIST; `None` without caches or when
/// the controller is stopping (then the API is asked directly).
async fn ready_caches(ctx: &Context) -> Option<Caches> {
    let caches = ctx.caches.read().ok()?.clone()?;
    caches.wait_until_ready().await.then_some(caches)
}

/// Report a problem the user must fix without touching the owned objects, so the runners
/// that already work keep working: Degraded status, a Warning event when the problem is
/// new, and a periodic retry (the Secret watch retries sooner when the Secret appears).
async fn report_blocked(
    runner: &AgentRunner,
    ctx: &Context,
    blocked: Blocked,
) -> Result<Action, Error> {
    let namespace = runner
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = runner.name_any();
    warn!(reason = blocked.reason.as_str(), message = %blocked.message, "AgentRunner is blocked");
    let deployment = match ready_caches(ctx).await {
        Some(c) => c
            .deployments
            .get(&ObjectRef::new(&names::base(&name)).within(&namespace))
            .map(|d| (*d).clone()),
        None => {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            deployments
                .get_opt(&names::base(&name))
                .await
                .map_err(|source| Error::ReadDeployment {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source: Box::new(source),
                })?
        }
    };
    let selector = selector_string(&name);
    let desired_replicas = if runner.spec.suspend {
        0
    } else {
        runner.spec.replicas
    };
    let observed = Observed {
        desired_replicas,
        deployment: deployment.as_ref(),
        blocked: Some(&blocked),
        selector: &selector,
    };
    let new_status = status::compute(runner, observed, (ctx.clock)());
    if status::needs_write(runner.status.as_ref(), &new_status) {
        publish_warning(runner, ctx, &blocked).await;
    }
    write_status(runner, ctx, &new_status).await?;
    Ok(Action::requeue(ctx.config.resync))
}

async fn publish_warning(runner: &AgentRunner, ctx: &Context, blocked: &Blocked) {
    let event = Event {
        type_: EventType::Warning,
        reason: blocked.reason.as_str().into(),
        note: Some(truncate(&blocked.message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event is a courtesy: failing to publish it must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &runner.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Server-side apply of the status subresource, skipped when nothing changed.
async fn write_status(
    runner: &AgentRunner,
    ctx: &Context,
    new_status: &AgentRunnerStatus,
) -> Result<(), Error> {
    if !status::needs_write(runner.status.as_ref(), new_status) {
        return Ok(());
    }
    let namespace = runner
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = runner.name_any();
    let api: Api<AgentRunner> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AgentRunner",
        "status": new_status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        namespace,
        name,
        source: Box::new(source),
    })?;
    Ok(())
}

/// Log, count and retry a failed reconcile, after a delay that doubles with each consecutive
/// failure of this AgentRunner (see [`crate::backoff`]); a successful reconcile resets it.
pub fn error_policy(runner: Arc<AgentRunner>, error: &Error, ctx: Arc<Context>) -> Action {
    let retry_in = ctx.backoff.failed(ObjectRef::from_obj(&*runner));
    warn!(
        namespace = runner.namespace().unwrap_or_default(),
        name = runner.name_any(),
        error = %error,
        kind = error.metric_label(),
        retry_in_secs = retry_in.as_secs_f64(),
        "reconcile failed"
    );
    ctx.metrics.failure(error.metric_label());
    Action::requeue(retry_in)
}

/// AgentRunners in `namespace` that read the Secret `name`.
pub fn runners_referencing<'a>(
    runners: impl IntoIterator<Item = &'a AgentRunner>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<AgentRunner>> {
    runners
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.references_secret(name))
        .map(ObjectRef::from_obj)
        .collect()
}

/// Watch AgentRunners, their owned objects and every Secret, and reconcile until
/// `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ctx_for_caches = ctx.clone();
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    // Helm release and token Secrets are never runner credentials and are the bulk of
    // Secret traffic in many clusters.
    let secrets = watcher::Config::default()
        .fields("type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token");
    // Every watch feeds a store the reconcile reads (see `Caches`), instead of the
    // metadata-only watches of `Controller::owns`: reading them saves a GET per Secret,
    // a LIST per orphan kind and every unchanged apply.
    let (deployments, deployment_events) = reflected(api::<Deployment>(&client, ns), &owned);
    let (config_maps, config_map_events) = reflected(api::<ConfigMap>(&client, ns), &owned);
    let (services, service_events) = reflected(api::<Service>(&client, ns), &owned);
    let (service_accounts, service_account_events) =
        reflected(api::<ServiceAccount>(&client, ns), &owned);
    let (pod_disruption_budgets, pdb_events) =
        reflected(api::<PodDisruptionBudget>(&client, ns), &owned);
    let (workspace_claims, claim_events) =
        reflected(api::<PersistentVolumeClaim>(&client, ns), &owned);
    let (secret_store, secret_events) = reflected(api::<Secret>(&client, ns), &secrets);
    ctx.set_caches(Some(Caches {
        secrets: secret_store,
        deployments,
        config_maps,
        services,
        service_accounts,
        pod_disruption_budgets,
        workspace_claims,
    }));
    let (store, writer) = reflector::store();
    // Only spec changes (generation) of an AgentRunner trigger it: its own status writes
    // and status-only edits would otherwise each cause another full reconcile. Deletion
    // needs no reconcile (owner references garbage-collect the objects), and label or
    // annotation edits of the AgentRunner do not change what the operator builds.
    let runners = spec_changes(
        watcher(
            api::<AgentRunner>(&client, ns),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects(),
    );
    let controller = Controller::for_stream(runners, store);
    let store = controller.store();
    info!(
        namespace = ns.unwrap_or("<all>"),
        "starting AgentRunner controller"
    );
    controller
        .owns_stream(deployment_events)
        .owns_stream(config_map_events)
        .owns_stream(service_events)
        .owns_stream(service_account_events)
        .owns_stream(pdb_events)
        .owns_stream(claim_events)
        .watches_stream(secret_events, move |secret: Secret| {
            let (Some(sns), Some(sname)) = (
                secret.metadata.namespace.as_deref(),
                secret.metadata.name.as_deref(),
            ) else {
                return Vec::new();
            };
            let state = store.state();
            runners_referencing(state.iter().map(|r| &**r), sns, sname)
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile attempt ended with an error"),
            }
        })
        .await;
    ctx_for_caches.set_caches(None);
    info!("AgentRunner controller stopped");
}

/// The AgentRunners of `applied` whose generation changed (or that are new): the triggers
/// of a reconcile.
fn spec_changes(
    applied: impl futures_util::Stream<Item = Result<AgentRunner, watcher::Error>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<AgentRunner, watcher::Error>> + Send + 'static {
    applied.predicate_filter(predicates::generation, PredicateConfig::default())
}

/// A watch of `api` that fills a store; the stream yields every touched object (so a
/// deletion triggers the owner too).
fn reflected<K>(
    api: Api<K>,
    config: &watcher::Config,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, config.clone())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (reader, events)
}

/// Fail fast with a clear message when the CRD is missing or unreadable.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), String> {
    let api: Api<AgentRunner> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Err(
            "the AgentRunner CRD (agentrunners.agentic.stigmer.ai) is not installed; install it with \
             `operator crd | kubectl apply --server-side -f -` or `kubectl apply --server-side -f crds/`"
                .to_owned(),
        ),
        Err(e) => Err(format!("cannot list AgentRunners (is the CRD installed and the operator allowed to list it?): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentRunnerSpec, LlmSpec, SecretKeyRef};

    #[test]
    fn secret_changes_map_to_referencing_runners_in_the_namespace() {
        let mk = |name: &str, ns: &str, secret: Option<&str>| {
            let mut ar = AgentRunner::new(
                name,
                AgentRunnerSpec {
                    llm: secret.map(|s| LlmSpec {
                        api_key_secret_ref: Some(SecretKeyRef {
                            name: s.into(),
                            key: "k".into(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            ar.metadata.namespace = Some(ns.into());
            ar
        };
        let runners = [
            mk("a", "ns1", Some("llm")),
            mk("b", "ns2", Some("llm")),
            mk("c", "ns1", None),
        ];
        let refs = runners_referencing(runners.iter(), "ns1", "llm");
        assert_eq!(refs, vec![ObjectRef::<AgentRunner>::new("a").within("ns1")]);
        assert!(runners_referencing(runners.iter(), "ns1", "other").is_empty());
    }

    #[tokio::test]
    async fn only_spec_changes_trigger_a_reconcile() {
        let version = |uid: &str, generation: i64, ready: i32| {
            let mut ar = AgentRunner::new("a", AgentRunnerSpec::default());
            ar.metadata.namespace = Some("ns".into());
            ar.metadata.uid = Some(uid.into());
            ar.metadata.generation = Some(generation);
            ar.status = Some(AgentRunnerStatus {
                ready_replicas: ready,
                ..Default::default()
            });
            Ok(ar)
        };
        let events = futures_util::stream::iter([
            version("u1", 1, 0),
            // The operator's own status write, then the pods getting ready: status only.
            version("u1", 1, 1),
            version("u1", 1, 2),
            // A spec edit.
            version("u1", 2, 2),
            // Deleted and created again under the same name: a new object.
            version("u2", 1, 0),
        ]);
        let passed: Vec<(String, i64)> = spec_changes(events)
            .map(|r| {
                let ar = r.expect("no watch error");
                (
                    ar.uid().unwrap_or_default(),
                    ar.metadata.generation.unwrap_or(0),
                )
            })
            .collect()
            .await;
        assert_eq!(
            passed,
            [("u1".into(), 1), ("u1".into(), 2), ("u2".into(), 1)]
        );
    }

    #[test]
    fn reasons_become_metric_labels() {
        assert_eq!(
            BlockedReason::SecretKeyNotFound.metric_label(),
            "secret_key_not_found"
        );
        assert_eq!(BlockedReason::InvalidSpec.metric_label(), "invalid_spec");
    }

    #[test]
    fn long_notes_are_cut_on_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
