//! API-level e2e tests: they need an API server and kube-controller-manager (the garbage
//! collector for the deletion test, the Deployment controller for the restart test), not
//! schedulable nodes or images. Skipped unless `E2E_KUBECONFIG` names a cluster.

use std::collections::BTreeMap;

use e2e::{
    API_TIMEOUT, Doing, E2eError, Result, TestNs, cluster, condition, ensure, has_condition, owned,
    scenario, wait_for, wait_gone, wait_runner,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use operator::AgentRunner;
use operator::build::{CONFIG_HASH_ANNOTATION, SECRETS_HASH_ANNOTATION};
use operator::config::FIELD_MANAGER;
use serde_json::{Value, json};
use stigmer_contract::env::MODE;

fn local_spec() -> Value {
    json!({
        "mode": "local",
        "replicas": 1,
        "llm": {"provider": "anthropic", "model": "claude-sonnet-4-5",
                "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
        "local": {"workspace": {"persistentVolumeClaim": {"size": "1Gi"}}},
    })
}

fn cloud_spec() -> Value {
    json!({
        "mode": "cloud",
        "replicas": 3,
        "llm": {"provider": "anthropic", "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
        "cloud": {
            "backend": {"endpoint": "https://backend.example.com:443"},
            "jwtSecretRef": {"name": "cloud", "key": "jwt"},
            "redis": {"host": "redis.example.com", "port": 6379,
                      "passwordSecretRef": {"name": "cloud", "key": "redis-password"}},
            "daytona": {"apiUrl": "https://daytona.example.com/api",
                        "apiKeySecretRef": {"name": "cloud", "key": "daytona"}},
        },
    })
}

async fn secrets(t: &TestNs) -> Result<()> {
    t.secret("llm", &[("api-key", "sk-e2e")]).await?;
    t.secret(
        "cloud",
        &[
            ("jwt", "e2e.jwt.value"),
            ("redis-password", "pw"),
            ("daytona", "dk"),
        ],
    )
    .await
}

/// The value of `name` in the `runner` container's own env: `None` when the variable is
/// not there, `Some(None)` when it is set from a reference (valueFrom) instead of a value.
fn runner_env(pod: &PodSpec, name: &str) -> Option<Option<String>> {
    pod.containers
        .iter()
        .find(|c| c.name == "runner")?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .map(|e| e.value.clone())
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// Waits for the operator's Deployment and checks that it is owned by the AgentRunner.
async fn owned_deployment(t: &TestNs, name: &str) -> Result<Deployment> {
    let ar = t
        .api::<AgentRunner>()
        .get(name)
        .await
        .doing("reading the AgentRunner")?;
    let uid = ar.uid().unwrap_or_default();
    let dep = wait_for(
        &t.api::<Deployment>(),
        name,
        "the operator to create the Deployment",
        API_TIMEOUT,
        |_| true,
    )
    .await?;
    ensure(
        dep.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true)),
        format!("Deployment {name} is not controlled by its AgentRunner"),
    )?;
    Ok(dep)
}

async fn get_owned<K>(t: &TestNs, name: &str, uid: &str) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let obj = wait_for(
        &t.api::<K>(),
        name,
        &format!("the operator to create {kind} {name}"),
        API_TIMEOUT,
        |_| true,
    )
    .await?;
    ensure(
        obj.owner_references().iter().any(|o| o.uid == uid),
        format!("{kind} {name} is not owned by the AgentRunner"),
    )?;
    Ok(obj)
}

#[tokio::test]
async fn both_modes_create_the_expected_objects() {
    let Some(c) = cluster("both_modes_create_the_expected_objects").await else {
        return;
    };
    scenario(c, "both-modes", |t| async move {
        secrets(&t).await?;
        t.agentrunner("local", local_spec()).await?;
        t.agentrunner("cloud", cloud_spec()).await?;
        for name in ["local", "cloud"] {
            let ar = t.api::<AgentRunner>().get(name).await.doing("reading")?;
            let uid = ar.uid().unwrap_or_default();
            let dep = owned_deployment(&t, name).await?;
            get_owned::<ServiceAccount>(&t, name, &uid).await?;
            let cm: ConfigMap = get_owned(&t, &format!("{name}-config"), &uid).await?;
            get_owned::<Service>(&t, &format!("{name}-metrics"), &uid).await?;
            let pod = dep.spec.template.spec.clone().unwrap_or_default();
            // The operator sets MODE on the runner container itself, where no ConfigMap edit
            // or extraEnv can change it; the ConfigMap must not carry a second copy.
            let mode = runner_env(&pod, MODE);
            ensure(
                mode == Some(Some(name.to_owned())),
                format!("{name}: MODE on the runner container is {mode:?}, want {name:?}"),
            )?;
            let cm_data = cm.data.unwrap_or_default();
            ensure(
                !cm_data.contains_key(MODE),
                format!(
                    "{name}: the ConfigMap carries MODE={:?}; it belongs on the container",
                    cm_data.get(MODE)
                ),
            )?;
            ensure(
                template_annotation(&dep, SECRETS_HASH_ANNOTATION).is_some()
                    && template_annotation(&dep, CONFIG_HASH_ANNOTATION).is_some(),
                format!("{name}: hash annotations missing"),
            )?;
            if name == "local" {
                get_owned::<PersistentVolumeClaim>(&t, "local-workspace", &uid).await?;
                let sidecar = pod.init_containers.iter().flatten().any(|c| {
                    c.name == "stigmer-server" && c.restart_policy.as_deref() == Some("Always")
                });
                ensure(
                    sidecar,
                    "local mode runs stigmer-server as a native sidecar",
                )?;
            } else {
                get_owned::<PodDisruptionBudget>(&t, "cloud", &uid).await?;
                ensure(
                    dep.spec.replicas == Some(3),
                    format!("cloud replicas {:?}", dep.spec.replicas),
                )?;
            }
            // No Secret value is copied into the objects the operator made.
            let text = serde_json::to_string(&dep).unwrap_or_default();
            ensure(
                !text.contains("sk-e2e"),
                "a Secret value leaked into the Deployment",
            )?;
            // The status reports what the operator saw.
            wait_runner(&t, name, "observedGeneration in status", |ar| {
                ar.status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .is_some()
                    && ar.status.as_ref().is_some_and(|s| s.selector.is_some())
            })
            .await?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn invalid_agentrunners_are_refused_with_the_documented_messages() {
    let Some(c) = cluster("invalid_agentrunners_are_refused").await else {
        return;
    };
    scenario(c, "invalid", |t| async move {
        let mut no_backend = cloud_spec();
        no_backend["cloud"]
            .as_object_mut()
            .map(|o| o.remove("backend"));
        let mut both_redis = cloud_spec();
        both_redis["cloud"]["redis"]["urlSecretRef"] = json!({"name": "cloud", "key": "url"});
        let mut cloud_in_local = local_spec();
        cloud_in_local["cloud"] = cloud_spec()["cloud"].clone();
        let mut no_key = local_spec();
        no_key["llm"] = json!({"provider": "openai"});
        let mut pvc_replicas = local_spec();
        pvc_replicas["replicas"] = json!(2);
        let mut too_many = local_spec();
        too_many["replicas"] = json!(5000);
        let cases: Vec<(&str, Value, &str)> = vec![
            ("no-backend", no_backend, "cloud mode requires spec.cloud.backend.endpoint"),
            ("both-redis", both_redis, "set exactly one of redis.host or redis.urlSecretRef"),
            (
                "cloud-in-local",
                cloud_in_local,
                "spec.cloud is only allowed when spec.mode is cloud",
            ),
            (
                "no-key",
                no_key,
                "llm.apiKeySecretRef is required for the anthropic and openai providers",
            ),
            (
                "pvc-replicas",
                pvc_replicas,
                "a local-mode AgentRunner with a persistentVolumeClaim workspace runs at most 1 replica",
            ),
            ("too-many", too_many, "should be less than or equal to 1000"),
            (
                "a-name-that-is-much-longer-than-fifty-two-characters-long",
                local_spec(),
                "metadata.name must be at most 52 characters",
            ),
        ];
        let api = t.raw_agentrunners();
        for (name, spec, message) in cases {
            let obj: kube::api::DynamicObject = serde_json::from_value(json!({
                "apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
                "metadata": {"name": name, "namespace": t.ns}, "spec": spec,
            }))
            .map_err(|e| E2eError::Setup(e.to_string()))?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => return Err(E2eError::Check(format!("{name}: accepted"))),
                Err(kube::Error::Api(status)) => ensure(
                    status.code == 422 && status.message.contains(message),
                    format!("{name}: expected 422 with {message:?}, got {status:?}"),
                )?,
                Err(e) => return Err(E2eError::Check(format!("{name}: {e}"))),
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_missing_secret_gives_degraded_and_creating_it_recovers() {
    let Some(c) = cluster("a_missing_secret_gives_degraded").await else {
        return;
    };
    scenario(c, "missing-secret", |t| async move {
        t.agentrunner("r", local_spec()).await?;
        let ar = wait_runner(&t, "r", "Degraded=True", has_condition("Degraded", "True")).await?;
        let (_, reason, message) = condition(&ar, "Degraded").unwrap_or_default();
        ensure(
            reason == "SecretNotFound" && message.contains("llm"),
            format!("Degraded reason {reason:?}, message {message:?}"),
        )?;
        ensure(
            t.api::<Deployment>()
                .get_opt("r")
                .await
                .doing("get")?
                .is_none(),
            "nothing is applied while a Secret is missing",
        )?;
        // Creating the Secret is noticed (the operator watches referenced Secrets).
        secrets(&t).await?;
        wait_runner(
            &t,
            "r",
            "Degraded=False",
            has_condition("Degraded", "False"),
        )
        .await?;
        owned_deployment(&t, "r").await.map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn rotating_a_secret_changes_the_pod_template_hash() {
    let Some(c) = cluster("rotating_a_secret_changes_the_pod_template_hash").await else {
        return;
    };
    scenario(c, "rotation", |t| async move {
        secrets(&t).await?;
        t.agentrunner("r", local_spec()).await?;
        let before = owned_deployment(&t, "r").await?;
        let old = template_annotation(&before, SECRETS_HASH_ANNOTATION);
        let config = template_annotation(&before, CONFIG_HASH_ANNOTATION);
        t.secret("llm", &[("api-key", "sk-rotated")]).await?;
        let after = wait_for(
            &t.api::<Deployment>(),
            "r",
            "a new secrets hash on the pod template",
            API_TIMEOUT,
            move |d| template_annotation(d, SECRETS_HASH_ANNOTATION) != old,
        )
        .await?;
        ensure(
            template_annotation(&after, CONFIG_HASH_ANNOTATION) == config,
            "a rotated Secret changes the secrets hash only",
        )
    })
    .await;
}

#[tokio::test]
async fn kubectl_scale_sticks_and_suspend_scales_to_zero() {
    let Some(c) = cluster("kubectl_scale_sticks_and_suspend_scales_to_zero").await else {
        return;
    };
    scenario(c, "scale", |t| async move {
        secrets(&t).await?;
        let mut spec = local_spec();
        spec["local"] = json!({"workspace": {"emptyDir": {}}});
        t.agentrunner("r", spec.clone()).await?;
        owned_deployment(&t, "r").await?;
        // What `kubectl scale ar/r --replicas=3` sends: a patch of the scale subresource.
        let ars = t.api::<AgentRunner>();
        ars.patch_scale(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .doing("scaling the AgentRunner")?;
        wait_for(
            &t.api::<Deployment>(),
            "r",
            "3 replicas",
            API_TIMEOUT,
            |d| d.spec.replicas == Some(3),
        )
        .await?;
        // A spec change reconciles again (a new config hash); the scaled replicas stay.
        let before = t.api::<Deployment>().get("r").await.doing("get")?;
        let old_hash = template_annotation(&before, CONFIG_HASH_ANNOTATION);
        ars.patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runner": {"logLevel": "debug"}}})),
        )
        .await
        .doing("changing the log level")?;
        let d = wait_for(
            &t.api::<Deployment>(),
            "r",
            "a new config hash",
            API_TIMEOUT,
            move |d| template_annotation(d, CONFIG_HASH_ANNOTATION) != old_hash,
        )
        .await?;
        ensure(
            d.spec.replicas == Some(3),
            format!("replicas after reconcile: {:?}", d.spec.replicas),
        )?;
        let scale = ars.get_scale("r").await.doing("reading the scale")?;
        ensure(
            scale.spec.and_then(|s| s.replicas) == Some(3),
            "the scale subresource reads 3",
        )?;

        ars.patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .doing("suspending")?;
        wait_for(
            &t.api::<Deployment>(),
            "r",
            "0 replicas",
            API_TIMEOUT,
            |d| d.spec.replicas == Some(0),
        )
        .await?;
        wait_runner(&t, "r", "Ready reason Suspended", |ar| {
            condition(ar, "Ready").is_some_and(|(_, reason, _)| reason == "Suspended")
        })
        .await?;
        ars.patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .doing("resuming")?;
        wait_for(
            &t.api::<Deployment>(),
            "r",
            "3 replicas again",
            API_TIMEOUT,
            |d| d.spec.replicas == Some(3),
        )
        .await
        .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn deleting_the_agentrunner_garbage_collects_its_objects() {
    let Some(c) = cluster("deleting_the_agentrunner_garbage_collects_its_objects").await else {
        return;
    };
    scenario(c, "gc", |t| async move {
        secrets(&t).await?;
        t.agentrunner("r", cloud_spec()).await?;
        owned_deployment(&t, "r").await?;
        wait_for(
            &t.api::<PodDisruptionBudget>(),
            "r",
            "the PDB",
            API_TIMEOUT,
            |_| true,
        )
        .await?;
        t.api::<AgentRunner>()
            .delete("r", &DeleteParams::foreground())
            .await
            .doing("deleting the AgentRunner")?;
        // Foreground deletion: the AgentRunner goes only after its dependents (the
        // garbage collector's work), so each dependent must be gone too.
        wait_gone(&t.api::<AgentRunner>(), "r", "the AgentRunner", API_TIMEOUT).await?;
        wait_gone(&t.api::<Deployment>(), "r", "the Deployment", API_TIMEOUT).await?;
        wait_gone(
            &t.api::<ConfigMap>(),
            "r-config",
            "the ConfigMap",
            API_TIMEOUT,
        )
        .await?;
        wait_gone(&t.api::<Service>(), "r-metrics", "the Service", API_TIMEOUT).await?;
        wait_gone(
            &t.api::<ServiceAccount>(),
            "r",
            "the ServiceAccount",
            API_TIMEOUT,
        )
        .await?;
        wait_gone(&t.api::<PodDisruptionBudget>(), "r", "the PDB", API_TIMEOUT).await
    })
    .await;
}

/// A spec whose pods match no node: they stay Pending, so the Deployment's and the
/// AgentRunner's status stop moving once the pods exist (no probes flipping readiness, no
/// image pulls), whatever nodes the cluster has.
fn unschedulable(mut spec: Value) -> Value {
    spec["pod"] = json!({"nodeSelector": {"e2e.agentic.stigmer.ai/no-such-node": "true"}});
    spec
}

/// What the operator owns of `name` and each object it made for it (see `e2e::owned`), by
/// kind.
async fn owned_state(t: &TestNs, name: &str) -> Result<BTreeMap<String, Value>> {
    fn json_of<K: serde::Serialize>(obj: &K) -> Result<Value> {
        serde_json::to_value(obj).map_err(|e| E2eError::Setup(e.to_string()))
    }
    let mut out = BTreeMap::new();
    let ar = t.api::<AgentRunner>().get(name).await.doing("get")?;
    out.insert(
        "AgentRunner".into(),
        owned::owned_runner(&json_of(&ar)?, FIELD_MANAGER),
    );
    let dep = t.api::<Deployment>().get(name).await.doing("get")?;
    let cm = t
        .api::<ConfigMap>()
        .get(&format!("{name}-config"))
        .await
        .doing("get")?;
    let svc = t
        .api::<Service>()
        .get(&format!("{name}-metrics"))
        .await
        .doing("get")?;
    let sa = t.api::<ServiceAccount>().get(name).await.doing("get")?;
    let pdb = t
        .api::<PodDisruptionBudget>()
        .get(name)
        .await
        .doing("get")?;
    for (kind, obj) in [
        ("Deployment", json_of(&dep)?),
        ("ConfigMap", json_of(&cm)?),
        ("Service", json_of(&svc)?),
        ("ServiceAccount", json_of(&sa)?),
        ("PodDisruptionBudget", json_of(&pdb)?),
    ] {
        let state = owned::owned_object(&obj, FIELD_MANAGER);
        // An object without an entry of the operator's field manager was not applied by it:
        // the comparison below would then prove nothing about the operator.
        ensure(
            state["managedFields"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            format!("{kind} has no managedFields entry of {FIELD_MANAGER}"),
        )?;
        out.insert(kind.into(), state);
    }
    Ok(out)
}

/// Waits until `name` has settled: its pods exist (Pending), the Deployment controller has
/// seen the current Deployment, and the AgentRunner's status reflects both.
async fn settled(t: &TestNs, name: &str, replicas: i32) -> Result<()> {
    wait_for(
        &t.api::<Deployment>(),
        name,
        "the Deployment controller to create the pods",
        API_TIMEOUT,
        move |d| {
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.replicas == Some(replicas)
                    && s.updated_replicas == Some(replicas)
            })
        },
    )
    .await?;
    wait_runner(
        t,
        name,
        "status for the current generation and pods",
        move |ar| {
            ar.status.as_ref().is_some_and(|s| {
                s.observed_generation == ar.metadata.generation
                    && s.replicas == replicas
                    && s.updated_replicas == replicas
                    && s.conditions.len() == 3
            })
        },
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn the_operator_restarts_without_changing_anything() {
    let Some(c) = cluster("the_operator_restarts_without_changing_anything").await else {
        return;
    };
    scenario(c, "restart", |t| async move {
        secrets(&t).await?;
        t.agentrunner("r", unschedulable(cloud_spec())).await?;
        owned_deployment(&t, "r").await?;
        wait_for(
            &t.api::<PodDisruptionBudget>(),
            "r",
            "the PDB",
            API_TIMEOUT,
            |_| true,
        )
        .await?;
        settled(&t, "r", 3).await?;
        let before = owned_state(&t, "r").await?;
        t.restart_operator().await?;
        // A probe created after the restart is reconciled only by the new operator; once it
        // is, the new operator has also gone through its initial list, including "r".
        t.agentrunner("probe", unschedulable(cloud_spec())).await?;
        owned_deployment(&t, "probe").await?;
        wait_runner(&t, "probe", "the probe's status", |ar| {
            ar.status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .is_some()
        })
        .await?;
        // resourceVersions are not compared: kube-controller-manager keeps writing the
        // Deployment's status, and the AgentRunner's status follows it. What the operator
        // owns is (see e2e::owned for what each part catches).
        let after = owned_state(&t, "r").await?;
        let changed = owned::differences(&before, &after);
        ensure(
            changed.is_empty(),
            format!("the restart changed what the operator owns: {changed:#?}"),
        )
    })
    .await;
}

#[tokio::test]
async fn the_operator_role_is_enough_and_no_more() {
    let Some(c) = cluster("the_operator_role_is_enough_and_no_more").await else {
        return;
    };
    if c.operator != e2e::OperatorMode::InProcess {
        e2e::skip(
            "the_operator_role_is_enough_and_no_more",
            "needs the in-process operator (E2E_OPERATOR=in-process)",
        );
        return;
    }
    scenario(c, "rbac", |t| async move {
        // The objects above are made by an operator acting as a ServiceAccount bound only to
        // the table's Role; here, that account cannot do what the table leaves out.
        let mut config = t.cluster.config.clone();
        config.auth_info.impersonate = Some(format!(
            "system:serviceaccount:{}:{}",
            t.ns,
            e2e::OPERATOR_SA
        ));
        let client = kube::Client::try_from(config).map_err(|e| E2eError::Setup(e.to_string()))?;
        secrets(&t).await?;
        let secrets_api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &t.ns);
        secrets_api
            .get("llm")
            .await
            .doing("reading a Secret as the operator")?;
        match secrets_api.delete("llm", &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            other => Err(E2eError::Check(format!(
                "the operator's account may delete Secrets: {other:?}"
            ))),
        }
    })
    .await;
}
