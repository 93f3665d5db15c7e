//! The built-in tools the model may call, executed in the session's sandbox.
//!
//! INTERFACE (kept stable for the agent loop): `specs`, `execute`, `ToolContext`, `ToolLimits`,
//! `ToolOutcome`, `ToolEffect`, `TodoUpdate`, `ToolError`, `ALL_TOOLS`.
