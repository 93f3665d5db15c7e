//! Authentication pieces shared by the runner and the control plane in cloud mode: JWT
//! inspection and verification ([`jwt`]), a rotating credential read from a file or the
//! environment ([`keyfile`]), TLS settings for the gRPC connection ([`tls`]), and bearer-token
//! authentication of incoming calls ([`bearer`]).
//!
//! Tokens never appear in errors, logs or `Debug` output produced by this crate.

pub mod bearer;
pub mod jwt;
pub mod keyfile;
pub mod tls;

pub use bearer::{bearer_claims, bearer_token};
pub use jwt::{Claims, JwtError, KeySource, TokenInspection, Verifier, VerifierConfig};
pub use keyfile::{TokenSource, TokenSourceError};
pub use tls::{TlsError, client_tls, connect, explain_connect_error, read_ca_pem, server_tls};

/// Installs rustls' ring provider as the process default. reqwest is built without a provider
/// of its own and needs one before its first client; ring is the tree's only provider, so this
/// cannot conflict. Safe to call any number of times.
pub fn ensure_crypto_provider() {
    // Err means a provider is installed already; either way TLS works.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
