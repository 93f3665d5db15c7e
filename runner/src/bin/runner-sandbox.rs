//! `runner-sandbox`: the command sandbox helper on its own (see `runner::sandbox::confine`).
//!
//! The runner re-executes itself as the helper when this binary is not beside it; this one
//! exists because it starts faster: it holds only the helper's code, so the two execs every
//! confined command pays load and relocate a fraction of the runner.

use std::process::ExitCode;

fn main() -> ExitCode {
    match runner::sandbox::confine::helper_entry() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!(
                "runner-sandbox is started by the runner for each tool command; it is not run by hand"
            );
            ExitCode::from(2)
        }
    }
}
