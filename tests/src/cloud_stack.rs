//! The cloud-mode stack of the workload suite, described once and used twice: the cluster test
//! (`a_cloud_mode_pod_runs_an_execution`) deploys it as pods, and the rehearsal
//! (`tests/cloud_rehearsal.rs`, no cluster needed) runs the same programs with the same
//! settings as processes on loopback, so that what the cluster test deploys is known to work
//! before a cluster ever sees it.
//!
//! The stack: a real Redis, the control plane (`stigmer-server`) in its Redis configuration
//! verifying the runner's JWT (ES256, a key generated per run) and holding a client key for
//! the CLI, a Daytona stand-in ([`DAYTONA_SCRIPT`]: the documented endpoints the runner uses,
//! commands run with `sh -c` in its container) and the scripted LLM ([`LLM_SCRIPT`]). Neither
//! Daytona nor a hosted LLM can be reached from a test cluster; both stand-ins say so.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Secret};
use serde_json::{Value, json};
use testkit::pki::{JWT_AUDIENCE, JWT_ISSUER, JwtSigner};

/// The scripted OpenAI-compatible LLM (Python, standard library only).
pub const LLM_SCRIPT: &str = include_str!("scripted_llm.py");
/// The Daytona stand-in (Python, standard library only).
pub const DAYTONA_SCRIPT: &str = include_str!("daytona_standin.py");
/// The agent every workload test applies.
pub const AGENT_YAML: &str =
    "name: e2e\ninstructions: Run the command you are asked to.\ntools: [run_command]\n";
/// Snapshot the runner asks Daytona for (the stand-in accepts any).
pub const SNAPSHOT: &str = "dev-tools";

/// Names of the files the control plane reads its keys from.
pub const CLIENT_KEY_FILE: &str = "client-key";
/// Public key that verifies the runner's JWT.
pub const JWT_PUBLIC_KEY_FILE: &str = "jwt.pub";

/// Where the parts of the stack are, as the runner and the control plane reach them.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Control plane, with scheme (`http://stigmer-server:50051`).
    pub backend: String,
    /// Redis host and port.
    pub redis_host: String,
    pub redis_port: u16,
    /// Daytona API (`http://daytona:8080/api`).
    pub daytona_api: String,
    /// The scripted LLM's OpenAI base URL (`http://scripted-llm:8080/v1`).
    pub llm_base: String,
}

impl Endpoints {
    /// The Redis URL the control plane uses.
    pub fn redis_url(&self) -> String {
        format!("redis://{}:{}", self.redis_host, self.redis_port)
    }
}

/// The credentials of one run of the stack, generated afresh.
pub struct CloudStack {
    /// The CLI's key (a client-role key: it cannot claim executions).
    pub client_key: String,
    /// The runner's JWT, signed by [`CloudStack::jwt_public_pem`]'s private half.
    pub jwt: String,
    /// SPKI PEM the control plane verifies JWTs with.
    pub jwt_public_pem: String,
    /// The Daytona stand-in's API key.
    pub daytona_key: String,
}

impl Default for CloudStack {
    fn default() -> Self {
        Self::new()
    }
}

impl CloudStack {
    pub fn new() -> Self {
        let signer = JwtSigner::new();
        let nonce = std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos());
        Self {
            client_key: format!("e2e-client-{nonce:08x}"),
            jwt: signer.good_token(),
            jwt_public_pem: signer.public_pem.clone(),
            daytona_key: format!("e2e-daytona-{nonce:08x}"),
        }
    }

    /// The files the control plane reads (name → content), mounted from a Secret in a cluster.
    pub fn control_plane_files(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLIENT_KEY_FILE.to_owned(), self.client_key.clone()),
            (JWT_PUBLIC_KEY_FILE.to_owned(), self.jwt_public_pem.clone()),
        ])
    }

    /// The control plane's environment: Redis dispatch, JWT verification, the client key.
    /// `files_dir` holds [`CloudStack::control_plane_files`].
    pub fn control_plane_env(
        &self,
        e: &Endpoints,
        listen: &str,
        data_dir: &str,
        files_dir: &str,
    ) -> BTreeMap<String, String> {
        [
            ("STIGMER_SERVER_LISTEN", listen.to_owned()),
            ("STIGMER_DATA_DIR", data_dir.to_owned()),
            ("REDIS_URL", e.redis_url()),
            (
                "STIGMER_SERVER_CLIENT_KEY_FILE",
                format!("{files_dir}/{CLIENT_KEY_FILE}"),
            ),
            (
                "STIGMER_JWT_PUBLIC_KEY_FILE",
                format!("{files_dir}/{JWT_PUBLIC_KEY_FILE}"),
            ),
            ("STIGMER_JWT_ISSUER", JWT_ISSUER.to_owned()),
            ("STIGMER_JWT_AUDIENCE", JWT_AUDIENCE.to_owned()),
            ("LOG_LEVEL", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The Daytona stand-in's environment.
    pub fn daytona_env(&self, port: u16, root: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DAYTONA_API_KEY".to_owned(), self.daytona_key.clone()),
            ("STANDIN_PORT".to_owned(), port.to_string()),
            ("STANDIN_ROOT".to_owned(), root.to_owned()),
        ])
    }

    /// The Secrets a cloud AgentRunner of [`CloudStack::agentrunner_spec`] references
    /// (name → data).
    pub fn runner_secrets(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::from([
            (
                "cloud".to_owned(),
                BTreeMap::from([
                    ("jwt".to_owned(), self.jwt.clone()),
                    ("daytona".to_owned(), self.daytona_key.clone()),
                ]),
            ),
            (
                "llm".to_owned(),
                BTreeMap::from([("api-key".to_owned(), "scripted".to_owned())]),
            ),
        ])
    }

    /// The spec of a cloud-mode AgentRunner against this stack.
    pub fn agentrunner_spec(&self, e: &Endpoints) -> Value {
        json!({
            "mode": "cloud",
            "replicas": 1,
            "runner": {"maxConcurrency": 2, "drainTimeoutSeconds": 90},
            "llm": {"provider": "openai", "model": "scripted", "baseUrl": e.llm_base,
                    "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
            "cloud": {
                "backend": {"endpoint": e.backend},
                "jwtSecretRef": {"name": "cloud", "key": "jwt"},
                "redis": {"host": e.redis_host, "port": e.redis_port},
                "daytona": {"apiUrl": e.daytona_api, "snapshot": SNAPSHOT,
                            "apiKeySecretRef": {"name": "cloud", "key": "daytona"}},
            },
        })
    }
}

/// Why a container's environment could not be worked out as the kubelet would.
#[derive(Debug, thiserror::Error)]
pub enum PodEnvError {
    #[error("{var}: Secret {secret} has no key {key}")]
    MissingSecret {
        var: String,
        secret: String,
        key: String,
    },
    #[error("{0}: a valueFrom source this rehearsal does not know")]
    Unsupported(String),
    #[error("envFrom names ConfigMap {0}, which the operator did not build")]
    UnknownConfigMap(String),
}

/// The environment the kubelet gives `container`: `envFrom` ConfigMaps first (from
/// `config_maps`), then `env` in order, `secretKeyRef` resolved from `secrets` (name → data)
/// and `fieldRef` from `fields` (field path → value).
pub fn container_env(
    container: &Container,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
    fields: &BTreeMap<&str, String>,
) -> Result<BTreeMap<String, String>, PodEnvError> {
    let mut env = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        if let Some(cm) = &source.config_map_ref {
            let data = config_maps
                .get(&cm.name)
                .ok_or_else(|| PodEnvError::UnknownConfigMap(cm.name.clone()))?;
            env.extend(data.clone());
        }
    }
    for var in container.env.iter().flatten() {
        env.insert(var.name.clone(), env_value(var, secrets, fields)?);
    }
    Ok(env)
}

fn env_value(
    var: &EnvVar,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
    fields: &BTreeMap<&str, String>,
) -> Result<String, PodEnvError> {
    let Some(from) = &var.value_from else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    if let Some(r) = &from.secret_key_ref {
        return secrets
            .get(&r.name)
            .and_then(|data| data.get(&r.key))
            .cloned()
            .ok_or_else(|| PodEnvError::MissingSecret {
                var: var.name.clone(),
                secret: r.name.clone(),
                key: r.key.clone(),
            });
    }
    if let Some(f) = &from.field_ref {
        return fields
            .get(f.field_path.as_str())
            .cloned()
            .ok_or_else(|| PodEnvError::Unsupported(var.name.clone()));
    }
    Err(PodEnvError::Unsupported(var.name.clone()))
}

/// `secrets` as Secret objects (with `stringData`), as the operator's secret resolution reads
/// them.
pub fn secret_objects(
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, Secret> {
    secrets
        .iter()
        .map(|(name, data)| {
            let secret = Secret {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                        .collect(),
                ),
                ..Default::default()
            };
            (name.clone(), secret)
        })
        .collect()
}
