//! Reconcile against a mocked API server (`tower_test::mock::pair`): every request the
//! operator sends is matched, in order, against the exact method, path, query and body
//! the apiserver should receive, and must be allowed by the RBAC table. A request the test
//! does not expect fails the test; so does a missing one.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use operator::build;
use operator::caches::Caches;
use operator::config::OperatorConfig;
use operator::controller::{self, Context};
use operator::crd::{AgentRunner, AgentRunnerStatus};
use operator::metrics::Metrics;
use operator::{rbac, secrets, validate};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const NOW: i64 = 1_700_000_000;
const NOW_RFC3339: &str = "2023-11-14T22:13:20Z";
const APPLY: &str = "?&force=true&fieldManager=agentrunner-operator";

fn now() -> Timestamp {
    Timestamp::from_second(NOW).expect("valid time")
}

fn config() -> OperatorConfig {
    OperatorConfig {
        default_image_tag: "0.1.0".into(),
        ..Default::default()
    }
}

fn context(client: Client, metrics: Arc<Metrics>) -> Arc<Context> {
    let mut ctx = Context::new(client, config(), metrics, Some("operator-0".into()));
    ctx.clock = now;
    Arc::new(ctx)
}

/// The apiserver side of the mock.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Take the next request, check it, and answer with `respond(body)`.
    async fn expect(
        &mut self,
        method: &str,
        uri: &str,
        respond: impl FnOnce(Value) -> (StatusCode, Value),
    ) {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!("expected {method} {uri}, but no request came");
        };
        let actual_method = request.method().to_string();
        let actual_uri = request.uri().to_string();
        assert_eq!(
            (actual_method.as_str(), actual_uri.as_str()),
            (method, uri),
            "unexpected request"
        );
        let (group, resource, verb) = rbac::classify(method, uri).expect("a resource request");
        assert!(
            rbac::allows(&group, &resource, &verb),
            "RBAC table lacks {verb} on {group}/{resource}"
        );
        if method == "PATCH" && uri.contains("fieldManager=agentrunner-operator") {
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                content_type,
                Some("application/apply-patch+yaml"),
                "server-side apply"
            );
        }
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        let (status, answer) = respond(body);
        reply(send, status, &answer);
    }

    /// Expect a server-side apply whose body is exactly `expected`; answer with it, after
    /// `enrich` adds what the apiserver would (status, generation).
    async fn expect_apply(&mut self, uri: &str, expected: Value, enrich: impl FnOnce(&mut Value)) {
        self.expect("PATCH", &format!("{uri}{APPLY}"), |body| {
            assert_eq!(body, expected, "apply body for {uri}");
            let mut answer = body;
            enrich(&mut answer);
            (StatusCode::OK, answer)
        })
        .await;
    }

    /// After the scenario: the operator must have sent nothing else.
    /// The applies of one reconcile that gets through, in the operator's order: its
    /// ServiceAccount (unless the user names one), the ConfigMap, the metrics Service, the
    /// PodDisruptionBudget (with more than one replica) and the Deployment, answered as rolled
    /// out with `ready` pods.
    async fn expect_applies(&mut self, name: &str, want: &build::Desired, ready: i32) {
        let ns = "/api/v1/namespaces/agents";
        if let Some(sa) = &want.service_account {
            self.expect_apply(&format!("{ns}/serviceaccounts/{name}"), applied(sa), |_| {})
                .await;
        }
        self.expect_apply(
            &format!("{ns}/configmaps/{name}-config"),
            applied(&want.config_map),
            |_| {},
        )
        .await;
        self.expect_apply(
            &format!("{ns}/services/{name}-metrics"),
            applied(&want.service),
            |_| {},
        )
        .await;
        if let Some(pdb) = &want.pod_disruption_budget {
            self.expect_apply(
                &format!("/apis/policy/v1/namespaces/agents/poddisruptionbudgets/{name}"),
                applied(pdb),
                |_| {},
            )
            .await;
        }
        self.expect_apply(
            &format!("/apis/apps/v1/namespaces/agents/deployments/{name}"),
            applied(&want.deployment),
            rolled_out(ready),
        )
        .await;
    }

    async fn expect_nothing_more(mut self) {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        match next {
            Ok(None) => {}
            Ok(Some((r, _))) => panic!("unexpected extra request {} {}", r.method(), r.uri()),
            Err(_) => panic!("the client was not dropped"),
        }
    }
}

/// Run one reconcile; a reconcile that waits for an answer the script never gives sent a
/// request the test did not expect.
async fn reconcile(runner: AgentRunner, ctx: &Arc<Context>) -> Result<Action, operator::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        controller::reconcile(Arc::new(runner), ctx.clone()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("reconcile hung: it sent a request the scripted apiserver did not expect")
    })
}

fn reply(send: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let response = Response::builder()
        .status(status)
        .body(Body::from(bytes))
        .expect("response");
    send.send_response(response);
}

fn not_found(kind: &str, name: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": format!("{kind} \"{name}\" not found")}),
    )
}

fn mock() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// The objects the pipeline builds for `runner`, as JSON, computed without a client.
fn desired(runner: &AgentRunner, found: &BTreeMap<String, Secret>) -> build::Desired {
    let v = validate::validate(runner, &config()).expect("valid");
    build::build(&v, &secrets::resolve(runner, found).expect("secrets"))
}

/// The body of the server-side apply of `obj`: stamped with its hash.
fn applied<K: kube::Resource + serde::Serialize + Clone>(obj: &K) -> Value {
    to_json(&operator::apply::stamped(obj))
}

fn to_json<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).expect("json")
}

/// The apiserver fills status and generation into an applied Deployment.
fn rolled_out(replicas: i32) -> impl FnOnce(&mut Value) {
    move |d: &mut Value| {
        d["metadata"]["generation"] = json!(1);
        d["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                             "readyReplicas": replicas, "availableReplicas": replicas});
    }
}

/// The apiserver answers a status patch with the whole object.
fn stored(runner: &Value, patch: &Value) -> Value {
    let mut v = runner.clone();
    v["status"] = patch["status"].clone();
    v
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": NOW_RFC3339})
}

#[tokio::test]
async fn local_mode_applies_every_object_then_writes_status_once() {
    let runner = common::runner("local.yaml");
    let want = desired(&runner, &BTreeMap::new());
    let (client, mut server) = mock();
    let metrics = Arc::new(Metrics::new());
    let ctx = context(client, metrics.clone());

    let expected_status = json!({
        "apiVersion": "agentic.stigmer.ai/v1alpha1",
        "kind": "AgentRunner",
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "readyReplicas": 2,
            "updatedReplicas": 2,
            "selector": "app.kubernetes.io/instance=dev,app.kubernetes.io/name=agent-runner",
            "conditions": [
                condition("Ready", "True", "RunnersReady", "2/2 runner pods ready", 1),
                condition("Progressing", "False", "RolloutComplete", "the runner pods match the spec", 1),
                condition("Degraded", "False", "AsExpected", "no problems found", 1),
            ]
        }
    });

    let runner_json = to_json(&runner);
    let first = {
        let want = want.clone();
        let expected_status = expected_status.clone();
        tokio::spawn(async move {
            server.expect_applies("dev", &want, 2).await;
            let status_uri = format!(
                "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/dev/status{APPLY}"
            );
            server
                .expect("PATCH", &status_uri, |body| {
                    assert_eq!(body, expected_status, "status patch");
                    (StatusCode::OK, stored(&runner_json, &body))
                })
                .await;
            server
        })
    };
    // Earlier failures of this AgentRunner back off; the successful reconcile below resets it.
    let failed = || {
        controller::error_policy(
            Arc::new(runner.clone()),
            &operator::Error::MissingMetadata("namespace"),
            ctx.clone(),
        )
    };
    assert_eq!(failed(), Action::requeue(Duration::from_secs(1)));
    assert_eq!(failed(), Action::requeue(Duration::from_secs(2)));
    let action = reconcile(runner.clone(), &ctx).await.expect("reconciled");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        failed(),
        Action::requeue(Duration::from_secs(1)),
        "a success resets the backoff"
    );
    let mut server = first.await.expect("server");

    // Second reconcile, with the status the first one wrote: the same applies, no status write.
    let mut stored = runner.clone();
    stored.status = Some(
        serde_json::from_value::<AgentRunnerStatus>(expected_status["status"].clone())
            .expect("status"),
    );
    let second = tokio::spawn(async move {
        server.expect_applies("dev", &want, 2).await;
        server
    });
    reconcile(stored, &ctx).await.expect("reconciled");
    let server = second.await.expect("server");
    drop(ctx);
    server.expect_nothing_more().await;

    let text = metrics.encode();
    assert!(
        text.contains("agentrunner_operator_reconciles_total 2"),
        "{text}"
    );
    // The only failures counted are the three handed to the error policy above.
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reconcile_failures_total{"))
        .collect();
    assert_eq!(
        failures,
        ["agentrunner_operator_reconcile_failures_total{error=\"missing_metadata\"} 3"],
        "{text}"
    );
}

fn secret_json(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                json!(k8s_openapi::ByteString(v.as_bytes().to_vec())),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "agents"}, "data": data})
}

/// The cloud fixture's Secrets as the apiserver returns them (`data`, base64).
fn served_secrets() -> BTreeMap<String, Value> {
    common::secrets("cloud-secrets.yaml")
        .into_iter()
        .map(|(name, s)| {
            let pairs: Vec<(String, String)> = s
                .string_data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (name.clone(), secret_json(&name, &refs))
        })
        .collect()
}

#[tokio::test]
async fn cloud_mode_reads_secrets_applies_and_removes_the_stale_service_account() {
    let runner = common::runner("cloud.yaml");
    let served = served_secrets();
    let found: BTreeMap<String, Secret> = served
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_value(v.clone()).expect("secret"),
            )
        })
        .collect();
    let want = desired(&runner, &found);
    let (client, mut server) = mock();
    let ctx = context(client, Arc::new(Metrics::new()));

    let runner_json = to_json(&runner);
    let scenario = tokio::spawn(async move {
        for name in ["backend-ca", "llm", "redis", "runner-credentials"] {
            let secret = served[name].clone();
            server
                .expect(
                    "GET",
                    &format!("/api/v1/namespaces/agents/secrets/{name}"),
                    |_| (StatusCode::OK, secret),
                )
                .await;
        }
        server.expect_applies("prod", &want, 3).await;
        // The user now names their own ServiceAccount, so the one the operator made earlier goes.
        let selector = "labelSelector=app.kubernetes.io%2Finstance%3Dprod%2Capp.kubernetes.io%2Fmanaged-by%3Dagentrunner-operator";
        server
            .expect("GET", &format!("/api/v1/namespaces/agents/serviceaccounts?&{selector}"), |_| {
                let owned = json!({"metadata": {"name": "prod", "namespace": "agents",
                    "ownerReferences": [{"apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
                        "name": "prod", "uid": "5b0c2f1e-0000-4000-8000-000000000002", "controller": true}]}});
                let foreign = json!({"metadata": {"name": "someone-elses", "namespace": "agents"}});
                (StatusCode::OK, json!({"apiVersion": "v1", "kind": "ServiceAccountList", "metadata": {}, "items": [owned, foreign]}))
            })
            .await;
        server
            .expect(
                "DELETE",
                "/api/v1/namespaces/agents/serviceaccounts/prod?",
                |body| {
                    assert_eq!(body["propagationPolicy"], "Background");
                    (
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                },
            )
            .await;
        let status_uri = format!(
            "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/prod/status{APPLY}"
        );
        server
            .expect("PATCH", &status_uri, |body| {
                assert_eq!(body["status"]["observedGeneration"], 3);
                assert_eq!(body["status"]["readyReplicas"], 3);
                assert_eq!(body["status"]["conditions"][0]["reason"], "RunnersReady");
                (StatusCode::OK, stored(&runner_json, &body))
            })
            .await;
        server
    });
    reconcile(runner, &ctx).await.expect("reconciled");
    let server = scenario.await.expect("server");
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn missing_secret_degrades_warns_and_leaves_the_deployment_alone() {
    let runner = common::runner("cloud.yaml");
    let mut served = served_secrets();
    served.remove("runner-credentials");
    let (client, server) = mock();
    let metrics = Arc::new(Metrics::new());
    let ctx = context(client, metrics.clone());
    let message = "Secret \"runner-credentials\" not found (key \"daytona-api-key\" referenced by spec.cloud.daytona.apiKeySecretRef); \
                   Secret \"runner-credentials\" not found (key \"jwt\" referenced by spec.cloud.jwtSecretRef)";
    // Running pods from before the problem.
    let existing = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "prod", "namespace": "agents", "generation": 4},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "agent-runner"}}, "template": {}},
        "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}});

    let expected_status = json!({
        "apiVersion": "agentic.stigmer.ai/v1alpha1",
        "kind": "AgentRunner",
        "status": {
            "observedGeneration": 3,
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 3,
            "selector": "app.kubernetes.io/instance=prod,app.kubernetes.io/name=agent-runner",
            "conditions": [
                condition("Ready", "True", "RunnersReady", "3/3 runner pods ready", 3),
                condition("Progressing", "False", "SecretNotFound", "changes are not applied until the problem is fixed", 3),
                condition("Degraded", "True", "SecretNotFound", message, 3),
            ]
        }
    });

    let runner_json = to_json(&runner);
    let script = {
        let served = served.clone();
        let existing = existing.clone();
        let expected_status = expected_status.clone();
        move |mut server: ApiServer, with_event: bool| async move {
            for name in ["backend-ca", "llm", "redis", "runner-credentials"] {
                let uri = format!("/api/v1/namespaces/agents/secrets/{name}");
                match served.get(name) {
                    Some(secret) => {
                        server
                            .expect("GET", &uri, |_| (StatusCode::OK, secret.clone()))
                            .await
                    }
                    None => {
                        server
                            .expect("GET", &uri, |_| not_found("secrets", name))
                            .await
                    }
                }
            }
            let deployment = existing.clone();
            server
                .expect(
                    "GET",
                    "/apis/apps/v1/namespaces/agents/deployments/prod",
                    |_| (StatusCode::OK, deployment),
                )
                .await;
            if with_event {
                server
                    .expect(
                        "POST",
                        "/apis/events.k8s.io/v1/namespaces/agents/events?",
                        |body| {
                            assert_eq!(body["type"], "Warning");
                            assert_eq!(body["reason"], "SecretNotFound");
                            assert_eq!(body["note"], message);
                            assert_eq!(body["regarding"]["kind"], "AgentRunner");
                            assert_eq!(body["regarding"]["name"], "prod");
                            assert_eq!(body["reportingController"], "agentrunner-operator");
                            (StatusCode::CREATED, body)
                        },
                    )
                    .await;
                let status_uri = format!(
                    "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/prod/status{APPLY}"
                );
                server
                    .expect("PATCH", &status_uri, |body| {
                        assert_eq!(body, expected_status, "status patch");
                        (StatusCode::OK, stored(&runner_json, &body))
                    })
                    .await;
            }
            server
        }
    };

    let first = tokio::spawn(script.clone()(server, true));
    reconcile(runner.clone(), &ctx)
        .await
        .expect("blocked is not an error");
    let server = first.await.expect("server");

    // Nothing changed: same reads, no event, no status write, still no apply.
    let mut stored = runner;
    stored.status =
        Some(serde_json::from_value(expected_status["status"].clone()).expect("status"));
    let second = tokio::spawn(script(server, false));
    reconcile(stored, &ctx)
        .await
        .expect("blocked is not an error");
    let server = second.await.expect("server");
    drop(ctx);
    server.expect_nothing_more().await;

    let text = metrics.encode();
    assert!(
        text.contains(
            "agentrunner_operator_reconcile_failures_total{error=\"secret_not_found\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn apply_failure_is_reported_and_returned() {
    let mut runner = common::runner("local.yaml");
    runner.spec.replicas = 1;
    let want = desired(&runner, &BTreeMap::new());
    let (client, mut server) = mock();
    let ctx = context(client, Arc::new(Metrics::new()));
    let runner_json = to_json(&runner);
    let scenario = tokio::spawn(async move {
        server
            .expect_apply(
                "/api/v1/namespaces/agents/serviceaccounts/dev",
                applied(want.service_account.as_ref().expect("own ServiceAccount")),
                |_| {},
            )
            .await;
        server
            .expect("PATCH", &format!("/api/v1/namespaces/agents/configmaps/dev-config{APPLY}"), |_| {
                (
                    StatusCode::FORBIDDEN,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                           "message": "configmaps \"dev-config\" is forbidden"}),
                )
            })
            .await;
        server
            .expect(
                "GET",
                "/apis/apps/v1/namespaces/agents/deployments/dev",
                |_| not_found("deployments", "dev"),
            )
            .await;
        server
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/agents/events?",
                |body| {
                    assert_eq!(body["reason"], "ApplyFailed");
                    (StatusCode::CREATED, body)
                },
            )
            .await;
        let status_uri = format!(
            "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/dev/status{APPLY}"
        );
        server
            .expect("PATCH", &status_uri, |body| {
                let degraded = &body["status"]["conditions"][2];
                assert_eq!(degraded["reason"], "ApplyFailed");
                assert!(
                    degraded["message"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("applying ConfigMap agents/dev-config")
                );
                (StatusCode::OK, stored(&runner_json, &body))
            })
            .await;
        server
    });
    let runner = Arc::new(runner);
    let err = reconcile((*runner).clone(), &ctx)
        .await
        .expect_err("apply failed");
    assert_eq!(err.metric_label(), "apply");
    // The controller hands the error to the policy: retries of this AgentRunner back off
    // (a failed reconcile does not reset them); another AgentRunner starts at 1 s.
    let delays: Vec<Action> = (0..3)
        .map(|_| controller::error_policy(runner.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    let mut other = (*runner).clone();
    other.metadata.name = Some("other".into());
    assert_eq!(
        controller::error_policy(Arc::new(other), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    let server = scenario.await.expect("server");
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn single_replica_removes_the_owned_disruption_budget() {
    let mut runner = common::runner("local.yaml");
    runner.spec.replicas = 1;
    let want = desired(&runner, &BTreeMap::new());
    assert!(want.pod_disruption_budget.is_none());
    let runner_json = to_json(&runner);
    let (client, mut server) = mock();
    let ctx = context(client, Arc::new(Metrics::new()));
    let scenario = tokio::spawn(async move {
        server.expect_applies("dev", &want, 1).await;
        let selector = "labelSelector=app.kubernetes.io%2Finstance%3Ddev%2Capp.kubernetes.io%2Fmanaged-by%3Dagentrunner-operator";
        server
            .expect("GET", &format!("/apis/policy/v1/namespaces/agents/poddisruptionbudgets?&{selector}"), |_| {
                let owned = json!({"metadata": {"name": "dev", "namespace": "agents",
                    "ownerReferences": [{"apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
                        "name": "dev", "uid": "5b0c2f1e-0000-4000-8000-000000000001", "controller": true}]}});
                (StatusCode::OK, json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList", "metadata": {}, "items": [owned]}))
            })
            .await;
        // Already deleted by someone else: that is fine.
        server
            .expect(
                "DELETE",
                "/apis/policy/v1/namespaces/agents/poddisruptionbudgets/dev?",
                |_| not_found("poddisruptionbudgets", "dev"),
            )
            .await;
        let status_uri = format!(
            "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/dev/status{APPLY}"
        );
        server
            .expect("PATCH", &status_uri, |body| {
                (StatusCode::OK, stored(&runner_json, &body))
            })
            .await;
        server
    });
    reconcile(runner, &ctx).await.expect("reconciled");
    let server = scenario.await.expect("server");
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn start_up_fails_clearly_without_the_crd() {
    let (client, mut server) = mock();
    let check = tokio::spawn(async move { controller::check_crd(&client, None).await });
    server
        .expect("GET", "/apis/agentic.stigmer.ai/v1alpha1/agentrunners?&limit=1", |_| {
            (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                       "message": "the server could not find the requested resource"}),
            )
        })
        .await;
    let message = check.await.expect("join").expect_err("missing CRD");
    assert!(
        message
            .starts_with("the AgentRunner CRD (agentrunners.agentic.stigmer.ai) is not installed"),
        "{message}"
    );

    let (client, mut server) = mock();
    let check = tokio::spawn(async move { controller::check_crd(&client, Some("agents")).await });
    server
        .expect("GET", "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners?&limit=1", |_| {
            (StatusCode::OK, json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": []}))
        })
        .await;
    assert_eq!(check.await.expect("join"), Ok(()));
}

/// Watch caches filled by hand, as the controller's watches would fill them.
struct Stores {
    // Kept so that the Secret store stays as the controller would keep it.
    _secrets: Writer<Secret>,
    deployments: Writer<Deployment>,
    config_maps: Writer<ConfigMap>,
    services: Writer<Service>,
    service_accounts: Writer<ServiceAccount>,
    pdbs: Writer<PodDisruptionBudget>,
    claims: Writer<PersistentVolumeClaim>,
}

/// A writer whose store has finished its first LIST with `objects`.
fn listed<K>(objects: Vec<K>) -> (Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (reader, writer)
}

fn cached_context(
    client: Client,
    secrets: Vec<Secret>,
    service_accounts: Vec<ServiceAccount>,
) -> (Arc<Context>, Stores) {
    let (s, secrets) = listed(secrets);
    let (d, deployments) = listed(Vec::new());
    let (c, config_maps) = listed(Vec::new());
    let (v, services) = listed(Vec::new());
    let (a, service_accounts) = listed(service_accounts);
    let (p, pdbs) = listed(Vec::new());
    let (w, claims) = listed(Vec::new());
    let ctx = context(client, Arc::new(Metrics::new()));
    ctx.set_caches(Some(Caches {
        secrets: s,
        deployments: d,
        config_maps: c,
        services: v,
        service_accounts: a,
        pod_disruption_budgets: p,
        workspace_claims: w,
    }));
    let stores = Stores {
        _secrets: secrets,
        deployments,
        config_maps,
        services,
        service_accounts,
        pdbs,
        claims,
    };
    (ctx, stores)
}

impl Stores {
    /// What the watches would show after the operator applied `want`, rolled out.
    fn applied(&mut self, want: &build::Desired, ready: i32) {
        use operator::apply::stamped;
        self.config_maps
            .apply_watcher_event(&watcher::Event::Apply(stamped(&want.config_map)));
        self.services
            .apply_watcher_event(&watcher::Event::Apply(stamped(&want.service)));
        if let Some(sa) = &want.service_account {
            self.service_accounts
                .apply_watcher_event(&watcher::Event::Apply(stamped(sa)));
        }
        if let Some(pdb) = &want.pod_disruption_budget {
            self.pdbs
                .apply_watcher_event(&watcher::Event::Apply(stamped(pdb)));
        }
        if let Some(pvc) = &want.workspace_claim {
            self.claims
                .apply_watcher_event(&watcher::Event::Apply(stamped(pvc)));
        }
        let mut deployment = applied(&want.deployment);
        rolled_out(ready)(&mut deployment);
        self.deployments.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(deployment).expect("deployment"),
        ));
    }
}

/// The status the operator wrote, answered like the apiserver, and handed back.
async fn expect_status(server: &mut ApiServer, name: &str, runner: &Value) -> AgentRunnerStatus {
    let uri = format!(
        "/apis/agentic.stigmer.ai/v1alpha1/namespaces/agents/agentrunners/{name}/status{APPLY}"
    );
    let mut written = Value::Null;
    server
        .expect("PATCH", &uri, |body| {
            written = body["status"].clone();
            (StatusCode::OK, stored(runner, &body))
        })
        .await;
    serde_json::from_value(written).expect("status")
}

#[tokio::test]
async fn with_watch_caches_an_unchanged_runner_sends_no_request_and_a_change_applies() {
    let mut runner = common::runner("cloud.yaml");
    let served = served_secrets();
    let found: BTreeMap<String, Secret> = served
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_value(v.clone()).expect("secret"),
            )
        })
        .collect();
    let want = desired(&runner, &found);
    assert!(want.service_account.is_none(), "the user names one");
    // The ServiceAccount the operator made before the user named their own, and a user's.
    let stale: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "prod", "namespace": "agents",
        "labels": build::common_labels("prod"),
        "ownerReferences": [{"apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
            "name": "prod", "uid": "5b0c2f1e-0000-4000-8000-000000000002", "controller": true}]}}))
        .expect("sa");
    let foreign: ServiceAccount = serde_json::from_value(
        json!({"metadata": {"name": "someone-elses", "namespace": "agents", "labels": build::common_labels("prod")}}),
    )
    .expect("sa");
    let (client, mut server) = mock();
    let (ctx, mut stores) = cached_context(
        client,
        found.values().cloned().collect(),
        vec![stale.clone(), foreign],
    );

    // First reconcile: Secrets come from the cache (no GET), everything is applied, and
    // the stale ServiceAccount found in the cache (no LIST) is deleted.
    let runner_json = to_json(&runner);
    let first = {
        let want = want.clone();
        let runner_json = runner_json.clone();
        tokio::spawn(async move {
            server.expect_applies("prod", &want, 3).await;
            server
                .expect(
                    "DELETE",
                    "/api/v1/namespaces/agents/serviceaccounts/prod?",
                    |_| {
                        (
                            StatusCode::OK,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                        )
                    },
                )
                .await;
            let status = expect_status(&mut server, "prod", &runner_json).await;
            (server, status)
        })
    };
    reconcile(runner.clone(), &ctx).await.expect("reconciled");
    let (mut server, status) = first.await.expect("server");
    stores.applied(&want, 3);
    stores
        .service_accounts
        .apply_watcher_event(&watcher::Event::Delete(stale));
    runner.status = Some(status);

    // Resync of the unchanged AgentRunner: not a single request.
    let quiet = tokio::time::timeout(Duration::from_millis(300), server.0.next_request());
    let (action, next) = tokio::join!(reconcile(runner.clone(), &ctx), quiet);
    assert_eq!(
        action.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    if let Ok(Some((request, _))) = next {
        panic!(
            "an unchanged AgentRunner sent {} {}",
            request.method(),
            request.uri()
        );
    }

    // A changed spec applies what it changes, and only that.
    runner.spec.replicas = 4;
    let changed = desired(&runner, &found);
    let scenario = {
        let runner_json = to_json(&runner);
        tokio::spawn(async move {
            let pdb = changed.pod_disruption_budget.as_ref().expect("pdb");
            if applied(pdb) != applied(want.pod_disruption_budget.as_ref().expect("pdb")) {
                server
                    .expect_apply(
                        "/apis/policy/v1/namespaces/agents/poddisruptionbudgets/prod",
                        applied(pdb),
                        |_| {},
                    )
                    .await;
            }
            assert_ne!(applied(&changed.deployment), applied(&want.deployment));
            server
                .expect_apply(
                    "/apis/apps/v1/namespaces/agents/deployments/prod",
                    applied(&changed.deployment),
                    rolled_out(4),
                )
                .await;
            let status = expect_status(&mut server, "prod", &runner_json).await;
            assert_eq!(status.ready_replicas, 4);
            server
        })
    };
    reconcile(runner, &ctx).await.expect("reconciled");
    let server = scenario.await.expect("server");
    drop(ctx);
    drop(stores);
    server.expect_nothing_more().await;
}
