//! The agent loop: call the model, run the tools it asks for, feed the results back, until the
//! model ends its turn, a limit is hit, or the execution is interrupted.
//!
//! The loop knows neither the worker nor the sandbox nor the status proto: it talks to a
//! [`Model`], runs tools through a [`ToolExecutor`] and reports every step as an [`Event`]
//! (the status projection turns those into the execution status).

use std::future::Future;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::conversation::{Block, Message, Role};
use crate::llm::{AssistantTurn, LlmClient, LlmError, LlmRequest, StopReason, ToolSpec, Usage};
use crate::metrics::{LlmLabels, Metrics, ToolLabels};
use crate::tools::{ToolEffect, ToolError, ToolOutcome};

/// Model parameters after applying execution, agent and runner defaults.
#[derive(Debug, Clone)]
pub struct ModelParams {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

/// The model the loop talks to.
pub trait Model: Sync {
    /// The provider's name, for metrics.
    fn provider_name(&self) -> &'static str;

    /// One assistant turn; `on_text` gets each text delta as it arrives. Cancelled by dropping
    /// the future.
    fn stream_turn(
        &self,
        request: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> impl Future<Output = Result<AssistantTurn, LlmError>> + Send;
}

impl Model for LlmClient {
    fn provider_name(&self) -> &'static str {
        self.provider().as_str()
    }

    fn stream_turn(
        &self,
        request: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> impl Future<Output = Result<AssistantTurn, LlmError>> + Send {
        LlmClient::stream_turn(self, request, on_text)
    }
}

/// Why an offered tool could not run.
#[derive(Debug)]
pub enum ToolFailure {
    /// What tools run against is not there (the sandbox could not be opened): the execution
    /// fails with this message.
    Unavailable(String),
    Tool(ToolError),
}

/// Runs the tools the agent was offered.
pub trait ToolExecutor: Sync {
    fn execute(
        &self,
        name: &str,
        input: &serde_json::Value,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ToolOutcome, ToolFailure>> + Send;
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'e> {
    /// A model request is about to be sent.
    TurnStarted,
    /// Streamed text of the current turn.
    TextDelta(&'e str),
    /// The complete turn (the streamed text may have been partial).
    Turn(&'e AssistantTurn),
    ToolStarted {
        id: &'e str,
        name: &'e str,
        input: &'e serde_json::Value,
    },
    ToolFinished {
        id: &'e str,
        outcome: &'e ToolOutcome,
    },
    /// The tokens of the model call that just ended.
    Usage {
        provider: &'e str,
        model: &'e str,
        usage: &'e Usage,
    },
}

pub trait Events: Sync {
    fn record(&self, event: Event<'_>);
}

pub struct AgentRun<'a, M, T, E> {
    pub llm: &'a M,
    /// Called only for offered tools: an execution that calls no tool needs no sandbox.
    pub tool_executor: &'a T,
    pub events: &'a E,
    pub params: ModelParams,
    pub system: String,
    pub tools: Vec<ToolSpec>,
    pub max_turns: u32,
    pub max_repeated_tool_calls: u32,
    pub cancel: &'a CancellationToken,
    pub metrics: &'a Metrics,
    /// Checked after every model call.
    pub token_budget: Option<TokenBudget>,
}

/// The most tokens an execution may use: input (cached included) plus output, summed over
/// its model calls. Calls whose answer carried no usage count nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBudget {
    pub limit: u64,
    /// Where the limit came from, named in the failure.
    pub source: BudgetSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    Agent,
    Execution,
}

impl TokenBudget {
    /// The failure once `used` is past the limit.
    fn exceeded(&self, used: u64) -> Option<String> {
        let whose = match self.source {
            BudgetSource::Agent => "the agent's token_budget",
            BudgetSource::Execution => "the execution's token_budget",
        };
        (used > self.limit).then(|| {
            format!(
                "token budget exceeded: {used} tokens used of {} ({whose}; input and output \
                 tokens of every model call)",
                self.limit
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOutcome {
    Completed,
    Failed(String),
    Interrupted,
}

/// Consecutive identical tool calls: a model stuck in a loop.
#[derive(Default)]
struct RepeatDetector {
    last: Option<String>,
    count: u32,
}

impl RepeatDetector {
    /// Returns how many times in a row this exact call has now been made.
    fn observe(&mut self, name: &str, input: &serde_json::Value) -> u32 {
        let key = format!("{name} {input}");
        if self.last.as_deref() == Some(key.as_str()) {
            self.count += 1;
        } else {
            self.last = Some(key);
            self.count = 1;
        }
        self.count
    }
}

impl<M: Model, T: ToolExecutor, E: Events> AgentRun<'_, M, T, E> {
    /// Runs until done; `conversation` ends with the last complete exchange.
    pub async fn run(&self, conversation: &mut Vec<Message>) -> AgentOutcome {
        let mut repeats = RepeatDetector::default();
        let mut tokens_used: u64 = 0;
        for _ in 0..self.max_turns {
            let turn = match self.model_turn(conversation).await {
                Ok(turn) => turn,
                Err(outcome) => return outcome,
            };
            tokens_used = tokens_used
                .saturating_add(turn.usage.input_tokens)
                .saturating_add(turn.usage.output_tokens);
            let message = Message {
                role: Role::Assistant,
                content: turn.content.clone(),
            };
            let has_tool_calls = message.tool_uses().next().is_some();
            conversation.push(message.clone());
            // Before the turn's tool calls run: the budget stops work, not just reports it.
            // (Unanswered tool calls are trimmed from the saved history.)
            if let Some(failure) = self.token_budget.and_then(|b| b.exceeded(tokens_used)) {
                return AgentOutcome::Failed(failure);
            }
            match (&turn.stop_reason, has_tool_calls) {
                (StopReason::PauseTurn, _) => continue,
                (StopReason::MaxTokens, true) => {
                    return AgentOutcome::Failed(format!(
                        "the model's answer was cut off at max_tokens ({}) in the middle of a \
                         tool call; raise the agent's max_tokens or STIGMER_LLM_MAX_TOKENS",
                        self.params.max_tokens
                    ));
                }
                (StopReason::Refusal, _) => {
                    return AgentOutcome::Failed("the model refused to continue".into());
                }
                (StopReason::ContextWindowExceeded, _) => {
                    return AgentOutcome::Failed(
                        "the conversation no longer fits the model's context window; \
                         start a new session"
                            .into(),
                    );
                }
                (_, true) => {
                    if let Err(outcome) = self.run_tools(&message, conversation, &mut repeats).await
                    {
                        return outcome;
                    }
                }
                (_, false) => return AgentOutcome::Completed,
            }
        }
        AgentOutcome::Failed(format!(
            "turn limit of {} reached before the agent finished (STIGMER_MAX_TURNS)",
            self.max_turns
        ))
    }

    async fn model_turn(&self, conversation: &[Message]) -> Result<AssistantTurn, AgentOutcome> {
        let request = LlmRequest {
            model: &self.params.model,
            system: &self.system,
            messages: conversation,
            tools: &self.tools,
            max_tokens: self.params.max_tokens,
            temperature: self.params.temperature,
        };
        let events = self.events;
        events.record(Event::TurnStarted);
        let mut on_text = |delta: &str| events.record(Event::TextDelta(delta));
        let started = Instant::now();
        let result = tokio::select! {
            r = self.llm.stream_turn(&request, &mut on_text) => r,
            _ = self.cancel.cancelled() => return Err(AgentOutcome::Interrupted),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .llm_calls
            .get_or_create(&LlmLabels {
                provider: self.llm.provider_name().to_string(),
                outcome: outcome.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        let turn = result.map_err(|e| AgentOutcome::Failed(format!("LLM call failed: {e}")))?;
        self.events.record(Event::Turn(&turn));
        let provider = self.llm.provider_name();
        self.metrics
            .llm_usage(provider, &self.params.model, &turn.usage);
        self.events.record(Event::Usage {
            provider,
            model: &self.params.model,
            usage: &turn.usage,
        });
        Ok(turn)
    }

    async fn run_tools(
        &self,
        message: &Message,
        conversation: &mut Vec<Message>,
        repeats: &mut RepeatDetector,
    ) -> Result<(), AgentOutcome> {
        let mut results = Vec::new();
        for (id, name, input) in message.tool_uses() {
            let seen = repeats.observe(name, input);
            if seen >= self.max_repeated_tool_calls {
                return Err(AgentOutcome::Failed(format!(
                    "the model made the same tool call {seen} times in a row ({name} {input}); \
                     stopping a loop that makes no progress"
                )));
            }
            results.push(self.run_tool(id, name, input).await?);
        }
        conversation.push(Message {
            role: Role::User,
            content: results,
        });
        Ok(())
    }

    async fn run_tool(
        &self,
        id: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<Block, AgentOutcome> {
        self.events.record(Event::ToolStarted { id, name, input });
        let started = Instant::now();
        let result = if self.tools.iter().any(|t| t.name == name) {
            match self.tool_executor.execute(name, input, self.cancel).await {
                Ok(outcome) => Ok(outcome),
                Err(ToolFailure::Unavailable(message)) => {
                    return Err(AgentOutcome::Failed(message));
                }
                Err(ToolFailure::Tool(e)) => Err(e),
            }
        } else {
            // The model may name a tool it was not offered; it gets an answer it can act on.
            Ok(ToolOutcome {
                output: format!(
                    "tool '{name}' is not available to this agent; available: {}",
                    self.tools
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                is_error: true,
                effect: ToolEffect::None,
            })
        };
        let outcome = match &result {
            Ok(o) if o.is_error => "error",
            Ok(_) => "ok",
            Err(_) => "interrupted",
        };
        self.metrics
            .tool_calls
            .get_or_create(&ToolLabels {
                tool: name.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(o) => o,
            Err(ToolError::Cancelled) => return Err(AgentOutcome::Interrupted),
            Err(e) => return Err(AgentOutcome::Failed(format!("tool {name} failed: {e}"))),
        };
        if self.cancel.is_cancelled() {
            return Err(AgentOutcome::Interrupted);
        }
        self.events.record(Event::ToolFinished {
            id,
            outcome: &outcome,
        });
        Ok(Block::ToolResult {
            tool_use_id: id.to_string(),
            content: outcome.output,
            is_error: outcome.is_error,
        })
    }
}

/// Drops a trailing assistant message whose tool calls never got results (an interrupted
/// turn), so the stored history is one the providers accept on the next execution.
pub fn trim_unanswered(conversation: &mut Vec<Message>) {
    if let Some(last) = conversation.last()
        && last.role == Role::Assistant
        && last.tool_uses().next().is_some()
    {
        conversation.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Answers each request with the next scripted turn; a request past the script waits
    /// forever (only cancellation ends it).
    struct FakeModel {
        script: Mutex<VecDeque<Result<AssistantTurn, LlmError>>>,
        requests: Mutex<usize>,
    }

    impl FakeModel {
        fn new(turns: impl IntoIterator<Item = Result<AssistantTurn, LlmError>>) -> Self {
            Self {
                script: Mutex::new(turns.into_iter().collect()),
                requests: Mutex::new(0),
            }
        }

        fn requests(&self) -> usize {
            *self.requests.lock().expect("lock")
        }
    }

    impl Model for FakeModel {
        fn provider_name(&self) -> &'static str {
            "fake"
        }

        async fn stream_turn(
            &self,
            _request: &LlmRequest<'_>,
            on_text: &mut (dyn FnMut(&str) + Send),
        ) -> Result<AssistantTurn, LlmError> {
            *self.requests.lock().expect("lock") += 1;
            let next = self.script.lock().expect("lock").pop_front();
            match next {
                Some(turn) => {
                    if let Ok(t) = &turn {
                        for block in &t.content {
                            if let Block::Text(text) = block {
                                on_text(text);
                            }
                        }
                    }
                    turn
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Records the tools called and answers each with `answer`.
    struct FakeTools {
        calls: Mutex<Vec<String>>,
        answer: fn() -> Result<ToolOutcome, ToolFailure>,
    }

    impl FakeTools {
        fn answering(answer: fn() -> Result<ToolOutcome, ToolFailure>) -> Self {
            Self {
                calls: Mutex::new(Vec::new()),
                answer,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("lock").clone()
        }
    }

    fn done() -> Result<ToolOutcome, ToolFailure> {
        Ok(ToolOutcome {
            output: "done".into(),
            is_error: false,
            effect: ToolEffect::None,
        })
    }

    impl ToolExecutor for FakeTools {
        async fn execute(
            &self,
            name: &str,
            input: &serde_json::Value,
            _cancel: &CancellationToken,
        ) -> Result<ToolOutcome, ToolFailure> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("{name} {input}"));
            (self.answer)()
        }
    }

    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Events for Recorded {
        fn record(&self, event: Event<'_>) {
            let line = match event {
                Event::TurnStarted => "turn".to_string(),
                Event::TextDelta(t) => format!("text {t}"),
                Event::Turn(t) => format!("turn done {:?}", t.stop_reason),
                Event::ToolStarted { name, .. } => format!("tool {name}"),
                Event::ToolFinished { outcome, .. } => format!("result {}", outcome.output),
                // Asserted by the budget tests and the status projection's.
                Event::Usage { .. } => return,
            };
            self.0.lock().expect("lock").push(line);
        }
    }

    fn text(t: &str, stop: StopReason) -> Result<AssistantTurn, LlmError> {
        Ok(AssistantTurn {
            content: vec![Block::Text(t.into())],
            stop_reason: stop,
            usage: Default::default(),
        })
    }

    fn call(
        id: &str,
        name: &str,
        input: serde_json::Value,
        stop: StopReason,
    ) -> Result<AssistantTurn, LlmError> {
        Ok(AssistantTurn {
            content: vec![Block::ToolUse {
                id: id.into(),
                name: name.into(),
                input,
            }],
            stop_reason: stop,
            usage: Default::default(),
        })
    }

    struct Outcome {
        outcome: AgentOutcome,
        conversation: Vec<Message>,
        requests: usize,
        tool_calls: Vec<String>,
        events: Vec<String>,
    }

    async fn run_with(
        model: FakeModel,
        tools: FakeTools,
        max_turns: u32,
        cancel: CancellationToken,
    ) -> Outcome {
        let events = Recorded::default();
        let metrics = Metrics::new();
        let run = AgentRun {
            llm: &model,
            tool_executor: &tools,
            events: &events,
            params: ModelParams {
                model: "m".into(),
                max_tokens: 100,
                temperature: None,
            },
            system: "sys".into(),
            tools: crate::tools::specs(&[]).expect("specs"),
            max_turns,
            max_repeated_tool_calls: 3,
            cancel: &cancel,
            metrics: &metrics,
            token_budget: None,
        };
        let mut conversation = vec![Message::user_text("go")];
        let outcome = run.run(&mut conversation).await;
        let events = events.0.lock().expect("lock").clone();
        Outcome {
            outcome,
            conversation,
            requests: model.requests(),
            tool_calls: tools.calls(),
            events,
        }
    }

    async fn run_script(turns: Vec<Result<AssistantTurn, LlmError>>) -> Outcome {
        run_with(
            FakeModel::new(turns),
            FakeTools::answering(done),
            50,
            CancellationToken::new(),
        )
        .await
    }

    fn failure(outcome: &AgentOutcome) -> &str {
        match outcome {
            AgentOutcome::Failed(m) => m,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn with_usage(
        turn: Result<AssistantTurn, LlmError>,
        input: u64,
        output: u64,
    ) -> Result<AssistantTurn, LlmError> {
        turn.map(|t| AssistantTurn {
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                reported: true,
                ..Default::default()
            },
            ..t
        })
    }

    /// Runs the script under a budget; returns the outcome, the model requests, the tools run
    /// and the usage events seen.
    async fn run_budgeted(
        turns: Vec<Result<AssistantTurn, LlmError>>,
        budget: TokenBudget,
    ) -> (AgentOutcome, usize, Vec<String>, Vec<u64>) {
        struct Usages(Mutex<Vec<u64>>);
        impl Events for Usages {
            fn record(&self, event: Event<'_>) {
                if let Event::Usage {
                    usage,
                    model,
                    provider,
                } = event
                {
                    assert_eq!((provider, model), ("fake", "m"));
                    self.0.lock().expect("lock").push(usage.input_tokens);
                }
            }
        }
        let model = FakeModel::new(turns);
        let tools = FakeTools::answering(done);
        let events = Usages(Mutex::new(Vec::new()));
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let run = AgentRun {
            llm: &model,
            tool_executor: &tools,
            events: &events,
            params: ModelParams {
                model: "m".into(),
                max_tokens: 100,
                temperature: None,
            },
            system: "sys".into(),
            tools: crate::tools::specs(&[]).expect("specs"),
            max_turns: 10,
            max_repeated_tool_calls: 3,
            cancel: &cancel,
            metrics: &metrics,
            token_budget: Some(budget),
        };
        let mut conversation = vec![Message::user_text("go")];
        let outcome = run.run(&mut conversation).await;
        let usages = events.0.lock().expect("lock").clone();
        (outcome, model.requests(), tools.calls(), usages)
    }

    #[tokio::test]
    async fn a_call_past_the_budget_fails_before_its_tools_run() {
        let read = || {
            call(
                "t1",
                "read_file",
                serde_json::json!({"path": "a"}),
                StopReason::ToolUse,
            )
        };
        let budget = TokenBudget {
            limit: 150,
            source: BudgetSource::Execution,
        };
        let (outcome, requests, tools, usages) = run_budgeted(
            vec![
                with_usage(read(), 60, 10),
                with_usage(read(), 70, 11),
                text("never", StopReason::EndTurn),
            ],
            budget,
        )
        .await;
        assert_eq!(
            failure(&outcome),
            "token budget exceeded: 151 tokens used of 150 (the execution's token_budget; \
             input and output tokens of every model call)"
        );
        assert_eq!(requests, 2);
        assert_eq!(
            tools.len(),
            1,
            "the second turn's tool must not run: {tools:?}"
        );
        assert_eq!(usages, [60, 70]);
    }

    #[tokio::test]
    async fn using_exactly_the_budget_is_allowed() {
        let budget = TokenBudget {
            limit: 150,
            source: BudgetSource::Agent,
        };
        let (outcome, ..) = run_budgeted(
            vec![with_usage(text("done", StopReason::EndTurn), 140, 10)],
            budget,
        )
        .await;
        assert_eq!(outcome, AgentOutcome::Completed);
        let (outcome, ..) = run_budgeted(
            vec![with_usage(text("done", StopReason::EndTurn), 140, 11)],
            budget,
        )
        .await;
        assert!(failure(&outcome).contains("of 150 (the agent's token_budget"));
    }

    #[tokio::test]
    async fn end_turn_completes_and_streams_the_text() {
        let r = run_script(vec![text("hello", StopReason::EndTurn)]).await;
        assert_eq!(r.outcome, AgentOutcome::Completed);
        assert_eq!(r.requests, 1);
        assert_eq!(r.conversation.len(), 2);
        assert_eq!(r.events, ["turn", "text hello", "turn done EndTurn"]);
    }

    #[tokio::test]
    async fn tool_results_go_back_to_the_model_until_it_ends_its_turn() {
        let r = run_script(vec![
            call(
                "t1",
                "read_file",
                serde_json::json!({"path": "a"}),
                StopReason::ToolUse,
            ),
            text("read it", StopReason::EndTurn),
        ])
        .await;
        assert_eq!(r.outcome, AgentOutcome::Completed);
        assert_eq!(r.tool_calls, [r#"read_file {"path":"a"}"#]);
        // user, assistant (call), user (result), assistant (answer)
        assert_eq!(r.conversation.len(), 4);
        assert!(matches!(
            &r.conversation[2].content[0],
            Block::ToolResult { tool_use_id, content, is_error: false } if tool_use_id == "t1" && content == "done"
        ));
        assert!(r.events.contains(&"tool read_file".to_string()));
        assert!(r.events.contains(&"result done".to_string()));
    }

    #[tokio::test]
    async fn other_stop_reasons_without_tool_calls_complete() {
        for stop in [
            StopReason::MaxTokens,
            StopReason::StopSequence,
            StopReason::Other("x".into()),
        ] {
            let r = run_script(vec![text("partial", stop.clone())]).await;
            assert_eq!(r.outcome, AgentOutcome::Completed, "{stop:?}");
        }
    }

    #[tokio::test]
    async fn pause_turn_asks_the_model_again() {
        let r = run_script(vec![
            text("thinking", StopReason::PauseTurn),
            text("done", StopReason::EndTurn),
        ])
        .await;
        assert_eq!(r.outcome, AgentOutcome::Completed);
        assert_eq!(r.requests, 2);
    }

    #[tokio::test]
    async fn max_tokens_in_the_middle_of_a_tool_call_fails_without_running_it() {
        let r = run_script(vec![call(
            "t1",
            "write_file",
            serde_json::json!({"path": "a"}),
            StopReason::MaxTokens,
        )])
        .await;
        assert!(
            failure(&r.outcome).contains("max_tokens (100)"),
            "{:?}",
            r.outcome
        );
        assert!(r.tool_calls.is_empty());
    }

    #[tokio::test]
    async fn refusal_and_context_overflow_fail() {
        let r = run_script(vec![text("no", StopReason::Refusal)]).await;
        assert_eq!(failure(&r.outcome), "the model refused to continue");
        let r = run_script(vec![text("", StopReason::ContextWindowExceeded)]).await;
        assert!(failure(&r.outcome).contains("context window"));
    }

    #[tokio::test]
    async fn the_turn_limit_stops_a_model_that_never_finishes() {
        let turns: Vec<_> = (0..5)
            .map(|i| {
                call(
                    &format!("t{i}"),
                    "read_file",
                    serde_json::json!({"path": i}),
                    StopReason::ToolUse,
                )
            })
            .collect();
        let r = run_with(
            FakeModel::new(turns),
            FakeTools::answering(done),
            3,
            CancellationToken::new(),
        )
        .await;
        assert!(
            failure(&r.outcome).contains("turn limit of 3"),
            "{:?}",
            r.outcome
        );
        assert_eq!(r.requests, 3);
        assert_eq!(r.tool_calls.len(), 3);
    }

    #[tokio::test]
    async fn repeated_identical_calls_stop_the_loop() {
        let same = || {
            call(
                "t",
                "read_file",
                serde_json::json!({"path": "a"}),
                StopReason::ToolUse,
            )
        };
        let r = run_script(vec![same(), same(), same(), same()]).await;
        assert!(
            failure(&r.outcome).contains("same tool call 3 times in a row"),
            "{:?}",
            r.outcome
        );
        // The third identical call is refused, not run.
        assert_eq!(r.tool_calls.len(), 2);
    }

    #[tokio::test]
    async fn an_unknown_tool_gets_an_error_result_the_model_can_act_on() {
        let r = run_script(vec![
            call(
                "t1",
                "launch_rockets",
                serde_json::json!({}),
                StopReason::ToolUse,
            ),
            text("sorry", StopReason::EndTurn),
        ])
        .await;
        assert_eq!(r.outcome, AgentOutcome::Completed);
        assert!(r.tool_calls.is_empty(), "an unknown tool is never executed");
        let Block::ToolResult {
            content, is_error, ..
        } = &r.conversation[2].content[0]
        else {
            panic!("no tool result: {:?}", r.conversation);
        };
        assert!(*is_error);
        assert!(
            content.contains("'launch_rockets' is not available"),
            "{content}"
        );
    }

    #[tokio::test]
    async fn an_llm_error_fails_the_execution() {
        let r = run_script(vec![Err(LlmError::Decode("garbage".into()))]).await;
        assert!(
            failure(&r.outcome).starts_with("LLM call failed:"),
            "{:?}",
            r.outcome
        );
    }

    #[tokio::test]
    async fn a_missing_sandbox_fails_the_execution() {
        let r = run_with(
            FakeModel::new(vec![call(
                "t1",
                "read_file",
                serde_json::json!({}),
                StopReason::ToolUse,
            )]),
            FakeTools::answering(|| Err(ToolFailure::Unavailable("no sandbox".into()))),
            50,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(failure(&r.outcome), "no sandbox");
    }

    #[tokio::test]
    async fn cancellation_interrupts_a_model_request() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        // The script is empty: the request would wait forever.
        let r = run_with(
            FakeModel::new(vec![]),
            FakeTools::answering(done),
            50,
            cancel,
        )
        .await;
        assert_eq!(r.outcome, AgentOutcome::Interrupted);
    }

    #[tokio::test]
    async fn cancellation_interrupts_a_tool_call() {
        let r = run_with(
            FakeModel::new(vec![call(
                "t1",
                "run_command",
                serde_json::json!({}),
                StopReason::ToolUse,
            )]),
            FakeTools::answering(|| Err(ToolFailure::Tool(ToolError::Cancelled))),
            50,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(r.outcome, AgentOutcome::Interrupted);
        // The unanswered call stays last, for trim_unanswered to drop before saving.
        assert_eq!(r.conversation.len(), 2);
    }

    #[test]
    fn repeat_detector_counts_consecutive_identical_calls_only() {
        let mut d = RepeatDetector::default();
        let a = serde_json::json!({"path": "a"});
        let b = serde_json::json!({"path": "b"});
        assert_eq!(d.observe("read_file", &a), 1);
        assert_eq!(d.observe("read_file", &a), 2);
        assert_eq!(d.observe("read_file", &b), 1);
        assert_eq!(d.observe("read_file", &a), 1);
        assert_eq!(d.observe("list_directory", &a), 1);
    }

    #[test]
    fn trailing_unanswered_tool_call_is_trimmed() {
        let mut c = vec![
            Message::user_text("hi"),
            Message {
                role: Role::Assistant,
                content: vec![Block::ToolUse {
                    id: "t".into(),
                    name: "x".into(),
                    input: serde_json::json!({}),
                }],
            },
        ];
        trim_unanswered(&mut c);
        assert_eq!(c.len(), 1);
        trim_unanswered(&mut c);
        assert_eq!(c.len(), 1);
    }
}
