//! The built-in tools the model may call, executed in the session's sandbox.
//!
//! INTERFACE (kept stable for the agent loop): `specs`, `execute`, `ToolContext`, `ToolLimits`,
//! `ToolOutcome`, `ToolEffect`, `TodoUpdate`, `ToolError`, `ALL_TOOLS`.
//!
//! Anything the model got wrong (bad input, missing file, path outside the sandbox, failing
//! command) is a normal outcome with `is_error: true` and a message it can act on; only what
//! must stop the execution is a `ToolError`.

mod command;
mod files;
mod specs;
#[cfg(test)]
mod tests;
mod todos;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use stigmer_proto::agentexecution::v1::TodoStatus;
use stigmer_proto::rules::ToolChoice;
use tokio_util::sync::CancellationToken;

use crate::llm::ToolSpec;
use crate::sandbox::{Sandbox, SandboxError, cap_text};

/// The contract's list, so that the control plane refuses exactly the names this runner lacks.
pub const ALL_TOOLS: &[&str] = stigmer_proto::rules::BUILTIN_TOOLS;

/// Bounds on what one tool call may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolLimits {
    /// Used when the model gives no `timeout_secs`.
    pub command_timeout: Duration,
    /// Upper bound on any `timeout_secs` the model asks for.
    pub max_command_timeout: Duration,
    /// Bytes of tool output returned to the model; the middle of longer output is cut.
    pub output_limit: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(120),
            max_command_timeout: Duration::from_secs(600),
            output_limit: 32 * 1024,
        }
    }
}

/// What a tool call runs against.
#[derive(Debug, Clone, Copy)]
pub struct ToolContext<'a> {
    pub sandbox: &'a Sandbox,
    /// Added to every command's minimal environment.
    pub env: &'a BTreeMap<String, String>,
    pub cancel: &'a CancellationToken,
    pub limits: &'a ToolLimits,
    /// Whether commands may use the network (the agent's `sandbox.network`).
    pub network: crate::sandbox::Network,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// For the model, capped at `ToolLimits::output_limit`.
    pub output: String,
    pub is_error: bool,
    pub effect: ToolEffect,
}

impl ToolOutcome {
    pub(crate) fn ok(output: impl Into<String>) -> Self {
        Self {
            output: output.into(),
            is_error: false,
            effect: ToolEffect::None,
        }
    }

    pub(crate) fn error(output: impl Into<String>) -> Self {
        Self {
            output: output.into(),
            is_error: true,
            effect: ToolEffect::None,
        }
    }
}

/// What the agent loop must do besides returning the output to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEffect {
    None,
    /// Replace the execution's todo list with this one.
    Todos(Vec<TodoUpdate>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoUpdate {
    pub id: String,
    pub content: String,
    pub status: TodoStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool '{name}'; known tools: {}", ALL_TOOLS.join(", "))]
    UnknownTool { name: String },
    #[error("the tool call was cancelled")]
    Cancelled,
}

/// The specs of the tools an agent chose: all built-in ones, or exactly the named ones (none
/// for an empty list, so that no schema is sent to the model).
pub fn specs_for(choice: ToolChoice<'_>) -> Result<Vec<ToolSpec>, ToolError> {
    match choice {
        ToolChoice::AllBuiltIn => specs(&[]),
        ToolChoice::Only([]) => Ok(Vec::new()),
        ToolChoice::Only(names) => specs(names),
    }
}

/// The specs of the `allowed` tools, in the order given; all tools when `allowed` is empty.
pub fn specs(allowed: &[String]) -> Result<Vec<ToolSpec>, ToolError> {
    if allowed.is_empty() {
        return Ok(ALL_TOOLS.iter().filter_map(|n| specs::spec(n)).collect());
    }
    let mut out: Vec<ToolSpec> = Vec::with_capacity(allowed.len());
    for name in allowed {
        let spec =
            specs::spec(name).ok_or_else(|| ToolError::UnknownTool { name: name.clone() })?;
        if !out.iter().any(|s| s.name == spec.name) {
            out.push(spec);
        }
    }
    Ok(out)
}

/// Runs tool `name` with the model's `input`. The caller is expected to offer only the tools
/// it allows; an unknown name is reported to the model as an error outcome.
pub async fn execute(
    name: &str,
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, ToolError> {
    if ctx.cancel.is_cancelled() {
        return Err(ToolError::Cancelled);
    }
    let limit = ctx.limits.output_limit;
    let outcome = match name {
        // Capped by the sandbox while it runs, so that memory stays bounded.
        "run_command" => return finish(command::run_command(input, ctx).await),
        "read_file" => finish(files::read_file(input, ctx).await)?,
        "write_file" => finish(files::write_file(input, ctx).await)?,
        "edit_file" => finish(files::edit_file(input, ctx).await)?,
        "list_directory" => finish(files::list_directory(input, ctx).await)?,
        "write_todos" => finish(todos::write_todos(input))?,
        other => ToolOutcome::error(ToolError::UnknownTool { name: other.into() }.to_string()),
    };
    Ok(ToolOutcome {
        output: cap_text(&outcome.output, limit),
        ..outcome
    })
}

/// Parses the model's input for `tool`, or says what is wrong with it.
fn parse_input<T: DeserializeOwned>(tool: &str, input: &serde_json::Value) -> Result<T, Failure> {
    if !input.is_object() {
        return Err(Failure::Model(format!(
            "input for {tool} must be a JSON object with the fields of its schema, got {}",
            json_kind(input)
        )));
    }
    serde_json::from_value(input.clone())
        .map_err(|e| Failure::Model(format!("invalid input for {tool}: {e}")))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Why a tool stopped early: either the model's mistake (reported to it) or cancellation.
enum Failure {
    Model(String),
    Cancelled,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Model(message)
    }
}

impl From<SandboxError> for Failure {
    fn from(err: SandboxError) -> Self {
        match err {
            SandboxError::Cancelled => Self::Cancelled,
            other => Self::Model(other.to_string()),
        }
    }
}

/// Lets each tool be written with `?` and still turn mistakes into error outcomes.
fn finish(result: Result<ToolOutcome, Failure>) -> Result<ToolOutcome, ToolError> {
    match result {
        Ok(outcome) => Ok(outcome),
        Err(Failure::Model(message)) => Ok(ToolOutcome::error(message)),
        Err(Failure::Cancelled) => Err(ToolError::Cancelled),
    }
}
