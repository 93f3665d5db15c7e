//! Runner configuration from the environment, with the Stigmer runner's variable names.
//!
//! Loading is a pure function over an [`Env`] (process environment layered over an optional
//! `.env` file) so that every rule is unit-tested without touching the process environment.
//! Validation collects every problem before failing, so a user fixes them in one go.

//!
//! `env` holds where values come from and the problem-collecting reader; `cloud` reads the
//! cloud-only settings. Both are leaves: this module depends on them, never the reverse.

pub mod cloud;
pub(crate) mod env;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::llm::Provider;
use crate::sandbox::confine::SandboxSettings;
pub use cloud::CloudConfig;
use env::DEFAULT_SANDBOX_ROOT;
pub(crate) use env::Reader;
pub use env::{ConfigError, DOTENV_SWITCH, DotEnvState, Env, Origin, Problem, Sources};
use stigmer_contract::{Secret, env as vars};

/// Which mode the runner runs in, chosen once from `MODE`; everything that differs between
/// the modes hangs off this (the worker picks its dispatch and sandboxes from it at start).
#[derive(Debug, Clone)]
pub enum Mode {
    Local(LocalConfig),
    Cloud(CloudConfig),
}

impl Mode {
    pub fn label(&self) -> &'static str {
        self.kind().label()
    }

    pub(crate) fn kind(&self) -> ModeKind {
        match self {
            Mode::Local(_) => ModeKind::Local,
            Mode::Cloud(_) => ModeKind::Cloud,
        }
    }
}

/// The mode as named by `MODE`, before its settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModeKind {
    Local,
    Cloud,
}

impl ModeKind {
    fn label(self) -> &'static str {
        match self {
            ModeKind::Local => "LOCAL",
            ModeKind::Cloud => "CLOUD",
        }
    }
}

/// Local mode's settings: the shared API key and the filesystem sandboxes. `Debug` is derived:
/// the key is a [`Secret`], shown redacted.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub api_key: Secret,
    /// True when `STIGMER_API_KEY` was not set and the local default is used.
    pub api_key_is_local_default: bool,
    pub sandbox_root: PathBuf,
    /// How commands are confined (`STIGMER_SANDBOX*`).
    pub sandbox: SandboxSettings,
}

impl LocalConfig {
    pub fn sandbox_root_display(&self) -> String {
        absolute(&self.sandbox_root).display().to_string()
    }
}

/// Where the LLM key came from, for the banner (the key itself is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Variable(&'static str),
    NotNeeded,
}

/// `Debug` is derived: the key is a [`Secret`], shown redacted.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub provider: Provider,
    pub model: String,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub key_source: KeySource,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub request_timeout: Duration,
    pub max_attempts: u32,
}

/// `Debug` is derived: every key in it is a [`Secret`], shown redacted.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// `http://host:port`: the control plane.
    pub backend_endpoint: String,
    pub runner_id: String,
    /// The pod this runner runs in (`POD_NAME`), shown in its cloud-mode presence.
    pub pod_name: String,
    pub max_concurrency: usize,
    pub drain_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub claim_wait: Duration,
    pub status_flush_interval: Duration,
    pub max_turns: u32,
    pub max_repeated_tool_calls: u32,
    pub tool_timeout: Duration,
    pub tool_output_limit: usize,
    pub http_addr: SocketAddr,
    pub log_level: String,
    pub log_json: bool,
    pub llm: LlmConfig,
    /// Where each setting came from, for the banner.
    pub sources: Sources,
}

pub const DEFAULT_LOCAL_ENDPOINT: &str = "http://localhost:50051";
pub const DEFAULT_OLLAMA_BASE_URL: &str = "http://localhost:11434";
const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let mut r = Reader::new(env);
        let kind = read_mode(&mut r);
        let (backend_endpoint, backend) = read_backend(&mut r, kind);
        let llm = read_llm(&mut r, kind);
        // Read in both modes, so that a bad value is reported whatever the mode.
        let sandbox_root = PathBuf::from(
            r.string(vars::SANDBOX_ROOT_DIR)
                .unwrap_or_else(|| DEFAULT_SANDBOX_ROOT.into()),
        );
        let sandbox = crate::sandbox::confine::read_settings(&mut r);
        let mode = match backend {
            Backend::Local {
                api_key,
                api_key_is_local_default,
            } => Some(Mode::Local(LocalConfig {
                api_key: Secret::new(api_key),
                api_key_is_local_default,
                sandbox_root,
                sandbox,
            })),
            Backend::Cloud(cloud) => cloud.map(|c| Mode::Cloud(*c)),
        };
        let pod_name = r.string(vars::POD_NAME).unwrap_or_default();
        let runner_id = r
            .string(vars::RUNNER_ID)
            .or_else(|| r.string(vars::POD_NAME))
            .unwrap_or_else(default_runner_id);
        let max_concurrency = r.number(
            &[vars::MAX_CONCURRENCY, vars::MAX_CONCURRENCY_OLD],
            10,
            1,
            1024,
        );
        let drain_timeout = r.secs(vars::DRAIN_TIMEOUT_SECS, 30, 0, 86_400);
        let heartbeat_interval = r.millis(vars::HEARTBEAT_INTERVAL_MS, 3_000, 50, 60_000);
        let claim_wait = r.millis(vars::CLAIM_WAIT_MS, 20_000, 0, 60_000);
        let status_flush_interval = r.millis(vars::STATUS_FLUSH_MS, 250, 0, 10_000);
        let max_turns = r.number(&[vars::MAX_TURNS], 50, 1, 10_000);
        let max_repeated_tool_calls = r.number(&[vars::MAX_REPEATED_TOOL_CALLS], 3, 2, 100);
        let tool_timeout = r.secs(vars::TOOL_TIMEOUT_SECS, 120, 1, 86_400);
        let tool_output_limit =
            r.number(&[vars::TOOL_OUTPUT_LIMIT], 32 * 1024, 256, 16 * 1024 * 1024);
        let http_addr = read_http_addr(&mut r);
        let log_level = read_log_level(&mut r);
        let log_json = matches!(r.string(vars::LOG_FORMAT).as_deref(), Some("json"));
        r.finish()?;
        // Cloud settings are missing only when a problem about them was recorded above.
        let mode = mode.ok_or_else(|| {
            ConfigError::single(vars::MODE, "cloud mode settings are incomplete".to_string())
        })?;
        Ok(Config {
            mode,
            backend_endpoint,
            runner_id,
            pod_name,
            max_concurrency,
            drain_timeout,
            heartbeat_interval,
            claim_wait,
            status_flush_interval,
            max_turns,
            max_repeated_tool_calls,
            tool_timeout,
            tool_output_limit,
            http_addr,
            log_level,
            log_json,
            llm,
            sources: Sources::of(env),
        })
    }

    /// Local mode's settings; None in cloud mode.
    pub fn local(&self) -> Option<&LocalConfig> {
        match &self.mode {
            Mode::Local(local) => Some(local),
            Mode::Cloud(_) => None,
        }
    }

    /// Cloud mode's settings; None in local mode.
    pub fn cloud(&self) -> Option<&CloudConfig> {
        match &self.mode {
            Mode::Cloud(cloud) => Some(cloud),
            Mode::Local(_) => None,
        }
    }
}

fn read_mode(r: &mut Reader<'_>) -> ModeKind {
    match r
        .string(vars::MODE)
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("local") => ModeKind::Local,
        Some("cloud") => ModeKind::Cloud,
        Some(other) => {
            r.problem(
                vars::MODE,
                format!("unknown mode '{other}'; allowed values: local, cloud"),
            );
            ModeKind::Local
        }
    }
}

/// How the runner reaches the control plane, per mode.
enum Backend {
    Local {
        api_key: String,
        api_key_is_local_default: bool,
    },
    /// None when a cloud setting is missing (a problem says which).
    Cloud(Option<Box<CloudConfig>>),
}

/// The endpoint and the mode's credential settings.
fn read_backend(r: &mut Reader<'_>, mode: ModeKind) -> (String, Backend) {
    let default_scheme = match mode {
        ModeKind::Local => "http",
        ModeKind::Cloud => "https",
    };
    let raw = r.string(vars::BACKEND_ENDPOINT);
    let endpoint = match &raw {
        None => DEFAULT_LOCAL_ENDPOINT.to_string(),
        Some(raw) => match normalize_endpoint(raw, default_scheme) {
            Ok(e) if mode == ModeKind::Local && e.starts_with("https://") => {
                r.problem(
                    vars::BACKEND_ENDPOINT,
                    format!("'{raw}': local mode talks plaintext gRPC; use http://host:port"),
                );
                e
            }
            Ok(e) => e,
            Err(msg) => {
                r.problem(vars::BACKEND_ENDPOINT, msg);
                raw.clone()
            }
        },
    };
    if mode == ModeKind::Cloud {
        cloud::check_endpoint(r, &endpoint, raw.is_some());
        return (endpoint, Backend::Cloud(cloud::read(r).map(Box::new)));
    }
    let backend = match r.string(vars::API_KEY) {
        Some(api_key) => Backend::Local {
            api_key,
            api_key_is_local_default: false,
        },
        None => Backend::Local {
            api_key: stigmer_proto::LOCAL_API_KEY.to_string(),
            api_key_is_local_default: true,
        },
    };
    (endpoint, backend)
}

/// Accepts `host:port` (meaning `default_scheme`), `http://host:port` and `https://host:port`.
fn normalize_endpoint(raw: &str, default_scheme: &str) -> Result<String, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("{default_scheme}://{raw}")
    };
    let (scheme, rest) = with_scheme
        .split_once("://")
        .ok_or_else(|| format!("'{raw}' is not an endpoint"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "'{raw}': scheme must be http or https (or none, meaning {default_scheme})"
        ));
    }
    let authority = rest.trim_end_matches('/');
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid || authority.contains('/') {
        return Err(format!(
            "'{raw}' must be host:port, e.g. localhost:50051 or http://localhost:50051"
        ));
    }
    Ok(format!("{scheme}://{authority}"))
}

fn read_llm(r: &mut Reader<'_>, mode: ModeKind) -> LlmConfig {
    let default_provider = match mode {
        ModeKind::Local => Provider::Ollama,
        ModeKind::Cloud => Provider::Anthropic,
    };
    let provider = match r.string(vars::LLM_PROVIDER) {
        None => default_provider,
        Some(raw) => Provider::parse(&raw).unwrap_or_else(|| {
            r.problem(
                vars::LLM_PROVIDER,
                format!(
                    "unknown provider '{raw}'; allowed values: {}",
                    Provider::ALLOWED
                ),
            );
            default_provider
        }),
    };
    let model = r
        .string(vars::LLM_MODEL)
        .unwrap_or_else(|| provider.default_model().to_string());
    let base_url = read_base_url(r, provider);
    let (api_key, key_source) = read_llm_key(r, provider);
    let temperature = r.number(&[vars::LLM_TEMPERATURE], 0.0f32, 0.0, 2.0);
    LlmConfig {
        provider,
        model,
        base_url,
        api_key,
        key_source,
        max_tokens: r.number(&[vars::LLM_MAX_TOKENS], 8192u32, 1, 1_000_000),
        temperature: Some(temperature),
        request_timeout: r.secs(vars::LLM_TIMEOUT_SECS, 120, 1, 3_600),
        max_attempts: r.number(&[vars::LLM_MAX_ATTEMPTS], 4u32, 1, 20),
    }
}

fn read_base_url(r: &mut Reader<'_>, provider: Provider) -> String {
    let (key, value) = match (r.string(vars::LLM_BASE_URL), provider) {
        (Some(v), _) => (vars::LLM_BASE_URL, v),
        (None, Provider::Ollama) => (
            vars::OLLAMA_BASE_URL,
            r.string(vars::OLLAMA_BASE_URL)
                .unwrap_or_else(|| DEFAULT_OLLAMA_BASE_URL.to_string()),
        ),
        (None, Provider::Anthropic) => ("", DEFAULT_ANTHROPIC_BASE_URL.to_string()),
        (None, Provider::OpenAi) => ("", DEFAULT_OPENAI_BASE_URL.to_string()),
    };
    let trimmed = value.trim_end_matches('/').to_string();
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        r.problem(key, format!("'{value}' must be an http:// or https:// URL"));
    }
    trimmed
}

fn read_llm_key(r: &mut Reader<'_>, provider: Provider) -> (Option<Secret>, KeySource) {
    if let Some(key) = r.string(vars::LLM_API_KEY) {
        return (
            Some(Secret::new(key)),
            KeySource::Variable(vars::LLM_API_KEY),
        );
    }
    let Some(var) = provider.key_variable() else {
        return (None, KeySource::NotNeeded);
    };
    match r.string(var) {
        Some(key) => (Some(Secret::new(key)), KeySource::Variable(var)),
        None => {
            r.problem(
                var,
                format!(
                    "the {} provider needs an API key: set {var} or STIGMER_LLM_API_KEY",
                    provider.as_str()
                ),
            );
            (None, KeySource::NotNeeded)
        }
    }
}

fn read_http_addr(r: &mut Reader<'_>) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 8090));
    match r.string(vars::HTTP_ADDR) {
        None => fallback,
        Some(raw) => raw.parse().unwrap_or_else(|_| {
            r.problem(
                vars::HTTP_ADDR,
                format!("'{raw}' is not an address; use host:port, e.g. 0.0.0.0:8080"),
            );
            fallback
        }),
    }
}

fn read_log_level(r: &mut Reader<'_>) -> String {
    let raw = r.string(vars::LOG_LEVEL).unwrap_or_else(|| "info".into());
    let level = raw.to_ascii_lowercase();
    let level = if level == "warning" {
        "warn".to_string()
    } else {
        level
    };
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        r.problem(
            vars::LOG_LEVEL,
            format!("unknown level '{raw}'; allowed values: TRACE, DEBUG, INFO, WARN, ERROR"),
        );
        return "info".into();
    }
    level
}

fn default_runner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runner".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    fn variables(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.variable.as_str()).collect()
    }

    #[test]
    fn defaults_to_local_mode_with_local_endpoint_and_key() {
        let c = load(&[]).expect("defaults are valid");
        let local = c.local().expect("local mode");
        assert_eq!(c.backend_endpoint, "http://localhost:50051");
        assert_eq!(local.api_key.expose(), "dummy-local-key");
        assert!(local.api_key_is_local_default);
        assert_eq!(local.sandbox_root, PathBuf::from("./workspace"));
        assert_eq!(c.max_concurrency, 10);
        assert_eq!(c.llm.provider, Provider::Ollama);
        assert_eq!(c.llm.base_url, "http://localhost:11434");
        assert_eq!(c.llm.key_source, KeySource::NotNeeded);
    }

    #[test]
    fn unknown_mode_names_the_allowed_values() {
        let err = load(&[("MODE", "hybrid")]).expect_err("unknown mode");
        assert_eq!(variables(&err), ["MODE"]);
        assert!(
            err.problems[0]
                .message
                .contains("allowed values: local, cloud")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(&[
            ("MODE", "nope"),
            ("STIGMER_MAX_CONCURRENCY", "0"),
            ("STIGMER_LLM_PROVIDER", "anthropic"),
            ("STIGMER_LLM_TEMPERATURE", "hot"),
            ("STIGMER_BACKEND_ENDPOINT", "ftp://x:1"),
            ("LOG_LEVEL", "loud"),
            ("STIGMER_HTTP_ADDR", "nowhere"),
        ])
        .expect_err("many problems");
        let vars = variables(&err);
        for expected in [
            "MODE",
            "STIGMER_MAX_CONCURRENCY",
            "ANTHROPIC_API_KEY",
            "STIGMER_LLM_TEMPERATURE",
            "STIGMER_BACKEND_ENDPOINT",
            "LOG_LEVEL",
            "STIGMER_HTTP_ADDR",
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
        assert!(err.to_string().starts_with("7 configuration problem(s)"));
    }

    #[test]
    fn old_concurrency_name_is_accepted_and_new_name_wins() {
        let c = load(&[("TEMPORAL_MAX_CONCURRENCY", "4")]).expect("valid");
        assert_eq!(c.max_concurrency, 4);
        let c = load(&[
            ("TEMPORAL_MAX_CONCURRENCY", "4"),
            ("STIGMER_MAX_CONCURRENCY", "7"),
        ])
        .expect("valid");
        assert_eq!(c.max_concurrency, 7);
    }

    #[test]
    fn concurrency_out_of_range_and_garbage_are_refused() {
        let err = load(&[("STIGMER_MAX_CONCURRENCY", "5000")]).expect_err("too big");
        assert!(err.problems[0].message.contains("out of range"));
        let err = load(&[("TEMPORAL_MAX_CONCURRENCY", "ten")]).expect_err("not a number");
        assert_eq!(variables(&err), ["TEMPORAL_MAX_CONCURRENCY"]);
    }

    #[test]
    fn anthropic_key_sources_in_order() {
        let c = load(&[
            ("STIGMER_LLM_PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
        ])
        .expect("valid");
        assert_eq!(c.llm.key_source, KeySource::Variable("ANTHROPIC_API_KEY"));
        assert_eq!(c.llm.api_key.as_ref().map(|k| k.expose()), Some("sk-ant"));
        assert_eq!(c.llm.base_url, "https://api.anthropic.com");
        let c = load(&[
            ("STIGMER_LLM_PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("STIGMER_LLM_API_KEY", "generic"),
        ])
        .expect("valid");
        assert_eq!(c.llm.key_source, KeySource::Variable("STIGMER_LLM_API_KEY"));
    }

    #[test]
    fn openai_needs_its_key() {
        let err = load(&[("STIGMER_LLM_PROVIDER", "openai")]).expect_err("no key");
        assert_eq!(variables(&err), ["OPENAI_API_KEY"]);
    }

    #[test]
    fn unknown_provider_names_the_allowed_values() {
        let err = load(&[("STIGMER_LLM_PROVIDER", "gemini")]).expect_err("unknown");
        assert!(
            err.problems[0]
                .message
                .contains("anthropic, openai, ollama")
        );
    }

    #[test]
    fn base_url_override_wins_over_ollama_base_url() {
        let c = load(&[
            ("OLLAMA_BASE_URL", "http://gpu-box:11434/"),
            ("STIGMER_LLM_MODEL", "llama3"),
        ])
        .expect("valid");
        assert_eq!(c.llm.base_url, "http://gpu-box:11434");
        assert_eq!(c.llm.model, "llama3");
        let c = load(&[
            ("OLLAMA_BASE_URL", "http://gpu-box:11434"),
            ("STIGMER_LLM_BASE_URL", "http://127.0.0.1:9/v1"),
        ])
        .expect("valid");
        assert_eq!(c.llm.base_url, "http://127.0.0.1:9/v1");
        let err = load(&[("STIGMER_LLM_BASE_URL", "localhost:9")]).expect_err("no scheme");
        assert_eq!(variables(&err), ["STIGMER_LLM_BASE_URL"]);
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            normalize_endpoint("localhost:50051", "http").as_deref(),
            Ok("http://localhost:50051")
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:1/", "http").as_deref(),
            Ok("http://127.0.0.1:1")
        );
        assert!(normalize_endpoint("localhost", "http").is_err());
        assert!(normalize_endpoint("http://host:port", "http").is_err());
        assert!(normalize_endpoint("http://host:1/path", "http").is_err());
        let err = load(&[("STIGMER_BACKEND_ENDPOINT", "https://cp:443")]).expect_err("tls");
        assert!(err.problems[0].message.contains("plaintext"));
    }

    #[test]
    fn cloud_mode_reports_every_missing_setting() {
        let err = load(&[("MODE", "cloud"), ("ANTHROPIC_API_KEY", "k")]).expect_err("cloud");
        let vars = variables(&err);
        for expected in [
            "STIGMER_BACKEND_ENDPOINT",
            "STIGMER_API_KEY",
            "REDIS_HOST",
            "DAYTONA_API_KEY",
            "DAYTONA_DEV_TOOLS_SNAPSHOT_ID",
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
    }

    #[test]
    fn dotenv_fills_gaps_but_process_env_wins() {
        let env = Env::from_pairs([("STIGMER_MAX_CONCURRENCY", "3")]).with_dotenv([
            ("STIGMER_MAX_CONCURRENCY", "9"),
            ("SANDBOX_ROOT_DIR", "/tmp/s"),
        ]);
        let c = Config::from_env(&env).expect("valid");
        assert_eq!(c.max_concurrency, 3);
        assert_eq!(
            c.local().expect("local mode").sandbox_root,
            PathBuf::from("/tmp/s")
        );
    }

    fn write_dotenv(dir: &Path, text: &str) {
        std::fs::write(dir.join(".env"), text).expect("write .env");
    }

    fn process(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refusal(result: Result<Env, ConfigError>) -> String {
        let err = result.expect_err("the .env must be refused").to_string();
        assert!(err.contains("refusing to read"), "{err}");
        assert!(err.contains("sandbox root"), "{err}");
        assert!(err.contains("STIGMER_DOTENV=off"), "{err}");
        err
    }

    #[test]
    fn dotenv_in_the_working_directory_is_read_with_its_origin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_dotenv(
            tmp.path(),
            "STIGMER_LLM_BASE_URL=http://from-file:1\nSTIGMER_MAX_TURNS=7\n",
        );
        let env =
            Env::load_from(process(&[("STIGMER_MAX_TURNS", "9")]), tmp.path()).expect("loads");
        let file = std::fs::canonicalize(tmp.path().join(".env")).expect("canonical");
        assert_eq!(env.dotenv_state(), &DotEnvState::Loaded(file.clone()));
        assert_eq!(env.get("STIGMER_LLM_BASE_URL"), Some("http://from-file:1"));
        assert_eq!(
            env.origin("STIGMER_LLM_BASE_URL"),
            Origin::DotEnv(file.clone())
        );
        assert_eq!(
            env.get("STIGMER_MAX_TURNS"),
            Some("9"),
            "the environment wins"
        );
        assert_eq!(env.origin("STIGMER_MAX_TURNS"), Origin::Environment);
        assert_eq!(env.origin("STIGMER_LLM_MODEL"), Origin::Default);
        let config = Config::from_env(&env).expect("valid");
        assert_eq!(
            config.sources.describe(&["STIGMER_LLM_BASE_URL"]),
            format!(".env {}: STIGMER_LLM_BASE_URL", file.display())
        );
    }

    #[test]
    fn no_dotenv_is_fine_and_said() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let env = Env::load_from(process(&[]), tmp.path()).expect("loads");
        assert_eq!(
            env.dotenv_state(),
            &DotEnvState::Absent(tmp.path().join(".env"))
        );
    }

    #[test]
    fn dotenv_off_reads_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_dotenv(tmp.path(), "STIGMER_LLM_BASE_URL=http://attacker:1\n");
        for off in ["off", "OFF", "false", "0"] {
            let env =
                Env::load_from(process(&[("STIGMER_DOTENV", off)]), tmp.path()).expect("loads");
            assert_eq!(env.dotenv_state(), &DotEnvState::Disabled);
            assert_eq!(env.get("STIGMER_LLM_BASE_URL"), None);
        }
        let err = Env::load_from(process(&[("STIGMER_DOTENV", "maybe")]), tmp.path())
            .expect_err("not a switch");
        assert_eq!(variables(&err), ["STIGMER_DOTENV"]);
        // A .env cannot switch itself on or off: the switch is read from the environment.
        write_dotenv(tmp.path(), "STIGMER_DOTENV=maybe\nSTIGMER_MAX_TURNS=3\n");
        let env = Env::load_from(process(&[]), tmp.path()).expect("loads");
        assert_eq!(env.get("STIGMER_MAX_TURNS"), Some("3"));
    }

    /// A command writes into the sandbox root: a `.env` there (or a working directory there)
    /// is refused, whichever way the root is named.
    #[test]
    fn dotenv_inside_the_sandbox_root_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("workspace");
        let session = root.join("session-1");
        std::fs::create_dir_all(&session).expect("mkdir");
        write_dotenv(&session, "STIGMER_LLM_BASE_URL=http://attacker:1\n");
        let absolute = root.display().to_string();
        // Working directory inside the root, root named absolutely.
        refusal(Env::load_from(
            process(&[("SANDBOX_ROOT_DIR", &absolute)]),
            &session,
        ));
        // ... and relatively.
        refusal(Env::load_from(
            process(&[("SANDBOX_ROOT_DIR", "..")]),
            &session,
        ));
        // The working directory is the root itself.
        write_dotenv(&root, "X=1\n");
        refusal(Env::load_from(process(&[("SANDBOX_ROOT_DIR", ".")]), &root));
        // The default root is ./workspace: a .env in the working directory above it is fine.
        write_dotenv(tmp.path(), "X=1\n");
        Env::load_from(process(&[]), tmp.path()).expect("outside the root");
        // The file cannot move the root away from itself.
        write_dotenv(&session, "SANDBOX_ROOT_DIR=/somewhere/else\n");
        refusal(Env::load_from(
            process(&[("SANDBOX_ROOT_DIR", &absolute)]),
            &session,
        ));
        write_dotenv(&root, "SANDBOX_ROOT_DIR=.\n");
        refusal(Env::load_from(process(&[]), &root));
    }

    #[test]
    fn a_dotenv_symlink_into_the_sandbox_root_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let session = tmp.path().join("workspace").join("s");
        std::fs::create_dir_all(&session).expect("mkdir");
        write_dotenv(&session, "STIGMER_LLM_BASE_URL=http://attacker:1\n");
        std::os::unix::fs::symlink(session.join(".env"), tmp.path().join(".env")).expect("symlink");
        refusal(Env::load_from(process(&[]), tmp.path()));
    }

    #[test]
    fn blank_values_count_as_unset() {
        let c = load(&[("MODE", "  "), ("STIGMER_API_KEY", "")]).expect("valid");
        assert!(c.local().expect("local mode").api_key_is_local_default);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = load(&[
            ("STIGMER_API_KEY", "secret-backend-key"),
            ("STIGMER_LLM_PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant-secret"),
        ])
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-backend-key"));
        assert!(!shown.contains("sk-ant-secret"));
    }
}
