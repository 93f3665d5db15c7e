//! Where sessions' sandboxes come from, chosen once at start from the mode: local mode's
//! filesystem root (one confined directory per session) or cloud mode's Daytona pool (one
//! sandbox per session, its id stored on the session). And the session sandbox an execution
//! opens on its first tool call.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use stigmer_proto::agentexecution::v1::Session;
use stigmer_proto::runner::v1::UpdateSessionRequest;

use crate::client::ControlPlane;
use crate::inflight::ExecHandle;
use crate::sandbox::daytona::DaytonaSandboxes;
use crate::sandbox::{Sandbox, SandboxRoot};

pub enum Sandboxes {
    /// Local: a directory per session under the sandbox root.
    Filesystem(SandboxRoot),
    /// Cloud: a Daytona sandbox per session.
    Daytona(Box<DaytonaPool>),
}

/// The Daytona sandboxes and which of them outlive this runner.
pub struct DaytonaPool {
    pub sandboxes: DaytonaSandboxes,
    /// Sessions whose sandbox id is stored on the control plane: their sandboxes outlive this
    /// runner; any other sandbox it created is deleted at shutdown.
    kept_sessions: Mutex<HashSet<String>>,
}

impl DaytonaPool {
    pub fn new(sandboxes: DaytonaSandboxes) -> Self {
        Self {
            sandboxes,
            kept_sessions: Mutex::new(HashSet::new()),
        }
    }

    pub fn keep_session(&self, session_id: &str) {
        self.kept_sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session_id.to_string());
    }

    pub fn kept_sessions(&self) -> Vec<String> {
        self.kept_sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// What opening a session's sandbox may need beyond the pool: storing a new sandbox's id on
/// the session, under the execution's lease.
pub struct Opener<'a> {
    pub client: &'a ControlPlane,
    pub handle: &'a ExecHandle,
    pub runner_id: &'a str,
}

impl Sandboxes {
    /// Local: the session's directory. Cloud: the session's Daytona sandbox, reused while
    /// alive; a new one's id is stored on the session so the next execution finds it.
    pub async fn open(&self, session: &Session, by: &Opener<'_>) -> Result<Sandbox, String> {
        let pool = match self {
            Sandboxes::Filesystem(root) => {
                let id = if session.sandbox_id.is_empty() {
                    &session.id
                } else {
                    &session.sandbox_id
                };
                return root.open(id).map_err(|e| e.to_string());
            }
            Sandboxes::Daytona(pool) => pool,
        };
        let known = Some(session.sandbox_id.as_str()).filter(|id| !id.is_empty());
        let (sandbox, created) = pool
            .sandboxes
            .open(&session.id, known, by.runner_id)
            .await
            .map_err(|e| e.to_string())?;
        if !created {
            return Ok(sandbox);
        }
        let stored = by
            .client
            .update_session(UpdateSessionRequest {
                execution_id: by.handle.execution_id.clone(),
                lease_id: by.handle.lease_id.clone(),
                session_id: session.id.clone(),
                sandbox_id: sandbox.id().to_string(),
                history: Vec::new(),
                replace_history: false,
            })
            .await;
        match stored {
            Ok(_) => pool.keep_session(&session.id),
            // Not kept: deleted at shutdown, and the next execution creates another.
            Err(e) => {
                tracing::warn!(session_id = %session.id, error = %e, "could not store the sandbox id on the session")
            }
        }
        Ok(sandbox)
    }

    /// At shutdown: cloud mode deletes sandboxes this runner created for no stored session.
    /// Local sessions' directories stay (the next execution of the session uses them).
    pub async fn cleanup(&self) {
        let Sandboxes::Daytona(pool) = self else {
            return;
        };
        let cleanup = pool.sandboxes.cleanup_unowned(&pool.kept_sessions()).await;
        if !cleanup.deleted.is_empty() || !cleanup.failed.is_empty() {
            tracing::info!(deleted = ?cleanup.deleted, failed = ?cleanup.failed, "sandbox cleanup");
        }
    }
}

/// The session's sandbox, opened on first use: an execution that calls no tool needs none.
pub struct SessionSandbox<'a> {
    sandboxes: &'a Sandboxes,
    opener: Opener<'a>,
    session: &'a Session,
    cell: tokio::sync::OnceCell<Sandbox>,
}

impl<'a> SessionSandbox<'a> {
    pub fn new(sandboxes: &'a Sandboxes, opener: Opener<'a>, session: &'a Session) -> Self {
        Self {
            sandboxes,
            opener,
            session,
            cell: tokio::sync::OnceCell::new(),
        }
    }

    /// Cloud mode: the session's sandbox is a Daytona one.
    pub fn is_cloud(&self) -> bool {
        matches!(self.sandboxes, Sandboxes::Daytona(_))
    }

    pub async fn get(&self) -> Result<&Sandbox, String> {
        self.cell
            .get_or_try_init(|| self.sandboxes.open(self.session, &self.opener))
            .await
            .map_err(|e| {
                format!(
                    "cannot prepare the sandbox for session {}: {e}",
                    self.session.id
                )
            })
    }
}
