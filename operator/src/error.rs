//! Reconcile errors: one variant per pipeline stage, each with the object it concerns.

/// Why a reconcile failed. Conditions the user must fix (an invalid spec, a missing Secret)
/// are not errors: they end the reconcile normally with a `Degraded` status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks metadata the apiserver always sets (name, namespace, uid).
    #[error("AgentRunner is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// Reading a referenced Secret failed for a reason other than its absence.
    #[error("reading Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Server-side apply of an owned object failed.
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Listing owned objects to find orphans failed.
    #[error("listing {kind} in {namespace}: {source}")]
    List {
        kind: &'static str,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Deleting an owned object that is no longer desired failed.
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Reading the Deployment to report status failed.
    #[error("reading Deployment {namespace}/{name}: {source}")]
    ReadDeployment {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Writing the AgentRunner's status failed.
    #[error("writing status of AgentRunner {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    /// Low-cardinality label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "missing_metadata",
            Error::ReadSecret { .. } => "read_secret",
            Error::Apply { .. } => "apply",
            Error::List { .. } => "list",
            Error::Delete { .. } => "delete",
            Error::ReadDeployment { .. } => "read_deployment",
            Error::WriteStatus { .. } => "write_status",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let err = || kube::Error::LinesCodecMaxLineLengthExceeded;
        let all = [
            Error::MissingMetadata("uid"),
            Error::ReadSecret {
                namespace: "n".into(),
                name: "s".into(),
                source: Box::new(err()),
            },
            Error::Apply {
                kind: "Deployment",
                namespace: "n".into(),
                name: "a".into(),
                source: Box::new(err()),
            },
            Error::List {
                kind: "ServiceAccount",
                namespace: "n".into(),
                source: Box::new(err()),
            },
            Error::Delete {
                kind: "PodDisruptionBudget",
                namespace: "n".into(),
                name: "a".into(),
                source: Box::new(err()),
            },
            Error::ReadDeployment {
                namespace: "n".into(),
                name: "a".into(),
                source: Box::new(err()),
            },
            Error::WriteStatus {
                namespace: "n".into(),
                name: "a".into(),
                source: Box::new(err()),
            },
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(
            all[2].to_string(),
            "applying Deployment n/a: Error finding newline character"
        );
    }
}
