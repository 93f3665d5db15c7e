//! AgentService: what to run, addressed by a unique name.

use std::sync::Arc;

use stigmer_proto::agent::v1::agent_service_server::AgentService;
use stigmer_proto::agent::v1::{
    Agent, ApplyAgentRequest, DeleteAgentRequest, DeleteAgentResponse, GetAgentRequest,
    ListAgentsRequest, ListAgentsResponse,
};
use tonic::{Request, Response};

use super::{ApiError, ApiResult, Shared, required};
use crate::clock::Now;

const MAX_NAME_LEN: usize = 63;
const PROVIDERS: [&str; 4] = ["", "anthropic", "openai", "ollama"];

pub struct AgentApi {
    shared: Arc<Shared>,
}

impl AgentApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn apply_agent(&self, request: Request<ApplyAgentRequest>) -> ApiResult<Agent> {
        let mut agent = request
            .into_inner()
            .agent
            .ok_or_else(|| ApiError::invalid("agent is required"))?;
        validate(&agent).map_err(ApiError::InvalidArgument)?;
        super::mcp::validate(&agent.mcp_servers, self.shared.cloud.is_some())
            .map_err(ApiError::InvalidArgument)?;
        let now = Now::read().rfc3339();
        let agent = self
            .shared
            .store
            .write(move |tx| {
                let created_at = tx.agent(&agent.name)?.map(|old| old.created_at);
                agent.created_at = created_at
                    .filter(|at| !at.is_empty())
                    .unwrap_or_else(|| now.clone());
                agent.updated_at = now;
                tx.put_agent(&agent)?;
                Ok::<_, ApiError>(agent)
            })
            .await?;
        tracing::info!(agent = %agent.name, "agent applied");
        Ok(Response::new(agent))
    }

    async fn get_agent(&self, request: Request<GetAgentRequest>) -> ApiResult<Agent> {
        let name = required("name", &request.get_ref().name)?.to_string();
        let agent = self
            .shared
            .store
            .read(move |tx| {
                tx.agent(&name)?
                    .ok_or_else(|| ApiError::NotFound(format!("agent '{name}' not found")))
            })
            .await?;
        Ok(Response::new(agent))
    }

    async fn list_agents(&self, _: Request<ListAgentsRequest>) -> ApiResult<ListAgentsResponse> {
        let agents = self
            .shared
            .store
            .read(|tx| tx.list_agents().map_err(ApiError::from))
            .await?;
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn delete_agent(
        &self,
        request: Request<DeleteAgentRequest>,
    ) -> ApiResult<DeleteAgentResponse> {
        let name = required("name", &request.get_ref().name)?.to_string();
        let name = self
            .shared
            .store
            .write(move |tx| {
                if tx.agent(&name)?.is_none() {
                    return Err(ApiError::NotFound(format!("agent '{name}' not found")));
                }
                // Runners resolve the agent when they claim; deleting it under queued or
                // running work would strand that work.
                if tx.agent_has_live_executions(&name)? {
                    return Err(ApiError::FailedPrecondition(format!(
                        "agent '{name}' has executions that have not ended; cancel them or wait"
                    )));
                }
                tx.delete_agent(&name)?;
                Ok(name)
            })
            .await?;
        tracing::info!(agent = %name, "agent deleted");
        Ok(Response::new(DeleteAgentResponse {}))
    }
}

/// Checks what the server can check without knowing the runner's configuration.
pub fn validate(agent: &Agent) -> Result<(), String> {
    validate_name(&agent.name)?;
    if let Some(model) = &agent.model {
        if !PROVIDERS.contains(&model.provider.as_str()) {
            return Err(format!(
                "model.provider '{}' is not supported; use anthropic, openai, ollama or leave it empty",
                model.provider
            ));
        }
        if let Some(temperature) = model.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(format!(
                "model.temperature {temperature} is out of range; use 0 to 2"
            ));
        }
    }
    stigmer_proto::rules::check_agent_tools(agent).map_err(|e| e.to_string())?;
    stigmer_proto::rules::check_token_budget("token_budget", agent.token_budget.map(i128::from))
        .map_err(|e| e.to_string())?;
    if let Some(sandbox) = &agent.sandbox
        && stigmer_proto::agent::v1::NetworkAccess::try_from(sandbox.network).is_err()
    {
        return Err(format!(
            "sandbox.network {} is not a known value; use NETWORK_ACCESS_NONE or \
             NETWORK_ACCESS_ALLOW (a newer client than this control plane?)",
            sandbox.network
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alphanumeric =
        |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if bytes.is_empty() {
        return Err("agent name is required".to_string());
    }
    if bytes.len() > MAX_NAME_LEN
        || !bytes.iter().all(allowed)
        || !alphanumeric(bytes.first())
        || !alphanumeric(bytes.last())
    {
        return Err(format!(
            "agent name '{name}' is invalid: use 1-{MAX_NAME_LEN} lowercase letters, digits \
             and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use stigmer_proto::agent::v1::ModelConfig;

    use super::*;

    fn agent(name: &str) -> Agent {
        Agent {
            name: name.into(),
            ..Default::default()
        }
    }

    fn with_model(provider: &str, temperature: Option<f32>) -> Agent {
        Agent {
            model: Some(ModelConfig {
                provider: provider.into(),
                temperature,
                ..Default::default()
            }),
            ..agent("a")
        }
    }

    #[test]
    fn network_access_must_be_a_known_value() {
        use stigmer_proto::agent::v1::{NetworkAccess, SandboxPolicy};
        let with_network = |network: i32| Agent {
            sandbox: Some(SandboxPolicy { network }),
            ..agent("a")
        };
        for known in [
            NetworkAccess::Unspecified,
            NetworkAccess::None,
            NetworkAccess::Allow,
        ] {
            assert_eq!(validate(&with_network(known as i32)), Ok(()));
        }
        let err = validate(&with_network(7)).expect_err("unknown value");
        assert!(err.contains("sandbox.network 7"), "{err}");
    }

    #[test]
    fn tool_lists_and_budgets_are_checked() {
        use stigmer_proto::agent::v1::ToolList;
        let tools = |names: &[&str]| Agent {
            tools: Some(ToolList {
                names: names.iter().map(|n| n.to_string()).collect(),
            }),
            ..agent("a")
        };
        assert_eq!(validate(&tools(&[])), Ok(()));
        assert_eq!(validate(&tools(&["read_file", "run_command"])), Ok(()));
        let err = validate(&tools(&["read_file", "browse"])).expect_err("unknown");
        assert!(err.contains("unknown tool 'browse'"), "{err}");
        let old_style = Agent {
            allowed_tools: vec!["shell".into()],
            ..agent("a")
        };
        assert!(
            validate(&old_style)
                .expect_err("unknown")
                .contains("'shell'")
        );
        let budget = |b| Agent {
            token_budget: Some(b),
            ..agent("a")
        };
        assert_eq!(validate(&budget(1)), Ok(()));
        assert!(
            validate(&budget(0))
                .expect_err("zero")
                .contains("token_budget 0 is invalid")
        );
        assert!(validate(&budget(u64::MAX)).is_err());
    }

    #[test]
    fn accepts_valid_names() {
        for name in ["a", "a1", "code-reviewer", "0-x-9", &"a".repeat(63)] {
            assert_eq!(validate(&agent(name)), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for name in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate(&agent(name)).is_err(), "{name}");
        }
    }

    #[test]
    fn checks_provider_and_temperature() {
        for provider in PROVIDERS {
            assert_eq!(validate(&with_model(provider, None)), Ok(()));
        }
        assert!(
            validate(&with_model("gemini", None))
                .unwrap_err()
                .contains("gemini")
        );
        assert_eq!(validate(&with_model("", Some(0.0))), Ok(()));
        assert_eq!(validate(&with_model("", Some(2.0))), Ok(()));
        assert!(validate(&with_model("", Some(2.1))).is_err());
        assert!(validate(&with_model("", Some(-0.1))).is_err());
        assert!(validate(&with_model("", Some(f32::NAN))).is_err());
    }
}
