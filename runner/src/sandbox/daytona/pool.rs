//! One Daytona sandbox per session, reused while it lives.
//!
//! The session remembers its sandbox id (the worker stores it through the control plane); this
//! module decides whether that sandbox can be used again, starts it when stopped, and makes a
//! new one when it is gone. Sandboxes this runner made are remembered so that shutdown can
//! delete the ones no kept session needs.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::client::{CreateSandbox, DaytonaClient, SandboxInfo, SandboxState};
use super::error::DaytonaError;
use super::sandbox::{DEFAULT_WORK_DIR, DaytonaSandbox};
use crate::sandbox::{Sandbox, SandboxError};

pub const LABEL_SESSION: &str = "stigmer.session";
pub const LABEL_RUNNER: &str = "stigmer.runner";
pub const LABEL_MANAGED: &str = "stigmer.managed";

/// What new sandboxes are made from and how long to wait for them.
#[derive(Debug, Clone)]
pub struct DaytonaPoolSettings {
    /// `DAYTONA_DEV_TOOLS_SNAPSHOT_ID`; Daytona's default snapshot when None.
    pub snapshot: Option<String>,
    pub work_dir: String,
    /// Bound on waiting for a sandbox to reach `started` (create or start).
    pub start_timeout: Duration,
    /// Minutes of inactivity before Daytona stops the sandbox.
    pub auto_stop_interval: Option<u32>,
    /// Minutes after stopping before Daytona deletes it: the backstop when a runner dies
    /// without cleaning up.
    pub auto_delete_interval: Option<i64>,
    /// Environment of every command in the sandbox.
    pub env: BTreeMap<String, String>,
}

impl DaytonaPoolSettings {
    pub fn new(snapshot: Option<String>) -> Self {
        Self {
            snapshot,
            work_dir: DEFAULT_WORK_DIR.to_owned(),
            start_timeout: Duration::from_secs(120),
            auto_stop_interval: Some(15),
            auto_delete_interval: Some(60),
            env: BTreeMap::new(),
        }
    }
}

/// What `cleanup_unowned` did; failures are logged and stay remembered for a later attempt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub deleted: Vec<String>,
    pub failed: Vec<String>,
}

#[derive(Debug)]
pub struct DaytonaSandboxes {
    client: DaytonaClient,
    settings: DaytonaPoolSettings,
    /// Sandbox id → session id, for the sandboxes this runner created.
    created: Mutex<BTreeMap<String, String>>,
}

impl DaytonaSandboxes {
    pub fn new(client: DaytonaClient, settings: DaytonaPoolSettings) -> Self {
        Self {
            client,
            settings,
            created: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn client(&self) -> &DaytonaClient {
        &self.client
    }

    /// The session's sandbox, started. Reuses `known_sandbox_id` when it still exists (starting
    /// it if stopped); otherwise creates one labelled with the session and the runner. `created`
    /// tells the caller to store the new id on the session.
    ///
    /// Not safe to call concurrently for one session: both calls could create a sandbox.
    pub async fn open(
        &self,
        session_id: &str,
        known_sandbox_id: Option<&str>,
        runner_id: &str,
    ) -> Result<(Sandbox, bool), SandboxError> {
        let deadline = Instant::now() + self.settings.start_timeout;
        if let Some(id) = known_sandbox_id.filter(|id| !id.is_empty())
            && let Some(info) = self.revive(id, deadline).await?
        {
            let sandbox = self.attach(&info).await?;
            return Ok((sandbox, false));
        }
        let info = self.create(session_id, runner_id, deadline).await?;
        let sandbox = self.attach(&info).await?;
        Ok((sandbox, true))
    }

    /// Deletes the sandboxes this runner created for sessions not in `keep` (session ids).
    pub async fn cleanup_unowned(&self, keep: &[String]) -> Cleanup {
        let doomed: Vec<(String, String)> = self
            .remembered()
            .into_iter()
            .filter(|(_, session)| !keep.contains(session))
            .collect();
        let mut report = Cleanup::default();
        for (sandbox_id, session_id) in doomed {
            match self.client.delete_sandbox(&sandbox_id).await {
                Ok(()) => {
                    self.forget(&sandbox_id);
                    report.deleted.push(sandbox_id);
                }
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox_id, session = %session_id, error = %e,
                        "could not delete a Daytona sandbox at cleanup");
                    report.failed.push(sandbox_id);
                }
            }
        }
        report
    }

    /// Sandbox ids this runner created and has not deleted, with their session ids.
    pub fn remembered(&self) -> Vec<(String, String)> {
        let created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        created
            .iter()
            .map(|(s, sess)| (s.clone(), sess.clone()))
            .collect()
    }

    /// The existing sandbox, started; None when it is gone or broken beyond reuse.
    async fn revive(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<SandboxInfo>, SandboxError> {
        let info = match self.client.get_sandbox(id).await {
            Ok(info) => info,
            Err(e) if e.is_sandbox_gone() => {
                tracing::info!(sandbox = %id, "session sandbox is gone; creating a new one");
                return Ok(None);
            }
            Err(e) => return Err(SandboxError::Daytona(e)),
        };
        match info.state {
            SandboxState::Started => return Ok(Some(info)),
            state if state.is_gone() => return Ok(None),
            state if state.is_failed() => {
                tracing::warn!(sandbox = %id, state = %info.state_name,
                    reason = info.error_reason.as_deref().unwrap_or(""),
                    "session sandbox failed; replacing it");
                self.discard(id).await;
                return Ok(None);
            }
            SandboxState::Stopped | SandboxState::Archived => {
                self.client
                    .start_sandbox(id)
                    .await
                    .map_err(SandboxError::Daytona)?;
            }
            // Creating, starting, stopping and the rest settle by themselves.
            _ => {}
        }
        match self.client.wait_until_started(id, deadline).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_sandbox_gone() => Ok(None),
            Err(DaytonaError::SandboxFailed { .. }) => {
                self.discard(id).await;
                Ok(None)
            }
            Err(e) => Err(SandboxError::Daytona(e)),
        }
    }

    async fn create(
        &self,
        session_id: &str,
        runner_id: &str,
        deadline: Instant,
    ) -> Result<SandboxInfo, SandboxError> {
        let spec = CreateSandbox {
            snapshot: self.settings.snapshot.clone(),
            env: self.settings.env.clone(),
            labels: BTreeMap::from([
                (LABEL_SESSION.to_owned(), session_id.to_owned()),
                (LABEL_RUNNER.to_owned(), runner_id.to_owned()),
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
            ]),
            auto_stop_interval: self.settings.auto_stop_interval,
            auto_delete_interval: self.settings.auto_delete_interval,
            ..CreateSandbox::default()
        };
        let made = self
            .client
            .create_sandbox(&spec)
            .await
            .map_err(SandboxError::Daytona)?;
        // Remembered before waiting, so that a sandbox that never starts is still cleaned up.
        self.remember(&made.id, session_id);
        tracing::info!(sandbox = %made.id, session = %session_id, "created a Daytona sandbox");
        match self.client.wait_until_started(&made.id, deadline).await {
            Ok(info) => Ok(info),
            Err(e) => {
                self.discard(&made.id).await;
                Err(SandboxError::Daytona(e))
            }
        }
    }

    async fn attach(&self, info: &SandboxInfo) -> Result<Sandbox, SandboxError> {
        let toolbox = self.client.toolbox(info);
        DaytonaSandbox::attach(self.client.clone(), toolbox, &self.settings.work_dir)
            .await
            .map(Sandbox::Daytona)
    }

    /// Best-effort delete of a sandbox that cannot be used; Daytona's auto-delete is the
    /// backstop when this fails.
    async fn discard(&self, id: &str) {
        match self.client.delete_sandbox(id).await {
            Ok(()) => self.forget(id),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "could not delete a failed sandbox")
            }
        }
    }

    fn remember(&self, sandbox_id: &str, session_id: &str) {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        created.insert(sandbox_id.to_owned(), session_id.to_owned());
    }

    fn forget(&self, sandbox_id: &str) {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        created.remove(sandbox_id);
    }
}
