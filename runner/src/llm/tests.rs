//! Both wire formats over real HTTP on loopback, against the scripted server in testkit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::llm::{RecordedRequest, Reply, ScriptedLlm, estimate_tokens};

use super::*;
use crate::conversation::Role;

const KEY: &str = "sk-test-secret-4242";
const MODEL: &str = "test-model";

fn settings(
    provider: Provider,
    base_url: String,
    max_attempts: u32,
    timeout: Duration,
) -> LlmSettings {
    let api_key =
        (provider != Provider::Ollama).then(|| stigmer_contract::Secret::new(KEY.to_owned()));
    LlmSettings {
        provider,
        base_url,
        api_key,
        request_timeout: timeout,
        max_attempts,
    }
}

fn client_for(server: &ScriptedLlm, provider: Provider, max_attempts: u32) -> LlmClient {
    LlmClient::new(settings(
        provider,
        server.base_url(),
        max_attempts,
        Duration::from_secs(10),
    ))
    .expect("valid settings")
}

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        input_schema: std::sync::Arc::new(
            json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        ),
    }]
}

/// A conversation with every block kind: text, a tool call answered with an error, a tool call
/// whose input the model botched (kept raw), and text after tool results.
fn conversation() -> Vec<Message> {
    vec![
        Message::user_text("Read a.txt"),
        Message {
            role: Role::Assistant,
            content: vec![
                Block::Text("Let me look.".into()),
                Block::ToolUse {
                    id: "toolu_9".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a.txt"}),
                },
            ],
        },
        Message {
            role: Role::User,
            content: vec![
                Block::ToolResult {
                    tool_use_id: "toolu_9".into(),
                    content: "no such file".into(),
                    is_error: true,
                },
                Block::Text("Try b.txt".into()),
            ],
        },
        Message {
            role: Role::Assistant,
            content: vec![Block::ToolUse {
                id: "toolu_10".into(),
                name: "read_file".into(),
                input: Value::String("{\"path\": b.txt".into()),
            }],
        },
        Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: "toolu_10".into(),
                content: "input is not a JSON object".into(),
                is_error: true,
            }],
        },
    ]
}

fn request<'a>(messages: &'a [Message], tools: &'a [ToolSpec]) -> LlmRequest<'a> {
    LlmRequest {
        model: MODEL,
        system: "You are terse.",
        messages,
        tools,
        max_tokens: 1234,
        temperature: Some(0.5),
    }
}

/// Runs one turn and returns it with the text pieces `on_text` saw.
async fn turn(
    client: &LlmClient,
    req: &LlmRequest<'_>,
) -> (Result<AssistantTurn, LlmError>, Vec<String>) {
    let pieces = Arc::new(Mutex::new(Vec::new()));
    let seen = pieces.clone();
    let mut on_text = move |t: &str| seen.lock().expect("not poisoned").push(t.to_owned());
    let result = client.stream_turn(req, &mut on_text).await;
    let pieces = pieces.lock().expect("not poisoned").clone();
    (result, pieces)
}

async fn simple_turn(
    server: &ScriptedLlm,
    provider: Provider,
    max_attempts: u32,
) -> (Result<AssistantTurn, LlmError>, Vec<String>) {
    let client = client_for(server, provider, max_attempts);
    let messages = [Message::user_text("hi")];
    turn(&client, &request(&messages, &[])).await
}

/// Runs a scenario once per wire format, as `scenario::anthropic` and `scenario::openai`.
macro_rules! for_each_wire {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test]
            async fn anthropic() {
                super::$scenario(Provider::Anthropic).await;
            }
            #[tokio::test]
            async fn openai() {
                super::$scenario(Provider::OpenAi).await;
            }
        }
    )*};
}

for_each_wire!(
    text_streams_in_pieces,
    tool_calls_are_reassembled,
    retries_429_honouring_retry_after,
    retries_503_with_backoff,
    no_retry_on_400,
    no_retry_on_401_and_key_is_not_shown,
    gives_up_after_max_attempts,
    error_event_mid_stream_fails_the_turn,
    stream_ending_early_fails_the_turn,
    dropping_the_future_closes_the_stream,
    idle_stream_times_out,
    request_omits_optional_fields,
);

async fn text_streams_in_pieces(provider: Provider) {
    let text = "The quick brown fox jumps over the lazy dog";
    let server = ScriptedLlm::start(vec![Reply::Text(text.into())]).await;
    let (result, pieces) = simple_turn(&server, provider, 1).await;
    let turn = result.expect("turn succeeds");
    assert!(
        pieces.len() > 1,
        "text must arrive in several deltas, got {pieces:?}"
    );
    assert_eq!(pieces.concat(), text);
    assert_eq!(turn.content, vec![Block::Text(text.into())]);
    assert_eq!(turn.stop_reason, StopReason::EndTurn);
    assert_eq!(turn.usage.output_tokens, estimate_tokens(text));
    assert!(
        turn.usage.input_tokens > 0,
        "input tokens must be read: {:?}",
        turn.usage
    );
}

async fn tool_calls_are_reassembled(provider: Provider) {
    let read = json!({"path": "src/main.rs", "lines": [1, 2, 3], "nested": {"note": "ü ñ"}});
    let server = ScriptedLlm::start(vec![Reply::ToolCalls {
        text: Some("Let me check.".into()),
        calls: vec![
            ("read_file".into(), read.clone()),
            ("list_dir".into(), json!({})),
        ],
    }])
    .await;
    let (result, pieces) = simple_turn(&server, provider, 1).await;
    let turn = result.expect("turn succeeds");
    assert_eq!(pieces.concat(), "Let me check.");
    assert_eq!(turn.stop_reason, StopReason::ToolUse);
    let [Block::Text(text), first, second] = turn.content.as_slice() else {
        panic!("expected text then two tool uses, got {:?}", turn.content);
    };
    assert_eq!(text, "Let me check.");
    let (
        Block::ToolUse {
            id: id1,
            name: name1,
            input: input1,
        },
        Block::ToolUse {
            id: id2,
            name: name2,
            input: input2,
        },
    ) = (first, second)
    else {
        panic!("expected tool uses, got {first:?} and {second:?}");
    };
    assert_eq!((name1.as_str(), input1), ("read_file", &read));
    assert_eq!((name2.as_str(), input2), ("list_dir", &json!({})));
    assert!(
        !id1.is_empty() && id1 != id2,
        "ids must be distinct: {id1} {id2}"
    );
}

async fn retries_429_honouring_retry_after(provider: Provider) {
    let server = ScriptedLlm::start(vec![
        Reply::Error {
            status: 429,
            retry_after: Some(1),
            message: "slow down".into(),
        },
        Reply::Text("done".into()),
    ])
    .await;
    let started = Instant::now();
    let (result, _) = simple_turn(&server, provider, 3).await;
    assert_eq!(
        result.expect("second attempt succeeds").content,
        vec![Block::Text("done".into())]
    );
    assert_eq!(server.request_count(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retry-after: 1 must be honoured"
    );
}

async fn retries_503_with_backoff(provider: Provider) {
    let server = ScriptedLlm::start(vec![
        Reply::Error {
            status: 503,
            retry_after: None,
            message: "unavailable".into(),
        },
        Reply::Text("done".into()),
    ])
    .await;
    let started = Instant::now();
    let (result, _) = simple_turn(&server, provider, 2).await;
    assert!(result.is_ok(), "503 must be retried: {result:?}");
    assert_eq!(server.request_count(), 2);
    // The first backoff is 0.5 s less at most a quarter of jitter.
    assert!(
        started.elapsed() >= Duration::from_millis(370),
        "backoff must wait"
    );
}

async fn no_retry_on_400(provider: Provider) {
    let server = ScriptedLlm::start(vec![
        Reply::Error {
            status: 400,
            retry_after: None,
            message: "max_tokens: too large".into(),
        },
        Reply::Text("never".into()),
    ])
    .await;
    let (result, _) = simple_turn(&server, provider, 5).await;
    let error = result.expect_err("400 fails");
    assert!(
        matches!(&error, LlmError::Api { status: 400, message, .. } if message == "max_tokens: too large"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.request_count(), 1);
}

async fn no_retry_on_401_and_key_is_not_shown(provider: Provider) {
    // Some proxies echo what they got; the key must still not reach logs.
    let message = format!("invalid x-api-key {KEY}");
    let server = ScriptedLlm::start(vec![
        Reply::Error {
            status: 401,
            retry_after: None,
            message,
        },
        Reply::Text("never".into()),
    ])
    .await;
    let (result, _) = simple_turn(&server, provider, 5).await;
    let error = result.expect_err("401 fails");
    assert_eq!(server.request_count(), 1);
    assert_eq!(error.status(), Some(401));
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("invalid x-api-key"), "{shown}");
    assert!(
        shown.contains("STIGMER_LLM_API_KEY"),
        "401 must say where the key comes from: {shown}"
    );
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
}

async fn gives_up_after_max_attempts(provider: Provider) {
    let overloaded = || Reply::Error {
        status: 529,
        retry_after: Some(0),
        message: "overloaded".into(),
    };
    let server = ScriptedLlm::start(vec![
        overloaded(),
        overloaded(),
        overloaded(),
        Reply::Text("late".into()),
    ])
    .await;
    let (result, _) = simple_turn(&server, provider, 3).await;
    let error = result.expect_err("gives up");
    let LlmError::RetriesExhausted { attempts, last, .. } = &error else {
        panic!("expected RetriesExhausted, got {error:?}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(**last, LlmError::Api { status: 529, .. }),
        "{last:?}"
    );
    assert_eq!(server.request_count(), 3);
    assert!(error.to_string().contains("overloaded"), "{error}");
}

async fn error_event_mid_stream_fails_the_turn(provider: Provider) {
    let server = ScriptedLlm::start(vec![
        Reply::StreamError {
            message: "Overloaded".into(),
        },
        Reply::Text("never".into()),
    ])
    .await;
    let (result, pieces) = simple_turn(&server, provider, 3).await;
    let error = result.expect_err("stream error fails the turn");
    assert!(
        matches!(&error, LlmError::Stream { message, .. } if message == "Overloaded"),
        "{error:?}"
    );
    assert!(
        !pieces.is_empty(),
        "text before the error still reached on_text"
    );
    // Text already went out, so the client must not silently start over.
    assert_eq!(server.request_count(), 1);
}

async fn stream_ending_early_fails_the_turn(provider: Provider) {
    let server = ScriptedLlm::start(vec![Reply::EndsEarly {
        text: "half an ans".into(),
    }])
    .await;
    let (result, pieces) = simple_turn(&server, provider, 1).await;
    let error = result.expect_err("truncated stream fails");
    assert!(
        matches!(&error, LlmError::Stream { message, .. } if message.contains("ended early")),
        "{error:?}"
    );
    assert_eq!(pieces.concat(), "half an ans");
}

async fn dropping_the_future_closes_the_stream(provider: Provider) {
    let server = ScriptedLlm::start(vec![Reply::Stall {
        text: "thinking".into(),
    }])
    .await;
    let client = client_for(&server, provider, 1);
    let messages = [Message::user_text("hi")];
    let req = request(&messages, &[]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut on_text = move |t: &str| {
        let _ = tx.send(t.to_owned());
    };
    tokio::select! {
        result = client.stream_turn(&req, &mut on_text) => panic!("a stalled stream cannot end: {result:?}"),
        first = rx.recv() => {
            assert_eq!(first.as_deref(), Some("thinking"));
            assert_eq!(server.open_streams(), 1, "the server must count the stalled stream");
        }
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("no text arrived"),
    }
    // The select dropped the turn's future; the server must see the connection go.
    assert_closes(&server, Duration::from_secs(3)).await;
}

async fn assert_closes(server: &ScriptedLlm, within: Duration) {
    let deadline = Instant::now() + within;
    while server.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "the HTTP stream stayed open after the future was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn idle_stream_times_out(provider: Provider) {
    let server = ScriptedLlm::start(vec![Reply::Stall {
        text: "thinking".into(),
    }])
    .await;
    let client = LlmClient::new(settings(
        provider,
        server.base_url(),
        3,
        Duration::from_millis(300),
    ))
    .expect("valid settings");
    let messages = [Message::user_text("hi")];
    let started = Instant::now();
    let (result, pieces) = turn(&client, &request(&messages, &[])).await;
    let error = result.expect_err("an idle stream fails");
    assert!(
        matches!(&error, LlmError::Stream { kind, .. } if kind == "timeout"),
        "{error:?}"
    );
    assert_eq!(pieces.concat(), "thinking");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.request_count(), 1, "a started stream is not retried");
}

async fn request_omits_optional_fields(provider: Provider) {
    let server = ScriptedLlm::start(vec![Reply::Text("ok".into())]).await;
    let client = client_for(&server, provider, 1);
    let messages = [Message::user_text("hi")];
    let req = LlmRequest {
        system: "",
        temperature: None,
        ..request(&messages, &[])
    };
    turn(&client, &req).await.0.expect("turn succeeds");
    let body = only_request(&server).body;
    assert!(body.get("temperature").is_none(), "{body}");
    assert!(body.get("tools").is_none(), "{body}");
    assert!(body.get("system").is_none(), "{body}");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": user_content(provider, "hi")}])
    );
}

/// How a plain user text looks on each wire.
fn user_content(provider: Provider, text: &str) -> Value {
    match provider {
        Provider::Anthropic => json!([{"type": "text", "text": text}]),
        Provider::OpenAi | Provider::Ollama => json!(text),
    }
}

fn only_request(server: &ScriptedLlm) -> RecordedRequest {
    let mut requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.remove(0)
}

#[tokio::test]
async fn anthropic_request_carries_settings_conversation_and_key() {
    let server = ScriptedLlm::start(vec![Reply::Text("ok".into())]).await;
    let client = client_for(&server, Provider::Anthropic, 1);
    let (messages, tools) = (conversation(), tools());
    turn(&client, &request(&messages, &tools))
        .await
        .0
        .expect("turn succeeds");
    let sent = only_request(&server);
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("authorization"), None);
    let body = sent.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["max_tokens"], 1234);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["stream"], true);
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(
        body["tools"],
        json!([{"name": "read_file", "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Read a.txt"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {"path": "a.txt"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "no such file", "is_error": true},
                {"type": "text", "text": "Try b.txt"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_10", "name": "read_file", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_10",
                 "content": "input is not a JSON object", "is_error": true}]},
        ])
    );
}

#[tokio::test]
async fn openai_request_carries_settings_conversation_and_key() {
    let server = ScriptedLlm::start(vec![Reply::Text("ok".into())]).await;
    let client = client_for(&server, Provider::OpenAi, 1);
    let (messages, tools) = (conversation(), tools());
    turn(&client, &request(&messages, &tools))
        .await
        .0
        .expect("turn succeeds");
    let sent = only_request(&server);
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.header("x-api-key"), None);
    let body = sent.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["max_tokens"], 1234);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Read a.txt"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_9", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_9", "content": "no such file"},
            {"role": "user", "content": "Try b.txt"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_10", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\": b.txt"}}]},
            {"role": "tool", "tool_call_id": "toolu_10", "content": "input is not a JSON object"},
        ])
    );
}

#[tokio::test]
async fn ollama_sends_no_authorization_and_accepts_a_v1_base() {
    let server = ScriptedLlm::start(vec![Reply::Text("ok".into())]).await;
    let base = format!("{}/v1/", server.base_url());
    let client = LlmClient::new(settings(Provider::Ollama, base, 1, Duration::from_secs(10)))
        .expect("valid settings");
    assert_eq!(
        client.endpoint(),
        format!("{}/v1/chat/completions", server.base_url())
    );
    assert_eq!(client.provider(), Provider::Ollama);
    let messages = [Message::user_text("hi")];
    let (result, _) = turn(&client, &request(&messages, &[])).await;
    assert_eq!(
        result.expect("turn succeeds").content,
        vec![Block::Text("ok".into())]
    );
    let sent = only_request(&server);
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn openai_unparseable_arguments_are_kept_raw() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let body = [
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "read_file", "arguments": "{\"pa"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "th\": oops"}}]}), Value::Null),
        // Whole call without an index, as older Ollama sends it.
        chunk(json!({"tool_calls": [{"id": "call_b", "function": {"name": "noop", "arguments": ""}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let server = ScriptedLlm::start(vec![Reply::Raw {
        status: 200,
        content_type: "text/event-stream".into(),
        body,
    }])
    .await;
    let (result, _) = simple_turn(&server, Provider::OpenAi, 1).await;
    let turn = result.expect("turn succeeds");
    assert_eq!(
        turn.content,
        vec![
            Block::ToolUse {
                id: "call_a".into(),
                name: "read_file".into(),
                input: json!("{\"path\": oops")
            },
            Block::ToolUse {
                id: "call_b".into(),
                name: "noop".into(),
                input: json!({})
            },
        ]
    );
    assert_eq!(turn.stop_reason, StopReason::ToolUse);
}

#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_reported() {
    let server = ScriptedLlm::start(vec![Reply::Raw {
        status: 200,
        content_type: "text/html".into(),
        body: "<html>proxy login</html>".into(),
    }])
    .await;
    let (result, _) = simple_turn(&server, Provider::Anthropic, 3).await;
    let error = result.expect_err("HTML is not a turn");
    assert!(
        matches!(&error, LlmError::Decode(m) if m.contains("text/html")),
        "{error:?}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn unreachable_endpoint_is_retried_then_reported() {
    // Bind and release a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let client = LlmClient::new(settings(Provider::OpenAi, base, 2, Duration::from_secs(2)))
        .expect("valid settings");
    let messages = [Message::user_text("hi")];
    let (result, _) = turn(&client, &request(&messages, &[])).await;
    let error = result.expect_err("nothing listens");
    let LlmError::RetriesExhausted { attempts, last, .. } = &error else {
        panic!("expected RetriesExhausted, got {error:?}");
    };
    assert_eq!(*attempts, 2);
    assert!(
        matches!(&**last, LlmError::Transport { retryable: true, endpoint, .. } if endpoint.contains(&port.to_string())),
        "{last:?}"
    );
}

#[test]
fn urls_are_built_from_the_base() {
    let anthropic = |b: &str| anthropic::endpoint(b);
    assert_eq!(
        anthropic("https://api.anthropic.com"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        anthropic("https://api.anthropic.com/"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        anthropic("http://127.0.0.1:9999/v1"),
        "http://127.0.0.1:9999/v1/messages"
    );
    assert_eq!(
        anthropic("http://proxy/llm/v1/"),
        "http://proxy/llm/v1/messages"
    );
    let openai = |b: &str| openai::endpoint(b);
    assert_eq!(
        openai("https://api.openai.com"),
        "https://api.openai.com/v1/chat/completions"
    );
    assert_eq!(
        openai("http://localhost:11434/v1"),
        "http://localhost:11434/v1/chat/completions"
    );
    assert_eq!(
        openai("http://localhost:11434/"),
        "http://localhost:11434/v1/chat/completions"
    );
}

#[test]
fn anthropic_stop_reasons_map() {
    let cases = [
        ("end_turn", StopReason::EndTurn),
        ("tool_use", StopReason::ToolUse),
        ("max_tokens", StopReason::MaxTokens),
        ("stop_sequence", StopReason::StopSequence),
        ("pause_turn", StopReason::PauseTurn),
        ("refusal", StopReason::Refusal),
        (
            "model_context_window_exceeded",
            StopReason::ContextWindowExceeded,
        ),
        ("something_new", StopReason::Other("something_new".into())),
    ];
    for (wire, expected) in cases {
        assert_eq!(anthropic::stop_reason(wire), expected, "{wire}");
    }
}

#[test]
fn openai_finish_reasons_map() {
    let cases = [
        ("stop", StopReason::EndTurn),
        ("tool_calls", StopReason::ToolUse),
        ("length", StopReason::MaxTokens),
        ("content_filter", StopReason::Refusal),
        ("weird", StopReason::Other("weird".into())),
    ];
    for (wire, expected) in cases {
        assert_eq!(openai::stop_reason(wire), expected, "{wire}");
    }
}

#[test]
fn settings_that_cannot_work_are_refused_up_front() {
    let new = |provider, base: &str, key: Option<&str>| {
        LlmClient::new(LlmSettings {
            provider,
            base_url: base.to_owned(),
            api_key: key.map(|k| stigmer_contract::Secret::new(k.to_owned())),
            request_timeout: Duration::from_secs(1),
            max_attempts: 1,
        })
    };
    let no_key = new(Provider::Anthropic, "https://api.anthropic.com", None);
    assert!(
        matches!(&no_key, Err(LlmError::Config(m)) if m.contains("ANTHROPIC_API_KEY")),
        "{no_key:?}"
    );
    let blank_key = new(Provider::Anthropic, "https://api.anthropic.com", Some("  "));
    assert!(
        matches!(blank_key, Err(LlmError::Config(_))),
        "{blank_key:?}"
    );
    let scheme = new(Provider::OpenAi, "ftp://example.com", Some(KEY));
    assert!(matches!(scheme, Err(LlmError::Config(_))), "{scheme:?}");
    let garbage = new(Provider::Ollama, "not a url", None);
    assert!(matches!(garbage, Err(LlmError::Config(_))), "{garbage:?}");
    let creds = new(Provider::OpenAi, "https://user:pw@example.com", Some(KEY));
    assert!(matches!(creds, Err(LlmError::Config(_))), "{creds:?}");
    let newline = new(Provider::OpenAi, "https://example.com", Some("sk-\nx"));
    assert!(
        matches!(&newline, Err(LlmError::Config(m)) if !m.contains("sk-")),
        "{newline:?}"
    );
    let ok =
        new(Provider::Anthropic, "https://api.anthropic.com/", Some(KEY)).expect("valid settings");
    assert_eq!(ok.endpoint(), "https://api.anthropic.com/v1/messages");
    assert!(!format!("{ok:?}").contains(KEY));
}

#[test]
fn provider_error_bodies_are_read() {
    let status = |s: u16| reqwest::StatusCode::from_u16(s).expect("valid status");
    let anthropic = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Too many"}}"#;
    assert_eq!(
        http::parse_error_body(status(429), anthropic),
        ("rate_limit_error".to_owned(), "Too many".to_owned())
    );
    let openai = r#"{"error":{"message":"Bad key","type":null,"code":"invalid_api_key"}}"#;
    assert_eq!(
        http::parse_error_body(status(401), openai),
        ("invalid_api_key".to_owned(), "Bad key".to_owned())
    );
    let ollama = r#"{"error":"model \"x\" not found"}"#;
    assert_eq!(
        http::parse_error_body(status(404), ollama),
        ("not_found".to_owned(), "model \"x\" not found".to_owned())
    );
    assert_eq!(
        http::parse_error_body(status(502), "  "),
        ("bad_gateway".to_owned(), "(empty body)".to_owned())
    );
    let (_, long) = http::parse_error_body(status(500), &"x".repeat(5000));
    assert!(long.chars().count() < 600, "long bodies are cut");
}

#[test]
fn retryable_statuses() {
    let api = |status| LlmError::Api {
        provider: "anthropic",
        status,
        kind: String::new(),
        message: String::new(),
    };
    for status in [408, 409, 429, 500, 502, 503, 529] {
        assert!(api(status).is_retryable(), "{status}");
    }
    for status in [400, 401, 403, 404, 413, 422] {
        assert!(!api(status).is_retryable(), "{status}");
    }
}

#[test]
fn anthropic_stream_skips_unknown_blocks_and_events() {
    let events = [
        r#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"brand_new_event","whatever":true}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":"Hel"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"lo"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"t","name":"now","input":{}}}"#,
        r#"{"type":"content_block_stop","index":2}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"pause_turn"},"usage":{"output_tokens":7}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let mut seen = String::new();
    let mut on_text = |t: &str| seen.push_str(t);
    let mut state = anthropic::TurnState::default();
    for data in events {
        state.apply(data, &mut on_text).expect("valid event");
    }
    let turn = state.finish().expect("complete turn");
    assert_eq!(seen, "Hello");
    assert_eq!(
        turn.content,
        vec![
            Block::Text("Hello".into()),
            Block::ToolUse {
                id: "t".into(),
                name: "now".into(),
                input: json!({})
            },
        ]
    );
    assert_eq!(turn.stop_reason, StopReason::PauseTurn);
    assert_eq!(
        turn.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 7,
            reported: true,
            ..Default::default()
        }
    );
}

/// Usage of a turn made of these SSE payloads, through each wire's parser.
fn anthropic_usage(events: &[&str]) -> Usage {
    let mut state = anthropic::TurnState::default();
    for data in events {
        state.apply(data, &mut |_| {}).expect("valid event");
    }
    state.finish().expect("complete turn").usage
}

fn openai_usage(events: &[&str]) -> Usage {
    let mut state = openai::TurnState::default();
    for data in events {
        state.apply(data, &mut |_| {}).expect("valid chunk");
    }
    state.finish().expect("complete turn").usage
}

#[test]
fn anthropic_cache_tokens_are_part_of_the_input() {
    // As the API documents: cache reads and writes are counted apart from input_tokens, and
    // message_delta repeats cumulative counts.
    let usage = anthropic_usage(&[
        r#"{"type":"message_start","message":{"usage":{"input_tokens":20,"cache_creation_input_tokens":300,"cache_read_input_tokens":1000,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"hi"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    assert_eq!(
        usage,
        Usage {
            input_tokens: 1320,
            output_tokens: 42,
            cache_read_tokens: 1000,
            cache_write_tokens: 300,
            reported: true,
        }
    );
    // Newer streams repeat every count in message_delta: the last value wins, nothing doubles.
    let repeated = anthropic_usage(&[
        r#"{"type":"message_start","message":{"usage":{"input_tokens":20,"cache_read_input_tokens":1000,"output_tokens":1}}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":20,"cache_read_input_tokens":1000,"output_tokens":5}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    assert_eq!(
        (
            repeated.input_tokens,
            repeated.cache_read_tokens,
            repeated.output_tokens
        ),
        (1020, 1000, 5)
    );
}

#[test]
fn anthropic_stream_without_usage_says_so() {
    let usage = anthropic_usage(&[
        r#"{"type":"message_start","message":{"id":"m"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
        r#"{"type":"message_stop"}"#,
    ]);
    assert_eq!(usage, Usage::default());
    assert!(!usage.reported);
}

const OPENAI_TEXT: &str =
    r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#;
const OPENAI_STOP: &str =
    r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;

#[test]
fn openai_cached_tokens_come_from_prompt_tokens_details() {
    let usage = openai_usage(&[
        OPENAI_TEXT,
        OPENAI_STOP,
        r#"{"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}}}"#,
        "[DONE]",
    ]);
    assert_eq!(
        usage,
        Usage {
            input_tokens: 2006,
            output_tokens: 300,
            cache_read_tokens: 1920,
            cache_write_tokens: 0,
            reported: true,
        }
    );
}

#[test]
fn llama_cpp_cached_tokens_come_from_its_timings() {
    // llama.cpp's server without prompt_tokens_details: the final chunk carries `timings`
    // whose cache_n counts the prompt tokens reused from its cache.
    let old_llama = openai_usage(&[
        OPENAI_TEXT,
        OPENAI_STOP,
        r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":26,"total_tokens":29},"timings":{"cache_n":20,"prompt_n":6,"prompt_ms":11.2,"predicted_n":3,"predicted_ms":46.0}}"#,
        "[DONE]",
    ]);
    assert_eq!(
        (
            old_llama.input_tokens,
            old_llama.output_tokens,
            old_llama.cache_read_tokens
        ),
        (26, 3, 20)
    );
    // Recent llama.cpp reports both; the documented field wins.
    let new_llama = openai_usage(&[
        OPENAI_STOP,
        r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":26,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":18}},"timings":{"cache_n":20,"prompt_n":6}}"#,
        "[DONE]",
    ]);
    assert_eq!(new_llama.cache_read_tokens, 18);
    // A server claiming more cached tokens than prompt tokens is capped at the prompt.
    let odd = openai_usage(&[
        OPENAI_STOP,
        r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":9}}}"#,
    ]);
    assert_eq!(odd.cache_read_tokens, 5);
}

#[test]
fn openai_stream_without_usage_says_so() {
    // A server that ignores stream_options.include_usage: no usage chunk at all.
    let usage = openai_usage(&[OPENAI_TEXT, OPENAI_STOP, "[DONE]"]);
    assert_eq!(usage, Usage::default());
    assert!(!usage.reported);
}

#[test]
fn openai_error_chunk_shapes_are_recognised() {
    let mut on_text = |_: &str| {};
    for data in [
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
        r#"{"object":"error","message":"boom","type":"BadRequestError","code":400}"#,
        r#"{"error":"boom"}"#,
    ] {
        let mut state = openai::TurnState::default();
        let error = state.apply(data, &mut on_text).expect_err("error chunk");
        assert!(
            matches!(&error, LlmError::Stream { message, .. } if message == "boom"),
            "{data}: {error:?}"
        );
    }
}

#[tokio::test]
async fn handler_mode_answers_every_turn_on_one_client() {
    let server = ScriptedLlm::with_handler(|req| {
        let last = req.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned();
        let asked = last.and_then(|m| m["content"].as_str().map(str::to_owned));
        let asked = asked.unwrap_or_else(|| "?".to_owned());
        Reply::Delay(
            Duration::from_millis(10),
            Box::new(Reply::Text(format!("echo {asked}"))),
        )
    })
    .await;
    let client = client_for(&server, Provider::OpenAi, 1);
    for n in 0..3 {
        let messages = [Message::user_text(format!("q{n}"))];
        let (result, _) = turn(&client, &request(&messages, &[])).await;
        let expected = vec![Block::Text(format!("echo q{n}"))];
        assert_eq!(result.expect("turn succeeds").content, expected);
    }
    assert_eq!(server.request_count(), 3);
}
