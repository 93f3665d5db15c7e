//! Dereference step: read the Secrets an AgentRunner names, check every referenced key
//! exists, and digest their values so that a rotated credential changes the pod template.
//!
//! Secret values never leave this module: the digest is a one-way hash and errors name
//! only Secrets and keys.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};

use crate::crd::{AgentRunner, SecretKeyRef};
use crate::error::Error;
use crate::status::BlockedReason;

/// Hash of the values of every referenced Secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsDigest(pub String);

/// A referenced Secret or key that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret {
    /// Spec path of the reference, e.g. `spec.cloud.jwtSecretRef`.
    pub field: &'static str,
    /// Secret name.
    pub name: String,
    /// Key in the Secret.
    pub key: String,
    /// Whether the Secret exists (so only the key is missing).
    pub secret_exists: bool,
}

impl MissingSecret {
    /// Condition and event reason.
    pub fn reason(&self) -> BlockedReason {
        if self.secret_exists {
            BlockedReason::SecretKeyNotFound
        } else {
            BlockedReason::SecretNotFound
        }
    }
}

impl fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret_exists {
            write!(
                f,
                "key \"{}\" not found in Secret \"{}\" (referenced by {})",
                self.key, self.name, self.field
            )
        } else {
            write!(
                f,
                "Secret \"{}\" not found (key \"{}\" referenced by {})",
                self.name, self.key, self.field
            )
        }
    }
}

/// Names of the referenced Secrets, sorted and without duplicates.
pub fn referenced_names(runner: &AgentRunner) -> Vec<String> {
    let mut names: Vec<String> = runner
        .secret_refs()
        .into_iter()
        .map(|(_, r)| r.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Read the named Secrets; absent ones are simply left out of the map.
pub async fn fetch(
    api: &Api<Secret>,
    namespace: &str,
    names: &[String],
) -> Result<BTreeMap<String, Secret>, Error> {
    let mut found = BTreeMap::new();
    for name in names {
        let secret = api
            .get_opt(name)
            .await
            .map_err(|source| Error::ReadSecret {
                namespace: namespace.to_owned(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        if let Some(secret) = secret {
            found.insert(name.clone(), secret);
        }
    }
    Ok(found)
}

/// The named Secrets as the watch cache holds them; absent ones are left out of the map.
pub fn from_cache(
    store: &Store<Secret>,
    namespace: &str,
    names: &[String],
) -> BTreeMap<String, Secret> {
    names
        .iter()
        .filter_map(|name| {
            let secret = store.get(&ObjectRef::new(name).within(namespace))?;
            Some((name.clone(), (*secret).clone()))
        })
        .collect()
}

/// Check every reference against `secrets` and digest the referenced values.
///
/// Only referenced keys enter the digest, so editing an unrelated key of a shared Secret
/// does not roll the runners.
pub fn resolve(
    runner: &AgentRunner,
    secrets: &BTreeMap<String, Secret>,
) -> Result<SecretsDigest, Vec<MissingSecret>> {
    let mut refs: Vec<(&'static str, &SecretKeyRef)> = runner.secret_refs();
    refs.sort_by(|a, b| (&a.1.name, &a.1.key).cmp(&(&b.1.name, &b.1.key)));
    let mut hasher = Sha256::new();
    let mut missing = Vec::new();
    for (field, r) in refs {
        match lookup(secrets, r) {
            Lookup::Found(value) => {
                // Length-prefix every part so that ("ab","c") and ("a","bc") hash differently.
                for part in [r.name.as_bytes(), r.key.as_bytes(), value] {
                    hasher.update((part.len() as u64).to_be_bytes());
                    hasher.update(part);
                }
            }
            Lookup::NoKey => missing.push(MissingSecret {
                field,
                name: r.name.clone(),
                key: r.key.clone(),
                secret_exists: true,
            }),
            Lookup::NoSecret => missing.push(MissingSecret {
                field,
                name: r.name.clone(),
                key: r.key.clone(),
                secret_exists: false,
            }),
        }
    }
    if missing.is_empty() {
        Ok(SecretsDigest(hex(&hasher.finalize()[..16])))
    } else {
        Err(missing)
    }
}

enum Lookup<'a> {
    Found(&'a [u8]),
    NoKey,
    NoSecret,
}

fn lookup<'a>(secrets: &'a BTreeMap<String, Secret>, r: &SecretKeyRef) -> Lookup<'a> {
    let Some(secret) = secrets.get(&r.name) else {
        return Lookup::NoSecret;
    };
    // `stringData` is write-only on the apiserver, but objects built by hand (tests, dry
    // runs) may carry it, so it counts as data.
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(&r.key)) {
        return Lookup::Found(&v.0);
    }
    match secret.string_data.as_ref().and_then(|d| d.get(&r.key)) {
        Some(v) => Lookup::Found(v.as_bytes()),
        None => Lookup::NoKey,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentRunnerSpec, LlmProvider, LlmSpec};
    use k8s_openapi::ByteString;

    fn runner_with_llm_key(name: &str, key: &str) -> AgentRunner {
        AgentRunner::new(
            "demo",
            AgentRunnerSpec {
                llm: Some(LlmSpec {
                    provider: Some(LlmProvider::Anthropic),
                    api_key_secret_ref: Some(SecretKeyRef {
                        name: name.into(),
                        key: key.into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn secret(name: &str, pairs: &[(&str, &str)]) -> (String, Secret) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        (name.to_owned(), s)
    }

    #[test]
    fn digest_changes_with_referenced_values_only() {
        let ar = runner_with_llm_key("llm", "api-key");
        let a = resolve(
            &ar,
            &[secret("llm", &[("api-key", "one"), ("other", "x")])].into(),
        )
        .expect("found");
        let b = resolve(
            &ar,
            &[secret("llm", &[("api-key", "one"), ("other", "y")])].into(),
        )
        .expect("found");
        let c = resolve(&ar, &[secret("llm", &[("api-key", "two")])].into()).expect("found");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.0.len(), 32);
    }

    #[test]
    fn missing_secret_and_missing_key_are_told_apart() {
        let ar = runner_with_llm_key("llm", "api-key");
        let none = resolve(&ar, &BTreeMap::new()).expect_err("missing");
        assert_eq!(none[0].reason(), BlockedReason::SecretNotFound);
        assert_eq!(
            none[0].to_string(),
            "Secret \"llm\" not found (key \"api-key\" referenced by spec.llm.apiKeySecretRef)"
        );
        let nokey = resolve(&ar, &[secret("llm", &[("other", "x")])].into()).expect_err("missing");
        assert_eq!(nokey[0].reason(), BlockedReason::SecretKeyNotFound);
        assert!(
            nokey[0]
                .to_string()
                .starts_with("key \"api-key\" not found in Secret \"llm\"")
        );
    }

    #[test]
    fn no_references_give_a_stable_digest() {
        let ar = AgentRunner::new("demo", AgentRunnerSpec::default());
        assert_eq!(
            resolve(&ar, &BTreeMap::new()),
            resolve(&ar, &BTreeMap::new())
        );
        assert!(referenced_names(&ar).is_empty());
    }
}
