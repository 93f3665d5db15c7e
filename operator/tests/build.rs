//! Builders from small YAML fixtures, compared with snapshot files of the built objects.
//!
//! Run with `UPDATE_SNAPSHOTS=1` to rewrite the snapshots after an intended change, then
//! review the diff.

mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use operator::build::{self, CONFIG_HASH_ANNOTATION, Desired, SECRETS_HASH_ANNOTATION};
use operator::config::OperatorConfig;
use operator::crd::AgentRunner;
use operator::{secrets, validate};
use serde::Serialize;

fn config() -> OperatorConfig {
    OperatorConfig {
        default_image_tag: "0.1.0".into(),
        ..Default::default()
    }
}

fn desired(runner: &AgentRunner, found: &BTreeMap<String, Secret>) -> Desired {
    let v =
        validate::validate(runner, &config()).unwrap_or_else(|e| panic!("invalid fixture: {e:?}"));
    let digest = secrets::resolve(runner, found).expect("all secrets present");
    build::build(&v, &digest)
}

fn to_yaml(desired: &Desired) -> String {
    fn doc<T: Serialize>(out: &mut Vec<String>, obj: &T) {
        out.push(serde_yaml_ng::to_string(obj).expect("yaml"));
    }
    let mut docs = Vec::new();
    if let Some(o) = &desired.service_account {
        doc(&mut docs, o);
    }
    if let Some(o) = &desired.workspace_claim {
        doc(&mut docs, o);
    }
    doc(&mut docs, &desired.config_map);
    doc(&mut docs, &desired.service);
    if let Some(o) = &desired.pod_disruption_budget {
        doc(&mut docs, o);
    }
    doc(&mut docs, &desired.deployment);
    docs.join("---\n")
}

fn assert_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let new = path.with_extension("yaml.new");
        std::fs::write(&new, actual).expect("write new snapshot");
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "{name} differs from the built objects near line {line}; the new output is in {} \
             (rerun with UPDATE_SNAPSHOTS=1 to accept it)",
            new.display()
        );
    }
}

#[test]
fn local_mode_snapshot() {
    let d = desired(&common::runner("local.yaml"), &BTreeMap::new());
    assert_snapshot("local.yaml", &to_yaml(&d));
}

#[test]
fn cloud_mode_snapshot() {
    let d = desired(
        &common::runner("cloud.yaml"),
        &common::secrets("cloud-secrets.yaml"),
    );
    assert_snapshot("cloud.yaml", &to_yaml(&d));
}

#[test]
fn local_pvc_suspended_snapshot() {
    let d = desired(&common::runner("local-pvc.yaml"), &BTreeMap::new());
    assert_snapshot("local-pvc.yaml", &to_yaml(&d));
}

fn pod(d: &Desired) -> &PodSpec {
    d.deployment.spec.template.spec.as_ref().expect("pod spec")
}

fn container<'a>(d: &'a Desired, name: &str) -> &'a Container {
    let p = pod(d);
    p.containers
        .iter()
        .chain(p.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The checks of the `restricted` Pod Security Standard (v1.30+) that a pod spec can fail.
fn restricted_violations(p: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    let psc = p.security_context.clone().unwrap_or_default();
    if p.host_network == Some(true) || p.host_pid == Some(true) || p.host_ipc == Some(true) {
        v.push("host namespaces".to_owned());
    }
    for vol in p.volumes.iter().flatten() {
        if vol.host_path.is_some() {
            v.push(format!("hostPath volume {}", vol.name));
        }
    }
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    for c in p
        .containers
        .iter()
        .chain(p.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{}: privileged", c.name));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{}: allowPrivilegeEscalation not false", c.name));
        }
        if sc.run_as_non_root != Some(true) && psc.run_as_non_root != Some(true) {
            v.push(format!("{}: runAsNonRoot not true", c.name));
        }
        if sc.run_as_user == Some(0) || psc.run_as_user == Some(0) {
            v.push(format!("{}: runAsUser 0", c.name));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.as_str())
            .or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            v.push(format!("{}: seccomp not RuntimeDefault", c.name));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{}: capabilities not dropped", c.name));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            v.push(format!("{}: capabilities added", c.name));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|port| port.host_port.is_some())
        {
            v.push(format!("{}: hostPort", c.name));
        }
        // Not part of the standard, but part of this operator's promise.
        if sc.read_only_root_filesystem != Some(true) {
            v.push(format!("{}: writable root filesystem", c.name));
        }
    }
    v
}

#[test]
fn pods_pass_the_restricted_standard() {
    for (fixture, secrets) in [
        ("local.yaml", BTreeMap::new()),
        ("cloud.yaml", common::secrets("cloud-secrets.yaml")),
        ("local-pvc.yaml", BTreeMap::new()),
    ] {
        let mut runner = common::runner(fixture);
        // A user sidecar without a securityContext inherits the restricted one.
        runner.spec.pod.sidecars.push(Container {
            name: "log-shipper".into(),
            ..Default::default()
        });
        let d = desired(&runner, &secrets);
        assert_eq!(
            restricted_violations(pod(&d)),
            Vec::<String>::new(),
            "{fixture}"
        );
    }
    let mut bad = PodSpec {
        containers: vec![Container {
            name: "x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(
        !restricted_violations(&bad).is_empty(),
        "the checker must be able to fail"
    );
    bad.host_network = Some(true);
    assert!(
        restricted_violations(&bad)
            .iter()
            .any(|m| m == "host namespaces")
    );
}

#[test]
fn local_mode_runs_the_control_plane_as_a_native_sidecar() {
    let d = desired(&common::runner("local.yaml"), &BTreeMap::new());
    let p = pod(&d);
    let sidecar = &p.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(sidecar.name, "stigmer-server");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.args.clone().unwrap_or_default(),
        [
            "--listen",
            "127.0.0.1:50051",
            "--data-dir",
            "/workspace/stigmer"
        ]
    );
    let runner = container(&d, "runner");
    assert_eq!(env_value(runner, "MODE"), Some("local"));
    assert_eq!(
        env_value(runner, "STIGMER_API_KEY"),
        Some("dummy-local-key")
    );
    let cm = d.config_map.data.clone().unwrap_or_default();
    assert_eq!(cm["STIGMER_BACKEND_ENDPOINT"], "http://localhost:50051");
    assert_eq!(cm["SANDBOX_ROOT_DIR"], "/workspace/sandboxes");
    // Both containers share the workspace volume.
    for c in [runner, sidecar] {
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "workspace" && m.mount_path == "/workspace")
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "tmp" && m.mount_path == "/tmp")
        );
    }
    assert!(d.pod_disruption_budget.is_some(), "two replicas get a PDB");
}

#[test]
fn cloud_mode_references_secrets_and_never_copies_them() {
    let secrets = common::secrets("cloud-secrets.yaml");
    let d = desired(&common::runner("cloud.yaml"), &secrets);
    let runner = container(&d, "runner");
    assert_eq!(env_value(runner, "MODE"), Some("cloud"));
    let by_secret: BTreeMap<&str, (&str, &str)> = runner
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.as_str(), (r.name.as_str(), r.key.as_str())))
        })
        .collect();
    assert_eq!(
        by_secret,
        BTreeMap::from([
            ("STIGMER_API_KEY", ("runner-credentials", "jwt")),
            ("REDIS_PASSWORD", ("redis", "password")),
            ("DAYTONA_API_KEY", ("runner-credentials", "daytona-api-key")),
            ("STIGMER_LLM_API_KEY", ("llm", "anthropic-api-key")),
        ])
    );
    let everything = to_yaml(&d);
    for secret in secrets.values() {
        for value in secret.string_data.iter().flatten().map(|(_, v)| v) {
            let first_line = value
                .lines()
                .find(|l| !l.starts_with("-----"))
                .unwrap_or(value);
            assert!(
                !everything.contains(first_line),
                "a secret value leaked into the built objects"
            );
        }
    }
    let p = pod(&d);
    assert_eq!(p.termination_grace_period_seconds, Some(930));
    assert_eq!(
        p.service_account_name.as_deref(),
        Some("runner-workload-identity")
    );
    assert!(
        d.service_account.is_none(),
        "the user's ServiceAccount is used"
    );
    assert!(
        p.init_containers.is_none(),
        "no control plane sidecar in cloud mode"
    );
    let cm = d.config_map.data.clone().unwrap_or_default();
    assert_eq!(
        cm["STIGMER_BACKEND_CA_FILE"],
        "/etc/stigmer/backend-ca/ca.crt"
    );
    assert_eq!(cm["REDIS_PORT"], "6380");
}

#[test]
fn rotation_and_config_changes_roll_the_pods() {
    let runner = common::runner("cloud.yaml");
    let mut secrets = common::secrets("cloud-secrets.yaml");
    let annotations = |d: &Desired| {
        d.deployment
            .spec
            .template
            .metadata
            .clone()
            .unwrap_or_default()
            .annotations
            .unwrap_or_default()
    };
    let before = annotations(&desired(&runner, &secrets));

    if let Some(s) = secrets.get_mut("redis") {
        s.string_data = Some(BTreeMap::from([(
            "password".to_owned(),
            "rotated".to_owned(),
        )]));
    }
    let rotated = annotations(&desired(&runner, &secrets));
    assert_ne!(
        before[SECRETS_HASH_ANNOTATION],
        rotated[SECRETS_HASH_ANNOTATION]
    );
    assert_eq!(
        before[CONFIG_HASH_ANNOTATION],
        rotated[CONFIG_HASH_ANNOTATION]
    );

    let mut changed = runner.clone();
    changed.spec.runner.max_concurrency = 8;
    let reconfigured = annotations(&desired(&changed, &secrets));
    assert_ne!(
        rotated[CONFIG_HASH_ANNOTATION],
        reconfigured[CONFIG_HASH_ANNOTATION]
    );
}

#[test]
fn suspend_keeps_objects_and_scales_to_zero() {
    let d = desired(&common::runner("local-pvc.yaml"), &BTreeMap::new());
    assert_eq!(d.deployment.spec.replicas, Some(0));
    assert!(d.pod_disruption_budget.is_none());
    assert!(d.workspace_claim.is_some());
    assert_eq!(
        d.deployment
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let sidecar = container(&d, "stigmer-server");
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/stigmer/agent-runner:1.4.1")
    );
}

#[test]
fn only_an_http_backend_is_marked_plaintext_for_the_runner() {
    let secrets = common::secrets("cloud-secrets.yaml");
    let mut runner = common::runner("cloud.yaml");
    let tls = desired(&runner, &secrets)
        .config_map
        .data
        .unwrap_or_default();
    assert!(
        !tls.contains_key("STIGMER_BACKEND_INSECURE"),
        "an https:// backend must stay TLS-only"
    );
    // The CRD accepts http:// as an explicit plaintext backend; without the flag the runner
    // refuses to start in cloud mode.
    let cloud = runner.spec.cloud.as_mut().expect("cloud fixture");
    cloud.backend.as_mut().expect("backend").endpoint = "http://stigmer-server:50051".into();
    cloud.backend.as_mut().expect("backend").ca_secret_ref = None;
    let plain = desired(&runner, &secrets)
        .config_map
        .data
        .unwrap_or_default();
    assert_eq!(
        plain["STIGMER_BACKEND_ENDPOINT"],
        "http://stigmer-server:50051"
    );
    assert_eq!(plain["STIGMER_BACKEND_INSECURE"], "true");
}

#[test]
fn a_tls_redis_with_a_private_ca_gets_the_flag_and_the_mounted_bundle() {
    let mut runner = common::runner("cloud.yaml");
    let mut secrets = common::secrets("cloud-secrets.yaml");
    let mut redis_ca = secrets["backend-ca"].clone();
    redis_ca.metadata.name = Some("redis-ca".into());
    secrets.insert("redis-ca".into(), redis_ca);
    let plain = desired(&runner, &secrets);
    let cm = plain.config_map.data.clone().unwrap_or_default();
    assert!(!cm.contains_key("REDIS_TLS") && !cm.contains_key("REDIS_CA_FILE"));

    let redis = runner
        .spec
        .cloud
        .as_mut()
        .and_then(|c| c.redis.as_mut())
        .expect("redis in the fixture");
    redis.tls = Some(true);
    redis.ca_secret_ref = Some(operator::crd::SecretKeyRef {
        name: "redis-ca".into(),
        key: "ca.crt".into(),
    });
    let d = desired(&runner, &secrets);
    let cm = d.config_map.data.clone().unwrap_or_default();
    assert_eq!(cm["REDIS_TLS"], "true");
    assert_eq!(cm["REDIS_CA_FILE"], "/etc/stigmer/redis-ca/ca.crt");
    let p = pod(&d);
    let volume = p
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "redis-ca")
        .expect("the Redis CA volume");
    let source = volume.secret.as_ref().expect("from the Secret");
    assert_eq!(source.secret_name.as_deref(), Some("redis-ca"));
    let items = source.items.clone().unwrap_or_default();
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );
    let runner_container = p
        .containers
        .iter()
        .find(|c| c.name == "runner")
        .expect("runner container");
    let mount = runner_container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "redis-ca")
        .expect("mounted in the runner");
    assert_eq!(mount.mount_path, "/etc/stigmer/redis-ca");
    assert_eq!(mount.read_only, Some(true));
    // The bundle is a referenced Secret: its rotation rolls the pods like the others'.
    assert!(runner.references_secret("redis-ca"));
}
