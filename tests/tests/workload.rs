//! Workload-level e2e tests: they need nodes, the runner image (`E2E_RUNNER_IMAGE`, loaded
//! into the cluster) and `kubectl` for `exec`. Skipped unless `E2E_KUBECONFIG` and
//! `E2E_WORKLOAD=1` are set (scripts/e2e-kind sets both).
//!
//! The LLM is a scripted OpenAI-compatible server deployed in the test namespace (a short
//! Python program on the `python` image, `E2E_PYTHON_IMAGE`): it answers the first turn with
//! a `run_command` tool call and the turn after the tool result with the text `e2e-done`.

use std::sync::Arc;
use std::time::Duration;

use e2e::cloud_stack::{AGENT_YAML, CloudStack, DAYTONA_SCRIPT, Endpoints, LLM_SCRIPT};
use e2e::{
    API_TIMEOUT, Doing, E2eError, POD_TIMEOUT, Result, TestNs, ensure, has_condition, kubectl,
    scenario, wait_for, wait_runner, workload_cluster,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use operator::AgentRunner;
use serde_json::{Value, json};

fn restricted_container() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": true,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Deploys the scripted LLM (`http://scripted-llm:8080/v1`) and waits until it is available.
async fn scripted_llm(t: &TestNs) -> Result<()> {
    let image =
        std::env::var("E2E_PYTHON_IMAGE").unwrap_or_else(|_| "python:3.12-alpine".to_owned());
    t.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "scripted-llm"},
        "data": {"llm.py": LLM_SCRIPT},
    }))
    .await?;
    t.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "scripted-llm"},
        "spec": {
            "selector": {"matchLabels": {"app": "scripted-llm"}},
            "template": {
                "metadata": {"labels": {"app": "scripted-llm"}},
                "spec": {
                    "containers": [{
                        "name": "llm", "image": image,
                        "command": ["python3", "-u", "/script/llm.py"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                        "securityContext": restricted_container(),
                        "volumeMounts": [{"name": "script", "mountPath": "/script"}],
                    }],
                    "volumes": [{"name": "script", "configMap": {"name": "scripted-llm"}}],
                },
            },
        },
    }))
    .await?;
    t.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "scripted-llm"},
        "spec": {"selector": {"app": "scripted-llm"}, "ports": [{"port": 8080}]},
    }))
    .await?;
    wait_for(
        &t.api::<Deployment>(),
        "scripted-llm",
        "the scripted LLM to be available",
        POD_TIMEOUT,
        |d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or_default()
                >= 1
        },
    )
    .await
    .map(|_| ())
}

/// A local-mode AgentRunner talking to the scripted LLM, and waits until it is Ready.
async fn local_runner(t: &TestNs, name: &str) -> Result<AgentRunner> {
    t.secret("llm", &[("api-key", "scripted")]).await?;
    t.agentrunner(
        name,
        json!({
            "mode": "local",
            "replicas": 1,
            "runner": {"maxConcurrency": 2, "drainTimeoutSeconds": 90},
            "llm": {"provider": "openai", "model": "scripted",
                    "baseUrl": "http://scripted-llm:8080/v1",
                    "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
            "local": {"workspace": {"emptyDir": {}}},
        }),
    )
    .await?;
    wait_for(
        &t.api::<AgentRunner>(),
        name,
        "the AgentRunner to be Ready",
        POD_TIMEOUT,
        has_condition("Ready", "True"),
    )
    .await
}

/// The one runner pod of `name` that is not being deleted.
async fn runner_pod(t: &TestNs, ar: &AgentRunner) -> Result<String> {
    let selector = ar
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .ok_or_else(|| E2eError::Check("no selector in status".into()))?;
    let pods = t
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .doing("listing runner pods")?;
    pods.items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .ok_or_else(|| E2eError::Check("no runner pod".into()))
}

/// `stigmer` inside a container of the pod (the runner image carries the CLI; the control
/// plane is the sidecar on localhost:50051).
async fn stigmer(
    t: &TestNs,
    pod: &str,
    container: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let mut full = vec!["-n", &t.ns, "exec"];
    if stdin.is_some() {
        full.push("-i");
    }
    full.extend_from_slice(&[
        pod,
        "-c",
        container,
        "--",
        "/usr/local/bin/stigmer",
        "--endpoint",
        "http://127.0.0.1:50051",
    ]);
    full.extend_from_slice(args);
    kubectl(&t.cluster, &full, stdin).await
}

#[tokio::test]
async fn runner_pods_become_ready() {
    let Some(c) = workload_cluster("runner_pods_become_ready").await else {
        return;
    };
    scenario(c, "pods-ready", |t| async move {
        scripted_llm(&t).await?;
        let ar = local_runner(&t, "r").await?;
        let status = ar.status.unwrap_or_default();
        ensure(
            status.ready_replicas == 1,
            format!("readyReplicas {}", status.ready_replicas),
        )?;
        let d = wait_for(&t.api::<Deployment>(), "r", "available", API_TIMEOUT, |d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or_default()
                == 1
        })
        .await?;
        ensure(d.spec.replicas == Some(1), "one replica")
    })
    .await;
}

#[tokio::test]
async fn a_local_mode_pod_runs_an_execution_through_its_sidecar() {
    let Some(c) = workload_cluster("a_local_mode_pod_runs_an_execution_through_its_sidecar").await
    else {
        return;
    };
    scenario(c, "local-exec", |t| async move {
        scripted_llm(&t).await?;
        let ar = local_runner(&t, "r").await?;
        let pod = runner_pod(&t, &ar).await?;
        apply_and_run(&t, &pod, "runner").await
    })
    .await;
}

#[tokio::test]
async fn a_cloud_mode_pod_runs_an_execution() {
    let Some(c) = workload_cluster("a_cloud_mode_pod_runs_an_execution").await else {
        return;
    };
    scenario(c, "cloud-exec", |t| async move {
        let stack = CloudStack::new();
        let e = Endpoints {
            backend: "http://stigmer-server:50051".into(),
            redis_host: "redis".into(),
            redis_port: 6379,
            daytona_api: "http://daytona:8080/api".into(),
            llm_base: "http://scripted-llm:8080/v1".into(),
        };
        tokio::try_join!(
            scripted_llm(&t),
            redis(&t),
            daytona(&t, &stack),
            control_plane(&t, &stack, &e),
        )?;
        for (name, data) in stack.runner_secrets() {
            let data: Vec<(&str, &str)> =
                data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            t.secret(&name, &data).await?;
        }
        t.agentrunner("r", stack.agentrunner_spec(&e)).await?;
        let ar = wait_for(
            &t.api::<AgentRunner>(),
            "r",
            "the cloud AgentRunner to be Ready",
            POD_TIMEOUT,
            has_condition("Ready", "True"),
        )
        .await?;
        let cp = deployment_pod(&t, "stigmer-server").await?;
        apply_and_run(&t, &cp, "stigmer-server").await?;
        let daytona_log =
            kubectl(&t.cluster, &["-n", &t.ns, "logs", "deploy/daytona"], None).await?;
        ensure(
            daytona_log.contains("/process/execute"),
            format!("the tool call did not run in the Daytona stand-in: {daytona_log}"),
        )?;
        // Deleting the busy runner pod drains it: the execution completes.
        let pod = runner_pod(&t, &ar).await?;
        drain_while_busy(&t, &cp, "stigmer-server", &pod).await?;
        wait_runner(&t, "r", "Ready again", has_condition("Ready", "True")).await?;
        Ok(())
    })
    .await;
}

/// The image of the runner (it carries `stigmer-server` and `stigmer` too): `E2E_RUNNER_IMAGE`,
/// else the operator's default.
fn runner_image(t: &TestNs) -> String {
    match &t.cluster.runner_image {
        Some((repo, tag)) => format!("{repo}:{tag}"),
        None => {
            let d = operator::config::OperatorConfig::default();
            format!("{}:{}", d.default_image_repository, d.default_image_tag)
        }
    }
}

/// A one-container Deployment and its Service, restricted like everything in the suite.
async fn service(
    t: &TestNs,
    name: &str,
    port: u16,
    container: Value,
    volumes: Value,
) -> Result<()> {
    let mut container = container;
    container["name"] = json!(name);
    container["ports"] = json!([{"containerPort": port}]);
    container["securityContext"] = restricted_container();
    t.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], "volumes": volumes},
            },
        },
    }))
    .await?;
    t.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
    }))
    .await?;
    wait_for(
        &t.api::<Deployment>(),
        name,
        &format!("{name} to be available"),
        POD_TIMEOUT,
        |d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or_default()
                >= 1
        },
    )
    .await
    .map(|_| ())
}

/// A real `redis-server` (`E2E_REDIS_IMAGE`), without persistence.
async fn redis(t: &TestNs) -> Result<()> {
    let image = std::env::var("E2E_REDIS_IMAGE").unwrap_or_else(|_| "redis:7-alpine".to_owned());
    service(
        t,
        "redis",
        6379,
        json!({
            "image": image,
            "command": ["redis-server", "--save", "", "--appendonly", "no",
                        "--protected-mode", "no"],
            "readinessProbe": {"tcpSocket": {"port": 6379}},
        }),
        json!([]),
    )
    .await
}

/// The Daytona stand-in (`E2E_PYTHON_IMAGE`), with its key from a Secret.
async fn daytona(t: &TestNs, stack: &CloudStack) -> Result<()> {
    let image =
        std::env::var("E2E_PYTHON_IMAGE").unwrap_or_else(|_| "python:3.12-alpine".to_owned());
    t.secret("daytona-standin", &[("api-key", &stack.daytona_key)])
        .await?;
    t.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "daytona-standin"},
        "data": {"daytona.py": DAYTONA_SCRIPT},
    }))
    .await?;
    service(
        t,
        "daytona",
        8080,
        json!({
            "image": image,
            "command": ["python3", "-u", "/script/daytona.py"],
            "env": [
                {"name": "DAYTONA_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "daytona-standin", "key": "api-key"}}},
                {"name": "STANDIN_ROOT", "value": "/sandboxes"},
            ],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            "volumeMounts": [{"name": "script", "mountPath": "/script"},
                             {"name": "sandboxes", "mountPath": "/sandboxes"}],
        }),
        json!([{"name": "script", "configMap": {"name": "daytona-standin"}},
               {"name": "sandboxes", "emptyDir": {}}]),
    )
    .await
}

/// The control plane in its Redis configuration (`stigmer-server` of the runner image),
/// verifying JWTs; `stigmer` in its container reaches it on localhost with the client key.
async fn control_plane(t: &TestNs, stack: &CloudStack, e: &Endpoints) -> Result<()> {
    let files = stack.control_plane_files();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    t.secret("control-plane", &files).await?;
    let mut env: Vec<Value> = stack
        .control_plane_env(e, "0.0.0.0:50051", "/data/stigmer", "/etc/stigmer-keys")
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    // For `kubectl exec ... stigmer`: the CLI's key and a writable home.
    env.push(json!({"name": "STIGMER_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "control-plane",
                                                   "key": e2e::cloud_stack::CLIENT_KEY_FILE}}}));
    env.push(json!({"name": "HOME", "value": "/data"}));
    service(
        t,
        "stigmer-server",
        50051,
        json!({
            "image": runner_image(t),
            "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/local/bin/stigmer-server"],
            "env": env,
            "readinessProbe": {"grpc": {"port": 50051}},
            "volumeMounts": [{"name": "keys", "mountPath": "/etc/stigmer-keys", "readOnly": true},
                             {"name": "data", "mountPath": "/data"}],
        }),
        json!([{"name": "keys", "secret": {"secretName": "control-plane"}},
               {"name": "data", "emptyDir": {}}]),
    )
    .await
}

/// The one running pod of the Deployment `name` (its pods carry `app=<name>`).
async fn deployment_pod(t: &TestNs, name: &str) -> Result<String> {
    let pods = t
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .doing("listing pods")?;
    pods.items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .ok_or_else(|| E2eError::Check(format!("no {name} pod")))
}

#[tokio::test]
async fn deleting_a_busy_runner_pod_drains_it() {
    let Some(c) = workload_cluster("deleting_a_busy_runner_pod_drains_it").await else {
        return;
    };
    scenario(c, "drain", |t| async move {
        scripted_llm(&t).await?;
        let ar = local_runner(&t, "r").await?;
        let pod = runner_pod(&t, &ar).await?;
        apply_agent(&t, &pod, "runner").await?;
        drain_while_busy(&t, &pod, "stigmer-server", &pod).await?;
        // A replacement pod takes over.
        wait_runner(&t, "r", "Ready again", has_condition("Ready", "True")).await?;
        Ok(())
    })
    .await;
}

/// Starts a "slow" execution (the scripted model asks for `sleep 20`) followed by `stigmer run`
/// in `cli_pod`/`cli_container`, waits until it is in progress, deletes `runner_pod` with its own
/// grace period (drain timeout + margin) and requires the execution to COMPLETE: `stigmer run`
/// exits 0 only then (3 if cancelled). The follower must run where it outlives the runner
/// container (the local sidecar, or the cloud control plane).
async fn drain_while_busy(
    t: &Arc<TestNs>,
    cli_pod: &str,
    cli_container: &str,
    runner_pod: &str,
) -> Result<()> {
    let follower = {
        let t = t.clone();
        let (pod, container) = (cli_pod.to_owned(), cli_container.to_owned());
        tokio::spawn(async move {
            stigmer(
                &t,
                &pod,
                &container,
                &["run", "--agent", "e2e", "slow"],
                None,
            )
            .await
        })
    };
    let busy = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let out = stigmer(
                t,
                cli_pod,
                cli_container,
                &["-o", "json", "execution", "list", "--phase", "in-progress"],
                None,
            )
            .await?;
            if out.contains("IN_PROGRESS") {
                return Ok::<(), E2eError>(());
            }
        }
    };
    tokio::time::timeout(API_TIMEOUT, busy)
        .await
        .map_err(|_| E2eError::Timeout(API_TIMEOUT, "an execution in progress".into()))??;
    t.api::<Pod>()
        .delete(runner_pod, &DeleteParams::default())
        .await
        .doing("deleting the busy runner pod")?;
    let followed = tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .map_err(|_| E2eError::Timeout(Duration::from_secs(120), "the drain".into()))?
        .map_err(|e| E2eError::Check(format!("follower task: {e}")))?;
    let out = followed?;
    ensure(
        out.contains("e2e-done"),
        format!("the execution did not complete: {out}"),
    )
}

/// Applies the e2e agent and runs it once with `stigmer` in `pod`/`container`; `stigmer run`
/// follows the execution and exits 0 only on COMPLETED.
async fn apply_and_run(t: &TestNs, pod: &str, container: &str) -> Result<()> {
    apply_agent(t, pod, container).await?;
    let out = stigmer(
        t,
        pod,
        container,
        &["run", "--agent", "e2e", "say ok"],
        None,
    )
    .await?;
    ensure(
        out.contains("e2e-done"),
        format!("the model's answer is missing: {out}"),
    )
}

async fn apply_agent(t: &TestNs, pod: &str, container: &str) -> Result<()> {
    stigmer(
        t,
        pod,
        container,
        &["agent", "apply", "-f", "-"],
        Some(AGENT_YAML),
    )
    .await
    .map(|_| ())
}
