//! `operator`: run the AgentRunner controller, or print its CRD with `operator crd`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;
use kube::{Client, CustomResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use operator::config::{Cli, Command, LogFormat, OperatorConfig, RunArgs};
use operator::controller::{self, Context};
use operator::crd::AgentRunner;
use operator::http::{self, HttpState};
use operator::leader::Election;
use operator::metrics::Metrics;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => print_crd(),
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

fn print_crd() -> ExitCode {
    match serde_yaml_ng::to_string(&AgentRunner::crd()) {
        Ok(yaml) => {
            use std::io::Write;
            // A closed pipe (`operator crd | head`) is the reader's choice, not a failure.
            match std::io::stdout().lock().write_all(yaml.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the CRD: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("cannot render the CRD: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The client of the kubeconfig or in-cluster account, every request counted in `metrics`.
async fn client(metrics: &Metrics) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    operator::api_requests::counted_client(config, metrics.api_requests())
}

async fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    // Pin ring as the process-wide TLS provider: rustls panics at the first connection if
    // a dependency ever compiles in a second provider and none was chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let client = match client(&metrics).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot build a Kubernetes client: set KUBECONFIG or run in a cluster");
            return ExitCode::FAILURE;
        }
    };
    if let Err(message) = controller::check_crd(&client, args.watch_namespace.as_deref()).await {
        error!("{message}");
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }

    let state = Arc::new(HttpState {
        metrics: metrics.clone(),
        ..Default::default()
    });
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let server = tokio::spawn(http::serve(
        args.http_addr,
        state.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    state.ready.store(true, Ordering::Relaxed);
    info!(addr = %args.http_addr, "serving /metrics, /healthz and /readyz");

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let ctx = Arc::new(Context::new(
        client.clone(),
        OperatorConfig::from(&args),
        metrics.clone(),
        Some(identity.clone()),
    ));
    let code = if args.leader_election {
        run_as_elected(client, &args, &identity, ctx, &metrics, shutdown.clone()).await
    } else {
        controller::run(
            ctx,
            args.watch_namespace.clone(),
            args.concurrency,
            shutdown.clone().cancelled_owned(),
        )
        .await;
        ExitCode::SUCCESS
    };

    state.ready.store(false, Ordering::Relaxed);
    shutdown.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "HTTP server failed"),
        Err(e) => error!(error = %e, "HTTP server task failed"),
    }
    info!("operator stopped");
    code
}

/// Reconcile only while holding the Lease. Losing it ends the process with an error, so
/// that Kubernetes restarts this replica as a fresh candidate while another leads.
async fn run_as_elected(
    client: Client,
    args: &RunArgs,
    identity: &str,
    ctx: Arc<Context>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> ExitCode {
    let mut election = match Election::start(
        client,
        &args.lease_namespace,
        &args.lease_name,
        identity,
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, lease = %args.lease_name, namespace = %args.lease_namespace, "cannot join leader election");
            return ExitCode::FAILURE;
        }
    };
    info!(identity, lease = %args.lease_name, "waiting to become leader");
    tokio::select! {
        acquired = election.acquired() => if !acquired {
            error!("leader election stopped before this replica became leader");
            return ExitCode::FAILURE;
        },
        () = shutdown.cancelled() => {
            election.release().await;
            return ExitCode::SUCCESS;
        }
    }
    info!(identity, "became leader");
    metrics.set_leader(true);

    let lost = election.lost();
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled_owned() => {},
                () = lost => {},
            }
        }
    };
    controller::run(ctx, args.watch_namespace.clone(), args.concurrency, stop).await;
    metrics.set_leader(false);
    let still_leader = election.is_leader();
    election.release().await;
    if shutdown.is_cancelled() || still_leader {
        ExitCode::SUCCESS
    } else {
        error!("lost the leader Lease; exiting so that this replica restarts as a candidate");
        ExitCode::FAILURE
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("operator-{}", std::process::id()))
}

fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received; finishing in-flight reconciles");
        token.cancel();
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
