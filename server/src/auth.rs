//! Bearer-token check for the Stigmer APIs.
//!
//! The gRPC health service is deliberately left outside this check: kubelet gRPC probes (and
//! most load-balancer health checks) cannot send headers, and health answers reveal nothing.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

const REFUSAL: &str = "missing or invalid bearer token";

#[derive(Clone)]
pub struct BearerAuth {
    keys: Arc<[Vec<u8>]>,
}

impl BearerAuth {
    pub fn new(keys: &[String]) -> Self {
        Self {
            keys: keys.iter().map(|key| key.as_bytes().to_vec()).collect(),
        }
    }

    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(token) = header.and_then(bearer_token) else {
            return false;
        };
        // Check every key, without stopping at a match, so timing does not tell which key
        // (or how many) matched.
        self.keys
            .iter()
            .fold(false, |found, key| found | constant_time_eq(key, token))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        if self.accepts(header) {
            Ok(request)
        } else {
            // Never echo what was sent: it may be a real credential meant for elsewhere.
            Err(Status::unauthenticated(REFUSAL))
        }
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
        BearerAuth::new(&["dummy-local-key".to_string(), "second".to_string()])
    }

    #[test]
    fn accepts_any_configured_key() {
        assert!(auth().accepts(Some(b"Bearer dummy-local-key")));
        assert!(auth().accepts(Some(b"bearer second")));
        assert!(auth().accepts(Some(b"Bearer  second ")));
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

    #[test]
    fn interceptor_answers_unauthenticated_without_echoing() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer leaked-secret".parse().unwrap());
        let status = auth().call(request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), REFUSAL);
        assert!(!format!("{status:?}").contains("leaked-secret"));
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
