//! `stigmer agent ...`

use std::io::Read as _;
use std::path::Path;

use stigmer_proto::agent::v1::{
    Agent, ApplyAgentRequest, DeleteAgentRequest, GetAgentRequest, ListAgentsRequest,
};

use crate::args::{AgentCommand, Output};
use crate::client::Agents;
use crate::error::CliError;
use crate::{agent_file, json};

pub async fn run(
    mut agents: Agents,
    command: AgentCommand,
    output: Output,
) -> Result<(), CliError> {
    match command {
        AgentCommand::Apply { file } => {
            let agent = agent_file::parse(&read_file(&file)?)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let applied = agents
                .apply_agent(ApplyAgentRequest { agent: Some(agent) })
                .await?
                .into_inner();
            print_one(
                &applied,
                output,
                &format!("agent '{}' applied", applied.name),
            );
        }
        AgentCommand::List => {
            let list = agents
                .list_agents(ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            match output {
                Output::Json => list.iter().for_each(|a| println!("{}", json::agent(a))),
                Output::Text => print_table(&list),
            }
        }
        AgentCommand::Get { name } => {
            let agent = agents
                .get_agent(GetAgentRequest { name })
                .await?
                .into_inner();
            match output {
                Output::Json => println!("{}", json::agent(&agent)),
                Output::Text => println!("{}", pretty(&json::agent(&agent))),
            }
        }
        AgentCommand::Delete { name } => {
            agents
                .delete_agent(DeleteAgentRequest { name: name.clone() })
                .await?;
            if output == Output::Text {
                println!("agent '{name}' deleted");
            }
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Io(format!("cannot read standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))
}

fn print_one(agent: &Agent, output: Output, text: &str) {
    match output {
        Output::Json => println!("{}", json::agent(agent)),
        Output::Text => println!("{text}"),
    }
}

fn print_table(agents: &[Agent]) {
    if agents.is_empty() {
        println!("no agents yet: create one with `stigmer agent apply -f agent.yaml`");
        return;
    }
    println!("{:<24} {:<12} {:<28} UPDATED", "NAME", "PROVIDER", "MODEL");
    for a in agents {
        let model = a.model.clone().unwrap_or_default();
        let or_default = |s: &str| {
            if s.is_empty() {
                "(runner)".to_string()
            } else {
                s.to_string()
            }
        };
        println!(
            "{:<24} {:<12} {:<28} {}",
            a.name,
            or_default(&model.provider),
            or_default(&model.name),
            a.updated_at
        );
    }
}

pub fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
