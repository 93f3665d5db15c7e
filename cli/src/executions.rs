//! `stigmer run` and `stigmer execution ...`.

use std::io::Write as _;

use stigmer_proto::agent::v1::{Agent, ApplyAgentRequest, GetAgentRequest};
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, CancelExecutionRequest, CreateExecutionRequest,
    ExecutionConfig, ExecutionPhase, GetExecutionRequest, ListExecutionsRequest, RuntimeEnvValue,
    SubscribeExecutionRequest, execution_event,
};

use crate::args::{ExecutionCommand, Output, PhaseArg, RunArgs};
use crate::client::Clients;
use crate::error::CliError;
use crate::render::Renderer;
use crate::{agents, json};

/// Exit status for a cancelled execution (completed 0, failed 1).
pub const EXIT_CANCELLED: u8 = 3;

pub async fn run(mut clients: Clients, args: RunArgs, output: Output) -> Result<u8, CliError> {
    ensure_agent(&mut clients, &args.agent).await?;
    let mut runtime_env = std::collections::HashMap::new();
    for (k, v) in &args.env {
        runtime_env.insert(
            k.clone(),
            RuntimeEnvValue {
                value: v.clone(),
                is_secret: false,
            },
        );
    }
    for (k, v) in &args.secret_env {
        runtime_env.insert(
            k.clone(),
            RuntimeEnvValue {
                value: v.clone(),
                is_secret: true,
            },
        );
    }
    let created = clients
        .executions
        .create_execution(CreateExecutionRequest {
            spec: Some(AgentExecutionSpec {
                session_id: args.session.clone().unwrap_or_default(),
                agent_id: args.agent.clone(),
                message: args.message.join(" "),
                execution_config: (args.model.is_some() || args.token_budget.is_some()).then(
                    || ExecutionConfig {
                        model_name: args.model.clone().unwrap_or_default(),
                        token_budget: args.token_budget,
                    },
                ),
                runtime_env,
            }),
            labels: Default::default(),
        })
        .await?
        .into_inner();
    let id = created.metadata.clone().unwrap_or_default().id;
    if args.detach {
        match output {
            Output::Json => println!("{}", json::execution(&created)),
            Output::Text => println!("{id}"),
        }
        return Ok(0);
    }
    if output == Output::Text {
        let session = created.spec.clone().unwrap_or_default().session_id;
        eprintln!("execution {id} (session {session}); Ctrl-C cancels");
    }
    follow(&mut clients, &id, output, true).await
}

/// The `default` agent is created on first use so that `stigmer run "..."` works at once.
async fn ensure_agent(clients: &mut Clients, name: &str) -> Result<(), CliError> {
    match clients
        .agents
        .get_agent(GetAgentRequest {
            name: name.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound && name == "default" => {
            clients
                .agents
                .apply_agent(ApplyAgentRequest {
                    agent: Some(Agent {
                        name: "default".into(),
                        ..Default::default()
                    }),
                })
                .await?;
            Ok(())
        }
        Err(s) if s.code() == tonic::Code::NotFound => Err(CliError::Usage(format!(
            "agent '{name}' not found; create it with `stigmer agent apply -f FILE` or see `stigmer agent list`"
        ))),
        Err(s) => Err(s.into()),
    }
}

/// Streams the execution until it ends. With `cancel_on_interrupt`, the first Ctrl-C cancels
/// the execution (and keeps following until it is CANCELLED); a second one leaves at once.
async fn follow(
    clients: &mut Clients,
    id: &str,
    output: Output,
    cancel_on_interrupt: bool,
) -> Result<u8, CliError> {
    // Text output follows the live stream (model text as it streams); JSON prints states.
    let mut stream = clients
        .executions
        .subscribe_live(SubscribeExecutionRequest { id: id.to_string() })
        .await?
        .into_inner();
    let mut renderer = Renderer::default();
    let mut last: Option<AgentExecution> = None;
    let mut interrupts = 0;
    loop {
        tokio::select! {
            item = stream.message() => {
                let Some(event) = item? else { break };
                match event.event {
                    Some(execution_event::Event::Execution(execution)) => {
                        show(&mut renderer, &execution, output);
                        last = Some(execution);
                    }
                    Some(execution_event::Event::Text(delta)) if output == Output::Text => {
                        print!("{}", renderer.text(&delta));
                        let _ = std::io::stdout().flush();
                    }
                    // Gaps need nothing: the next state carries the missing text.
                    _ => {}
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts > 1 || !cancel_on_interrupt {
                    eprintln!("\nleaving; execution {id} goes on unless it was cancelled");
                    return Ok(130);
                }
                eprintln!("\ncancelling {id} (Ctrl-C again to leave without waiting)");
                clients
                    .executions
                    .cancel_execution(CancelExecutionRequest { id: id.to_string(), reason: "cancelled from the CLI (Ctrl-C)".into() })
                    .await?;
            }
        }
    }
    let phase = last
        .as_ref()
        .and_then(|e| e.status.as_ref())
        .map(|s| s.phase())
        .unwrap_or(ExecutionPhase::Unspecified);
    Ok(exit_code(phase))
}

fn show(renderer: &mut Renderer, e: &AgentExecution, output: Output) {
    match output {
        Output::Json => println!("{}", json::execution(e)),
        Output::Text => {
            print!("{}", renderer.render(e));
            let _ = std::io::stdout().flush();
        }
    }
}

pub fn exit_code(phase: ExecutionPhase) -> u8 {
    match phase {
        ExecutionPhase::ExecutionCompleted => 0,
        ExecutionPhase::ExecutionCancelled => EXIT_CANCELLED,
        _ => 1,
    }
}

pub async fn execution(
    mut clients: Clients,
    command: ExecutionCommand,
    output: Output,
) -> Result<u8, CliError> {
    match command {
        ExecutionCommand::List {
            agent,
            session,
            phases,
            limit,
        } => {
            let list = clients
                .executions
                .list_executions(ListExecutionsRequest {
                    agent_id: agent.unwrap_or_default(),
                    session_id: session.unwrap_or_default(),
                    phases: phases.iter().map(|p| phase_of(*p) as i32).collect(),
                    limit,
                })
                .await?
                .into_inner()
                .executions;
            match output {
                Output::Json => list.iter().for_each(|e| println!("{}", json::execution(e))),
                Output::Text => print_table(&list),
            }
        }
        ExecutionCommand::Get { id } => {
            let e = clients
                .executions
                .get_execution(GetExecutionRequest { id })
                .await?
                .into_inner();
            match output {
                Output::Json => println!("{}", json::execution(&e)),
                Output::Text => println!("{}", agents::pretty(&json::execution(&e))),
            }
        }
        ExecutionCommand::Watch { id } => return follow(&mut clients, &id, output, false).await,
        ExecutionCommand::Cancel { id, reason } => {
            let e = clients
                .executions
                .cancel_execution(CancelExecutionRequest {
                    id: id.clone(),
                    reason,
                })
                .await?
                .into_inner();
            let phase = e
                .status
                .as_ref()
                .map(|s| s.phase())
                .unwrap_or(ExecutionPhase::Unspecified);
            match output {
                Output::Json => println!("{}", json::execution(&e)),
                Output::Text if phase == ExecutionPhase::ExecutionCancelled => {
                    println!("{id} cancelled")
                }
                Output::Text if phase.is_terminal() => {
                    println!("{id} had already ended ({})", phase.as_str_name())
                }
                Output::Text => {
                    println!("{id}: cancellation requested; the runner stops it shortly")
                }
            }
        }
    }
    Ok(0)
}

fn phase_of(p: PhaseArg) -> ExecutionPhase {
    match p {
        PhaseArg::Pending => ExecutionPhase::ExecutionPending,
        PhaseArg::InProgress => ExecutionPhase::ExecutionInProgress,
        PhaseArg::Completed => ExecutionPhase::ExecutionCompleted,
        PhaseArg::Failed => ExecutionPhase::ExecutionFailed,
        PhaseArg::Cancelled => ExecutionPhase::ExecutionCancelled,
    }
}

fn print_table(list: &[AgentExecution]) {
    if list.is_empty() {
        println!("no executions");
        return;
    }
    println!(
        "{:<44} {:<16} {:<22} {:<24} MESSAGE",
        "ID", "AGENT", "PHASE", "CREATED"
    );
    for e in list {
        let meta = e.metadata.clone().unwrap_or_default();
        let spec = e.spec.clone().unwrap_or_default();
        let phase = e
            .status
            .as_ref()
            .map(|s| s.phase())
            .unwrap_or(ExecutionPhase::Unspecified);
        let message: String = spec.message.chars().take(40).collect();
        println!(
            "{:<44} {:<16} {:<22} {:<24} {}",
            meta.id,
            spec.agent_id,
            phase.as_str_name(),
            meta.created_at,
            message.replace('\n', " ")
        );
    }
}
