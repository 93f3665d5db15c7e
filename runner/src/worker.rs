//! The worker: claims executions while it has free slots, runs each on its own task, renews
//! leases with time-based heartbeats, and shuts down in one place (`Worker::shutdown`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stigmer_proto::runner::v1::{ClaimedExecution, HeartbeatRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{BearerAuth, ClientError, Connection, ControlPlane};
use crate::cloud::{self, CloudStartError};
use crate::config::{Config, LocalConfig, Mode};
use crate::context::WorkerCtx;
use crate::dispatch::{Claimed, Dispatch};
use crate::execution;
use crate::http::{self, BindError, Health};
use crate::inflight::{ExecHandle, InFlight, Interrupt, cancel_reason};
use crate::live::LiveText;
use crate::llm::{LlmClient, LlmError, LlmSettings};
use crate::sandbox::confine::ConfineError;
use crate::sandbox::{Confinement, SandboxError, SandboxRoot};
use crate::sandboxes::Sandboxes;
use crate::tools::ToolLimits;

/// Most executions taken in one claim call.
const MAX_CLAIM_BATCH: usize = 32;
/// How long cancelled executions get to report CANCELLED after the drain timeout.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
/// probe runs the helper, see `confine::helper_binary`). Prints what is enforced.
async fn open_local_sandboxes(config: &LocalConfig) -> Result<SandboxRoot, StartError> {
    let sandbox_err = |source| StartError::Sandbox {
        path: config.sandbox_root_display(),
        source,
    };
    let mut root = SandboxRoot::new(&config.sandbox_root).map_err(sandbox_err)?;
    let own = std::env::current_exe().map_err(StartError::OwnBinary)?;
    let helper = crate::sandbox::confine::helper_binary(&own);
    let probe_dir = root.probe_dir().map_err(sandbox_err)?;
    let confinement = Confinement::detect(&config.sandbox, &helper, &probe_dir).await?;
    println!("{}", crate::banner::sandbox(&confinement.status()));
    root.set_confinement(confinement);
    Ok(root)
}

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
        // The one place the mode is decided: every later step goes through these two seams.
        let (dispatch, sandboxes, auth) = match &config.mode {
            Mode::Local(local) => {
                let root = open_local_sandboxes(local).await?;
                let _ = health.sandbox.set(root.confinement().status());
                let auth = BearerAuth::new(local.api_key.expose())?;
                (Dispatch::LongPoll, Sandboxes::Filesystem(root), auth)
            }
            Mode::Cloud(settings) => {
                let (queue, pool) = cloud::start(&config, settings).await?;
                let auth = cloud::bearer(&queue);
                (
                    Dispatch::Queue(Box::new(queue)),
                    Sandboxes::Daytona(Box::new(pool)),
                    auth,
                )
            }
        };
        let tls = cloud::tls_for(&config).map_err(CloudStartError::from)?;
        let client = ControlPlane::connect(Connection {
            endpoint: &config.backend_endpoint,
            auth,
            tls,
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
        let live = LiveText::start(client.clone(), config.runner_id.clone(), health.clone());
        let ctx = Arc::new(WorkerCtx {
            config,
            client,
            llm,
            dispatch,
            sandboxes,
            tool_limits,
            health,
            live,
        });
        let inflight = Arc::new(InFlight::default());
        let heartbeat_task = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            inflight.clone(),
            stop_background.clone(),
        ));
        let mut background = vec![http_task, heartbeat_task];
        background.extend(
            ctx.dispatch
                .spawn_listeners(inflight.clone(), stop_background.clone()),
        );
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
        let claimed = self
            .ctx
            .dispatch
            .claim(&self.ctx.client, &self.ctx.config, free)
            .await?;
        self.ctx
            .health
            .metrics
            .claim_wait
            .observe(started.elapsed().as_secs_f64());
        Ok(claimed)
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
            ctx.dispatch.settle(&handle, &ending).await;
            inflight.remove(&handle.execution_id);
            health.in_flight.fetch_sub(1, Ordering::Relaxed);
            health.metrics.in_flight.dec();
            health.metrics.execution_finished(ending.label());
            drop(permit);
        });
    }

    /// All cleanup, in order: stop claiming, let in-flight executions finish up to the drain
    /// timeout, cancel the rest and let them report CANCELLED, then stop heartbeats and the
    /// HTTP server. Sandboxes of stored sessions stay (the next execution of the session uses
    /// them).
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
        self.ctx.dispatch.shutdown(&self.ctx.config.runner_id).await;
        self.ctx.sandboxes.cleanup().await;
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
        ctx.dispatch
            .on_heartbeat(&ctx.config, &ctx.health, &inflight)
            .await;
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

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_claiming.cancel();
        self.stop_background.cancel();
    }
}
