//! The AgentRunner operator: turns `AgentRunner` resources into runner Deployments and friends.
//!
//! Reconcile is a pipeline, one module per step: [`validate`] (pure) → [`secrets`]
//! (dereference the referenced Secrets) → [`build`] (pure) → [`apply`] (server-side apply)
//! → [`status`] (pure computation, written only when it changed). [`controller`] wires the
//! steps and the watches; [`rbac`] lists every API call the operator makes.

pub mod api_requests;
pub mod apply;
pub mod backoff;
pub mod build;
pub mod caches;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod rbac;
pub mod secrets;
pub mod status;
pub mod validate;

pub use crd::{AgentRunner, AgentRunnerSpec, AgentRunnerStatus};
pub use error::Error;
