//! Certificates and JWT signing keys generated on the spot, for TLS and JWT tests: a test CA,
//! a server certificate it signed for `localhost` and 127.0.0.1, an unrelated second CA (what a
//! misconfigured client would trust), and an ES256 key that signs tokens.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tempfile::TempDir;

/// PEM files in a temporary directory: `ca.pem`, `other-ca.pem`, `server.pem`, `server.key`.
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_params, ca_key, ca_pem) = new_ca("Stigmer Test CA");
        let issuer = Issuer::new(ca_params, &ca_key);
        let server_key = KeyPair::generate().expect("server key");
        // rcgen turns the IP string into an IP address SAN.
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let (_, _, other_ca_pem) = new_ca("Some Other CA");
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        };
        write("ca.pem", ca_pem);
        write("other-ca.pem", other_ca_pem);
        write("server.pem", server_cert.pem());
        write("server.key", server_key.serialize_pem());
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn new_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (params, key, pem)
}

/// Issuer and audience the JWT tests configure.
pub const JWT_ISSUER: &str = "https://issuer.test";
pub const JWT_AUDIENCE: &str = "stigmer";

/// An ES256 signing key (P-256; fast to generate, unlike RSA in a debug build).
pub struct JwtSigner {
    encoding: EncodingKey,
    /// SPKI `PUBLIC KEY` PEM, what the server and runner are configured with.
    pub public_pem: String,
}

impl JwtSigner {
    pub fn new() -> Self {
        let pair = KeyPair::generate().expect("P-256 key");
        Self {
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
                .expect("encoding key"),
            public_pem: pair.public_key_pem(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .expect("sign JWT")
    }

    /// A token valid for an hour, for [`JWT_ISSUER`] and [`JWT_AUDIENCE`].
    pub fn good_token(&self) -> String {
        self.sign(&good_claims())
    }
}

impl Default for JwtSigner {
    fn default() -> Self {
        Self::new()
    }
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims valid for an hour, with [`JWT_ISSUER`] and [`JWT_AUDIENCE`].
pub fn good_claims() -> Value {
    json!({
        "sub": "runner-1",
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 3600,
    })
}

/// `claims` with one claim replaced.
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A well-formed, unsigned JWT (`alg` RS256, fake signature) expiring in an hour: enough for the
/// runner's start-up checks (structure, exp, nbf) when no verification key is configured; a
/// control plane under test accepts it when it is listed among its static keys.
pub fn unsigned_jwt(subject: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = jiff::Timestamp::now().as_second() + 3600;
    format!(
        "{}.{}.{}",
        b64(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(serde_json::json!({"sub": subject, "exp": exp})),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("signature")
    )
}
