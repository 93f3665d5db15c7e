//! `stigmer`: the command line for agents and executions on a Stigmer control plane.

mod agent_file;
mod agents;
mod args;
mod client;
mod error;
mod executions;
mod json;
mod render;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use error::CliError;

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
    let clients = client::connect(&cli.endpoint, &cli.api_key).await?;
    match cli.command {
        Command::Agent(cmd) => agents::run(clients.agents, cmd, cli.output)
            .await
            .map(|()| 0),
        Command::Run(args) => executions::run(clients, args, cli.output).await,
        Command::Execution(cmd) => executions::execution(clients, cmd, cli.output).await,
    }
}
