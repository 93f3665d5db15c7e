//! CLI errors and their exit codes.

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot reach the control plane at {0}\n  Start it with `stigmer local start`, or pass --endpoint / set STIGMER_BACKEND_ENDPOINT."
    )]
    Unreachable(String),
    #[error("{}", describe(.0))]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Local(#[from] crate::local::LocalError),
}

fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated => format!(
            "the control plane refused the API key ({}); set STIGMER_API_KEY or --api-key \
             (the client key of a `stigmer local` platform is read from client.key in its data \
             directory: set STIGMER_HOME when that is not ~/.stigmer)",
            status.message()
        ),
        tonic::Code::Unavailable => format!(
            "the control plane is unavailable ({}); is it running?",
            status.message()
        ),
        _ => status.message().to_string(),
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Local(e) => e.exit_code(),
            _ => 1,
        }
    }
}
