//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api_requests::Requests;

/// Label of the failures counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label()`, or the reason a reconcile was blocked.
    pub error: String,
}

/// The operator's metrics and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    api_requests: Requests,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `agentrunner_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentrunner_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let leader = Gauge::default();
        let api_requests = Requests::default();
        registry.register(
            "reconciles",
            "AgentRunner reconciles started",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed or were blocked, by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb and resource",
            api_requests.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            api_requests,
        }
    }

    /// The API request counter, for [`crate::api_requests::counted_client`].
    pub fn api_requests(&self) -> &Requests {
        &self.api_requests
    }

    /// Count a reconcile.
    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }

    /// Count a failure of kind `error`.
    pub fn failure(&self, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    /// Record how long one reconcile took.
    pub fn reconcile_finished(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_labels() {
        let m = Metrics::new();
        m.reconcile_started();
        m.failure("apply");
        m.failure("apply");
        m.reconcile_finished(Duration::from_millis(20));
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("agentrunner_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("agentrunner_operator_reconcile_failures_total{error=\"apply\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("agentrunner_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("agentrunner_operator_leader 1"), "{text}");
    }
}
