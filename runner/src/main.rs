//! `runner`: the Stigmer agent runner binary.

use std::process::ExitCode;

use runner::banner;
use runner::config::{Config, Env};
use runner::worker::Worker;

/// Exit code when executions had to be cancelled because the drain timeout passed.
const EXIT_DRAIN_CANCELLED: u8 = 3;

fn main() -> ExitCode {
    // Started as the sandbox helper of a command: nothing else of the runner runs. (The helper
    // stays dumpable: it must write its own /proc/self/uid_map, and holds no secret.)
    if let Some(code) = runner::sandbox::confine::helper_entry() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // Then, while the LLM key is only in the environment: a non-dumpable process's
    // /proc/<pid>/environ and /mem, and ptrace, are refused to same-uid processes without
    // CAP_SYS_PTRACE, such as the agent's tool commands (issue 9).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("runner: cannot make the process non-dumpable (PR_SET_DUMPABLE): {e}");
        return ExitCode::FAILURE;
    }
    let config = match Env::load().and_then(|env| Config::from_env(&env)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}", banner::config_error(&err));
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    runner::llm::ensure_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    println!("{}", banner::startup(&config));
    let shutdown = match runner::shutdown::on_signals() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("runner: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worker = match Worker::start(config).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("runner: start-up failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = worker.run(shutdown).await;
    if report.cancelled > 0 {
        ExitCode::from(EXIT_DRAIN_CANCELLED)
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn",
            config.log_level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}
