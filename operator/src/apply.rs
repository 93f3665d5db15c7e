//! Step 3: server-side apply of the desired objects, then deletion of owned objects that
//! are no longer desired.
//!
//! Every applied object carries [`APPLIED_HASH_ANNOTATION`], a hash of exactly what the
//! operator applies (spec, labels, annotations, owner references: the fields it owns). With
//! watch caches, an object whose cached copy carries the same hash is not applied again, so
//! an unchanged AgentRunner sends no write. The rule is deliberately conservative: any
//! change the operator would make changes the hash and is applied; the cost is that a hand
//! edit of an owned field that leaves the annotation alone stays until the next change of
//! the AgentRunner, its Secrets or the operator's output (deleting the object, or the
//! annotation, restores it at once).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{NamespaceResourceScope, Resource as K8sResource};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::build::{Desired, owned_labels, owned_selector};
use crate::caches::Caches;
use crate::config::FIELD_MANAGER;
use crate::error::Error;
use crate::secrets::hex;
use crate::validate::Validated;

/// Annotation on every applied object: hash of what the operator applied.
pub const APPLIED_HASH_ANNOTATION: &str = "agentic.stigmer.ai/applied-hash";

/// `obj` with [`APPLIED_HASH_ANNOTATION`] set to the hash of `obj` itself (without the
/// annotation). The JSON of k8s-openapi types is deterministic (sorted maps, fixed field
/// order), so equal objects hash equally across operator restarts. An object that cannot be
/// serialized gets no stamp, so it is never taken as up to date (and its apply reports why).
pub fn stamped<K: Resource + Serialize + Clone>(obj: &K) -> K {
    let mut out = obj.clone();
    if let Ok(bytes) = serde_json::to_vec(obj) {
        let hash = hex(&Sha256::digest(&bytes)[..16]);
        out.annotations_mut()
            .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
    }
    out
}

/// Whether the cached copy of `obj` already is what `stamped` would apply.
fn up_to_date<K: Resource>(stamped: &K, cached: &K) -> bool {
    cached.meta().deletion_timestamp.is_none()
        && stamped.annotations().get(APPLIED_HASH_ANNOTATION).is_some()
        && cached.annotations().get(APPLIED_HASH_ANNOTATION)
            == stamped.annotations().get(APPLIED_HASH_ANNOTATION)
}

/// Apply every desired object and clean up orphans. Returns the Deployment as the
/// apiserver stored it (or as the cache holds it, when it was up to date), whose status
/// feeds the AgentRunner's status.
pub async fn apply(
    client: &Client,
    caches: Option<&Caches>,
    v: &Validated<'_>,
    desired: &Desired,
) -> Result<Deployment, Error> {
    let ns = v.namespace.as_str();
    if let Some(sa) = &desired.service_account {
        apply_one(client, caches.map(|c| &c.service_accounts), ns, sa).await?;
    }
    if let Some(pvc) = &desired.workspace_claim {
        apply_one(client, caches.map(|c| &c.workspace_claims), ns, pvc).await?;
    }
    apply_one(
        client,
        caches.map(|c| &c.config_maps),
        ns,
        &desired.config_map,
    )
    .await?;
    apply_one(client, caches.map(|c| &c.services), ns, &desired.service).await?;
    if let Some(pdb) = &desired.pod_disruption_budget {
        apply_one(client, caches.map(|c| &c.pod_disruption_budgets), ns, pdb).await?;
    }
    // The Deployment goes last so that everything its pods mount already exists.
    let deployment = apply_one(
        client,
        caches.map(|c| &c.deployments),
        ns,
        &desired.deployment,
    )
    .await?;

    // Only kinds that can stop being desired are searched, and only when they are not
    // desired now: names are fixed, so a desired kind cannot have an orphan. The workspace
    // claim is never deleted here because it holds data; it goes with the AgentRunner.
    if desired.service_account.is_none() {
        let cached = caches.map(|c| owned_in_cache(&c.service_accounts, v));
        delete_orphans::<ServiceAccount>(client, v, cached).await?;
    }
    if desired.pod_disruption_budget.is_none() {
        let cached = caches.map(|c| owned_in_cache(&c.pod_disruption_budgets, v));
        delete_orphans::<PodDisruptionBudget>(client, v, cached).await?;
    }
    Ok(deployment)
}

/// Apply `obj` stamped with its hash, unless the cache shows it applied already.
async fn apply_one<K>(
    client: &Client,
    cache: Option<&Store<K>>,
    namespace: &str,
    obj: &K,
) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + K8sResource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let obj = stamped(obj);
    if let Some(store) = cache {
        let key = ObjectRef::new(&obj.name_any()).within(namespace);
        if let Some(cached) = store.get(&key)
            && up_to_date(&obj, &cached)
        {
            return Ok((*cached).clone());
        }
    }
    server_side_apply(client, namespace, &obj).await
}

/// The objects of this AgentRunner in `store`, selected like the LIST of
/// [`delete_orphans`] would (same namespace, every owned label).
fn owned_in_cache<K>(store: &Store<K>, v: &Validated<'_>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let selector = owned_labels(&v.name);
    store
        .state_filter(|o| {
            o.namespace().as_deref() == Some(v.namespace.as_str())
                && selector
                    .iter()
                    .all(|(k, val)| o.labels().get(*k).map(String::as_str) == Some(*val))
        })
        .into_iter()
        .map(|o| (*o).clone())
        .collect()
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
/// `cached` is what the watch cache holds; without it the objects are LISTed.
async fn delete_orphans<K>(
    client: &Client,
    v: &Validated<'_>,
    cached: Option<Vec<K>>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + K8sResource
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = <K as K8sResource>::KIND;
    let api: Api<K> = Api::namespaced(client.clone(), &v.namespace);
    let items = match cached {
        Some(items) => items,
        None => {
            api.list(&ListParams::default().labels(&owned_selector(&v.name)))
                .await
                .map_err(|source| Error::List {
                    kind,
                    namespace: v.namespace.clone(),
                    source: Box::new(source),
                })?
                .items
        }
    };
    for obj in items.iter().filter(|o| controlled_by(*o, &v.owner.uid)) {
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
