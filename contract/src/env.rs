//! The environment variables the runner reads. The runner's config reads them by these names;
//! the CLI's supervisor and the operator's builders set them by these names.

// --- mode and control plane
/// `local` or `cloud`.
pub const MODE: &str = "MODE";
/// The control plane, `host:port` or a URL.
pub const BACKEND_ENDPOINT: &str = "STIGMER_BACKEND_ENDPOINT";
/// Local mode: the runner key; cloud mode: the JWT itself.
pub const API_KEY: &str = "STIGMER_API_KEY";
/// Cloud mode: a file holding the JWT, re-read when it rotates.
pub const API_KEY_FILE: &str = "STIGMER_API_KEY_FILE";
/// Cloud mode: a PEM bundle trusted for the control plane's TLS.
pub const BACKEND_CA_FILE: &str = "STIGMER_BACKEND_CA_FILE";
/// Cloud mode: allow a plain-text control plane (development only).
pub const BACKEND_INSECURE: &str = "STIGMER_BACKEND_INSECURE";
/// Cloud mode: the JWT's expected issuer.
pub const JWT_ISSUER: &str = "STIGMER_JWT_ISSUER";
/// Cloud mode: the JWT's expected audience.
pub const JWT_AUDIENCE: &str = "STIGMER_JWT_AUDIENCE";
/// Cloud mode: where the JWT's signing keys are published.
pub const JWT_JWKS_URL: &str = "STIGMER_JWT_JWKS_URL";
/// Cloud mode: a PEM public key the JWT is signed with.
pub const JWT_PUBLIC_KEY_FILE: &str = "STIGMER_JWT_PUBLIC_KEY_FILE";
/// Skip the `.env` file when `off`.
pub const DOTENV: &str = "STIGMER_DOTENV";

// --- identity, limits, timings
pub const RUNNER_ID: &str = "STIGMER_RUNNER_ID";
/// The pod's name (Kubernetes downward API): the runner id when `STIGMER_RUNNER_ID` is unset.
pub const POD_NAME: &str = "POD_NAME";
pub const MAX_CONCURRENCY: &str = "STIGMER_MAX_CONCURRENCY";
/// The older name of [`MAX_CONCURRENCY`], still accepted.
pub const MAX_CONCURRENCY_OLD: &str = "TEMPORAL_MAX_CONCURRENCY";
pub const DRAIN_TIMEOUT_SECS: &str = "STIGMER_DRAIN_TIMEOUT_SECS";
pub const HEARTBEAT_INTERVAL_MS: &str = "STIGMER_HEARTBEAT_INTERVAL_MS";
pub const CLAIM_WAIT_MS: &str = "STIGMER_CLAIM_WAIT_MS";
pub const STATUS_FLUSH_MS: &str = "STIGMER_STATUS_FLUSH_MS";
pub const MAX_TURNS: &str = "STIGMER_MAX_TURNS";
pub const MAX_REPEATED_TOOL_CALLS: &str = "STIGMER_MAX_REPEATED_TOOL_CALLS";
pub const TOOL_TIMEOUT_SECS: &str = "STIGMER_TOOL_TIMEOUT_SECS";
pub const TOOL_OUTPUT_LIMIT: &str = "STIGMER_TOOL_OUTPUT_LIMIT";
/// The health and metrics listener, `host:port`.
pub const HTTP_ADDR: &str = "STIGMER_HTTP_ADDR";
pub const LOG_LEVEL: &str = "LOG_LEVEL";
pub const LOG_FORMAT: &str = "LOG_FORMAT";

// --- local sandbox
/// Local mode: where session directories live.
pub const SANDBOX_ROOT_DIR: &str = "SANDBOX_ROOT_DIR";
pub const SANDBOX: &str = "STIGMER_SANDBOX";
pub const SANDBOX_READ_PATHS: &str = "STIGMER_SANDBOX_READ_PATHS";
pub const SANDBOX_CGROUP: &str = "STIGMER_SANDBOX_CGROUP";
pub const SANDBOX_MAX_PROCESSES: &str = "STIGMER_SANDBOX_MAX_PROCESSES";
pub const SANDBOX_MAX_FILE_MB: &str = "STIGMER_SANDBOX_MAX_FILE_MB";
pub const SANDBOX_CPU_SECS: &str = "STIGMER_SANDBOX_CPU_SECS";
pub const SANDBOX_MAX_OPEN_FILES: &str = "STIGMER_SANDBOX_MAX_OPEN_FILES";
pub const SANDBOX_TMP_MB: &str = "STIGMER_SANDBOX_TMP_MB";
pub const SANDBOX_MEMORY_MB: &str = "STIGMER_SANDBOX_MEMORY_MB";

// --- model
pub const LLM_PROVIDER: &str = "STIGMER_LLM_PROVIDER";
pub const LLM_MODEL: &str = "STIGMER_LLM_MODEL";
pub const LLM_BASE_URL: &str = "STIGMER_LLM_BASE_URL";
/// The generic key variable, read before the provider's own.
pub const LLM_API_KEY: &str = "STIGMER_LLM_API_KEY";
pub const LLM_MAX_TOKENS: &str = "STIGMER_LLM_MAX_TOKENS";
pub const LLM_TEMPERATURE: &str = "STIGMER_LLM_TEMPERATURE";
pub const LLM_TIMEOUT_SECS: &str = "STIGMER_LLM_TIMEOUT_SECS";
pub const LLM_MAX_ATTEMPTS: &str = "STIGMER_LLM_MAX_ATTEMPTS";
/// Anthropic's own key variable (see `Provider::key_variable`).
pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
/// OpenAI's own key variable (see `Provider::key_variable`).
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
/// Ollama's base URL, when `STIGMER_LLM_BASE_URL` is unset.
pub const OLLAMA_BASE_URL: &str = "OLLAMA_BASE_URL";
/// Every variable that may carry an LLM key.
pub const LLM_KEY_VARIABLES: [&str; 3] = [LLM_API_KEY, ANTHROPIC_API_KEY, OPENAI_API_KEY];

// --- cloud mode: Redis and Daytona
pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_HOST: &str = "REDIS_HOST";
pub const REDIS_PORT: &str = "REDIS_PORT";
pub const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
/// TLS to REDIS_HOST (a `rediss://` REDIS_URL says so itself).
pub const REDIS_TLS: &str = "REDIS_TLS";
/// PEM CA certificates a TLS Redis's certificate must chain to, instead of the system's.
pub const REDIS_CA_FILE: &str = "REDIS_CA_FILE";
pub const DAYTONA_API_URL: &str = "DAYTONA_API_URL";
pub const DAYTONA_API_KEY: &str = "DAYTONA_API_KEY";
pub const DAYTONA_DEV_TOOLS_SNAPSHOT_ID: &str = "DAYTONA_DEV_TOOLS_SNAPSHOT_ID";
