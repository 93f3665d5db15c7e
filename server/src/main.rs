//! `stigmer-server`: the control plane as a process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use stigmer_proto::LOCAL_API_KEY;
use stigmer_redis::TlsMismatch;
use stigmer_server::{
    ControlPlane, JwtAuth, KeySource, RedisSettings, RedisTarget, ServerConfig, TlsFiles,
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// How long a fetched JWKS is used before it is fetched again (an unknown `kid` refetches
/// sooner).
const JWKS_REFRESH: Duration = Duration::from_secs(600);

/// Ranges of the numeric flags (README.md): a value outside is refused while parsing, naming
/// the flag and the range, before anything starts. A zero sweep interval would panic the timer;
/// a huge TTL or wait would overflow the deadlines computed from them.
mod ranges {
    use std::ops::RangeInclusive;

    pub const LEASE_TTL_SECS: RangeInclusive<u64> = 1..=3_600;
    pub const MAX_CLAIM_WAIT_SECS: RangeInclusive<u64> = 1..=300;
    pub const SWEEP_INTERVAL_MS: RangeInclusive<u64> = 10..=60_000;
    pub const REDIS_PORT: RangeInclusive<u64> = 1..=65_535;
}

/// The Stigmer control plane: stores agents and executions and hands executions to runners.
#[derive(Debug, Parser)]
#[command(name = "stigmer-server", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "STIGMER_SERVER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Directory for the database [default: $HOME/.stigmer/data].
    #[arg(long, env = "STIGMER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token accepted on every API; repeat the flag, or separate with commas in the
    /// variable [default: dummy-local-key, unless a role key file is given].
    #[arg(
        long = "api-key",
        env = "STIGMER_SERVER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// File holding the key accepted on the runner API only (Claim, Heartbeat, ...). Read at
    /// start, so the key never appears on a command line.
    #[arg(long, env = "STIGMER_SERVER_RUNNER_KEY_FILE", value_name = "PATH")]
    runner_key_file: Option<PathBuf>,
    /// File holding the key accepted on the agent and execution APIs only.
    #[arg(long, env = "STIGMER_SERVER_CLIENT_KEY_FILE", value_name = "PATH")]
    client_key_file: Option<PathBuf>,
    /// Seconds a claim stays valid without a heartbeat or status update (1-3600).
    #[arg(long, env = "STIGMER_LEASE_TTL_SECS", default_value_t = 30,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::LEASE_TTL_SECS))]
    lease_ttl_secs: u64,
    /// Longest long-poll a runner may ask for, in seconds (1-300).
    #[arg(long, env = "STIGMER_MAX_CLAIM_WAIT_SECS", default_value_t = 30,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::MAX_CLAIM_WAIT_SECS))]
    max_claim_wait_secs: u64,
    /// How often expired leases are looked for, in milliseconds (10-60000).
    #[arg(long, env = "STIGMER_SWEEP_INTERVAL_MS", default_value_t = 1000,
          value_parser = RangedU64ValueParser::<u64>::new().range(ranges::SWEEP_INTERVAL_MS))]
    sweep_interval_ms: u64,
    /// Cloud dispatch and live events through Redis: `redis://[:password@]host:port[/db]`.
    /// Unset (and no --redis-host): local mode, no Redis at all.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        conflicts_with = "redis_host"
    )]
    redis_url: Option<String>,
    /// Redis host, instead of --redis-url.
    #[arg(long, env = "REDIS_HOST")]
    redis_host: Option<String>,
    /// Redis port (with --redis-host), 1-65535.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379,
          value_parser = RangedU64ValueParser::<u16>::new().range(ranges::REDIS_PORT))]
    redis_port: u16,
    /// Redis password (with --redis-host).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// TLS to --redis-host (a rediss:// --redis-url says so itself); REDIS_TLS=true|false.
    #[arg(long, env = "REDIS_TLS")]
    redis_tls: bool,
    /// PEM CA certificates a TLS Redis's certificate must chain to, instead of the system's.
    #[arg(long, env = "REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (needs --tls-key). Unset: plaintext gRPC.
    #[arg(long, env = "STIGMER_SERVER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "STIGMER_SERVER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Required `iss` of accepted JWTs.
    #[arg(long, env = "STIGMER_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of accepted JWTs.
    #[arg(long, env = "STIGMER_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Accept JWTs signed by a key of this JWKS (besides the API keys).
    #[arg(
        long,
        env = "STIGMER_JWT_JWKS_URL",
        conflicts_with = "jwt_public_key_file"
    )]
    jwt_jwks_url: Option<String>,
    /// Accept JWTs signed by this PEM public key (RSA: RS256, P-256: ES256).
    #[arg(long, env = "STIGMER_JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("invalid log level '{0}': {1}")]
    LogLevel(String, String),
    #[error("no data directory given and $HOME is not set; pass --data-dir")]
    NoHome,
    #[error("address {0} is in use: is another stigmer-server running?")]
    AddressInUse(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("--tls-cert is set but --tls-key is not; both are needed to serve TLS")]
    TlsCertWithoutKey,
    #[error("--tls-key is set but --tls-cert is not; both are needed to serve TLS")]
    TlsKeyWithoutCert,
    #[error("{0}")]
    RedisTls(stigmer_redis::TlsMismatch),
    #[error("REDIS_CA_FILE: {0}")]
    RedisCa(stigmer_auth::TlsError),
    #[error("--jwt-issuer/--jwt-audience need a key: --jwt-jwks-url or --jwt-public-key-file")]
    JwtWithoutKey,
    #[error("JWT public key file {}: {source}", path.display())]
    JwtPublicKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {} is empty", .0.display())]
    EmptyKeyFile(PathBuf),
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    NotDumpable(nix::Error),
    #[error(transparent)]
    Server(#[from] stigmer_server::ServerError),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

#[tokio::main]
async fn main() -> ExitCode {
    // First thing, before any key is read: a non-dumpable process's /proc/<pid>/environ and
    // /proc/<pid>/mem, and ptrace, are refused to same-uid processes without CAP_SYS_PTRACE,
    // such as an agent's tool command.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("stigmer-server: {}", StartError::NotDumpable(err));
        return ExitCode::FAILURE;
    }
    // The one rustls provider of the tree, for TLS to Redis and the gRPC server alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stigmer-server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    init_logging(&args.log_level)?;
    let config = config_from(&args)?;
    // Bind before touching the data directory: a second server started by mistake must not
    // apply lease expiry to the first one's store.
    let listener = bind(&args.listen).await?;
    let control_plane = ControlPlane::open(config).await?;
    let addr = listener
        .local_addr()
        .map_err(|err| StartError::Bind(args.listen.clone(), err))?;
    announce(&addr.to_string())?;
    tracing::info!(%addr, database = %control_plane.database_path().display(), "serving");
    control_plane.serve(listener, shutdown_signal()).await?;
    Ok(())
}

fn config_from(args: &Args) -> Result<ServerConfig, StartError> {
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".stigmer").join("data"))
            .ok_or(StartError::NoHome)?,
    };
    let mut config = ServerConfig::local(data_dir);
    config.runner_keys = read_key_file(args.runner_key_file.as_deref())?;
    config.client_keys = read_key_file(args.client_key_file.as_deref())?;
    let role_keys = !(config.runner_keys.is_empty() && config.client_keys.is_empty());
    config.api_keys = if args.api_keys.is_empty() && role_keys {
        // Role keys given: the well-known local key must not open everything behind them.
        Vec::new()
    } else if args.api_keys.is_empty() {
        vec![LOCAL_API_KEY.to_string()]
    } else {
        args.api_keys
            .iter()
            .map(|key| key.trim().to_string())
            .collect()
    };
    config.lease_ttl = Duration::from_secs(args.lease_ttl_secs);
    config.max_claim_wait = Duration::from_secs(args.max_claim_wait_secs);
    config.sweep_interval = Duration::from_millis(args.sweep_interval_ms);
    config.redis = redis_settings(args)?;
    config.tls = tls_files(args)?;
    config.jwt = jwt_auth(args)?;
    Ok(config)
}

/// The key in a key file (surrounding whitespace, such as the final newline, removed).
fn read_key_file(path: Option<&std::path::Path>) -> Result<Vec<String>, StartError> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| StartError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(StartError::EmptyKeyFile(path.to_path_buf()));
    }
    Ok(vec![key.to_string()])
}

fn non_empty<T: Clone + AsRef<std::ffi::OsStr>>(value: &Option<T>) -> Option<T> {
    // An empty environment variable (`STIGMER_SERVER_TLS_CERT=`) means unset.
    value.clone().filter(|v| !v.as_ref().is_empty())
}

fn tls_files(args: &Args) -> Result<Option<TlsFiles>, StartError> {
    match (non_empty(&args.tls_cert), non_empty(&args.tls_key)) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (Some(_), None) => Err(StartError::TlsCertWithoutKey),
        (None, Some(_)) => Err(StartError::TlsKeyWithoutCert),
        (None, None) => Ok(None),
    }
}

fn jwt_auth(args: &Args) -> Result<Option<JwtAuth>, StartError> {
    let key = match (
        non_empty(&args.jwt_jwks_url),
        non_empty(&args.jwt_public_key_file),
    ) {
        (Some(url), _) => KeySource::Jwks {
            url,
            refresh: JWKS_REFRESH,
        },
        (None, Some(path)) => KeySource::PublicKeyPem(
            std::fs::read_to_string(&path)
                .map_err(|source| StartError::JwtPublicKeyFile { path, source })?,
        ),
        (None, None) => {
            // An issuer or audience without a key would silently accept no JWT at all.
            if non_empty(&args.jwt_issuer).is_some() || non_empty(&args.jwt_audience).is_some() {
                return Err(StartError::JwtWithoutKey);
            }
            return Ok(None);
        }
    };
    Ok(Some(JwtAuth {
        issuer: non_empty(&args.jwt_issuer),
        audience: non_empty(&args.jwt_audience),
        key,
    }))
}

/// Redis, when configured: where it is and, for TLS, which CAs to trust.
fn redis_settings(args: &Args) -> Result<Option<RedisSettings>, StartError> {
    let ca_file = args
        .redis_ca_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty());
    let Some(target) = redis_target(args) else {
        return match ca_file {
            Some(_) => Err(StartError::RedisTls(TlsMismatch::CaWithoutTls)),
            None => Ok(None),
        };
    };
    target
        .check_tls(args.redis_tls, ca_file.is_some())
        .map_err(StartError::RedisTls)?;
    let mut settings = RedisSettings::new(target);
    if let Some(path) = ca_file {
        settings.ca_pem = Some(stigmer_auth::read_ca_pem(path).map_err(StartError::RedisCa)?);
    }
    Ok(Some(settings))
}

fn redis_target(args: &Args) -> Option<RedisTarget> {
    let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
    if let Some(url) = non_empty(&args.redis_url) {
        return Some(RedisTarget::Url(url));
    }
    non_empty(&args.redis_host).map(|host| RedisTarget::HostPort {
        host,
        port: args.redis_port,
        password: non_empty(&args.redis_password),
        tls: args.redis_tls,
    })
}

/// Accepts the Python runner's level names (INFO, WARNING, CRITICAL) as well as tracing's.
fn init_logging(level: &str) -> Result<(), StartError> {
    let directive = match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|err| StartError::LogLevel(level.to_string(), err.to_string()))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

async fn bind(listen: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(listen)
        .await
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AddrInUse => StartError::AddressInUse(listen.to_string()),
            _ => StartError::Bind(listen.to_string(), err),
        })
}

/// The one line on stdout; tests and supervisors parse it to learn the actual port.
fn announce(addr: &str) -> Result<(), StartError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "stigmer-server listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(StartError::Stdout)
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once, for when a graceful
/// stop takes longer than the operator is willing to wait.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("stigmer-server: second signal, exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("stigmer-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults() {
        // Environment variables would change defaults; none of these are set under test.
        let args = parse(&["--data-dir", "/tmp/d"]);
        assert_eq!(args.listen, "127.0.0.1:50051");
        let config = config_from(&args).unwrap();
        assert_eq!(config.api_keys, vec![LOCAL_API_KEY.to_string()]);
        assert_eq!(config.lease_ttl, Duration::from_secs(30));
        assert_eq!(config.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(config.redis, None, "local mode never touches Redis");
    }

    #[test]
    fn redis_from_url_or_host() {
        let args = parse(&["--data-dir", "/d", "--redis-url", "redis://:pw@r:1/"]);
        let redis = config_from(&args).unwrap().redis.unwrap();
        assert_eq!(redis.target, RedisTarget::Url("redis://:pw@r:1/".into()));
        assert!(!format!("{redis:?}").contains("pw"));

        let args = parse(&[
            "--data-dir",
            "/d",
            "--redis-host",
            "r",
            "--redis-password",
            "pw",
        ]);
        let redis = config_from(&args).unwrap().redis.unwrap();
        assert_eq!(
            redis.target,
            RedisTarget::HostPort {
                host: "r".into(),
                port: 6379,
                password: Some("pw".into()),
                tls: false,
            }
        );
        assert!(!format!("{redis:?}").contains("pw"));
    }

    #[test]
    fn redis_tls_settings_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pki = testkit::pki::TestPki::new();
        std::fs::copy(pki.ca(), &ca).unwrap();
        let ca = ca.to_str().unwrap();
        // A CA with a host that is not TLS, or with no Redis at all.
        for args in [
            vec![
                "--data-dir",
                "/d",
                "--redis-url",
                "redis://r:1/",
                "--redis-ca-file",
                ca,
            ],
            vec![
                "--data-dir",
                "/d",
                "--redis-host",
                "r",
                "--redis-ca-file",
                ca,
            ],
            vec!["--data-dir", "/d", "--redis-ca-file", ca],
        ] {
            let err = config_from(&parse(&args)).unwrap_err();
            assert!(
                matches!(err, StartError::RedisTls(TlsMismatch::CaWithoutTls)),
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains("rediss://"), "{err}");
        }
        let err = config_from(&parse(&[
            "--data-dir",
            "/d",
            "--redis-url",
            "redis://r:1/",
            "--redis-tls",
        ]))
        .unwrap_err();
        assert!(
            matches!(err, StartError::RedisTls(TlsMismatch::FlagWithPlainUrl)),
            "{err}"
        );
        let not_pem = dir.path().join("x.pem");
        std::fs::write(&not_pem, "x").unwrap();
        let err = config_from(&parse(&[
            "--data-dir",
            "/d",
            "--redis-url",
            "rediss://r:1/",
            "--redis-ca-file",
            not_pem.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        let redis = config_from(&parse(&[
            "--data-dir",
            "/d",
            "--redis-host",
            "r",
            "--redis-tls",
            "--redis-ca-file",
            ca,
        ]))
        .unwrap()
        .redis
        .unwrap();
        assert!(redis.target.is_tls());
        assert_eq!(redis.ca_pem, Some(std::fs::read(pki.ca()).unwrap()));
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let args = parse(&["--data-dir", "/d", "--tls-cert", "c.pem"]);
        assert!(matches!(
            config_from(&args),
            Err(StartError::TlsCertWithoutKey)
        ));
        let args = parse(&["--data-dir", "/d", "--tls-key", "k.pem"]);
        assert!(matches!(
            config_from(&args),
            Err(StartError::TlsKeyWithoutCert)
        ));
        let args = parse(&["--data-dir", "/d", "--tls-cert", "c", "--tls-key", "k"]);
        let tls = config_from(&args).unwrap().tls.unwrap();
        assert_eq!((tls.cert, tls.key), ("c".into(), "k".into()));
    }

    #[test]
    fn jwt_settings() {
        let args = parse(&["--data-dir", "/d", "--jwt-audience", "a"]);
        assert!(matches!(config_from(&args), Err(StartError::JwtWithoutKey)));

        let args = parse(&[
            "--data-dir",
            "/d",
            "--jwt-public-key-file",
            "/nonexistent/key.pem",
        ]);
        let err = config_from(&args).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/key.pem"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(&pem, "PEM").unwrap();
        let args = parse(&[
            "--data-dir",
            "/d",
            "--jwt-public-key-file",
            pem.to_str().unwrap(),
            "--jwt-issuer",
            "https://issuer",
            "--jwt-audience",
            "stigmer",
        ]);
        let jwt = config_from(&args).unwrap().jwt.unwrap();
        assert_eq!(jwt.key, KeySource::PublicKeyPem("PEM".into()));
        assert_eq!(jwt.issuer.as_deref(), Some("https://issuer"));
        assert_eq!(jwt.audience.as_deref(), Some("stigmer"));

        let args = parse(&["--data-dir", "/d", "--jwt-jwks-url", "https://i/jwks"]);
        assert!(matches!(
            config_from(&args).unwrap().jwt.unwrap().key,
            KeySource::Jwks { .. }
        ));
    }

    /// Every numeric flag takes exactly a decimal integer within its documented range, and
    /// refuses anything else (exit 2) without a panic.
    mod numeric_flags {
        use std::ops::RangeInclusive;

        use clap::Parser as _;
        use proptest::prelude::*;
        use testkit::numbers::{boundaries, expected, hostile_number};

        use super::super::{Args, ranges};

        type Flag = (&'static str, RangeInclusive<u64>, fn(&Args) -> u64);

        fn flags() -> Vec<Flag> {
            vec![
                ("--lease-ttl-secs", ranges::LEASE_TTL_SECS, |a| {
                    a.lease_ttl_secs
                }),
                ("--max-claim-wait-secs", ranges::MAX_CLAIM_WAIT_SECS, |a| {
                    a.max_claim_wait_secs
                }),
                ("--sweep-interval-ms", ranges::SWEEP_INTERVAL_MS, |a| {
                    a.sweep_interval_ms
                }),
                ("--redis-port", ranges::REDIS_PORT, |a| {
                    u64::from(a.redis_port)
                }),
            ]
        }

        fn check((flag, range, read): &Flag, raw: &str) -> Result<(), TestCaseError> {
            let arg = format!("{flag}={raw}");
            match Args::try_parse_from(["stigmer-server", "--data-dir", "/d", arg.as_str()]) {
                Ok(args) => prop_assert_eq!(Some(read(&args)), expected(raw, range), "{}", arg),
                Err(err) => {
                    prop_assert_eq!(expected(raw, range), None, "{}: {}", arg, err);
                    prop_assert_eq!(err.exit_code(), 2);
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn take_exactly_their_documented_range(raw in hostile_number()) {
                for flag in flags() {
                    check(&flag, &raw)?;
                }
            }
        }

        #[test]
        fn at_and_beyond_their_bounds() {
            for flag in flags() {
                for raw in boundaries(&flag.1) {
                    if let Err(e) = check(&flag, &raw) {
                        panic!("{e}");
                    }
                }
            }
        }

        #[test]
        fn a_zero_sweep_interval_is_refused_by_name() {
            let err = Args::try_parse_from(["stigmer-server", "--sweep-interval-ms", "0"])
                .expect_err("refused");
            let shown = err.to_string();
            assert!(
                shown.contains("--sweep-interval-ms") && shown.contains("10..=60000"),
                "{shown}"
            );
        }
    }

    #[test]
    fn repeated_api_keys() {
        let args = parse(&["--data-dir", "/d", "--api-key", "a", "--api-key", "b,c"]);
        assert_eq!(config_from(&args).unwrap().api_keys, ["a", "b", "c"]);
    }

    #[test]
    fn role_key_files_replace_the_default_key() {
        let dir = tempfile::tempdir().unwrap();
        let runner = dir.path().join("runner.key");
        let client = dir.path().join("client.key");
        std::fs::write(&runner, "runner-secret\n").unwrap();
        std::fs::write(&client, "client-secret\n").unwrap();
        let (runner, client) = (runner.to_str().unwrap(), client.to_str().unwrap());
        let args = parse(&[
            "--data-dir",
            "/d",
            "--runner-key-file",
            runner,
            "--client-key-file",
            client,
        ]);
        let config = config_from(&args).unwrap();
        assert_eq!(config.runner_keys, ["runner-secret"]);
        assert_eq!(config.client_keys, ["client-secret"]);
        assert!(config.api_keys.is_empty(), "{:?}", config.api_keys);
        // An explicit --api-key stays a key for everything.
        let args = parse(&[
            "--data-dir",
            "/d",
            "--runner-key-file",
            runner,
            "--api-key",
            "all",
        ]);
        assert_eq!(config_from(&args).unwrap().api_keys, ["all"]);
    }

    #[test]
    fn missing_or_empty_key_files_are_named() {
        let args = parse(&[
            "--data-dir",
            "/d",
            "--runner-key-file",
            "/nonexistent/r.key",
        ]);
        let err = config_from(&args).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/r.key"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "\n").unwrap();
        let args = parse(&[
            "--data-dir",
            "/d",
            "--client-key-file",
            empty.to_str().unwrap(),
        ]);
        assert!(matches!(
            config_from(&args),
            Err(StartError::EmptyKeyFile(_))
        ));
    }
}
