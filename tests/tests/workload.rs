//! Workload-level e2e tests: they need nodes, the runner image (`E2E_RUNNER_IMAGE`, loaded
//! into the cluster) and `kubectl` for `exec`. Skipped unless `E2E_KUBECONFIG` and
//! `E2E_WORKLOAD=1` are set (scripts/e2e-kind sets both).
//!
//! The LLM is a scripted OpenAI-compatible server deployed in the test namespace (a short
//! Python program on the `python` image, `E2E_PYTHON_IMAGE`): it answers the first turn with
//! a `run_command` tool call and the turn after the tool result with the text `e2e-done`.

use std::time::Duration;

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

const LLM_SCRIPT: &str = r#"
import json, http.server

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        msgs = body.get("messages", [])
        user = " ".join(str(m.get("content")) for m in msgs if m.get("role") == "user")
        if msgs and msgs[-1].get("role") == "tool":
            delta, finish = {"role": "assistant", "content": "e2e-done"}, "stop"
        else:
            cmd = "sleep 20 && echo slept" if "slow" in user else "echo e2e-ok"
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "run_command", "arguments": json.dumps({"command": cmd})}}
            delta, finish = {"role": "assistant", "tool_calls": [call]}, "tool_calls"
        chunks = [
            {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        ]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for c in chunks:
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"#;

const AGENT_YAML: &str =
    "name: e2e\ninstructions: Run the command you are asked to.\ntools: [run_command]\n";

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
        stigmer(
            &t,
            &pod,
            "runner",
            &["agent", "apply", "-f", "-"],
            Some(AGENT_YAML),
        )
        .await?;
        // `stigmer run` follows the execution and exits 0 only on COMPLETED.
        let out = stigmer(
            &t,
            &pod,
            "runner",
            &["run", "--agent", "e2e", "say ok"],
            None,
        )
        .await?;
        ensure(
            out.contains("e2e-done"),
            format!("the model's answer is missing: {out}"),
        )
    })
    .await;
}

#[tokio::test]
async fn a_cloud_mode_pod_runs_an_execution() {
    // Written down so that it is not forgotten. Cloud mode runs end to end on loopback
    // (runner/tests/cloud_e2e.rs); in a cluster it still needs an in-cluster Redis, a
    // cloud-configured control plane and a Daytona stand-in deployed by this suite.
    e2e::skip(
        "a_cloud_mode_pod_runs_an_execution",
        "not written yet: needs an in-cluster Redis, a cloud-configured control plane and a \
         Daytona stand-in deployed by the suite",
    );
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
        stigmer(
            &t,
            &pod,
            "runner",
            &["agent", "apply", "-f", "-"],
            Some(AGENT_YAML),
        )
        .await?;
        // "slow": the scripted model asks for `sleep 20`. `stigmer run` follows the execution
        // from the control-plane sidecar, which outlives the runner container during the
        // pod's termination, and exits 0 only if the execution COMPLETED (3 if cancelled).
        let follower = {
            let t = t.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                stigmer(
                    &t,
                    &pod,
                    "stigmer-server",
                    &["run", "--agent", "e2e", "slow"],
                    None,
                )
                .await
            })
        };
        // Busy: an execution is in progress on the runner.
        let busy = async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let out = stigmer(
                    &t,
                    &pod,
                    "runner",
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

        // Delete the busy pod with its own grace period (drain timeout + margin).
        t.api::<Pod>()
            .delete(&pod, &DeleteParams::default())
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
        )?;
        // A replacement pod takes over.
        wait_runner(&t, "r", "Ready again", has_condition("Ready", "True")).await?;
        Ok(())
    })
    .await;
}
