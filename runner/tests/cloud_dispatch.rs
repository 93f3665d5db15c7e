//! The control plane in cloud mode (Redis dispatch and events) with the runner's Redis
//! module, against a real `redis-server` started by the test (`scripts/test` installs it).
//! These live in the runner's tests because the server crate cannot depend on testkit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use runner::client::{BearerAuth, Connection, ControlPlane};
use runner::redis::{
    CancelListener, QueueConsumer, Redis, RedisDispatch, RedisSettings, RedisTarget, connect,
};
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::{AgentExecutionStatus, CancelExecutionRequest};
use stigmer_proto::runner::v1::{ClaimRequest, ClaimResponse, UpdateStatusRequest};
use stigmer_server::{RedisSettings as ServerRedis, RedisTarget as ServerTarget, ServerConfig};
use testkit::control_plane::{TestControlPlane, phase};
use testkit::redis::RedisServer;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_millis(500);

async fn control_plane(
    redis: &RedisServer,
    dir: &tempfile::TempDir,
    sweep: Duration,
) -> TestControlPlane {
    let mut config = ServerConfig::local(dir.path());
    config.lease_ttl = LEASE;
    config.sweep_interval = sweep;
    config.max_claim_wait = Duration::from_secs(1);
    let mut settings = ServerRedis::new(ServerTarget::Url(redis.url()));
    settings.events_block = Duration::from_millis(500);
    config.redis = Some(settings);
    TestControlPlane::start_with(config, None).await
}

async fn runner_client(cp: &TestControlPlane, runner_id: &str) -> ControlPlane {
    let endpoint = cp.endpoint();
    ControlPlane::connect(Connection {
        endpoint: &endpoint,
        auth: BearerAuth::new(stigmer_proto::LOCAL_API_KEY).unwrap(),
        tls: None,
        runner_id,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

async fn runner_redis(server: &RedisServer, consumer: &str) -> Redis {
    let mut settings = RedisSettings::new(RedisTarget::Url(server.url()), consumer);
    settings.min_idle = Duration::from_millis(300);
    connect(settings).await.unwrap()
}

async fn claim_ids(client: &ControlPlane, runner: &str, ids: &[&str]) -> ClaimResponse {
    client
        .claim(ClaimRequest {
            runner_id: runner.into(),
            max_executions: 1,
            wait_ms: 0,
            execution_ids: ids.iter().map(|id| id.to_string()).collect(),
        })
        .await
        .unwrap()
}

async fn report(client: &ControlPlane, id: &str, lease: &str, phase: ExecutionPhase) {
    client
        .update_status(UpdateStatusRequest {
            execution_id: id.into(),
            lease_id: lease.into(),
            status: Some(AgentExecutionStatus {
                phase: phase.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn lease_of(response: &ClaimResponse) -> String {
    response.executions[0]
        .lease
        .as_ref()
        .unwrap()
        .lease_id
        .clone()
}

async fn queued_ids(redis: &Redis) -> Vec<String> {
    let mut conn = redis.commands();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redis.settings().queue_key())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| entry.get::<String>("execution_id").unwrap())
        .collect()
}

#[tokio::test]
async fn created_executions_are_queued_and_claims_by_id_follow_the_lease_rules() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // No sweep during the test: the claim itself must apply the expiry rule.
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    let redis = runner_redis(&server, "r1").await;
    cp.apply_agent("a", "be brief").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let e = cp.create_execution("a", "", &format!("m{i}")).await;
        ids.push(e.metadata.unwrap().id);
    }
    assert_eq!(
        queued_ids(&redis).await,
        ids,
        "one queue entry per execution, in order"
    );
    let (started, unstarted, finished, _) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let r1 = runner_client(&cp, "r1").await;
    let r2 = runner_client(&cp, "r2").await;

    // Never started: handed out; a second claim under the live lease is refused, unsettled.
    let first = claim_ids(&r1, "r1", &[started]).await;
    assert_eq!(first.executions.len(), 1);
    let again = claim_ids(&r2, "r2", &[started]).await;
    assert!(again.executions.is_empty());
    assert_eq!(again.refused.len(), 1);
    assert!(!again.refused[0].settled, "{:?}", again.refused);
    report(
        &r1,
        started,
        &lease_of(&first),
        ExecutionPhase::ExecutionInProgress,
    )
    .await;

    let unstarted_claim = claim_ids(&r1, "r1", &[unstarted]).await;
    assert_eq!(unstarted_claim.executions.len(), 1);

    let finished_claim = claim_ids(&r1, "r1", &[finished]).await;
    let lease = lease_of(&finished_claim);
    report(&r1, finished, &lease, ExecutionPhase::ExecutionInProgress).await;
    report(&r1, finished, &lease, ExecutionPhase::ExecutionCompleted).await;

    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;

    // Started, lease expired: FAILED "runner lost", settled.
    let lost = claim_ids(&r2, "r2", &[started]).await;
    assert!(lost.executions.is_empty());
    assert!(lost.refused[0].settled, "{:?}", lost.refused);
    let failed = cp.get_execution(started).await;
    assert_eq!(phase(&failed), ExecutionPhase::ExecutionFailed);
    assert!(
        failed.status.unwrap().error.starts_with("runner lost"),
        "a started execution is not silently re-run"
    );

    // Never started, lease expired: handed to the next runner.
    let retaken = claim_ids(&r2, "r2", &[unstarted]).await;
    assert_eq!(retaken.executions.len(), 1, "{:?}", retaken.refused);

    // Terminal and unknown: settled.
    let done = claim_ids(&r2, "r2", &[finished, "exec-unknown"]).await;
    assert!(done.executions.is_empty());
    assert_eq!(done.refused.len(), 2);
    assert!(done.refused.iter().all(|r| r.settled), "{:?}", done.refused);
}

#[tokio::test]
async fn cancel_is_published_to_runners() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    let redis = runner_redis(&server, "r1").await;
    let shutdown = CancellationToken::new();
    let mut listener = CancelListener::spawn(&redis, shutdown.clone());
    listener.wait_subscribed().await;
    cp.apply_agent("a", "be brief").await;
    let id = cp
        .create_execution("a", "", "hi")
        .await
        .metadata
        .unwrap()
        .id;
    let r1 = runner_client(&cp, "r1").await;
    assert_eq!(claim_ids(&r1, "r1", &[&id]).await.executions.len(), 1);
    cp.executions()
        .await
        .cancel_execution(CancelExecutionRequest {
            id: id.clone(),
            reason: "changed my mind".into(),
        })
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.execution_id, id);
    assert_eq!(notice.reason, "changed my mind");
    shutdown.cancel();
}

#[tokio::test]
async fn subscribe_follows_the_events_stream_to_the_terminal_state() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    let redis = runner_redis(&server, "r1").await;
    cp.apply_agent("a", "be brief").await;
    let id = cp
        .create_execution("a", "", "hi")
        .await
        .metadata
        .unwrap()
        .id;
    let r1 = runner_client(&cp, "r1").await;
    let claimed = claim_ids(&r1, "r1", &[&id]).await;
    let lease = lease_of(&claimed);

    let follower = {
        let endpoint_cp = cp.executions().await;
        let id = id.clone();
        tokio::spawn(async move {
            let mut client = endpoint_cp;
            let mut stream = client
                .subscribe(stigmer_proto::agentexecution::v1::SubscribeExecutionRequest { id })
                .await
                .unwrap()
                .into_inner();
            let mut phases = Vec::new();
            while let Some(item) = stream.message().await.unwrap() {
                phases.push(phase(&item));
            }
            phases
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    report(&r1, &id, &lease, ExecutionPhase::ExecutionInProgress).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    report(&r1, &id, &lease, ExecutionPhase::ExecutionCompleted).await;
    let phases = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("subscription ends after the terminal state")
        .unwrap();
    assert_eq!(
        phases,
        vec![
            ExecutionPhase::ExecutionPending,
            ExecutionPhase::ExecutionInProgress,
            ExecutionPhase::ExecutionCompleted
        ]
    );

    let mut conn = redis.commands();
    let key = format!("stigmer:events:{id}");
    let len: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2, "IN_PROGRESS and COMPLETED");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0,
        "the events stream expires after the terminal state"
    );

    // A late subscriber gets the terminal state at once and the stream ends.
    let last = tokio::time::timeout(Duration::from_secs(5), cp.follow(&id, |_| {}))
        .await
        .unwrap();
    assert_eq!(phase(&last), ExecutionPhase::ExecutionCompleted);
}

/// At least once delivery, at most once execution: two runners drive executions through
/// `Claim{execution_ids}`; one disappears holding two (one started, one not). The other
/// recovers the unstarted one after the lease; the started one fails as "runner lost".
#[tokio::test]
async fn two_runners_complete_each_execution_exactly_once_and_recover_a_lost_runner() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&server, &dir, Duration::from_millis(50)).await;
    cp.apply_agent("a", "be brief").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let e = cp.create_execution("a", "", &format!("m{i}")).await;
        ids.push(e.metadata.unwrap().id);
    }

    // Runner B takes two and dies: it starts the first, never the second, never acks.
    let b_redis = runner_redis(&server, "rb").await;
    let b = RedisDispatch::new(&b_redis, "rb").await.unwrap();
    let b_client = runner_client(&cp, "rb").await;
    let round = b
        .round(&b_client, 2, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(round.claimed.len(), 2);
    let started_by_b = round.claimed[0]
        .execution
        .execution
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .id
        .clone();
    let lease = round.claimed[0]
        .execution
        .lease
        .as_ref()
        .unwrap()
        .lease_id
        .clone();
    report(
        &b_client,
        &started_by_b,
        &lease,
        ExecutionPhase::ExecutionInProgress,
    )
    .await;
    drop((b, b_client, b_redis));

    // Runner A does everything else.
    let a_redis = runner_redis(&server, "ra").await;
    let a = RedisDispatch::new(&a_redis, "ra").await.unwrap();
    let a_client = runner_client(&cp, "ra").await;
    let queue = QueueConsumer::new(&a_redis);
    let mut completions: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let round = a
            .round(&a_client, 3, Duration::from_millis(200))
            .await
            .unwrap();
        for claimed in round.claimed {
            let id = claimed
                .execution
                .execution
                .as_ref()
                .unwrap()
                .metadata
                .as_ref()
                .unwrap()
                .id
                .clone();
            let lease = claimed.execution.lease.as_ref().unwrap().lease_id.clone();
            report(&a_client, &id, &lease, ExecutionPhase::ExecutionInProgress).await;
            report(&a_client, &id, &lease, ExecutionPhase::ExecutionCompleted).await;
            a.ack(&claimed.entry_id).await.unwrap();
            *completions.entry(id).or_default() += 1;
        }
        let mut all_terminal = true;
        for id in &ids {
            all_terminal &= phase(&cp.get_execution(id).await).is_terminal();
        }
        if all_terminal && queue.pending_count().await.unwrap() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: completions {completions:?}, pending {}",
            queue.pending_count().await.unwrap()
        );
    }

    let expected: HashSet<&String> = ids.iter().filter(|id| **id != started_by_b).collect();
    assert_eq!(
        completions.keys().collect::<HashSet<_>>(),
        expected,
        "every execution but the one the lost runner started was completed by A"
    );
    assert!(
        completions.values().all(|n| *n == 1),
        "each completed exactly once: {completions:?}"
    );
    let lost = cp.get_execution(&started_by_b).await;
    assert_eq!(phase(&lost), ExecutionPhase::ExecutionFailed);
    assert!(lost.status.unwrap().error.starts_with("runner lost"));
}

#[tokio::test]
async fn the_next_execution_of_a_session_is_queued_again_when_the_session_frees() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    cp.apply_agent("a", "be brief").await;
    let first = cp.create_execution("a", "", "one").await;
    let session = first.spec.as_ref().unwrap().session_id.clone();
    let first = first.metadata.unwrap().id;
    let second = cp
        .create_execution("a", &session, "two")
        .await
        .metadata
        .unwrap()
        .id;
    let redis = runner_redis(&server, "r1").await;
    let dispatch = RedisDispatch::new(&redis, "r1").await.unwrap();
    let client = runner_client(&cp, "r1").await;
    let round = dispatch
        .round(&client, 2, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(round.claimed.len(), 1);
    assert_eq!(round.deferred.len(), 1, "the second waits for the first");
    assert_eq!(round.deferred[0].execution_id, second);
    let claimed = &round.claimed[0];
    let lease = claimed.execution.lease.as_ref().unwrap().lease_id.clone();
    report(&client, &first, &lease, ExecutionPhase::ExecutionInProgress).await;
    report(&client, &first, &lease, ExecutionPhase::ExecutionCompleted).await;
    dispatch.ack(&claimed.entry_id).await.unwrap();

    // Well before the reclaim idle time (60 s by default here): queued again at once.
    let next = dispatch
        .round(&client, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(next.claimed.len(), 1, "{next:?}");
    let id = &next.claimed[0]
        .execution
        .execution
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .id;
    assert_eq!(id, &second);
}

#[tokio::test]
async fn a_restarted_control_plane_requeues_what_redis_lost() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    cp.apply_agent("a", "be brief").await;
    let id = cp
        .create_execution("a", "", "hi")
        .await
        .metadata
        .unwrap()
        .id;
    let redis = runner_redis(&server, "r1").await;
    assert_eq!(queued_ids(&redis).await, vec![id.clone()]);
    let mut conn = redis.commands();
    let _: u64 = redis::cmd("DEL")
        .arg(redis.settings().queue_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    cp.stop().await;
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    // Answers only once opened (the reconciliation runs while opening).
    runner_client(&cp, "r1").await;
    assert_eq!(queued_ids(&redis).await, vec![id.clone()]);
    // And a restart with nothing lost adds no duplicate.
    cp.stop().await;
    let cp = control_plane(&server, &dir, Duration::from_secs(3600)).await;
    runner_client(&cp, "r1").await;
    assert_eq!(queued_ids(&redis).await, vec![id]);
}

#[tokio::test]
async fn unreachable_redis_stops_the_control_plane_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let addr = testkit::process::free_addr();
    let mut config = ServerConfig::local(dir.path());
    let mut settings = ServerRedis::new(ServerTarget::HostPort {
        host: addr.ip().to_string(),
        port: addr.port(),
        password: Some("hunter2".into()),
        tls: false,
    });
    settings.connect_attempts = 2;
    settings.connect_retry_delay = Duration::from_millis(10);
    config.redis = Some(settings);
    let err = match stigmer_server::ControlPlane::open(config).await {
        Ok(_) => panic!("opened without Redis"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("2 attempts"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
