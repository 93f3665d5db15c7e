//! The agent YAML file of `stigmer agent apply`.

use std::collections::BTreeMap;

use serde::Deserialize;
use stigmer_proto::agent::v1::{Agent, ModelConfig, NetworkAccess, SandboxPolicy, ToolList};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub name: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub model: ModelFile,
    /// Omitted: every built-in tool; `[]`: none.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Signed, so that a negative number gets the budget's own message, not a parse error.
    #[serde(default)]
    pub token_budget: Option<i64>,
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
    // Checked here too, so that a typo is named before anything is sent; the control plane
    // checks again for other clients.
    if let Some(names) = &file.tools {
        stigmer_proto::rules::check_tool_names(names).map_err(|e| format!("tools: {e}"))?;
    }
    stigmer_proto::rules::check_token_budget("token_budget", file.token_budget.map(i128::from))
        .map_err(|e| e.to_string())?;
    Ok(Agent {
        name: file.name,
        instructions: file.instructions,
        model: Some(ModelConfig {
            provider: file.model.provider,
            name: file.model.name,
            max_tokens: file.model.max_tokens,
            temperature: file.model.temperature,
        }),
        tools: file.tools.map(|names| ToolList { names }),
        token_budget: file.token_budget.and_then(|b| u64::try_from(b).ok()),
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
        assert_eq!(agent.tools.expect("tools").names, ["read_file"]);
        assert!(agent.allowed_tools.is_empty());
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
    fn omitted_tools_differ_from_no_tools() {
        use stigmer_proto::rules::ToolChoice;
        let all = parse("name: a\n").expect("valid");
        assert_eq!(all.tool_choice(), ToolChoice::AllBuiltIn);
        let none = parse("name: a\ntools: []\n").expect("valid");
        assert_eq!(none.tool_choice(), ToolChoice::Only(&[]));
        let err = parse("name: a\ntools: [read_file, shell]\n").expect_err("unknown tool");
        assert!(
            err.starts_with("tools: unknown tool 'shell'; the built-in tools are run_command"),
            "{err}"
        );
    }

    #[test]
    fn token_budget_is_read_and_checked() {
        assert_eq!(parse("name: a\n").expect("valid").token_budget, None);
        let agent = parse("name: a\ntoken_budget: 20000\n").expect("valid");
        assert_eq!(agent.token_budget, Some(20_000));
        for bad in ["0", "-5", "1000000001"] {
            let err = parse(&format!("name: a\ntoken_budget: {bad}\n")).expect_err(bad);
            assert_eq!(
                err,
                format!(
                    "token_budget {bad} is invalid: use a whole number of tokens from 1 to \
                     1000000000, or leave it out for no budget"
                )
            );
        }
        assert!(parse("name: a\ntoken_budget: lots\n").is_err());
    }

    #[test]
    fn unknown_fields_and_missing_name_are_refused() {
        let err = parse("name: a\ninstruction: typo\n").expect_err("unknown field");
        assert!(err.contains("instruction"), "{err}");
        assert!(parse("instructions: x\n").is_err());
    }
}
