//! The worker: claims executions while it has free slots, runs each on its own task, renews
//! leases with time-based heartbeats, and shuts down in one place (`Worker::shutdown`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stigmer_proto::runner::v1::{ClaimRequest, ClaimedExecution, HeartbeatRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{BearerAuth, ClientError, Connection, ControlPlane};
use crate::cloud::{self, CloudRuntime, CloudStartError};
use crate::config::Config;
use crate::execution::{self, Ending};
use crate::http::{self, BindError, Health};
use crate::inflight::{ExecHandle, InFlight, Interrupt};
use crate::llm::{LlmClient, LlmError, LlmSettings};
use crate::redis::{CancelListener, PresenceRecord};
use crate::sandbox::confine::ConfineError;
use crate::sandbox::{Confinement, SandboxError, SandboxRoot};
use crate::tools::ToolLimits;

/// Most executions taken in one claim call.
const MAX_CLAIM_BATCH: usize = 32;
/// How long cancelled executions get to report CANCELLED after the drain timeout.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every execution task shares.
pub struct WorkerCtx {
    pub config: Config,
    pub client: ControlPlane,
    pub llm: LlmClient,
    /// Local mode's filesystem sandboxes.
    pub sandboxes: Option<SandboxRoot>,
    /// Cloud mode's Redis, token and Daytona sandboxes.
    pub cloud: Option<CloudRuntime>,
    pub tool_limits: ToolLimits,
    pub health: Arc<Health>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sandbox root {path}: {source}")]
    Sandbox {
        path: String,
        #[source]
        source: SandboxError,
    },
    #[error("command sandbox: {0}")]
    Confine(#[from] ConfineError),
    #[error("cannot find the runner's own binary (the sandbox helper): {0}")]
    OwnBinary(std::io::Error),
    #[error("LLM client: {0}")]
    Llm(#[from] LlmError),
    #[error(transparent)]
    ControlPlane(#[from] ClientError),
    #[error(transparent)]
    Http(#[from] BindError),
    #[error("cloud mode: {0}")]
    Cloud(#[from] CloudStartError),
}

/// Local mode: the sandbox root, with commands confined as far as this machine allows (the
/// probe runs the runner's own binary as the helper). Prints what is enforced.
async fn open_local_sandboxes(config: &Config) -> Result<SandboxRoot, StartError> {
    let sandbox_err = |source| StartError::Sandbox {
        path: config.sandbox_root_display(),
        source,
    };
    let mut root = SandboxRoot::new(&config.sandbox_root).map_err(sandbox_err)?;
    let helper = std::env::current_exe().map_err(StartError::OwnBinary)?;
    let probe_dir = root.probe_dir().map_err(sandbox_err)?;
    let confinement = Confinement::detect(&config.sandbox, &helper, &probe_dir).await?;
    println!("{}", crate::banner::sandbox(&confinement.status()));
    root.set_confinement(confinement);
    Ok(root)
}

/// A claimed execution and, in cloud mode, its queue entry (acknowledged once the terminal
/// status is stored).
type Claimed = (ClaimedExecution, Option<String>);

/// How the drain went, for the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Executions that had to be cancelled because the drain timeout passed.
    pub cancelled: usize,
}

pub struct Worker {
    ctx: Arc<WorkerCtx>,
    inflight: Arc<InFlight>,
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
    /// Stops claiming (first step of shutdown).
    stop_claiming: CancellationToken,
    /// Stops heartbeats and the HTTP server (last step of shutdown).
    stop_background: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Builds every dependency and fails fast on the first one that is not usable.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let health = Arc::new(Health::new(
            config.runner_id.clone(),
            config.max_concurrency,
        ));
        let listener = http::bind(config.http_addr).await?;
        let llm = LlmClient::new(LlmSettings {
            provider: config.llm.provider,
            base_url: config.llm.base_url.clone(),
            api_key: config.llm.api_key.clone(),
            request_timeout: config.llm.request_timeout,
            max_attempts: config.llm.max_attempts,
        })?;
        let (sandboxes, cloud) = match &config.cloud {
            None => {
                let root = open_local_sandboxes(&config).await?;
                let _ = health.sandbox.set(root.confinement().status());
                (Some(root), None)
            }
            Some(cloud) => (None, Some(CloudRuntime::start(&config, cloud).await?)),
        };
        let auth = match &cloud {
            Some(c) => c.bearer(),
            None => BearerAuth::new(config.api_key.expose())?,
        };
        let tls = cloud::tls_for(&config).map_err(CloudStartError::from)?;
        let ca_file = config.cloud.as_ref().and_then(|c| c.ca_file.clone());
        let client = ControlPlane::connect(Connection {
            endpoint: &config.backend_endpoint,
            auth,
            tls: tls.map(|t| (t, ca_file.as_deref())),
            runner_id: &config.runner_id,
            timeout: CONNECT_TIMEOUT,
        })
        .await?;
        health.connected.store(true, Ordering::Relaxed);
        let tool_limits = ToolLimits {
            command_timeout: config.tool_timeout,
            output_limit: config.tool_output_limit,
            ..ToolLimits::default()
        };
        let slots = Arc::new(Semaphore::new(config.max_concurrency));
        let stop_background = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(
            listener,
            health.clone(),
            stop_background.clone(),
        ));
        let ctx = Arc::new(WorkerCtx {
            config,
            client,
            llm,
            sandboxes,
            cloud,
            tool_limits,
            health,
        });
        let inflight = Arc::new(InFlight::default());
        let heartbeat_task = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            inflight.clone(),
            stop_background.clone(),
        ));
        let mut background = vec![http_task, heartbeat_task];
        if let Some(cloud) = &ctx.cloud {
            let listener = CancelListener::spawn(&cloud.redis, stop_background.clone());
            background.push(tokio::spawn(cancel_loop(listener, inflight.clone())));
        }
        Ok(Self {
            ctx,
            inflight,
            tasks: TaskTracker::new(),
            slots,
            stop_claiming: CancellationToken::new(),
            stop_background,
            background,
        })
    }

    pub fn health(&self) -> Arc<Health> {
        self.ctx.health.clone()
    }

    /// Claims and runs executions until `shutdown` fires, then drains.
    pub async fn run(mut self, shutdown: CancellationToken) -> DrainReport {
        tracing::info!(
            runner_id = %self.ctx.config.runner_id,
            "worker ready, waiting for executions"
        );
        tokio::select! {
            _ = self.dispatch_loop() => {}
            _ = shutdown.cancelled() => {}
        }
        self.shutdown().await
    }

    async fn dispatch_loop(&self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(permits) = self.free_slots().await else {
                return;
            };
            match self.claim(permits.len()).await {
                Ok(claimed) => {
                    backoff = Duration::from_millis(200);
                    self.ctx.health.connected.store(true, Ordering::Relaxed);
                    for ((execution, entry), permit) in claimed.into_iter().zip(permits) {
                        self.spawn_execution(execution, entry, permit);
                    }
                }
                Err(e) => {
                    self.ctx.health.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "claim failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop_claiming.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits for at least one free slot and takes every other free one too, so that one claim
    /// call can fill them all. None when claiming has stopped.
    async fn free_slots(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok()?,
            _ = self.stop_claiming.cancelled() => return None,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_CLAIM_BATCH {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    async fn claim(&self, free: usize) -> Result<Vec<Claimed>, String> {
        let started = Instant::now();
        let claimed = match &self.ctx.cloud {
            None => self.claim_local(free).await.map_err(|s| s.to_string())?,
            Some(cloud) => {
                let round = cloud
                    .dispatch
                    .round(&self.ctx.client, free, self.ctx.config.claim_wait)
                    .await
                    .map_err(|e| e.to_string())?;
                round
                    .claimed
                    .into_iter()
                    .map(|c| (c.execution, Some(c.entry_id)))
                    .collect()
            }
        };
        self.ctx
            .health
            .metrics
            .claim_wait
            .observe(started.elapsed().as_secs_f64());
        Ok(claimed)
    }

    async fn claim_local(&self, free: usize) -> Result<Vec<Claimed>, tonic::Status> {
        let request = ClaimRequest {
            runner_id: self.ctx.config.runner_id.clone(),
            max_executions: free as u32,
            wait_ms: self.ctx.config.claim_wait.as_millis() as u32,
            execution_ids: Vec::new(),
        };
        let response = self.ctx.client.claim(request).await?;
        Ok(response.executions.into_iter().map(|e| (e, None)).collect())
    }

    fn spawn_execution(
        &self,
        claimed: ClaimedExecution,
        entry: Option<String>,
        permit: OwnedSemaphorePermit,
    ) {
        let execution_id = claimed.execution_id().to_owned();
        let lease_id = claimed
            .lease
            .as_ref()
            .map(|l| l.lease_id.clone())
            .unwrap_or_default();
        let handle = Arc::new(ExecHandle::new(execution_id, lease_id).with_entry(entry));
        self.inflight.insert(handle.clone());
        let ctx = self.ctx.clone();
        let inflight = self.inflight.clone();
        let health = self.ctx.health.clone();
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        health.metrics.in_flight.inc();
        self.tasks.spawn(async move {
            let ending = execution::run(ctx.clone(), claimed, handle.clone()).await;
            acknowledge(&ctx, &handle, &ending).await;
            inflight.remove(&handle.execution_id);
            health.in_flight.fetch_sub(1, Ordering::Relaxed);
            health.metrics.in_flight.dec();
            health.metrics.execution_finished(ending.label());
            drop(permit);
        });
    }

    /// All cleanup, in order: stop claiming, let in-flight executions finish up to the drain
    /// timeout, cancel the rest and let them report CANCELLED, then stop heartbeats and the
    /// HTTP server. Sandboxes of sessions stay (the next execution of the session uses them).
    pub async fn shutdown(&mut self) -> DrainReport {
        self.stop_claiming.cancel();
        self.ctx.health.draining.store(true, Ordering::Relaxed);
        self.tasks.close();
        let drain = self.ctx.config.drain_timeout;
        let running = self.inflight.len();
        tracing::info!(
            in_flight = running,
            drain_timeout_s = drain.as_secs(),
            "draining"
        );
        let mut cancelled = 0;
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            let why = Interrupt::Shutdown(format!(
                "runner shutting down: drain timeout of {}s exceeded",
                drain.as_secs()
            ));
            cancelled = self.inflight.interrupt_all(&why);
            tracing::warn!(cancelled, "drain timeout passed; cancelling what is left");
            if tokio::time::timeout(CANCEL_GRACE, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::error!("executions did not stop within the grace period");
            }
        }
        if let Some(cloud) = &self.ctx.cloud {
            cloud_cleanup(cloud, &self.ctx.config.runner_id).await;
        }
        self.stop_background.cancel();
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        tracing::info!(cancelled, "shutdown complete");
        DrainReport { cancelled }
    }
}

/// Renews the leases of held executions every interval, independent of what they are doing, and
/// turns the answers into cancellations. Also keeps `/readyz` honest about connectivity.
async fn heartbeat_loop(ctx: Arc<WorkerCtx>, inflight: Arc<InFlight>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(ctx.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Some(cloud) = &ctx.cloud {
            cloud_heartbeat(&ctx, cloud, &inflight).await;
        }
        let request = HeartbeatRequest {
            runner_id: ctx.config.runner_id.clone(),
            held: inflight.held(),
        };
        match ctx.client.heartbeat(request).await {
            Ok(answer) => {
                ctx.health.connected.store(true, Ordering::Relaxed);
                for c in answer.cancellations {
                    tracing::info!(execution_id = %c.execution_id, reason = %c.reason, "cancellation requested");
                    inflight.interrupt(
                        &c.execution_id,
                        Interrupt::Cancelled(cancel_reason(&c.reason)),
                    );
                }
                for l in answer.lost {
                    inflight.interrupt(&l.execution_id, Interrupt::Lost(l.reason));
                }
            }
            Err(e) => {
                ctx.health.connected.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// Cloud: keeps the queue entries of held executions from being reclaimed, and refreshes this
/// runner's presence record.
async fn cloud_heartbeat(ctx: &WorkerCtx, cloud: &CloudRuntime, inflight: &InFlight) {
    let entries = inflight.entry_ids();
    if !entries.is_empty()
        && let Err(e) = cloud.dispatch.keep_fresh(&entries).await
    {
        tracing::warn!(error = %e, "could not refresh the queue entries of held executions");
    }
    let record = PresenceRecord {
        id: ctx.config.runner_id.clone(),
        pod: std::env::var("POD_NAME").unwrap_or_default(),
        capacity: ctx.config.max_concurrency as u32,
        in_flight: inflight.len() as u32,
        version: env!("CARGO_PKG_VERSION").to_string(),
        draining: ctx.health.draining.load(Ordering::Relaxed),
        updated_at: crate::status::now(),
    };
    if let Err(e) = cloud.presence.publish(&record).await {
        tracing::warn!(error = %e, "could not publish presence");
    }
}

/// Cloud: a cancellation published on Redis reaches the runner that holds the execution at
/// once (heartbeats carry it too, later).
async fn cancel_loop(mut listener: CancelListener, inflight: Arc<InFlight>) {
    while let Some(notice) = listener.recv().await {
        if inflight.interrupt(
            &notice.execution_id,
            Interrupt::Cancelled(cancel_reason(&notice.reason)),
        ) {
            tracing::info!(execution_id = %notice.execution_id, "cancellation received through Redis");
        }
    }
}

/// Cloud: the queue entry is acknowledged once the terminal status is stored. A lost lease is
/// not acknowledged: the control plane settles it when the entry is reclaimed.
async fn acknowledge(ctx: &WorkerCtx, handle: &ExecHandle, ending: &Ending) {
    let (Some(cloud), Some(entry)) = (&ctx.cloud, handle.entry_id.as_deref()) else {
        return;
    };
    if matches!(ending, Ending::Lost(_)) {
        return;
    }
    if let Err(e) = cloud.dispatch.ack(entry).await {
        tracing::warn!(execution_id = %handle.execution_id, error = %e, "could not acknowledge the queue entry; it will be settled when reclaimed");
    }
}

/// Cloud: leave the presence set and delete sandboxes this runner created for no stored session.
async fn cloud_cleanup(cloud: &CloudRuntime, runner_id: &str) {
    if let Err(e) = cloud.presence.remove(runner_id).await {
        tracing::warn!(error = %e, "could not remove the presence record");
    }
    let cleanup = cloud
        .sandboxes
        .cleanup_unowned(&cloud.kept_sessions())
        .await;
    if !cleanup.deleted.is_empty() || !cleanup.failed.is_empty() {
        tracing::info!(deleted = ?cleanup.deleted, failed = ?cleanup.failed, "sandbox cleanup");
    }
}

fn cancel_reason(reason: &str) -> String {
    if reason.trim().is_empty() {
        "cancelled by user".to_string()
    } else {
        reason.to_string()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_claiming.cancel();
        self.stop_background.cancel();
    }
}
