//! `run_command`: a shell command in the session's sandbox.

use std::time::Duration;

use serde::Deserialize;

use super::{Failure, ToolContext, ToolOutcome, parse_input};
use crate::sandbox::{CommandOutput, CommandRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    command: String,
    timeout_secs: Option<u64>,
}

pub(super) async fn run_command(
    input: &serde_json::Value,
    ctx: &ToolContext<'_>,
) -> Result<ToolOutcome, Failure> {
    let input: Input = parse_input("run_command", input)?;
    if input.command.trim().is_empty() {
        return Err(Failure::Model("command must not be empty".into()));
    }
    let timeout = effective_timeout(input.timeout_secs, ctx)?;
    let output = ctx
        .sandbox
        .run_command(CommandRequest {
            command: &input.command,
            timeout,
            env: ctx.env,
            cancel: ctx.cancel,
            output_limit: ctx.limits.output_limit,
            network: ctx.network,
        })
        .await?;
    Ok(outcome(&output, timeout))
}

/// The model's timeout if it gave one, never above the configured maximum.
fn effective_timeout(requested: Option<u64>, ctx: &ToolContext<'_>) -> Result<Duration, Failure> {
    let limits = ctx.limits;
    let wanted = match requested {
        Some(0) => return Err(Failure::Model("timeout_secs must be at least 1".into())),
        Some(secs) => Duration::from_secs(secs),
        None => limits.command_timeout,
    };
    Ok(wanted.min(limits.max_command_timeout))
}

fn outcome(output: &CommandOutput, timeout: Duration) -> ToolOutcome {
    let (header, failed) = match (output.timed_out, output.exit_code) {
        (true, _) => (format!("timed out after {}s", timeout.as_secs()), true),
        (false, Some(code)) => (format!("exit code: {code}"), code != 0),
        (false, None) => ("killed by a signal".to_owned(), true),
    };
    let text = format!("{header}\n{}", output.output);
    if failed {
        ToolOutcome::error(text)
    } else {
        ToolOutcome::ok(text)
    }
}
