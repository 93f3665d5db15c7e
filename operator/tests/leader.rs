//! Leader election against a small fake apiserver that stores one Lease: the operator
//! creates the Lease, takes it, and hands it back on release, using only calls the RBAC
//! table allows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use operator::leader::Election;
use operator::rbac;
use serde_json::{Value, json};

/// JSON merge: objects merge key by key, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

type Stored = Arc<Mutex<Option<Value>>>;

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

/// Serve Lease requests until the client goes away; returns what was called.
fn fake_apiserver(stored: Stored) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut calls = Vec::new();
        let mut version = 0u64;
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let (group, resource, verb) = rbac::classify(&method, &uri).expect("resource request");
            assert!(
                rbac::allows(&group, &resource, &verb),
                "RBAC table lacks {verb} on {group}/{resource}"
            );
            assert_eq!(
                (group.as_str(), resource.as_str()),
                ("coordination.k8s.io", "leases")
            );
            calls.push(verb.clone());
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("json")
            };
            let mut lease = stored.lock().expect("lock");
            let response = match (verb.as_str(), lease.as_mut()) {
                ("get", None) | ("patch", None) => not_found(),
                ("get", Some(l)) => respond(StatusCode::OK, l),
                ("create", _) => {
                    let mut l = body;
                    l["metadata"]["namespace"] = json!("ops");
                    *lease = Some(l.clone());
                    respond(StatusCode::CREATED, &l)
                }
                ("patch", Some(l)) => {
                    merge(l, &body);
                    version += 1;
                    l["metadata"]["resourceVersion"] = json!(version.to_string());
                    respond(StatusCode::OK, l)
                }
                (other, _) => panic!("unexpected verb {other}"),
            };
            send.send_response(response);
        }
        calls
    });
    (Client::new(service, "default"), task)
}

fn holder(stored: &Stored) -> Option<String> {
    let lease = stored.lock().expect("lock");
    lease
        .as_ref()?
        .pointer("/spec/holderIdentity")?
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn takes_the_lease_and_hands_it_back() {
    let stored: Stored = Arc::default();
    let (client, server) = fake_apiserver(stored.clone());

    let mut election = Election::start(client, "ops", "agentrunner-operator", "operator-a")
        .await
        .expect("joined");
    let acquired = tokio::time::timeout(Duration::from_secs(10), election.acquired()).await;
    assert_eq!(acquired, Ok(true), "became leader");
    assert!(election.is_leader());
    assert_eq!(holder(&stored).as_deref(), Some("operator-a"));
    let duration = stored
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|l| l.pointer("/spec/leaseDurationSeconds").cloned());
    assert_eq!(duration, Some(json!(15)));

    election.release().await;
    assert_eq!(
        holder(&stored),
        None,
        "released on shutdown so a standby can take over at once"
    );

    let calls = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("client dropped")
        .expect("join");
    assert!(calls.contains(&"create".to_owned()), "{calls:?}");
    assert!(calls.contains(&"patch".to_owned()), "{calls:?}");
}

#[tokio::test]
async fn waits_while_another_replica_holds_the_lease() {
    let renewed = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let stored: Stored = Arc::new(Mutex::new(Some(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "agentrunner-operator", "namespace": "ops", "resourceVersion": "1"},
        "spec": {"holderIdentity": "operator-b", "leaseDurationSeconds": 15,
                 "acquireTime": renewed, "renewTime": renewed}
    }))));
    let (client, _server) = fake_apiserver(stored.clone());
    let mut election = Election::start(client, "ops", "agentrunner-operator", "operator-a")
        .await
        .expect("joined");
    let acquired = tokio::time::timeout(Duration::from_secs(2), election.acquired()).await;
    assert!(
        acquired.is_err(),
        "must not lead while operator-b's lease is fresh"
    );
    assert!(!election.is_leader());
    assert_eq!(holder(&stored).as_deref(), Some("operator-b"));
}
