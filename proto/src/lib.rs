//! The Stigmer gRPC contract: agents, executions, sessions and the runner API.
//!
//! Generated from `proto/` at build time. Helpers here are the few conversions every
//! component needs (phase names, terminal phases, timestamps).

#![allow(clippy::all, missing_docs)]

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("stigmer.agent.v1");
    }
}

pub mod agentexecution {
    pub mod v1 {
        tonic::include_proto!("stigmer.agentexecution.v1");
    }
}

pub mod runner {
    pub mod v1 {
        tonic::include_proto!("stigmer.runner.v1");
    }
}

pub mod rules;

pub use agentexecution::v1::ExecutionPhase;

impl ExecutionPhase {
    /// COMPLETED, FAILED and CANCELLED end an execution; nothing changes it afterwards.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionPhase::ExecutionCompleted
                | ExecutionPhase::ExecutionFailed
                | ExecutionPhase::ExecutionCancelled
        )
    }
}

impl runner::v1::ClaimedExecution {
    /// The claimed execution's id; empty when the control plane sent no metadata (it always
    /// does; an empty id then matches nothing the runner holds).
    pub fn execution_id(&self) -> &str {
        self.execution
            .as_ref()
            .and_then(|e| e.metadata.as_ref())
            .map_or("", |m| m.id.as_str())
    }
}

/// The API key local mode uses on both sides.
pub const LOCAL_API_KEY: &str = "dummy-local-key";

/// The default control-plane address in local mode.
pub const LOCAL_ENDPOINT: &str = "localhost:50051";
