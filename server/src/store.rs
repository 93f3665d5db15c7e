//! Persistence: SQLite in WAL mode at `<data_dir>/stigmer.db`.
//!
//! Every SQL statement of the server lives in this module. Callers compose the typed
//! operations of [`Tx`] inside one transaction ([`Store::write`], [`Store::read`]), so the rules
//! (leases, merging, validation) stay outside and a PostgreSQL store can later offer the same
//! interface. Protobuf messages are stored encoded; only the columns needed to filter, order
//! and dispatch are broken out.
//!
//! One writer connection and one reader connection, each behind a mutex: SQLite serialises
//! writers anyway, and WAL lets the reader run beside the writer. Transactions are short, and
//! the async entry points run them on the blocking pool so that a WAL checkpoint never stalls
//! the runtime.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agent::v1::Agent;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, AgentExecutionStatus, ExecutionMetadata, Session,
};

const DB_FILE: &str = "stigmer.db";
const SCHEMA_VERSION: i64 = 1;
/// Writers queue on the mutex first; this only covers another process holding the file.
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

const EXECUTION_COLUMNS: &str = "id, version, metadata, spec, status, claimed_by, lease_id, \
     lease_expires_at, cancel_requested, cancel_reason";

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
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
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
    writer: Mutex<Connection>,
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
        Ok(Self {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction on the blocking pool; an `Err` from `f` rolls back.
    pub async fn write<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.write_now(f))
            .await
            .map_err(|err| E::from(StoreError::Task(err.to_string())))?
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

    pub fn write_now<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut conn = lock(&self.writer);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting a write transaction"))?;
        let tx = Tx { tx };
        let out = f(&tx)?;
        tx.tx.commit().map_err(sql("committing"))?;
        Ok(out)
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
        f(&Tx { tx })
    }
}

/// A panic inside a transaction closure drops the transaction, which rolls it back, so the
/// connection behind a poisoned mutex is still consistent and safe to reuse.
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

/// Typed operations inside one transaction.
pub struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl Tx<'_> {
    pub fn agent(&self, name: &str) -> Result<Option<Agent>, StoreError> {
        let body: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT body FROM agents WHERE name = ?1")
            .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)).optional())
            .map_err(sql("loading an agent"))?;
        body.map(|body| decode::<Agent>("agent", name, &body))
            .transpose()
    }

    pub fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name, body FROM agents ORDER BY name")
            .map_err(sql("listing agents"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("listing agents"))?;
        rows.iter()
            .map(|(name, body)| decode::<Agent>("agent", name, body))
            .collect()
    }

    pub fn put_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO agents (name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            )
            .and_then(|mut stmt| stmt.execute(params![agent.name, agent.encode_to_vec()]))
            .map_err(sql("saving an agent"))?;
        Ok(())
    }

    /// Returns whether an agent was deleted.
    pub fn delete_agent(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .tx
            .prepare_cached("DELETE FROM agents WHERE name = ?1")
            .and_then(|mut stmt| stmt.execute([name]))
            .map_err(sql("deleting an agent"))?;
        Ok(deleted > 0)
    }

    pub fn agent_has_live_executions(&self, name: &str) -> Result<bool, StoreError> {
        self.tx
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM executions
                 WHERE agent_id = ?1 AND phase NOT IN (3, 4, 5))",
            )
            .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)))
            .map_err(sql("looking for an agent's executions"))
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT agent_id, sandbox_id, history, created_at, updated_at
                 FROM sessions WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(sql("loading a session"))?;
        let Some((agent_id, sandbox_id, history, created_at, updated_at)) = row else {
            return Ok(None);
        };
        let history = decode::<Session>("session history", id, &history)?.history;
        Ok(Some(Session {
            id: id.to_string(),
            agent_id,
            sandbox_id,
            history,
            created_at,
            updated_at,
        }))
    }

    /// Inserts or updates a session; which execution occupies it is tracked separately.
    pub fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        // A repeated field cannot be encoded on its own, so the history travels in an
        // otherwise empty Session message.
        let history = Session {
            history: session.history.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        self.tx
            .prepare_cached(
                "INSERT INTO sessions (id, agent_id, sandbox_id, history, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET sandbox_id = excluded.sandbox_id,
                     history = excluded.history, updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    session.id,
                    session.agent_id,
                    session.sandbox_id,
                    history,
                    session.created_at,
                    session.updated_at,
                ])
            })
            .map_err(sql("saving a session"))?;
        Ok(())
    }

    pub fn insert_execution(&self, record: &ExecutionRecord) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO executions (id, session_id, agent_id, created_at, phase, version,
                     metadata, spec, status, claimed_by, lease_id, lease_expires_at,
                     cancel_requested, cancel_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.metadata.id,
                    record.spec.session_id,
                    record.spec.agent_id,
                    record.metadata.created_at,
                    record.status.phase,
                    record.version,
                    record.metadata.encode_to_vec(),
                    record.spec.encode_to_vec(),
                    record.status.encode_to_vec(),
                    record.claimed_by,
                    record.lease.as_ref().map(|lease| &lease.id),
                    record.lease.as_ref().map(|lease| lease.expires_at_ms),
                    record.cancel_reason.is_some(),
                    record.cancel_reason.as_deref().unwrap_or_default(),
                ])
            })
            .map_err(sql("inserting an execution"))?;
        self.track_session_occupancy(record)
    }

    pub fn execution(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let sql_text = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
        let raw = self
            .tx
            .prepare_cached(&sql_text)
            .and_then(|mut stmt| stmt.query_row([id], RawExecution::from_row).optional())
            .map_err(sql("loading an execution"))?;
        raw.map(RawExecution::decode).transpose()
    }

    /// Writes back the mutable parts of an execution (status, claim, cancellation) and bumps
    /// its version.
    pub fn save_execution(&self, record: &mut ExecutionRecord) -> Result<(), StoreError> {
        record.version += 1;
        self.tx
            .prepare_cached(
                "UPDATE executions SET phase = ?2, version = ?3, status = ?4, claimed_by = ?5,
                     lease_id = ?6, lease_expires_at = ?7, cancel_requested = ?8,
                     cancel_reason = ?9
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.metadata.id,
                    record.status.phase,
                    record.version,
                    record.status.encode_to_vec(),
                    record.claimed_by,
                    record.lease.as_ref().map(|lease| &lease.id),
                    record.lease.as_ref().map(|lease| lease.expires_at_ms),
                    record.cancel_reason.is_some(),
                    record.cancel_reason.as_deref().unwrap_or_default(),
                ])
            })
            .map_err(sql("saving an execution"))?;
        self.track_session_occupancy(record)
    }

    fn track_session_occupancy(&self, record: &ExecutionRecord) -> Result<(), StoreError> {
        let statement = if record.occupies_session() {
            "UPDATE sessions SET active_execution_id = ?2
             WHERE id = ?1 AND active_execution_id IS NOT ?2"
        } else {
            "UPDATE sessions SET active_execution_id = NULL
             WHERE id = ?1 AND active_execution_id = ?2"
        };
        self.tx
            .prepare_cached(statement)
            .and_then(|mut stmt| stmt.execute(params![record.spec.session_id, record.id()]))
            .map_err(sql("updating a session's active execution"))?;
        Ok(())
    }

    pub fn lease_state(&self, id: &str) -> Result<Option<LeaseState>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT phase, lease_id, lease_expires_at, cancel_requested, cancel_reason,
                     CASE WHEN phase IN (3, 4, 5) THEN status END
                 FROM executions WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| {
                    let cancelled: bool = row.get(3)?;
                    let reason: String = row.get(4)?;
                    let state = LeaseState {
                        phase: ExecutionPhase::try_from(row.get::<_, i32>(0)?).unwrap_or_default(),
                        lease: lease_from(row.get(1)?, row.get(2)?),
                        cancel_reason: cancelled.then_some(reason),
                        error: String::new(),
                    };
                    Ok((state, row.get::<_, Option<Vec<u8>>>(5)?))
                })
                .optional()
            })
            .map_err(sql("loading a lease"))?;
        let Some((mut state, status)) = row else {
            return Ok(None);
        };
        if let Some(status) = status {
            state.error = decode::<AgentExecutionStatus>("execution status", id, &status)?.error;
        }
        Ok(Some(state))
    }

    pub fn renew_lease(&self, id: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE executions SET lease_expires_at = ?2 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![id, expires_at_ms]))
            .map_err(sql("renewing a lease"))?;
        Ok(())
    }

    /// Newest first.
    pub fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<AgentExecution>, StoreError> {
        let mut sql_text = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(agent_id) = &filter.agent_id {
            values.push(agent_id.clone().into());
            sql_text.push_str(&format!(" AND agent_id = ?{}", values.len()));
        }
        if let Some(session_id) = &filter.session_id {
            values.push(session_id.clone().into());
            sql_text.push_str(&format!(" AND session_id = ?{}", values.len()));
        }
        if !filter.phases.is_empty() {
            let mut placeholders = Vec::with_capacity(filter.phases.len());
            for phase in &filter.phases {
                values.push(i64::from(*phase).into());
                placeholders.push(format!("?{}", values.len()));
            }
            sql_text.push_str(&format!(" AND phase IN ({})", placeholders.join(", ")));
        }
        values.push(i64::from(filter.limit).into());
        sql_text.push_str(&format!(" ORDER BY seq DESC LIMIT ?{}", values.len()));

        let raws = self
            .tx
            .prepare_cached(&sql_text)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(values), RawExecution::from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql("listing executions"))?;
        raws.into_iter()
            .map(|raw| raw.decode().map(|record| record.to_execution()))
            .collect()
    }

    /// Ids of up to `limit` executions a runner may take now, oldest first: pending,
    /// unclaimed, at most one per session and only from sessions nothing else occupies.
    pub fn dispatchable(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT e.id, e.session_id FROM executions e
                 JOIN sessions s ON s.id = e.session_id
                 WHERE e.phase = 1 AND e.claimed_by IS NULL AND s.active_execution_id IS NULL
                 ORDER BY e.seq",
            )
            .map_err(sql("finding dispatchable executions"))?;
        let mut rows = stmt
            .query([])
            .map_err(sql("finding dispatchable executions"))?;
        let mut sessions = HashSet::new();
        let mut ids = Vec::new();
        // Only the oldest pending execution of a session may start; later ones wait for it.
        while ids.len() < limit {
            let Some(row) = rows
                .next()
                .map_err(sql("finding dispatchable executions"))?
            else {
                break;
            };
            let id: String = row.get(0).map_err(sql("finding dispatchable executions"))?;
            let session: String = row.get(1).map_err(sql("finding dispatchable executions"))?;
            if sessions.insert(session) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Ids of executions whose lease expired at or before `now_ms`.
    pub fn expired_leases(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.tx
            .prepare_cached(
                "SELECT id FROM executions
                 WHERE lease_expires_at IS NOT NULL AND lease_expires_at <= ?1
                 ORDER BY lease_expires_at",
            )
            .and_then(|mut stmt| {
                stmt.query_map([now_ms], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(sql("finding expired leases"))
    }

    #[cfg(test)]
    fn query_plan(&self, statement: &str) -> Result<Vec<String>, StoreError> {
        self.tx
            .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(3))?
                    .collect::<Result<_, _>>()
            })
            .map_err(sql("explaining a query"))
    }
}

fn lease_from(id: Option<String>, expires_at_ms: Option<i64>) -> Option<LeaseRecord> {
    match (id, expires_at_ms) {
        (Some(id), Some(expires_at_ms)) => Some(LeaseRecord { id, expires_at_ms }),
        _ => None,
    }
}

fn decode<M: Message + Default>(
    what: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode {
        what,
        id: id.to_string(),
        source,
    })
}

/// An execution row before its protobuf columns are decoded (decoding errors are not
/// rusqlite errors, so they happen after the row is read).
struct RawExecution {
    id: String,
    version: i64,
    metadata: Vec<u8>,
    spec: Vec<u8>,
    status: Vec<u8>,
    claimed_by: Option<String>,
    lease_id: Option<String>,
    lease_expires_at: Option<i64>,
    cancel_requested: bool,
    cancel_reason: String,
}

impl RawExecution {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            version: row.get(1)?,
            metadata: row.get(2)?,
            spec: row.get(3)?,
            status: row.get(4)?,
            claimed_by: row.get(5)?,
            lease_id: row.get(6)?,
            lease_expires_at: row.get(7)?,
            cancel_requested: row.get(8)?,
            cancel_reason: row.get(9)?,
        })
    }

    fn decode(self) -> Result<ExecutionRecord, StoreError> {
        Ok(ExecutionRecord {
            metadata: decode("execution metadata", &self.id, &self.metadata)?,
            spec: decode("execution spec", &self.id, &self.spec)?,
            status: decode("execution status", &self.id, &self.status)?,
            claimed_by: self.claimed_by,
            lease: lease_from(self.lease_id, self.lease_expires_at),
            cancel_reason: self.cancel_requested.then_some(self.cancel_reason),
            version: self.version,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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

    fn write<T>(store: &Store, f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>) -> T {
        store.write_now(f).unwrap()
    }

    #[test]
    fn opens_in_wal_mode_with_schema_version() {
        let (dir, store) = open();
        let conn = lock(&store.writer);
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
        lock(&store.writer)
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
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
}
