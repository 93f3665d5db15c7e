//! The start-up banner and the configuration error banner. Secrets are never printed: only
//! whether one is set and which variable it came from.

use std::fmt::Write as _;

use crate::config::{Config, ConfigError, KeySource, Mode};

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
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<15} {v}");
    };
    row("runner id", config.runner_id.clone());
    row(
        "control plane",
        format!("{} (plaintext gRPC)", config.backend_endpoint),
    );
    row(
        "api key",
        if config.api_key_is_local_default {
            "local default".to_string()
        } else {
            "set (STIGMER_API_KEY)".to_string()
        },
    );
    row(
        "sandbox",
        format!("filesystem under {}", config.sandbox_root_display()),
    );
    row(
        "concurrency",
        format!(
            "{} executions, drain timeout {}s",
            config.max_concurrency,
            config.drain_timeout.as_secs()
        ),
    );
    let llm = &config.llm;
    row(
        "llm",
        format!(
            "{} / {} at {}",
            llm.provider.as_str(),
            llm.model,
            llm.base_url
        ),
    );
    row(
        "llm limits",
        format!(
            "max_tokens {}, temperature {}",
            llm.max_tokens,
            llm.temperature
                .map_or_else(|| "provider default".to_string(), |t| t.to_string())
        ),
    );
    row(
        "llm api key",
        match &llm.key_source {
            KeySource::Variable(var) => format!("set (from {var})"),
            KeySource::NotNeeded => format!("not needed for {}", llm.provider.as_str()),
        },
    );
    row(
        "redis",
        match config.mode {
            Mode::Local => "not used in local mode".to_string(),
            Mode::Cloud => "cloud".to_string(),
        },
    );
    row(
        "http",
        format!("{} (/healthz /readyz /metrics)", config.http_addr),
    );
    let _ = write!(out, "{line}");
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
        assert!(text.contains("http://localhost:50051"));
        assert!(text.contains("7 executions"));
        assert!(text.contains("anthropic / claude-test"));
        assert!(text.contains("set (from ANTHROPIC_API_KEY)"));
        assert!(text.contains("set (STIGMER_API_KEY)"));
        assert!(text.contains("not used in local mode"));
        assert!(!text.contains("backend-secret-123"));
        assert!(!text.contains("sk-ant-very-secret"));
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
