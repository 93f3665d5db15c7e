//! The smaller owned objects: ServiceAccount, workspace claim, metrics Service, PDB.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, meta, names, scrape_annotations, selector_labels};
use crate::validate::{ServiceAccountChoice, Validated, Workspace};

pub(super) fn service_account(v: &Validated<'_>) -> Option<ServiceAccount> {
    let ServiceAccountChoice::Owned(name) = &v.service_account else {
        return None;
    };
    Some(ServiceAccount {
        metadata: meta(v, name.clone()),
        // The runner needs no Kubernetes API access, so it gets no token.
        automount_service_account_token: Some(false),
        ..Default::default()
    })
}

pub(super) fn workspace_claim(v: &Validated<'_>) -> Option<PersistentVolumeClaim> {
    let Workspace::OwnedClaim {
        size,
        storage_class,
    } = &v.workspace
    else {
        return None;
    };
    Some(PersistentVolumeClaim {
        metadata: meta(v, names::workspace_claim(&v.name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), size.clone())])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

pub(super) fn service(v: &Validated<'_>) -> Service {
    let mut metadata = meta(v, names::service(&v.name));
    metadata.annotations = Some(scrape_annotations());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&v.name)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// One runner at a time may be evicted (each drains first), and only when there are
/// several: a budget over a single pod would block node drains forever.
pub(super) fn pod_disruption_budget(v: &Validated<'_>) -> Option<PodDisruptionBudget> {
    (v.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(v, names::base(&v.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&v.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}
