//! The runner's contract with whoever starts it: the CLI's local supervisor, the Kubernetes
//! operator, and the runner's own config reader all name the same variables and providers
//! through this crate, so renaming one is a compile error everywhere instead of a runner that
//! silently ignores a setting at deploy time.
//!
//! No dependencies on purpose: every crate of the workspace can use it without pulling
//! anything in.

pub mod env;
mod errors;
mod provider;
mod secret;
pub mod text;

pub use errors::error_chain;
pub use provider::Provider;
pub use secret::Secret;
