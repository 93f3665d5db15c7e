//! The ConfigMap of non-secret runner settings, loaded into the runner with `envFrom`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use stigmer_contract::env as vars;

use super::{HTTP_PORT, meta, names};
use crate::crd::Mode;
use crate::secrets::hex;
use crate::validate::Validated;

/// Where the backend CA bundle is mounted in cloud mode.
pub const BACKEND_CA_DIR: &str = "/etc/stigmer/backend-ca";
/// File name of the CA bundle inside [`BACKEND_CA_DIR`].
pub const BACKEND_CA_FILE: &str = "ca.crt";
/// Where the Redis CA bundle (`spec.cloud.redis.caSecretRef`) is mounted, and its file name.
pub const REDIS_CA_DIR: &str = "/etc/stigmer/redis-ca";
pub const REDIS_CA_FILE: &str = "ca.crt";
/// The sidecar's address as the runner sees it in local mode.
pub const LOCAL_BACKEND_ENDPOINT: &str = "http://localhost:50051";
/// Sandbox root on the workspace volume in local mode.
pub const LOCAL_SANDBOX_ROOT: &str = "/workspace/sandboxes";

pub(super) fn build(v: &Validated<'_>) -> ConfigMap {
    ConfigMap {
        metadata: meta(v, names::config_map(&v.name)),
        data: Some(config_data(v)),
        ..Default::default()
    }
}

/// The runner variables that are not secret. `MODE` is not among them: it is set on the
/// container directly so that `kubectl describe pod` shows it.
pub fn config_data(v: &Validated<'_>) -> BTreeMap<String, String> {
    let spec = v.spec();
    let mut data = BTreeMap::new();
    let mut set = |k: &str, val: String| {
        data.insert(k.to_owned(), val);
    };
    set(
        vars::MAX_CONCURRENCY,
        spec.runner.max_concurrency.to_string(),
    );
    set(
        vars::DRAIN_TIMEOUT_SECS,
        spec.runner.drain_timeout_seconds.to_string(),
    );
    set(vars::LOG_LEVEL, spec.runner.log_level.as_str().to_owned());
    set(vars::HTTP_ADDR, format!("0.0.0.0:{HTTP_PORT}"));
    if let Some(llm) = &spec.llm {
        if let Some(p) = llm.provider {
            set(vars::LLM_PROVIDER, p.as_str().to_owned());
        }
        if let Some(m) = &llm.model {
            set(vars::LLM_MODEL, m.clone());
        }
        if let Some(u) = &llm.base_url {
            set(vars::LLM_BASE_URL, u.clone());
        }
        if let Some(t) = llm.max_tokens {
            set(vars::LLM_MAX_TOKENS, t.to_string());
        }
        if let Some(t) = llm.temperature {
            set(vars::LLM_TEMPERATURE, t.to_string());
        }
    }
    match spec.mode {
        Mode::Local => {
            set(vars::BACKEND_ENDPOINT, LOCAL_BACKEND_ENDPOINT.to_owned());
            set(vars::SANDBOX_ROOT_DIR, LOCAL_SANDBOX_ROOT.to_owned());
        }
        Mode::Cloud => {
            let cloud = spec.cloud.clone().unwrap_or_default();
            if let Some(b) = &cloud.backend {
                set(vars::BACKEND_ENDPOINT, b.endpoint.clone());
                // The CRD accepts `http://` as the user's explicit choice of a plaintext
                // backend; the runner refuses plaintext in cloud mode unless told so.
                if b.endpoint.starts_with("http://") {
                    set(vars::BACKEND_INSECURE, "true".to_owned());
                }
                if b.ca_secret_ref.is_some() {
                    set(
                        vars::BACKEND_CA_FILE,
                        format!("{BACKEND_CA_DIR}/{BACKEND_CA_FILE}"),
                    );
                }
            }
            if let Some(host) = cloud.redis.as_ref().and_then(|r| r.host.as_ref()) {
                set(vars::REDIS_HOST, host.clone());
                let port = cloud.redis.as_ref().and_then(|r| r.port).unwrap_or(6379);
                set(vars::REDIS_PORT, port.to_string());
            }
            if cloud.redis.as_ref().and_then(|r| r.tls) == Some(true) {
                set(vars::REDIS_TLS, "true".to_owned());
            }
            if cloud
                .redis
                .as_ref()
                .is_some_and(|r| r.ca_secret_ref.is_some())
            {
                set(
                    vars::REDIS_CA_FILE,
                    format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}"),
                );
            }
            if let Some(d) = &cloud.daytona {
                if let Some(u) = &d.api_url {
                    set(vars::DAYTONA_API_URL, u.clone());
                }
                if let Some(s) = &d.snapshot {
                    set(vars::DAYTONA_DEV_TOOLS_SNAPSHOT_ID, s.clone());
                }
            }
        }
    }
    data
}

/// Hash of the ConfigMap's data, stamped on the pod template: `envFrom` is read only at
/// container start, so a changed setting must roll the pods.
pub(super) fn hash(cm: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in cm.data.iter().flatten() {
        for part in [k.as_bytes(), v.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hex(&hasher.finalize()[..16])
}
