//! Runner configuration from the environment, with the Stigmer runner's variable names.
//!
//! Loading is a pure function over an [`Env`] (process environment layered over an optional
//! `.env` file) so that every rule is unit-tested without touching the process environment.
//! Validation collects every problem before failing, so a user fixes them in one go.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cloud_config::{self, CloudConfig};
use crate::llm::Provider;
use stigmer_contract::{Secret, env as vars};

/// Where configuration values come from: the process environment first, then `.env`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    process: HashMap<String, String>,
    dotenv: HashMap<String, String>,
    dotenv_state: DotEnvState,
}

/// The variable that turns the `.env` lookup off (`off`) or on (`on`, the default). Read from
/// the process environment only: a `.env` file cannot switch itself on.
pub const DOTENV_SWITCH: &str = vars::DOTENV;
const DEFAULT_SANDBOX_ROOT: &str = "./workspace";

/// What became of the `.env` lookup, for the banner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DotEnvState {
    /// `STIGMER_DOTENV=off` (as `stigmer local start` runs the runner).
    #[default]
    Disabled,
    /// No `.env` at this path.
    Absent(PathBuf),
    /// Read from this (canonical) path.
    Loaded(PathBuf),
}

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Environment,
    DotEnv(PathBuf),
    Default,
}

impl Env {
    /// The real process environment plus `./.env` when present and allowed (never written
    /// back into the process environment, so tool commands cannot inherit it).
    ///
    /// The runner must never take configuration from a file a tool command could have
    /// written: a `.env` redirecting `STIGMER_LLM_BASE_URL` would send the LLM key to an
    /// attacker at the next start. So a `.env` inside the sandbox root (where commands
    /// write), or in a working directory inside it, is refused with an error rather than
    /// read, and `STIGMER_DOTENV=off` turns the lookup off altogether.
    pub fn load() -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().map_err(|e| {
            ConfigError::single(
                "(.env)",
                format!("cannot tell the working directory to look for .env in: {e}"),
            )
        })?;
        Self::load_from(std::env::vars().collect(), &cwd)
    }

    /// [`Env::load`] with the process environment `process`, looking for `.env` in `dir`
    /// (relative settings such as `SANDBOX_ROOT_DIR` are taken relative to `dir`, the
    /// runner's working directory).
    pub fn load_from(process: HashMap<String, String>, dir: &Path) -> Result<Self, ConfigError> {
        let mut env = Self {
            process,
            dotenv: HashMap::new(),
            dotenv_state: DotEnvState::Disabled,
        };
        let switch = env
            .process
            .get(DOTENV_SWITCH)
            .map(|v| v.trim().to_ascii_lowercase());
        match switch.as_deref() {
            None | Some("" | "on" | "true" | "1") => {}
            Some("off" | "false" | "0") => return Ok(env),
            Some(_) => {
                return Err(ConfigError::single(
                    DOTENV_SWITCH,
                    format!(
                        "'{}' is not a switch; use on (read ./.env, the default) or off",
                        env.process.get(DOTENV_SWITCH).map_or("", |v| v.trim())
                    ),
                ));
            }
        }
        let path = dir.join(".env");
        if matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            env.dotenv_state = DotEnvState::Absent(path);
            return Ok(env);
        }
        let unreadable = |e: &dyn fmt::Display| {
            ConfigError::single("(.env)", format!("cannot read {}: {e}", path.display()))
        };
        // Canonical: a symlink is judged (and read) by what it points to.
        let file = std::fs::canonicalize(&path).map_err(|e| unreadable(&e))?;
        let dotenv = dotenvy::from_path_iter(&file)
            .map_err(|e| unreadable(&e))?
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| {
                ConfigError::single("(.env)", format!("cannot parse {}: {e}", file.display()))
            })?;
        // The file must not move the sandbox root away from itself: it is checked against the
        // root the environment (or the default) names and against the one it names.
        let blank = |v: &&String| !v.trim().is_empty();
        let roots = [
            Some(
                env.process
                    .get(vars::SANDBOX_ROOT_DIR)
                    .filter(blank)
                    .map_or(DEFAULT_SANDBOX_ROOT, |v| v.trim()),
            ),
            dotenv
                .get(vars::SANDBOX_ROOT_DIR)
                .filter(blank)
                .map(|v| v.trim()),
        ];
        let folder = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        // A root that does not exist yet holds no file, so nothing there can be refused.
        for root in roots
            .into_iter()
            .flatten()
            .filter_map(|root| std::fs::canonicalize(dir.join(root)).ok())
        {
            if file.starts_with(&root) || folder.starts_with(&root) {
                return Err(ConfigError::single(
                    "(.env)",
                    format!(
                        "refusing to read {}: it lies inside the sandbox root {} \
                         (SANDBOX_ROOT_DIR), where tool commands write files; move it out of \
                         there, or set {DOTENV_SWITCH}=off and pass settings in the environment",
                        path.display(),
                        root.display()
                    ),
                ));
            }
        }
        env.dotenv = dotenv;
        env.dotenv_state = DotEnvState::Loaded(file);
        Ok(env)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            process: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dotenv: HashMap::new(),
            dotenv_state: DotEnvState::Disabled,
        }
    }

    pub fn with_dotenv<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.dotenv = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.dotenv_state = DotEnvState::Loaded(PathBuf::from(".env"));
        self
    }

    /// A set, non-blank value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw(key).map(|(value, _)| value)
    }

    /// Where [`Env::get`]'s value for `key` comes from; `Default` when it is unset.
    pub fn origin(&self, key: &str) -> Origin {
        match self.raw(key) {
            None => Origin::Default,
            Some((_, false)) => Origin::Environment,
            Some((_, true)) => match &self.dotenv_state {
                DotEnvState::Loaded(path) => Origin::DotEnv(path.clone()),
                _ => Origin::DotEnv(PathBuf::from(".env")),
            },
        }
    }

    /// The value and whether it came from `.env`. A variable set in the process environment
    /// wins even when blank (which then means unset).
    fn raw(&self, key: &str) -> Option<(&str, bool)> {
        let (value, from_file) = match self.process.get(key) {
            Some(v) => (v, false),
            None => (self.dotenv.get(key)?, true),
        };
        let value = value.trim();
        (!value.is_empty()).then_some((value, from_file))
    }

    pub fn dotenv_state(&self) -> &DotEnvState {
        &self.dotenv_state
    }
}

/// Where each setting came from (names only, never values), kept in [`Config`] for the
/// banner.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    dotenv: DotEnvState,
    origins: HashMap<String, Origin>,
}

impl Sources {
    fn of(env: &Env) -> Self {
        let origins = env
            .process
            .keys()
            .chain(env.dotenv.keys())
            .filter_map(|key| match env.origin(key) {
                Origin::Default => None,
                origin => Some((key.clone(), origin)),
            })
            .collect();
        Self {
            dotenv: env.dotenv_state.clone(),
            origins,
        }
    }

    pub fn dotenv(&self) -> &DotEnvState {
        &self.dotenv
    }

    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Where the first set variable of `keys` (in the order the setting reads them) came
    /// from: `environment: KEY`, `.env /path/.env: KEY`, or `default`.
    pub fn describe(&self, keys: &[&str]) -> String {
        keys.iter()
            .find_map(|key| match self.origin(key) {
                Origin::Default => None,
                Origin::Environment => Some(format!("environment: {key}")),
                Origin::DotEnv(path) => Some(format!(".env {}: {key}", path.display())),
            })
            .unwrap_or_else(|| "default".to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Cloud,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Local => "LOCAL",
            Mode::Cloud => "CLOUD",
        }
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

/// `Debug` is derived: the keys are [`Secret`]s, shown redacted.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// `http://host:port`: the control plane.
    pub backend_endpoint: String,
    pub api_key: Secret,
    /// True when `STIGMER_API_KEY` was not set and the local default is used.
    pub api_key_is_local_default: bool,
    pub runner_id: String,
    pub sandbox_root: PathBuf,
    /// How local-mode commands are confined (`STIGMER_SANDBOX*`).
    pub sandbox: crate::sandbox::confine::SandboxSettings,
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
    /// Set in cloud mode only.
    pub cloud: Option<CloudConfig>,
    /// Where each setting came from, for the banner.
    pub sources: Sources,
}

/// One configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub message: String,
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn single(variable: &str, message: String) -> Self {
        Self {
            problems: vec![Problem {
                variable: variable.to_string(),
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration problem(s)", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.variable, p.message)?;
        }
        Ok(())
    }
}

pub const DEFAULT_LOCAL_ENDPOINT: &str = "http://localhost:50051";
pub const DEFAULT_OLLAMA_BASE_URL: &str = "http://localhost:11434";
const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Collects problems while reading values, so that all of them are reported at once.
pub(crate) struct Reader<'a> {
    env: &'a Env,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub(crate) fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable: variable.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn string(&self, key: &str) -> Option<String> {
        self.env.get(key).map(str::to_string)
    }

    /// A number within bounds; `default` when unset.
    pub(crate) fn number<T>(&mut self, keys: &[&str], default: T, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some((key, raw)) = keys
            .iter()
            .find_map(|k| self.env.get(k).map(|v| (*k, v.to_string())))
        else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            Ok(_) => {
                self.problem(
                    key,
                    format!("'{raw}' is out of range; use a value from {min} to {max}"),
                );
                default
            }
            // An integer too large (or negative) for the type is out of range, not "not a
            // number".
            Err(_) if is_integer(&raw) => {
                self.problem(
                    key,
                    format!("'{raw}' is out of range; use a value from {min} to {max}"),
                );
                default
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("'{raw}' is not a number; use a value from {min} to {max}"),
                );
                default
            }
        }
    }

    fn millis(&mut self, key: &str, default_ms: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number(&[key], default_ms, min, max))
    }

    fn secs(&mut self, key: &str, default_s: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.number(&[key], default_s, min, max))
    }
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Config, ConfigError> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let mode = read_mode(&mut r);
        let (backend_endpoint, api_key, api_key_is_local_default, cloud) =
            read_backend(&mut r, mode);
        let llm = read_llm(&mut r, mode);
        let config = Config {
            mode,
            backend_endpoint,
            api_key: Secret::new(api_key),
            api_key_is_local_default,
            runner_id: r
                .string(vars::RUNNER_ID)
                .or_else(|| r.string(vars::POD_NAME))
                .unwrap_or_else(default_runner_id),
            sandbox_root: PathBuf::from(
                r.string(vars::SANDBOX_ROOT_DIR)
                    .unwrap_or_else(|| DEFAULT_SANDBOX_ROOT.into()),
            ),
            sandbox: crate::sandbox::confine::read_settings(&mut r),
            max_concurrency: r.number(
                &[vars::MAX_CONCURRENCY, vars::MAX_CONCURRENCY_OLD],
                10,
                1,
                1024,
            ),
            drain_timeout: r.secs(vars::DRAIN_TIMEOUT_SECS, 30, 0, 86_400),
            heartbeat_interval: r.millis(vars::HEARTBEAT_INTERVAL_MS, 3_000, 50, 60_000),
            claim_wait: r.millis(vars::CLAIM_WAIT_MS, 20_000, 0, 60_000),
            status_flush_interval: r.millis(vars::STATUS_FLUSH_MS, 250, 0, 10_000),
            max_turns: r.number(&[vars::MAX_TURNS], 50, 1, 10_000),
            max_repeated_tool_calls: r.number(&[vars::MAX_REPEATED_TOOL_CALLS], 3, 2, 100),
            tool_timeout: r.secs(vars::TOOL_TIMEOUT_SECS, 120, 1, 86_400),
            tool_output_limit: r.number(
                &[vars::TOOL_OUTPUT_LIMIT],
                32 * 1024,
                256,
                16 * 1024 * 1024,
            ),
            http_addr: read_http_addr(&mut r),
            log_level: read_log_level(&mut r),
            log_json: matches!(r.string(vars::LOG_FORMAT).as_deref(), Some("json")),
            llm,
            cloud,
            sources: Sources::of(env),
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: r.problems,
            })
        }
    }

    pub fn sandbox_root_display(&self) -> String {
        absolute(&self.sandbox_root).display().to_string()
    }
}

fn is_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn read_mode(r: &mut Reader<'_>) -> Mode {
    match r
        .string(vars::MODE)
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("local") => Mode::Local,
        Some("cloud") => Mode::Cloud,
        Some(other) => {
            r.problem(
                vars::MODE,
                format!("unknown mode '{other}'; allowed values: local, cloud"),
            );
            Mode::Local
        }
    }
}

/// Endpoint, API key, whether the key is the local default, and the cloud settings.
fn read_backend(r: &mut Reader<'_>, mode: Mode) -> (String, String, bool, Option<CloudConfig>) {
    let default_scheme = match mode {
        Mode::Local => "http",
        Mode::Cloud => "https",
    };
    let raw = r.string(vars::BACKEND_ENDPOINT);
    let endpoint = match &raw {
        None => DEFAULT_LOCAL_ENDPOINT.to_string(),
        Some(raw) => match normalize_endpoint(raw, default_scheme) {
            Ok(e) if mode == Mode::Local && e.starts_with("https://") => {
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
    if mode == Mode::Cloud {
        cloud_config::check_endpoint(r, &endpoint, raw.is_some());
        return match cloud_config::read(r) {
            Some((cloud, token)) => (endpoint, token, false, Some(cloud)),
            None => (endpoint, String::new(), false, None),
        };
    }
    match r.string(vars::API_KEY) {
        Some(key) => (endpoint, key, false, None),
        None => (
            endpoint,
            stigmer_proto::LOCAL_API_KEY.to_string(),
            true,
            None,
        ),
    }
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

fn read_llm(r: &mut Reader<'_>, mode: Mode) -> LlmConfig {
    let default_provider = match mode {
        Mode::Local => Provider::Ollama,
        Mode::Cloud => Provider::Anthropic,
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

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    fn variables(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.variable.as_str()).collect()
    }

    #[test]
    fn defaults_to_local_mode_with_local_endpoint_and_key() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.mode, Mode::Local);
        assert_eq!(c.backend_endpoint, "http://localhost:50051");
        assert_eq!(c.api_key.expose(), "dummy-local-key");
        assert!(c.api_key_is_local_default);
        assert_eq!(c.sandbox_root, PathBuf::from("./workspace"));
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
        assert_eq!(c.llm.api_key.as_ref().map(Secret::expose), Some("sk-ant"));
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
        assert_eq!(c.sandbox_root, PathBuf::from("/tmp/s"));
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
        assert_eq!(c.mode, Mode::Local);
        assert!(c.api_key_is_local_default);
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
