//! Authenticated gRPC clients for the control plane, with errors a user can act on.

use std::time::Duration;

use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Agents = AgentServiceClient<InterceptedService<Channel, Bearer>>;
pub type Executions = ExecutionServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Clients {
    pub agents: Agents,
    pub executions: Executions,
}

pub async fn connect(endpoint: &str, api_key: &str) -> Result<Clients, CliError> {
    let endpoint = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let bearer = format!("Bearer {api_key}")
        .parse()
        .map(Bearer)
        .map_err(|_| {
            CliError::Usage("the API key contains characters not allowed in a header".into())
        })?;
    let channel = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| CliError::Usage(format!("'{endpoint}' is not a valid endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|_| CliError::Unreachable(endpoint.clone()))?;
    Ok(Clients {
        agents: AgentServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        executions: ExecutionServiceClient::with_interceptor(channel, bearer),
    })
}
