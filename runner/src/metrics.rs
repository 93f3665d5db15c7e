//! Prometheus metrics of the runner, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmLabels {
    pub provider: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: String,
    pub model: String,
    /// `input` (cached included), `output`, `cache_read` or `cache_write`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub provider: String,
    pub model: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub executions: Family<OutcomeLabels, Counter>,
    pub in_flight: Gauge,
    pub capacity: Gauge,
    pub claim_wait: Histogram,
    pub llm_calls: Family<LlmLabels, Histogram, fn() -> Histogram>,
    pub tool_calls: Family<ToolLabels, Histogram, fn() -> Histogram>,
    pub status_updates: Family<OutcomeLabels, Counter>,
    pub llm_tokens: Family<TokenLabels, Counter>,
    pub llm_calls_without_usage: Family<ModelLabels, Counter>,
    pub live_text: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stigmer_runner");
        let executions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "executions",
            "Executions finished, by outcome (completed, failed, cancelled, lost)",
            executions.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "executions_in_flight",
            "Executions running now",
            in_flight.clone(),
        );
        let capacity = Gauge::default();
        registry.register(
            "capacity",
            "Maximum concurrent executions",
            capacity.clone(),
        );
        let claim_wait = latency_histogram();
        registry.register(
            "claim_wait_seconds",
            "Time a claim call waited for work",
            claim_wait.clone(),
        );
        let llm_calls: Family<LlmLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "llm_call_duration_seconds",
            "Duration of one streamed LLM turn",
            llm_calls.clone(),
        );
        let tool_calls: Family<ToolLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "tool_duration_seconds",
            "Duration of one tool call",
            tool_calls.clone(),
        );
        let status_updates = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "status_updates",
            "Status updates sent to the control plane, by result",
            status_updates.clone(),
        );
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "llm_tokens",
            "Tokens of model calls as the provider reported them, by provider, model and kind \
             (input, cached included; output; cache_read; cache_write)",
            llm_tokens.clone(),
        );
        let llm_calls_without_usage = Family::<ModelLabels, Counter>::default();
        registry.register(
            "llm_calls_without_usage",
            "Model calls whose answer reported no token usage (not in llm_tokens)",
            llm_calls_without_usage.clone(),
        );
        let live_text = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "live_text_deltas",
            "Live text deltas by outcome (sent, dropped: queue full, failed: call failed)",
            live_text.clone(),
        );
        Self {
            registry,
            executions,
            in_flight,
            capacity,
            claim_wait,
            llm_calls,
            tool_calls,
            status_updates,
            live_text,
            llm_tokens,
            llm_calls_without_usage,
        }
    }

    /// Counts one model call's tokens.
    pub fn llm_usage(&self, provider: &str, model: &str, usage: &crate::llm::Usage) {
        if !usage.reported {
            self.llm_calls_without_usage
                .get_or_create(&ModelLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                })
                .inc();
            return;
        }
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            self.llm_tokens
                .get_or_create(&TokenLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn live_text(&self, outcome: &str) {
        self.live_text
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn live_text_sent(&self, deltas: u64) {
        self.live_text
            .get_or_create(&OutcomeLabels {
                outcome: "sent".to_string(),
            })
            .inc_by(deltas);
    }

    pub fn execution_finished(&self, outcome: &str) {
        self.executions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn status_update(&self, result: &str) {
        self.status_updates
            .get_or_create(&OutcomeLabels {
                outcome: result.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
