//! Where Redis is, shared by the runner and the control plane, and the one place that turns it
//! into a client. A password (in the URL or apart from it) never appears in `Debug` output or
//! errors.

use std::fmt;

mod connect;
pub use connect::{Unreachable, connect_with_retry};

use redis::{Client, ConnectionAddr, IntoConnectionInfo, TlsCertificates};

#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[:password@]host:port[/db]`, or `rediss://...` for TLS (REDIS_URL).
    Url(String),
    /// REDIS_HOST / REDIS_PORT / REDIS_PASSWORD, and REDIS_TLS for TLS.
    HostPort {
        host: String,
        port: u16,
        password: Option<String>,
        tls: bool,
    },
}

/// REDIS_TLS or REDIS_CA_FILE that do not fit the target: one rule, and one wording, for the
/// runner and the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsMismatch {
    #[error("REDIS_TLS=true with a redis:// REDIS_URL: use a rediss:// URL for TLS")]
    FlagWithPlainUrl,
    #[error(
        "REDIS_CA_FILE is set but the Redis connection is not TLS: use a rediss:// REDIS_URL or \
         REDIS_TLS=true"
    )]
    CaWithoutTls,
}

/// The address cannot be used. The message names `host:port` at most, never a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis address: {0}")]
pub struct InvalidAddress(pub String);

impl RedisTarget {
    /// REDIS_URL wins; otherwise REDIS_HOST (with REDIS_PORT, default 6379, and
    /// REDIS_PASSWORD; `tls` from REDIS_TLS). `None` when neither is set. Empty values count
    /// as unset.
    pub fn from_parts(
        url: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        password: Option<String>,
        tls: bool,
    ) -> Option<Self> {
        let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        if let Some(url) = non_empty(url) {
            return Some(Self::Url(url));
        }
        non_empty(host).map(|host| Self::HostPort {
            host,
            port: port.unwrap_or(6379),
            password: non_empty(password),
            tls,
        })
    }

    /// Whether REDIS_TLS (`tls_flag`) and a CA file (`ca_given`) fit this target: the flag
    /// does not turn a `redis://` URL into TLS, and a CA is only used by TLS.
    pub fn check_tls(&self, tls_flag: bool, ca_given: bool) -> Result<(), TlsMismatch> {
        if tls_flag && matches!(self, Self::Url(_)) && !self.is_tls() {
            return Err(TlsMismatch::FlagWithPlainUrl);
        }
        if ca_given && !self.is_tls() {
            return Err(TlsMismatch::CaWithoutTls);
        }
        Ok(())
    }

    /// Whether the connection is encrypted (`rediss://`, or REDIS_TLS with a host).
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Url(url) => url
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("rediss://"),
            Self::HostPort { tls, .. } => *tls,
        }
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

    /// A client and its `host:port` (for messages); a TLS connection checks the server's
    /// certificate against the system's CAs.
    pub fn client(&self) -> Result<(Client, String), InvalidAddress> {
        self.client_trusting(None)
    }

    /// As [`RedisTarget::client`]; with `ca_pem` (PEM certificates, REDIS_CA_FILE) a TLS
    /// connection trusts only those CAs, as for a managed Redis behind a private CA.
    pub fn client_trusting(
        &self,
        ca_pem: Option<&[u8]>,
    ) -> Result<(Client, String), InvalidAddress> {
        let info = match self {
            // redis-rs reads `#insecure` as "skip the certificate checks": never wanted here.
            Self::Url(url) if url.contains("#insecure") => {
                return Err(InvalidAddress(
                    "REDIS_URL asks for TLS without certificate checks (#insecure), which is not \
                     supported: trust the server's CA with REDIS_CA_FILE instead"
                        .into(),
                ));
            }
            Self::Url(url) => url
                .as_str()
                .into_connection_info()
                // The parse error may quote the URL, password included: do not pass it on.
                .map_err(|_| InvalidAddress("REDIS_URL is not a redis:// URL".into()))?,
            Self::HostPort {
                host,
                port,
                password,
                tls,
            } => {
                let addr = if *tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        // Hostname verification stays on: there is no setting to turn it off.
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                };
                let info = addr
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
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                format!("{host}:{port}")
            }
            other => other.to_string(),
        };
        let client = match ca_pem {
            Some(pem) if self.is_tls() => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )
            .map_err(|e| {
                InvalidAddress(format!("{addr}: the CA certificates cannot be used: {e}"))
            })?,
            Some(_) => {
                return Err(InvalidAddress(format!(
                    "{addr}: {}",
                    TlsMismatch::CaWithoutTls
                )));
            }
            None => Client::open(info).map_err(|_| InvalidAddress(addr.clone()))?,
        };
        Ok((client, addr))
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(_) => f.write_str("RedisTarget::Url(<redacted>)"),
            Self::HostPort {
                host, port, tls, ..
            } => {
                let tls = if *tls { ", tls" } else { "" };
                write!(f, "RedisTarget::HostPort({host}:{port}{tls})")
            }
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
        let hp = RedisTarget::from_parts(None, Some("r".into()), None, Some("pw".into()), false)
            .expect("host given");
        assert_eq!(hp.display_address(), "r:6379");
        assert!(!format!("{hp:?}").contains("pw"));
        let (_, addr) = hp.client().expect("client");
        assert_eq!(addr, "r:6379");
    }

    #[test]
    fn tls_is_said_by_the_url_scheme_or_the_flag() {
        assert!(RedisTarget::Url("rediss://:pw@r:6380/0".into()).is_tls());
        assert!(RedisTarget::Url("REDISS://r".into()).is_tls());
        assert!(!RedisTarget::Url("redis://r".into()).is_tls());
        let host = |tls| RedisTarget::from_parts(None, Some("r".into()), None, None, tls);
        assert!(host(true).is_some_and(|t| t.is_tls()));
        assert!(host(false).is_some_and(|t| !t.is_tls()));
        let (_, addr) = host(true)
            .unwrap_or_else(|| unreachable!())
            .client()
            .expect("client");
        assert_eq!(addr, "r:6379");
        assert!(format!("{:?}", host(true)).contains("tls"));
    }

    #[test]
    fn the_tls_flag_and_a_ca_must_fit_the_target() {
        let plain_url = RedisTarget::Url("redis://r/".into());
        let tls_url = RedisTarget::Url("rediss://r/".into());
        let host = |tls| RedisTarget::from_parts(None, Some("r".into()), None, None, tls);
        assert_eq!(
            plain_url.check_tls(true, false),
            Err(TlsMismatch::FlagWithPlainUrl)
        );
        assert_eq!(
            plain_url.check_tls(false, true),
            Err(TlsMismatch::CaWithoutTls)
        );
        assert_eq!(tls_url.check_tls(true, true), Ok(()));
        assert_eq!(
            host(false).map(|t| t.check_tls(false, true)),
            Some(Err(TlsMismatch::CaWithoutTls))
        );
        assert_eq!(host(true).map(|t| t.check_tls(true, true)), Some(Ok(())));
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused() {
        let ca = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        let plain = RedisTarget::Url("redis://:pw@r:1/".into())
            .client_trusting(Some(ca))
            .expect_err("CA without TLS");
        assert!(plain.to_string().contains("not TLS"), "{plain}");
        let insecure = RedisTarget::Url("rediss://:pw@r:1/#insecure".into())
            .client()
            .expect_err("no certificate checks");
        assert!(insecure.to_string().contains("REDIS_CA_FILE"), "{insecure}");
        assert!(!insecure.to_string().contains("pw"));
        let bad_ca = RedisTarget::Url("rediss://:pw@r:1/".into())
            .client_trusting(Some(ca))
            .expect_err("unusable CA");
        assert!(bad_ca.to_string().contains("CA certificates"), "{bad_ca}");
        assert!(!bad_ca.to_string().contains("pw"));
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = RedisTarget::Url("nope://:secret@x".into())
            .client()
            .expect_err("bad url");
        assert!(!err.to_string().contains("secret"));
        assert_eq!(
            RedisTarget::from_parts(Some(" ".into()), None, None, None, false),
            None
        );
    }
}
