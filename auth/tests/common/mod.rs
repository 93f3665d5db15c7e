//! Test keys, tokens and a JWKS server, all generated on the spot.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key with its public half in PEM and as a JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub public_pem: String,
}

impl TestKey {
    pub fn es256() -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        Self {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
        }
    }

    /// RSA key generation is slow in a debug build, so each test binary makes two at most.
    pub fn rs256(which: usize) -> &'static Self {
        static KEYS: [OnceLock<TestKey>; 2] = [OnceLock::new(), OnceLock::new()];
        KEYS[which].get_or_init(|| {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
            let public = rsa::RsaPublicKey::from(&private);
            let private_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
            Self {
                alg: Algorithm::RS256,
                encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
                public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
            }
        })
    }

    pub fn jwk(&self, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }

    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims valid for an hour, with the issuer and audience the tests configure.
pub fn good_claims() -> Value {
    json!({
        "sub": "runner-1",
        "iss": "https://issuer.test",
        "aud": "stigmer",
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 3600,
    })
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A JWKS served over HTTP on loopback; the set can be changed and requests are counted.
pub struct JwksServer {
    pub url: String,
    pub set: Arc<Mutex<JwkSet>>,
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(keys: Vec<Jwk>) -> Self {
        let set = Arc::new(Mutex::new(JwkSet { keys }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (set.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::to_value(&*s.lock().unwrap()).unwrap();
                    axum::Json(body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/jwks.json"),
            set,
            hits,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
