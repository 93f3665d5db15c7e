//! Cloud mode's sandbox: a Daytona sandbox per session, driven over Daytona's REST API.
//!
//! `client` speaks the API, `sandbox` gives a started sandbox the operations tools need, and
//! `pool` ties sandboxes to sessions across executions.

mod client;
mod error;
mod pool;
mod sandbox;
#[cfg(test)]
mod tests;

pub use client::{
    CreateSandbox, DEFAULT_API_URL, DaytonaClient, DaytonaSettings, Execution, FileInfo,
    SandboxInfo, SandboxState, Toolbox,
};
pub use error::DaytonaError;
pub use pool::{
    Cleanup, DaytonaPoolSettings, DaytonaSandboxes, LABEL_MANAGED, LABEL_RUNNER, LABEL_SESSION,
};
pub use sandbox::{DEFAULT_WORK_DIR, DaytonaSandbox};
