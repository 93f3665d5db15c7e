//! HTTP plumbing shared by both wire formats: the reqwest client, sending with retries, reading
//! provider error bodies, and turning a streamed body into SSE events.

use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap};

use super::LlmError;
use super::retry::{self, Failure};
use stigmer_contract::error_chain;

/// Error bodies are read up to this size: enough for any provider message, bounded against a
/// misconfigured endpoint that streams something large.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Provider messages longer than this are cut in error displays.
const MAX_MESSAGE_CHARS: usize = 500;

pub(crate) struct Http {
    client: reqwest::Client,
    provider: &'static str,
    endpoint: String,
    /// Includes the auth header, marked sensitive; never logged.
    headers: HeaderMap,
    /// Only used to redact the key from provider error bodies that might echo it.
    api_key: Option<String>,
    max_attempts: u32,
    idle_timeout: Duration,
}

impl Http {
    pub(crate) fn new(
        provider: &'static str,
        endpoint: String,
        headers: HeaderMap,
        api_key: Option<String>,
        timeout: Duration,
        max_attempts: u32,
    ) -> Result<Self, LlmError> {
        // No overall timeout: a long answer can stream for minutes. The read timeout bounds the
        // gap between chunks instead.
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("stigmer-agent-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                LlmError::Config(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        Ok(Self {
            client,
            provider,
            endpoint,
            headers,
            api_key,
            max_attempts,
            idle_timeout: timeout,
        })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends the request until a successful response starts, retrying per the policy.
    /// `body` is shared, not copied, by every attempt.
    pub(crate) async fn open_stream(
        &self,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, LlmError> {
        retry::run(self.provider, self.max_attempts, || {
            self.send_once(body.clone())
        })
        .await
    }

    async fn send_once(&self, body: bytes::Bytes) -> Result<reqwest::Response, Failure> {
        let response = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            check_event_stream(&response)?;
            return Ok(response);
        }
        let retry_after = retry_after_of(response.headers());
        let text = read_limited(response).await;
        let (kind, message) = parse_error_body(status, &text);
        Err(Failure {
            error: LlmError::Api {
                provider: self.provider,
                status: status.as_u16(),
                kind: self.redact(kind),
                message: self.redact(message),
            },
            retry_after,
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        let timed_out = e.is_timeout();
        // The endpoint is named once by our own message; reqwest would repeat it.
        let e = e.without_url();
        if e.is_builder() {
            return LlmError::Config(format!(
                "cannot build a request to {}: {}",
                self.endpoint,
                error_chain(&e)
            ));
        }
        // Everything else failed before a response: the provider saw no complete request, or
        // at worst billed one whose answer never arrived, so sending it again is safe.
        let detail = if timed_out {
            format!(
                "no response within {:?} ({})",
                self.idle_timeout,
                error_chain(&e)
            )
        } else {
            error_chain(&e)
        };
        LlmError::Transport {
            endpoint: self.endpoint.clone(),
            detail,
            retryable: true,
        }
    }

    fn redact(&self, text: String) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() && text.contains(key.as_str()) => {
                text.replace(key.as_str(), "[redacted]")
            }
            _ => text,
        }
    }

    /// The body as SSE events; transport failures become `LlmError::Stream` because the
    /// response has started.
    pub(crate) fn events(
        &self,
        response: reqwest::Response,
    ) -> impl Stream<Item = Result<Event, LlmError>> + use<> {
        let idle = self.idle_timeout;
        response.bytes_stream().eventsource().map(move |item| {
            item.map_err(|e| match e {
                EventStreamError::Transport(e) if e.is_timeout() => LlmError::Stream {
                    kind: "timeout".to_owned(),
                    message: format!(
                        "no data from the provider for {idle:?}; the stream was abandoned"
                    ),
                },
                EventStreamError::Transport(e) => LlmError::Stream {
                    kind: "transport".to_owned(),
                    message: error_chain(&e.without_url()),
                },
                EventStreamError::Utf8(e) => LlmError::Decode(format!("stream is not UTF-8: {e}")),
                EventStreamError::Parser(e) => LlmError::Decode(format!("malformed SSE: {e}")),
            })
        })
    }
}

/// A 200 that is not an event stream means the base URL points at something else (a proxy's
/// HTML page, a non-streaming endpoint); say so instead of failing later on odd data.
fn check_event_stream(response: &reqwest::Response) -> Result<(), Failure> {
    let Some(value) = response.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let content_type = value.to_str().unwrap_or("(not text)");
    if content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        return Ok(());
    }
    Err(LlmError::Decode(format!(
        "expected an event stream from {}, got content-type {content_type:?}; check the base URL",
        response.url().path()
    ))
    .into())
}

/// OpenAI sends `retry-after-ms`, Anthropic `retry-after`; the finer one wins.
fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ms = text("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0);
    if let Some(ms) = ms {
        return Some(Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0));
    }
    text("retry-after").and_then(|v| crate::backoff::parse_retry_after(v, jiff::Timestamp::now()))
}

async fn read_limited(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    // A body that breaks off still leaves the status, which is what matters.
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Kind and message from a provider error body: Anthropic's
/// `{"type":"error","error":{"type","message"}}`, OpenAI's `{"error":{"message","type","code"}}`,
/// Ollama's `{"error":"..."}`, or whatever text a proxy sent.
pub(crate) fn parse_error_body(status: reqwest::StatusCode, body: &str) -> (String, String) {
    let fallback_kind = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        let text = body.trim();
        let message = if text.is_empty() {
            "(empty body)"
        } else {
            text
        };
        return (fallback_kind, truncate(message));
    };
    let error = &json["error"];
    let as_text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let kind = as_text(&error["type"])
        .or_else(|| as_text(&error["code"]))
        .or_else(|| as_text(&json["type"]).filter(|t| t != "error"))
        .unwrap_or(fallback_kind);
    let message = as_text(&error["message"])
        .or_else(|| as_text(error))
        .or_else(|| as_text(&json["message"]))
        .unwrap_or_else(|| body.trim().to_owned());
    (kind, truncate(&message))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
