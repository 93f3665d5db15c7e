//! Step 3: server-side apply of the desired objects, then deletion of owned objects that
//! are no longer desired.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{NamespaceResourceScope, Resource as K8sResource};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{Desired, owned_selector};
use crate::config::FIELD_MANAGER;
use crate::error::Error;
use crate::validate::Validated;

/// Apply every desired object and clean up orphans. Returns the Deployment as the
/// apiserver stored it, whose status feeds the AgentRunner's status.
pub async fn apply(
    client: &Client,
    v: &Validated<'_>,
    desired: &Desired,
) -> Result<Deployment, Error> {
    let ns = v.namespace.as_str();
    if let Some(sa) = &desired.service_account {
        server_side_apply(client, ns, sa).await?;
    }
    if let Some(pvc) = &desired.workspace_claim {
        server_side_apply(client, ns, pvc).await?;
    }
    server_side_apply(client, ns, &desired.config_map).await?;
    server_side_apply(client, ns, &desired.service).await?;
    if let Some(pdb) = &desired.pod_disruption_budget {
        server_side_apply(client, ns, pdb).await?;
    }
    // The Deployment goes last so that everything its pods mount already exists.
    let deployment = server_side_apply(client, ns, &desired.deployment).await?;

    // Only kinds that can stop being desired are searched, and only when they are not
    // desired now: names are fixed, so a desired kind cannot have an orphan. The workspace
    // claim is never deleted here because it holds data; it goes with the AgentRunner.
    if desired.service_account.is_none() {
        delete_orphans::<ServiceAccount>(client, v).await?;
    }
    if desired.pod_disruption_budget.is_none() {
        delete_orphans::<PodDisruptionBudget>(client, v).await?;
    }
    Ok(deployment)
}

/// `PATCH` with `application/apply-patch+yaml`, forcing ownership: the operator is the only
/// intended writer of these fields, so a conflict means someone edited an owned object by
/// hand, and the spec must win.
pub async fn server_side_apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + K8sResource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: <K as K8sResource>::KIND,
        namespace: namespace.to_owned(),
        name,
        source: Box::new(source),
    })
}

/// Delete objects of kind `K` that carry this AgentRunner's labels and are controlled by it.
/// The owner check keeps a user's object that happens to carry the labels safe.
async fn delete_orphans<K>(client: &Client, v: &Validated<'_>) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + K8sResource
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = <K as K8sResource>::KIND;
    let api: Api<K> = Api::namespaced(client.clone(), &v.namespace);
    let list = api
        .list(&ListParams::default().labels(&owned_selector(&v.name)))
        .await
        .map_err(|source| Error::List {
            kind,
            namespace: v.namespace.clone(),
            source: Box::new(source),
        })?;
    for obj in list
        .items
        .iter()
        .filter(|o| controlled_by(*o, &v.owner.uid))
    {
        let name = obj.name_any();
        tracing::info!(kind, namespace = %v.namespace, name = %name, "deleting object no longer desired");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            // Already gone: the goal is reached.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind,
                    namespace: v.namespace.clone(),
                    name,
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(())
}

fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}
