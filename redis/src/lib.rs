//! Where Redis is, shared by the runner and the control plane, and the one place that turns it
//! into a client. A password (in the URL or apart from it) never appears in `Debug` output or
//! errors.

use std::fmt;

mod connect;
pub use connect::{Unreachable, connect_with_retry};

use redis::{Client, ConnectionAddr, IntoConnectionInfo};

#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[:password@]host:port[/db]` (REDIS_URL).
    Url(String),
    /// REDIS_HOST / REDIS_PORT / REDIS_PASSWORD.
    HostPort {
        host: String,
        port: u16,
        password: Option<String>,
    },
}

/// The address cannot be used. The message names `host:port` at most, never a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis address: {0}")]
pub struct InvalidAddress(pub String);

impl RedisTarget {
    /// REDIS_URL wins; otherwise REDIS_HOST (with REDIS_PORT, default 6379, and
    /// REDIS_PASSWORD). `None` when neither is set. Empty values count as unset.
    pub fn from_parts(
        url: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        password: Option<String>,
    ) -> Option<Self> {
        let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        if let Some(url) = non_empty(url) {
            return Some(Self::Url(url));
        }
        non_empty(host).map(|host| Self::HostPort {
            host,
            port: port.unwrap_or(6379),
            password: non_empty(password),
        })
    }

    /// host:port without credentials, for banners and error messages.
    pub fn display_address(&self) -> String {
        match self {
            Self::HostPort { host, port, .. } => format!("{host}:{port}"),
            Self::Url(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                rest.split('/').next().unwrap_or(rest).to_string()
            }
        }
    }

    pub fn password_state(&self) -> &'static str {
        let set = match self {
            Self::HostPort { password, .. } => password.is_some(),
            Self::Url(url) => url.split_once("://").is_some_and(|(_, r)| r.contains('@')),
        };
        if set { "password set" } else { "no password" }
    }

    /// A client and its `host:port` (for messages).
    pub fn client(&self) -> Result<(Client, String), InvalidAddress> {
        let info = match self {
            Self::Url(url) => url
                .as_str()
                .into_connection_info()
                // The parse error may quote the URL, password included: do not pass it on.
                .map_err(|_| InvalidAddress("REDIS_URL is not a redis:// URL".into()))?,
            Self::HostPort {
                host,
                port,
                password,
            } => {
                let info = ConnectionAddr::Tcp(host.clone(), *port)
                    .into_connection_info()
                    .map_err(|_| InvalidAddress(format!("{host}:{port}")))?;
                match password.as_deref().filter(|p| !p.is_empty()) {
                    Some(password) => {
                        let redis = info.redis_settings().clone().set_password(password);
                        info.set_redis_settings(redis)
                    }
                    None => info,
                }
            }
        };
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => other.to_string(),
        };
        let client = Client::open(info).map_err(|_| InvalidAddress(addr.clone()))?;
        Ok((client, addr))
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(_) => f.write_str("RedisTarget::Url(<redacted>)"),
            Self::HostPort { host, port, .. } => write!(f, "RedisTarget::HostPort({host}:{port})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug_and_display() {
        let url = RedisTarget::Url("redis://:hunter2@redis.internal:6380/0".into());
        assert_eq!(url.display_address(), "redis.internal:6380");
        assert_eq!(url.password_state(), "password set");
        assert!(!format!("{url:?}").contains("hunter2"));
        let hp = RedisTarget::from_parts(None, Some("r".into()), None, Some("pw".into()))
            .expect("host given");
        assert_eq!(hp.display_address(), "r:6379");
        assert!(!format!("{hp:?}").contains("pw"));
        let (_, addr) = hp.client().expect("client");
        assert_eq!(addr, "r:6379");
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = RedisTarget::Url("nope://:secret@x".into())
            .client()
            .expect_err("bad url");
        assert!(!err.to_string().contains("secret"));
        assert_eq!(
            RedisTarget::from_parts(Some(" ".into()), None, None, None),
            None
        );
    }
}
