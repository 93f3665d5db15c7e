//! Cloud-mode settings: the TLS backend, the JWT credential, Redis and Daytona. Read only when
//! `MODE=cloud`; every missing or malformed value is a start-up problem reported with the rest,
//! not a failure at the first execution.

use std::path::PathBuf;
use std::time::Duration;
use stigmer_contract::Secret;

use stigmer_auth::jwt::TokenInspection;
use stigmer_contract::env as vars;

use super::env::Reader;
pub use crate::redis::RedisTarget;

/// Leeway for `exp`/`nbf` at start-up, for clock skew between machines.
const JWT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_DAYTONA_API_URL: &str = "https://app.daytona.io/api";

/// Where the runner's JWT comes from.
/// `Debug` is derived: the token is a [`Secret`], shown redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `STIGMER_API_KEY`.
    Env(Secret),
    /// `STIGMER_API_KEY_FILE`, re-read when it changes (a rotated Kubernetes Secret).
    File(PathBuf),
}

/// Signature and claim checks beyond structure, exp and nbf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtChecks {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub public_key_file: Option<PathBuf>,
}

/// `Debug` is derived: the key is a [`Secret`], shown redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaytonaConfig {
    pub api_url: String,
    pub api_key: Secret,
    pub snapshot: String,
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub token: TokenOrigin,
    /// When the token read at start-up expires, for the banner.
    pub token_expires_at: Option<String>,
    pub jwt: JwtChecks,
    pub ca_file: Option<PathBuf>,
    pub redis: RedisTarget,
    /// REDIS_CA_FILE: the file and its PEM, checked at start-up.
    pub redis_ca: Option<(PathBuf, Vec<u8>)>,
    pub daytona: DaytonaConfig,
}

impl CloudConfig {
    /// What is checked about the JWT, for the banner.
    pub fn jwt_checks_description(&self) -> String {
        let mut checks = vec!["structure", "exp", "nbf"];
        if self.jwt.issuer.is_some() {
            checks.push("iss");
        }
        if self.jwt.audience.is_some() {
            checks.push("aud");
        }
        let mut text = checks.join(", ");
        if let Some(url) = &self.jwt.jwks_url {
            text.push_str(&format!(", signature (JWKS {url})"));
        } else if let Some(file) = &self.jwt.public_key_file {
            text.push_str(&format!(", signature (public key {})", file.display()));
        }
        text
    }
}

/// The cloud settings (None when one is missing: a problem says which).
pub(crate) fn read(r: &mut Reader<'_>) -> Option<CloudConfig> {
    let token = read_token(r);
    let jwt = JwtChecks {
        issuer: r.string(vars::JWT_ISSUER),
        audience: r.string(vars::JWT_AUDIENCE),
        jwks_url: r.string(vars::JWT_JWKS_URL),
        public_key_file: r.string(vars::JWT_PUBLIC_KEY_FILE).map(PathBuf::from),
    };
    if jwt.jwks_url.is_some() && jwt.public_key_file.is_some() {
        r.problem(
            vars::JWT_JWKS_URL,
            "set either STIGMER_JWT_JWKS_URL or STIGMER_JWT_PUBLIC_KEY_FILE, not both",
        );
    }
    if let Some(file) = &jwt.public_key_file
        && !file.is_file()
    {
        r.problem(
            vars::JWT_PUBLIC_KEY_FILE,
            format!("{} does not exist or is not a file", file.display()),
        );
    }
    let ca_file = r.string(vars::BACKEND_CA_FILE).map(PathBuf::from);
    if let Some(file) = &ca_file
        && !file.is_file()
    {
        r.problem(
            vars::BACKEND_CA_FILE,
            format!("{} does not exist or is not a file", file.display()),
        );
    }
    let redis = read_redis(r);
    let redis_ca = read_redis_ca(r, redis.as_ref());
    let daytona = read_daytona(r);
    let (token, expires) = token?;
    let config = CloudConfig {
        token,
        token_expires_at: expires,
        jwt,
        ca_file,
        redis: redis?,
        redis_ca,
        daytona: daytona?,
    };
    Some(config)
}

/// The backend endpoint in cloud mode: TLS unless plaintext is explicitly allowed.
pub(crate) fn check_endpoint(r: &mut Reader<'_>, endpoint: &str, explicit: bool) {
    if !explicit {
        r.problem(
            vars::BACKEND_ENDPOINT,
            "cloud mode needs the control plane's address, e.g. https://api.stigmer.ai:443",
        );
        return;
    }
    let insecure = matches!(
        r.string(vars::BACKEND_INSECURE).as_deref(),
        Some("true" | "1" | "yes")
    );
    if endpoint.starts_with("http://") && !insecure {
        r.problem(
            vars::BACKEND_ENDPOINT,
            format!(
                "'{endpoint}' is plaintext; cloud mode uses TLS (https://), or set \
                 STIGMER_BACKEND_INSECURE=true to allow plaintext on a trusted network"
            ),
        );
    }
}

/// Where the JWT comes from and when it expires (checked now: structure, exp, nbf).
fn read_token(r: &mut Reader<'_>) -> Option<(TokenOrigin, Option<String>)> {
    let (origin, token, variable) = match (r.string(vars::API_KEY), r.string(vars::API_KEY_FILE)) {
        (Some(_), Some(_)) => {
            r.problem(
                vars::API_KEY,
                "set either STIGMER_API_KEY or STIGMER_API_KEY_FILE, not both",
            );
            return None;
        }
        (None, None) => {
            r.problem(
                vars::API_KEY,
                "cloud mode needs a JWT: set STIGMER_API_KEY, or STIGMER_API_KEY_FILE to a \
                 file holding it (re-read when it changes)",
            );
            return None;
        }
        (Some(token), None) => (
            TokenOrigin::Env(Secret::new(token.clone())),
            token,
            vars::API_KEY,
        ),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => (
                TokenOrigin::File(PathBuf::from(&path)),
                text.trim().to_string(),
                vars::API_KEY_FILE,
            ),
            Err(e) => {
                r.problem(vars::API_KEY_FILE, format!("cannot read {path}: {e}"));
                return None;
            }
        },
    };
    let inspection = match TokenInspection::parse(&token) {
        Ok(i) => i,
        Err(e) => {
            r.problem(variable, format!("not a valid JWT: {e}"));
            return None;
        }
    };
    if let Err(e) = inspection.check_times(jiff::Timestamp::now(), JWT_LEEWAY) {
        r.problem(variable, e.to_string());
        return None;
    }
    let expires = inspection.claims.exp.map(|t| t.to_string());
    Some((origin, expires))
}

fn read_redis(r: &mut Reader<'_>) -> Option<RedisTarget> {
    let tls = match r.string(vars::REDIS_TLS).as_deref() {
        None => None,
        Some("true" | "1" | "yes") => Some(true),
        Some("false" | "0" | "no") => Some(false),
        Some(other) => {
            r.problem(vars::REDIS_TLS, format!("'{other}' is not true or false"));
            return None;
        }
    };
    if let Some(url) = r.string(vars::REDIS_URL) {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            r.problem(
                vars::REDIS_URL,
                "must start with redis:// or rediss:// (the value is not shown: it may hold a password)",
            );
            return None;
        }
        let target = RedisTarget::Url(url);
        if let Err(mismatch) = target.check_tls(tls == Some(true), false) {
            r.problem(vars::REDIS_TLS, mismatch.to_string());
            return None;
        }
        return Some(target);
    }
    let Some(host) = r.string(vars::REDIS_HOST) else {
        r.problem(
            vars::REDIS_HOST,
            "cloud mode needs Redis: set REDIS_HOST (with REDIS_PORT, REDIS_PASSWORD) or REDIS_URL",
        );
        return None;
    };
    let port = r.number(&[vars::REDIS_PORT], 6379u16, 1, u16::MAX);
    Some(RedisTarget::HostPort {
        host,
        port,
        password: r.string(vars::REDIS_PASSWORD),
        tls: tls.unwrap_or(false),
    })
}

/// REDIS_CA_FILE, read and checked now; only with a TLS connection, where it is used.
fn read_redis_ca(r: &mut Reader<'_>, redis: Option<&RedisTarget>) -> Option<(PathBuf, Vec<u8>)> {
    let path = PathBuf::from(r.string(vars::REDIS_CA_FILE)?);
    if let Some(Err(mismatch)) = redis.map(|t| t.check_tls(false, true)) {
        r.problem(vars::REDIS_CA_FILE, mismatch.to_string());
        return None;
    }
    match stigmer_auth::read_ca_pem(&path) {
        Ok(pem) => Some((path, pem)),
        Err(e) => {
            r.problem(vars::REDIS_CA_FILE, e.to_string());
            None
        }
    }
}

fn read_daytona(r: &mut Reader<'_>) -> Option<DaytonaConfig> {
    let api_url = r
        .string(vars::DAYTONA_API_URL)
        .unwrap_or_else(|| DEFAULT_DAYTONA_API_URL.to_string());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        r.problem(
            vars::DAYTONA_API_URL,
            format!("'{api_url}' must be an http(s) URL"),
        );
    }
    let api_key = r.string(vars::DAYTONA_API_KEY);
    if api_key.is_none() {
        r.problem(
            vars::DAYTONA_API_KEY,
            "cloud mode runs tools in Daytona sandboxes: set DAYTONA_API_KEY",
        );
    }
    let snapshot = r.string(vars::DAYTONA_DEV_TOOLS_SNAPSHOT_ID);
    if snapshot.is_none() {
        r.problem(
            vars::DAYTONA_DEV_TOOLS_SNAPSHOT_ID,
            "set the Daytona snapshot that sandboxes are created from",
        );
    }
    Some(DaytonaConfig {
        api_url: api_url.trim_end_matches('/').to_string(),
        api_key: Secret::new(api_key?),
        snapshot: snapshot?,
    })
}
