//! The runner Deployment and its pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stigmer_contract::env as vars;

use super::config_map::{BACKEND_CA_DIR, BACKEND_CA_FILE, REDIS_CA_DIR, REDIS_CA_FILE};
use super::{
    CONFIG_HASH_ANNOTATION, HTTP_PORT, SECRETS_HASH_ANNOTATION, common_labels, meta, names,
    scrape_annotations, selector_labels,
};
use crate::crd::{CloudSpec, Mode, PullPolicy, SecretKeyRef};
use crate::validate::{Validated, Workspace};

/// The image's non-root user and group.
pub const RUNNER_UID: i64 = 1000;
const WORKSPACE_VOLUME: &str = "workspace";
const TMP_VOLUME: &str = "tmp";
const CA_VOLUME: &str = "backend-ca";
const REDIS_CA_VOLUME: &str = "redis-ca";
/// The local-mode sidecar's key; the sidecar listens on loopback only, so it guards nothing
/// beyond the pod.
const LOCAL_API_KEY: &str = "dummy-local-key";
const SIDECAR_LISTEN: &str = "127.0.0.1:50051";
const SIDECAR_DATA_DIR: &str = "/workspace/stigmer";

pub(super) fn build(v: &Validated<'_>, config_hash: &str, secrets_hash: &str) -> Deployment {
    let labels = selector_labels(&v.name);
    Deployment {
        metadata: meta(v, names::base(&v.name)),
        spec: DeploymentSpec {
            replicas: Some(v.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            },
            strategy: Some(strategy(v)),
            template: pod_template(v, config_hash, secrets_hash),
            ..Default::default()
        },
        status: None,
    }
}

/// Surge one new pod before an old one drains, so capacity never drops during a roll. A
/// claim-backed local workspace is the exception: its SQLite store admits one pod at a
/// time, and the claim may be ReadWriteOnce.
fn strategy(v: &Validated<'_>) -> DeploymentStrategy {
    if matches!(
        v.workspace,
        Workspace::ExistingClaim(_) | Workspace::OwnedClaim { .. }
    ) && v.spec().mode == Mode::Local
    {
        return DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        };
    }
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

fn pod_template(v: &Validated<'_>, config_hash: &str, secrets_hash: &str) -> PodTemplateSpec {
    let pod = &v.spec().pod;
    // User labels first so that the operator's, which the selector relies on, win.
    let mut labels = pod.labels.clone();
    labels.extend(common_labels(&v.name));
    let mut annotations = pod.annotations.clone();
    annotations.extend(scrape_annotations());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.to_owned());
    annotations.insert(SECRETS_HASH_ANNOTATION.into(), secrets_hash.to_owned());

    let mut containers = vec![runner_container(v)];
    containers.extend(pod.sidecars.iter().cloned().map(with_restricted_context));
    let init_containers = (v.spec().mode == Mode::Local).then(|| vec![control_plane_sidecar(v)]);

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(v.service_account.name().to_owned()),
            // Runner pods never call the Kubernetes API; keep service links out of their env.
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(v.termination_grace_seconds),
            security_context: Some(pod_security_context()),
            init_containers,
            containers,
            volumes: Some(volumes(v)),
            image_pull_secrets: non_empty(v.spec().image_pull_secrets.clone()),
            node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
            tolerations: non_empty(pod.tolerations.clone()),
            affinity: pod.affinity.clone(),
            topology_spread_constraints: Some(spread(v)),
            priority_class_name: pod.priority_class_name.clone(),
            ..Default::default()
        }),
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The user's constraints, or a soft preference for distinct nodes so that one node
/// failure takes out as few runners as possible.
fn spread(v: &Validated<'_>) -> Vec<TopologySpreadConstraint> {
    let user = &v.spec().pod.topology_spread_constraints;
    if !user.is_empty() {
        return user.clone();
    }
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(&v.name)),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNNER_UID),
        run_as_group: Some(RUNNER_UID),
        fs_group: Some(RUNNER_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// What the `restricted` Pod Security Standard demands of every container.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn with_restricted_context(mut c: Container) -> Container {
    if c.security_context.is_none() {
        c.security_context = Some(restricted_security_context());
    }
    c
}

fn runner_container(v: &Validated<'_>) -> Container {
    let spec = v.spec();
    let mut mounts = base_mounts();
    for (name, dir, r) in [
        (CA_VOLUME, BACKEND_CA_DIR, ca_ref(v)),
        (REDIS_CA_VOLUME, REDIS_CA_DIR, redis_ca_ref(v)),
    ] {
        if r.is_some() {
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    mounts.extend(spec.runner.extra_volume_mounts.iter().cloned());
    Container {
        name: "runner".into(),
        image: Some(v.image.clone()),
        image_pull_policy: v.pull_policy.map(|p: PullPolicy| p.as_str().to_owned()),
        command: Some(vec!["/usr/local/bin/runner".into()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(runner_env(v)),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names::config_map(&v.name),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: Some(
            spec.runner
                .resources
                .clone()
                .unwrap_or_else(|| default_resources("250m", "256Mi", "2Gi")),
        ),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn default_resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

/// Variables set on the container itself: the mode, the pod name, and everything secret,
/// which is only ever referenced (`secretKeyRef`), never copied.
fn runner_env(v: &Validated<'_>) -> Vec<EnvVar> {
    let spec = v.spec();
    let mut env = vec![
        value_env(vars::MODE, spec.mode.as_str()),
        EnvVar {
            name: vars::POD_NAME.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
            value: None,
        },
    ];
    match (spec.mode, &spec.cloud) {
        (Mode::Cloud, Some(cloud)) => {
            if let Some(r) = &cloud.jwt_secret_ref {
                env.push(secret_env(vars::API_KEY, r));
            }
            if let Some(redis) = &cloud.redis {
                if let Some(r) = &redis.password_secret_ref {
                    env.push(secret_env(vars::REDIS_PASSWORD, r));
                }
                if let Some(r) = &redis.url_secret_ref {
                    env.push(secret_env(vars::REDIS_URL, r));
                }
            }
            if let Some(d) = &cloud.daytona {
                env.push(secret_env(vars::DAYTONA_API_KEY, &d.api_key_secret_ref));
            }
        }
        _ => env.push(value_env(vars::API_KEY, LOCAL_API_KEY)),
    }
    if let Some(r) = spec
        .llm
        .as_ref()
        .and_then(|l| l.api_key_secret_ref.as_ref())
    {
        env.push(secret_env(vars::LLM_API_KEY, r));
    }
    env.extend(spec.runner.extra_env.iter().cloned());
    env
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn secret_env(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// stigmer-server as a native sidecar: an init container that keeps running, so it starts
/// before the runner and stops after it. It listens on loopback only: the pod's runner is
/// its only client (reach it from outside with `kubectl port-forward`), which is also why
/// it has no kubelet probe (the kubelet probes the pod IP).
fn control_plane_sidecar(v: &Validated<'_>) -> Container {
    let resources = v
        .spec()
        .local
        .as_ref()
        .and_then(|l| l.control_plane.as_ref())
        .and_then(|c| c.resources.clone());
    Container {
        name: "stigmer-server".into(),
        image: Some(v.control_plane_image.clone()),
        image_pull_policy: v.control_plane_pull_policy.map(|p| p.as_str().to_owned()),
        restart_policy: Some("Always".into()),
        command: Some(vec!["/usr/local/bin/stigmer-server".into()]),
        args: Some(vec![
            "--listen".into(),
            SIDECAR_LISTEN.into(),
            "--data-dir".into(),
            SIDECAR_DATA_DIR.into(),
        ]),
        // The control plane's own variable, not the runner's contract.
        env: Some(vec![value_env(
            "LOG_LEVEL",
            v.spec().runner.log_level.as_str(),
        )]),
        resources: Some(resources.unwrap_or_else(|| default_resources("50m", "64Mi", "512Mi"))),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(base_mounts()),
        ..Default::default()
    }
}

fn base_mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: WORKSPACE_VOLUME.into(),
            mount_path: "/workspace".into(),
            ..Default::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ]
}

/// The backend's CA bundle Secret key, in cloud mode.
fn ca_ref<'a>(v: &'a Validated<'_>) -> Option<&'a SecretKeyRef> {
    cloud_ref(v, |c| c.backend.as_ref()?.ca_secret_ref.as_ref())
}

/// The Redis CA bundle's Secret key, in cloud mode.
fn redis_ca_ref<'a>(v: &'a Validated<'_>) -> Option<&'a SecretKeyRef> {
    cloud_ref(v, |c| c.redis.as_ref()?.ca_secret_ref.as_ref())
}

fn cloud_ref<'a>(
    v: &'a Validated<'_>,
    pick: impl Fn(&'a CloudSpec) -> Option<&'a SecretKeyRef>,
) -> Option<&'a SecretKeyRef> {
    if v.spec().mode != Mode::Cloud {
        return None;
    }
    pick(v.spec().cloud.as_ref()?)
}

/// A CA bundle from one Secret key, as the file `file` of a read-only volume.
fn ca_volume(name: &str, r: &SecretKeyRef, file: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(r.name.clone()),
            items: Some(vec![KeyToPath {
                key: r.key.clone(),
                path: file.into(),
                ..Default::default()
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volumes(v: &Validated<'_>) -> Vec<Volume> {
    let mut volumes = vec![
        workspace_volume(v),
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Gi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(r) = ca_ref(v) {
        volumes.push(ca_volume(CA_VOLUME, r, BACKEND_CA_FILE));
    }
    if let Some(r) = redis_ca_ref(v) {
        volumes.push(ca_volume(REDIS_CA_VOLUME, r, REDIS_CA_FILE));
    }
    volumes.extend(v.spec().pod.volumes.iter().cloned());
    volumes
}

fn workspace_volume(v: &Validated<'_>) -> Volume {
    let claim = |name: String| Volume {
        name: WORKSPACE_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: name,
            read_only: None,
        }),
        ..Default::default()
    };
    match &v.workspace {
        Workspace::ExistingClaim(name) => claim(name.clone()),
        Workspace::OwnedClaim { .. } => claim(names::workspace_claim(&v.name)),
        Workspace::EmptyDir(e) => Volume {
            name: WORKSPACE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: e.size_limit.clone(),
                medium: e.medium.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}
