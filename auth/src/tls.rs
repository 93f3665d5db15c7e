//! TLS for the runner ↔ control-plane gRPC connection (tonic over rustls with ring).

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, RootCertStore};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Bound on the TCP connect and on the TLS handshake, so that a black-holed endpoint fails
/// start-up in seconds instead of hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS set-up or connection failure, naming the file or endpoint concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("certificate file {}: {reason}", path.display())]
    CertFile { path: PathBuf, reason: String },
    #[error("private key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a usable server identity: {0}")]
    Identity(String),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Handshake { endpoint: String, reason: String },
    #[error("connecting to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// Client TLS settings: the system's roots (when it has any), the webpki (Mozilla) roots, and,
/// when given, the CAs of `ca_file` (PEM, for a control plane behind a private CA). `domain`
/// overrides the name the server certificate must be valid for (default: the endpoint's host).
pub fn client_tls(
    ca_file: Option<&Path>,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, TlsError> {
    let mut roots = RootCertStore::empty();

    // Loaded here rather than with tonic's `tls-native-roots`, which refuses to connect when the
    // system has no CA bundle (distroless images); here a missing bundle just means webpki only.
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be loaded");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(system_roots = added, "system CA certificates loaded");

    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                reason: format!("a certificate cannot be used as a CA: {e}"),
            })?;
        }
    }

    let mut config = ClientTlsConfig::new()
        .with_webpki_roots()
        .trust_anchors(roots.roots)
        .timeout(CONNECT_TIMEOUT);
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}

/// The PEM text of `path`, checked to hold at least one certificate: for clients that take
/// their CAs as PEM (the Redis client), so that a bad file fails at start-up with the same
/// message as the control plane's CA file.
pub fn read_ca_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_ca_file(path)?;
    std::fs::read(path).map_err(|e| TlsError::CaFile {
        path: path.to_owned(),
        reason: io_reason(&e),
    })
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(io_reason(&e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".to_owned(),
        _ => format!("cannot be read: {e}"),
    }
}

/// Server TLS settings from a PEM certificate chain and a PEM private key. Both files are
/// parsed and checked to belong together here, so that a bad pair fails at start-up rather
/// than on the first handshake.
pub fn server_tls(cert_file: &Path, key_file: &Path) -> Result<ServerTlsConfig, TlsError> {
    let cert_pem = std::fs::read(cert_file).map_err(|e| TlsError::CertFile {
        path: cert_file.to_owned(),
        reason: io_reason(&e),
    })?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertFile {
            path: cert_file.to_owned(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::CertFile {
            path: cert_file.to_owned(),
            reason: "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        });
    }

    let key_pem = std::fs::read(key_file).map_err(|e| TlsError::KeyFile {
        path: key_file.to_owned(),
        reason: io_reason(&e),
    })?;
    // The key's own parse error is not shown: it could quote key material.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::KeyFile {
        path: key_file.to_owned(),
        reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
    })?;

    // A throw-away rustls config, only to have rustls check that key and certificate match.
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Identity(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Identity(e.to_string()))?;

    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(CONNECT_TIMEOUT))
}

/// Connects a channel with TLS, eagerly, so that a bad certificate or CA is reported at
/// start-up with a message that says what to fix (see [`explain_connect_error`]).
pub async fn connect(
    endpoint: &str,
    tls: ClientTlsConfig,
    ca_file: Option<&Path>,
) -> Result<Channel, TlsError> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| TlsError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| TlsError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    ep.connect()
        .await
        .map_err(|e| explain_connect_error(endpoint, ca_file, &e))
}

/// Explains a failed connection or call. Looks through the error's sources for the rustls
/// error and says in plain words what it means (unknown CA, wrong name, expired certificate,
/// plaintext server); anything else is a connection error with the full chain of causes.
/// Works on a `tonic::transport::Error` from `connect` and on a `tonic::Status` from a call on a
/// lazily connected channel.
pub fn explain_connect_error(
    endpoint: &str,
    ca_file: Option<&Path>,
    err: &(dyn StdError + 'static),
) -> TlsError {
    if let Some(tls) = find_rustls_error(err) {
        return TlsError::Handshake {
            endpoint: endpoint.to_owned(),
            reason: explain_rustls(tls, ca_file),
        };
    }
    TlsError::Connect {
        endpoint: endpoint.to_owned(),
        reason: stigmer_contract::error_chain(err),
    }
}

fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls wraps the rustls error in an io::Error, whose `source()` skips the
        // wrapped error itself; look inside explicitly.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn explain_rustls(err: &rustls::Error, ca_file: Option<&Path>) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => match ca_file {
                Some(path) => format!(
                    "the server certificate is not signed by the configured CA ({}) nor by a system or public root",
                    path.display()
                ),
                None => "the server certificate is not signed by a system or public root; \
                         configure the CA file if the control plane uses a private CA"
                    .to_owned(),
            },
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server certificate is not valid for the name connected to ({err}); \
                     fix the endpoint or set the TLS domain name"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server certificate has expired ({err})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the server certificate is not valid yet ({err}); check the clocks")
            }
            _ => format!("the server certificate was refused: {err}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server did not answer with TLS; is it serving plaintext gRPC? ({err})")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (alert {alert:?})")
        }
        _ => err.to_string(),
    }
}
