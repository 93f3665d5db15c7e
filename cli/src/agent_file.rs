//! The agent YAML file of `stigmer agent apply`.

use std::collections::BTreeMap;

use serde::Deserialize;
use stigmer_proto::agent::v1::mcp_server::Transport;
use stigmer_proto::agent::v1::{
    Agent, McpHttpServer, McpServer, McpStdioServer, ModelConfig, NetworkAccess, SandboxPolicy,
    ToolList,
};

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
    /// MCP tool servers by name; their tools are offered as `<name>__<tool>`.
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerFile>,
}

/// One entry of `mcp_servers:`: a stdio server (`command`, `args`, `env`) or a Streamable
/// HTTP one (`url`, `headers`). `${NAME}` in values is filled from the agent's `env` and the
/// execution's runtime env by the runner.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerFile {
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The server's tool names the agent may call; omitted: all.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Stdio servers: whether the process may use the network (`none` or `allow`).
    pub network: Option<NetworkFile>,
    /// Seconds to start (or connect) and list tools; omitted: 30.
    #[serde(default)]
    pub start_timeout_secs: u32,
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
    let mcp_servers = file
        .mcp_servers
        .into_iter()
        .map(|(name, server)| mcp_server(name, server))
        .collect::<Result<Vec<_>, _>>()?;
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
            network: network(file.sandbox.network) as i32,
        }),
        mcp_servers,
        ..Default::default()
    })
}

fn network(file: NetworkFile) -> NetworkAccess {
    match file {
        NetworkFile::None => NetworkAccess::None,
        NetworkFile::Allow => NetworkAccess::Allow,
    }
}

fn mcp_server(name: String, file: McpServerFile) -> Result<McpServer, String> {
    let transport = match (file.command, file.url) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "mcp_servers.{name}: give either command (a stdio server) or url (an HTTP \
                 server), not both"
            ));
        }
        (None, None) => {
            return Err(format!(
                "mcp_servers.{name}: give command (a stdio server) or url (an HTTP server)"
            ));
        }
        (Some(command), None) => {
            if !file.headers.is_empty() {
                return Err(format!(
                    "mcp_servers.{name}: headers apply to HTTP servers (url) only"
                ));
            }
            Transport::Stdio(McpStdioServer {
                command,
                args: file.args,
                env: file.env.into_iter().collect(),
            })
        }
        (None, Some(url)) => {
            if !file.args.is_empty() || !file.env.is_empty() || file.network.is_some() {
                return Err(format!(
                    "mcp_servers.{name}: args, env and network apply to stdio servers \
                     (command) only; an HTTP server is reached by the runner"
                ));
            }
            Transport::Http(McpHttpServer {
                url,
                headers: file.headers.into_iter().collect(),
            })
        }
    };
    Ok(McpServer {
        name,
        transport: Some(transport),
        tools: file.tools,
        network: network(file.network.unwrap_or_default()) as i32,
        start_timeout_secs: file.start_timeout_secs,
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
    fn mcp_servers_parse_by_name() {
        let agent = parse(
            "name: a\nmcp_servers:\n  files:\n    command: npx\n    args: [-y, pkg]\n    \
             env: {TOKEN: \"${TOKEN}\"}\n    tools: [read_file]\n    network: allow\n    \
             start_timeout_secs: 60\n  web:\n    url: https://h/mcp\n    headers: \
             {Authorization: \"Bearer ${KEY}\"}\n",
        )
        .expect("valid");
        let [files, web] = agent.mcp_servers.as_slice() else {
            panic!("two servers: {:?}", agent.mcp_servers);
        };
        assert_eq!(files.name, "files");
        assert_eq!(files.tools, ["read_file"]);
        assert_eq!(files.network(), NetworkAccess::Allow);
        assert_eq!(files.start_timeout_secs, 60);
        let Some(Transport::Stdio(stdio)) = &files.transport else {
            panic!("stdio: {files:?}");
        };
        assert_eq!(stdio.command, "npx");
        assert_eq!(stdio.args, ["-y", "pkg"]);
        assert_eq!(stdio.env.get("TOKEN").map(String::as_str), Some("${TOKEN}"));
        let Some(Transport::Http(http)) = &web.transport else {
            panic!("http: {web:?}");
        };
        assert_eq!(http.url, "https://h/mcp");
        assert_eq!(web.network(), NetworkAccess::None);
    }

    #[test]
    fn mcp_server_mistakes_are_refused() {
        let err =
            |yaml: &str| parse(&format!("name: a\nmcp_servers:\n  s:\n{yaml}")).expect_err(yaml);
        assert!(err("    command: x\n    url: http://h\n").contains("not both"));
        assert!(err("    tools: [a]\n").contains("give command"));
        assert!(err("    command: x\n    comand: y\n").contains("comand"));
        assert!(err("    url: http://h\n    env: {A: b}\n").contains("stdio servers"));
        assert!(err("    command: x\n    headers: {A: b}\n").contains("HTTP servers"));
        assert!(err("    command: x\n    network: internet\n").contains("allow"));
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
