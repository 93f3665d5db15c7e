//! The agent YAML file of `stigmer agent apply`.

use std::collections::BTreeMap;

use serde::Deserialize;
use stigmer_proto::agent::v1::{Agent, ModelConfig};

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
    fn unknown_fields_and_missing_name_are_refused() {
        let err = parse("name: a\ninstruction: typo\n").expect_err("unknown field");
        assert!(err.contains("instruction"), "{err}");
        assert!(parse("instructions: x\n").is_err());
    }
}
