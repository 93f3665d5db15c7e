//! The command-line surface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "stigmer",
    version,
    about = "Run AI agents on the Stigmer platform",
    after_help = "Examples:\n  \
        stigmer local start                      # control plane + runner on this machine\n  \
        stigmer agent apply -f agent.yaml\n  \
        stigmer run --agent writer \"Write a haiku to haiku.txt\"\n  \
        stigmer execution list --phase failed\n  \
        stigmer --output json execution watch exec-0192...\n  \
        stigmer local stop"
)]
pub struct Cli {
    /// Control plane address [default: the running `stigmer local` platform, else
    /// http://localhost:50051].
    #[arg(long, global = true, env = "STIGMER_BACKEND_ENDPOINT")]
    pub endpoint: Option<String>,

    /// API key sent as `authorization: Bearer <key>` [default: for an endpoint on this
    /// machine, the client key of the `stigmer local` platform (client.key in its data
    /// directory, $STIGMER_HOME or ~/.stigmer); else dummy-local-key].
    #[arg(long, global = true, env = "STIGMER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

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
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            stigmer agent apply -f writer.yaml\n  \
            stigmer agent list\n  \
            stigmer -o json agent get writer\n  \
            stigmer agent delete writer"
    )]
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
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            stigmer execution list --phase in-progress --phase pending\n  \
            stigmer execution get exec-0192...\n  \
            stigmer execution watch exec-0192...\n  \
            stigmer execution cancel exec-0192... --reason \"wrong agent\""
    )]
    Execution(ExecutionCommand),
    /// Run the platform on this machine: the control plane and a supervised runner.
    Local(LocalArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    stigmer local start                 # detaches once both are healthy\n  \
    stigmer local start --foreground    # stays in front; Ctrl-C drains and stops\n  \
    stigmer local status\n  \
    stigmer local logs --component runner -f\n  \
    stigmer local stop\n\n\
    Files live under the data directory (default ~/.stigmer, or STIGMER_HOME):\n  \
    data/ (database), workspace/ (sandboxes), logs/, run/ (PID and state files).")]
pub struct LocalArgs {
    /// Data directory [default: $STIGMER_HOME, else ~/.stigmer].
    #[arg(long, global = true, env = "STIGMER_HOME", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: LocalCommand,
}

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start the control plane and a supervised runner.
    #[command(after_help = "Examples:\n  \
        stigmer local start\n  \
        STIGMER_LLM_PROVIDER=anthropic stigmer local start        # prompts for ANTHROPIC_API_KEY if unset\n  \
        STIGMER_LLM_PROVIDER=openai STIGMER_LLM_BASE_URL=http://localhost:8000/v1 \\\n      \
        STIGMER_LLM_API_KEY=none stigmer local start --port 50099\n\n\
        The runner's provider follows STIGMER_LLM_PROVIDER (anthropic, openai, ollama; default\n\
        ollama). When its key (ANTHROPIC_API_KEY / OPENAI_API_KEY, or STIGMER_LLM_API_KEY) is not\n\
        set, start asks for it with hidden input on a terminal and fails without one. The key is\n\
        handed to the runner through its environment only: never a file, a log or a command line.\n\n\
        Exit status: 0 started (or, in the foreground, stopped cleanly); 1 could not start or already\n\
        running; 2 configuration problem (such as a missing key without a terminal).")]
    Start(StartArgs),
    /// Stop the runner (it drains in-flight executions), then the control plane.
    #[command(after_help = "Examples:\n  \
        stigmer local stop\n  \
        stigmer local stop --timeout 10     # kill whatever is left after 10 s\n\n\
        Exit status: 0 stopped or not running; 1 something had to be killed.")]
    Stop(StopArgs),
    /// Stop the platform (draining the runner) and start it again with these settings.
    #[command(after_help = "Examples:\n  \
        stigmer local restart\n  \
        STIGMER_LLM_MODEL=claude-sonnet-4-5 stigmer local restart   # pick up a new setting\n\n\
        The key is settled (asked for, if missing) before anything is stopped. It is never\n\
        stored, so a key typed at the first start is asked for again unless it is in the\n\
        environment.")]
    Restart(StartArgs),
    /// Show whether the platform is up: control plane, runner, endpoint, data directory.
    #[command(after_help = "Examples:\n  \
        stigmer local status\n  \
        stigmer -o json local status\n\n\
        Exit status: 0 running and healthy; 1 not running; 3 running but degraded (runner not\n\
        ready or given up, control plane not serving).")]
    Status,
    /// Show the log of the control plane, the runner or the supervisor.
    #[command(after_help = "Examples:\n  \
        stigmer local logs                      # the last lines of every component\n  \
        stigmer local logs --component runner -f\n  \
        stigmer local logs -c server -n 200")]
    Logs(LogsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// Stay in the foreground (logs on the terminal; Ctrl-C drains the runner and stops).
    #[arg(long)]
    pub foreground: bool,
    /// Control plane port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// The runner's health port (`/readyz`, `/status`, `/metrics`) [default: a free port].
    #[arg(long)]
    pub runner_http_port: Option<u16>,
    /// The `runner` binary [default: next to `stigmer`, else on PATH].
    #[arg(long, env = "STIGMER_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,
    /// The `stigmer-server` binary [default: next to `stigmer`, else on PATH].
    #[arg(long, env = "STIGMER_SERVER_BIN", value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Seconds to wait for both to become healthy.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub wait_timeout: u64,

    // Supervisor tuning. Hidden: the defaults suit a laptop; tests shorten them.
    /// Set by a detaching `local start` on the supervisor it starts.
    #[arg(long, hide = true)]
    pub detached_child: bool,
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub health_interval_ms: u64,
    /// Consecutive failed readiness checks of a live runner before it is restarted.
    #[arg(long, hide = true, default_value_t = 3)]
    pub unhealthy_after: u32,
    #[arg(long, hide = true, default_value_t = 1_000)]
    pub restart_backoff_ms: u64,
    #[arg(long, hide = true, default_value_t = 30_000)]
    pub restart_backoff_max_ms: u64,
    #[arg(long, hide = true, default_value_t = 10)]
    pub max_restarts: u32,
    #[arg(long, hide = true, default_value_t = 600)]
    pub restart_window_secs: u64,
    /// How long the runner may take to drain on stop before it is forced.
    #[arg(long, hide = true, default_value_t = 45)]
    pub runner_stop_timeout_secs: u64,
    #[arg(long, hide = true, default_value_t = 10)]
    pub server_stop_timeout_secs: u64,
    /// A component log is rotated when it grows past this size.
    #[arg(long, hide = true, default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait for the runner to drain and everything to exit before killing.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Which log [default: all of them].
    #[arg(long, short = 'c', value_enum)]
    pub component: Option<Component>,
    /// Keep printing new lines as they are written (Ctrl-C to leave).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Lines to show from the end of each log.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Component {
    Server,
    Runner,
    Supervisor,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Supervisor, Component::Server, Component::Runner];

    pub fn name(self) -> &'static str {
        match self {
            Component::Server => "server",
            Component::Runner => "runner",
            Component::Supervisor => "supervisor",
        }
    }
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
    #[command(after_help = "Examples:\n  stigmer agent list\n  stigmer -o json agent list")]
    List,
    /// Show one agent.
    #[command(
        after_help = "Examples:\n  stigmer agent get writer\n  stigmer -o json agent get writer"
    )]
    Get { name: String },
    /// Delete an agent (refused while it has unfinished executions).
    #[command(after_help = "Example:\n  stigmer agent delete writer")]
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
    #[command(after_help = "Examples:\n  \
        stigmer execution list\n  \
        stigmer execution list --agent writer --phase failed --limit 5\n  \
        stigmer -o json execution list --session sess-0192...")]
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
    #[command(after_help = "Example:\n  stigmer execution get exec-0192...")]
    Get { id: String },
    /// Follow an execution until it ends (exit status as for `stigmer run`).
    #[command(after_help = "Example:\n  stigmer execution watch exec-0192...\n\n\
        Exit status: 0 completed, 1 failed, 3 cancelled. Ctrl-C leaves; the execution goes on.")]
    Watch { id: String },
    /// Cancel an execution.
    #[command(
        after_help = "Example:\n  stigmer execution cancel exec-0192... --reason \"not needed\""
    )]
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
    fn local_data_dir_is_accepted_before_and_after_the_subcommand() {
        for argv in [
            &[
                "stigmer",
                "local",
                "--data-dir",
                "/d",
                "start",
                "--port",
                "0",
            ][..],
            &[
                "stigmer",
                "local",
                "start",
                "--data-dir",
                "/d",
                "--port",
                "0",
            ][..],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            let Command::Local(local) = cli.command else {
                panic!("not local");
            };
            assert_eq!(local.data_dir, Some(PathBuf::from("/d")));
            let LocalCommand::Start(start) = local.command else {
                panic!("not start");
            };
            assert_eq!(start.port, 0);
            assert!(!start.foreground);
        }
    }

    #[test]
    fn logs_takes_a_component() {
        let cli = Cli::try_parse_from(["stigmer", "local", "logs", "-c", "runner", "-f"])
            .expect("parses");
        let Command::Local(LocalArgs {
            command: LocalCommand::Logs(logs),
            ..
        }) = cli.command
        else {
            panic!("not logs");
        };
        assert_eq!(logs.component, Some(Component::Runner));
        assert!(logs.follow);
        assert!(Cli::try_parse_from(["stigmer", "local", "logs", "-c", "db"]).is_err());
    }

    #[test]
    fn bad_env_is_refused() {
        assert!(Cli::try_parse_from(["stigmer", "run", "-e", "novalue", "hi"]).is_err());
    }
}
