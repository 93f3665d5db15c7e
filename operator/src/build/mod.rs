//! Step 2 (pure): every object an AgentRunner should have, built from the validated spec.
//!
//! Nothing here talks to the apiserver, so each object can be checked from a YAML fixture.

mod config_map;
mod deployment;
mod objects;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::secrets::SecretsDigest;
use crate::validate::Validated;

pub use config_map::config_data;

/// `app.kubernetes.io/name` of every object.
pub const APP_NAME: &str = "agent-runner";
/// `app.kubernetes.io/managed-by` of every object; also selects orphans.
pub const MANAGED_BY: &str = "agentrunner-operator";
/// Pod template annotation: hash of the ConfigMap's data.
pub const CONFIG_HASH_ANNOTATION: &str = "agentic.stigmer.ai/config-hash";
/// Pod template annotation: hash of the referenced Secret values.
pub const SECRETS_HASH_ANNOTATION: &str = "agentic.stigmer.ai/secrets-hash";
/// Port of the runner's health and metrics server.
pub const HTTP_PORT: i32 = 8080;

/// The objects an AgentRunner should own, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Present unless the user named their own ServiceAccount.
    pub service_account: Option<ServiceAccount>,
    /// Present when the workspace is a claim the operator creates.
    pub workspace_claim: Option<PersistentVolumeClaim>,
    /// Non-secret runner settings.
    pub config_map: ConfigMap,
    /// The runner metrics Service.
    pub service: Service,
    /// Present when more than one replica is desired.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// The runners.
    pub deployment: Deployment,
}

/// Build every desired object.
pub fn build(v: &Validated<'_>, secrets: &SecretsDigest) -> Desired {
    let config_map = config_map::build(v);
    let config_hash = config_map::hash(&config_map);
    Desired {
        service_account: objects::service_account(v),
        workspace_claim: objects::workspace_claim(v),
        service: objects::service(v),
        pod_disruption_budget: objects::pod_disruption_budget(v),
        deployment: deployment::build(v, &config_hash, &secrets.0),
        config_map,
    }
}

/// Names of the owned objects.
pub mod names {
    /// Deployment, ServiceAccount and PodDisruptionBudget.
    pub fn base(runner: &str) -> String {
        runner.to_owned()
    }
    /// ConfigMap.
    pub fn config_map(runner: &str) -> String {
        format!("{runner}-config")
    }
    /// Metrics Service.
    pub fn service(runner: &str) -> String {
        format!("{runner}-metrics")
    }
    /// Operator-created workspace claim.
    pub fn workspace_claim(runner: &str) -> String {
        format!("{runner}-workspace")
    }
}

/// Labels that select an AgentRunner's pods. They never change, because a Deployment's
/// selector is immutable.
pub fn selector_labels(runner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), runner.to_owned()),
    ])
}

/// The selector as a string, for the status of the scale subresource.
pub fn selector_string(runner: &str) -> String {
    selector_labels(runner)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The labels that mark every object the operator made for `runner`.
pub fn owned_labels(runner: &str) -> [(&'static str, &str); 2] {
    [
        ("app.kubernetes.io/instance", runner),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
    ]
}

/// [`owned_labels`] as a label selector, for API calls.
pub fn owned_selector(runner: &str) -> String {
    owned_labels(runner)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every owned object.
pub fn common_labels(runner: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(runner);
    labels.insert("app.kubernetes.io/component".into(), "runner".into());
    labels.insert("app.kubernetes.io/part-of".into(), "stigmer".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

/// Metadata of an owned object.
fn meta(v: &Validated<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(common_labels(&v.name)),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    }
}

/// Prometheus scrape annotations for pods and the Service.
fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}
