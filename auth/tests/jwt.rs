//! JWT verification with real keys: PEM and JWKS, every failure mode, and `checks_made`.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{JwksServer, TestKey, good_claims, now, with};
use serde_json::json;
use stigmer_auth::{JwtError, KeySource, TokenInspection, Verifier, VerifierConfig};

fn pem_verifier(key: &TestKey) -> Verifier {
    Verifier::new(VerifierConfig {
        issuer: Some("https://issuer.test".into()),
        audience: Some("stigmer".into()),
        key: Some(KeySource::PublicKeyPem(key.public_pem.clone())),
    })
    .unwrap()
}

fn assert_no_token(err: &JwtError, token: &str) {
    let text = err.to_string();
    // Each part of the token, not only the whole, must stay out of the message.
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !text.contains(part),
            "error message leaks the token: {text}"
        );
    }
}

#[tokio::test]
async fn valid_es256_token_passes() {
    let key = TestKey::es256();
    let token = key.sign(None, &good_claims());
    let claims = pem_verifier(&key).verify(&token).await.unwrap();
    assert_eq!(claims.sub.as_deref(), Some("runner-1"));
    assert_eq!(claims.aud, vec!["stigmer".to_owned()]);
    assert!(claims.exp.is_some());
}

#[tokio::test]
async fn valid_rs256_token_passes_and_aud_may_be_an_array() {
    let key = TestKey::rs256(0);
    let claims = with(good_claims(), "aud", json!(["other", "stigmer"]));
    let token = key.sign(Some("k1"), &claims);
    let claims = pem_verifier(key).verify(&token).await.unwrap();
    assert_eq!(claims.aud, vec!["other".to_owned(), "stigmer".to_owned()]);
}

#[tokio::test]
async fn expired_token_is_refused_with_its_expiry() {
    let key = TestKey::es256();
    let exp = now() - 3600;
    let token = key.sign(None, &with(good_claims(), "exp", json!(exp)));
    let err = pem_verifier(&key).verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        JwtError::Expired {
            at: jiff::Timestamp::from_second(exp).unwrap()
        }
    );
    assert!(err.to_string().starts_with("token expired at "), "{err}");
    assert_no_token(&err, &token);
}

#[tokio::test]
async fn leeway_tolerates_small_clock_skew_only() {
    let key = TestKey::es256();
    let verifier = pem_verifier(&key);
    let just_expired = key.sign(None, &with(good_claims(), "exp", json!(now() - 10)));
    verifier.verify(&just_expired).await.unwrap();
    let strict = pem_verifier(&key).with_leeway(Duration::ZERO);
    assert!(matches!(
        strict.verify(&just_expired).await,
        Err(JwtError::Expired { .. })
    ));
}

#[tokio::test]
async fn not_yet_valid_token_is_refused() {
    let key = TestKey::es256();
    let nbf = now() + 3600;
    let token = key.sign(None, &with(good_claims(), "nbf", json!(nbf)));
    let err = pem_verifier(&key).verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        JwtError::NotYetValid {
            from: jiff::Timestamp::from_second(nbf).unwrap()
        }
    );
}

#[tokio::test]
async fn token_signed_by_another_key_is_refused() {
    let key = TestKey::es256();
    let other = TestKey::es256();
    let token = other.sign(None, &good_claims());
    let err = pem_verifier(&key).verify(&token).await.unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
    assert_no_token(&err, &token);

    let token = TestKey::rs256(1).sign(None, &good_claims());
    let err = pem_verifier(TestKey::rs256(0))
        .verify(&token)
        .await
        .unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
}

#[tokio::test]
async fn tampered_claims_break_the_signature() {
    let key = TestKey::es256();
    let token = key.sign(None, &good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&with(good_claims(), "sub", json!("admin"))).unwrap());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    let err = pem_verifier(&key).verify(&tampered).await.unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    // The classic attack: HS256 with the server's public key as the HMAC secret.
    let key = TestKey::rs256(0);
    let hmac = jsonwebtoken::EncodingKey::from_secret(key.public_pem.as_bytes());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good_claims(),
        &hmac,
    )
    .unwrap();
    let err = pem_verifier(key).verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        JwtError::WrongAlgorithm {
            expected: "RS256".into(),
            found: "HS256".into()
        }
    );
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let key = TestKey::es256();
    let token = key.sign(None, &with(good_claims(), "aud", json!("someone-else")));
    let err = pem_verifier(&key).verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        JwtError::WrongAudience {
            expected: "stigmer".into()
        }
    );
    // A token without any audience is refused too when one is configured.
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("aud");
    let err = pem_verifier(&key)
        .verify(&key.sign(None, &claims))
        .await
        .unwrap_err();
    assert!(matches!(err, JwtError::WrongAudience { .. }), "{err}");
}

#[tokio::test]
async fn wrong_or_missing_issuer_is_refused() {
    let key = TestKey::es256();
    let token = key.sign(
        None,
        &with(good_claims(), "iss", json!("https://evil.test")),
    );
    let err = pem_verifier(&key).verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        JwtError::WrongIssuer {
            expected: "https://issuer.test".into(),
            found: Some("https://evil.test".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "token issuer is \"https://evil.test\", expected \"https://issuer.test\""
    );

    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("iss");
    let err = pem_verifier(&key)
        .verify(&key.sign(None, &claims))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "token issuer is missing, expected \"https://issuer.test\""
    );
}

#[test]
fn malformed_tokens_have_clear_errors() {
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let header = b64(r#"{"alg":"ES256","typ":"JWT"}"#);
    let payload = b64(&good_claims().to_string());
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "the token is empty"),
        ("not-a-jwt".into(), "expected 3 dot-separated parts"),
        (format!("{header}.{payload}"), "found 2"),
        (format!("{header}.{payload}.c2ln.extra"), "found 4"),
        (format!("{header}.{payload}.a.b.c"), "encrypted JWT (JWE)"),
        (
            format!("!!!.{payload}.c2ln"),
            "header is not valid base64url",
        ),
        (
            format!("{header}.{payload}.c2ln*"),
            "signature is not valid base64url",
        ),
        (
            format!("{}.{payload}.c2ln", b64("hello")),
            "header is not valid JSON",
        ),
        (
            format!("{}.{payload}.c2ln", b64("[1,2]")),
            "header is JSON but not an object",
        ),
        (
            format!("{header}.{}.c2ln", b64("{\"exp\":")),
            "payload is not valid JSON",
        ),
        (
            format!("{}.{payload}.c2ln", b64(r#"{"typ":"JWT"}"#)),
            "header has no `alg`",
        ),
        (
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"none"}"#)),
            "alg: none",
        ),
        (format!("{header}.{payload}."), "signature part is empty"),
        (
            format!("{header}.{}.c2ln", b64(r#"{"exp":"tomorrow"}"#)),
            "`exp` claim is not a number",
        ),
        (
            format!("{header}.{}.c2ln", b64(r#"{"aud":5}"#)),
            "`aud` claim is neither",
        ),
    ];
    for (token, expected) in cases {
        let err = TokenInspection::parse(&token).unwrap_err();
        assert!(matches!(err, JwtError::Malformed(_)), "{token}: {err:?}");
        assert!(
            err.to_string().contains(expected),
            "{token:?}: {err} does not contain {expected:?}"
        );
        assert_no_token(&err, &token);
    }
}

#[test]
fn inspection_reads_header_and_claims_without_a_key() {
    let key = TestKey::es256();
    let token = key.sign(Some("kid-7"), &good_claims());
    let inspection = TokenInspection::parse(&format!("  {token}\n")).unwrap();
    assert_eq!(inspection.alg, "ES256");
    assert_eq!(inspection.kid.as_deref(), Some("kid-7"));
    assert_eq!(
        inspection.claims.iss.as_deref(),
        Some("https://issuer.test")
    );
    inspection
        .check_times(jiff::Timestamp::now(), Duration::from_secs(30))
        .unwrap();

    // No exp: refused by the time check, which the runner relies on.
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("exp");
    let inspection = TokenInspection::parse(&key.sign(None, &claims)).unwrap();
    let err = inspection
        .check_times(jiff::Timestamp::now(), Duration::from_secs(30))
        .unwrap_err();
    assert!(err.to_string().contains("no `exp` claim"), "{err}");
}

#[tokio::test]
async fn without_a_key_structure_and_claims_are_still_checked() {
    let verifier = Verifier::new(VerifierConfig {
        issuer: Some("https://issuer.test".into()),
        audience: None,
        key: None,
    })
    .unwrap();
    assert!(!verifier.verifies_signature());
    assert_eq!(verifier.checks_made(), "structure, exp, nbf, iss");
    // Any signature passes (there is nothing to check it against) ...
    let token = TestKey::es256().sign(None, &good_claims());
    verifier.verify(&token).await.unwrap();
    // ... but expiry and issuer do not.
    let expired = TestKey::es256().sign(None, &with(good_claims(), "exp", json!(now() - 600)));
    assert!(matches!(
        verifier.verify(&expired).await,
        Err(JwtError::Expired { .. })
    ));
}

#[test]
fn checks_made_describes_the_configuration() {
    let es = TestKey::es256();
    assert_eq!(
        pem_verifier(&es).checks_made(),
        "structure, exp, nbf, iss, aud, signature (ES256, EC P-256 public key)"
    );
    assert_eq!(
        pem_verifier(TestKey::rs256(0)).checks_made(),
        "structure, exp, nbf, iss, aud, signature (RS256, RSA public key)"
    );
    let jwks = Verifier::new(VerifierConfig {
        issuer: None,
        audience: Some("stigmer".into()),
        key: Some(KeySource::Jwks {
            url: "https://issuer.test/.well-known/jwks.json".into(),
            refresh: Duration::from_secs(300),
        }),
    })
    .unwrap();
    assert_eq!(
        jwks.checks_made(),
        "structure, exp, nbf, aud, signature (JWKS https://issuer.test/.well-known/jwks.json)"
    );
    // Debug output is the description, never key material.
    assert!(format!("{jwks:?}").contains("JWKS https://issuer.test"));
}

#[test]
fn bad_or_unsupported_pem_keys_fail_at_construction() {
    let err = Verifier::new(VerifierConfig {
        key: Some(KeySource::PublicKeyPem("not a key".into())),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, JwtError::Key(_)), "{err:?}");

    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let err = Verifier::new(VerifierConfig {
        key: Some(KeySource::PublicKeyPem(p384.public_key_pem())),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("not on P-256"), "{err}");
}

fn jwks_verifier(url: &str, refresh: Duration) -> Verifier {
    Verifier::new(VerifierConfig {
        issuer: Some("https://issuer.test".into()),
        audience: Some("stigmer".into()),
        key: Some(KeySource::Jwks {
            url: url.to_owned(),
            refresh,
        }),
    })
    .unwrap()
}

#[tokio::test]
async fn jwks_verifies_by_kid_and_refuses_unknown_kids() {
    let es = TestKey::es256();
    let rs = TestKey::rs256(0);
    let server = JwksServer::start(vec![es.jwk("ec-1"), rs.jwk("rsa-1")]).await;
    let verifier = jwks_verifier(&server.url, Duration::from_secs(300));
    verifier.prefetch().await.unwrap();
    assert_eq!(server.hits(), 1);

    verifier
        .verify(&es.sign(Some("ec-1"), &good_claims()))
        .await
        .unwrap();
    verifier
        .verify(&rs.sign(Some("rsa-1"), &good_claims()))
        .await
        .unwrap();
    // Both served from the cache.
    assert_eq!(server.hits(), 1);

    // A kid the set does not hold: UnknownKid. The set was fetched moments ago, so the issuer is
    // not asked again (at most one refetch per min(refresh, 30 s)), however many such tokens come.
    let stranger = TestKey::es256().sign(Some("nope"), &good_claims());
    for _ in 0..5 {
        let err = verifier.verify(&stranger).await.unwrap_err();
        assert_eq!(
            err,
            JwtError::UnknownKid {
                kid: Some("nope".into())
            }
        );
    }
    assert_eq!(server.hits(), 1);
    assert_eq!(
        verifier.verify(&stranger).await.unwrap_err().to_string(),
        "token key id \"nope\" is not in the issuer's JWKS"
    );

    // A kid whose key is in the set but signed by someone else: bad signature, not unknown.
    let forged = TestKey::es256().sign(Some("ec-1"), &good_claims());
    assert_eq!(
        verifier.verify(&forged).await.unwrap_err(),
        JwtError::BadSignature
    );

    // Without a kid and with two keys to choose from, the token is refused.
    let err = verifier
        .verify(&es.sign(None, &good_claims()))
        .await
        .unwrap_err();
    assert_eq!(err, JwtError::UnknownKid { kid: None });
}

#[tokio::test]
async fn jwks_key_rotation_is_picked_up_on_unknown_kid() {
    let old = TestKey::es256();
    let server = JwksServer::start(vec![old.jwk("old")]).await;
    // refresh bounds the refetch interval, so a short one keeps the test fast.
    let verifier = jwks_verifier(&server.url, Duration::from_millis(200));
    verifier
        .verify(&old.sign(Some("old"), &good_claims()))
        .await
        .unwrap();

    assert_eq!(server.hits(), 1);

    // The issuer rotates: the new key is published, tokens start naming it.
    let new = TestKey::es256();
    server.set.lock().unwrap().keys.push(new.jwk("new"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier
        .verify(&new.sign(Some("new"), &good_claims()))
        .await
        .unwrap();
    assert_eq!(server.hits(), 2);
    // The old key is still in the set and still works.
    verifier
        .verify(&old.sign(Some("old"), &good_claims()))
        .await
        .unwrap();
}

#[tokio::test]
async fn jwks_with_only_unusable_keys_or_unreachable_is_a_jwks_error() {
    // A symmetric key must never be accepted from a JWKS.
    let hmac = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &jsonwebtoken::EncodingKey::from_secret(b"shared-secret"),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    let server = JwksServer::start(vec![hmac]).await;
    let err = jwks_verifier(&server.url, Duration::from_secs(60))
        .prefetch()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds no RS256 or ES256 signing key"),
        "{err}"
    );

    // Nothing listens on port 9 of loopback.
    let url = "http://127.0.0.1:9/jwks.json";
    let err = jwks_verifier(url, Duration::from_secs(60))
        .verify(&TestKey::es256().sign(Some("k"), &good_claims()))
        .await
        .unwrap_err();
    assert!(matches!(err, JwtError::Jwks { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!("JWKS {url}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn bearer_claims_authenticates_grpc_metadata() {
    use stigmer_auth::bearer_claims;
    use tonic::metadata::MetadataMap;

    let key = TestKey::es256();
    let verifier = pem_verifier(&key);
    let token = key.sign(None, &good_claims());

    let mut md = MetadataMap::new();
    md.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let claims = bearer_claims(&md, &verifier).await.unwrap();
    assert_eq!(claims.sub.as_deref(), Some("runner-1"));

    let status = bearer_claims(&MetadataMap::new(), &verifier)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("missing `authorization`"));

    let mut md = MetadataMap::new();
    md.insert("authorization", format!("Basic {token}").parse().unwrap());
    let status = bearer_claims(&md, &verifier).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(!status.message().contains(&token));

    let expired = key.sign(None, &with(good_claims(), "exp", json!(now() - 600)));
    let mut md = MetadataMap::new();
    md.insert(
        "authorization",
        format!("bearer {expired}").parse().unwrap(),
    );
    let status = bearer_claims(&md, &verifier).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("token expired at"),
        "{}",
        status.message()
    );

    // A verifier that checks no signature authenticates nobody.
    let keyless = Verifier::new(VerifierConfig::default()).unwrap();
    let mut md = MetadataMap::new();
    md.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = bearer_claims(&md, &keyless).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
