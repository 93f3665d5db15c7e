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

/// The API key local mode uses on both sides.
pub const LOCAL_API_KEY: &str = "dummy-local-key";

/// The default control-plane address in local mode.
pub const LOCAL_ENDPOINT: &str = "localhost:50051";
