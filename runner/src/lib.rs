//! The Stigmer agent runner: claims executions from the control plane, runs the agent loop
//! with tools in a sandbox, and reports cumulative status until each execution ends.
//!
//! Data flow: `config` → `worker` (claims, heartbeats, shutdown) → `execution` (one claimed
//! execution) → `agent` (the loop) → `llm` (model calls) and `tools` → `sandbox`; `status`
//! reports every change, coalesced; `http` serves health and `metrics`.

pub mod agent;
pub(crate) mod backoff;
pub mod banner;
pub mod client;
pub mod cloud;
pub mod cloud_config;
pub mod config;
pub mod conversation;
pub mod execution;
pub mod http;
pub mod inflight;
pub mod llm;
pub mod metrics;
#[cfg(test)]
mod numeric_config_tests;
pub mod printable;
pub mod redis;
pub mod sandbox;
pub mod shutdown;
pub mod status;
pub mod tools;
pub mod worker;
