//! Step 1 (pure): check an AgentRunner and resolve its defaults into a [`Validated`] runner.
//!
//! The CRD's CEL rules refuse most of these mistakes at admission; they are checked again
//! here because an older CRD may be installed, and because a few checks (reserved variable
//! names) would cost too much as CEL.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use stigmer_contract::env as vars;

use crate::config::OperatorConfig;
use crate::crd::{
    AgentRunner, AgentRunnerSpec, EmptyDirWorkspace, ImageSpec, MAX_NAME_LEN, Mode,
    PVC_SIZE_MESSAGE, PullPolicy, SIZE_LIMIT_MESSAGE,
};
use crate::quantity;

/// Environment variables the operator sets itself; `runner.extraEnv` may not override them.
pub const RESERVED_ENV: &[&str] = &[
    vars::MODE,
    vars::POD_NAME,
    vars::LOG_LEVEL,
    vars::SANDBOX_ROOT_DIR,
    vars::API_KEY,
    vars::BACKEND_ENDPOINT,
    vars::BACKEND_CA_FILE,
    vars::BACKEND_INSECURE,
    vars::MAX_CONCURRENCY,
    vars::DRAIN_TIMEOUT_SECS,
    vars::HTTP_ADDR,
    vars::LLM_PROVIDER,
    vars::LLM_MODEL,
    vars::LLM_BASE_URL,
    vars::LLM_API_KEY,
    vars::LLM_MAX_TOKENS,
    vars::LLM_TEMPERATURE,
    vars::REDIS_HOST,
    vars::REDIS_PORT,
    vars::REDIS_PASSWORD,
    vars::REDIS_URL,
    vars::REDIS_TLS,
    vars::REDIS_CA_FILE,
    vars::DAYTONA_API_URL,
    vars::DAYTONA_API_KEY,
    vars::DAYTONA_DEV_TOOLS_SNAPSHOT_ID,
];

/// An AgentRunner that passed validation, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    /// The resource itself, for the settings that need no resolving.
    pub runner: &'a AgentRunner,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Controller owner reference placed on every owned object.
    pub owner: OwnerReference,
    /// Runner image reference.
    pub image: String,
    /// Runner image pull policy, if set.
    pub pull_policy: Option<PullPolicy>,
    /// Control-plane sidecar image reference (local mode).
    pub control_plane_image: String,
    /// Sidecar pull policy, if set.
    pub control_plane_pull_policy: Option<PullPolicy>,
    /// Replicas the Deployment gets: zero when suspended.
    pub replicas: i32,
    /// Where /workspace comes from.
    pub workspace: Workspace,
    /// The pods' ServiceAccount.
    pub service_account: ServiceAccountChoice,
    /// `terminationGracePeriodSeconds` of the pods.
    pub termination_grace_seconds: i64,
}

impl Validated<'_> {
    /// The spec.
    pub fn spec(&self) -> &AgentRunnerSpec {
        &self.runner.spec
    }
}

/// Source of the workspace volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Workspace {
    /// A pod-lifetime emptyDir.
    EmptyDir(EmptyDirWorkspace),
    /// A claim that already exists.
    ExistingClaim(String),
    /// A claim the operator creates and owns.
    OwnedClaim {
        /// Requested size.
        size: Quantity,
        /// Storage class, cluster default when `None`.
        storage_class: Option<String>,
    },
}

/// Whose ServiceAccount the pods run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAccountChoice {
    /// One the operator creates, named after the AgentRunner.
    Owned(String),
    /// One the user named in `spec.pod.serviceAccountName`.
    External(String),
}

impl ServiceAccountChoice {
    /// The name the pods use.
    pub fn name(&self) -> &str {
        match self {
            ServiceAccountChoice::Owned(n) | ServiceAccountChoice::External(n) => n,
        }
    }
}

/// Everything wrong with a spec, reported together so that one edit can fix them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec {
    /// One message per problem, each naming the field.
    pub problems: Vec<String>,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// Outcome of validation.
#[derive(Debug)]
pub enum Invalid {
    /// The user must fix the spec.
    Spec(InvalidSpec),
    /// The object lacks this apiserver-set metadata field: a bug or a hand-made object, not
    /// a user error.
    Metadata(&'static str),
}

/// Check `runner` and resolve its defaults.
pub fn validate<'a>(
    runner: &'a AgentRunner,
    cfg: &OperatorConfig,
) -> Result<Validated<'a>, Invalid> {
    let name = runner
        .metadata
        .name
        .clone()
        .ok_or(Invalid::Metadata("name"))?;
    let namespace = runner
        .metadata
        .namespace
        .clone()
        .ok_or(Invalid::Metadata("namespace"))?;
    // blockOwnerDeletion, as Kubernetes' own controllers set it: a foreground delete of the
    // AgentRunner (`kubectl delete --cascade=foreground`) then waits until its runners are
    // gone. Under OwnerReferencesPermissionEnforcement it needs `update` on
    // agentrunners/finalizers (see rbac.rs).
    let owner = runner
        .controller_owner_ref(&())
        .map(|o| OwnerReference {
            block_owner_deletion: Some(true),
            ..o
        })
        .ok_or(Invalid::Metadata("uid"))?;

    let problems = spec_problems(runner);
    if !problems.is_empty() {
        return Err(Invalid::Spec(InvalidSpec { problems }));
    }

    let spec = &runner.spec;
    let image_spec = spec.image.clone().unwrap_or_default();
    let image = image_ref(&image_spec, cfg);
    let cp_image_spec = spec
        .local
        .as_ref()
        .and_then(|l| l.control_plane.as_ref())
        .and_then(|c| c.image.clone());
    let (control_plane_image, control_plane_pull_policy) = match cp_image_spec {
        // The sidecar inherits unset parts from the runner image, which ships both binaries.
        Some(cp) => {
            let merged = ImageSpec {
                repository: cp.repository.or_else(|| image_spec.repository.clone()),
                tag: cp.tag.or_else(|| image_spec.tag.clone()),
                pull_policy: cp.pull_policy.or(image_spec.pull_policy),
            };
            (image_ref(&merged, cfg), merged.pull_policy)
        }
        None => (image.clone(), image_spec.pull_policy),
    };

    Ok(Validated {
        runner,
        service_account: match &spec.pod.service_account_name {
            Some(sa) => ServiceAccountChoice::External(sa.clone()),
            None => ServiceAccountChoice::Owned(name.clone()),
        },
        name,
        namespace,
        owner,
        image,
        pull_policy: image_spec.pull_policy,
        control_plane_image,
        control_plane_pull_policy,
        replicas: if spec.suspend { 0 } else { spec.replicas },
        workspace: workspace(spec),
        termination_grace_seconds: spec.runner.drain_timeout_seconds + cfg.drain_margin_seconds,
    })
}

/// `repository:tag`, or `repository@sha256:...` when the tag is a digest.
fn image_ref(image: &ImageSpec, cfg: &OperatorConfig) -> String {
    let repo = image
        .repository
        .as_deref()
        .unwrap_or(&cfg.default_image_repository);
    let tag = image.tag.as_deref().unwrap_or(&cfg.default_image_tag);
    if tag.contains(':') {
        format!("{repo}@{tag}")
    } else {
        format!("{repo}:{tag}")
    }
}

fn workspace(spec: &AgentRunnerSpec) -> Workspace {
    let ws = spec.local.as_ref().and_then(|l| l.workspace.as_ref());
    match ws.and_then(|w| w.persistent_volume_claim.as_ref()) {
        Some(pvc) => match (&pvc.claim_name, &pvc.size) {
            (Some(claim), _) => Workspace::ExistingClaim(claim.clone()),
            (None, Some(size)) => Workspace::OwnedClaim {
                size: size.clone(),
                storage_class: pvc.storage_class_name.clone(),
            },
            // Refused by spec_problems; an emptyDir is the harmless fallback.
            (None, None) => Workspace::EmptyDir(EmptyDirWorkspace::default()),
        },
        None => Workspace::EmptyDir(ws.and_then(|w| w.empty_dir.clone()).unwrap_or_default()),
    }
}

fn spec_problems(runner: &AgentRunner) -> Vec<String> {
    let mut problems = Vec::new();
    let name = runner.name_any();
    if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters"
        ));
    }
    if !is_dns_label(&name) {
        problems.push("metadata.name must start with a letter and contain only lowercase letters, digits and '-'".into());
    }
    let spec = &runner.spec;
    bounds(spec, &mut problems);
    match spec.mode {
        Mode::Cloud => cloud_problems(spec, &mut problems),
        Mode::Local => {
            if spec.cloud.is_some() {
                problems.push("spec.cloud is only allowed when spec.mode is cloud".into());
            }
        }
    }
    if spec.mode == Mode::Cloud && spec.local.is_some() {
        problems.push("spec.local is only allowed when spec.mode is local".into());
    }
    workspace_problems(spec, &mut problems);
    resource_problems(spec, &mut problems);
    if let Some(llm) = &spec.llm {
        let needs_key = llm
            .provider
            .is_some_and(|p| stigmer_contract::Provider::from(p).key_variable().is_some());
        if needs_key && llm.api_key_secret_ref.is_none() {
            problems.push(
                "llm.apiKeySecretRef is required for the anthropic and openai providers".into(),
            );
        }
    }
    for env in &spec.runner.extra_env {
        if RESERVED_ENV.contains(&env.name.as_str()) {
            problems.push(format!(
                "runner.extraEnv must not set {}: the operator manages it through a dedicated field",
                env.name
            ));
        }
    }
    problems
}

fn bounds(spec: &AgentRunnerSpec, problems: &mut Vec<String>) {
    if !(0..=1000).contains(&spec.replicas) {
        problems.push("spec.replicas must be between 0 and 1000".into());
    }
    if !(1..=256).contains(&spec.runner.max_concurrency) {
        problems.push("runner.maxConcurrency must be between 1 and 256".into());
    }
    if !(1..=86400).contains(&spec.runner.drain_timeout_seconds) {
        problems.push("runner.drainTimeoutSeconds must be between 1 and 86400".into());
    }
}

fn cloud_problems(spec: &AgentRunnerSpec, problems: &mut Vec<String>) {
    let cloud = spec.cloud.clone().unwrap_or_default();
    match &cloud.backend {
        None => problems.push("cloud mode requires spec.cloud.backend.endpoint".into()),
        Some(b) if !(b.endpoint.starts_with("https://") || b.endpoint.starts_with("http://")) => {
            problems.push(
                "backend.endpoint must start with https:// (or http:// for a plaintext backend)"
                    .into(),
            )
        }
        Some(_) => {}
    }
    if cloud.jwt_secret_ref.is_none() {
        problems.push(
            "cloud mode requires spec.cloud.jwtSecretRef, the Secret key holding the runner's JWT"
                .into(),
        );
    }
    match &cloud.redis {
        None => problems.push("cloud mode requires spec.cloud.redis".into()),
        Some(r) => {
            if r.host.is_some() == r.url_secret_ref.is_some() {
                problems.push("set exactly one of redis.host or redis.urlSecretRef".into());
            }
            if r.password_secret_ref.is_some() && r.host.is_none() {
                problems.push("redis.passwordSecretRef goes with redis.host; with redis.urlSecretRef put the password in the URL".into());
            }
            if r.port.is_some() && r.host.is_none() {
                problems.push("redis.port goes with redis.host".into());
            }
            if r.tls.is_some() && r.host.is_none() {
                problems.push("redis.tls goes with redis.host; a rediss:// URL in redis.urlSecretRef is TLS by itself".into());
            }
            if r.ca_secret_ref.is_some() && r.url_secret_ref.is_none() && r.tls != Some(true) {
                problems.push("redis.caSecretRef needs TLS: set redis.tls: true (or use a rediss:// URL in redis.urlSecretRef)".into());
            }
        }
    }
    if cloud.daytona.is_none() {
        problems.push("cloud mode requires spec.cloud.daytona".into());
    }
}

fn workspace_problems(spec: &AgentRunnerSpec, problems: &mut Vec<String>) {
    let Some(ws) = spec.local.as_ref().and_then(|l| l.workspace.as_ref()) else {
        return;
    };
    if ws.empty_dir.is_some() && ws.persistent_volume_claim.is_some() {
        problems.push(
            "set at most one of workspace.emptyDir or workspace.persistentVolumeClaim".into(),
        );
    }
    if let Some(limit) = ws.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
        && !matches!(
            quantity::sign(&limit.0),
            Some(Ordering::Equal | Ordering::Greater)
        )
    {
        problems.push(SIZE_LIMIT_MESSAGE.into());
    }
    if let Some(pvc) = &ws.persistent_volume_claim {
        if let Some(size) = &pvc.size
            && quantity::sign(&size.0) != Some(Ordering::Greater)
        {
            problems.push(PVC_SIZE_MESSAGE.into());
        }
        if pvc.claim_name.is_some() == pvc.size.is_some() {
            problems.push(
                "set exactly one of persistentVolumeClaim.claimName or persistentVolumeClaim.size"
                    .into(),
            );
        }
        if pvc.storage_class_name.is_some() && pvc.size.is_none() {
            problems.push("persistentVolumeClaim.storageClassName applies only with persistentVolumeClaim.size".into());
        }
        if spec.replicas > 1 {
            problems.push("a local-mode AgentRunner with a persistentVolumeClaim workspace runs at most 1 replica: its SQLite store cannot be shared between pods".into());
        }
    }
}

/// Quantities of the embedded resource requirements (runner, control-plane sidecar, extra
/// sidecars). The CRD leaves them to Kubernetes' own validation, which happens only when the
/// operator applies the Deployment; checking them here reports the field by name first.
fn resource_problems(spec: &AgentRunnerSpec, problems: &mut Vec<String>) {
    let mut check = |field: &str, resources: Option<&ResourceRequirements>| {
        let Some(resources) = resources else { return };
        for (kind, map) in [
            ("limits", &resources.limits),
            ("requests", &resources.requests),
        ] {
            for (name, value) in map.iter().flat_map(BTreeMap::iter) {
                if !matches!(
                    quantity::sign(&value.0),
                    Some(Ordering::Equal | Ordering::Greater)
                ) {
                    problems.push(format!(
                        "{field}.{kind}.{name} must be a Kubernetes quantity of at least 0, \
                         such as 512Mi or 250m"
                    ));
                }
            }
        }
    };
    check("spec.runner.resources", spec.runner.resources.as_ref());
    check(
        "spec.local.controlPlane.resources",
        spec.local
            .as_ref()
            .and_then(|l| l.control_plane.as_ref())
            .and_then(|c| c.resources.as_ref()),
    );
    for (i, sidecar) in spec.pod.sidecars.iter().enumerate() {
        check(
            &format!("spec.pod.sidecars[{i}].resources"),
            sidecar.resources.as_ref(),
        );
    }
}

/// RFC 1035 label: what a Service name must be.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    first.is_ascii_lowercase()
        && rest
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        AgentRunnerSpec, CloudSpec, LocalSpec, PvcWorkspace, RedisSpec, WorkspaceSpec,
    };
    use k8s_openapi::api::core::v1::EnvVar;

    fn runner(spec: AgentRunnerSpec) -> AgentRunner {
        let mut ar = AgentRunner::new("demo", spec);
        ar.metadata.namespace = Some("agents".into());
        ar.metadata.uid = Some("uid-1".into());
        ar
    }

    fn problems(spec: AgentRunnerSpec) -> Vec<String> {
        match validate(&runner(spec), &OperatorConfig::default()) {
            Err(Invalid::Spec(s)) => s.problems,
            Err(Invalid::Metadata(f)) => panic!("unexpected metadata error {f}"),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn the_owner_reference_blocks_owner_deletion() {
        // blockOwnerDeletion makes the API server require `update` on
        // agentrunners/finalizers (OwnerReferencesPermissionEnforcement): the RBAC table
        // must grant it while the owner reference sets it.
        let ar = runner(AgentRunnerSpec::default());
        let v = validate(&ar, &OperatorConfig::default()).expect("valid");
        assert_eq!(v.owner.block_owner_deletion, Some(true));
        assert_eq!(v.owner.controller, Some(true));
        assert!(crate::rbac::allows(
            "agentic.stigmer.ai",
            "agentrunners/finalizers",
            "update"
        ));
    }

    #[test]
    fn local_defaults_resolve() {
        let ar = runner(AgentRunnerSpec {
            replicas: 2,
            ..Default::default()
        });
        let cfg = OperatorConfig {
            default_image_tag: "1.2.3".into(),
            ..Default::default()
        };
        let v = validate(&ar, &cfg).expect("valid");
        assert_eq!(v.image, "ghcr.io/stigmer/agent-runner:1.2.3");
        assert_eq!(v.control_plane_image, v.image);
        assert_eq!(v.replicas, 2);
        assert_eq!(v.termination_grace_seconds, 330);
        assert_eq!(
            v.service_account,
            ServiceAccountChoice::Owned("demo".into())
        );
        assert_eq!(
            v.workspace,
            Workspace::EmptyDir(EmptyDirWorkspace::default())
        );
        assert_eq!(v.owner.uid, "uid-1");
        assert_eq!(v.owner.controller, Some(true));
    }

    #[test]
    fn suspend_scales_to_zero_and_digest_tags_use_at() {
        let ar = runner(AgentRunnerSpec {
            replicas: 3,
            suspend: true,
            image: Some(ImageSpec {
                tag: Some("sha256:abc".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = validate(&ar, &OperatorConfig::default()).expect("valid");
        assert_eq!(v.replicas, 0);
        assert_eq!(v.image, "ghcr.io/stigmer/agent-runner@sha256:abc");
    }

    #[test]
    fn cloud_without_settings_lists_every_missing_part() {
        let p = problems(AgentRunnerSpec {
            mode: Mode::Cloud,
            ..Default::default()
        });
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("backend"));
        assert!(p[1].contains("jwtSecretRef"));
        assert!(p[2].contains("redis"));
        assert!(p[3].contains("daytona"));
    }

    #[test]
    fn redis_needs_exactly_one_source() {
        let spec = AgentRunnerSpec {
            mode: Mode::Cloud,
            cloud: Some(CloudSpec {
                redis: Some(RedisSpec::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            problems(spec)
                .iter()
                .any(|p| p.contains("exactly one of redis.host"))
        );
    }

    #[test]
    fn redis_tls_settings_need_a_host_and_tls() {
        let redis_problems = |redis: RedisSpec| {
            problems(AgentRunnerSpec {
                mode: Mode::Cloud,
                cloud: Some(CloudSpec {
                    redis: Some(redis),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let ca = Some(crate::crd::SecretKeyRef {
            name: "redis-ca".into(),
            key: "ca.crt".into(),
        });
        let url = Some(crate::crd::SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        });
        let tls_with_url = redis_problems(RedisSpec {
            url_secret_ref: url.clone(),
            tls: Some(true),
            ..Default::default()
        });
        assert!(
            tls_with_url
                .iter()
                .any(|p| p.contains("redis.tls goes with redis.host"))
        );
        let ca_without_tls = redis_problems(RedisSpec {
            host: Some("r".into()),
            ca_secret_ref: ca.clone(),
            ..Default::default()
        });
        assert!(
            ca_without_tls
                .iter()
                .any(|p| p.contains("redis.caSecretRef needs TLS"))
        );
        for fine in [
            RedisSpec {
                host: Some("r".into()),
                tls: Some(true),
                ca_secret_ref: ca.clone(),
                ..Default::default()
            },
            RedisSpec {
                url_secret_ref: url.clone(),
                ca_secret_ref: ca.clone(),
                ..Default::default()
            },
        ] {
            assert!(
                !redis_problems(fine).iter().any(|p| p.contains("redis.")),
                "a valid TLS setting was refused"
            );
        }
    }

    #[test]
    fn pvc_workspace_limits_replicas() {
        let spec = AgentRunnerSpec {
            replicas: 2,
            local: Some(LocalSpec {
                workspace: Some(WorkspaceSpec {
                    persistent_volume_claim: Some(PvcWorkspace {
                        claim_name: Some("data".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(problems(spec).len(), 1);
    }

    fn local(workspace: WorkspaceSpec) -> AgentRunnerSpec {
        AgentRunnerSpec {
            local: Some(LocalSpec {
                workspace: Some(workspace),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pvc(size: &str) -> AgentRunnerSpec {
        local(WorkspaceSpec {
            persistent_volume_claim: Some(PvcWorkspace {
                size: Some(Quantity(size.into())),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn empty_dir(limit: &str) -> AgentRunnerSpec {
        local(WorkspaceSpec {
            empty_dir: Some(EmptyDirWorkspace {
                size_limit: Some(Quantity(limit.into())),
                medium: None,
            }),
            ..Default::default()
        })
    }

    /// The same verdicts as the CRD's CEL rules (operator/tests/cel.rs), for clusters that
    /// run an older CRD without them.
    #[test]
    fn workspace_quantities_are_checked() {
        for good in ["20Gi", "500M", "1.5Ti", "1e9", "+2G", "1073741824"] {
            assert_eq!(problems(pvc(good)), Vec::<String>::new(), "{good}");
            assert_eq!(problems(empty_dir(good)), Vec::<String>::new(), "{good}");
        }
        for bad in ["ten gigs", "10GB", "1.5.5Gi", "Gi", "", "-1Gi", "-5"] {
            assert_eq!(
                problems(pvc(bad)),
                vec![PVC_SIZE_MESSAGE.to_string()],
                "{bad}"
            );
            assert_eq!(
                problems(empty_dir(bad)),
                vec![SIZE_LIMIT_MESSAGE.to_string()],
                "{bad}"
            );
        }
        assert_eq!(problems(pvc("0")), vec![PVC_SIZE_MESSAGE.to_string()]);
        assert_eq!(problems(empty_dir("0")), Vec::<String>::new());
    }

    #[test]
    fn embedded_resource_quantities_are_checked_and_named() {
        use k8s_openapi::api::core::v1::Container;
        let requirements = |cpu: &str, memory: &str| ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity(memory.into()),
            )])),
            requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
            ..Default::default()
        };
        let mut spec = AgentRunnerSpec::default();
        spec.runner.resources = Some(requirements("250m", "2Gi"));
        spec.local = Some(LocalSpec {
            control_plane: Some(crate::crd::ControlPlaneSpec {
                resources: Some(requirements("50m", "512Mi")),
                ..Default::default()
            }),
            ..Default::default()
        });
        spec.pod.sidecars = vec![Container {
            name: "proxy".into(),
            resources: Some(requirements("0", "64Mi")),
            ..Default::default()
        }];
        assert_eq!(problems(spec.clone()), Vec::<String>::new());

        spec.runner.resources = Some(requirements("lots", "2Gi"));
        if let Some(cp) = spec.local.as_mut().and_then(|l| l.control_plane.as_mut()) {
            cp.resources = Some(requirements("50m", "-1Gi"));
        }
        spec.pod.sidecars[0].resources = Some(requirements("1 cpu", "64MB"));
        assert_eq!(
            problems(spec),
            [
                "spec.runner.resources.requests.cpu",
                "spec.local.controlPlane.resources.limits.memory",
                "spec.pod.sidecars[0].resources.limits.memory",
                "spec.pod.sidecars[0].resources.requests.cpu",
            ]
            .map(|field| format!(
                "{field} must be a Kubernetes quantity of at least 0, such as 512Mi or 250m"
            ))
        );
    }

    #[test]
    fn reserved_env_is_refused() {
        let mut spec = AgentRunnerSpec::default();
        spec.runner.extra_env = vec![
            EnvVar {
                name: "MODE".into(),
                value: Some("cloud".into()),
                ..Default::default()
            },
            EnvVar {
                name: "HTTP_PROXY".into(),
                value: Some("http://proxy".into()),
                ..Default::default()
            },
        ];
        let p = problems(spec);
        assert_eq!(p, vec!["runner.extraEnv must not set MODE: the operator manages it through a dedicated field".to_string()]);
    }

    #[test]
    fn names_must_be_service_names() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("1a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn missing_uid_is_a_metadata_error() {
        let mut ar = runner(AgentRunnerSpec::default());
        ar.metadata.uid = None;
        assert!(matches!(
            validate(&ar, &OperatorConfig::default()),
            Err(Invalid::Metadata("uid"))
        ));
    }
}
