//! The start-up banner and the configuration error banner. Secrets are never printed: only
//! whether one is set and which variable it came from.

use std::fmt::Write as _;

use stigmer_contract::env as vars;

use crate::config::cloud::{CloudConfig, TokenOrigin};
use crate::config::{Config, ConfigError, DOTENV_SWITCH, DotEnvState, KeySource, Mode};
use crate::llm::Provider;
use crate::sandbox::confine::{Layer, SandboxMode, SandboxStatus};

/// The settings the runner starts with, each followed by where it came from
/// (`[environment: VAR]`, `[.env /path/.env: VAR]` or `[default]`), so that a setting
/// planted in a file cannot pass unnoticed.
pub fn startup(config: &Config) -> String {
    let mut out = String::new();
    let line = "=".repeat(60);
    let _ = writeln!(out, "{line}");
    let _ = writeln!(
        out,
        "Stigmer Agent Runner - {} Mode (v{})",
        config.mode.label(),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "{line}");
    let sources = &config.sources;
    let mut row = |k: &str, v: String, keys: &[&str]| {
        if keys.is_empty() {
            let _ = writeln!(out, "  {k:<15} {v}");
        } else {
            let _ = writeln!(out, "  {k:<15} {v}   [{}]", sources.describe(keys));
        }
    };
    row(
        "config file",
        match sources.dotenv() {
            DotEnvState::Loaded(path) => format!(".env {} (the environment wins)", path.display()),
            DotEnvState::Absent(path) => format!("none (no {})", path.display()),
            DotEnvState::Disabled => format!("none ({DOTENV_SWITCH}=off)"),
        },
        &[],
    );
    row(
        "runner id",
        config.runner_id.clone(),
        &[vars::RUNNER_ID, vars::POD_NAME],
    );
    let transport = if config.backend_endpoint.starts_with("https://") {
        "TLS gRPC"
    } else {
        "plaintext gRPC"
    };
    row(
        "control plane",
        format!("{} ({transport})", config.backend_endpoint),
        &[vars::BACKEND_ENDPOINT],
    );
    match &config.mode {
        Mode::Local(local) => {
            row(
                "api key",
                if local.api_key_is_local_default {
                    "local default".to_string()
                } else {
                    "set".to_string()
                },
                &[vars::API_KEY],
            );
            row(
                "sandbox",
                format!("filesystem under {}", local.sandbox_root_display()),
                &[vars::SANDBOX_ROOT_DIR],
            );
        }
        Mode::Cloud(cloud) => cloud_rows(&mut row, cloud),
    }
    row(
        "concurrency",
        format!("{} executions", config.max_concurrency),
        &[vars::MAX_CONCURRENCY, vars::MAX_CONCURRENCY_OLD],
    );
    row(
        "drain timeout",
        format!("{}s", config.drain_timeout.as_secs()),
        &[vars::DRAIN_TIMEOUT_SECS],
    );
    let llm = &config.llm;
    row(
        "llm provider",
        llm.provider.as_str().to_string(),
        &[vars::LLM_PROVIDER],
    );
    row("llm model", llm.model.clone(), &[vars::LLM_MODEL]);
    // The address the LLM key is sent to.
    row(
        "llm endpoint",
        llm.base_url.clone(),
        match llm.provider {
            Provider::Ollama => &[vars::LLM_BASE_URL, vars::OLLAMA_BASE_URL][..],
            _ => &[vars::LLM_BASE_URL][..],
        },
    );
    row(
        "llm max tokens",
        llm.max_tokens.to_string(),
        &[vars::LLM_MAX_TOKENS],
    );
    row(
        "llm temperature",
        llm.temperature
            .map_or_else(|| "provider default".to_string(), |t| t.to_string()),
        &[vars::LLM_TEMPERATURE],
    );
    match &llm.key_source {
        KeySource::Variable(var) => row("llm api key", "set".to_string(), &[var]),
        KeySource::NotNeeded => row(
            "llm api key",
            format!("not needed for {}", llm.provider.as_str()),
            &[],
        ),
    }
    match &config.mode {
        Mode::Cloud(cloud) => row(
            "redis",
            format!(
                "{} ({}, {})",
                cloud.redis.display_address(),
                cloud.redis.password_state(),
                match (cloud.redis.is_tls(), &cloud.redis_ca) {
                    (false, _) => "plaintext".to_owned(),
                    (true, None) => "TLS, system CAs".to_owned(),
                    (true, Some((file, _))) => format!("TLS, CAs of {}", file.display()),
                }
            ),
            &[vars::REDIS_URL, vars::REDIS_HOST],
        ),
        Mode::Local(_) => row("redis", "not used in local mode".to_string(), &[]),
    }
    row(
        "http",
        format!("{} (/healthz /readyz /metrics)", config.http_addr),
        &[vars::HTTP_ADDR],
    );
    let _ = write!(out, "{line}");
    out
}

fn cloud_rows(row: &mut impl FnMut(&str, String, &[&str]), cloud: &CloudConfig) {
    match &cloud.token {
        TokenOrigin::Env(_) => row("api key", "JWT set".to_string(), &[vars::API_KEY]),
        TokenOrigin::File(path) => row(
            "api key",
            format!("JWT set (file {}, re-read on change)", path.display()),
            &[vars::API_KEY_FILE],
        ),
    }
    row(
        "jwt checks",
        format!(
            "{}; expires {}",
            cloud.jwt_checks_description(),
            cloud.token_expires_at.as_deref().unwrap_or("never")
        ),
        &[],
    );
    if let Some(ca) = &cloud.ca_file {
        row("tls ca", ca.display().to_string(), &[vars::BACKEND_CA_FILE]);
    }
    row(
        "sandbox",
        format!(
            "Daytona at {} (snapshot {}, key set)",
            cloud.daytona.api_url, cloud.daytona.snapshot
        ),
        &[vars::DAYTONA_API_URL],
    );
}

/// What the command sandbox enforces on this machine, printed once the start-up probe ran.
/// `off` is a warning, printed on every start.
pub fn sandbox(status: &SandboxStatus) -> String {
    if status.mode == SandboxMode::Off {
        return "WARNING: STIGMER_SANDBOX=off: tool commands run unconfined, as this user, with \
                access to everything it can read, write and reach (including this runner)"
            .to_string();
    }
    let enforced: Vec<String> = status
        .enforced
        .iter()
        .map(|layer| match layer {
            Layer::Landlock => format!("landlock (ABI {})", status.landlock_abi),
            other => other.to_string(),
        })
        .collect();
    let mut out = format!(
        "  {:<15} {} mode; enforced: {}",
        "sandbox",
        status.mode.as_str(),
        if enforced.is_empty() {
            "nothing".to_string()
        } else {
            enforced.join(", ")
        }
    );
    for missing in &status.missing {
        let _ = write!(
            out,
            "\n  {:<15} missing {}: {}",
            "", missing.layer, missing.reason
        );
    }
    if status.enforced.is_empty() {
        out.push_str(
            "\nWARNING: no sandbox layer works on this machine: tool commands run unconfined",
        );
    }
    out
}

pub fn config_error(err: &ConfigError) -> String {
    let mut out = String::new();
    let line = "!".repeat(60);
    let _ = writeln!(out, "{line}");
    let _ = writeln!(
        out,
        "Stigmer Agent Runner - configuration error ({} problem(s))",
        err.problems.len()
    );
    let _ = writeln!(out, "{line}");
    for p in &err.problems {
        let _ = writeln!(out, "  {}: {}", p.variable, p.message);
    }
    let _ = writeln!(out, "{line}");
    let _ = write!(
        out,
        "Fix the variables above (environment or .env) and start again."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn banner_shows_settings_and_never_secrets() {
        let env = Env::from_pairs([
            ("STIGMER_API_KEY", "backend-secret-123"),
            ("STIGMER_LLM_PROVIDER", "anthropic"),
            ("ANTHROPIC_API_KEY", "sk-ant-very-secret"),
            ("STIGMER_MAX_CONCURRENCY", "7"),
            ("STIGMER_LLM_MODEL", "claude-test"),
        ]);
        let config = Config::from_env(&env).expect("valid");
        let text = startup(&config);
        assert!(text.contains("LOCAL Mode"));
        assert!(text.contains("http://localhost:50051 (plaintext gRPC)   [default]"));
        assert!(text.contains("7 executions   [environment: STIGMER_MAX_CONCURRENCY]"));
        assert!(text.contains("llm provider    anthropic   [environment: STIGMER_LLM_PROVIDER]"));
        assert!(text.contains("llm model       claude-test   [environment: STIGMER_LLM_MODEL]"));
        assert!(
            text.contains("llm endpoint    https://api.anthropic.com   [default]"),
            "{text}"
        );
        assert!(text.contains("llm api key     set   [environment: ANTHROPIC_API_KEY]"));
        assert!(text.contains("api key         set   [environment: STIGMER_API_KEY]"));
        assert!(text.contains("not used in local mode"));
        assert!(text.contains("config file     none (STIGMER_DOTENV=off)"));
        assert!(!text.contains("backend-secret-123"));
        assert!(!text.contains("sk-ant-very-secret"));
    }

    fn test_jwt() -> String {
        testkit::pki::unsigned_jwt("runner")
    }

    #[test]
    fn cloud_banner_redacts_jwt_redis_and_daytona_secrets() {
        let jwt = test_jwt();
        let env = Env::from_pairs([
            ("MODE", "cloud"),
            ("STIGMER_BACKEND_ENDPOINT", "api.example.com:443"),
            ("STIGMER_API_KEY", jwt.as_str()),
            ("STIGMER_JWT_AUDIENCE", "runners"),
            ("REDIS_URL", "redis://:hunter2@redis.internal:6380/0"),
            ("DAYTONA_API_KEY", "dtn-secret"),
            ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "snap-1"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
        ]);
        let config = Config::from_env(&env).expect("valid cloud config");
        let text = startup(&config);
        assert!(text.contains("CLOUD Mode"));
        assert!(text.contains("https://api.example.com:443 (TLS gRPC)"));
        assert!(text.contains("JWT set   [environment: STIGMER_API_KEY]"));
        assert!(text.contains("structure, exp, nbf, aud"));
        assert!(text.contains("redis.internal:6380 (password set, plaintext)"));
        assert!(text.contains("Daytona at https://app.daytona.io/api (snapshot snap-1"));
        for secret in [jwt.as_str(), "hunter2", "dtn-secret", "sk-ant-x"] {
            assert!(!text.contains(secret), "banner shows a secret");
        }
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn cloud_refuses_plaintext_and_bad_tokens() {
        let env = Env::from_pairs([
            ("MODE", "cloud"),
            ("STIGMER_BACKEND_ENDPOINT", "http://api:80"),
            ("STIGMER_API_KEY", "not-a-jwt"),
            ("REDIS_HOST", "redis"),
            ("DAYTONA_API_KEY", "k"),
            ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "s"),
            ("ANTHROPIC_API_KEY", "k"),
        ]);
        let err = Config::from_env(&env).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("STIGMER_BACKEND_ENDPOINT: 'http://api:80' is plaintext"),
            "{text}"
        );
        assert!(text.contains("STIGMER_API_KEY: not a valid JWT"), "{text}");
        assert!(!text.contains("not-a-jwt"), "the token was echoed: {text}");
    }

    /// Each setting says where it came from, so a value planted in a `.env` shows.
    #[test]
    fn banner_names_the_origin_of_each_setting() {
        let env = Env::from_pairs([
            ("STIGMER_LLM_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "sk-x"),
            ("STIGMER_DRAIN_TIMEOUT_SECS", "5"),
        ])
        .with_dotenv([
            ("STIGMER_LLM_BASE_URL", "http://elsewhere:9/v1"),
            ("STIGMER_DRAIN_TIMEOUT_SECS", "99"),
        ]);
        let text = startup(&Config::from_env(&env).expect("valid"));
        assert!(
            text.contains(
                "llm endpoint    http://elsewhere:9/v1   [.env .env: STIGMER_LLM_BASE_URL]"
            ),
            "{text}"
        );
        assert!(
            text.contains("drain timeout   5s   [environment: STIGMER_DRAIN_TIMEOUT_SECS]"),
            "{text}"
        );
        assert!(text.contains("llm max tokens  8192   [default]"), "{text}");
        assert!(
            text.contains("config file     .env .env (the environment wins)"),
            "{text}"
        );
        // Ollama's address may come from OLLAMA_BASE_URL.
        let env = Env::from_pairs([("OLLAMA_BASE_URL", "http://gpu:11434")]);
        let text = startup(&Config::from_env(&env).expect("valid"));
        assert!(
            text.contains("llm endpoint    http://gpu:11434   [environment: OLLAMA_BASE_URL]"),
            "{text}"
        );
    }

    #[test]
    fn error_banner_lists_every_problem() {
        let env = Env::from_pairs([("MODE", "x"), ("STIGMER_MAX_CONCURRENCY", "-1")]);
        let err = Config::from_env(&env).expect_err("invalid");
        let text = config_error(&err);
        assert!(text.contains("2 problem(s)"));
        assert!(text.contains("MODE: unknown mode 'x'"));
        assert!(text.contains("STIGMER_MAX_CONCURRENCY:"));
    }
}
