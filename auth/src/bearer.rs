//! Authentication of incoming gRPC calls by `authorization: Bearer <jwt>`.
//!
//! A tonic interceptor is synchronous, and a JWKS may need fetching, so this is an async
//! function for the control plane to call at the top of each handler (or from an async layer).

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::jwt::{Claims, JwtError, Verifier};

/// The token of `authorization: Bearer <token>`, or `unauthenticated` saying what is missing.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing `authorization` metadata"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("`authorization` metadata is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| Status::unauthenticated("`authorization` is not `Bearer <token>`"))?;
    // The scheme is case-insensitive (RFC 7235).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Status::unauthenticated(
            "`authorization` is not a Bearer token",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Status::unauthenticated(
            "`authorization` has an empty token",
        ));
    }
    Ok(token)
}

/// Verifies the bearer token of a call and returns its claims.
///
/// Fails closed: a verifier without a key (which checks no signature) authenticates nobody, so
/// a misconfigured control plane refuses calls instead of trusting any well-formed token.
/// JWKS outages answer `unavailable` (retryable); every other failure is `unauthenticated` with
/// the reason, which never contains the token.
pub async fn bearer_claims(metadata: &MetadataMap, verifier: &Verifier) -> Result<Claims, Status> {
    if !verifier.verifies_signature() {
        return Err(Status::unauthenticated(
            "the server has no key to verify tokens with",
        ));
    }
    let token = bearer_token(metadata)?;
    verifier.verify(token).await.map_err(|e| match e {
        JwtError::Jwks { .. } => Status::unavailable(e.to_string()),
        JwtError::Key(_) => Status::internal(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    })
}
