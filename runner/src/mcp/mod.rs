//! MCP tool servers of an agent, for one execution: started (stdio, in the session's sandbox)
//! or connected to (Streamable HTTP) when the execution starts, their tools offered to the
//! model as `<server>__<tool>`, calls forwarded, and every stdio server stopped when the
//! execution ends, however it ends.
//!
//! The protocol is the official SDK's (`rmcp`). A stdio server's process is started by the
//! sandbox (`sandbox::server`, confined like `run_command`) and rmcp talks over its pipes.
//! What goes wrong with a server (it does not start, times out, crashes, answers too much) is
//! text the model reads as a tool result, or, at start, a note in its instructions and a
//! system message in the execution status; only cancellation stops the execution.

pub mod config;
mod content;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use stigmer_proto::agent::v1::McpServer;
use tokio_util::sync::CancellationToken;

use crate::llm::ToolSpec;
use crate::sandbox::{Sandbox, ServerProcess, ServerRequest, cap_text};
use crate::tools::{ALL_TOOLS, ToolError, ToolOutcome};
use config::{Kind, ServerPlan};

/// Separates the server's name from its tool's in the name the model sees.
pub const SEPARATOR: &str = "__";
/// Tool names both wire formats accept: `^[a-zA-Z0-9_-]{1,64}$`.
const MAX_TOOL_NAME: usize = 64;

/// Why a server offers no tools. Each names the server; the model and the user read it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("MCP server '{server}' was not started: {source}")]
    Config {
        server: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("MCP server '{server}' was not started: {reason}")]
    Sandbox { server: String, reason: String },
    #[error("MCP server '{server}' did not start: {reason}")]
    Spawn { server: String, reason: String },
    #[error(
        "MCP server '{server}' did not finish starting and listing its tools within {}s \
         (start_timeout_secs){}", timeout.as_secs(), suffix(diagnostics)
    )]
    Timeout {
        server: String,
        timeout: Duration,
        diagnostics: String,
    },
    #[error(
        "MCP server '{server}' failed during start-up: {reason}{}",
        suffix(diagnostics)
    )]
    Handshake {
        server: String,
        reason: String,
        diagnostics: String,
    },
}

fn suffix(diagnostics: &str) -> String {
    if diagnostics.is_empty() {
        String::new()
    } else {
        format!("; {diagnostics}")
    }
}

/// Where stdio servers run: the session's sandbox, opened when the first one starts.
pub trait SandboxSource: Sync {
    /// Err(why) when this runner's sandboxes cannot run a process talking over stdin/stdout.
    fn can_run_servers(&self) -> Result<(), String>;
    fn sandbox(&self) -> impl Future<Output = Result<&Sandbox, String>> + Send;
}

impl SandboxSource for crate::sandboxes::SessionSandbox<'_> {
    fn can_run_servers(&self) -> Result<(), String> {
        if self.is_cloud() {
            Err(crate::sandbox::SandboxError::NoInteractiveProcess.to_string())
        } else {
            Ok(())
        }
    }

    fn sandbox(&self) -> impl Future<Output = Result<&Sandbox, String>> + Send {
        self.get()
    }
}

/// The client every HTTP server of every execution is reached with (one connection pool).
pub fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(CLIENT.get_or_init(|| client))
}

/// What an execution's MCP servers need from the runner.
pub struct StartContext<'a, S> {
    /// The agent's env with the execution's runtime env over it: the values of `${NAME}`.
    pub vars: &'a BTreeMap<String, String>,
    pub sandboxes: &'a S,
    pub http: &'a reqwest::Client,
    pub cancel: &'a CancellationToken,
}

type Client = RunningService<RoleClient, ()>;

/// A server that started, with the tools it offers.
struct Connected {
    name: String,
    client: Client,
    process: Option<ServerProcess>,
}

/// The execution's servers and their offered tools.
#[derive(Default)]
pub struct McpTools {
    servers: Vec<Connected>,
    specs: Vec<ToolSpec>,
    /// `<server>__<tool>` → (index into `servers`, the server's own tool name).
    routes: HashMap<String, (usize, String)>,
    /// What went wrong at start, one line each: for the model's instructions and the status.
    pub problems: Vec<String>,
}

impl McpTools {
    /// Starts or connects to every server at once, each within its start timeout. A server
    /// that fails is left out with a problem saying why; the others are used.
    pub async fn start<S: SandboxSource>(servers: &[McpServer], ctx: &StartContext<'_, S>) -> Self {
        let started = join_all(servers.iter().map(|server| start_one(server, ctx))).await;
        let mut tools = McpTools::default();
        for result in started {
            match result {
                Ok((connected, listed, allow)) => tools.add(connected, listed, &allow),
                Err(e) => tools.problems.push(e.to_string()),
            }
        }
        tools
    }

    fn add(&mut self, connected: Connected, listed: Vec<rmcp::model::Tool>, allow: &[String]) {
        let index = self.servers.len();
        let server = connected.name.clone();
        for wanted in allow {
            if !listed.iter().any(|t| t.name == wanted.as_str()) {
                self.problems.push(format!(
                    "MCP server '{server}' has no tool '{wanted}' (its tools: {})",
                    listed
                        .iter()
                        .map(|t| t.name.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for tool in listed {
            if !allow.is_empty() && !allow.iter().any(|a| a == tool.name.as_ref()) {
                continue;
            }
            let name = format!("{server}{SEPARATOR}{}", tool.name);
            if let Some(problem) = refuse_name(&name) {
                self.problems.push(format!(
                    "MCP server '{server}': tool '{}' is not offered: {problem}",
                    tool.name
                ));
                continue;
            }
            if self.routes.contains_key(&name) {
                self.problems.push(format!(
                    "MCP server '{server}': tool '{}' is not offered: the name '{name}' is \
                     already taken",
                    tool.name
                ));
                continue;
            }
            self.specs.push(ToolSpec {
                name: name.clone(),
                description: tool
                    .description
                    .as_deref()
                    .unwrap_or("(no description)")
                    .to_owned(),
                input_schema: std::sync::Arc::new(serde_json::Value::Object(
                    (*tool.input_schema).clone(),
                )),
            });
            self.routes.insert(name, (index, tool.name.into_owned()));
        }
        self.servers.push(connected);
    }

    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    pub fn offers(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// Calls tool `name` (one of [`McpTools::specs`]). Failures are outcomes for the model;
    /// only cancellation is an error.
    pub async fn call(
        &self,
        name: &str,
        input: &serde_json::Value,
        timeout: Duration,
        output_limit: usize,
        cancel: &CancellationToken,
    ) -> Result<ToolOutcome, ToolError> {
        let Some((index, tool)) = self.routes.get(name) else {
            return Ok(ToolOutcome::error(format!("unknown MCP tool '{name}'")));
        };
        let Some(server) = self.servers.get(*index) else {
            return Ok(ToolOutcome::error(format!("unknown MCP tool '{name}'")));
        };
        let arguments = match input {
            serde_json::Value::Object(map) => map.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            _ => {
                return Ok(ToolOutcome::error(format!(
                    "input for {name} must be a JSON object with the fields of its schema"
                )));
            }
        };
        let mut params = CallToolRequestParams::new(tool.clone());
        params.arguments = Some(arguments);
        let call = server.client.call_tool(params);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ToolError::Cancelled),
            result = tokio::time::timeout(timeout, call) => result,
        };
        let outcome = match result {
            Err(_) => ToolOutcome::error(format!(
                "MCP server '{}' did not answer the call of '{tool}' within {}s \
                 (STIGMER_TOOL_TIMEOUT_SECS); the call was cancelled",
                server.name,
                timeout.as_secs()
            )),
            Ok(Err(e)) => ToolOutcome::error(call_failure(server, tool, &e)),
            Ok(Ok(result)) => content::outcome(&result),
        };
        Ok(ToolOutcome {
            output: cap_text(&outcome.output, output_limit),
            ..outcome
        })
    }

    /// Ends every server: closes the sessions, then stops the stdio processes (nothing they
    /// started survives). Dropping `McpTools` instead kills them at once.
    pub async fn shutdown(self) {
        join_all(self.servers.into_iter().map(|server| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), server.client.cancel()).await;
            if let Some(process) = server.process {
                process.stop().await;
            }
        }))
        .await;
    }
}

fn call_failure(server: &Connected, tool: &str, e: &rmcp::ServiceError) -> String {
    match e {
        rmcp::ServiceError::McpError(error) => format!(
            "MCP server '{}' refused the call of '{tool}': {} (code {})",
            server.name, error.message, error.code.0
        ),
        rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_) => {
            let diagnostics = server
                .process
                .as_ref()
                .map(ServerProcess::diagnostics)
                .unwrap_or_default();
            format!(
                "MCP server '{}' is gone: the connection closed during the call of '{tool}' \
                 ({e}){}; its tools cannot be used for the rest of this execution",
                server.name,
                suffix(&diagnostics)
            )
        }
        other => format!(
            "MCP server '{}' failed the call of '{tool}': {other}",
            server.name
        ),
    }
}

/// Why the model cannot be offered `name`, if it cannot.
fn refuse_name(name: &str) -> Option<String> {
    if ALL_TOOLS.contains(&name) {
        return Some(format!("'{name}' is the name of a built-in tool"));
    }
    if name.len() > MAX_TOOL_NAME {
        return Some(format!(
            "'{name}' is longer than the {MAX_TOOL_NAME} characters models accept"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Some(format!(
            "'{name}' has characters models do not accept (letters, digits, '_' and '-' only)"
        ));
    }
    None
}

type Handshake<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Client, String>> + Send + 'a>>;

async fn start_one<S: SandboxSource>(
    server: &McpServer,
    ctx: &StartContext<'_, S>,
) -> Result<(Connected, Vec<rmcp::model::Tool>, Vec<String>), StartError> {
    let plan = config::plan(server, ctx.vars).map_err(|source| StartError::Config {
        server: server.name.clone(),
        source,
    })?;
    let name = plan.name.clone();
    let (mut process, handshake) = open(&plan, ctx).await?;
    let timeout = plan.start_timeout;
    let ready = async {
        let client = handshake.await?;
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| format!("listing its tools failed: {e}"))?;
        Ok::<_, String>((client, tools))
    };
    let result = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Err("the execution was cancelled".to_owned()),
        r = tokio::time::timeout(timeout, ready) => match r {
            Ok(r) => r,
            Err(_) => {
                let diagnostics = process.as_ref().map(ServerProcess::diagnostics).unwrap_or_default();
                if let Some(p) = process.take() {
                    p.stop().await;
                }
                return Err(StartError::Timeout { server: name, timeout, diagnostics });
            }
        },
    };
    match result {
        Ok((client, tools)) => Ok((
            Connected {
                name,
                client,
                process,
            },
            tools,
            plan.allow,
        )),
        Err(reason) => {
            let diagnostics = match &process {
                Some(p) => {
                    // The server's last words arrive with its exit: give them a moment.
                    for _ in 0..40 {
                        if p.exited() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    p.diagnostics()
                }
                None => String::new(),
            };
            if let Some(p) = process {
                p.stop().await;
            }
            Err(StartError::Handshake {
                server: name,
                reason,
                diagnostics,
            })
        }
    }
}

/// Starts the stdio server's process (or prepares the HTTP transport) and returns the MCP
/// handshake still to run.
async fn open<'a, S: SandboxSource>(
    plan: &ServerPlan,
    ctx: &StartContext<'a, S>,
) -> Result<(Option<ServerProcess>, Handshake<'a>), StartError> {
    let server = plan.name.clone();
    match &plan.kind {
        Kind::Stdio(stdio) => {
            ctx.sandboxes
                .can_run_servers()
                .map_err(|reason| StartError::Sandbox {
                    server: server.clone(),
                    reason,
                })?;
            let sandbox = ctx
                .sandboxes
                .sandbox()
                .await
                .map_err(|reason| StartError::Sandbox {
                    server: server.clone(),
                    reason,
                })?;
            let search = stdio
                .env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_else(|| crate::sandbox::BASE_PATH.to_owned());
            let program =
                config::locate(&stdio.command, &search).map_err(|source| StartError::Config {
                    server: server.clone(),
                    source,
                })?;
            let mut env = stdio.env.clone();
            if !env.contains_key("PATH") {
                let mut dirs = program.path_dirs.clone();
                dirs.extend(std::env::split_paths(crate::sandbox::BASE_PATH));
                dirs.dedup();
                if let Ok(path) = std::env::join_paths(dirs) {
                    env.insert("PATH".into(), path.to_string_lossy().into_owned());
                }
            }
            let mut process = sandbox
                .spawn_server(ServerRequest {
                    program: &program.path,
                    args: &stdio.args,
                    env: &env,
                    network: stdio.network,
                    read_paths: &program.read_paths,
                })
                .await
                .map_err(|e| StartError::Spawn {
                    server: server.clone(),
                    reason: e.to_string(),
                })?;
            let Some(pipes) = process.take_pipes() else {
                return Err(StartError::Spawn {
                    server,
                    reason: "its pipes were not set up".into(),
                });
            };
            let handshake: Handshake<'a> = Box::pin(async move {
                ().serve(pipes)
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))
            });
            Ok((Some(process), handshake))
        }
        Kind::Http { url, headers } => {
            use rmcp::transport::StreamableHttpClientTransport;
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            let mut custom = HashMap::new();
            for (name, value) in headers {
                let bad = |reason: String| StartError::Config {
                    server: server.clone(),
                    source: config::ConfigError::BadHeader {
                        name: name.clone(),
                        reason,
                    },
                };
                let header =
                    http::HeaderName::try_from(name.as_str()).map_err(|e| bad(e.to_string()))?;
                let mut value =
                    http::HeaderValue::try_from(value.as_str()).map_err(|e| bad(e.to_string()))?;
                value.set_sensitive(true);
                custom.insert(header, value);
            }
            let config =
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom);
            let transport = StreamableHttpClientTransport::with_client(ctx.http.clone(), config);
            let url = url.clone();
            let handshake: Handshake<'a> = Box::pin(async move {
                ().serve(transport)
                    .await
                    .map_err(|e| format!("connecting to {url} failed: {e}"))
            });
            Ok((None, handshake))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_models_cannot_take_are_refused() {
        // A built-in's name (a server cannot produce one through `__`, but the check stays
        // should the separator ever change).
        assert!(
            refuse_name("run_command").is_some_and(|why| why.contains("name of a built-in tool"))
        );
        assert!(refuse_name(&format!("s__{}", "t".repeat(64))).is_some_and(|w| w.contains("64")));
        assert!(refuse_name("s__get.file").is_some_and(|w| w.contains("characters")));
        assert_eq!(refuse_name("everything__get-sum"), None);
    }
}
