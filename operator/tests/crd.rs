//! The generated CRD in `crds/` must match the Rust types, and the shipped examples must be
//! valid AgentRunners whose Secrets satisfy every reference.

mod common;

use std::path::Path;

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use operator::config::OperatorConfig;
use operator::crd::AgentRunner;
use operator::{secrets, validate};
use serde::Deserialize;

fn workspace_file(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn crd_file_matches_the_rust_types() {
    let generated = serde_yaml_ng::to_string(&AgentRunner::crd()).expect("yaml");
    let path = workspace_file("crds/agentrunner.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "{} is out of date; regenerate it with `cargo run -p operator -- crd > crds/agentrunner.yaml`",
        path.display()
    );
}

#[test]
fn crd_names_and_subresources() {
    let crd = AgentRunner::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("agentrunners.agentic.stigmer.ai")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["ar".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["stigmer".to_owned()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let scale = version
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Mode", "Desired", "Ready", "Status", "Age"]);
}

/// Every schema property carries a description, so `kubectl explain` is useful.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd = AgentRunner::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    let schema = serde_json::to_value(schema).expect("json");
    let mut missing = Vec::new();
    walk("spec", &schema["properties"]["spec"], &mut missing);
    walk("status", &schema["properties"]["status"], &mut missing);
    assert_eq!(missing, Vec::<String>::new());
}

#[test]
fn examples_are_valid_and_complete() {
    let crd = AgentRunner::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    let schema = serde_json::to_value(schema).expect("json");
    for name in ["local-mode.yaml", "cloud-mode.yaml"] {
        let text = common::read(&workspace_file(&format!("examples/{name}")));
        let mut runners = Vec::new();
        let mut secret_docs = String::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("yaml document");
            match value["kind"].as_str() {
                Some("AgentRunner") => {
                    if let Err(e) = Validator::new().validate(&schema, &value, None) {
                        panic!("{name}: CEL refuses the example: {e:?}");
                    }
                    runners
                        .push(serde_json::from_value::<AgentRunner>(value).expect("AgentRunner"));
                }
                Some("Secret") => {
                    secret_docs.push_str("---\n");
                    secret_docs.push_str(&serde_yaml_ng::to_string(&value).expect("yaml"));
                }
                other => panic!("{name}: unexpected kind {other:?}"),
            }
        }
        assert_eq!(runners.len(), 1, "{name}");
        let found = common::secrets_in(&secret_docs);
        for mut runner in runners {
            // The apiserver sets these; the examples do not.
            runner.metadata.uid = Some("uid".into());
            runner
                .metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            validate::validate(&runner, &OperatorConfig::default())
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            secrets::resolve(&runner, &found).unwrap_or_else(|m| panic!("{name}: missing {m:?}"));
        }
    }
}
