//! What the operator owns in an object, as a value to compare before and after an operator
//! restart.
//!
//! On a real cluster other writers keep changing the operator's objects: kube-controller-manager
//! updates a Deployment's status (and so its resourceVersion) as ReplicaSets and pods come and
//! go, sets the `deployment.kubernetes.io/revision` annotation, and the AgentRunner's status
//! follows the Deployment's. resourceVersions therefore change without the operator doing
//! anything. What the operator itself writes is compared instead:
//!
//! - the object's content without `status` and the server's bookkeeping (`resourceVersion`,
//!   `managedFields`): a changed value the operator applies (a label, a ConfigMap entry, the
//!   pod template) differs here; a Deployment spec change also bumps `metadata.generation`,
//!   which is part of the content;
//! - the operator's own `managedFields` entries (operation, apiVersion, subresource,
//!   `fieldsV1`), without `time`: an apply that adds or drops a field changes `fieldsV1`, and
//!   an apply under another operation or API version changes the entry. `time` is left out
//!   because it says when the operator last changed the object, not what it owns, and a
//!   content change is caught above anyway;
//! - for the AgentRunner (which the operator never writes but its status): `spec`,
//!   `metadata.generation` and each condition's `lastTransitionTime` and `observedGeneration`,
//!   which a restarted operator that recomputed conditions from scratch would reset, while the
//!   counts and the status field set follow the Deployment and are left out.

use serde_json::{Map, Value};

/// Annotations other controllers write on the operator's objects.
const FOREIGN_ANNOTATIONS: &[&str] = &["deployment.kubernetes.io/revision"];

/// The operator's `managedFields` entries of `obj`, without `time`.
pub fn manager_entries(obj: &Value, manager: &str, with_status: bool) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == manager)
        .filter(|e| with_status || e["subresource"] != "status")
        .map(|e| {
            let mut e = e.clone();
            if let Some(m) = e.as_object_mut() {
                m.remove("time");
            }
            e
        })
        .collect()
}

/// What `manager` owns in an object it creates (a Deployment, ConfigMap, Service, ...).
pub fn owned_object(obj: &Value, manager: &str) -> Value {
    let mut content = obj.clone();
    if let Some(o) = content.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = content["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for key in FOREIGN_ANNOTATIONS {
                annotations.remove(*key);
            }
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    let mut out = Map::new();
    out.insert("content".into(), content);
    out.insert(
        "managedFields".into(),
        Value::Array(manager_entries(obj, manager, true)),
    );
    Value::Object(out)
}

/// What `manager` controls of an AgentRunner: the spec and generation it reconciles to, its
/// non-status managedFields (none: it never writes the spec), and the conditions' transition
/// times and observed generations.
pub fn owned_runner(obj: &Value, manager: &str) -> Value {
    let conditions: Vec<Value> = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            serde_json::json!({
                "type": c["type"],
                "lastTransitionTime": c["lastTransitionTime"],
                "observedGeneration": c["observedGeneration"],
            })
        })
        .collect();
    serde_json::json!({
        "generation": obj["metadata"]["generation"],
        "spec": obj["spec"],
        "managedFields": manager_entries(obj, manager, false),
        "conditions": conditions,
    })
}

/// The keys whose values differ between two maps of snapshots, for the failure message.
pub fn differences(
    before: &std::collections::BTreeMap<String, Value>,
    after: &std::collections::BTreeMap<String, Value>,
) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            format!(
                "{k}: before {}, after {}",
                before.get(k).unwrap_or(&Value::Null),
                after.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OP: &str = "agentrunner-operator";

    /// A named change to an object.
    type Rewrite = (&'static str, fn(&mut Value));

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "r", "generation": 1, "resourceVersion": "100",
                "labels": {"app.kubernetes.io/instance": "r"},
                "annotations": {"deployment.kubernetes.io/revision": "1"},
                "managedFields": [
                    {"manager": OP, "operation": "Apply", "apiVersion": "apps/v1",
                     "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/instance": {}}},
                                  "f:spec": {"f:replicas": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update",
                     "apiVersion": "apps/v1", "subresource": "status",
                     "time": "2026-01-01T00:00:01Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:replicas": {}}}},
                ],
            },
            "spec": {"replicas": 3},
            "status": {"replicas": 0, "observedGeneration": 1},
        })
    }

    fn runner() -> Value {
        json!({
            "metadata": {"name": "r", "generation": 1, "resourceVersion": "7",
                "managedFields": [
                    {"manager": "agentrunner-e2e", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
                    {"manager": OP, "operation": "Apply", "subresource": "status",
                     "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:status": {"f:replicas": {}}}},
                ]},
            "spec": {"mode": "cloud", "replicas": 3},
            "status": {"replicas": 0, "observedGeneration": 1, "conditions": [
                {"type": "Ready", "status": "False", "reason": "RunnersNotReady",
                 "message": "0/3", "lastTransitionTime": "2026-01-01T00:00:00Z",
                 "observedGeneration": 1},
            ]},
        })
    }

    /// What the cluster changes on its own must not count as the operator changing anything.
    #[test]
    fn other_writers_and_bookkeeping_are_ignored() {
        let before = deployment();
        let mut after = before.clone();
        after["metadata"]["resourceVersion"] = json!("250");
        after["status"] = json!({"replicas": 3, "unavailableReplicas": 3, "observedGeneration": 1});
        after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("2");
        after["metadata"]["managedFields"][1]["time"] = json!("2026-01-01T00:05:00Z");
        after["metadata"]["managedFields"][1]["fieldsV1"] =
            json!({"f:status": {"f:replicas": {}, "f:unavailableReplicas": {}}});
        // The operator's entry time alone (a no-op apply that still stamped it) is not a change.
        after["metadata"]["managedFields"][0]["time"] = json!("2026-01-01T00:05:00Z");
        assert_eq!(owned_object(&before, OP), owned_object(&after, OP));

        let r = runner();
        let mut r2 = r.clone();
        r2["metadata"]["resourceVersion"] = json!("9");
        r2["status"]["replicas"] = json!(3);
        r2["status"]["conditions"][0]["message"] = json!("0/3 runner pods ready");
        r2["metadata"]["managedFields"][1]["time"] = json!("2026-01-01T00:05:00Z");
        r2["metadata"]["managedFields"][1]["fieldsV1"] =
            json!({"f:status": {"f:replicas": {}, "f:readyReplicas": {}}});
        assert_eq!(owned_runner(&r, OP), owned_runner(&r2, OP));
    }

    /// Each way the operator could rewrite its objects on restart is seen.
    #[test]
    fn every_operator_rewrite_is_seen() {
        let before = owned_object(&deployment(), OP);
        let rewrites: Vec<Rewrite> = vec![
            ("a changed label value", |d| {
                d["metadata"]["labels"]["app.kubernetes.io/instance"] = json!("other")
            }),
            ("a spec change (new generation)", |d| {
                d["spec"]["replicas"] = json!(2);
                d["metadata"]["generation"] = json!(2);
            }),
            ("a generation bump alone", |d| {
                d["metadata"]["generation"] = json!(2)
            }),
            ("an operator annotation", |d| {
                d["metadata"]["annotations"]["agentic.stigmer.ai/x"] = json!("1")
            }),
            ("a field added to the operator's set", |d| {
                d["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:paused"] = json!({})
            }),
            ("an apply under another API version", |d| {
                d["metadata"]["managedFields"][0]["apiVersion"] = json!("apps/v2")
            }),
            ("an update instead of an apply", |d| {
                d["metadata"]["managedFields"][0]["operation"] = json!("Update")
            }),
        ];
        for (what, rewrite) in rewrites {
            let mut d = deployment();
            rewrite(&mut d);
            assert_ne!(before, owned_object(&d, OP), "{what} went unnoticed");
        }

        let before = owned_runner(&runner(), OP);
        let rewrites: Vec<Rewrite> = vec![
            ("a reset transition time", |r| {
                r["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:09:00Z")
            }),
            ("another observed generation", |r| {
                r["status"]["conditions"][0]["observedGeneration"] = json!(2)
            }),
            ("a lost condition", |r| {
                r["status"]["conditions"] = json!([])
            }),
            ("a spec write", |r| {
                r["spec"]["replicas"] = json!(1);
                r["metadata"]["generation"] = json!(2);
            }),
            ("a spec entry of the operator", |r| {
                if let Some(a) = r["metadata"]["managedFields"].as_array_mut() {
                    a.push(
                        json!({"manager": OP, "operation": "Apply", "fieldsV1": {"f:spec": {}}}),
                    );
                }
            }),
        ];
        for (what, rewrite) in rewrites {
            let mut r = runner();
            rewrite(&mut r);
            assert_ne!(before, owned_runner(&r, OP), "{what} went unnoticed");
        }
    }

    #[test]
    fn differences_name_the_changed_objects() {
        let a = std::collections::BTreeMap::from([
            ("Deployment".to_owned(), json!(1)),
            ("Service".to_owned(), json!(1)),
        ]);
        let mut b = a.clone();
        b.insert("Deployment".into(), json!(2));
        let d = differences(&a, &b);
        assert_eq!(d, vec!["Deployment: before 1, after 2".to_owned()]);
        assert!(differences(&a, &a).is_empty());
    }
}
