//! `stigmer`: the command line for agents and executions on a Stigmer control plane.

mod agent_file;
mod agents;
mod args;
mod client;
mod error;
mod executions;
mod json;
mod local;
mod render;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use error::CliError;

/// Where the control plane is when neither `--endpoint` nor a running `stigmer local` says.
const DEFAULT_ENDPOINT: &str = "http://localhost:50051";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stigmer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stigmer: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, CliError> {
    // `local` manages the platform; it needs no connection to it.
    let command = match cli.command {
        Command::Local(args) => return Ok(local::run(args, cli.output).await?),
        other => other,
    };
    let endpoint = cli
        .endpoint
        .or_else(local::running_endpoint)
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let api_key = match cli.api_key.filter(|k| !k.trim().is_empty()) {
        Some(key) => key,
        None => match local::client_key(&endpoint)? {
            Some(key) => key.expose().to_string(),
            // No local platform was started here: the runner-alone flow's well-known key.
            None => stigmer_proto::LOCAL_API_KEY.to_string(),
        },
    };
    let clients = client::connect(&endpoint, &api_key).await?;
    match command {
        Command::Agent(cmd) => agents::run(clients.agents, cmd, cli.output)
            .await
            .map(|()| 0),
        Command::Run(args) => executions::run(clients, args, cli.output).await,
        Command::Execution(cmd) => executions::execution(clients, cmd, cli.output).await,
        Command::Local(_) => Ok(0),
    }
}
