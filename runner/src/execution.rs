//! One claimed execution from start to terminal status: resolve the agent and model, open the
//! session's sandbox, run the agent loop, save the conversation, report the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stigmer_proto::ExecutionPhase;
use stigmer_proto::agent::v1::Agent;
use stigmer_proto::agentexecution::v1::{
    AgentExecutionStatus, AgentMessage, ConversationMessage, MessageType, Session,
};
use stigmer_proto::runner::v1::ClaimedExecution;

use crate::agent::{
    AgentOutcome, AgentRun, BudgetSource, ModelParams, TokenBudget, ToolExecutor, ToolFailure,
    trim_unanswered,
};
use crate::context::WorkerCtx;
use crate::conversation::{self, Message};
use crate::inflight::{ExecHandle, Interrupt};
use crate::live::ExecutionText;
use crate::mcp::{self, McpTools, StartContext};
use crate::projection::StatusProjection;
use crate::sandbox::Network;
use crate::sandboxes::{Opener, SessionSandbox};
use crate::status::{StartError, StatusReporter, now};
use crate::tools::{self, ToolContext, ToolLimits, ToolOutcome};

const DEFAULT_INSTRUCTIONS: &str = "You are a helpful AI assistant.";

use crate::inflight::Ending;

/// Everything resolved before the loop can start.
struct Prepared {
    params: ModelParams,
    token_budget: Option<TokenBudget>,
    system: String,
    tools: Vec<crate::llm::ToolSpec>,
    env: BTreeMap<String, String>,
    conversation: Vec<Message>,
}

/// How long the start may take to be recorded when the claim names no lease TTL.
const DEFAULT_START_BUDGET: Duration = Duration::from_secs(30);

pub async fn run(
    ctx: Arc<WorkerCtx>,
    claimed: ClaimedExecution,
    handle: Arc<ExecHandle>,
) -> Ending {
    let execution = claimed.execution.unwrap_or_default();
    let spec = execution.spec.unwrap_or_default();
    let initial = start_status(execution.status.unwrap_or_default(), &spec.message);
    // Past the lease's TTL without an answer the lease is gone anyway.
    let start_budget = claimed
        .lease
        .as_ref()
        .map(|l| Duration::from_millis(u64::from(l.ttl_ms)))
        .filter(|ttl| !ttl.is_zero())
        .unwrap_or(DEFAULT_START_BUDGET);
    let mut reporter = StatusReporter::new(
        ctx.client.clone(),
        handle.clone(),
        initial,
        ctx.config.status_flush_interval,
        ctx.health.clone(),
    );
    let agent = claimed.agent.unwrap_or_default();
    let session = claimed.session.unwrap_or_default();
    let (outcome, conversation) = match prepare(&ctx, &agent, &session, &spec).await {
        // Nothing has happened yet: the start is recorded before the first model request, so
        // that a runner dying from here on is known to have started (never run twice).
        Ok(mut prepared) => match reporter.start(start_budget).await {
            Ok(()) => {
                tracing::info!(
                    execution_id = %handle.execution_id,
                    agent = %agent.name,
                    session_id = %session.id,
                    "execution started"
                );
                let opener = Opener {
                    client: &ctx.client,
                    handle: &handle,
                    runner_id: &ctx.config.runner_id,
                };
                let sandbox = SessionSandbox::new(&ctx.sandboxes, opener, &session);
                let mcp = start_mcp(&agent, &mut prepared, &sandbox, &reporter, &handle).await;
                let tool_executor = SessionTools {
                    sandbox,
                    env: prepared.env.clone(),
                    network: Network::of_agent(&agent),
                    limits: &ctx.tool_limits,
                    mcp,
                };
                let text = ExecutionText::new(ctx.live.clone(), handle.execution_id.clone());
                let events = StatusProjection::new(&reporter).with_live_text(text);
                let run = AgentRun {
                    llm: &ctx.llm,
                    tool_executor: &tool_executor,
                    events: &events,
                    params: prepared.params.clone(),
                    system: prepared.system.clone(),
                    tools: prepared.tools.clone(),
                    max_turns: ctx.config.max_turns,
                    max_repeated_tool_calls: ctx.config.max_repeated_tool_calls,
                    cancel: &handle.cancel,
                    metrics: &ctx.health.metrics,
                    token_budget: prepared.token_budget,
                };
                let outcome = if prepared.tools.is_empty() && !agent.mcp_servers.is_empty() {
                    AgentOutcome::Failed(no_tools_message(&tool_executor.mcp.problems))
                } else {
                    run.run(&mut prepared.conversation).await
                };
                // However the loop ended: no server process outlives the execution.
                tool_executor.mcp.shutdown().await;
                (outcome, Some(prepared.conversation))
            }
            // Cancelled (reported below) or lost (nothing reported) before starting.
            Err(StartError::Interrupted) => (AgentOutcome::Interrupted, None),
            Err(e) => {
                tracing::warn!(execution_id = %handle.execution_id, error = %e, "not started; nothing ran and nothing is reported");
                reporter.abandon().await;
                return Ending::Lost(e.to_string());
            }
        },
        Err(message) => (AgentOutcome::Failed(message), None),
    };
    let ending = decide(outcome, handle.interrupted());
    if let Ending::Lost(reason) = &ending {
        tracing::warn!(execution_id = %handle.execution_id, %reason, "lease lost; stopping without a report");
        reporter.abandon().await;
        return ending;
    }
    // The history rides on the final status: stored in the same transaction, before the
    // session is freed, in one call.
    let history = conversation.map(|mut conversation| {
        trim_unanswered(&mut conversation);
        conversation::to_proto(&conversation)
    });
    report(reporter, &handle, ending, history).await
}

fn start_status(mut status: AgentExecutionStatus, message: &str) -> AgentExecutionStatus {
    status.phase = ExecutionPhase::ExecutionInProgress as i32;
    if status.started_at.is_empty() {
        status.started_at = now();
    }
    // Every execution the runner ends carries its usage, zero when no model call completed.
    status
        .usage
        .get_or_insert_with(stigmer_proto::agentexecution::v1::TokenUsage::default);
    if status.messages.is_empty() {
        status.messages.push(AgentMessage {
            r#type: MessageType::MessageHuman as i32,
            content: message.to_string(),
            timestamp: now(),
            ..Default::default()
        });
    }
    status
}

async fn prepare(
    ctx: &WorkerCtx,
    agent: &Agent,
    session: &Session,
    spec: &stigmer_proto::agentexecution::v1::AgentExecutionSpec,
) -> Result<Prepared, String> {
    let params = model_params(ctx, agent, spec)?;
    let token_budget = token_budget(agent, spec)?;
    let tools = tools::specs_for(agent.tool_choice())
        .map_err(|e| format!("agent '{}': {e}", agent.name))?;
    let mut conversation = conversation::from_proto(&session.history)
        .map_err(|e| format!("session {} has an unreadable history: {e}", session.id))?;
    if tools.is_empty() {
        conversation::tool_blocks_as_text(&mut conversation);
    }
    conversation.push(Message::user_text(spec.message.clone()));
    let mut env: BTreeMap<String, String> = agent.env.clone().into_iter().collect();
    env.extend(
        spec.runtime_env
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone())),
    );
    let system = if agent.instructions.trim().is_empty() {
        DEFAULT_INSTRUCTIONS.to_string()
    } else {
        agent.instructions.clone()
    };
    Ok(Prepared {
        params,
        token_budget,
        system,
        tools,
        env,
        conversation,
    })
}

/// Starts the agent's MCP servers (if any), adds their tools to the offered ones, and tells
/// the model and the user about the servers that could not be used.
async fn start_mcp(
    agent: &Agent,
    prepared: &mut Prepared,
    sandbox: &SessionSandbox<'_>,
    reporter: &StatusReporter,
    handle: &ExecHandle,
) -> McpTools {
    if agent.mcp_servers.is_empty() {
        return McpTools::default();
    }
    let Ok(http) = mcp::http_client() else {
        let mut tools = McpTools::default();
        tools
            .problems
            .push("MCP servers were not started: no HTTP client could be built".into());
        return tools;
    };
    let mcp = McpTools::start(
        &agent.mcp_servers,
        &StartContext {
            vars: &prepared.env,
            sandboxes: sandbox,
            http,
            cancel: &handle.cancel,
        },
    )
    .await;
    prepared.tools.extend(mcp.specs().iter().cloned());
    if !mcp.problems.is_empty() {
        tracing::warn!(execution_id = %handle.execution_id, problems = ?mcp.problems, "MCP servers not fully available");
        prepared.system.push_str(
            "\n\nSome MCP tool servers of this agent could not be used, so their tools are not \
             available:\n",
        );
        for problem in &mcp.problems {
            prepared.system.push_str(&format!("- {problem}\n"));
        }
        let problems = mcp.problems.clone();
        reporter.update(move |s| {
            for problem in problems {
                s.messages.push(AgentMessage {
                    r#type: MessageType::MessageSystem as i32,
                    content: problem,
                    timestamp: now(),
                    ..Default::default()
                });
            }
        });
    }
    mcp
}

/// Why an execution whose agent has only MCP tools cannot run when none of them started.
fn no_tools_message(problems: &[String]) -> String {
    format!(
        "no tool can be offered to the model: the agent has no built-in tools and none of its \
         MCP servers could be used ({})",
        problems.join("; ")
    )
}

/// The agent's tools, run in the session's sandbox (opened on the first call).
struct SessionTools<'a> {
    sandbox: SessionSandbox<'a>,
    env: BTreeMap<String, String>,
    network: Network,
    limits: &'a ToolLimits,
    mcp: McpTools,
}

impl ToolExecutor for SessionTools<'_> {
    async fn execute(
        &self,
        name: &str,
        input: &serde_json::Value,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<ToolOutcome, ToolFailure> {
        if self.mcp.offers(name) {
            return self
                .mcp
                .call(
                    name,
                    input,
                    self.limits.command_timeout,
                    self.limits.output_limit,
                    cancel,
                )
                .await
                .map_err(ToolFailure::Tool);
        }
        let sandbox = self.sandbox.get().await.map_err(ToolFailure::Unavailable)?;
        let ctx = ToolContext {
            sandbox,
            env: &self.env,
            cancel,
            limits: self.limits,
            network: self.network,
        };
        tools::execute(name, input, &ctx)
            .await
            .map_err(ToolFailure::Tool)
    }
}

/// Execution config overrides the agent, which overrides the runner's defaults.
fn model_params(
    ctx: &WorkerCtx,
    agent: &Agent,
    spec: &stigmer_proto::agentexecution::v1::AgentExecutionSpec,
) -> Result<ModelParams, String> {
    let runner = &ctx.config.llm;
    let model_cfg = agent.model.clone().unwrap_or_default();
    if !model_cfg.provider.is_empty()
        && crate::llm::Provider::parse(&model_cfg.provider) != Some(runner.provider)
    {
        return Err(format!(
            "agent '{}' asks for provider '{}' but this runner is configured for '{}' \
             (STIGMER_LLM_PROVIDER)",
            agent.name,
            model_cfg.provider,
            runner.provider.as_str()
        ));
    }
    let from_spec = spec
        .execution_config
        .as_ref()
        .map(|c| c.model_name.clone())
        .filter(|m| !m.is_empty());
    let model = from_spec
        .or_else(|| Some(model_cfg.name.clone()).filter(|m| !m.is_empty()))
        .unwrap_or_else(|| runner.model.clone());
    Ok(ModelParams {
        model,
        max_tokens: if model_cfg.max_tokens > 0 {
            model_cfg.max_tokens
        } else {
            runner.max_tokens
        },
        temperature: model_cfg.temperature.or(runner.temperature),
    })
}

/// The execution's budget replaces the agent's (as its model name does), whether larger or
/// smaller. The control plane validated both; a bad value from elsewhere fails the execution
/// before anything runs rather than running it without a cap.
fn token_budget(
    agent: &Agent,
    spec: &stigmer_proto::agentexecution::v1::AgentExecutionSpec,
) -> Result<Option<TokenBudget>, String> {
    let from_execution = spec.execution_config.as_ref().and_then(|c| c.token_budget);
    let (limit, source, field) = match (from_execution, agent.token_budget) {
        (Some(limit), _) => (
            limit,
            BudgetSource::Execution,
            "execution_config.token_budget",
        ),
        (None, Some(limit)) => (limit, BudgetSource::Agent, "the agent's token_budget"),
        (None, None) => return Ok(None),
    };
    stigmer_proto::rules::check_token_budget(field, Some(i128::from(limit)))
        .map_err(|e| e.to_string())?;
    Ok(Some(TokenBudget { limit, source }))
}

fn decide(outcome: AgentOutcome, interrupt: Option<Interrupt>) -> Ending {
    match (interrupt, outcome) {
        (Some(Interrupt::Lost(r)), _) => Ending::Lost(r),
        // The loop finished on its own before it noticed the interrupt: keep its result.
        (_, AgentOutcome::Completed) => Ending::Completed,
        (_, AgentOutcome::Failed(m)) => Ending::Failed(m),
        (Some(Interrupt::Cancelled(r)), AgentOutcome::Interrupted) => Ending::Cancelled(r),
        (Some(Interrupt::Shutdown(r)), AgentOutcome::Interrupted) => Ending::Cancelled(r),
        (None, AgentOutcome::Interrupted) => Ending::Cancelled("interrupted".into()),
    }
}

async fn report(
    reporter: StatusReporter,
    handle: &ExecHandle,
    ending: Ending,
    history: Option<Vec<ConversationMessage>>,
) -> Ending {
    let (phase, error) = match &ending {
        Ending::Completed => (ExecutionPhase::ExecutionCompleted, None),
        Ending::Failed(m) => (ExecutionPhase::ExecutionFailed, Some(m.clone())),
        Ending::Cancelled(r) => (ExecutionPhase::ExecutionCancelled, Some(r.clone())),
        Ending::Lost(_) => return ending,
    };
    let result = reporter
        .finish(history, |s| {
            s.phase = phase as i32;
            s.completed_at = now();
            mark_unfinished_tool_calls(s);
            crate::projection::sync_message_copies(s, None);
            if let Some(error) = &error {
                s.error = error.clone();
                s.messages.push(AgentMessage {
                    r#type: MessageType::MessageSystem as i32,
                    content: error.clone(),
                    timestamp: now(),
                    ..Default::default()
                });
            }
        })
        .await;
    match result {
        Ok(_) => {
            tracing::info!(execution_id = %handle.execution_id, outcome = ending.label(), error = error.as_deref().unwrap_or(""), "execution finished");
            ending
        }
        Err(e) => {
            tracing::error!(execution_id = %handle.execution_id, error = %e, "terminal status not recorded");
            Ending::Lost(e.to_string())
        }
    }
}

/// A tool call still PENDING or RUNNING when the execution ends did not finish.
fn mark_unfinished_tool_calls(s: &mut AgentExecutionStatus) {
    use stigmer_proto::agentexecution::v1::ToolCallStatus;
    let at = now();
    for call in &mut s.tool_calls {
        let open = call.status == ToolCallStatus::ToolCallPending as i32
            || call.status == ToolCallStatus::ToolCallRunning as i32;
        if open {
            call.status = ToolCallStatus::ToolCallFailed as i32;
            call.error = "not finished: the execution ended first".into();
            call.completed_at = at.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_lease_wins_over_everything() {
        assert_eq!(
            decide(AgentOutcome::Completed, Some(Interrupt::Lost("x".into()))),
            Ending::Lost("x".into())
        );
    }

    #[test]
    fn interrupted_loop_reports_the_reason() {
        assert_eq!(
            decide(
                AgentOutcome::Interrupted,
                Some(Interrupt::Cancelled("user asked".into()))
            ),
            Ending::Cancelled("user asked".into())
        );
        assert_eq!(
            decide(
                AgentOutcome::Interrupted,
                Some(Interrupt::Shutdown("drain".into()))
            ),
            Ending::Cancelled("drain".into())
        );
    }

    #[test]
    fn a_result_reached_before_the_interrupt_is_kept() {
        assert_eq!(
            decide(
                AgentOutcome::Completed,
                Some(Interrupt::Cancelled("late".into()))
            ),
            Ending::Completed
        );
    }

    #[test]
    fn no_tool_at_all_names_every_server_problem() {
        let message = no_tools_message(&["MCP server 'a' did not start: x".into()]);
        assert!(message.starts_with("no tool can be offered"), "{message}");
        assert!(
            message.contains("MCP server 'a' did not start: x"),
            "{message}"
        );
    }

    #[test]
    fn the_execution_budget_replaces_the_agent_budget() {
        use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, ExecutionConfig};
        let agent = |budget| Agent {
            token_budget: budget,
            ..Default::default()
        };
        let spec = |budget| AgentExecutionSpec {
            execution_config: Some(ExecutionConfig {
                token_budget: budget,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(token_budget(&agent(None), &spec(None)), Ok(None));
        let only_agent = token_budget(&agent(Some(500)), &spec(None)).expect("valid");
        assert_eq!(
            only_agent,
            Some(TokenBudget {
                limit: 500,
                source: BudgetSource::Agent
            })
        );
        for execution in [100, 900] {
            let both = token_budget(&agent(Some(500)), &spec(Some(execution))).expect("valid");
            assert_eq!(
                both,
                Some(TokenBudget {
                    limit: execution,
                    source: BudgetSource::Execution
                })
            );
        }
        let err = token_budget(&agent(Some(0)), &spec(None)).expect_err("zero");
        assert!(
            err.contains("the agent's token_budget 0 is invalid"),
            "{err}"
        );
    }

    #[test]
    fn start_status_adds_the_human_message_once() {
        let s = start_status(AgentExecutionStatus::default(), "hello");
        assert_eq!(s.phase, ExecutionPhase::ExecutionInProgress as i32);
        assert_eq!(s.messages.len(), 1);
        assert!(!s.started_at.is_empty());
        assert_eq!(s.usage, Some(Default::default()));
        let again = start_status(s.clone(), "hello");
        assert_eq!(again.messages.len(), 1);
        assert_eq!(again.started_at, s.started_at);
    }
}
