//! The Stigmer control plane: agents, executions and sessions in SQLite, dispatch to runners
//! with leases and long-polling, and live execution state for subscribers, over gRPC.
//!
//! Embed it with [`serve`] (or [`ControlPlane`] to open the store before binding), or run the
//! `stigmer-server` binary.

mod api;
mod auth;
mod broadcast;
mod clock;
mod cloud;
mod config;
mod data_dir;
mod dispatch;
mod leases;
mod live;
mod merge;
mod secrets;
mod server;
mod store;
mod sweep;
mod transitions;

pub use config::{ConfigError, JwtAuth, RedisSettings, RedisTarget, ServerConfig, TlsFiles};
pub use data_dir::DataDirError;
pub use server::{ControlPlane, ServerError, serve};
/// Re-exported so that embedders can fill [`JwtAuth::key`] without depending on stigmer-auth.
pub use stigmer_auth::KeySource;
pub use store::StoreError;
