//! The token source: reading, rotation through a Kubernetes-style Secret volume, and refusal of
//! a bad rotated token.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{TestKey, good_claims, now, with};
use serde_json::json;
use stigmer_auth::{KeySource, TokenSource, TokenSourceError, Verifier, VerifierConfig};

fn verifier(key: &TestKey) -> Arc<Verifier> {
    Arc::new(
        Verifier::new(VerifierConfig {
            issuer: Some("https://issuer.test".into()),
            audience: Some("stigmer".into()),
            key: Some(KeySource::PublicKeyPem(key.public_pem.clone())),
        })
        .unwrap(),
    )
}

/// Writes `token` the way the kubelet updates a Secret volume: the data goes into a new
/// timestamped directory, a `..data` symlink is swapped to it atomically (rename), and the
/// visible `token` file is a symlink through `..data` that never changes.
fn kube_write(dir: &Path, generation: u32, token: &str) {
    let data_dir = dir.join(format!("..2026_01_01_00_00_0{generation}"));
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("token"), format!("{token}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data_dir.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let visible = dir.join("token");
    if !visible.exists() {
        std::os::unix::fs::symlink("..data/token", &visible).unwrap();
    }
    // The kubelet removes the previous generation after the swap.
    if generation > 0 {
        let old = dir.join(format!("..2026_01_01_00_00_0{}", generation - 1));
        std::fs::remove_dir_all(old).unwrap();
    }
}

#[tokio::test]
async fn reads_a_token_file_and_picks_up_a_rotation() {
    let key = TestKey::es256();
    let dir = tempfile::tempdir().unwrap();
    let first = key.sign(None, &with(good_claims(), "sub", json!("first")));
    kube_write(dir.path(), 0, &first);

    let source = TokenSource::from_file(dir.path().join("token"), verifier(&key))
        .await
        .unwrap();
    assert_eq!(source.current(), first, "the trailing newline is trimmed");
    let first_exp = source.expires_at().unwrap();

    // Unchanged content: nothing to do.
    assert!(!source.reload().await.unwrap());

    let second_claims = with(good_claims(), "exp", json!(now() + 7200));
    let second = key.sign(None, &second_claims);
    kube_write(dir.path(), 1, &second);
    assert!(source.reload().await.unwrap());
    assert_eq!(source.current(), second);
    assert!(source.expires_at().unwrap() > first_exp);

    // Debug output never shows the token.
    let debug = format!("{source:?}");
    assert!(!debug.contains(&second), "{debug}");
    assert!(debug.contains("token"), "{debug}");
}

#[tokio::test]
async fn a_bad_rotated_token_is_refused_and_the_old_one_kept() {
    let key = TestKey::es256();
    let dir = tempfile::tempdir().unwrap();
    let good = key.sign(None, &good_claims());
    kube_write(dir.path(), 0, &good);
    let source = TokenSource::from_file(dir.path().join("token"), verifier(&key))
        .await
        .unwrap();

    // Expired.
    let expired = key.sign(None, &with(good_claims(), "exp", json!(now() - 600)));
    kube_write(dir.path(), 1, &expired);
    let err = source.reload().await.unwrap_err();
    assert!(matches!(err, TokenSourceError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("token expired at"), "{err}");
    assert!(!err.to_string().contains(&expired));
    assert_eq!(source.current(), good);

    // Signed by someone else.
    let forged = TestKey::es256().sign(None, &good_claims());
    kube_write(dir.path(), 2, &forged);
    let err = source.reload().await.unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    assert_eq!(source.current(), good);

    // Garbage, then empty.
    kube_write(dir.path(), 3, "this is not a jwt");
    assert!(source.reload().await.is_err());
    kube_write(dir.path(), 4, "");
    let err = source.reload().await.unwrap_err();
    assert!(matches!(err, TokenSourceError::Empty { .. }), "{err:?}");
    assert_eq!(source.current(), good);

    // The file vanishing (mid-swap, or the Secret deleted) also keeps the old token.
    std::fs::remove_file(dir.path().join("..data")).unwrap();
    let err = source.reload().await.unwrap_err();
    assert!(matches!(err, TokenSourceError::Read { .. }), "{err:?}");
    assert_eq!(source.current(), good);
}

#[tokio::test]
async fn the_watcher_picks_up_a_rotation_by_itself() {
    let key = TestKey::es256();
    let dir = tempfile::tempdir().unwrap();
    kube_write(dir.path(), 0, &key.sign(None, &good_claims()));
    let source = TokenSource::from_file(dir.path().join("token"), verifier(&key))
        .await
        .unwrap();
    let watcher = source.watch(Duration::from_millis(50));

    let next = key.sign(None, &with(good_claims(), "sub", json!("next")));
    kube_write(dir.path(), 1, &next);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while source.current() != next {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The watcher ends by itself once the source is gone.
    drop(source);
    tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_invalid_initial_token_fails_start_up() {
    let key = TestKey::es256();
    let expired = key.sign(None, &with(good_claims(), "exp", json!(now() - 600)));
    let err = TokenSource::from_static(expired.clone(), verifier(&key))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("the token from STIGMER_API_KEY is invalid: token expired at"),
        "{text}"
    );
    assert!(!text.contains(&expired));

    let missing = Path::new("/nonexistent/stigmer/token");
    let err = TokenSource::from_file(missing, verifier(&key))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading the token file /nonexistent/stigmer/token"),
        "{err}"
    );
}

#[tokio::test]
async fn a_static_token_reports_its_expiry_and_never_reloads() {
    let key = TestKey::es256();
    // Five minutes left: within the warning window (the warning itself goes to the log).
    let exp = now() + 300;
    let token = key.sign(None, &with(good_claims(), "exp", json!(exp)));
    let source = TokenSource::from_static(token.clone(), verifier(&key))
        .await
        .unwrap();
    assert_eq!(source.expires_at().unwrap().as_second(), exp);
    assert!(source.path().is_none());
    assert!(!source.reload().await.unwrap());
    source.warn_if_expiring();
    source.warn_if_expiring();
    assert_eq!(source.current(), token);
}
