//! The agent YAML file of `stigmer agent apply`.

use std::collections::BTreeMap;

use serde::Deserialize;
use stigmer_proto::agent::v1::{Agent, ModelConfig, NetworkAccess, SandboxPolicy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub name: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub model: ModelFile,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub sandbox: SandboxFile,
}

/// `sandbox:` of the agent file: how its tool commands are confined.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    #[serde(default)]
    pub network: NetworkFile,
}

/// `sandbox.network`: `none` (the default) or `allow`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkFile {
    #[default]
    None,
    Allow,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

pub fn parse(text: &str) -> Result<Agent, String> {
    let file: AgentFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    Ok(Agent {
        name: file.name,
        instructions: file.instructions,
        model: Some(ModelConfig {
            provider: file.model.provider,
            name: file.model.name,
            max_tokens: file.model.max_tokens,
            temperature: file.model.temperature,
        }),
        allowed_tools: file.tools,
        env: file.env.into_iter().collect(),
        sandbox: Some(SandboxPolicy {
            network: match file.sandbox.network {
                NetworkFile::None => NetworkAccess::None,
                NetworkFile::Allow => NetworkAccess::Allow,
            } as i32,
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let agent = parse(
            "name: writer\ninstructions: Write.\nmodel:\n  provider: anthropic\n  name: m\n  max_tokens: 10\n  temperature: 0.3\ntools: [read_file]\nenv: {A: b}\n",
        )
        .expect("valid");
        assert_eq!(agent.name, "writer");
        let model = agent.model.expect("model");
        assert_eq!(model.max_tokens, 10);
        assert_eq!(model.temperature, Some(0.3));
        assert_eq!(agent.allowed_tools, ["read_file"]);
        assert_eq!(agent.env.get("A").map(String::as_str), Some("b"));
    }

    #[test]
    fn network_defaults_to_none_and_allow_is_read() {
        let network = |text: &str| {
            parse(text)
                .expect("valid")
                .sandbox
                .expect("sandbox")
                .network()
        };
        assert_eq!(network("name: a\n"), NetworkAccess::None);
        assert_eq!(
            network("name: a\nsandbox:\n  network: allow\n"),
            NetworkAccess::Allow
        );
        let err = parse("name: a\nsandbox:\n  network: internet\n").expect_err("bad value");
        assert!(err.contains("none") && err.contains("allow"), "{err}");
        let err = parse("name: a\nsandbox:\n  netwrk: allow\n").expect_err("typo");
        assert!(err.contains("netwrk"), "{err}");
    }

    #[test]
    fn unknown_fields_and_missing_name_are_refused() {
        let err = parse("name: a\ninstruction: typo\n").expect_err("unknown field");
        assert!(err.contains("instruction"), "{err}");
        assert!(parse("instructions: x\n").is_err());
    }
}
