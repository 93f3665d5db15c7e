//! Every numeric variable of the runner against hostile and careless values: each is either
//! taken (a plain number within its documented range, README.md) or refused with a problem
//! naming the variable, never a panic and never a silent default.

use std::ops::RangeInclusive;
use std::time::Duration;

use proptest::prelude::*;
use stigmer_redis::RedisTarget;
use testkit::numbers::{boundaries, hostile_number};

use crate::config::{Config, ConfigError, Env};

/// A numeric variable: its documented range and where its value ends up.
struct Variable {
    name: &'static str,
    range: RangeInclusive<u64>,
    read: fn(&Config) -> u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn variables() -> Vec<Variable> {
    let v = |name, range, read| Variable { name, range, read };
    vec![
        v("STIGMER_MAX_CONCURRENCY", 1..=1024, |c| {
            c.max_concurrency as u64
        }),
        v("TEMPORAL_MAX_CONCURRENCY", 1..=1024, |c| {
            c.max_concurrency as u64
        }),
        v("STIGMER_DRAIN_TIMEOUT_SECS", 0..=86_400, |c| {
            c.drain_timeout.as_secs()
        }),
        v("STIGMER_HEARTBEAT_INTERVAL_MS", 50..=60_000, |c| {
            millis(c.heartbeat_interval)
        }),
        v("STIGMER_CLAIM_WAIT_MS", 0..=60_000, |c| {
            millis(c.claim_wait)
        }),
        v("STIGMER_STATUS_FLUSH_MS", 0..=10_000, |c| {
            millis(c.status_flush_interval)
        }),
        v("STIGMER_MAX_TURNS", 1..=10_000, |c| u64::from(c.max_turns)),
        v("STIGMER_MAX_REPEATED_TOOL_CALLS", 2..=100, |c| {
            u64::from(c.max_repeated_tool_calls)
        }),
        v("STIGMER_TOOL_TIMEOUT_SECS", 1..=86_400, |c| {
            c.tool_timeout.as_secs()
        }),
        v("STIGMER_TOOL_OUTPUT_LIMIT", 256..=16 * 1024 * 1024, |c| {
            c.tool_output_limit as u64
        }),
        v("STIGMER_LLM_MAX_TOKENS", 1..=1_000_000, |c| {
            u64::from(c.llm.max_tokens)
        }),
        v("STIGMER_LLM_TIMEOUT_SECS", 1..=3_600, |c| {
            c.llm.request_timeout.as_secs()
        }),
        v("STIGMER_LLM_MAX_ATTEMPTS", 1..=20, |c| {
            u64::from(c.llm.max_attempts)
        }),
        v("REDIS_PORT", 1..=65_535, |c| {
            match c.cloud().map(|cloud| &cloud.redis) {
                Some(RedisTarget::HostPort { port, .. }) => u64::from(*port),
                other => panic!("no Redis host and port: {other:?}"),
            }
        }),
    ]
}

/// A valid environment for `variable`: local mode, or cloud mode for the Redis port.
fn base_env(variable: &str) -> Vec<(&'static str, String)> {
    if variable != "REDIS_PORT" {
        return Vec::new();
    }
    vec![
        ("MODE", "cloud".into()),
        ("STIGMER_BACKEND_ENDPOINT", "api.example.com:443".into()),
        ("STIGMER_API_KEY", testkit::pki::unsigned_jwt("runner")),
        ("REDIS_HOST", "redis".into()),
        ("DAYTONA_API_KEY", "k".into()),
        ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "s".into()),
        ("ANTHROPIC_API_KEY", "k".into()),
    ]
}

fn load(variable: &'static str, raw: &str) -> Result<Config, ConfigError> {
    let mut pairs = base_env(variable);
    pairs.push((variable, raw.to_string()));
    Config::from_env(&Env::from_pairs(
        pairs.iter().map(|(k, v)| (*k, v.as_str())),
    ))
}

/// What the runner must do with `raw`: blank means unset (the default); otherwise the
/// trimmed text must be a decimal integer within the range.
fn check(variable: &Variable, raw: &str) -> Result<(), TestCaseError> {
    let trimmed = raw.trim();
    let expected = testkit::numbers::expected(trimmed, &variable.range);
    match load(variable.name, raw) {
        Ok(config) => {
            let value = (variable.read)(&config);
            prop_assert!(
                variable.range.contains(&value),
                "{} = {}",
                variable.name,
                value
            );
            if !trimmed.is_empty() {
                prop_assert_eq!(Some(value), expected, "{} {:?}", variable.name, raw);
            }
        }
        Err(err) => {
            prop_assert!(
                !trimmed.is_empty(),
                "{} {:?}: blank refused: {}",
                variable.name,
                raw,
                err
            );
            prop_assert_eq!(expected, None, "{} {:?}: {}", variable.name, raw, err);
            let problems: Vec<_> = err.problems.iter().map(|p| p.variable.as_str()).collect();
            prop_assert_eq!(problems, vec![variable.name], "{}", err);
            let message = &err.problems[0].message;
            prop_assert!(
                message.contains(&format!(
                    "from {} to {}",
                    variable.range.start(),
                    variable.range.end()
                )),
                "{message}"
            );
        }
    }
    Ok(())
}

/// The temperature is the one float: any number from 0 to 2.
fn check_temperature(raw: &str) -> Result<(), TestCaseError> {
    let trimmed = raw.trim();
    let env = Env::from_pairs([("STIGMER_LLM_TEMPERATURE", raw)]);
    match Config::from_env(&env) {
        Ok(config) => {
            let t = config.llm.temperature.unwrap_or(f32::NAN);
            prop_assert!((0.0..=2.0).contains(&t), "{t}");
            if !trimmed.is_empty() {
                prop_assert_eq!(trimmed.parse::<f32>().ok(), Some(t));
            }
        }
        Err(err) => {
            let valid = trimmed
                .parse::<f32>()
                .is_ok_and(|t| (0.0..=2.0).contains(&t));
            prop_assert!(!valid && !trimmed.is_empty(), "{raw:?}: {err}");
            prop_assert_eq!(&err.problems[0].variable, "STIGMER_LLM_TEMPERATURE");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn numeric_variables_take_exactly_their_documented_range(raw in hostile_number()) {
        for variable in variables() {
            check(&variable, &raw)?;
        }
        check_temperature(&raw)?;
    }
}

#[test]
fn numeric_variables_at_and_beyond_their_bounds() {
    for variable in variables() {
        for raw in boundaries(&variable.range) {
            if let Err(e) = check(&variable, &raw) {
                panic!("{e}");
            }
        }
    }
    for raw in ["0", "2", "2.0001", "-0.0001", "NaN", "inf", "1e-3"] {
        if let Err(e) = check_temperature(raw) {
            panic!("{e}");
        }
    }
}

#[test]
fn an_integer_too_large_for_its_type_is_out_of_range() {
    let err = load("STIGMER_MAX_TURNS", "99999999999999999999").expect_err("too large");
    assert_eq!(
        err.problems[0].message,
        "'99999999999999999999' is out of range; use a value from 1 to 10000"
    );
    let err = load("STIGMER_MAX_TURNS", "-3").expect_err("negative");
    assert!(err.problems[0].message.contains("out of range"), "{err}");
    let err = load("STIGMER_MAX_TURNS", "3 turns").expect_err("text");
    assert!(err.problems[0].message.contains("not a number"), "{err}");
}
