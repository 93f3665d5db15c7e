//! A forwarding proxy for the runner API (`RunnerService`), in this process, between a real
//! runner and the real control plane. Tests use it to stop a runner at an exact point of its
//! conversation with the control plane: the first call matching a rule is held, either before
//! the control plane sees it or after the control plane answered it (the runner then never
//! hears back), and the test observes that the call is held, then kills the runner or lets
//! the call go on. It can also make status updates slow, as an overloaded control plane would,
//! or fail a kind of call as an unreachable one would.
//!
//! Everything else is forwarded unchanged, including the caller's `authorization` header and
//! the control plane's errors.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stigmer_proto::agentexecution::v1::{AgentExecution, Session};
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_proto::runner::v1::runner_service_server::{RunnerService, RunnerServiceServer};
use stigmer_proto::runner::v1::{
    ClaimRequest, ClaimResponse, HeartbeatRequest, HeartbeatResponse, PublishTextRequest,
    PublishTextResponse, UpdateSessionRequest, UpdateStatusRequest,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// As large as the control plane accepts: statuses are cumulative.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// One call from the runner, as the proxy received it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    Claim(&'a ClaimRequest),
    Heartbeat(&'a HeartbeatRequest),
    UpdateStatus(&'a UpdateStatusRequest),
    UpdateSession(&'a UpdateSessionRequest),
    PublishText(&'a PublishTextRequest),
}

/// The kinds of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    Claim,
    Heartbeat,
    UpdateStatus,
    UpdateSession,
    PublishText,
}

impl Call<'_> {
    pub fn rpc(&self) -> Rpc {
        match self {
            Call::Claim(_) => Rpc::Claim,
            Call::Heartbeat(_) => Rpc::Heartbeat,
            Call::UpdateStatus(_) => Rpc::UpdateStatus,
            Call::UpdateSession(_) => Rpc::UpdateSession,
            Call::PublishText(_) => Rpc::PublishText,
        }
    }
}

/// Where a matching call stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// The control plane never sees the call.
    BeforeForwarding,
    /// The control plane has applied the call; its answer never reaches the runner.
    AfterForwarding,
}

type Matcher = Box<dyn Fn(&Call<'_>) -> bool + Send + Sync>;

struct Rule {
    point: HoldPoint,
    matches: Matcher,
    reached: watch::Sender<bool>,
    release: CancellationToken,
}

struct Shared {
    upstream: RunnerServiceClient<Channel>,
    rules: Mutex<Vec<Rule>>,
    status_delay: Mutex<Duration>,
    failing: Mutex<HashSet<Rpc>>,
    shutdown: CancellationToken,
}

impl Shared {
    /// Takes the first rule that matches `call` (each rule holds one call).
    fn take_rule(&self, call: &Call<'_>) -> Option<Rule> {
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let at = rules.iter().position(|rule| (rule.matches)(call))?;
        Some(rules.remove(at))
    }

    /// Returns when the test releases the call (`Ok`) or the proxy stops.
    async fn hold(&self, rule: &Rule) -> Result<(), Status> {
        rule.reached.send_replace(true);
        tokio::select! {
            () = rule.release.cancelled() => Ok(()),
            () = self.shutdown.cancelled() => Err(Status::unavailable("runner proxy stopped")),
        }
    }

    async fn forward<Req, Res, F, Fut>(
        &self,
        call: Call<'_>,
        request: Request<Req>,
        send: F,
    ) -> Result<Response<Res>, Status>
    where
        Req: Clone,
        F: FnOnce(RunnerServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Res>, Status>>,
    {
        if self
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&call.rpc())
        {
            return Err(Status::unavailable("runner proxy: call lost on the way"));
        }
        let rule = self.take_rule(&call);
        if let Some(rule) = &rule
            && rule.point == HoldPoint::BeforeForwarding
        {
            self.hold(rule).await?;
        }
        let mut outgoing = Request::new(request.get_ref().clone());
        if let Some(auth) = request.metadata().get("authorization") {
            outgoing
                .metadata_mut()
                .insert("authorization", auth.clone());
        }
        let answer = send(self.upstream.clone(), outgoing).await;
        if let Some(rule) = &rule
            && rule.point == HoldPoint::AfterForwarding
        {
            self.hold(rule).await?;
        }
        answer.map(|response| Response::new(response.into_inner()))
    }

    fn status_delay(&self) -> Duration {
        *self
            .status_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A held call, once it happens.
pub struct Held {
    reached: watch::Receiver<bool>,
    release: CancellationToken,
}

impl Held {
    /// Waits until a matching call is being held; panics after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        let reached = tokio::time::timeout(timeout, self.reached.wait_for(|held| *held)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "no matching call reached the runner proxy within {timeout:?}"
        );
    }

    pub fn is_held(&self) -> bool {
        *self.reached.borrow()
    }

    /// Lets the held call go on: forwarded now (before forwarding) or answered now (after).
    pub fn release(&self) {
        self.release.cancel();
    }
}

/// The proxy, serving on an ephemeral loopback port until dropped.
pub struct RunnerProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl RunnerProxy {
    /// Forwards to the control plane reachable through `upstream` (e.g.
    /// `TestControlPlane::channel`).
    pub async fn start(upstream: Channel) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("runner proxy: bind a loopback port");
        let addr = listener.local_addr().expect("runner proxy: local addr");
        let shared = Arc::new(Shared {
            upstream: RunnerServiceClient::new(upstream)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            rules: Mutex::new(Vec::new()),
            status_delay: Mutex::new(Duration::ZERO),
            failing: Mutex::new(HashSet::new()),
            shutdown: CancellationToken::new(),
        });
        let service = RunnerServiceServer::new(Proxy(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let stop = shared.shutdown.clone();
        tokio::spawn(async move {
            // A failing proxy shows up as connection errors in the test itself.
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await;
        });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:PORT`: the runner's `STIGMER_BACKEND_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds the first call for which `matches` is true at `point`; later calls pass.
    pub fn hold(
        &self,
        point: HoldPoint,
        matches: impl Fn(&Call<'_>) -> bool + Send + Sync + 'static,
    ) -> Held {
        let (reached, receiver) = watch::channel(false);
        let release = CancellationToken::new();
        self.shared
            .rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Rule {
                point,
                matches: Box::new(matches),
                reached,
                release: release.clone(),
            });
        Held {
            reached: receiver,
            release,
        }
    }

    /// While `lost` is true, calls of this kind fail with UNAVAILABLE without reaching the
    /// control plane, as if the network dropped them.
    pub fn lose(&self, rpc: Rpc, lost: bool) {
        let mut failing = self
            .shared
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if lost {
            failing.insert(rpc);
        } else {
            failing.remove(&rpc);
        }
    }

    /// Every status update waits this long before it is forwarded: a slow control plane. A
    /// runner that dies meanwhile takes its update with it (the call is abandoned).
    pub fn delay_status_updates(&self, delay: Duration) {
        *self
            .shared
            .status_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }
}

impl Drop for RunnerProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

struct Proxy(Arc<Shared>);

#[tonic::async_trait]
impl RunnerService for Proxy {
    async fn claim(
        &self,
        request: Request<ClaimRequest>,
    ) -> Result<Response<ClaimResponse>, Status> {
        let body = request.get_ref().clone();
        self.0
            .forward(Call::Claim(&body), request, |mut c, r| async move {
                c.claim(r).await
            })
            .await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let body = request.get_ref().clone();
        self.0
            .forward(Call::Heartbeat(&body), request, |mut c, r| async move {
                c.heartbeat(r).await
            })
            .await
    }

    async fn update_status(
        &self,
        request: Request<UpdateStatusRequest>,
    ) -> Result<Response<AgentExecution>, Status> {
        let delay = self.0.status_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let body = request.get_ref().clone();
        self.0
            .forward(Call::UpdateStatus(&body), request, |mut c, r| async move {
                c.update_status(r).await
            })
            .await
    }

    async fn update_session(
        &self,
        request: Request<UpdateSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let body = request.get_ref().clone();
        self.0
            .forward(Call::UpdateSession(&body), request, |mut c, r| async move {
                c.update_session(r).await
            })
            .await
    }

    async fn publish_text(
        &self,
        request: Request<PublishTextRequest>,
    ) -> Result<Response<PublishTextResponse>, Status> {
        let body = request.get_ref().clone();
        self.0
            .forward(Call::PublishText(&body), request, |mut c, r| async move {
                c.publish_text(r).await
            })
            .await
    }
}
