//! The executions this runner holds: their leases (for heartbeats) and how to interrupt them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use stigmer_proto::runner::v1::HeldExecution;
use tokio_util::sync::CancellationToken;

/// Why an execution is being stopped before it finishes on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    /// A user asked for it (through the control plane): report CANCELLED.
    Cancelled(String),
    /// The runner is shutting down and the drain timeout passed: report CANCELLED.
    Shutdown(String),
    /// The lease is gone: stop and report nothing (someone else owns the execution now).
    Lost(String),
}

impl Interrupt {
    pub fn reason(&self) -> &str {
        match self {
            Interrupt::Cancelled(r) | Interrupt::Shutdown(r) | Interrupt::Lost(r) => r,
        }
    }
}

/// What a held execution ended as, from the runner's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Failed(String),
    Cancelled(String),
    /// The lease was lost: nothing is reported.
    Lost(String),
}

impl Ending {
    pub fn label(&self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Failed(_) => "failed",
            Ending::Cancelled(_) => "cancelled",
            Ending::Lost(_) => "lost",
        }
    }
}

/// The reason a cancellation is reported with when the request gave none.
pub fn cancel_reason(reason: &str) -> String {
    if reason.trim().is_empty() {
        "cancelled by user".to_string()
    } else {
        reason.to_string()
    }
}

/// One held execution.
pub struct ExecHandle {
    pub execution_id: String,
    pub lease_id: String,
    /// Cloud mode: the queue entry that delivered the execution.
    pub entry_id: Option<String>,
    pub cancel: CancellationToken,
    interrupt: Mutex<Option<Interrupt>>,
}

impl ExecHandle {
    pub fn new(execution_id: String, lease_id: String) -> Self {
        Self {
            execution_id,
            lease_id,
            entry_id: None,
            cancel: CancellationToken::new(),
            interrupt: Mutex::new(None),
        }
    }

    pub fn with_entry(mut self, entry_id: Option<String>) -> Self {
        self.entry_id = entry_id;
        self
    }

    fn slot(&self) -> MutexGuard<'_, Option<Interrupt>> {
        self.interrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The first interrupt wins: a cancellation followed by a lost lease stays a cancellation
    /// only if it was recorded first.
    pub fn interrupt(&self, why: Interrupt) {
        {
            let mut slot = self.slot();
            if slot.is_none() {
                *slot = Some(why);
            }
        }
        self.cancel.cancel();
    }

    pub fn interrupted(&self) -> Option<Interrupt> {
        self.slot().clone()
    }
}

#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<String, Arc<ExecHandle>>>,
}

impl InFlight {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<ExecHandle>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, handle: Arc<ExecHandle>) {
        self.map().insert(handle.execution_id.clone(), handle);
    }

    pub fn remove(&self, execution_id: &str) {
        self.map().remove(execution_id);
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn held(&self) -> Vec<HeldExecution> {
        self.map()
            .values()
            .map(|h| HeldExecution {
                execution_id: h.execution_id.clone(),
                lease_id: h.lease_id.clone(),
            })
            .collect()
    }

    /// Cloud mode: the queue entries of held executions.
    pub fn entry_ids(&self) -> Vec<String> {
        self.map()
            .values()
            .filter_map(|h| h.entry_id.clone())
            .collect()
    }

    pub fn interrupt(&self, execution_id: &str, why: Interrupt) -> bool {
        let handle = self.map().get(execution_id).cloned();
        match handle {
            Some(h) => {
                h.interrupt(why);
                true
            }
            None => false,
        }
    }

    pub fn interrupt_all(&self, why: &Interrupt) -> usize {
        let handles: Vec<_> = self.map().values().cloned().collect();
        for h in &handles {
            h.interrupt(why.clone());
        }
        handles.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_interrupt_wins_and_cancels() {
        let h = ExecHandle::new("e".into(), "l".into());
        h.interrupt(Interrupt::Cancelled("user".into()));
        h.interrupt(Interrupt::Lost("gone".into()));
        assert!(h.cancel.is_cancelled());
        assert_eq!(h.interrupted(), Some(Interrupt::Cancelled("user".into())));
    }

    #[test]
    fn held_lists_leases_and_interrupt_finds_by_id() {
        let f = InFlight::default();
        f.insert(Arc::new(ExecHandle::new("a".into(), "la".into())));
        f.insert(Arc::new(ExecHandle::new("b".into(), "lb".into())));
        let mut held: Vec<_> = f.held().into_iter().map(|h| h.lease_id).collect();
        held.sort();
        assert_eq!(held, ["la", "lb"]);
        assert!(f.interrupt("a", Interrupt::Lost("x".into())));
        assert!(!f.interrupt("zzz", Interrupt::Lost("x".into())));
        f.remove("a");
        assert_eq!(f.len(), 1);
    }
}
