//! JSON views of the API's messages for `--output json` (prost types carry no serde).

use serde_json::{Map, Value, json};
use stigmer_proto::agent::v1::Agent;
use stigmer_proto::agentexecution::v1::{AgentExecution, AgentMessage, TokenUsage, ToolCall};
use stigmer_proto::rules::{BUILTIN_TOOLS, ToolChoice};

pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn agent(a: &Agent) -> Value {
    let model = a.model.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "instructions": a.instructions,
        "model": {
            "provider": model.provider,
            "name": model.name,
            "max_tokens": model.max_tokens,
            "temperature": model.temperature,
        },
        // What the agent is offered, spelled out: all built-in tools when none were listed.
        "tools": match a.tool_choice() {
            ToolChoice::AllBuiltIn => BUILTIN_TOOLS.iter().map(|t| t.to_string()).collect(),
            ToolChoice::Only(names) => names.to_vec(),
        },
        "token_budget": a.token_budget,
        "env": a.env,
        "mcp_servers": a.mcp_servers.iter().map(mcp_server).collect::<Vec<_>>(),
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    })
}

/// Header values are shown as given (`${NAME}` placeholders, not the secrets they name).
fn mcp_server(s: &stigmer_proto::agent::v1::McpServer) -> Value {
    use stigmer_proto::agent::v1::mcp_server::Transport;
    let mut v = match &s.transport {
        Some(Transport::Stdio(t)) => {
            json!({"command": t.command, "args": t.args, "env": t.env})
        }
        Some(Transport::Http(t)) => json!({"url": t.url, "headers": t.headers}),
        None => json!({}),
    };
    v["name"] = json!(s.name);
    v["tools"] = json!(s.tools);
    v["network"] = json!(s.network().as_str_name());
    v["start_timeout_secs"] = json!(s.start_timeout_secs);
    v
}

pub fn usage(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "model_calls": u.model_calls,
        "calls_without_usage": u.calls_without_usage,
    })
}

fn tool_call(c: &ToolCall) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "args": c.args.as_ref().map(struct_to_json).unwrap_or(Value::Null),
        "status": c.status().as_str_name(),
        "result": c.result,
        "error": c.error,
        "started_at": c.started_at,
        "completed_at": c.completed_at,
    })
}

fn message(m: &AgentMessage) -> Value {
    json!({
        "type": m.r#type().as_str_name(),
        "content": m.content,
        "timestamp": m.timestamp,
        "tool_calls": m.tool_calls.iter().map(tool_call).collect::<Vec<_>>(),
    })
}

pub fn execution(e: &AgentExecution) -> Value {
    let meta = e.metadata.clone().unwrap_or_default();
    let spec = e.spec.clone().unwrap_or_default();
    let status = e.status.clone().unwrap_or_default();
    let runtime_env: Map<String, Value> = spec
        .runtime_env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"value": v.value, "is_secret": v.is_secret}),
            )
        })
        .collect();
    json!({
        "id": meta.id,
        "created_at": meta.created_at,
        "labels": meta.labels,
        "agent": spec.agent_id,
        "session_id": spec.session_id,
        "message": spec.message,
        "token_budget": spec.execution_config.as_ref().and_then(|c| c.token_budget),
        "runtime_env": runtime_env,
        "phase": status.phase().as_str_name(),
        "error": status.error,
        "started_at": status.started_at,
        "completed_at": status.completed_at,
        "messages": status.messages.iter().map(message).collect::<Vec<_>>(),
        "tool_calls": status.tool_calls.iter().map(tool_call).collect::<Vec<_>>(),
        "usage": status.usage.as_ref().map(usage),
        "usage_by_model": status.usage_by_model.iter().map(|m| json!({
            "provider": m.provider,
            "model": m.model,
            "usage": m.usage.as_ref().map(usage),
        })).collect::<Vec<_>>(),
        "todos": status.todos.values().map(|t| json!({
            "id": t.id, "content": t.content, "status": t.status().as_str_name(),
        })).collect::<Vec<_>>(),
    })
}
