//! Persistence: SQLite in WAL mode at `<data_dir>/stigmer.db`.
//!
//! Every SQL statement of the server lives in this module. Callers compose the typed
//! operations of [`Tx`] inside one transaction ([`Store::write`], [`Store::read`]), so the rules
//! (leases, merging, validation) stay outside and a PostgreSQL store can later offer the same
//! interface. Protobuf messages are stored encoded; only the columns needed to filter, order
//! and dispatch are broken out.
//!
//! Writes go to one writer thread that commits them in groups (see [`writer`]); reads use a
//! second connection on the blocking pool, which WAL lets run beside the writer. Neither ever
//! blocks the async runtime.

mod tx;
mod writer;

pub use tx::Tx;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, AgentExecutionStatus, ExecutionMetadata,
};

use writer::Writer;

pub(crate) const DB_FILE: &str = "stigmer.db";
const SCHEMA_VERSION: i64 = 1;
/// Writes queue in the writer thread first; this only covers another process holding the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

// `phase = 1` is EXECUTION_PENDING and the terminal phases are 3, 4 and 5. They are literals,
// not parameters, so that SQLite can match the partial indexes below.
const SCHEMA_V1: &str = "
CREATE TABLE agents (
    name TEXT PRIMARY KEY NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    agent_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    history BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- The claimed, non-terminal execution of this session, if any: executions of one session
    -- run one at a time.
    active_execution_id TEXT
);
CREATE TABLE executions (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    agent_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    phase INTEGER NOT NULL,
    version INTEGER NOT NULL,
    metadata BLOB NOT NULL,
    spec BLOB NOT NULL,
    status BLOB NOT NULL,
    claimed_by TEXT,
    lease_id TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX executions_dispatch ON executions(seq) WHERE phase = 1 AND claimed_by IS NULL;
CREATE INDEX executions_leases ON executions(lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX executions_agent ON executions(agent_id, seq);
CREATE INDEX executions_agent_phase ON executions(agent_id, phase);
CREATE INDEX executions_session ON executions(session_id, seq);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database at {path} has schema version {found}, newer than this server supports ({supported})"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database at {path} cannot use WAL mode (journal_mode is {mode})")]
    NotWal { path: PathBuf, mode: String },
    #[error("database error while {context}: {source}")]
    Sql {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("stored {what} '{id}' cannot be decoded: {source}")]
    Decode {
        what: &'static str,
        id: String,
        source: prost::DecodeError,
    },
    #[error("store task failed: {0}")]
    Task(String),
    #[error("cannot start the store writer thread: {0}")]
    StartWriter(std::io::Error),
    #[error("the store writer has stopped")]
    WriterStopped,
    #[error("database error while writing: {0}")]
    Batch(String),
}

pub(super) fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

/// A claim's lease as stored: the runner must present `id` and renew before `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: String,
    pub expires_at_ms: i64,
}

/// An execution with the dispatch bookkeeping that the API never shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub metadata: ExecutionMetadata,
    pub spec: AgentExecutionSpec,
    pub status: AgentExecutionStatus,
    /// The runner that claimed it last; kept after the execution ends, for the record.
    pub claimed_by: Option<String>,
    /// Present while a runner holds the execution.
    pub lease: Option<LeaseRecord>,
    /// Set when cancellation was requested while a runner held the execution.
    pub cancel_reason: Option<String>,
    /// Bumped on every save; orders broadcasts that race each other.
    pub version: i64,
}

impl ExecutionRecord {
    pub fn new(metadata: ExecutionMetadata, spec: AgentExecutionSpec) -> Self {
        Self {
            metadata,
            spec,
            status: AgentExecutionStatus {
                phase: ExecutionPhase::ExecutionPending.into(),
                ..Default::default()
            },
            claimed_by: None,
            lease: None,
            cancel_reason: None,
            version: 1,
        }
    }

    pub fn id(&self) -> &str {
        &self.metadata.id
    }

    pub fn phase(&self) -> ExecutionPhase {
        self.status.phase()
    }

    pub fn to_execution(&self) -> AgentExecution {
        AgentExecution {
            metadata: Some(self.metadata.clone()),
            spec: Some(self.spec.clone()),
            status: Some(self.status.clone()),
        }
    }

    /// Executions of a session run one at a time: a held, unfinished one blocks the session.
    fn occupies_session(&self) -> bool {
        self.lease.is_some() && !self.phase().is_terminal()
    }
}

/// The columns a heartbeat needs, without decoding the whole execution.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub phase: ExecutionPhase,
    pub lease: Option<LeaseRecord>,
    pub cancel_reason: Option<String>,
    /// The status error, read only for terminal executions (it says why they ended).
    pub error: String,
}

#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub phases: Vec<i32>,
    pub limit: u32,
}

pub struct Store {
    path: PathBuf,
    // Declared before the reader so that it closes first and checkpoints the WAL.
    writer: Writer,
    reader: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let writer = open_connection(&path)?;
        enable_wal(&writer, &path)?;
        migrate(&writer, &path)?;
        let reader = open_connection(&path)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(|source| open_error(&path, source))?;
        let writer = Writer::start(writer).map_err(StoreError::StartWriter)?;
        Ok(Self {
            path,
            writer,
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction on the writer thread, possibly sharing the commit with
    /// other writes; an `Err` from `f` rolls back only what `f` did.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let answer = self.writer.submit(f)?;
        answer
            .await
            .map_err(|_| E::from(StoreError::Task("a store write panicked".into())))?
    }

    /// Runs `f` in one read transaction (a consistent snapshot) on the blocking pool.
    pub async fn read<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.read_now(f))
            .await
            .map_err(|err| E::from(StoreError::Task(err.to_string())))?
    }

    /// [`Store::write`] for callers outside the async runtime.
    #[cfg(test)]
    pub fn write_now<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.writer
            .submit(f)?
            .blocking_recv()
            .map_err(|_| E::from(StoreError::Task("a store write panicked".into())))?
    }

    pub fn read_now<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut conn = lock(&self.reader);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(sql("starting a read transaction"))?;
        f(&Tx::new(tx))
    }
}

/// A panic inside a read drops its transaction, so the connection behind a poisoned mutex is
/// still consistent and safe to reuse.
fn lock(mutex: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        source,
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| open_error(path, source))?;
    // NORMAL is durable across application crashes in WAL mode and skips the fsync per
    // commit; only a power loss can drop the last few commits.
    for (pragma, value) in [("synchronous", "NORMAL"), ("foreign_keys", "ON")] {
        conn.pragma_update(None, pragma, value)
            .map_err(|source| open_error(path, source))?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn enable_wal(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|source| open_error(path, source))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::NotWal {
            path: path.to_path_buf(),
            mode,
        })
    }
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| open_error(path, source))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        let script = format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;");
        conn.execute_batch(&script)
            .map_err(|source| open_error(path, source))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use stigmer_proto::agent::v1::Agent;
    use stigmer_proto::agentexecution::v1::Session;

    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn session(id: &str) -> Session {
        Session {
            id: id.into(),
            agent_id: "a".into(),
            sandbox_id: id.into(),
            ..Default::default()
        }
    }

    fn execution(id: &str, session_id: &str) -> ExecutionRecord {
        ExecutionRecord::new(
            ExecutionMetadata {
                id: id.into(),
                ..Default::default()
            },
            AgentExecutionSpec {
                session_id: session_id.into(),
                agent_id: "a".into(),
                message: "hi".into(),
                ..Default::default()
            },
        )
    }

    /// Runs `f` in a transaction of its own connection: these tests are about the SQL, and
    /// this lets them borrow their data. The writer thread has tests of its own below.
    fn write<T>(store: &Store, f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>) -> T {
        let mut conn = open_connection(store.path()).unwrap();
        let tx = Tx::new(conn.transaction().unwrap());
        let out = f(&tx).unwrap();
        tx.commit().unwrap();
        out
    }

    #[test]
    fn opens_in_wal_mode_with_schema_version() {
        let (dir, store) = open();
        let conn = lock(&store.reader);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.path(), dir.path().join("stigmer.db"));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (dir, store) = open();
        drop(store);
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn reports_an_unusable_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).err().unwrap();
        assert!(
            err.to_string().starts_with("cannot create data directory"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_agents_sessions_and_executions() {
        let (dir, store) = open();
        let agent = Agent {
            name: "a".into(),
            instructions: "be brief".into(),
            ..Default::default()
        };
        let mut s = session("s1");
        s.history.push(Default::default());
        let mut record = execution("e1", "s1");
        record.cancel_reason = Some("stop".into());
        write(&store, |tx| {
            tx.put_agent(&agent)?;
            tx.put_session(&s)?;
            tx.insert_execution(&record)
        });
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        store
            .read_now(|tx| {
                assert_eq!(tx.agent("a")?, Some(agent.clone()));
                assert_eq!(tx.session("s1")?, Some(s.clone()));
                assert_eq!(tx.execution("e1")?, Some(record.clone()));
                assert_eq!(tx.execution("missing")?, None);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn dispatches_one_execution_per_free_session_oldest_first() {
        let (_dir, store) = open();
        write(&store, |tx| {
            for id in ["s1", "s2", "s3"] {
                tx.put_session(&session(id))?;
            }
            for (id, session_id) in [("e1", "s1"), ("e2", "s1"), ("e3", "s2"), ("e4", "s3")] {
                tx.insert_execution(&execution(id, session_id))?;
            }
            Ok(())
        });
        let ids = write(&store, |tx| tx.dispatchable(10));
        assert_eq!(ids, ["e1", "e3", "e4"]);
        assert_eq!(write(&store, |tx| tx.dispatchable(2)), ["e1", "e3"]);

        // A held execution occupies its session until it ends.
        let mut e3 = write(&store, |tx| tx.execution("e3")).unwrap();
        e3.claimed_by = Some("r".into());
        e3.lease = Some(LeaseRecord {
            id: "l".into(),
            expires_at_ms: 10,
        });
        write(&store, |tx| tx.save_execution(&mut e3));
        assert_eq!(write(&store, |tx| tx.dispatchable(10)), ["e1", "e4"]);
        assert_eq!(write(&store, |tx| tx.expired_leases(10)), ["e3"]);
        assert!(write(&store, |tx| tx.expired_leases(9)).is_empty());

        e3.status.phase = ExecutionPhase::ExecutionCompleted.into();
        e3.lease = None;
        write(&store, |tx| tx.save_execution(&mut e3));
        assert_eq!(e3.version, 3);
        assert_eq!(write(&store, |tx| tx.dispatchable(10)), ["e1", "e4"]);
    }

    #[test]
    fn lists_with_filters_newest_first() {
        let (_dir, store) = open();
        write(&store, |tx| {
            tx.put_session(&session("s1"))?;
            tx.put_session(&session("s2"))?;
            tx.insert_execution(&execution("e1", "s1"))?;
            tx.insert_execution(&execution("e2", "s2"))?;
            let mut e3 = execution("e3", "s1");
            e3.status.phase = ExecutionPhase::ExecutionFailed.into();
            tx.insert_execution(&e3)
        });
        let ids = |filter: ExecutionFilter| -> Vec<String> {
            store
                .read_now(|tx| tx.list_executions(&filter))
                .unwrap()
                .into_iter()
                .map(|e| e.metadata.unwrap().id)
                .collect()
        };
        let all = ExecutionFilter {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(ids(all.clone()), ["e3", "e2", "e1"]);
        assert_eq!(
            ids(ExecutionFilter {
                limit: 2,
                ..all.clone()
            }),
            ["e3", "e2"]
        );
        let session = ExecutionFilter {
            session_id: Some("s1".into()),
            ..all.clone()
        };
        assert_eq!(ids(session.clone()), ["e3", "e1"]);
        let pending = ExecutionFilter {
            phases: vec![ExecutionPhase::ExecutionPending.into()],
            ..session
        };
        assert_eq!(ids(pending), ["e1"]);
        let other_agent = ExecutionFilter {
            agent_id: Some("b".into()),
            ..all
        };
        assert!(ids(other_agent).is_empty());
    }

    #[test]
    fn dispatch_and_lease_queries_use_their_indexes() {
        let (_dir, store) = open();
        let plan = write(&store, |tx| {
            tx.query_plan(
                "SELECT e.id, e.session_id FROM executions e
                 JOIN sessions s ON s.id = e.session_id
                 WHERE e.phase = 1 AND e.claimed_by IS NULL AND s.active_execution_id IS NULL
                 ORDER BY e.seq",
            )
        });
        assert!(
            plan.iter().any(|step| step.contains("executions_dispatch")),
            "{plan:?}"
        );
        let plan = write(&store, |tx| {
            tx.query_plan(
                "SELECT id FROM executions
                 WHERE lease_expires_at IS NOT NULL AND lease_expires_at <= 5
                 ORDER BY lease_expires_at",
            )
        });
        assert!(
            plan.iter().any(|step| step.contains("executions_leases")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_failing_write_rolls_back_alone_and_the_writer_survives_panics() {
        let (_dir, store) = open();
        let put = |id: &'static str| move |tx: &Tx<'_>| tx.put_session(&session(id));
        store.write_now(put("s1")).unwrap();
        let failed = store.write_now(move |tx| {
            tx.put_session(&session("s2"))?;
            Err::<(), _>(StoreError::Task("refused".into()))
        });
        assert!(matches!(failed, Err(StoreError::Task(_))));
        let panicked = store.write_now(|tx| -> Result<(), StoreError> {
            tx.put_session(&session("s3"))?;
            panic!("boom")
        });
        assert!(panicked.is_err());
        store.write_now(put("s4")).unwrap();
        let present = store
            .read_now(|tx| {
                ["s1", "s2", "s3", "s4"]
                    .into_iter()
                    .map(|id| Ok(tx.session(id)?.is_some()))
                    .collect::<Result<Vec<bool>, StoreError>>()
            })
            .unwrap();
        assert_eq!(present, [true, false, false, true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_grouped_and_all_land() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let writes = (0..200).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .write(move |tx| tx.put_session(&session(&format!("s{i}"))))
                    .await
            })
        });
        for write in writes.collect::<Vec<_>>() {
            write.await.unwrap().unwrap();
        }
        let count: i64 = lock(&store.reader)
            .query_row("SELECT COUNT(*) FROM sessions", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 200);
    }
}
