//! Fixture loading shared by the integration tests and the benchmark.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use operator::crd::AgentRunner;
use serde::Deserialize;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn runner(name: &str) -> AgentRunner {
    serde_yaml_ng::from_str(&read(&fixture_path(name)))
        .unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

/// Every Secret in a multi-document YAML file, by name.
pub fn secrets_in(text: &str) -> BTreeMap<String, Secret> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Secret::deserialize(doc).expect("a Secret"))
        .map(|s| (s.metadata.name.clone().expect("named"), s))
        .collect()
}

pub fn secrets(name: &str) -> BTreeMap<String, Secret> {
    secrets_in(&read(&fixture_path(name)))
}
