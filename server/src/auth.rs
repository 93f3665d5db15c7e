//! Bearer-token check for the Stigmer APIs: one of the static API keys, or (when configured)
//! a JWT that the [`Verifier`] accepts.
//!
//! Static keys have a role ([`Role`]): `Any` keys (`--api-key`, `dummy-local-key` by default)
//! open every API, as before roles existed; a `Runner` key opens only the runner API and a
//! `Client` key only the agent and execution APIs. `stigmer local start` gives the runner and
//! the CLI one each, so a stolen client key cannot `Claim` (and receive secret runtime env),
//! and the runner's key cannot create or read executions. A JWT (cloud mode) opens every API.
//!
//! The gRPC health service is deliberately left outside this check: kubelet gRPC probes (and
//! most load-balancer health checks) cannot send headers, and health answers reveal nothing.
//!
//! The check is a service wrapper ([`Authenticated`]) rather than a tonic interceptor because
//! JWT verification is async (a JWKS may need fetching); wrapping each authenticated service
//! once keeps it out of every handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use stigmer_auth::Verifier;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, header::AUTHORIZATION};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

const REFUSAL: &str = "missing or invalid bearer token";

/// What a static key may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every API (the `--api-key` keys).
    Any,
    /// The runner API only.
    Runner,
    /// The agent and execution APIs only.
    Client,
}

/// The API a wrapped service belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Runner,
    Client,
}

impl Role {
    fn opens(self, api: Api) -> bool {
        matches!(
            (self, api),
            (Role::Any, _) | (Role::Runner, Api::Runner) | (Role::Client, Api::Client)
        )
    }
}

impl Api {
    /// Said to a caller whose key is valid but has the other role. It names roles only,
    /// never the key.
    fn wrong_role(self) -> &'static str {
        match self {
            Api::Runner => {
                "this key may not call the runner API (it is a client key); runners use the runner key"
            }
            Api::Client => {
                "this key may not call the agent and execution APIs (it is a runner key); use the client key"
            }
        }
    }
}

/// What a presented token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Allowed,
    /// A valid key, but not for this API.
    WrongRole,
    None,
}

/// Decides whether a call's `authorization` header is acceptable. Cheap to clone.
#[derive(Clone)]
pub struct BearerAuth {
    keys: Arc<[(Vec<u8>, Role)]>,
    jwt: Option<Arc<Verifier>>,
}

impl BearerAuth {
    pub fn new<'a>(
        keys: impl IntoIterator<Item = (&'a str, Role)>,
        jwt: Option<Arc<Verifier>>,
    ) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|(key, role)| (key.as_bytes().to_vec(), role))
                .collect(),
            jwt,
        }
    }

    fn matches(&self, header: Option<&[u8]>, api: Api) -> Match {
        let Some(token) = header.and_then(bearer_token) else {
            return Match::None;
        };
        // Check every key, without stopping at a match, so timing does not tell which key
        // (or how many) matched.
        let (allowed, known) =
            self.keys
                .iter()
                .fold((false, false), |(allowed, known), (key, role)| {
                    let equal = constant_time_eq(key, token);
                    (allowed | (equal & role.opens(api)), known | equal)
                });
        match (allowed, known) {
            (true, _) => Match::Allowed,
            (false, true) => Match::WrongRole,
            (false, false) => Match::None,
        }
    }

    /// Accepts a static key whose role opens `api` (constant time) or, when configured, a
    /// verified JWT. A valid key of the other role is PERMISSION_DENIED. Refusals never
    /// contain what was sent: it may be a real credential meant for elsewhere.
    pub async fn check(&self, headers: &HeaderMap, api: Api) -> Result<(), Status> {
        let header = headers.get(AUTHORIZATION);
        match self.matches(header.map(|value| value.as_bytes()), api) {
            Match::Allowed => return Ok(()),
            Match::WrongRole => return Err(Status::permission_denied(api.wrong_role())),
            Match::None => {}
        }
        let (Some(verifier), Some(header)) = (&self.jwt, header) else {
            return Err(Status::unauthenticated(REFUSAL));
        };
        // Only the one header is handed over, not a copy of every header of the call.
        let mut only_auth = HeaderMap::with_capacity(1);
        only_auth.insert(AUTHORIZATION, header.clone());
        // `bearer_claims` fails closed and its messages (expired, wrong audience, ...) name the
        // problem without quoting the token, so they are safe and useful to send back.
        stigmer_auth::bearer_claims(&MetadataMap::from_headers(only_auth), verifier)
            .await
            .map(|_claims| ())
    }
}

/// A gRPC service that only sees calls [`BearerAuth`] accepts; others are answered with
/// UNAUTHENTICATED (or UNAVAILABLE when the JWKS cannot be fetched) without reaching it.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: BearerAuth,
    api: Api,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, auth: BearerAuth, api: Api) -> Self {
        Self { inner, auth, api }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The instance polled ready is the one that must be called; leave a fresh clone behind
        // for the next call (the usual tower pattern).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        let api = self.api;
        Box::pin(async move {
            match auth.check(request.headers(), api).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header. The scheme name is
/// case-insensitive (RFC 7235).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares in time that depends only on the lengths, never on where the bytes differ.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let len = expected.len().max(given.len());
    let mut diff = u8::from(expected.len() != given.len());
    for i in 0..len {
        let a = expected.get(i).copied().unwrap_or(0);
        let b = given.get(i).copied().unwrap_or(0);
        diff |= a ^ b;
    }
    diff == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth() -> BearerAuth {
        BearerAuth::new(
            [("dummy-local-key", Role::Any), ("second", Role::Any)],
            None,
        )
    }

    impl BearerAuth {
        fn accepts(&self, header: Option<&[u8]>) -> bool {
            [Api::Runner, Api::Client]
                .into_iter()
                .all(|api| self.matches(header, api) == Match::Allowed)
        }
    }

    #[test]
    fn accepts_any_configured_key() {
        assert!(auth().accepts(Some(b"Bearer dummy-local-key")));
        assert!(auth().accepts(Some(b"bearer second")));
        assert!(auth().accepts(Some(b"Bearer  second ")));
    }

    #[test]
    fn role_keys_open_their_api_only() {
        let auth = BearerAuth::new(
            [
                ("runner-key", Role::Runner),
                ("client-key", Role::Client),
                ("any-key", Role::Any),
            ],
            None,
        );
        let cases = [
            (&b"Bearer runner-key"[..], Api::Runner, Match::Allowed),
            (b"Bearer runner-key", Api::Client, Match::WrongRole),
            (b"Bearer client-key", Api::Client, Match::Allowed),
            (b"Bearer client-key", Api::Runner, Match::WrongRole),
            (b"Bearer any-key", Api::Runner, Match::Allowed),
            (b"Bearer any-key", Api::Client, Match::Allowed),
            (b"Bearer client-ke", Api::Client, Match::None),
        ];
        for (header, api, expected) in cases {
            assert_eq!(
                auth.matches(Some(header), api),
                expected,
                "{} on {api:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[tokio::test]
    async fn a_key_of_the_other_role_is_permission_denied_without_echoing() {
        let auth = BearerAuth::new([("client-secret-key", Role::Client)], None);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer client-secret-key".parse().unwrap());
        let status = auth.check(&headers, Api::Runner).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("client key"), "{status:?}");
        assert!(!format!("{status:?}").contains("client-secret-key"));
        auth.check(&headers, Api::Client).await.unwrap();
    }

    #[test]
    fn refuses_everything_else() {
        for header in [
            &b""[..],
            b"Bearer ",
            b"Bearer wrong",
            b"Bearer dummy-local-ke",
            b"Bearer dummy-local-keyy",
            b"Basic dummy-local-key",
            b"dummy-local-key",
            b"Bearerdummy-local-key",
        ] {
            assert!(
                !auth().accepts(Some(header)),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(!auth().accepts(None));
    }

    #[tokio::test]
    async fn check_answers_unauthenticated_without_echoing() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer leaked-secret".parse().unwrap());
        let status = auth().check(&headers, Api::Client).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), REFUSAL);
        assert!(!format!("{status:?}").contains("leaked-secret"));

        headers.insert(AUTHORIZATION, "Bearer second".parse().unwrap());
        auth().check(&headers, Api::Runner).await.unwrap();
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
