//! Validation of an agent's MCP servers (`mcp_servers`): what the control plane can check
//! before any runner sees the agent.

use std::collections::HashSet;

use stigmer_proto::agent::v1::{McpServer, NetworkAccess, mcp_server::Transport};

const MAX_SERVER_NAME: usize = 32;
const MAX_START_TIMEOUT_SECS: u32 = 600;
/// Headers the MCP transport sets itself (rmcp refuses them as custom headers).
const RESERVED_HEADERS: [&str; 4] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Checks every server; `cloud`: the control plane dispatches to cloud runners, whose Daytona
/// sandboxes cannot carry a stdio server.
pub fn validate(servers: &[McpServer], cloud: bool) -> Result<(), String> {
    let mut names = HashSet::new();
    for (i, server) in servers.iter().enumerate() {
        let at = if server.name.is_empty() {
            format!("mcp_servers[{i}]")
        } else {
            format!("mcp_servers '{}'", server.name)
        };
        validate_name(&server.name).map_err(|e| format!("{at}: {e}"))?;
        if !names.insert(server.name.as_str()) {
            return Err(format!(
                "{at}: the name is used by another server of this agent"
            ));
        }
        if NetworkAccess::try_from(server.network).is_err() {
            return Err(format!(
                "{at}: network {} is not a known value; use NETWORK_ACCESS_NONE or \
                 NETWORK_ACCESS_ALLOW",
                server.network
            ));
        }
        if server.start_timeout_secs > MAX_START_TIMEOUT_SECS {
            return Err(format!(
                "{at}: start_timeout_secs {} is out of range; use 0 (30 s) to \
                 {MAX_START_TIMEOUT_SECS}",
                server.start_timeout_secs
            ));
        }
        if let Some(empty) = server.tools.iter().position(|t| t.trim().is_empty()) {
            return Err(format!("{at}: tools[{empty}] is empty"));
        }
        match &server.transport {
            None => {
                return Err(format!(
                    "{at}: give either stdio (command, args, env) or http (url, headers)"
                ));
            }
            Some(Transport::Stdio(stdio)) => {
                if cloud {
                    return Err(format!(
                        "{at}: stdio MCP servers cannot run in cloud mode: the runners' \
                         Daytona sandboxes run one-shot commands only (the toolbox API has \
                         no stdin to talk to a server over); use an http server"
                    ));
                }
                let command = stdio.command.trim();
                if command.is_empty() {
                    return Err(format!("{at}: stdio.command is empty"));
                }
                if command.contains('/') && !command.starts_with('/') && !command.starts_with("${")
                {
                    return Err(format!(
                        "{at}: stdio.command '{command}' is a relative path; use a program \
                         name looked up on PATH or an absolute path"
                    ));
                }
                for key in stdio.env.keys() {
                    validate_env_name(key).map_err(|e| format!("{at}: stdio.env: {e}"))?;
                }
            }
            Some(Transport::Http(http)) => {
                let url = http.url.trim();
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                let has_host = url
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
                if !(scheme_ok && has_host) {
                    return Err(format!(
                        "{at}: http.url '{url}' is not an http:// or https:// URL with a host"
                    ));
                }
                for name in http.headers.keys() {
                    let token = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !token {
                        return Err(format!(
                            "{at}: http.headers: '{name}' is not a valid header name"
                        ));
                    }
                    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        return Err(format!(
                            "{at}: http.headers: '{name}' is set by the MCP transport itself"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() {
        return Err("name is required".into());
    }
    if name.contains("__") {
        return Err(format!(
            "name '{name}' contains \"__\", which separates the server from its tool in the \
             names the model sees (<server>__<tool>)"
        ));
    }
    if name.len() > MAX_SERVER_NAME
        || !name.chars().all(allowed)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "name '{name}' is invalid: use 1-{MAX_SERVER_NAME} lowercase letters, digits, '-' \
             and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid variable name (letters, digits and '_', not starting \
             with a digit)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use stigmer_proto::agent::v1::{McpHttpServer, McpStdioServer};

    use super::*;

    fn stdio(name: &str, command: &str) -> McpServer {
        McpServer {
            name: name.into(),
            transport: Some(Transport::Stdio(McpStdioServer {
                command: command.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn http(name: &str, url: &str) -> McpServer {
        McpServer {
            name: name.into(),
            transport: Some(Transport::Http(McpHttpServer {
                url: url.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn err(servers: &[McpServer]) -> String {
        validate(servers, false).unwrap_err()
    }

    #[test]
    fn good_servers_pass() {
        let servers = [
            stdio("files", "npx"),
            stdio("fs_2", "/usr/bin/node"),
            stdio("env", "${NODE}"),
            http("github", "https://api.example.com/mcp"),
        ];
        assert_eq!(validate(&servers, false), Ok(()));
    }

    #[test]
    fn bad_names_commands_and_urls_are_refused() {
        assert!(err(&[stdio("a__b", "x")]).contains("contains \"__\""));
        assert!(err(&[stdio("", "x")]).contains("mcp_servers[0]: name is required"));
        assert!(err(&[stdio("Files", "x")]).contains("is invalid"));
        assert!(err(&[stdio("a", "x"), stdio("a", "y")]).contains("used by another server"));
        assert!(err(&[stdio("a", " ")]).contains("stdio.command is empty"));
        assert!(err(&[stdio("a", "bin/server")]).contains("relative path"));
        assert!(err(&[http("a", "ftp://x/mcp")]).contains("not an http:// or https:// URL"));
        assert!(err(&[http("a", "https://")]).contains("with a host"));
        let none = McpServer {
            name: "a".into(),
            ..Default::default()
        };
        assert!(err(&[none]).contains("either stdio"));
        let mut bad_header = http("a", "http://h/mcp");
        if let Some(Transport::Http(h)) = bad_header.transport.as_mut() {
            h.headers.insert("Mcp-Session-Id".into(), "x".into());
        }
        assert!(err(&[bad_header]).contains("set by the MCP transport"));
        let mut bad_env = stdio("a", "x");
        if let Some(Transport::Stdio(s)) = bad_env.transport.as_mut() {
            s.env.insert("1X".into(), "x".into());
        }
        assert!(err(&[bad_env]).contains("not a valid variable name"));
        let bad_network = McpServer {
            network: 9,
            ..stdio("a", "x")
        };
        assert!(err(&[bad_network]).contains("network 9"));
    }

    #[test]
    fn cloud_refuses_stdio_but_not_http() {
        let e = validate(&[stdio("files", "npx")], true).unwrap_err();
        assert!(
            e.contains("cannot run in cloud mode") && e.contains("Daytona"),
            "{e}"
        );
        assert_eq!(
            validate(&[http("web", "http://127.0.0.1:1/mcp")], true),
            Ok(())
        );
    }
}
