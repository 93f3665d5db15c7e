//! The CRD's CEL rules and bounds, evaluated locally the way the apiserver evaluates them at
//! admission (schema defaults first, then `x-kubernetes-validations`). Each rule is shown
//! accepting a good object and refusing a bad one with its message.

use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use operator::crd::AgentRunner;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = AgentRunner::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn object(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "agentic.stigmer.ai/v1alpha1",
        "kind": "AgentRunner",
        "metadata": {"name": name, "namespace": "agents"},
        "spec": spec,
    })
}

/// Messages of the rules the object breaks.
fn broken(name: &str, spec: Value) -> Vec<String> {
    match Validator::new().validate(&schema(), &object(name, spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn cloud() -> Value {
    json!({
        "mode": "cloud",
        "cloud": {
            "backend": {"endpoint": "https://api.stigmer.ai:443"},
            "jwtSecretRef": {"name": "runner-jwt", "key": "token"},
            "redis": {"host": "redis", "passwordSecretRef": {"name": "redis", "key": "password"}},
            "daytona": {"apiKeySecretRef": {"name": "daytona", "key": "api-key"}}
        }
    })
}

fn without(mut v: Value, pointer: &str, key: &str) -> Value {
    if let Some(obj) = v.pointer_mut(pointer).and_then(Value::as_object_mut) {
        obj.remove(key);
    }
    v
}

fn with(mut v: Value, pointer: &str, key: &str, value: Value) -> Value {
    if let Some(obj) = v.pointer_mut(pointer).and_then(Value::as_object_mut) {
        obj.insert(key.to_owned(), value);
    }
    v
}

fn assert_refused(messages: Vec<String>, expected: &str) {
    assert!(
        messages.iter().any(|m| m == expected),
        "expected refusal {expected:?}, got {messages:?}"
    );
}

#[test]
fn every_rule_compiles() {
    let compiled = compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
}

#[test]
fn minimal_local_and_full_cloud_are_accepted() {
    assert_eq!(
        broken("demo", json!({"mode": "local"})),
        Vec::<String>::new()
    );
    assert_eq!(broken("demo", cloud()), Vec::<String>::new());
}

#[test]
fn name_length_and_shape() {
    let long = "a".repeat(53);
    assert_eq!(
        broken(&"a".repeat(52), json!({"mode": "local"})),
        Vec::<String>::new()
    );
    assert_refused(
        broken(&long, json!({"mode": "local"})),
        "metadata.name must be at most 52 characters: the operator derives object names such as <name>-workspace from it",
    );
    assert_refused(
        broken("1demo", json!({"mode": "local"})),
        "metadata.name must start with a letter and contain only lowercase letters, digits and '-', because it names a Service",
    );
}

#[test]
fn cloud_requires_each_connection() {
    let cases = [
        ("backend", "cloud mode requires spec.cloud.backend.endpoint"),
        (
            "jwtSecretRef",
            "cloud mode requires spec.cloud.jwtSecretRef, the Secret key holding the runner's JWT",
        ),
        ("redis", "cloud mode requires spec.cloud.redis"),
        ("daytona", "cloud mode requires spec.cloud.daytona"),
    ];
    for (field, message) in cases {
        let messages = broken("demo", without(cloud(), "/cloud", field));
        assert_eq!(messages, vec![message.to_owned()], "without {field}");
    }
    let messages = broken("demo", json!({"mode": "cloud"}));
    assert_eq!(messages.len(), 4, "{messages:?}");
}

#[test]
fn mode_sections_match_the_mode() {
    let local_with_cloud = with(
        json!({"mode": "local"}),
        "",
        "cloud",
        cloud()["cloud"].clone(),
    );
    assert_refused(
        broken("demo", local_with_cloud),
        "spec.cloud is only allowed when spec.mode is cloud",
    );
    let cloud_with_local = with(cloud(), "", "local", json!({}));
    assert_refused(
        broken("demo", cloud_with_local),
        "spec.local is only allowed when spec.mode is local",
    );
}

#[test]
fn claim_backed_local_workspace_is_single_replica() {
    let spec = |replicas: i64| {
        json!({"mode": "local", "replicas": replicas,
               "local": {"workspace": {"persistentVolumeClaim": {"claimName": "data"}}}})
    };
    assert_eq!(broken("demo", spec(1)), Vec::<String>::new());
    assert_refused(
        broken("demo", spec(2)),
        "a local-mode AgentRunner with a persistentVolumeClaim workspace runs at most 1 replica: its SQLite store cannot be shared between pods",
    );
    // emptyDir workspaces scale freely.
    assert_eq!(
        broken(
            "demo",
            json!({"mode": "local", "replicas": 5, "local": {"workspace": {"emptyDir": {}}}})
        ),
        Vec::<String>::new()
    );
}

#[test]
fn backend_endpoint_needs_a_scheme() {
    assert_eq!(
        broken(
            "demo",
            with(
                cloud(),
                "/cloud/backend",
                "endpoint",
                json!("http://backend:8080")
            )
        ),
        Vec::<String>::new()
    );
    assert_refused(
        broken(
            "demo",
            with(
                cloud(),
                "/cloud/backend",
                "endpoint",
                json!("api.stigmer.ai:443"),
            ),
        ),
        "backend.endpoint must start with https:// (or http:// for a plaintext backend)",
    );
}

#[test]
fn redis_rules() {
    let url = json!({"urlSecretRef": {"name": "redis", "key": "url"}});
    assert_eq!(
        broken("demo", with(cloud(), "/cloud", "redis", url)),
        Vec::<String>::new()
    );
    assert_refused(
        broken("demo", with(cloud(), "/cloud", "redis", json!({}))),
        "set exactly one of redis.host or redis.urlSecretRef",
    );
    let both = json!({"host": "r", "urlSecretRef": {"name": "redis", "key": "url"}});
    assert_refused(
        broken("demo", with(cloud(), "/cloud", "redis", both)),
        "set exactly one of redis.host or redis.urlSecretRef",
    );
    let password_with_url = json!({"urlSecretRef": {"name": "redis", "key": "url"},
                                   "passwordSecretRef": {"name": "redis", "key": "password"}});
    assert_refused(
        broken("demo", with(cloud(), "/cloud", "redis", password_with_url)),
        "redis.passwordSecretRef goes with redis.host; with redis.urlSecretRef put the password in the URL",
    );
    let port_with_url = json!({"urlSecretRef": {"name": "redis", "key": "url"}, "port": 6380});
    assert_refused(
        broken("demo", with(cloud(), "/cloud", "redis", port_with_url)),
        "redis.port goes with redis.host",
    );
    let ca = json!({"name": "redis-ca", "key": "ca.crt"});
    for fine in [
        json!({"host": "r", "tls": true, "caSecretRef": ca}),
        json!({"host": "r", "tls": true}),
        json!({"urlSecretRef": {"name": "redis", "key": "url"}, "caSecretRef": ca}),
    ] {
        assert_eq!(
            broken("demo", with(cloud(), "/cloud", "redis", fine.clone())),
            Vec::<String>::new(),
            "{fine}"
        );
    }
    assert_refused(
        broken(
            "demo",
            with(
                cloud(),
                "/cloud",
                "redis",
                json!({"urlSecretRef": {"name": "redis", "key": "url"}, "tls": true}),
            ),
        ),
        "redis.tls goes with redis.host; a rediss:// URL in redis.urlSecretRef is TLS by itself",
    );
    for no_tls in [
        json!({"host": "r", "caSecretRef": ca}),
        json!({"host": "r", "tls": false, "caSecretRef": ca}),
    ] {
        assert_refused(
            broken("demo", with(cloud(), "/cloud", "redis", no_tls)),
            "redis.caSecretRef needs TLS: set redis.tls: true (or use a rediss:// URL in redis.urlSecretRef)",
        );
    }
}

#[test]
fn llm_key_is_required_for_hosted_providers() {
    let llm = |v: Value| with(json!({"mode": "local"}), "", "llm", v);
    assert_eq!(
        broken(
            "demo",
            llm(json!({"provider": "ollama", "model": "qwen2.5-coder:7b"}))
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        broken(
            "demo",
            llm(json!({"provider": "anthropic", "apiKeySecretRef": {"name": "llm", "key": "k"}}))
        ),
        Vec::<String>::new()
    );
    assert_refused(
        broken("demo", llm(json!({"provider": "openai"}))),
        "llm.apiKeySecretRef is required for the anthropic and openai providers",
    );
}

#[test]
fn workspace_rules() {
    let ws = |v: Value| json!({"mode": "local", "local": {"workspace": v}});
    assert_refused(
        broken(
            "demo",
            ws(json!({"emptyDir": {}, "persistentVolumeClaim": {"claimName": "x"}})),
        ),
        "set at most one of workspace.emptyDir or workspace.persistentVolumeClaim",
    );
    assert_eq!(
        broken(
            "demo",
            ws(json!({"persistentVolumeClaim": {"size": "20Gi", "storageClassName": "fast"}}))
        ),
        Vec::<String>::new()
    );
    assert_refused(
        broken("demo", ws(json!({"persistentVolumeClaim": {}}))),
        "set exactly one of persistentVolumeClaim.claimName or persistentVolumeClaim.size",
    );
    assert_refused(
        broken(
            "demo",
            ws(json!({"persistentVolumeClaim": {"claimName": "x", "size": "1Gi"}})),
        ),
        "set exactly one of persistentVolumeClaim.claimName or persistentVolumeClaim.size",
    );
    assert_refused(
        broken(
            "demo",
            ws(json!({"persistentVolumeClaim": {"claimName": "x", "storageClassName": "fast"}})),
        ),
        "persistentVolumeClaim.storageClassName applies only with persistentVolumeClaim.size",
    );
}

#[test]
fn quantities_in_our_fields_are_checked_at_admission() {
    let pvc = |size: Value| {
        json!({"mode": "local",
               "local": {"workspace": {"persistentVolumeClaim": {"size": size}}}})
    };
    let empty_dir = |limit: Value| json!({"mode": "local", "local": {"workspace": {"emptyDir": {"sizeLimit": limit}}}});
    for good in [
        json!("20Gi"),
        json!("500M"),
        json!("1.5Ti"),
        json!("1e9"),
        json!("+2G"),
        json!(1_073_741_824),
    ] {
        assert_eq!(
            broken("demo", pvc(good.clone())),
            Vec::<String>::new(),
            "{good}"
        );
        assert_eq!(
            broken("demo", empty_dir(good.clone())),
            Vec::<String>::new(),
            "{good}"
        );
    }
    let size_message = operator::crd::PVC_SIZE_MESSAGE;
    let limit_message = operator::crd::SIZE_LIMIT_MESSAGE;
    for bad in [
        json!("ten gigs"),
        json!("10GB"),
        json!("1.5.5Gi"),
        json!("Gi"),
        json!(""),
        json!("-1Gi"),
        json!(-5),
    ] {
        assert_eq!(
            broken("demo", pvc(bad.clone())),
            vec![size_message.to_owned()],
            "{bad}"
        );
        assert_eq!(
            broken("demo", empty_dir(bad.clone())),
            vec![limit_message.to_owned()],
            "{bad}"
        );
    }
    // A claim of zero bytes is refused; an emptyDir limited to zero is a valid (if odd) choice.
    for zero in [json!("0"), json!("0Gi"), json!(0)] {
        assert_eq!(
            broken("demo", pvc(zero.clone())),
            vec![size_message.to_owned()],
            "{zero}"
        );
        assert_eq!(
            broken("demo", empty_dir(zero.clone())),
            Vec::<String>::new(),
            "{zero}"
        );
    }
}

/// Embedded Kubernetes types (containers, volumes, resource requirements) keep the schema
/// k8s-openapi gives them: their required fields and int-or-string quantities. Their
/// quantities are checked by the apiserver when the operator applies the Deployment, and
/// first by the operator's own validation (`validate`), which names the field.
#[test]
fn embedded_kubernetes_types_keep_their_schema() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    let quantity_map = |resources: &Value| {
        for kind in ["limits", "requests"] {
            let value = &resources["properties"][kind]["additionalProperties"];
            assert_eq!(value["x-kubernetes-int-or-string"], json!(true), "{kind}");
        }
    };
    quantity_map(&spec["runner"]["properties"]["resources"]);
    quantity_map(&spec["local"]["properties"]["controlPlane"]["properties"]["resources"]);
    let pod = &spec["pod"]["properties"];
    assert_eq!(pod["sidecars"]["items"]["required"], json!(["name"]));
    quantity_map(&pod["sidecars"]["items"]["properties"]["resources"]);
    assert_eq!(pod["volumes"]["items"]["required"], json!(["name"]));
    assert_eq!(
        pod["volumes"]["items"]["properties"]["emptyDir"]["properties"]["sizeLimit"]["x-kubernetes-int-or-string"],
        json!(true)
    );
    assert_eq!(
        pod["tolerations"]["items"]["properties"]["tolerationSeconds"]["format"],
        json!("int64")
    );
}

/// Bounds are plain OpenAPI (`minimum`/`maximum`), which the apiserver enforces before CEL.
#[test]
fn bounds_are_in_the_schema() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    let bound = |v: &Value| (v["minimum"].as_f64(), v["maximum"].as_f64());
    assert_eq!(bound(&spec["replicas"]), (Some(0.0), Some(1000.0)));
    assert_eq!(spec["replicas"]["default"], json!(1));
    let runner = &spec["runner"]["properties"];
    assert_eq!(bound(&runner["maxConcurrency"]), (Some(1.0), Some(256.0)));
    assert_eq!(
        bound(&runner["drainTimeoutSeconds"]),
        (Some(1.0), Some(86400.0))
    );
    assert_eq!(runner["extraEnv"]["maxItems"], json!(64));
    let llm = &spec["llm"]["properties"];
    assert_eq!(bound(&llm["temperature"]), (Some(0.0), Some(2.0)));
    assert_eq!(bound(&llm["maxTokens"]), (Some(1.0), Some(1_000_000.0)));
    let redis = &spec["cloud"]["properties"]["redis"]["properties"];
    assert_eq!(bound(&redis["port"]), (Some(1.0), Some(65535.0)));
    assert_eq!(spec["mode"]["enum"], json!(["local", "cloud"]));
}
