//! `/healthz` (the process serves requests), `/readyz` (connected and taking work),
//! `/metrics` (Prometheus) and `/status` (JSON for `stigmer local status`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Shared state the worker updates and the endpoints read.
pub struct Health {
    pub runner_id: String,
    pub capacity: usize,
    /// Cleared while the control plane cannot be reached.
    pub connected: AtomicBool,
    pub draining: AtomicBool,
    pub in_flight: AtomicUsize,
    pub metrics: Metrics,
    /// What the command sandbox enforces (local mode), set once at start.
    pub sandbox: std::sync::OnceLock<crate::sandbox::confine::SandboxStatus>,
}

impl Health {
    pub fn new(runner_id: String, capacity: usize) -> Self {
        let metrics = Metrics::new();
        metrics.capacity.set(capacity as i64);
        Self {
            runner_id,
            capacity,
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            metrics,
            sandbox: std::sync::OnceLock::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for health and metrics (STIGMER_HTTP_ADDR): {source}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

pub async fn serve(listener: TcpListener, health: Arc<Health>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(health);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "health and metrics server stopped");
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !h.connected.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "control plane unreachable\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn status(State(h): State<Arc<Health>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "runner_id": h.runner_id,
        "pid": std::process::id(),
        "capacity": h.capacity,
        "in_flight": h.in_flight.load(Ordering::Relaxed),
        "connected": h.connected.load(Ordering::Relaxed),
        "draining": h.draining.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
        "sandbox": h.sandbox.get(),
    }))
}
