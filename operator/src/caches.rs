//! Watch caches (reflector stores) of the objects a reconcile reads: the referenced
//! Secrets and the owned objects. With them an unchanged AgentRunner costs no API request
//! at all; without them (unit tests that script every request) the reconcile falls back to
//! GET and LIST.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::Store;

/// Readers of the stores the controller's watches fill.
#[derive(Clone)]
pub struct Caches {
    pub secrets: Store<Secret>,
    pub deployments: Store<Deployment>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub workspace_claims: Store<PersistentVolumeClaim>,
}

impl Caches {
    /// Wait until every store holds its first full LIST: a cold Secret store would make
    /// a present Secret look missing and degrade a working AgentRunner. Returns false when
    /// a store's writer is gone (the controller is stopping).
    pub async fn wait_until_ready(&self) -> bool {
        self.secrets.wait_until_ready().await.is_ok()
            && self.deployments.wait_until_ready().await.is_ok()
            && self.config_maps.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && self.service_accounts.wait_until_ready().await.is_ok()
            && self.pod_disruption_budgets.wait_until_ready().await.is_ok()
            && self.workspace_claims.wait_until_ready().await.is_ok()
    }
}
