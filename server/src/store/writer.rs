//! The writer thread: every write of the server runs here, with group commit.
//!
//! One thread owns the write connection. Writes that queue up while a transaction runs share
//! the next transaction, each inside its own savepoint: one commit (one WAL append, one round
//! of file locks, one thread wake-up) then serves them all, and a write that fails rolls back
//! alone. Callers learn their result only after the commit, so nobody sees an answer that a
//! failed commit later takes back. Under light load a batch is a single write.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::{StoreError, Tx};

/// Bounds how long the first write of a batch waits for the last one.
const MAX_BATCH: usize = 128;

/// Told, once the batch ended, whether it committed (or why not).
type Completion = Box<dyn FnOnce(Result<(), &str>) + Send>;

trait WriteJob: Send {
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Completion;
    /// Answers without running, when the batch failed before reaching this job.
    fn abort(self: Box<Self>, reason: &str);
}

pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stigmer-store-writer".into())
            .spawn(move || run(conn, queue))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `f`; the receiver gets its result once the transaction that ran it ended.
    pub(super) fn submit<T, E, F>(
        &self,
        f: F,
    ) -> Result<oneshot::Receiver<Result<T, E>>, StoreError>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job { f, reply });
        self.jobs
            .as_ref()
            .ok_or(StoreError::WriterStopped)?
            .send(job)
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(answer)
    }
}

impl Drop for Writer {
    /// Lets queued writes finish and the connection close (checkpointing the WAL) before the
    /// store is gone, so a new store on the same file starts from a quiet database.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

fn run(mut conn: Connection, queue: mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
}

fn run_batch(conn: &mut Connection, batch: Vec<Box<dyn WriteJob>>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => Tx::new(tx),
        Err(err) => {
            let reason = err.to_string();
            batch.into_iter().for_each(|job| job.abort(&reason));
            return;
        }
    };
    let mut completions = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    for job in jobs.by_ref() {
        completions.push(job.run(&tx));
        // After an I/O error or a full disk SQLite may roll back the whole transaction by
        // itself; what ran so far is gone, and the commit below reports it.
        if tx.is_autocommit() {
            break;
        }
    }
    let committed = tx.commit().map_err(|err| err.to_string());
    if let Err(reason) = &committed {
        tracing::error!(error = %reason, writes = completions.len(), "store commit failed");
    }
    let outcome = committed.as_ref().map(|_| ()).map_err(String::as_str);
    for completion in completions {
        completion(outcome);
    }
    let reason = committed
        .err()
        .unwrap_or_else(|| "the batch was rolled back".into());
    jobs.for_each(|job| job.abort(&reason));
}

struct Job<F, T, E> {
    f: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> WriteJob for Job<F, T, E>
where
    F: FnOnce(&Tx<'_>) -> Result<T, E> + Send,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Completion {
        let Job { f, reply } = *self;
        if let Err(err) = tx.savepoint() {
            let reason = err.to_string();
            return Box::new(move |_| {
                let _ = reply.send(Err(E::from(StoreError::Batch(reason))));
            });
        }
        // A panicking write must not take the thread, and with it every later write, down.
        match catch_unwind(AssertUnwindSafe(|| f(tx))) {
            Ok(Ok(value)) => match tx.release_savepoint() {
                Ok(()) => Box::new(move |committed| {
                    let result = committed
                        .map(|()| value)
                        .map_err(|reason| E::from(StoreError::Batch(reason.to_string())));
                    let _ = reply.send(result);
                }),
                Err(err) => {
                    tx.rollback_savepoint();
                    let reason = err.to_string();
                    Box::new(move |_| {
                        let _ = reply.send(Err(E::from(StoreError::Batch(reason))));
                    })
                }
            },
            Ok(Err(err)) => {
                tx.rollback_savepoint();
                Box::new(move |_| {
                    let _ = reply.send(Err(err));
                })
            }
            Err(_) => {
                tx.rollback_savepoint();
                tracing::error!("a store write panicked; its changes were rolled back");
                // Dropping the sender tells the caller the write failed.
                Box::new(move |_| drop(reply))
            }
        }
    }

    fn abort(self: Box<Self>, reason: &str) {
        let _ = self
            .reply
            .send(Err(E::from(StoreError::Batch(reason.to_string()))));
    }
}
