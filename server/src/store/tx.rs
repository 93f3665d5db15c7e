//! Typed operations inside one transaction: all the SQL that reads and writes rows.

use std::collections::HashSet;

use prost::Message;
use rusqlite::{OptionalExtension, params};
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agent::v1::Agent;
use stigmer_proto::agentexecution::v1::{AgentExecution, AgentExecutionStatus, Session};

use super::{ExecutionFilter, ExecutionRecord, LeaseRecord, LeaseState, StoreError, sql};

const EXECUTION_COLUMNS: &str = "id, version, metadata, spec, status, claimed_by, lease_id, \
     lease_expires_at, cancel_requested, cancel_reason";

/// Typed operations inside one transaction.
pub struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
}

/// Each write of a group-committed batch runs inside this savepoint.
const SAVEPOINT: &str = "SAVEPOINT stigmer_write";
const RELEASE: &str = "RELEASE stigmer_write";
const ROLLBACK: &str = "ROLLBACK TO stigmer_write";

impl<'c> Tx<'c> {
    pub(super) fn new(tx: rusqlite::Transaction<'c>) -> Self {
        Self { tx }
    }

    pub(super) fn commit(self) -> rusqlite::Result<()> {
        self.tx.commit()
    }

    /// True when SQLite has rolled the transaction back on its own (after an I/O error).
    pub(super) fn is_autocommit(&self) -> bool {
        self.tx.is_autocommit()
    }

    pub(super) fn savepoint(&self) -> rusqlite::Result<()> {
        self.tx.prepare_cached(SAVEPOINT)?.execute([]).map(drop)
    }

    pub(super) fn release_savepoint(&self) -> rusqlite::Result<()> {
        self.tx.prepare_cached(RELEASE)?.execute([]).map(drop)
    }

    /// Undoes what ran since [`Tx::savepoint`] and leaves the savepoint.
    pub(super) fn rollback_savepoint(&self) {
        let undone = self
            .tx
            .prepare_cached(ROLLBACK)
            .and_then(|mut stmt| stmt.execute([]))
            .and_then(|_| self.release_savepoint());
        if let Err(err) = undone {
            tracing::error!(error = %err, "cannot roll back a failed write");
        }
    }
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

    /// Whether `id` may start now as far as its session is concerned: nothing else occupies
    /// the session and no older pending execution of the session waits before it. The same
    /// rule as [`Tx::dispatchable`], for one execution named by a claim.
    pub fn session_turn(&self, id: &str, session_id: &str) -> Result<bool, StoreError> {
        let (active, oldest): (Option<String>, Option<String>) = self
            .tx
            .prepare_cached(
                "SELECT (SELECT active_execution_id FROM sessions WHERE id = ?1),
                        (SELECT id FROM executions WHERE session_id = ?1 AND phase = 1
                         ORDER BY seq LIMIT 1)",
            )
            .and_then(|mut stmt| stmt.query_row([session_id], |row| Ok((row.get(0)?, row.get(1)?))))
            .map_err(sql("checking a session's turn"))?;
        let free = active.is_none_or(|active| active == id);
        let first = oldest.is_none_or(|oldest| oldest == id);
        Ok(free && first)
    }

    /// The oldest pending, unclaimed execution of a session, if the session is free.
    pub fn next_in_session(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        self.tx
            .prepare_cached(
                "SELECT e.id FROM executions e JOIN sessions s ON s.id = e.session_id
                 WHERE e.session_id = ?1 AND e.phase = 1 AND e.claimed_by IS NULL
                   AND s.active_execution_id IS NULL
                 ORDER BY e.seq LIMIT 1",
            )
            .and_then(|mut stmt| stmt.query_row([session_id], |row| row.get(0)).optional())
            .map_err(sql("finding the next execution of a session"))
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
    pub(super) fn query_plan(&self, statement: &str) -> Result<Vec<String>, StoreError> {
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
