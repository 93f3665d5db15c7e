//! Every Kubernetes API call the operator makes, as RBAC rules (plus the one permission an
//! admission plugin checks on its behalf, `agentrunners/finalizers`). The Helm chart's
//! ClusterRole is tested against this table, and the mocked-apiserver tests check that
//! every request they see is allowed by it, so the table cannot silently fall behind.

/// One RBAC rule: an API group, a resource (with `/subresource` where needed) and verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource, e.g. `deployments` or `agentrunners/status`.
    pub resource: &'static str,
    /// Verbs used.
    pub verbs: &'static [&'static str],
}

/// The operator's API calls.
pub const RULES: &[Rule] = &[
    // The watched resource, its status, and the CRD check at start-up (a list).
    Rule {
        group: "agentic.stigmer.ai",
        resource: "agentrunners",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        group: "agentic.stigmer.ai",
        resource: "agentrunners/status",
        verbs: &["get", "patch"],
    },
    // Not a call the operator makes: the owner reference on every owned object sets
    // `blockOwnerDeletion`, and the OwnerReferencesPermissionEnforcement admission plugin
    // (enabled on OpenShift and many hardened clusters) then requires `update` on the
    // owner's `finalizers` subresource, or it refuses the apply with 403.
    Rule {
        group: "agentic.stigmer.ai",
        resource: "agentrunners/finalizers",
        verbs: &["update"],
    },
    // Owned objects: watched to repair drift, server-side applied (patch, which creates
    // when absent and so needs create too), orphans listed and deleted.
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch", "create", "patch"],
    },
    Rule {
        group: "",
        resource: "services",
        verbs: &["list", "watch", "create", "patch"],
    },
    Rule {
        group: "",
        resource: "serviceaccounts",
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["list", "watch", "create", "patch"],
    },
    Rule {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    // Referenced Secrets: read to check keys and hash values, watched to roll on rotation.
    Rule {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
    },
    // Warning events on the AgentRunner (patch updates an event series).
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
    // Leader election.
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
    },
];

/// Whether the table allows `verb` on `group`/`resource`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES
        .iter()
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
}

/// The request a path and method stand for, as (group, resource, verb); `None` for paths
/// that are not resource requests. Used by tests that watch the operator's traffic.
pub fn classify(method: &str, path_and_query: &str) -> Option<(String, String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (group, rest) = rest;
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watching = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_owned(), resource, verb.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests() {
        let c = |m, p| classify(m, p).expect("resource request");
        assert_eq!(
            c(
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/x?fieldManager=f&force=true"
            ),
            ("apps".into(), "deployments".into(), "patch".into())
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/a/secrets/s"),
            ("".into(), "secrets".into(), "get".into())
        );
        assert_eq!(
            c("GET", "/api/v1/secrets?watch=true"),
            ("".into(), "secrets".into(), "watch".into())
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/agentic.stigmer.ai/v1alpha1/namespaces/a/agentrunners/x/status"
            ),
            (
                "agentic.stigmer.ai".into(),
                "agentrunners/status".into(),
                "patch".into()
            )
        );
        assert_eq!(
            c(
                "GET",
                "/apis/policy/v1/namespaces/a/poddisruptionbudgets?labelSelector=x"
            ),
            (
                "policy".into(),
                "poddisruptionbudgets".into(),
                "list".into()
            )
        );
        assert!(classify("GET", "/version").is_none());
    }

    #[test]
    fn table_allows_what_it_lists_only() {
        assert!(allows("apps", "deployments", "patch"));
        assert!(!allows("apps", "deployments", "delete"));
        assert!(!allows("", "secrets", "patch"));
        assert!(!allows("agentic.stigmer.ai", "agentrunners", "update"));
    }

    #[test]
    fn owner_references_may_block_owner_deletion() {
        // What OwnerReferencesPermissionEnforcement checks before it admits an object whose
        // owner reference sets blockOwnerDeletion (validate's owner reference does: see
        // validate::tests::the_owner_reference_blocks_owner_deletion).
        assert!(allows(
            "agentic.stigmer.ai",
            "agentrunners/finalizers",
            "update"
        ));
    }
}
