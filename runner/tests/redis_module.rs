//! The runner's Redis module against a real `redis-server` (started by the test on an
//! ephemeral loopback port; `scripts/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use runner::redis::{
    CancelListener, Presence, PresenceRecord, QueueConsumer, Redis, RedisSettings, RedisTarget,
    connect,
};
use testkit::redis::RedisServer;
use tokio_util::sync::CancellationToken;

fn settings(server: &RedisServer, consumer: &str) -> RedisSettings {
    let mut settings = RedisSettings::new(RedisTarget::Url(server.url()), consumer);
    settings.connect_retry_delay = Duration::from_millis(50);
    settings.min_idle = Duration::from_millis(300);
    settings
}

async fn consumer(server: &RedisServer, name: &str) -> (Redis, QueueConsumer) {
    let redis = connect(settings(server, name)).await.unwrap();
    let queue = QueueConsumer::new(&redis);
    queue.ensure_group().await.unwrap();
    (redis, queue)
}

async fn enqueue(redis: &Redis, execution_id: &str) -> String {
    let mut conn = redis.commands();
    redis::cmd("XADD")
        .arg(redis.settings().queue_key())
        .arg("*")
        .arg("execution_id")
        .arg(execution_id)
        .query_async(&mut conn)
        .await
        .unwrap()
}

const SHORT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn group_creation_is_idempotent() {
    let server = RedisServer::start();
    let (_redis, queue) = consumer(&server, "a").await;
    queue.ensure_group().await.unwrap();
    queue.ensure_group().await.unwrap();
    assert_eq!(queue.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn each_entry_is_delivered_once_across_consumers_and_ack_clears_it() {
    let server = RedisServer::start();
    let (redis, a) = consumer(&server, "a").await;
    let (_, b) = consumer(&server, "b").await;
    for i in 0..10 {
        enqueue(&redis, &format!("exec-{i}")).await;
    }
    let mut seen = Vec::new();
    let from_a = a.read(4, SHORT).await.unwrap();
    let from_b = b.read(100, SHORT).await.unwrap();
    assert_eq!(from_a.len(), 4);
    assert_eq!(from_b.len(), 6);
    seen.extend(from_a.iter().map(|e| e.execution_id.clone()));
    seen.extend(from_b.iter().map(|e| e.execution_id.clone()));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10, "every entry exactly once: {seen:?}");
    assert!(a.read(10, SHORT).await.unwrap().is_empty());

    assert_eq!(a.pending_count().await.unwrap(), 10);
    let ids: Vec<String> = from_a.iter().map(|e| e.entry_id.clone()).collect();
    assert_eq!(a.ack(&ids).await.unwrap(), 4);
    assert_eq!(a.pending_count().await.unwrap(), 6);
    let mut conn = redis.commands();
    let len: u64 = redis::cmd("XLEN")
        .arg(redis.settings().queue_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 6, "acked entries are deleted from the stream");
}

#[tokio::test]
async fn blocking_read_waits_longer_than_the_response_timeout() {
    let server = RedisServer::start();
    let mut s = settings(&server, "a");
    s.response_timeout = Duration::from_millis(200);
    let redis = connect(s).await.unwrap();
    let a = QueueConsumer::new(&redis);
    a.ensure_group().await.unwrap();
    let producer = redis.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        enqueue(&producer, "late").await;
    });
    let started = std::time::Instant::now();
    let entries = a.read(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].execution_id, "late");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn entries_of_a_silent_consumer_are_reclaimed_unless_kept_fresh() {
    let server = RedisServer::start();
    let (redis, dead) = consumer(&server, "dead").await;
    let (_, alive) = consumer(&server, "alive").await;
    let (_, rescuer) = consumer(&server, "rescuer").await;
    enqueue(&redis, "lost").await;
    enqueue(&redis, "held").await;
    let lost = dead.read(1, SHORT).await.unwrap();
    let held = alive.read(1, SHORT).await.unwrap();
    assert_eq!(lost[0].execution_id, "lost");
    assert_eq!(held[0].execution_id, "held");

    // Not idle long enough yet.
    assert!(
        rescuer
            .reclaim_stale(Duration::from_millis(300), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // `alive` keeps its entry fresh (as on every heartbeat); `dead` does nothing.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fresh = alive.keep_fresh(&[held[0].entry_id.clone()]).await.unwrap();
        assert_eq!(fresh, vec![held[0].entry_id.clone()]);
    }
    let reclaimed = rescuer
        .reclaim_stale(Duration::from_millis(300), 10)
        .await
        .unwrap();
    assert_eq!(reclaimed, lost, "only the silent consumer's entry moves");
    rescuer.ack(&[reclaimed[0].entry_id.clone()]).await.unwrap();
    // The dead consumer's late ack is harmless: the entry is already gone.
    assert_eq!(dead.ack(&[lost[0].entry_id.clone()]).await.unwrap(), 0);
    assert_eq!(rescuer.pending_count().await.unwrap(), 1);
}

#[tokio::test]
async fn cancel_listener_receives_published_cancellations_and_survives_a_restart() {
    let mut server = RedisServer::start();
    let redis = connect(settings(&server, "a")).await.unwrap();
    let shutdown = CancellationToken::new();
    let mut listener = CancelListener::spawn(&redis, shutdown.clone());
    listener.wait_subscribed().await;
    publish_cancel(&redis, "e1", "user asked").await;
    let notice = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.execution_id, "e1");
    assert_eq!(notice.reason, "user asked");

    server.restart();
    // Resubscribed after the restart: keep publishing until a notice arrives.
    let received = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let _ = publish_cancel_lenient(&redis, "e2").await;
            if let Ok(Some(notice)) =
                tokio::time::timeout(Duration::from_millis(200), listener.recv()).await
            {
                return notice;
            }
        }
    })
    .await
    .expect("a cancellation after the restart");
    assert_eq!(received.execution_id, "e2");
    shutdown.cancel();
}

async fn publish_cancel(redis: &Redis, id: &str, reason: &str) {
    let mut conn = redis.commands();
    let payload = serde_json::json!({"execution_id": id, "reason": reason}).to_string();
    let _: u64 = redis::cmd("PUBLISH")
        .arg(redis.settings().cancel_channel())
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn publish_cancel_lenient(redis: &Redis, id: &str) -> redis::RedisResult<u64> {
    let mut conn = redis.commands();
    let payload = serde_json::json!({"execution_id": id, "reason": "r"}).to_string();
    redis::cmd("PUBLISH")
        .arg(redis.settings().cancel_channel())
        .arg(payload)
        .query_async(&mut conn)
        .await
}

#[tokio::test]
async fn connection_manager_calls_recover_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let (redis, queue) = consumer(&server, "a").await;
    enqueue(&redis, "before").await;
    server.restart();
    // The dataset is gone (no persistence): recreate the group, then the queue works again.
    let recovered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if queue.ensure_group().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "commands did not recover after the restart"
    );
    let mut entries = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), enqueue(&redis, "after")).await;
            if let Ok(found) = queue.read(1, SHORT).await
                && !found.is_empty()
            {
                entries = found;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "blocking reads did not recover after the restart"
    );
    assert_eq!(entries[0].execution_id, "after");
}

#[tokio::test]
async fn presence_is_written_with_a_ttl() {
    let server = RedisServer::start();
    let redis = connect(settings(&server, "r1")).await.unwrap();
    let presence = Presence::new(&redis, Duration::from_secs(15));
    let record = PresenceRecord {
        id: "r1".into(),
        pod: "pod-0".into(),
        capacity: 4,
        in_flight: 1,
        version: "0.1.0".into(),
        draining: false,
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    presence.publish(&record).await.unwrap();
    let mut conn = redis.commands();
    let key = redis.settings().presence_key("r1");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 10_000 && ttl <= 15_000, "ttl {ttl}");
    let json: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["capacity"], 4);
    assert_eq!(value["in_flight"], 1);
    presence.remove("r1").await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn unreachable_redis_fails_fast_naming_host_and_port_not_the_password() {
    let addr = testkit::process::free_addr();
    let mut settings = RedisSettings::new(
        RedisTarget::HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
            password: Some("hunter2".into()),
            tls: false,
        },
        "a",
    );
    settings.connect_attempts = 2;
    settings.connect_retry_delay = Duration::from_millis(10);
    let err = connect(settings).await.unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("2 attempts"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
