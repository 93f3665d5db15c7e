//! The operator's own configuration: command line flags, each also readable from the
//! environment so that a Deployment can set them without rewriting `args`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Field manager of every server-side apply the operator sends. One manager for all
/// objects keeps ownership simple: whatever the operator stops sending, it stops owning.
pub const FIELD_MANAGER: &str = "agentrunner-operator";

/// Default runner image repository.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/stigmer/agent-runner";

/// Seconds added to the drain timeout for the pod's termination grace period, so that the
/// runner can report cancellations and close connections after draining.
pub const DEFAULT_DRAIN_MARGIN_SECS: i64 = 30;

/// Default of `--concurrency` (see its help for why 8).
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// `operator` command line.
#[derive(Debug, Parser)]
#[command(
    name = "operator",
    version,
    about = "Kubernetes operator for Stigmer AgentRunner resources"
)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, also accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the AgentRunner CustomResourceDefinition as YAML.
    Crd,
}

/// Flags of the controller.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Runner image repository used when an AgentRunner sets none.
    #[arg(long, env = "OPERATOR_DEFAULT_IMAGE_REPOSITORY", default_value = DEFAULT_IMAGE_REPOSITORY)]
    pub default_image_repository: String,
    /// Runner image tag used when an AgentRunner sets none; the operator's version by default.
    #[arg(long, env = "OPERATOR_DEFAULT_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub default_image_tag: String,
    /// Seconds added to an AgentRunner's drain timeout to get the pods' termination grace
    /// period (0-3600; bounded so that the sum cannot overflow).
    #[arg(long, env = "OPERATOR_DRAIN_MARGIN_SECONDS", default_value_t = DEFAULT_DRAIN_MARGIN_SECS,
          value_parser = clap::value_parser!(i64).range(0..=3_600))]
    pub drain_margin_seconds: i64,
    /// Seconds between periodic re-reconciles of an unchanged AgentRunner (1-86400; kube-runtime's
    /// delay queue panics on a deadline too far away).
    #[arg(long, env = "OPERATOR_RESYNC_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub resync_seconds: u64,
    /// AgentRunners reconciled at once (1-65535; 0 would mean unbounded to kube-runtime).
    /// A reconcile is a few sequential requests, each waiting on the API server; a real API
    /// server (2 cores) reached its server-side-apply ceiling (~525/s) with 8 parallel
    /// clients, so fewer workers leave it idle and more only queue behind it.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY,
          value_parser = clap::builder::RangedU64ValueParser::<u16>::new().range(1..=65_535))]
    pub concurrency: u16,
    /// Take part in leader election through a Lease; only the leader reconciles.
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "agentrunner-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease; the operator pod's namespace (POD_NAMESPACE) by default.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in events; the pod name (POD_NAME) by default.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// The part of the configuration the reconcile pipeline reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Runner image repository used when an AgentRunner sets none.
    pub default_image_repository: String,
    /// Runner image tag used when an AgentRunner sets none.
    pub default_image_tag: String,
    /// Added to the drain timeout for `terminationGracePeriodSeconds`.
    pub drain_margin_seconds: i64,
    /// Period of re-reconciles of unchanged objects.
    pub resync: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image_repository: DEFAULT_IMAGE_REPOSITORY.to_owned(),
            default_image_tag: env!("CARGO_PKG_VERSION").to_owned(),
            drain_margin_seconds: DEFAULT_DRAIN_MARGIN_SECS,
            resync: Duration::from_secs(300),
        }
    }
}

impl From<&RunArgs> for OperatorConfig {
    fn from(args: &RunArgs) -> Self {
        Self {
            default_image_repository: args.default_image_repository.clone(),
            default_image_tag: args.default_image_tag.clone(),
            drain_margin_seconds: args.drain_margin_seconds.max(0),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_with_and_without_the_run_subcommand() {
        let bare = Cli::try_parse_from([
            "operator",
            "--leader-election=false",
            "--watch-namespace",
            "agents",
        ])
        .expect("parses");
        assert!(bare.command.is_none());
        assert!(!bare.run.leader_election);
        assert_eq!(bare.run.watch_namespace.as_deref(), Some("agents"));

        let run = Cli::try_parse_from(["operator", "run", "--default-image-tag", "2.0.0"])
            .expect("parses");
        let Some(Command::Run(args)) = run.command else {
            panic!("expected run");
        };
        let cfg = OperatorConfig::from(&args);
        assert_eq!(cfg.default_image_tag, "2.0.0");
        assert_eq!(cfg.drain_margin_seconds, DEFAULT_DRAIN_MARGIN_SECS);

        for (flag, value, range) in [
            ("--drain-margin-seconds", "9223372036854775807", "0..=3600"),
            ("--drain-margin-seconds", "-1", "0..=3600"),
            ("--resync-seconds", "0", "1..=86400"),
            ("--concurrency", "0", "1..=65535"),
        ] {
            let err = Cli::try_parse_from(["operator", "run", &format!("{flag}={value}")])
                .expect_err("out of range");
            let shown = err.to_string();
            assert!(shown.contains(flag) && shown.contains(range), "{shown}");
        }

        assert!(matches!(
            Cli::try_parse_from(["operator", "crd"])
                .expect("parses")
                .command,
            Some(Command::Crd)
        ));
    }
}
