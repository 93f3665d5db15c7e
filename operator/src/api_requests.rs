//! Counts every request the operator's Kubernetes client sends, by verb and resource, so that
//! what a reconcile costs the API server can be read off `/metrics`
//! (`agentrunner_operator_api_requests_total`) instead of guessed. The count is taken in the
//! client's tower stack, below every `Api` call, so nothing the operator sends escapes it.

use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{Method, Request};
use kube::client::ClientBuilder;
use kube::{Client, Config};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb: get, list, watch, create, update, patch, apply, delete,
    /// deletecollection (`other` for a path that is not a resource).
    pub verb: String,
    /// Resource plural, with `/subresource` when there is one (`agentrunners/status`).
    pub resource: String,
}

/// The counter family, shared by the layer and the registry.
pub type Requests = Family<RequestLabels, Counter>;

/// A client for `config` whose every request is counted in `requests`.
pub fn counted_client(config: Config, requests: &Requests) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountLayer {
            requests: requests.clone(),
        })
        .build())
}

/// Tower layer that counts requests.
#[derive(Clone)]
pub struct CountLayer {
    requests: Requests,
}

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            requests: self.requests.clone(),
        }
    }
}

/// The counting service.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: Requests,
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let apply = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let labels = classify(
            request.method(),
            request.uri().path(),
            request.uri().query(),
            apply,
        );
        self.requests.get_or_create(&labels).inc();
        self.inner.call(request)
    }
}

/// Verb and resource of a request to the Kubernetes API, from its method and path
/// (`/api/v1/...` or `/apis/<group>/<version>/...`, namespaced or not).
pub fn classify(method: &Method, path: &str, query: Option<&str>, apply: bool) -> RequestLabels {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return other(),
    };
    // `namespaces/<ns>` alone is the Namespace object itself.
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return other(),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) if apply => "apply",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    };
    RequestLabels {
        verb: verb.to_owned(),
        resource,
    }
}

fn other() -> RequestLabels {
    RequestLabels {
        verb: "other".to_owned(),
        resource: "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: Method, path: &str, query: Option<&str>, apply: bool) -> (String, String) {
        let l = classify(&method, path, query, apply);
        (l.verb, l.resource)
    }

    fn pair(verb: &str, resource: &str) -> (String, String) {
        (verb.to_owned(), resource.to_owned())
    }

    #[test]
    fn verbs_and_resources_come_from_method_and_path() {
        let ar = "/apis/agentic.stigmer.ai/v1alpha1/namespaces/ns/agentrunners";
        let cases = [
            (
                c(Method::GET, ar, None, false),
                pair("list", "agentrunners"),
            ),
            (
                c(Method::GET, ar, Some("watch=true&resourceVersion=1"), false),
                pair("watch", "agentrunners"),
            ),
            (
                c(Method::GET, &format!("{ar}/r"), None, false),
                pair("get", "agentrunners"),
            ),
            (
                c(Method::PATCH, &format!("{ar}/r/status"), None, false),
                pair("patch", "agentrunners/status"),
            ),
            (
                c(
                    Method::PATCH,
                    "/apis/apps/v1/namespaces/ns/deployments/r",
                    Some("fieldManager=op&force=true"),
                    true,
                ),
                pair("apply", "deployments"),
            ),
            (
                c(
                    Method::DELETE,
                    "/api/v1/namespaces/ns/configmaps/r",
                    None,
                    false,
                ),
                pair("delete", "configmaps"),
            ),
            (
                c(
                    Method::DELETE,
                    "/api/v1/namespaces/ns/configmaps",
                    None,
                    false,
                ),
                pair("deletecollection", "configmaps"),
            ),
            (
                c(Method::POST, "/api/v1/namespaces", None, false),
                pair("create", "namespaces"),
            ),
            (
                c(Method::GET, "/api/v1/namespaces/ns", None, false),
                pair("get", "namespaces"),
            ),
            (
                c(Method::GET, "/api/v1/secrets", Some("watch=1"), false),
                pair("watch", "secrets"),
            ),
            (
                c(
                    Method::PUT,
                    "/apis/coordination.k8s.io/v1/namespaces/ns/leases/op",
                    None,
                    false,
                ),
                pair("update", "leases"),
            ),
            (
                c(Method::GET, "/version", None, false),
                pair("other", "other"),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn the_layer_counts_each_request_it_passes_on() {
        use tower::ServiceExt;
        let requests = Requests::default();
        let inner =
            tower::service_fn(|_req: Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
        let mut svc = CountLayer {
            requests: requests.clone(),
        }
        .layer(inner);
        for _ in 0..3 {
            let req = Request::get("/api/v1/namespaces/ns/secrets")
                .body(())
                .expect("request");
            svc.ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("call");
        }
        let labels = RequestLabels {
            verb: "list".into(),
            resource: "secrets".into(),
        };
        assert_eq!(requests.get_or_create(&labels).get(), 3);
    }
}
