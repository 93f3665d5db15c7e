//! The Stigmer agent runner: claims executions from the control plane, runs the agent loop
//! with tools in a sandbox, and reports cumulative status until each execution ends.
//!
//! Data flow: `config` (the mode, chosen once) → `worker` (claims through `dispatch`,
//! heartbeats, shutdown; builds the `context`) → `execution` (one claimed execution; its
//! session's sandbox from `sandboxes`) → `agent` (the loop) → `llm` (model calls) and `tools` →
//! `sandbox`; `projection` turns the loop's events into the status, which `status` reports,
//! coalesced; `http` serves health and `metrics`.

pub mod agent;
pub(crate) mod backoff;
pub mod banner;
pub mod client;
pub mod cloud;
pub mod config;
pub mod context;
pub mod conversation;
pub mod dispatch;
pub mod execution;
pub mod http;
pub mod inflight;
pub mod live;
pub mod llm;
pub mod mcp;
pub mod metrics;
#[cfg(test)]
mod numeric_config_tests;
pub mod printable;
pub mod projection;
pub mod redis;
pub mod sandbox;
pub mod sandboxes;
pub mod shutdown;
pub mod status;
pub mod tools;
pub mod worker;
