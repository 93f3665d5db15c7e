//! The `AgentRunner` custom resource (`agentic.stigmer.ai/v1alpha1`).
//!
//! Doc comments on the spec types become the CRD's field descriptions, so they are written
//! for `kubectl explain` readers. Cross-field rules live here as CEL so that the apiserver
//! refuses a bad object at `kubectl apply` time; `validate` re-checks the same facts in Rust
//! because a cluster may run an older CRD than this operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "agentic.stigmer.ai";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Longest `metadata.name` accepted: derived object names append at most `-workspace`
/// (10 characters) and Service names must stay within 63.
pub const MAX_NAME_LEN: usize = 52;

/// Desired state of a pool of Stigmer agent runners.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentic.stigmer.ai",
    version = "v1alpha1",
    kind = "AgentRunner",
    namespaced,
    shortname = "ar",
    category = "stigmer",
    status = "AgentRunnerStatus",
    derive = "PartialEq",
    doc = "AgentRunner runs a pool of Stigmer agent runners in local mode (with an in-pod control plane) or cloud mode (against a remote backend, Redis and Daytona).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode", description = "local or cloud"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas", description = "Desired runner pods"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Ready runner pods"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Reason of the Ready condition"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters: the operator derives object names such as <name>-workspace from it"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a letter and contain only lowercase letters, digits and '-', because it names a Service"),
)]
#[x_kube(
    validation = Rule::new("self.mode != 'cloud' || (has(self.cloud) && has(self.cloud.backend))").message("cloud mode requires spec.cloud.backend.endpoint"),
    validation = Rule::new("self.mode != 'cloud' || (has(self.cloud) && has(self.cloud.jwtSecretRef))").message("cloud mode requires spec.cloud.jwtSecretRef, the Secret key holding the runner's JWT"),
    validation = Rule::new("self.mode != 'cloud' || (has(self.cloud) && has(self.cloud.redis))").message("cloud mode requires spec.cloud.redis"),
    validation = Rule::new("self.mode != 'cloud' || (has(self.cloud) && has(self.cloud.daytona))").message("cloud mode requires spec.cloud.daytona"),
    validation = Rule::new("self.mode == 'cloud' || !has(self.cloud)").message("spec.cloud is only allowed when spec.mode is cloud"),
    validation = Rule::new("self.mode == 'local' || !has(self.local)").message("spec.local is only allowed when spec.mode is local"),
    validation = Rule::new("!has(self.local) || !has(self.local.workspace) || !has(self.local.workspace.persistentVolumeClaim) || self.replicas <= 1").message("a local-mode AgentRunner with a persistentVolumeClaim workspace runs at most 1 replica: its SQLite store cannot be shared between pods"),
)]
#[serde(rename_all = "camelCase")]
pub struct AgentRunnerSpec {
    /// `local`: each pod runs stigmer-server as a native sidecar on localhost:50051 and the
    /// runner works in a filesystem sandbox. `cloud`: runners connect to a remote backend,
    /// take work from Redis and run sandboxes in Daytona.
    pub mode: Mode,

    /// Number of runner pods. Driven by `kubectl scale`, an HPA or KEDA through the scale
    /// subresource; the operator never writes it. Leave it out of applied manifests when an
    /// autoscaler owns it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Scale the runners to zero while keeping every other object and setting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Runner image. Unset parts default to the operator's configured repository and tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,

    /// Secrets used to pull the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Settings of the runner process itself.
    #[serde(default)]
    pub runner: RunnerSettings,

    /// Model the runners call. Unset fields keep the runner's own defaults for the mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSpec>,

    /// Cloud-mode connections: backend, credentials, Redis and Daytona. Required in cloud mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudSpec>,

    /// Local-mode workspace and control-plane sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSpec>,

    /// Scheduling, identity and extension knobs applied to the runner pods.
    #[serde(default)]
    pub pod: PodSettings,
}

fn default_replicas() -> i32 {
    1
}

/// How the runners reach their control plane and sandboxes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// stigmer-server runs in the same pod; filesystem sandboxes on the workspace volume.
    #[default]
    Local,
    /// Remote backend over TLS, Redis dispatch and Daytona sandboxes.
    Cloud,
}

impl Mode {
    /// The value of the runner's `MODE` variable.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Cloud => "cloud",
        }
    }
}

/// A container image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, e.g. `ghcr.io/stigmer/agent-runner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub repository: Option<String>,
    /// Image tag, or a digest such as `sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub tag: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`; Kubernetes' default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

/// Kubernetes image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A key of a Secret in the AgentRunner's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Settings of the runner process.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSettings {
    /// Executions one runner pod handles at once (`STIGMER_MAX_CONCURRENCY`).
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub max_concurrency: i32,
    /// Seconds a terminating runner lets in-flight executions finish before cancelling them
    /// (`STIGMER_DRAIN_TIMEOUT_SECS`). The pod's termination grace period is this plus a margin.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub drain_timeout_seconds: i64,
    /// Runner log level (`LOG_LEVEL`).
    #[serde(default)]
    pub log_level: LogLevel,
    /// Extra environment variables for the runner container. Variables the operator manages
    /// (MODE, STIGMER_*, REDIS_*, DAYTONA_*, ...) are refused; use the dedicated fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra_env: Vec<EnvVar>,
    /// Extra volume mounts for the runner container, usually of `pod.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub extra_volume_mounts: Vec<VolumeMount>,
    /// Runner container resources. Defaults: requests 250m CPU and 256Mi memory, limit 2Gi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            max_concurrency: default_max_concurrency(),
            drain_timeout_seconds: default_drain_timeout(),
            log_level: LogLevel::default(),
            extra_env: Vec::new(),
            extra_volume_mounts: Vec::new(),
            resources: None,
        }
    }
}

fn default_max_concurrency() -> i32 {
    10
}

fn default_drain_timeout() -> i64 {
    300
}

/// Log verbosity of the runner.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems only.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The value of `LOG_LEVEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Model settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.provider) || self.provider == 'ollama' || has(self.apiKeySecretRef)").message("llm.apiKeySecretRef is required for the anthropic and openai providers"),
)]
#[serde(rename_all = "camelCase")]
pub struct LlmSpec {
    /// `anthropic`, `openai` or `ollama` (`STIGMER_LLM_PROVIDER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<LlmProvider>,
    /// Model name (`STIGMER_LLM_MODEL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
    /// Base URL of the model API (`STIGMER_LLM_BASE_URL`), e.g. an Ollama or OpenAI-compatible server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub base_url: Option<String>,
    /// Secret key holding the model API key (`STIGMER_LLM_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Largest completion in tokens (`STIGMER_LLM_MAX_TOKENS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_tokens: Option<i32>,
    /// Sampling temperature (`STIGMER_LLM_TEMPERATURE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
}

/// Model API provider.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI or an OpenAI-compatible API.
    Openai,
    /// A local Ollama server.
    Ollama,
}

impl LlmProvider {
    /// The value of `STIGMER_LLM_PROVIDER`.
    pub fn as_str(self) -> &'static str {
        stigmer_contract::Provider::from(self).as_str()
    }
}

/// The CRD keeps its own enum (serde and schema derives belong to the API, not to the
/// runner's dependency-free contract); this is the one place the two meet.
impl From<LlmProvider> for stigmer_contract::Provider {
    fn from(p: LlmProvider) -> Self {
        match p {
            LlmProvider::Anthropic => Self::Anthropic,
            LlmProvider::Openai => Self::OpenAi,
            LlmProvider::Ollama => Self::Ollama,
        }
    }
}

/// Cloud-mode connections.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudSpec {
    /// The Stigmer backend the runners report to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,
    /// Secret key holding the runner's JWT (`STIGMER_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// Redis used for dispatch, live events, cancellation and presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Daytona sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daytona: Option<DaytonaSpec>,
}

/// The cloud backend.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.endpoint.startsWith('https://') || self.endpoint.startsWith('http://')").message("backend.endpoint must start with https:// (or http:// for a plaintext backend)"),
)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// gRPC endpoint with scheme, e.g. `https://api.stigmer.ai:443` (`STIGMER_BACKEND_ENDPOINT`).
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// Secret key holding a PEM CA bundle that signs the backend's certificate; mounted
    /// read-only and passed as `STIGMER_BACKEND_CA_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Redis connection: a host (with an optional password) or a full URL from a Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.host) != has(self.urlSecretRef)").message("set exactly one of redis.host or redis.urlSecretRef"),
    validation = Rule::new("!has(self.passwordSecretRef) || has(self.host)").message("redis.passwordSecretRef goes with redis.host; with redis.urlSecretRef put the password in the URL"),
    validation = Rule::new("!has(self.port) || has(self.host)").message("redis.port goes with redis.host"),
    validation = Rule::new("!has(self.tls) || has(self.host)").message("redis.tls goes with redis.host; a rediss:// URL in redis.urlSecretRef is TLS by itself"),
    validation = Rule::new("!has(self.caSecretRef) || has(self.urlSecretRef) || (has(self.tls) && self.tls)").message("redis.caSecretRef needs TLS: set redis.tls: true (or use a rediss:// URL in redis.urlSecretRef)"),
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Redis host name (`REDIS_HOST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// Redis port (`REDIS_PORT`), 6379 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Secret key holding the Redis password (`REDIS_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a full `redis://` or `rediss://` URL (`REDIS_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// TLS to `host` (`REDIS_TLS`), as managed Redis services require; the certificate is
    /// checked against the image's CAs, or `caSecretRef`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Secret key holding a PEM CA bundle that signs Redis's certificate (a private CA);
    /// mounted read-only and passed as `REDIS_CA_FILE`. Needs TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Daytona sandboxes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaytonaSpec {
    /// Daytona API URL (`DAYTONA_API_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub api_url: Option<String>,
    /// Secret key holding the Daytona API key (`DAYTONA_API_KEY`).
    pub api_key_secret_ref: SecretKeyRef,
    /// Snapshot new sandboxes are created from (`DAYTONA_DEV_TOOLS_SNAPSHOT_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub snapshot: Option<String>,
}

/// Local-mode settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    /// The volume mounted at /workspace: sandboxes and the control plane's SQLite file.
    /// An emptyDir when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSpec>,
    /// The stigmer-server sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSpec>,
}

/// The workspace volume: at most one source.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!(has(self.emptyDir) && has(self.persistentVolumeClaim))").message("set at most one of workspace.emptyDir or workspace.persistentVolumeClaim"),
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Scratch space that lives as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirWorkspace>,
    /// Storage that outlives the pod: an existing claim, or one the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcWorkspace>,
}

/// emptyDir workspace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new(SIZE_LIMIT_RULE).message(SIZE_LIMIT_MESSAGE).field_path(".sizeLimit"),
)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirWorkspace {
    /// Upper bound of the volume's size, e.g. `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// `Memory` for a tmpfs; node disk when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
}

// Quantities are `x-kubernetes-int-or-string`, so CEL sees an int or a string; `string()`
// turns both into the quantity's text (an int is a plain number), which the apiserver's own
// parser then checks through the quantity library (Kubernetes 1.28+; the chart requires 1.29).
const PVC_SIZE_RULE: &str =
    "!has(self.size) || (isQuantity(string(self.size)) && quantity(string(self.size)).sign() == 1)";
/// Refusal of `persistentVolumeClaim.size`, by the CRD and by `validate`.
pub const PVC_SIZE_MESSAGE: &str = "spec.local.workspace.persistentVolumeClaim.size must be a positive Kubernetes quantity, such as 20Gi or 500M";
const SIZE_LIMIT_RULE: &str = "!has(self.sizeLimit) || (isQuantity(string(self.sizeLimit)) && quantity(string(self.sizeLimit)).sign() >= 0)";
/// Refusal of `emptyDir.sizeLimit`, by the CRD and by `validate`.
pub const SIZE_LIMIT_MESSAGE: &str = "spec.local.workspace.emptyDir.sizeLimit must be a Kubernetes quantity of at least 0, such as 10Gi";

/// PersistentVolumeClaim workspace: `claimName`, or `size` (and optionally `storageClassName`)
/// for a claim named `<name>-workspace` that the operator creates and deletes with the AgentRunner.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new(PVC_SIZE_RULE).message(PVC_SIZE_MESSAGE).field_path(".size"),
    validation = Rule::new("has(self.claimName) != has(self.size)").message("set exactly one of persistentVolumeClaim.claimName or persistentVolumeClaim.size"),
    validation = Rule::new("!has(self.storageClassName) || has(self.size)").message("persistentVolumeClaim.storageClassName applies only with persistentVolumeClaim.size"),
)]
#[serde(rename_all = "camelCase")]
pub struct PvcWorkspace {
    /// An existing claim in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Size of the claim the operator creates, e.g. `20Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Storage class of the claim the operator creates; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// The stigmer-server sidecar of local mode.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// Image of the sidecar; the runner's image (which ships both binaries) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Sidecar resources. Defaults: requests 50m CPU and 64Mi memory, limit 512Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Pod-level knobs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How pods spread over topology domains. When empty, pods prefer (but do not require)
    /// distinct nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra labels on the pods. The operator's `app.kubernetes.io/*` labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// An existing ServiceAccount for the pods. When unset the operator creates one named
    /// after the AgentRunner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra containers appended to the pod. A container without a securityContext gets the
    /// restricted one the runner uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Container>,
    /// Extra volumes for the pod (mount them with `runner.extraVolumeMounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

/// Observed state, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRunnerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Runner pods that exist (scale subresource status).
    #[serde(default)]
    pub replicas: i32,
    /// Runner pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Runner pods on the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the runner pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl AgentRunner {
    /// Every Secret key the spec references, in a stable order, each with the spec path that
    /// names it so that a missing key can be reported precisely.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let spec = &self.spec;
        let mut refs: Vec<(&'static str, &SecretKeyRef)> = Vec::new();
        if let Some(r) = spec
            .llm
            .as_ref()
            .and_then(|l| l.api_key_secret_ref.as_ref())
        {
            refs.push(("spec.llm.apiKeySecretRef", r));
        }
        if spec.mode == Mode::Cloud
            && let Some(cloud) = &spec.cloud
        {
            if let Some(r) = &cloud.jwt_secret_ref {
                refs.push(("spec.cloud.jwtSecretRef", r));
            }
            if let Some(r) = cloud
                .backend
                .as_ref()
                .and_then(|b| b.ca_secret_ref.as_ref())
            {
                refs.push(("spec.cloud.backend.caSecretRef", r));
            }
            if let Some(redis) = &cloud.redis {
                if let Some(r) = &redis.password_secret_ref {
                    refs.push(("spec.cloud.redis.passwordSecretRef", r));
                }
                if let Some(r) = &redis.url_secret_ref {
                    refs.push(("spec.cloud.redis.urlSecretRef", r));
                }
                if let Some(r) = &redis.ca_secret_ref {
                    refs.push(("spec.cloud.redis.caSecretRef", r));
                }
            }
            if let Some(d) = &cloud.daytona {
                refs.push(("spec.cloud.daytona.apiKeySecretRef", &d.api_key_secret_ref));
            }
        }
        refs
    }

    /// Whether this AgentRunner reads the named Secret.
    pub fn references_secret(&self, name: &str) -> bool {
        self.secret_refs().iter().any(|(_, r)| r.name == name)
    }
}
