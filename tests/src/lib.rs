//! Cluster end-to-end harness for the AgentRunner operator.
//!
//! The tests run against whatever cluster a kubeconfig names and are skipped (with a message
//! saying how to run them) otherwise:
//!
//! | variable | meaning |
//! |---|---|
//! | `E2E_KUBECONFIG` | kubeconfig of the cluster; nothing runs without it (or `E2E_CURRENT_CONTEXT=1`) |
//! | `E2E_CURRENT_CONTEXT=1` | use the default kubeconfig's current context instead |
//! | `E2E_OPERATOR` | `in-process` (default): each test runs the operator in the test process, watching its namespace only, impersonating a ServiceAccount bound to a Role built from `operator::rbac::RULES`; `installed`: an operator already runs in the cluster (`helm install`) |
//! | `E2E_OPERATOR_NAMESPACE`, `E2E_OPERATOR_DEPLOYMENT` | where the installed operator runs (for the restart test) |
//! | `E2E_WORKLOAD=1` | also run the workload group (needs nodes and the runner image) |
//! | `E2E_RUNNER_IMAGE` | runner image (`repo:tag`) the AgentRunners use |
//! | `E2E_KUBECTL` | kubectl binary for `exec` (default `kubectl`) |
//! | `E2E_PYTHON_IMAGE` | image of the scripted LLM server and the Daytona stand-in (default `python:3.12-alpine`) |
//! | `E2E_REDIS_IMAGE` | image of the cloud test's Redis (default `redis:7-alpine`) |
//! | `E2E_KEEP_NAMESPACES=1` | keep the test namespaces, for debugging |
//!
//! Every test gets its own namespace (labelled for the `restricted` Pod Security Standard), and
//! deletes it at the end, failed or not. Every wait is a watch on a condition with a timeout.

pub mod cloud_stack;
pub mod owned;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Config, Resource};
use operator::AgentRunner;
use operator::config::OperatorConfig;
use operator::controller::{self, Context};
use operator::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Field manager of everything the tests apply.
pub const MANAGER: &str = "agentrunner-e2e";
/// Name of the ServiceAccount the in-process operator impersonates.
pub const OPERATOR_SA: &str = "agentrunner-operator";
/// Default wait for API-level conditions.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wait for pods (image pulls, probes).
pub const POD_TIMEOUT: Duration = Duration::from_secs(240);

/// Why an e2e step failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// An API call failed.
    #[error("API call failed while {doing}: {source}")]
    Kube {
        /// What the test was doing.
        doing: String,
        /// The client error.
        source: kube::Error,
    },
    /// A condition did not hold within its timeout.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The cluster answered, but not as expected.
    #[error("{0}")]
    Check(String),
    /// Configuration or local I/O.
    #[error("{0}")]
    Setup(String),
}

/// Result of an e2e step.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;

/// Adds what the test was doing to a client error.
pub trait Doing<T> {
    /// Wraps the error with `doing`.
    fn doing(self, doing: impl Into<String>) -> Result<T>;
}

impl<T> Doing<T> for std::result::Result<T, kube::Error> {
    fn doing(self, doing: impl Into<String>) -> Result<T> {
        self.map_err(|source| E2eError::Kube {
            doing: doing.into(),
            source,
        })
    }
}

/// Fails with `message` unless `ok`.
pub fn ensure(ok: bool, message: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::Check(message.into()))
    }
}

/// Who reconciles the tests' AgentRunners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorMode {
    /// A controller in the test process per test namespace.
    InProcess,
    /// The operator installed in the cluster.
    Installed {
        /// Its namespace.
        namespace: String,
        /// Its Deployment.
        deployment: String,
    },
}

/// The cluster and the suite's settings.
#[derive(Clone)]
pub struct Cluster {
    /// Client with the kubeconfig's credentials.
    pub client: Client,
    /// The client's configuration (the in-process operator impersonates from it).
    pub config: Config,
    /// Kubeconfig file, for `kubectl exec`; `None` for the default one.
    pub kubeconfig: Option<PathBuf>,
    /// Who reconciles.
    pub operator: OperatorMode,
    /// Whether the workload group runs.
    pub workload: bool,
    /// Runner image (`repository`, `tag`), if set.
    pub runner_image: Option<(String, String)>,
}

/// Prints why a test is skipped, straight to stderr: libtest captures `eprintln!` of passing
/// tests, and a skip must be visible.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED e2e test `{test}`: {why}");
}

/// The cluster, or `None` (after printing why the test is skipped) when no cluster is named.
pub async fn cluster(test: &str) -> Option<Cluster> {
    let kubeconfig = std::env::var_os("E2E_KUBECONFIG").map(PathBuf::from);
    let current = std::env::var("E2E_CURRENT_CONTEXT").is_ok_and(|v| v == "1");
    if kubeconfig.is_none() && !current {
        skip(
            test,
            "no cluster named; set E2E_KUBECONFIG=<kubeconfig> (or E2E_CURRENT_CONTEXT=1), \
             or run scripts/e2e-kind",
        );
        return None;
    }
    // Pin ring as the TLS provider, as the operator's main does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match &kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .unwrap_or_else(|e| panic!("cannot read E2E_KUBECONFIG {}: {e}", path.display()));
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("unusable kubeconfig {}: {e}", path.display()))
        }
        None => Config::infer()
            .await
            .unwrap_or_else(|e| panic!("no usable default kubeconfig: {e}")),
    };
    let client =
        Client::try_from(config.clone()).unwrap_or_else(|e| panic!("cannot build a client: {e}"));
    let operator = match std::env::var("E2E_OPERATOR").as_deref() {
        Ok("installed") => OperatorMode::Installed {
            namespace: std::env::var("E2E_OPERATOR_NAMESPACE")
                .unwrap_or_else(|_| "stigmer-system".into()),
            deployment: std::env::var("E2E_OPERATOR_DEPLOYMENT")
                .unwrap_or_else(|_| "agentrunner-operator".into()),
        },
        Ok("in-process") | Err(_) => OperatorMode::InProcess,
        Ok(other) => panic!("E2E_OPERATOR must be in-process or installed, not {other:?}"),
    };
    let runner_image = std::env::var("E2E_RUNNER_IMAGE").ok().map(|image| {
        match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
            Some((repo, tag)) => (repo.to_owned(), tag.to_owned()),
            None => (image, "latest".to_owned()),
        }
    });
    Some(Cluster {
        client,
        config,
        kubeconfig,
        operator,
        workload: std::env::var("E2E_WORKLOAD").is_ok_and(|v| v == "1"),
        runner_image,
    })
}

/// The cluster, only when the workload group is enabled too.
pub async fn workload_cluster(test: &str) -> Option<Cluster> {
    let cluster = cluster(test).await?;
    if !cluster.workload {
        skip(
            test,
            "workload tests need nodes and the runner image loaded; set E2E_WORKLOAD=1 \
             and E2E_RUNNER_IMAGE (scripts/e2e-kind does both)",
        );
        return None;
    }
    Some(cluster)
}

/// Installs (or upgrades) the CRD with server-side apply, as the README says (it is too large
/// for client-side apply), and waits until it is Established.
pub async fn install_crd(client: &Client) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/agentrunner.yaml");
    let yaml = std::fs::read_to_string(&path)
        .map_err(|e| E2eError::Setup(format!("cannot read {}: {e}", path.display())))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", path.display())))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .doing("applying the CRD")?;
    wait_for(&api, &name, "the CRD to be Established", API_TIMEOUT, |c| {
        conditions_of_crd(c)
            .iter()
            .any(|(t, s)| t == "Established" && s == "True")
    })
    .await?;
    Ok(())
}

fn conditions_of_crd(crd: &CustomResourceDefinition) -> Vec<(String, String)> {
    crd.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect()
}

/// Waits (watching, with a timeout) until the object exists and `ok` holds; returns it.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&K) -> bool + Send + 'static,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cond = move |o: Option<&K>| o.is_some_and(&ok);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => Err(E2eError::Check(format!("{what}: {name} is gone"))),
        Ok(Err(e)) => Err(E2eError::Check(format!("watching for {what}: {e}"))),
        Err(_) => Err(E2eError::Timeout(timeout, format!("{what} ({name})"))),
    }
}

/// Waits until the named object no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cond = |o: Option<&K>| o.is_none();
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(E2eError::Check(format!("watching for {what}: {e}"))),
        Err(_) => Err(E2eError::Timeout(timeout, format!("{what} ({name})"))),
    }
}

/// Condition: the AgentRunner has condition `type_` with `status`.
pub fn has_condition(type_: &'static str, status: &'static str) -> impl Fn(&AgentRunner) -> bool {
    move |ar| condition(ar, type_).is_some_and(|(s, _, _)| s == status)
}

/// The AgentRunner's condition `type_` as (status, reason, message).
pub fn condition(ar: &AgentRunner, type_: &str) -> Option<(String, String, String)> {
    ar.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A controller running in the test process.
struct InProcess {
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

/// One test's namespace, and the operator serving it in in-process mode.
pub struct TestNs {
    /// The cluster.
    pub cluster: Cluster,
    /// Namespace name.
    pub ns: String,
    operator: tokio::sync::Mutex<Option<InProcess>>,
}

impl TestNs {
    /// Client with the test's own (admin) credentials.
    pub fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    /// Namespaced API of `K`.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client(), &self.ns)
    }

    /// AgentRunners as raw objects: for manifests the typed struct would not accept.
    pub fn raw_agentrunners(&self) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<AgentRunner>(&());
        Api::namespaced_with(self.client(), &self.ns, &ar)
    }

    /// Server-side applies a manifest (one object, JSON) in the namespace.
    pub async fn apply(&self, manifest: Value) -> Result<DynamicObject> {
        let obj: DynamicObject = serde_json::from_value(manifest)
            .map_err(|e| E2eError::Setup(format!("bad manifest: {e}")))?;
        let types = obj
            .types
            .clone()
            .ok_or_else(|| E2eError::Setup("manifest without apiVersion/kind".into()))?;
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), types.api_version.clone()),
        };
        let gvk = kube::core::GroupVersionKind::gvk(&group, &version, &types.kind);
        // Plural by the English rule the built-in kinds follow (no discovery round trip).
        let lower = types.kind.to_lowercase();
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client(), &self.ns, &ar);
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .doing(format!("applying {} {name}", types.kind))
    }

    /// Applies an opaque Secret with string data.
    pub async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Result<()> {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        self.apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "type": "Opaque", "stringData": data,
        }))
        .await
        .map(|_| ())
    }

    /// Applies an AgentRunner from its spec; the runner image is the suite's when set.
    pub async fn agentrunner(&self, name: &str, mut spec: Value) -> Result<()> {
        if let (Some((repo, tag)), Some(obj)) = (&self.cluster.runner_image, spec.as_object_mut()) {
            obj.entry("image").or_insert_with(
                || serde_json::json!({"repository": repo, "tag": tag, "pullPolicy": "IfNotPresent"}),
            );
        }
        self.apply(serde_json::json!({
            "apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
            "metadata": {"name": name}, "spec": spec,
        }))
        .await
        .map(|_| ())
    }

    /// Starts the in-process operator (no-op with an installed operator).
    pub async fn start_operator(&self) -> Result<()> {
        if self.cluster.operator != OperatorMode::InProcess {
            return Ok(());
        }
        let mut slot = self.operator.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        // The operator acts as its ServiceAccount, so the Role built from the RBAC table is
        // what the real API server authorises: a missing rule fails the test.
        let mut config = self.cluster.config.clone();
        config.auth_info.impersonate =
            Some(format!("system:serviceaccount:{}:{OPERATOR_SA}", self.ns));
        config.auth_info.impersonate_groups = None;
        // Counted like the installed operator's client, so tests can read what it sent.
        let metrics = Arc::new(Metrics::new());
        let client = operator::api_requests::counted_client(config, metrics.api_requests())
            .map_err(|e| E2eError::Setup(format!("impersonating client: {e}")))?;
        let mut cfg = OperatorConfig::default();
        if let Some((repo, tag)) = &self.cluster.runner_image {
            cfg.default_image_repository = repo.clone();
            cfg.default_image_tag = tag.clone();
        }
        let ctx = Arc::new(Context::new(
            client,
            cfg,
            metrics.clone(),
            Some(format!("e2e-{}", self.ns)),
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(controller::run(
            ctx,
            Some(self.ns.clone()),
            operator::config::DEFAULT_CONCURRENCY,
            stop.clone().cancelled_owned(),
        ));
        *slot = Some(InProcess {
            stop,
            task,
            metrics,
        });
        Ok(())
    }

    /// The operator's `/metrics` text: the in-process operator's, or the installed one's
    /// through the API server's proxy to its metrics Service (`<deployment>-metrics`, as the
    /// chart names it); `None` (with the reason on stderr) when it cannot be read.
    pub async fn operator_metrics(&self) -> Option<String> {
        let (namespace, deployment) = match &self.cluster.operator {
            OperatorMode::InProcess => {
                return self
                    .operator
                    .lock()
                    .await
                    .as_ref()
                    .map(|op| op.metrics.encode());
            }
            OperatorMode::Installed {
                namespace,
                deployment,
            } => (namespace, deployment),
        };
        let path = format!(
            "/api/v1/namespaces/{namespace}/services/{deployment}-metrics:metrics/proxy/metrics"
        );
        let request = http::Request::get(&path).body(Vec::new()).ok()?;
        match self.client().request_text(request).await {
            Ok(text) => Some(text),
            Err(e) => {
                skip(
                    "operator metrics",
                    &format!("cannot read the installed operator's metrics at {path}: {e}"),
                );
                None
            }
        }
    }

    /// Stops the in-process operator and waits until it has finished.
    pub async fn stop_operator(&self) {
        if let Some(op) = self.operator.lock().await.take() {
            op.stop.cancel();
            let _ = op.task.await;
        }
    }

    /// Restarts whichever operator serves this namespace: the in-process one, or the
    /// installed Deployment's pods (deleted, then waited for until available again).
    pub async fn restart_operator(&self) -> Result<()> {
        match &self.cluster.operator {
            OperatorMode::InProcess => {
                self.stop_operator().await;
                self.start_operator().await
            }
            OperatorMode::Installed {
                namespace,
                deployment,
            } => restart_installed(&self.client(), namespace, deployment).await,
        }
    }
}

async fn restart_installed(client: &Client, ns: &str, name: &str) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    // What `kubectl rollout restart` does: a new template annotation rolls the pods.
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": stamp.to_string()}}}}});
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .doing("restarting the installed operator")?;
    let generation = patched.metadata.generation.unwrap_or_default();
    wait_for(&api, name, "the operator rollout", POD_TIMEOUT, move |d| {
        let Some(s) = &d.status else { return false };
        let want = d.spec.replicas.unwrap_or(1);
        s.observed_generation.unwrap_or_default() >= generation
            && s.updated_replicas.unwrap_or_default() == want
            && s.available_replicas.unwrap_or_default() == want
            && s.replicas.unwrap_or_default() == want
    })
    .await
    .map(|_| ())
}

/// The Role of the in-process operator: `operator::rbac::RULES` without leader election
/// (the in-process operator runs without it), the same table the Helm chart is tested against.
pub fn operator_role() -> Vec<PolicyRule> {
    operator::rbac::RULES
        .iter()
        .filter(|r| r.group != "coordination.k8s.io")
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_owned()]),
            resources: Some(vec![r.resource.to_owned()]),
            verbs: r.verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..Default::default()
        })
        .collect()
}

fn unique_ns(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let base: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "e2e-{}-{:x}{:x}",
        base.trim_matches('-'),
        std::process::id() & 0xfff,
        nanos
    )
}

async fn setup(cluster: &Cluster, test: &str) -> Result<TestNs> {
    let client = cluster.client.clone();
    match cluster.operator {
        OperatorMode::InProcess => install_crd(&client).await?,
        // The chart owns the CRD: taking its fields over with another field manager would
        // make the next `helm upgrade` fight the tests.
        OperatorMode::Installed { .. } => {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            wait_for(
                &api,
                "agentrunners.agentic.stigmer.ai",
                "the chart's CRD to be Established",
                API_TIMEOUT,
                |c| {
                    conditions_of_crd(c)
                        .iter()
                        .any(|(t, s)| t == "Established" && s == "True")
                },
            )
            .await?;
        }
    }
    let ns = unique_ns(test);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            labels: Some(
                [
                    (
                        "e2e.agentic.stigmer.ai/test".to_owned(),
                        test.replace('_', "-"),
                    ),
                    // Runner pods must pass the restricted Pod Security Standard: the API
                    // server refuses them here otherwise.
                    (
                        "pod-security.kubernetes.io/enforce".to_owned(),
                        "restricted".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .doing("creating the test namespace")?;
    let t = TestNs {
        cluster: cluster.clone(),
        ns: ns.clone(),
        operator: tokio::sync::Mutex::new(None),
    };
    if cluster.operator == OperatorMode::InProcess {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(OPERATOR_SA.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        t.api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await
            .doing("creating the operator's ServiceAccount")?;
        let role = Role {
            metadata: ObjectMeta {
                name: Some(OPERATOR_SA.into()),
                ..Default::default()
            },
            rules: Some(operator_role()),
        };
        t.api::<Role>()
            .create(&PostParams::default(), &role)
            .await
            .doing("creating the operator's Role")?;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some(OPERATOR_SA.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: OPERATOR_SA.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: OPERATOR_SA.into(),
                namespace: Some(ns.clone()),
                ..Default::default()
            }]),
        };
        t.api::<RoleBinding>()
            .create(&PostParams::default(), &binding)
            .await
            .doing("binding the operator's Role")?;
        t.start_operator().await?;
    }
    Ok(t)
}

/// Runs one test in its own namespace with an operator serving it, then stops the operator
/// and deletes the namespace whatever happened; fails the test on an error or a panic.
pub async fn scenario<F, Fut>(cluster: Cluster, test: &str, body: F)
where
    F: FnOnce(Arc<TestNs>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let t = match setup(&cluster, test).await {
        Ok(t) => Arc::new(t),
        Err(e) => panic!("{test}: setup failed: {e}"),
    };
    eprintln!("e2e `{test}` runs in namespace {}", t.ns);
    // Spawned so that a panic in the body still reaches the cleanup below.
    let outcome = tokio::spawn(body(t.clone())).await;
    t.stop_operator().await;
    if std::env::var("E2E_KEEP_NAMESPACES").is_err() {
        let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
        if let Err(e) = namespaces.delete(&t.ns, &DeleteParams::background()).await {
            eprintln!("{test}: cannot delete namespace {}: {e}", t.ns);
        }
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{test} failed (namespace {}): {e}", t.ns),
        Err(join) => match join.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("{test}: task failed: {e}"),
        },
    }
}

/// Waits for `cond` on the named AgentRunner.
pub async fn wait_runner(
    t: &TestNs,
    name: &str,
    what: &str,
    cond: impl Fn(&AgentRunner) -> bool + Send + 'static,
) -> Result<AgentRunner> {
    wait_for(&t.api::<AgentRunner>(), name, what, API_TIMEOUT, cond).await
}

/// Runs `kubectl` with the suite's kubeconfig; returns stdout, or the failure with stderr.
pub async fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let bin = std::env::var("E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut cmd = tokio::process::Command::new(&bin);
    if let Some(k) = &cluster.kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| E2eError::Setup(format!("cannot run {bin}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| E2eError::Setup(format!("kubectl stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| E2eError::Setup(format!("kubectl: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(E2eError::Check(format!(
            "kubectl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        let ns = unique_ns("Deleting_a_busy_runner_pod_drains_it_and_some_more_words_here");
        assert!(ns.len() <= 63, "{ns}");
        assert!(
            ns.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{ns}"
        );
    }

    #[test]
    fn operator_role_is_the_rbac_table_without_leases() {
        let role = operator_role();
        assert_eq!(role.len(), operator::rbac::RULES.len() - 1);
        assert!(role.iter().all(|r| {
            r.api_groups
                .as_deref()
                .is_some_and(|g| g != ["coordination.k8s.io"])
        }));
    }
}
