//! The runner's credential: a JWT from `STIGMER_API_KEY`, or from the file named by
//! `STIGMER_API_KEY_FILE`, re-read while running so that a rotated Kubernetes Secret is picked
//! up without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use tokio::task::JoinHandle;

use crate::jwt::{JwtError, Verifier};

/// Environment variable holding the token itself.
pub const ENV_API_KEY: &str = "STIGMER_API_KEY";
/// Environment variable naming a file that holds the token.
pub const ENV_API_KEY_FILE: &str = "STIGMER_API_KEY_FILE";

/// How close to expiry a token must be for the watcher to warn.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(10 * 60);

/// Why no usable token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenSourceError {
    #[error("no credential: set {ENV_API_KEY} or {ENV_API_KEY_FILE}")]
    NotConfigured,
    #[error("both {ENV_API_KEY} and {ENV_API_KEY_FILE} are set; set only one")]
    Ambiguous,
    #[error("reading the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token from {origin} is empty")]
    Empty { origin: String },
    #[error("the token from {origin} is invalid: {source}")]
    Invalid { origin: String, source: JwtError },
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env => write!(f, "{ENV_API_KEY}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

struct Current {
    token: String,
    expires_at: Option<Timestamp>,
}

struct Inner {
    origin: Origin,
    verifier: Arc<Verifier>,
    current: ArcSwap<Current>,
    /// The last warning given: the token's expiry and whether it had expired then, so that each
    /// token is warned about once as it nears expiry and once when it has expired.
    warned_for: std::sync::Mutex<Option<(Timestamp, bool)>>,
}

/// The current credential. Clones share it; [`TokenSource::current`] is a lock-free read.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenSource {
    // By hand, so that the token can never end up in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("origin", &self.inner.origin.to_string())
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Reads `STIGMER_API_KEY` or `STIGMER_API_KEY_FILE` (exactly one must be set) and verifies
    /// the token with `verifier`.
    pub async fn from_env(verifier: Arc<Verifier>) -> Result<Self, TokenSourceError> {
        let token = std::env::var(ENV_API_KEY).ok().filter(|v| !v.is_empty());
        let file = std::env::var_os(ENV_API_KEY_FILE).filter(|v| !v.is_empty());
        match (token, file) {
            (Some(_), Some(_)) => Err(TokenSourceError::Ambiguous),
            (Some(token), None) => Self::from_static(token, verifier).await,
            (None, Some(path)) => Self::from_file(PathBuf::from(path), verifier).await,
            (None, None) => Err(TokenSourceError::NotConfigured),
        }
    }

    /// A fixed token (from the environment); the watcher only warns about its expiry.
    pub async fn from_static(
        token: String,
        verifier: Arc<Verifier>,
    ) -> Result<Self, TokenSourceError> {
        Self::build(Origin::Env, token, verifier).await
    }

    /// A token read from `path`, re-read by [`TokenSource::watch`] or [`TokenSource::reload`].
    pub async fn from_file(
        path: impl Into<PathBuf>,
        verifier: Arc<Verifier>,
    ) -> Result<Self, TokenSourceError> {
        let path = path.into();
        let token = read_token(&path).await?;
        Self::build(Origin::File(path), token, verifier).await
    }

    async fn build(
        origin: Origin,
        token: String,
        verifier: Arc<Verifier>,
    ) -> Result<Self, TokenSourceError> {
        let current = validate(&origin, token, &verifier).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                origin,
                verifier,
                current: ArcSwap::from_pointee(current),
                warned_for: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The token to send now.
    pub fn current(&self) -> String {
        self.inner.current.load().token.clone()
    }

    /// When the current token expires (its `exp`).
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.inner.current.load().expires_at
    }

    /// The file the token is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.origin {
            Origin::File(path) => Some(path),
            Origin::Env => None,
        }
    }

    /// Re-reads the file now. Returns `Ok(true)` when a new token was taken, `Ok(false)` when
    /// the content is unchanged (or the token is static). A file that cannot be read or holds an
    /// invalid token is an error and the current token stays in use.
    pub async fn reload(&self) -> Result<bool, TokenSourceError> {
        let Origin::File(path) = &self.inner.origin else {
            return Ok(false);
        };
        // Content, not mtime: a Kubernetes Secret volume swaps a `..data` symlink, and the
        // token file's own metadata as seen through the symlink tells nothing reliable.
        let token = read_token(path).await?;
        if token == self.inner.current.load().token {
            return Ok(false);
        }
        let fresh = validate(&self.inner.origin, token, &self.inner.verifier).await?;
        let expires_at = fresh.expires_at;
        self.inner.current.store(Arc::new(fresh));
        tracing::info!(
            file = %path.display(),
            expires_at = ?expires_at.map(|t| t.to_string()),
            "API token rotated",
        );
        Ok(true)
    }

    /// Logs a warning when the current token expires within [`EXPIRY_WARNING`] (once per
    /// token), and an error once it has expired.
    pub fn warn_if_expiring(&self) {
        let Some(exp) = self.expires_at() else {
            return;
        };
        let now = Timestamp::now();
        let left = exp.duration_since(now);
        let threshold = jiff::SignedDuration::try_from(EXPIRY_WARNING).unwrap_or_default();
        if left > threshold {
            return;
        }
        let Ok(mut warned) = self.inner.warned_for.lock() else {
            return;
        };
        let expired = left.is_negative();
        let key = (exp, expired);
        if *warned == Some(key) {
            return;
        }
        *warned = Some(key);
        let origin = &self.inner.origin;
        if expired {
            tracing::error!(%origin, expired_at = %exp, "API token has expired and no valid replacement was found");
        } else {
            tracing::warn!(%origin, expires_at = %exp, seconds_left = left.as_secs(), "API token expires soon");
        }
    }

    /// Spawns a task that every `interval` re-reads the file (when the token comes from one) and
    /// warns about a near expiry. It ends by itself once every clone of this source is dropped;
    /// abort the handle to end it sooner.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate and the token was just read: skip it.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let source = TokenSource { inner };
                if let Err(e) = source.reload().await {
                    // The error says which file and why, never the token.
                    tracing::warn!(error = %e, "keeping the current API token");
                }
                source.warn_if_expiring();
            }
        })
    }
}

async fn read_token(path: &Path) -> Result<String, TokenSourceError> {
    let content =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| TokenSourceError::Read {
                path: path.to_owned(),
                source,
            })?;
    Ok(content.trim().to_owned())
}

async fn validate(
    origin: &Origin,
    token: String,
    verifier: &Verifier,
) -> Result<Current, TokenSourceError> {
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(TokenSourceError::Empty {
            origin: origin.to_string(),
        });
    }
    let claims = verifier
        .verify(&token)
        .await
        .map_err(|source| TokenSourceError::Invalid {
            origin: origin.to_string(),
            source,
        })?;
    Ok(Current {
        token,
        expires_at: claims.exp,
    })
}
