//! A scripted LLM HTTP server on loopback that speaks both wire formats the runner uses: the
//! Anthropic Messages API (`.../v1/messages`) and OpenAI-compatible chat completions
//! (`.../v1/chat/completions`), with real SSE streaming.
//!
//! It is a stand-in for provider APIs that cannot be reached from CI. It follows their documented
//! event order and error shapes, but it is not the real thing: it does not validate requests (the
//! recorded requests are there for tests to assert on) and its token counts are estimates.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the server answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A text answer that ends the turn, streamed a few words per event.
    Text(String),
    /// Optional text, then tool calls (ids `toolu_N` / `call_N`), whose input JSON is streamed
    /// in several partial pieces so that clients must reassemble it.
    ToolCalls {
        text: Option<String>,
        calls: Vec<(String, Value)>,
    },
    /// An HTTP error with the provider's error JSON, and `retry-after` when given.
    Error {
        status: u16,
        retry_after: Option<u64>,
        message: String,
    },
    /// Starts streaming (headers and this text delta) and never finishes, until the client goes
    /// away or the server is dropped.
    Stall { text: String },
    /// Waits, then answers with the inner reply.
    Delay(Duration, Box<Reply>),
    /// A 200 stream with some text, then an SSE `error` event (Anthropic) or an error chunk
    /// (OpenAI).
    StreamError { message: String },
    /// Streams this text, then closes the body without `message_stop` / `[DONE]`.
    EndsEarly { text: String },
    /// A text answer streamed one piece per event, `every` apart (a model producing tokens at
    /// a fixed pace); when each piece left is kept (`ScriptedLlm::sent_pieces`).
    Paced {
        pieces: Vec<String>,
        every: Duration,
    },
    /// Exactly this status, content type and body, in one piece.
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// The inner reply, reporting these token counts instead of the estimates.
    WithUsage(ScriptedUsage, Box<Reply>),
}

impl Reply {
    /// This reply, reporting `usage`.
    pub fn with_usage(self, usage: ScriptedUsage) -> Self {
        Reply::WithUsage(usage, Box::new(self))
    }
}

/// Token counts a reply reports (see [`Reply::WithUsage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptedUsage {
    /// Every prompt token, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` read from the cache.
    pub cache_read_tokens: u64,
    /// Part of `input_tokens` written to the cache (reported on the Anthropic wire only).
    pub cache_write_tokens: u64,
    pub report: UsageReport,
}

/// How the counts are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageReport {
    /// As each API documents it: Anthropic's `input_tokens` (uncached) beside
    /// `cache_read_input_tokens` and `cache_creation_input_tokens`; OpenAI's `prompt_tokens`
    /// with `prompt_tokens_details.cached_tokens` (when `include_usage` was asked for).
    Documented,
    /// OpenAI wire as llama.cpp's server without `prompt_tokens_details`: the cached count
    /// only in the chunk's `timings.cache_n`. (Anthropic wire: as `Documented`.)
    LlamaCppTimings,
    /// No usage at all, as from a server that ignores `stream_options.include_usage`.
    Absent,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub path: String,
    /// Lowercased header names; repeated headers keep the last value.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or `Value::String` with the raw text when it was not JSON.
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Handler = Box<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

enum Source {
    Script(Mutex<VecDeque<Reply>>),
    Handler(Handler),
}

struct Shared {
    source: Source,
    requests: Mutex<Vec<RecordedRequest>>,
    next_id: AtomicU64,
    open_streams: Arc<AtomicUsize>,
    /// Pieces of `Reply::Paced` answers and when they were handed to the connection.
    sent: Arc<Mutex<Vec<(String, Instant)>>>,
    shutdown: CancellationToken,
}

/// The running server; it stops (and ends stalled streams) when dropped.
pub struct ScriptedLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ScriptedLlm {
    /// Serves `replies` in order, one per request; after the last one every request gets a 500
    /// saying "script exhausted", so a test that makes too many calls notices.
    ///
    /// Call it inside a tokio runtime. Panics when no loopback port can be bound: this is test
    /// scaffolding.
    pub async fn start(replies: Vec<Reply>) -> Self {
        Self::spawn(Source::Script(Mutex::new(replies.into())))
    }

    /// Answers every request with `f(request)`, without end (benchmarks, long end-to-end runs).
    pub async fn with_handler(
        f: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::spawn(Source::Handler(Box::new(f)))
    }

    fn spawn(source: Source) -> Self {
        let std_listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("scripted LLM: cannot bind a loopback port: {e}"),
        };
        let listener = std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
        let listener = match listener {
            Ok(l) => l,
            Err(e) => panic!("scripted LLM: cannot use the loopback listener: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("scripted LLM: listener has no address: {e}"),
        };
        let shared = Arc::new(Shared {
            source,
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            open_streams: Arc::new(AtomicUsize::new(0)),
            sent: Arc::default(),
            shutdown: CancellationToken::new(),
        });
        // Streamed pieces leave at once, as from a real provider: without TCP_NODELAY a piece
        // written while the response head is still unacknowledged waits for the client's
        // delayed ACK (one piece later on a reused connection), which showed up as a 20 ms
        // "token latency" of the runner that was the test server's own.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                eprintln!("scripted LLM: cannot set TCP_NODELAY: {e}");
            }
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let stop = shared.shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            // A failing test server shows up as connection errors in the test itself.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash or `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Every piece of a `Reply::Paced` answer sent so far, with when it left.
    pub fn sent_pieces(&self) -> Vec<(String, Instant)> {
        lock(&self.shared.sent).clone()
    }

    /// Streamed response bodies currently open; drops to zero once clients hang up.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// The token estimate the server reports in usage: a quarter of the byte length, at least 1.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not hide the recorded requests from the others.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Anthropic,
    OpenAi,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = record(&uri, &headers, &body);
    lock(&shared.requests).push(request.clone());
    let wire = if request.path.ends_with("/messages") {
        Wire::Anthropic
    } else if request.path.ends_with("/chat/completions") {
        Wire::OpenAi
    } else {
        return (StatusCode::NOT_FOUND, "scripted LLM: unknown path").into_response();
    };
    let reply = match &shared.source {
        Source::Script(queue) => lock(queue).pop_front(),
        Source::Handler(f) => Some(f(&request)),
    };
    let Some(mut reply) = reply else {
        let body = error_json(wire, 500, "scripted LLM: script exhausted");
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    };
    let mut usage = None;
    loop {
        match reply {
            Reply::Delay(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::WithUsage(scripted, inner) => {
                usage = Some(scripted);
                reply = *inner;
            }
            _ => break,
        }
    }
    let ctx = Ctx {
        wire,
        model: request.body["model"]
            .as_str()
            .unwrap_or("scripted")
            .to_owned(),
        input_tokens: estimate_tokens(&String::from_utf8_lossy(&body)),
        include_usage: request.body["stream_options"]["include_usage"] == json!(true),
        usage,
        shared: &shared,
    };
    respond(&ctx, reply)
}

fn record(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> RecordedRequest {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    RecordedRequest {
        path: uri.path().to_owned(),
        headers,
        body,
    }
}

struct Ctx<'a> {
    wire: Wire,
    model: String,
    input_tokens: u64,
    include_usage: bool,
    usage: Option<ScriptedUsage>,
    shared: &'a Shared,
}

impl Ctx<'_> {
    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::SeqCst)
    }
}

fn respond(ctx: &Ctx<'_>, reply: Reply) -> Response {
    match reply {
        Reply::Error {
            status,
            retry_after,
            message,
        } => error_response(ctx.wire, status, retry_after, &message),
        Reply::Raw {
            status,
            content_type,
            body,
        } => raw_response(status, &content_type, body),
        Reply::Stall { text } => {
            let head = stream_head(ctx, &text);
            let stop = ctx.shared.shutdown.clone();
            let tail = stream::once(async move { stop.cancelled_owned().await })
                .filter_map(|()| async { None::<String> });
            sse_response(ctx, stream::iter(head).chain(tail).boxed())
        }
        Reply::EndsEarly { text } => {
            sse_response(ctx, stream::iter(stream_head(ctx, &text)).boxed())
        }
        Reply::StreamError { message } => {
            let mut events = stream_head(ctx, "partial answer");
            events.push(stream_error_event(ctx.wire, &message));
            sse_response(ctx, stream::iter(events).boxed())
        }
        Reply::Paced { pieces, every } => sse_response(ctx, paced_stream(ctx, pieces, every)),
        Reply::Text(text) => {
            let events = full_stream(ctx, Some(&text), &[]);
            sse_response(ctx, stream::iter(events).boxed())
        }
        Reply::ToolCalls { text, calls } => {
            let events = full_stream(ctx, text.as_deref(), &calls);
            sse_response(ctx, stream::iter(events).boxed())
        }
        // Unwrapped by the caller; kept total so that a new nesting cannot panic.
        Reply::Delay(_, inner) | Reply::WithUsage(_, inner) => respond(ctx, *inner),
    }
}

fn raw_response(status: u16, content_type: &str, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

fn error_response(wire: Wire, status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(error_json(wire, status, message))).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The error kinds the providers document for each status.
fn error_kind(wire: Wire, status: u16) -> &'static str {
    match (wire, status) {
        (Wire::Anthropic, 400) => "invalid_request_error",
        (Wire::Anthropic, 401) => "authentication_error",
        (Wire::Anthropic, 403) => "permission_error",
        (Wire::Anthropic, 404) => "not_found_error",
        (Wire::Anthropic, 413) => "request_too_large",
        (Wire::Anthropic, 429) => "rate_limit_error",
        (Wire::Anthropic, 529) => "overloaded_error",
        (Wire::Anthropic, _) => "api_error",
        (Wire::OpenAi, 401) => "invalid_api_key",
        (Wire::OpenAi, 429) => "rate_limit_exceeded",
        (Wire::OpenAi, 400..=499) => "invalid_request_error",
        (Wire::OpenAi, _) => "server_error",
    }
}

fn error_json(wire: Wire, status: u16, message: &str) -> Value {
    let kind = error_kind(wire, status);
    match wire {
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Wire::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    }
}

fn stream_error_event(wire: Wire, message: &str) -> String {
    match wire {
        Wire::Anthropic => anthropic_event("error", &error_json(wire, 529, message)),
        Wire::OpenAi => openai_data(&error_json(wire, 500, message)),
    }
}

/// Counts a streamed body as open until hyper drops it (client gone or stream finished).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn sse_response(ctx: &Ctx<'_>, events: BoxStream<'static, String>) -> Response {
    let guard = OpenGuard::new(&ctx.shared.open_streams);
    let body = events.map(move |event| {
        let _ = &guard;
        Ok::<_, Infallible>(Bytes::from(event))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn anthropic_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn openai_data(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// A few words per piece, so that clients see several deltas.
fn text_pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// Serialised JSON cut into three pieces on char boundaries, to exercise reassembly.
fn json_pieces(input: &Value) -> Vec<String> {
    let chars: Vec<char> = input.to_string().chars().collect();
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A text answer whose pieces leave `every` apart, each recorded when it is handed over.
fn paced_stream(ctx: &Ctx<'_>, pieces: Vec<String>, every: Duration) -> BoxStream<'static, String> {
    let head = stream_head(ctx, "");
    let text: String = pieces.concat();
    let output_tokens = estimate_tokens(&text);
    let (wire, model) = (ctx.wire, ctx.model.clone());
    let tail = match wire {
        Wire::Anthropic => vec![
            anthropic_block_stop(0),
            anthropic_event(
                "message_delta",
                &json!({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                        "usage": {"output_tokens": output_tokens}}),
            ),
            anthropic_event("message_stop", &json!({"type": "message_stop"})),
        ],
        Wire::OpenAi => vec![
            openai_chunk(ctx, "chatcmpl-paced", json!({}), Some("stop")),
            "data: [DONE]\n\n".to_owned(),
        ],
    };
    let sent = ctx.shared.sent.clone();
    let body = stream::iter(pieces).then(move |piece| {
        let (sent, model) = (sent.clone(), model.clone());
        async move {
            tokio::time::sleep(every).await;
            let event = match wire {
                Wire::Anthropic => anthropic_text_delta(0, &piece),
                Wire::OpenAi => openai_data(&json!({
                    "id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})),
            };
            lock(&sent).push((piece, Instant::now()));
            event
        }
    });
    stream::iter(head)
        .chain(body)
        .chain(stream::iter(tail))
        .boxed()
}

/// The opening of a stream that has started one text block: used by the replies that do not
/// finish normally.
fn stream_head(ctx: &Ctx<'_>, text: &str) -> Vec<String> {
    match ctx.wire {
        Wire::Anthropic => {
            let mut events = vec![anthropic_message_start(ctx)];
            events.extend(anthropic_text_block_open(0, text));
            events
        }
        Wire::OpenAi => {
            let id = format!("chatcmpl-{}", ctx.next_id());
            let mut events = vec![openai_chunk(
                ctx,
                &id,
                json!({"role": "assistant", "content": ""}),
                None,
            )];
            events.extend(
                text_pieces(text)
                    .into_iter()
                    .map(|p| openai_chunk(ctx, &id, json!({"content": p}), None)),
            );
            events
        }
    }
}

fn full_stream(ctx: &Ctx<'_>, text: Option<&str>, calls: &[(String, Value)]) -> Vec<String> {
    let estimate = estimate_tokens(text.unwrap_or(""))
        + calls
            .iter()
            .map(|(_, input)| estimate_tokens(&input.to_string()))
            .sum::<u64>();
    let output_tokens = ctx.usage.map_or(estimate, |u| u.output_tokens);
    match ctx.wire {
        Wire::Anthropic => anthropic_stream(ctx, text, calls, output_tokens),
        Wire::OpenAi => openai_stream(ctx, text, calls, output_tokens),
    }
}

fn anthropic_message_start(ctx: &Ctx<'_>) -> String {
    let mut message = json!({
        "id": format!("msg_{}", ctx.next_id()), "type": "message", "role": "assistant",
        "model": ctx.model, "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": ctx.input_tokens, "output_tokens": 1}});
    match ctx.usage {
        None => {}
        Some(u) if u.report == UsageReport::Absent => {
            if let Some(m) = message.as_object_mut() {
                m.remove("usage");
            }
        }
        // Anthropic counts cache reads and writes apart from input_tokens.
        Some(u) => {
            message["usage"] = json!({
                "input_tokens": u.input_tokens
                    .saturating_sub(u.cache_read_tokens)
                    .saturating_sub(u.cache_write_tokens),
                "cache_read_input_tokens": u.cache_read_tokens,
                "cache_creation_input_tokens": u.cache_write_tokens,
                "output_tokens": 1,
            });
        }
    }
    anthropic_event(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    )
}

fn usage_absent(ctx: &Ctx<'_>) -> bool {
    ctx.usage.is_some_and(|u| u.report == UsageReport::Absent)
}

fn anthropic_text_delta(index: usize, text: &str) -> String {
    anthropic_event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
    )
}

fn anthropic_block_stop(index: usize) -> String {
    anthropic_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )
}

fn anthropic_stream(
    ctx: &Ctx<'_>,
    text: Option<&str>,
    calls: &[(String, Value)],
    output_tokens: u64,
) -> Vec<String> {
    let mut events = vec![anthropic_message_start(ctx)];
    events.push(anthropic_event("ping", &json!({"type": "ping"})));
    let mut index = 0;
    if let Some(text) = text {
        events.extend(anthropic_text_block_open(index, text));
        events.push(anthropic_block_stop(index));
        index += 1;
    }
    for (name, input) in calls {
        events.push(anthropic_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": format!("toolu_{}", ctx.next_id()), "name": name,
                "input": {}}}),
        ));
        for piece in json_pieces(input) {
            events.push(anthropic_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(anthropic_block_stop(index));
        index += 1;
    }
    let stop_reason = if calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let mut delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}});
    if usage_absent(ctx)
        && let Some(d) = delta.as_object_mut()
    {
        d.remove("usage");
    }
    events.push(anthropic_event("message_delta", &delta));
    events.push(anthropic_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    events
}

fn anthropic_text_block_open(index: usize, text: &str) -> Vec<String> {
    let mut events = vec![anthropic_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
    )];
    events.extend(
        text_pieces(text)
            .into_iter()
            .map(|p| anthropic_text_delta(index, p)),
    );
    events
}

fn openai_chunk(ctx: &Ctx<'_>, id: &str, delta: Value, finish_reason: Option<&str>) -> String {
    openai_data(&json!({
        "id": id, "object": "chat.completion.chunk", "created": 0, "model": ctx.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}))
}

fn openai_stream(
    ctx: &Ctx<'_>,
    text: Option<&str>,
    calls: &[(String, Value)],
    output_tokens: u64,
) -> Vec<String> {
    let id = format!("chatcmpl-{}", ctx.next_id());
    let mut events = vec![openai_chunk(
        ctx,
        &id,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for piece in text.map(text_pieces).unwrap_or_default() {
        events.push(openai_chunk(ctx, &id, json!({"content": piece}), None));
    }
    for (index, (name, input)) in calls.iter().enumerate() {
        let call_id = format!("call_{}", ctx.next_id());
        let head = json!({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]});
        events.push(openai_chunk(ctx, &id, head, None));
        for piece in json_pieces(input) {
            let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
            events.push(openai_chunk(ctx, &id, delta, None));
        }
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    events.push(openai_chunk(ctx, &id, json!({}), Some(finish)));
    if ctx.include_usage && !usage_absent(ctx) {
        let input = ctx.usage.map_or(ctx.input_tokens, |u| u.input_tokens);
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": 0, "model": ctx.model,
            "choices": [], "usage": {"prompt_tokens": input,
            "completion_tokens": output_tokens, "total_tokens": input + output_tokens}});
        match ctx.usage {
            Some(u) if u.report == UsageReport::LlamaCppTimings => {
                chunk["timings"] = json!({"cache_n": u.cache_read_tokens,
                    "prompt_n": input.saturating_sub(u.cache_read_tokens),
                    "predicted_n": output_tokens, "prompt_ms": 1.5, "predicted_ms": 2.5});
            }
            Some(u) => {
                chunk["usage"]["prompt_tokens_details"] =
                    json!({"cached_tokens": u.cache_read_tokens});
            }
            None => {}
        }
        events.push(openai_data(&chunk));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}
