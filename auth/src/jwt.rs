//! JWT inspection and verification, shared by the runner (start-up check of its own credential)
//! and the control plane (authentication of every call).
//!
//! Nothing in this module ever puts a token, or a piece of one, into an error or a log line:
//! errors name the part of the token that is wrong, never its content.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jiff::Timestamp;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf` unless [`Verifier::with_leeway`] says otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The fastest a JWKS is fetched again because a token named a key id it does not hold. Keeps a
/// flood of tokens with made-up key ids from turning into a flood of requests to the issuer.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);

/// A JWKS bigger than this is refused: real ones are a few kilobytes.
const JWKS_MAX_BYTES: usize = 1024 * 1024;

const JWKS_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Base64url that accepts tokens with or without `=` padding: some issuers pad, the spec says
/// not to, and refusing a padded token would help nobody.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused. Messages describe the failure and never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired at {at}")]
    Expired { at: Timestamp },
    #[error("token is not valid before {from}")]
    NotYetValid { from: Timestamp },
    #[error("token is signed with {found}, but the configured key only verifies {expected}")]
    WrongAlgorithm { expected: String, found: String },
    #[error("token signature does not verify with the configured key")]
    BadSignature,
    #[error("token issuer is {}, expected {expected:?}", found.as_deref().map_or_else(|| "missing".to_owned(), |f| format!("{f:?}")))]
    WrongIssuer {
        expected: String,
        found: Option<String>,
    },
    #[error("token audience does not include {expected:?}")]
    WrongAudience { expected: String },
    #[error("{}", unknown_kid_message(kid.as_deref()))]
    UnknownKid { kid: Option<String> },
    #[error("JWKS {url}: {reason}")]
    Jwks { url: String, reason: String },
    #[error("verification key: {0}")]
    Key(String),
}

fn unknown_kid_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("token key id {kid:?} is not in the issuer's JWKS"),
        None => {
            "token has no key id (kid) and the JWKS does not hold exactly one usable key".to_owned()
        }
    }
}

/// The registered claims of a token, plus the rest as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub sub: Option<String>,
    pub iss: Option<String>,
    /// `aud` may be a string or an array in the token; it is always a list here.
    pub aud: Vec<String>,
    pub exp: Option<Timestamp>,
    pub nbf: Option<Timestamp>,
    pub iat: Option<Timestamp>,
    /// Every other claim, as found in the token.
    pub extra: Map<String, Value>,
}

/// What a token says about itself, decoded without any key. Trust none of it before
/// [`Verifier::verify`] has checked the signature; it is meant for structure and expiry checks and
/// for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInspection {
    /// The `alg` of the header, as written.
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Claims,
}

impl TokenInspection {
    /// Decodes header and claims. Fails on anything that is not a signed compact JWT: wrong
    /// number of parts, bad base64url, JSON that is not an object, missing `alg`, no signature.
    pub fn parse(token: &str) -> Result<Self, JwtError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(malformed("the token is empty"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => {
                return Err(malformed(
                    "it has 5 parts, which is an encrypted JWT (JWE); a signed JWT (JWS) with 3 parts is expected",
                ));
            }
            n => {
                return Err(malformed(format!(
                    "expected 3 dot-separated parts (header.payload.signature), found {n}"
                )));
            }
        }
        let header = decode_json_object(parts[0], "header")?;
        let payload = decode_json_object(parts[1], "payload")?;
        if parts[2].is_empty() {
            return Err(malformed(
                "the signature part is empty (unsigned token); signed tokens only",
            ));
        }
        B64URL
            .decode(parts[2])
            .map_err(|e| malformed(format!("the signature is not valid base64url ({e})")))?;

        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            Some(_) => return Err(malformed("the header's `alg` is not a string")),
            None => return Err(malformed("the header has no `alg`")),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(malformed("the header says `alg: none`; signed tokens only"));
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => Some(kid.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(malformed("the header's `kid` is not a string")),
        };
        Ok(Self {
            alg,
            kid,
            claims: claims_from_payload(payload)?,
        })
    }

    /// Checks `exp` (required) and `nbf` (when present) against `now`, allowing `leeway` of
    /// clock skew either way.
    pub fn check_times(&self, now: Timestamp, leeway: Duration) -> Result<(), JwtError> {
        let leeway = jiff::SignedDuration::try_from(leeway).unwrap_or(jiff::SignedDuration::MAX);
        let Some(exp) = self.claims.exp else {
            return Err(malformed(
                "the token has no `exp` claim; tokens without an expiry are refused",
            ));
        };
        if exp.checked_add(leeway).is_ok_and(|deadline| deadline < now) {
            return Err(JwtError::Expired { at: exp });
        }
        if let Some(nbf) = self.claims.nbf
            && nbf.checked_sub(leeway).is_ok_and(|start| start > now)
        {
            return Err(JwtError::NotYetValid { from: nbf });
        }
        Ok(())
    }
}

fn malformed(reason: impl Into<String>) -> JwtError {
    JwtError::Malformed(reason.into())
}

fn decode_json_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|e| malformed(format!("the {what} is not valid base64url ({e})")))?;
    // serde_json's messages give a line and column, never the input, so they are safe to keep.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(format!("the {what} is JSON but not an object"))),
        Err(e) => Err(malformed(format!("the {what} is not valid JSON ({e})"))),
    }
}

fn claims_from_payload(mut payload: Map<String, Value>) -> Result<Claims, JwtError> {
    let sub = take_string(&mut payload, "sub")?;
    let iss = take_string(&mut payload, "iss")?;
    let aud = match payload.remove("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(aud)) => vec![aud],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(aud) => Ok(aud),
                _ => Err(malformed(
                    "the `aud` claim holds something other than strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(malformed(
                "the `aud` claim is neither a string nor an array",
            ));
        }
    };
    Ok(Claims {
        sub,
        iss,
        aud,
        exp: take_time(&mut payload, "exp")?,
        nbf: take_time(&mut payload, "nbf")?,
        iat: take_time(&mut payload, "iat")?,
        extra: payload,
    })
}

fn take_string(payload: &mut Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match payload.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format!("the `{name}` claim is not a string"))),
    }
}

/// NumericDate: seconds since the epoch, which RFC 7519 allows to be fractional.
fn take_time(payload: &mut Map<String, Value>, name: &str) -> Result<Option<Timestamp>, JwtError> {
    let seconds = match payload.remove(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(s), _) => s,
            // Truncation is the point: the fraction of a second does not matter here, and an
            // out-of-range float saturates and is then refused by Timestamp below.
            #[allow(clippy::cast_possible_truncation)]
            (None, Some(f)) if f.is_finite() => f.floor() as i64,
            _ => return Err(malformed(format!("the `{name}` claim is not a number"))),
        },
        Some(_) => return Err(malformed(format!("the `{name}` claim is not a number"))),
    };
    Timestamp::from_second(seconds)
        .map(Some)
        .map_err(|_| malformed(format!("the `{name}` claim is out of range")))
}

/// Where the public key that checks signatures comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`): RSA means RS256, EC
    /// (P-256) means ES256.
    PublicKeyPem(String),
    /// A JSON Web Key Set fetched over HTTP(S). `refresh` is how long a fetched set is used
    /// before it is fetched again; a token naming an unknown `kid` also triggers a fetch, at most
    /// once per `min(refresh, JWKS_MIN_REFETCH)`.
    Jwks { url: String, refresh: Duration },
}

/// What a [`Verifier`] checks beyond structure and expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierConfig {
    /// When set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and include it.
    pub audience: Option<String>,
    /// When set, the signature is checked. Without a key only structure and claims are checked,
    /// which is enough for a runner checking its own credential but never for a server.
    pub key: Option<KeySource>,
}

/// Checks tokens. Cheap to share behind an `Arc`; verification takes `&self`.
pub struct Verifier {
    issuer: Option<String>,
    audience: Option<String>,
    key: Option<VerifyKey>,
    leeway: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("checks", &self.checks_made())
            .finish()
    }
}

enum VerifyKey {
    Static {
        key: DecodingKey,
        alg: Algorithm,
        kind: &'static str,
    },
    Jwks(Arc<JwksCache>),
}

impl Verifier {
    /// Builds a verifier. A PEM key is parsed here, so a bad key fails at start-up; a JWKS is
    /// fetched lazily on the first verification (see [`Verifier::prefetch`]).
    pub fn new(config: VerifierConfig) -> Result<Self, JwtError> {
        let key = match config.key {
            None => None,
            Some(KeySource::PublicKeyPem(pem)) => Some(static_key(&pem)?),
            Some(KeySource::Jwks { url, refresh }) => {
                Some(VerifyKey::Jwks(Arc::new(JwksCache::new(url, refresh)?)))
            }
        };
        Ok(Self {
            issuer: config.issuer.filter(|s| !s.is_empty()),
            audience: config.audience.filter(|s| !s.is_empty()),
            key,
            leeway: DEFAULT_LEEWAY,
        })
    }

    /// Replaces the clock-skew allowance on `exp` and `nbf` (default [`DEFAULT_LEEWAY`]).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Whether signatures are checked. A server must refuse to run without.
    pub fn verifies_signature(&self) -> bool {
        self.key.is_some()
    }

    /// Fetches the JWKS now, so that a wrong URL fails at start-up instead of on the first
    /// request. Does nothing for a PEM key or without a key.
    pub async fn prefetch(&self) -> Result<(), JwtError> {
        match &self.key {
            Some(VerifyKey::Jwks(cache)) => cache.prefetch().await,
            _ => Ok(()),
        }
    }

    /// A one-line description of what [`Verifier::verify`] checks, for start-up banners, e.g.
    /// `structure, exp, nbf, iss, aud, signature (JWKS https://issuer/jwks.json)`.
    pub fn checks_made(&self) -> String {
        let mut checks = vec!["structure".to_owned(), "exp".to_owned(), "nbf".to_owned()];
        if self.issuer.is_some() {
            checks.push("iss".to_owned());
        }
        if self.audience.is_some() {
            checks.push("aud".to_owned());
        }
        match &self.key {
            None => {}
            Some(VerifyKey::Static { alg, kind, .. }) => {
                checks.push(format!("signature ({alg:?}, {kind})"));
            }
            Some(VerifyKey::Jwks(cache)) => {
                checks.push(format!("signature (JWKS {})", cache.url));
            }
        }
        checks.join(", ")
    }

    /// Verifies a token: structure, then the signature when a key is configured, then `exp` and
    /// `nbf` (with leeway), then `iss` and `aud` when configured. Returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let token = token.trim();
        let inspection = TokenInspection::parse(token)?;
        match &self.key {
            None => {}
            Some(VerifyKey::Static { key, alg, .. }) => {
                check_signature(token, &inspection, key, *alg)?;
            }
            Some(VerifyKey::Jwks(cache)) => {
                let (key, alg) = cache.key_for(inspection.kid.as_deref()).await?;
                check_signature(token, &inspection, &key, alg)?;
            }
        }
        self.check_claims(&inspection)?;
        Ok(inspection.claims)
    }

    fn check_claims(&self, inspection: &TokenInspection) -> Result<(), JwtError> {
        inspection.check_times(Timestamp::now(), self.leeway)?;
        let claims = &inspection.claims;
        if let Some(expected) = &self.issuer
            && claims.iss.as_ref() != Some(expected)
        {
            return Err(JwtError::WrongIssuer {
                expected: expected.clone(),
                found: claims.iss.clone(),
            });
        }
        if let Some(expected) = &self.audience
            && !claims.aud.iter().any(|aud| aud == expected)
        {
            return Err(JwtError::WrongAudience {
                expected: expected.clone(),
            });
        }
        Ok(())
    }
}

/// Checks only the signature (and the algorithm): the claims are checked by our own code, so
/// that every failure maps to one precise [`JwtError`].
fn check_signature(
    token: &str,
    inspection: &TokenInspection,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<(), JwtError> {
    // Pinning the algorithm to the key's type is what stops algorithm confusion (a token that
    // says HS256 and uses the public key as an HMAC secret).
    let expected = format!("{alg:?}");
    if inspection.alg != expected {
        return Err(JwtError::WrongAlgorithm {
            expected,
            found: inspection.alg.clone(),
        });
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    match jsonwebtoken::decode::<Value>(token, key, &validation) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm => JwtError::WrongAlgorithm {
                expected: format!("{alg:?}"),
                found: inspection.alg.clone(),
            },
            ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                JwtError::Key(e.to_string())
            }
            // Anything else is about the token's encoding; jsonwebtoken's messages do not quote
            // the token.
            _ => JwtError::Malformed(e.to_string()),
        }),
    }
}

fn static_key(pem: &str) -> Result<VerifyKey, JwtError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok(VerifyKey::Static {
            key,
            alg: Algorithm::RS256,
            kind: "RSA public key",
        });
    }
    match DecodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(key) => {
            ensure_p256(&key)?;
            Ok(VerifyKey::Static {
                key,
                alg: Algorithm::ES256,
                kind: "EC P-256 public key",
            })
        }
        Err(_) => Err(JwtError::Key(
            "the public key PEM is neither an RSA nor an EC public key".to_owned(),
        )),
    }
}

/// ES256 is pinned for EC keys, so a P-384 or P-521 key is a configuration error to report now
/// rather than a "bad signature" on every token later. An uncompressed P-256 point is 65 bytes.
fn ensure_p256(key: &DecodingKey) -> Result<(), JwtError> {
    match key.try_get_as_bytes() {
        Ok(point) if point.len() == 65 => Ok(()),
        _ => Err(JwtError::Key(
            "the EC public key is not on P-256; only ES256 is supported".to_owned(),
        )),
    }
}

/// A fetched key set: key id (if any), key, pinned algorithm.
#[derive(Default)]
struct KeySet {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _, _)| k.as_deref() == Some(kid))
                .map(|(_, key, alg)| (key.clone(), *alg)),
            // A token without a kid is only acceptable when there is no choice to make.
            None => match self.keys.as_slice() {
                [(_, key, alg)] => Some((key.clone(), *alg)),
                _ => None,
            },
        }
    }

    fn is_fresh(&self, now: Instant, refresh: Duration) -> bool {
        self.fetched_at
            .is_some_and(|at| now.saturating_duration_since(at) < refresh)
    }
}

struct JwksCache {
    url: String,
    refresh: Duration,
    http: reqwest::Client,
    /// Read without locking on every verification.
    keys: ArcSwap<KeySet>,
    /// Held while fetching, so that concurrent misses cause one request; holds the time of the
    /// last attempt, successful or not, for rate limiting.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    fn new(url: String, refresh: Duration) -> Result<Self, JwtError> {
        crate::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(JWKS_HTTP_TIMEOUT)
            .build()
            .map_err(|e| JwtError::Jwks {
                url: url.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            url,
            refresh,
            http,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch: tokio::sync::Mutex::new(None),
        })
    }

    fn min_refetch(&self) -> Duration {
        self.refresh.min(JWKS_MIN_REFETCH)
    }

    async fn prefetch(&self) -> Result<(), JwtError> {
        let mut last = self.fetch.lock().await;
        *last = Some(Instant::now());
        let set = self.fetch_set().await?;
        self.keys.store(Arc::new(set));
        Ok(())
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<(DecodingKey, Algorithm), JwtError> {
        let set = self.keys.load_full();
        if set.is_fresh(Instant::now(), self.refresh)
            && let Some(found) = set.find(kid)
        {
            return Ok(found);
        }

        // Stale set or unknown kid: fetch, unless another task just did or we tried too recently.
        let mut last_attempt = self.fetch.lock().await;
        let now = Instant::now();
        let set = self.keys.load_full();
        if let Some(found) = set.find(kid)
            && set.is_fresh(now, self.refresh)
        {
            return Ok(found);
        }
        let may_fetch =
            last_attempt.is_none_or(|at| now.saturating_duration_since(at) >= self.min_refetch());
        if may_fetch {
            *last_attempt = Some(now);
            match self.fetch_set().await {
                Ok(fresh) => self.keys.store(Arc::new(fresh)),
                // Never fetched: nothing to fall back on.
                Err(e) if set.fetched_at.is_none() => return Err(e),
                // An issuer outage must not lock everybody out: keep the keys we have.
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys fetched before")
                }
            }
        } else if set.fetched_at.is_none() {
            return Err(JwtError::Jwks {
                url: self.url.clone(),
                reason: "not fetched yet; the last attempt failed moments ago".to_owned(),
            });
        }
        self.keys
            .load()
            .find(kid)
            .ok_or_else(|| JwtError::UnknownKid {
                kid: kid.map(str::to_owned),
            })
    }

    async fn fetch_set(&self) -> Result<KeySet, JwtError> {
        let err = |reason: String| JwtError::Jwks {
            url: self.url.clone(),
            reason,
        };
        let response = self
            .http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| err(format!("request failed: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(err(format!("answered HTTP {status}")));
        }
        if response
            .content_length()
            .is_some_and(|len| len > JWKS_MAX_BYTES as u64)
        {
            return Err(err(format!("larger than {JWKS_MAX_BYTES} bytes")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| err(format!("reading the body failed: {e}")))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err(err(format!("larger than {JWKS_MAX_BYTES} bytes")));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| err(format!("not a JWK set: {e}")))?;

        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            match usable_jwk(jwk) {
                Ok((key, alg)) => keys.push((kid, key, alg)),
                // Issuers publish keys for other purposes too; skipping them is normal.
                Err(why) => tracing::debug!(kid = ?kid, why, "skipping JWKS key"),
            }
        }
        if keys.is_empty() {
            return Err(err("holds no RS256 or ES256 signing key".to_owned()));
        }
        tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
        Ok(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        })
    }
}

/// Turns a JWK into a key with its pinned algorithm, or says why it is not usable. Only RSA
/// (RS256) and EC P-256 (ES256) signing keys are; never a symmetric one.
fn usable_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<(DecodingKey, Algorithm), &'static str> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key");
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(_) => return Err("an EC key not on P-256"),
        _ => return Err("neither RSA nor EC"),
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_ok {
        return Err("declared for an algorithm other than RS256/ES256");
    }
    DecodingKey::from_jwk(jwk)
        .map(|key| (key, alg))
        .map_err(|_| "its parameters do not make a valid key")
}
