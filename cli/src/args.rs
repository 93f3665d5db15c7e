//! The command-line surface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "stigmer",
    version,
    about = "Run AI agents on the Stigmer platform",
    after_help = "Examples:\n  \
        stigmer agent apply -f agent.yaml\n  \
        stigmer run --agent writer \"Write a haiku to haiku.txt\"\n  \
        stigmer execution list --phase failed\n  \
        stigmer --output json execution watch exec-0192..."
)]
pub struct Cli {
    /// Control plane address.
    #[arg(
        long,
        global = true,
        env = "STIGMER_BACKEND_ENDPOINT",
        default_value = "http://localhost:50051"
    )]
    pub endpoint: String,

    /// API key sent as `authorization: Bearer <key>`.
    #[arg(long, global = true, env = "STIGMER_API_KEY", default_value = stigmer_proto::LOCAL_API_KEY, hide_env_values = true)]
    pub api_key: String,

    /// Output format: human-readable text, or JSON (one object per line when streaming).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Define and inspect agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run an agent on a message and stream what it does.
    #[command(after_help = "Examples:\n  \
        stigmer run \"List the files here\"\n  \
        stigmer run --agent writer --session sess-0192... \"Now shorten it\"\n  \
        stigmer run --detach --env TOKEN=abc \"Deploy\"\n\n\
        Exit status: 0 when the execution completes, 1 when it fails, 3 when it is cancelled.\n\
        Ctrl-C cancels the execution; a second Ctrl-C leaves without waiting.")]
    Run(RunArgs),
    /// List, inspect, follow and cancel executions.
    #[command(subcommand)]
    Execution(ExecutionCommand),
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create or replace an agent from a YAML file.
    #[command(after_help = "File format:\n  \
        name: writer\n  \
        instructions: You write short notes.\n  \
        model: {provider: anthropic, name: claude-sonnet-4-5, max_tokens: 4096, temperature: 0.2}\n  \
        tools: [read_file, write_file, edit_file, list_directory, run_command, write_todos]\n  \
        env: {GREETING: hello}")]
    Apply {
        /// The agent's YAML file (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List agents.
    List,
    /// Show one agent.
    Get { name: String },
    /// Delete an agent (refused while it has unfinished executions).
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Agent to run; `default` is created on first use.
    #[arg(long, short = 'a', default_value = "default")]
    pub agent: String,
    /// Continue an earlier session (its conversation and sandbox files).
    #[arg(long, short = 's')]
    pub session: Option<String>,
    /// Print the execution id and return without following it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Environment for the agent's tool commands, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Like --env, but the value is a secret: masked by the API and never printed.
    #[arg(long = "secret-env", value_parser = parse_key_value)]
    pub secret_env: Vec<(String, String)>,
    /// Override the agent's model for this execution.
    #[arg(long)]
    pub model: Option<String>,
    /// The message for the agent.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
    pub message: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ExecutionCommand {
    /// List executions, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// pending, in-progress, completed, failed or cancelled (repeatable).
        #[arg(long = "phase", value_enum)]
        phases: Vec<PhaseArg>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one execution in full.
    Get { id: String },
    /// Follow an execution until it ends (exit status as for `stigmer run`).
    Watch { id: String },
    /// Cancel an execution.
    Cancel {
        id: String,
        #[arg(long, default_value = "cancelled by user")]
        reason: String,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_whole_message() {
        let cli = Cli::try_parse_from(["stigmer", "run", "-e", "A=1", "write", "a", "haiku"])
            .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.message.join(" "), "write a haiku");
        assert_eq!(run.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(run.agent, "default");
    }

    #[test]
    fn bad_env_is_refused() {
        assert!(Cli::try_parse_from(["stigmer", "run", "-e", "novalue", "hi"]).is_err());
    }
}
