//! Health probes: the runner's HTTP `/readyz` and `/status`, and the control plane's standard
//! gRPC health service (unauthenticated by design).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The runner's `/status` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerStatus {
    pub runner_id: String,
    pub pid: u32,
    pub capacity: u64,
    pub in_flight: u64,
    pub connected: bool,
    pub draining: bool,
    pub version: String,
    /// Which confinement layers the runner enforces; absent from runners that do not say.
    pub sandbox: Option<SandboxStatus>,
}

/// The runner's `/status` `sandbox` field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxStatus {
    /// `auto`, `strict` or `off`.
    pub mode: String,
    /// Layers in force, e.g. `namespaces`, `landlock`, `seccomp`, `limits`.
    pub enforced: Vec<String>,
    pub missing: Vec<MissingLayer>,
    /// The Landlock ABI in force (0: none or not said).
    pub landlock_abi: i32,
    /// Commands see a `/proc` with only their own processes.
    pub private_proc: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MissingLayer {
    pub layer: String,
    pub reason: String,
}

impl SandboxStatus {
    /// `auto — enforced: namespaces, landlock; missing: cgroup (no delegated cgroup)`.
    pub fn summary(&self) -> String {
        let enforced = if self.enforced.is_empty() {
            "none".to_string()
        } else {
            self.enforced
                .iter()
                .map(|layer| match (layer.as_str(), self.landlock_abi) {
                    ("landlock", abi) if abi > 0 => format!("landlock (ABI {abi})"),
                    _ => layer.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!(
            "{} — enforced: {enforced}",
            if self.mode.is_empty() {
                "unknown mode"
            } else {
                &self.mode
            }
        );
        if !self.missing.is_empty() {
            let missing: Vec<String> = self
                .missing
                .iter()
                .map(|m| {
                    if m.reason.is_empty() {
                        m.layer.clone()
                    } else {
                        format!("{} ({})", m.layer, m.reason)
                    }
                })
                .collect();
            line.push_str(&format!("; missing: {}", missing.join(", ")));
        }
        line
    }
}

/// `GET path` over HTTP/1.0 (no chunked bodies to decode): status code and body, or `None`
/// when nothing answered in time.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// The runner is ready: connected to the control plane and not draining.
pub async fn runner_ready(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/readyz").await, Some((200, _)))
}

pub async fn runner_status(addr: SocketAddr) -> Option<RunnerStatus> {
    match http_get(addr, "/status").await {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHealth {
    Serving,
    NotServing,
    Unreachable,
}

impl ServerHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerHealth::Serving => "serving",
            ServerHealth::NotServing => "not serving",
            ServerHealth::Unreachable => "unreachable",
        }
    }
}

/// The overall status of the control plane's gRPC health service.
pub async fn server_health(endpoint: &str) -> ServerHealth {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .ok()?
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status())
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 2, check).await {
        Ok(Some(ServingStatus::Serving)) => ServerHealth::Serving,
        Ok(Some(_)) => ServerHealth::NotServing,
        _ => ServerHealth::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_plain_http_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let body = r#"{"runner_id":"r1","pid":7,"capacity":10,"in_flight":2,"connected":true,"draining":false,"version":"0.1.0"}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let status = runner_status(addr).await.expect("status");
        assert_eq!(status.in_flight, 2);
        assert_eq!(status.capacity, 10);
        assert!(status.connected);
        assert_eq!(status.sandbox, None, "a runner that does not report it");
    }

    /// One answer of a fake `/status` server.
    async fn serve_once(body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        addr
    }

    /// The `sandbox` field as the runner's `/status` carries it, from a small fake server;
    /// tests/local_security.rs checks it against the real runner.
    #[tokio::test]
    async fn reads_the_sandbox_layers() {
        let addr = serve_once(
            r#"{"runner_id":"r1","pid":7,"capacity":10,"in_flight":0,"connected":true,"draining":false,"version":"0.1.0",
               "sandbox":{"mode":"auto","enforced":["namespaces","landlock","seccomp","limits"],
                          "missing":[{"layer":"cgroup","reason":"no delegated cgroup v2 subtree"}]}}"#,
        )
        .await;
        let sandbox = runner_status(addr)
            .await
            .expect("status")
            .sandbox
            .expect("sandbox");
        assert_eq!(
            sandbox.summary(),
            "auto — enforced: namespaces, landlock, seccomp, limits; \
             missing: cgroup (no delegated cgroup v2 subtree)"
        );
        let off = SandboxStatus {
            mode: "off".into(),
            ..Default::default()
        };
        assert_eq!(off.summary(), "off — enforced: none");
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(!runner_ready(addr).await);
        assert_eq!(
            server_health(&format!("http://{addr}")).await,
            ServerHealth::Unreachable
        );
    }
}
