//! The command-line surface.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Ranges of the numeric flags, documented in their help and in cli/README.md. A value outside
/// is refused while parsing (exit 2, naming the flag and the range) before anything starts,
/// so no duration or deadline computed from one can overflow.
pub mod ranges {
    use std::ops::RangeInclusive;

    pub const WAIT_TIMEOUT_SECS: RangeInclusive<u64> = 1..=86_400;
    pub const HEALTH_INTERVAL_MS: RangeInclusive<u64> = 50..=3_600_000;
    pub const UNHEALTHY_AFTER: RangeInclusive<u64> = 1..=1_000;
    pub const RESTART_BACKOFF_MS: RangeInclusive<u64> = 1..=3_600_000;
    pub const MAX_RESTARTS: RangeInclusive<u64> = 0..=10_000;
    pub const RESTART_WINDOW_SECS: RangeInclusive<u64> = 1..=604_800;
    pub const RUNNER_STOP_TIMEOUT_SECS: RangeInclusive<u64> = 1..=86_400;
    pub const SERVER_STOP_TIMEOUT_SECS: RangeInclusive<u64> = 1..=3_600;
    pub const LOG_MAX_BYTES: RangeInclusive<u64> = 1_024..=(1 << 40);
    pub const PORT: RangeInclusive<u64> = 0..=65_535;
    pub const RUNNER_HTTP_PORT: RangeInclusive<u64> = 1..=65_535;
    pub const STOP_TIMEOUT_SECS: RangeInclusive<u64> = 0..=86_400;
    pub const LOG_LINES: RangeInclusive<u64> = 0..=1_000_000;
    pub const LIST_LIMIT: RangeInclusive<u64> = 1..=1_000;
}

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
    /// Control plane port on 127.0.0.1, 0-65535 (0 picks a free one).
    #[arg(long, default_value_t = 50051,
          value_parser = RangedU64ValueParser::<u16>::new().range(ranges::PORT))]
    pub port: u16,
    /// The runner's health port (`/readyz`, `/status`, `/metrics`), 1-65535 [default: a free
    /// port].
    #[arg(long, value_parser = RangedU64ValueParser::<u16>::new().range(ranges::RUNNER_HTTP_PORT))]
    pub runner_http_port: Option<u16>,
    /// The `runner` binary [default: next to `stigmer`, else on PATH].
    #[arg(long, env = "STIGMER_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,
    /// The `stigmer-server` binary [default: next to `stigmer`, else on PATH].
    #[arg(long, env = "STIGMER_SERVER_BIN", value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Where the runner keeps one directory per session (its SANDBOX_ROOT_DIR); created 0700
    /// when missing. Must not contain the data directory [default: <data-dir>/workspace].
    #[arg(long, env = "SANDBOX_ROOT_DIR", value_name = "DIR")]
    pub sandbox_root: Option<PathBuf>,
    /// Seconds to wait for both to become healthy (1-86400).
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::WAIT_TIMEOUT_SECS))]
    pub wait_timeout: u64,

    // Supervisor tuning. Hidden: the defaults suit a laptop; tests shorten them.
    /// Set by a detaching `local start` on the supervisor it starts.
    #[arg(long, hide = true)]
    pub detached_child: bool,
    /// Milliseconds between health checks (50-3600000).
    #[arg(long, hide = true, default_value_t = 10_000,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::HEALTH_INTERVAL_MS))]
    pub health_interval_ms: u64,
    /// Consecutive failed readiness checks of a live runner before it is restarted (1-1000).
    #[arg(long, hide = true, default_value_t = 3,
          value_parser = RangedU64ValueParser::<u32>::new().range(ranges::UNHEALTHY_AFTER))]
    pub unhealthy_after: u32,
    /// First restart delay in milliseconds, doubled up to the maximum (1-3600000).
    #[arg(long, hide = true, default_value_t = 1_000,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::RESTART_BACKOFF_MS))]
    pub restart_backoff_ms: u64,
    /// Longest restart delay in milliseconds (1-3600000).
    #[arg(long, hide = true, default_value_t = 30_000,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::RESTART_BACKOFF_MS))]
    pub restart_backoff_max_ms: u64,
    /// Restarts allowed within the window before the supervisor gives up (0-10000).
    #[arg(long, hide = true, default_value_t = 10,
          value_parser = RangedU64ValueParser::<u32>::new().range(ranges::MAX_RESTARTS))]
    pub max_restarts: u32,
    /// The window restarts are counted in, in seconds (1-604800).
    #[arg(long, hide = true, default_value_t = 600,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::RESTART_WINDOW_SECS))]
    pub restart_window_secs: u64,
    /// How long the runner may take to drain on stop before it is forced, in seconds
    /// (1-86400).
    #[arg(long, hide = true, default_value_t = 45,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::RUNNER_STOP_TIMEOUT_SECS))]
    pub runner_stop_timeout_secs: u64,
    /// How long the control plane may take to stop, in seconds (1-3600).
    #[arg(long, hide = true, default_value_t = 10,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::SERVER_STOP_TIMEOUT_SECS))]
    pub server_stop_timeout_secs: u64,
    /// A component log is rotated when it grows past this size, in bytes (1024-2^40).
    #[arg(long, hide = true, default_value_t = 10 * 1024 * 1024,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::LOG_MAX_BYTES))]
    pub log_max_bytes: u64,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait for the runner to drain and everything to exit before killing
    /// (0-86400).
    #[arg(long, value_name = "SECS",
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::STOP_TIMEOUT_SECS))]
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
    /// Lines to show from the end of each log (0-1000000).
    #[arg(long, short = 'n', default_value_t = 50,
          value_parser = RangedU64ValueParser::<usize>::new().range(ranges::LOG_LINES))]
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
        token_budget: 200000\n  \
        env: {GREETING: hello}\n\n\
        tools: omitted = every built-in tool, [] = none (no tool schemas are sent to the model).\n\
        token_budget: most tokens (input, cached included, plus output, summed over its model\n\
        calls) one execution may use before it fails; `stigmer run --token-budget` replaces it.")]
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
    /// Most tokens this execution may use (input, cached included, plus output, over all its
    /// model calls); replaces the agent's token_budget. 1-1000000000.
    #[arg(long, value_parser = RangedU64ValueParser::<u64>::new().range(1..=stigmer_proto::rules::MAX_TOKEN_BUDGET))]
    pub token_budget: Option<u64>,
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
        /// Executions to show (1-1000).
        #[arg(long, default_value_t = 20,
              value_parser = RangedU64ValueParser::<u32>::new().range(ranges::LIST_LIMIT))]
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

    // ---- numeric flags ----

    use std::ops::RangeInclusive;

    use proptest::prelude::*;
    use testkit::numbers::{boundaries, expected, hostile_number};

    fn start(cli: &Cli) -> &StartArgs {
        match &cli.command {
            Command::Local(LocalArgs {
                command: LocalCommand::Start(start),
                ..
            }) => start,
            other => panic!("not local start: {other:?}"),
        }
    }

    /// A numeric flag: its subcommand, name, documented range, and how to read it back.
    type Flag = (
        &'static [&'static str],
        &'static str,
        RangeInclusive<u64>,
        fn(&Cli) -> u64,
    );

    fn numeric_flags() -> Vec<Flag> {
        vec![
            (
                &["local", "start"],
                "--wait-timeout",
                ranges::WAIT_TIMEOUT_SECS,
                |c| start(c).wait_timeout,
            ),
            (
                &["local", "start"],
                "--health-interval-ms",
                ranges::HEALTH_INTERVAL_MS,
                |c| start(c).health_interval_ms,
            ),
            (
                &["local", "start"],
                "--unhealthy-after",
                ranges::UNHEALTHY_AFTER,
                |c| u64::from(start(c).unhealthy_after),
            ),
            (
                &["local", "start"],
                "--restart-backoff-ms",
                ranges::RESTART_BACKOFF_MS,
                |c| start(c).restart_backoff_ms,
            ),
            (
                &["local", "start"],
                "--restart-backoff-max-ms",
                ranges::RESTART_BACKOFF_MS,
                |c| start(c).restart_backoff_max_ms,
            ),
            (
                &["local", "start"],
                "--max-restarts",
                ranges::MAX_RESTARTS,
                |c| u64::from(start(c).max_restarts),
            ),
            (
                &["local", "start"],
                "--restart-window-secs",
                ranges::RESTART_WINDOW_SECS,
                |c| start(c).restart_window_secs,
            ),
            (
                &["local", "start"],
                "--runner-stop-timeout-secs",
                ranges::RUNNER_STOP_TIMEOUT_SECS,
                |c| start(c).runner_stop_timeout_secs,
            ),
            (
                &["local", "start"],
                "--server-stop-timeout-secs",
                ranges::SERVER_STOP_TIMEOUT_SECS,
                |c| start(c).server_stop_timeout_secs,
            ),
            (
                &["local", "start"],
                "--log-max-bytes",
                ranges::LOG_MAX_BYTES,
                |c| start(c).log_max_bytes,
            ),
            (
                &["local", "start"],
                "--runner-http-port",
                ranges::RUNNER_HTTP_PORT,
                |c| start(c).runner_http_port.map_or(0, u64::from),
            ),
            (&["local", "start"], "--port", ranges::PORT, |c| {
                u64::from(start(c).port)
            }),
            (
                &["local", "stop"],
                "--timeout",
                ranges::STOP_TIMEOUT_SECS,
                |c| match &c.command {
                    Command::Local(LocalArgs {
                        command: LocalCommand::Stop(s),
                        ..
                    }) => s.timeout.unwrap_or(u64::MAX),
                    other => panic!("not stop: {other:?}"),
                },
            ),
            (
                &["local", "logs"],
                "--lines",
                ranges::LOG_LINES,
                |c| match &c.command {
                    Command::Local(LocalArgs {
                        command: LocalCommand::Logs(l),
                        ..
                    }) => l.lines as u64,
                    other => panic!("not logs: {other:?}"),
                },
            ),
            (
                &["execution", "list"],
                "--limit",
                ranges::LIST_LIMIT,
                |c| match &c.command {
                    Command::Execution(ExecutionCommand::List { limit, .. }) => u64::from(*limit),
                    other => panic!("not execution list: {other:?}"),
                },
            ),
        ]
    }

    /// The flag accepts `raw` exactly when it is a decimal integer within its range, and then
    /// holds that number; anything else is a parse error (exit 2).
    fn check_flag((command, flag, range, read): &Flag, raw: &str) -> Result<(), TestCaseError> {
        for argv in [
            vec![format!("{flag}={raw}")],
            vec![(*flag).to_string(), raw.to_string()],
        ] {
            let full = ["stigmer"]
                .iter()
                .chain(command.iter())
                .map(|s| (*s).to_string())
                .chain(argv);
            match Cli::try_parse_from(full) {
                Ok(cli) => {
                    let value = read(&cli);
                    prop_assert_eq!(Some(value), expected(raw, range), "{} {:?}", flag, raw);
                }
                Err(err) => {
                    prop_assert_eq!(expected(raw, range), None, "{} {:?}: {}", flag, raw, err);
                    prop_assert_eq!(err.exit_code(), 2);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn numeric_flags_take_exactly_their_documented_range(raw in hostile_number()) {
            for flag in numeric_flags() {
                check_flag(&flag, &raw)?;
            }
        }
    }

    #[test]
    fn numeric_flags_at_and_beyond_their_bounds() {
        for flag in numeric_flags() {
            for raw in boundaries(&flag.2) {
                if let Err(e) = check_flag(&flag, &raw) {
                    panic!("{e}");
                }
            }
        }
    }

    #[test]
    fn an_out_of_range_flag_names_the_flag_and_the_range() {
        let err = Cli::try_parse_from([
            "stigmer",
            "local",
            "start",
            "--wait-timeout",
            "18446744073709551615",
        ])
        .expect_err("refused");
        let shown = err.to_string();
        assert!(shown.contains("--wait-timeout"), "{shown}");
        assert!(shown.contains("1..=86400"), "{shown}");
        assert_eq!(err.exit_code(), 2);
    }
}
