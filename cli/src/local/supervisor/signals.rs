//! What the supervisor listens to and what it says: the stop signals, and its own log.

use std::io::Write as _;

use tokio::signal::unix::{SignalKind, signal};

use super::super::logs::RotatingLog;
use super::super::{LocalError, Paths};
use crate::args::Component;

/// SIGTERM, SIGINT and SIGHUP all mean "stop".
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Self, LocalError> {
        let make = |kind| {
            signal(kind)
                .map_err(|e| LocalError::Signal(format!("cannot install a signal handler: {e}")))
        };
        Ok(Self {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// The supervisor's own log: timestamped lines to stderr, and to `supervisor.log` when
/// stderr is a terminal.
#[derive(Clone)]
pub(super) struct Events {
    file: Option<RotatingLog>,
}

impl Events {
    pub(super) fn open(paths: &Paths, interactive: bool) -> Result<Self, LocalError> {
        let file = if interactive {
            Some(RotatingLog::open(
                &paths.log(Component::Supervisor),
                u64::MAX,
            )?)
        } else {
            None
        };
        Ok(Self { file })
    }

    pub(super) fn log(&self, message: &str) {
        let line = format!("{:.3} supervisor: {message}\n", jiff::Timestamp::now());
        // Not `eprint!`, which panics when stderr (a detached supervisor's log file) fails.
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(file) = &self.file {
            file.write_line(line.as_bytes());
        }
    }
}
