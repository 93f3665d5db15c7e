//! Live model text end to end: the real `runner` binary, the real control plane (in this
//! process, real gRPC on loopback), a scripted model streaming pieces at a fixed pace, and
//! `SubscribeLive` clients; in local mode and in cloud mode through a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Harness, RUN_TIMEOUT, Wire, execution_id};
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, ExecutionEvent, MessageType, SubscribeExecutionRequest, TextDelta,
    execution_event,
};
use stigmer_server::{RedisSettings, RedisTarget, ServerConfig};
use testkit::control_plane::{TestControlPlane, phase};
use testkit::daytona::{DaytonaOptions, DaytonaServer};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr};
use testkit::redis::RedisServer;
use tonic::Streaming;

/// Pieces the model streams, `PACE` apart, each naming its number.
fn pieces(count: usize, filler: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("t{i:04}{} ", "-".repeat(filler)))
        .collect()
}

const PACE: Duration = Duration::from_millis(5);

/// What one live subscriber saw.
#[derive(Default)]
struct Seen {
    states: Vec<AgentExecution>,
    deltas: Vec<TextDelta>,
    gaps: usize,
    /// Deltas that brought text no state had shown yet.
    ahead_of_states: usize,
}

impl Seen {
    fn terminal(&self) -> &AgentExecution {
        self.states.last().expect("at least one state")
    }

    /// The text of message `index` as the deltas give it; holes must have been announced.
    fn text(&self, index: u32) -> String {
        let mut text = String::new();
        for delta in self.deltas.iter().filter(|d| d.message_index == index) {
            let offset = usize::try_from(delta.offset).unwrap();
            assert!(
                offset <= text.len() || self.gaps > 0,
                "text missing at {} without a gap marker",
                text.len()
            );
            if offset + delta.text.len() > text.len() && offset <= text.len() {
                text.truncate(offset);
                text.push_str(&delta.text);
            }
        }
        text
    }
}

async fn subscribe(cp: &TestControlPlane, id: &str) -> Streaming<ExecutionEvent> {
    let mut client: ExecutionServiceClient<_> = cp.executions().await;
    client
        .subscribe_live(SubscribeExecutionRequest { id: id.into() })
        .await
        .expect("subscribe live")
        .into_inner()
}

async fn read_all(mut stream: Streaming<ExecutionEvent>) -> Seen {
    let mut seen = Seen::default();
    while let Some(event) = stream.message().await.expect("live event") {
        match event.event.expect("an event") {
            execution_event::Event::Execution(execution) => seen.states.push(execution),
            execution_event::Event::Text(delta) => {
                let shown = seen
                    .states
                    .last()
                    .and_then(ai_text)
                    .map_or(0, |(_, text)| text.len() as u64);
                if delta.offset + delta.text.len() as u64 > shown {
                    seen.ahead_of_states += 1;
                }
                seen.deltas.push(delta);
            }
            execution_event::Event::Gap(_) => seen.gaps += 1,
        }
    }
    seen
}

/// The first AI message's index and text.
fn ai_text(e: &AgentExecution) -> Option<(u32, String)> {
    e.status
        .as_ref()?
        .messages
        .iter()
        .enumerate()
        .find_map(|(i, m)| {
            (m.r#type() == MessageType::MessageAi && !m.content.is_empty())
                .then(|| (u32::try_from(i).unwrap(), m.content.clone()))
        })
}

/// A fast reader gets every piece in order, as deltas ahead of the states; a reader that does
/// not read while the model streams holds up neither the runner nor the fast reader, and in
/// the end gets the terminal state with the whole text.
async fn check_live_path(cp: &TestControlPlane, agent: &str, expected: &str) {
    let created = cp.create_execution(agent, "", "stream please").await;
    let id = execution_id(&created);
    let fast = tokio::spawn(read_all(subscribe(cp, &id).await));
    let slow = subscribe(cp, &id).await;
    // The slow one reads nothing until the fast one has seen the end.
    let fast = tokio::time::timeout(RUN_TIMEOUT, fast)
        .await
        .expect("the fast reader finished while the slow one read nothing")
        .expect("fast reader");
    assert!(phase(fast.terminal()).is_terminal());
    let (index, final_text) = ai_text(fast.terminal()).expect("final text");
    assert_eq!(final_text, expected);
    assert_eq!(fast.gaps, 0, "a fast reader loses nothing");
    assert_eq!(
        fast.text(index),
        expected,
        "deltas, in order, give the text"
    );
    assert!(
        fast.deltas.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets only grow"
    );
    // The states are coalesced (a long flush interval): the text came live, not from them.
    assert!(
        fast.ahead_of_states >= 10,
        "only {} deltas came ahead of the states",
        fast.ahead_of_states
    );
    assert!(
        fast.states.len() < 10,
        "states stay coalesced: {}",
        fast.states.len()
    );
    let slow = tokio::time::timeout(RUN_TIMEOUT, read_all(slow))
        .await
        .expect("the slow reader reaches the end");
    assert_eq!(
        ai_text(slow.terminal()).map(|(_, t)| t).as_deref(),
        Some(expected)
    );
    // Whatever it got is consistent: text holes come with a gap marker (checked in `text`).
    let partial = slow.text(index);
    assert!(expected.starts_with(&partial) || slow.gaps > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_live_text_reaches_subscribers_in_order_without_waiting_for_slow_ones() {
    let text = pieces(300, 200);
    let expected = text.concat();
    let llm = ScriptedLlm::start(vec![Reply::Paced {
        pieces: text,
        every: PACE,
    }])
    .await;
    let harness = Harness::new(llm).await;
    harness.cp.apply_agent("streamer", "").await;
    let mut env = harness.runner_env(Wire::Anthropic);
    // Statuses coalesced far apart: only the live path can deliver the text as it streams.
    env.insert("STIGMER_STATUS_FLUSH_MS".into(), "5000".into());
    env.insert("LOG_LEVEL".into(), "info".into());
    let _runner = harness.start_runner(&env).await;
    check_live_path(&harness.cp, "streamer", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_live_text_goes_through_redis_in_order() {
    let redis = RedisServer::start();
    let daytona = DaytonaServer::start(DaytonaOptions::new("dtn-key")).await;
    let text = pieces(300, 200);
    let expected = text.concat();
    let llm = ScriptedLlm::start(vec![Reply::Paced {
        pieces: text,
        every: PACE,
    }])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = testkit::pki::unsigned_jwt("runner");
    let mut config = ServerConfig::local(dir.path().join("data"));
    config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
    let mut settings = RedisSettings::new(RedisTarget::Url(redis.url()));
    settings.events_block = Duration::from_millis(500);
    config.redis = Some(settings);
    let cp = TestControlPlane::start_with(config, None).await;
    cp.apply_agent("streamer", "").await;
    let env: BTreeMap<String, String> = [
        ("MODE", "cloud".to_string()),
        ("STIGMER_BACKEND_ENDPOINT", cp.endpoint()),
        ("STIGMER_BACKEND_INSECURE", "true".into()),
        ("STIGMER_API_KEY", jwt),
        ("REDIS_URL", redis.url()),
        ("DAYTONA_API_URL", daytona.api_url()),
        ("DAYTONA_API_KEY", "dtn-key".into()),
        ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "dev-tools".into()),
        ("STIGMER_LLM_PROVIDER", "anthropic".into()),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("STIGMER_LLM_BASE_URL", llm.base_url()),
        ("STIGMER_HTTP_ADDR", free_addr().to_string()),
        ("STIGMER_CLAIM_WAIT_MS", "500".into()),
        ("STIGMER_STATUS_FLUSH_MS", "5000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut runner = ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        &env,
        &dir.path().join("logs"),
        "cloud-runner",
    );
    runner.wait_ready(common::READY_TIMEOUT).await;
    check_live_path(&cp, "streamer", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_text_refuses_malformed_batches() {
    use runner::client::{BearerAuth, Connection, ControlPlane};
    use stigmer_proto::runner::v1::PublishTextRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = TestControlPlane::start(&dir.path().join("data")).await;
    let endpoint = cp.endpoint();
    let client = ControlPlane::connect(Connection {
        endpoint: &endpoint,
        auth: BearerAuth::new(stigmer_proto::LOCAL_API_KEY).unwrap(),
        tls: None,
        runner_id: "r",
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let delta = |id: &str| TextDelta {
        execution_id: id.into(),
        message_index: 1,
        offset: 0,
        text: "x".into(),
    };
    let send = |runner_id: &str, deltas: Vec<TextDelta>| {
        client.publish_text(PublishTextRequest {
            runner_id: runner_id.into(),
            deltas,
        })
    };
    // Nobody follows this execution: accepted and dropped.
    send("r", vec![delta("exec-unknown")]).await.unwrap();
    let missing_id = send("r", vec![delta("exec-a"), delta("")])
        .await
        .unwrap_err();
    assert_eq!(missing_id.code(), tonic::Code::InvalidArgument);
    assert!(missing_id.message().contains("deltas[1].execution_id"));
    let no_runner = send("", vec![delta("exec-a")]).await.unwrap_err();
    assert_eq!(no_runner.code(), tonic::Code::InvalidArgument);
    let too_many = send("r", vec![delta("exec-a"); 4097]).await.unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(too_many.message().contains("at most 4096"));
}
