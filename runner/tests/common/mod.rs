//! Shared set-up for the runner's end-to-end tests: a real control plane (in this process,
//! over real gRPC on loopback), the real `runner` binary as a child process, and the scripted
//! LLM server standing in for the Anthropic/OpenAI APIs that CI cannot reach.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stigmer_proto::agentexecution::v1::AgentExecution;
use tempfile::TempDir;
use testkit::control_plane::TestControlPlane;
use testkit::llm::ScriptedLlm;
#[allow(unused_imports)]
pub use testkit::process::process_alive;
use testkit::process::{ChildProcess, free_addr};

pub const TEST_LLM_KEY: &str = "sk-test-e2e-key-4242";
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
pub enum Wire {
    Anthropic,
    OpenAi,
}

pub struct Harness {
    pub dir: TempDir,
    pub cp: TestControlPlane,
    pub llm: ScriptedLlm,
}

impl Harness {
    pub async fn new(llm: ScriptedLlm) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = TestControlPlane::start(&dir.path().join("data")).await;
        Self { dir, cp, llm }
    }

    pub async fn with_control_plane(
        llm: ScriptedLlm,
        config: impl FnOnce(&Path) -> stigmer_server::ServerConfig,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = TestControlPlane::start_with(config(&dir.path().join("data")), None).await;
        Self { dir, cp, llm }
    }

    pub fn sandbox_root(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    /// The environment a user would set for a local runner against the scripted LLM.
    pub fn runner_env(&self, wire: Wire) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("MODE", "local".into());
        set("STIGMER_BACKEND_ENDPOINT", self.cp.endpoint());
        set(
            "SANDBOX_ROOT_DIR",
            self.sandbox_root().display().to_string(),
        );
        set("STIGMER_HTTP_ADDR", free_addr().to_string());
        set("STIGMER_HEARTBEAT_INTERVAL_MS", "200".into());
        set("STIGMER_CLAIM_WAIT_MS", "1000".into());
        set("STIGMER_STATUS_FLUSH_MS", "50".into());
        set("STIGMER_LLM_MODEL", "test-model".into());
        set("STIGMER_LLM_MAX_TOKENS", "1234".into());
        set("STIGMER_LLM_TEMPERATURE", "0.5".into());
        set("LOG_LEVEL", "debug".into());
        match wire {
            Wire::Anthropic => {
                set("STIGMER_LLM_PROVIDER", "anthropic".into());
                set("ANTHROPIC_API_KEY", TEST_LLM_KEY.into());
                set("STIGMER_LLM_BASE_URL", self.llm.base_url());
            }
            Wire::OpenAi => {
                set("STIGMER_LLM_PROVIDER", "openai".into());
                set("OPENAI_API_KEY", TEST_LLM_KEY.into());
                set(
                    "STIGMER_LLM_BASE_URL",
                    format!("{}/v1", self.llm.base_url()),
                );
            }
        }
        env
    }

    pub async fn start_runner(&self, env: &BTreeMap<String, String>) -> ChildProcess {
        let mut runner = self.spawn_runner(env, "runner");
        runner.wait_ready(READY_TIMEOUT).await;
        runner
    }

    pub fn spawn_runner(&self, env: &BTreeMap<String, String>, name: &str) -> ChildProcess {
        ChildProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_runner")),
            env,
            &self.dir.path().join("logs"),
            name,
        )
    }

    pub fn session_dir(&self, execution: &AgentExecution) -> PathBuf {
        let session = &execution.spec.as_ref().expect("spec").session_id;
        self.sandbox_root().join(session)
    }
}

pub fn status(e: &AgentExecution) -> &stigmer_proto::agentexecution::v1::AgentExecutionStatus {
    e.status.as_ref().expect("status")
}

pub fn execution_id(e: &AgentExecution) -> String {
    e.metadata.as_ref().expect("metadata").id.clone()
}

pub fn session_id(e: &AgentExecution) -> String {
    e.spec.as_ref().expect("spec").session_id.clone()
}

/// Daytona key of the cloud tests' contract server.
pub const DAYTONA_KEY: &str = "dtn-test-key";

/// The environment of a cloud runner against these stand-ins, Redis given by `redis` (e.g.
/// `[("REDIS_URL", url)]`); tests add or override entries.
pub fn cloud_env(
    endpoint: &str,
    jwt: &str,
    daytona: &testkit::daytona::DaytonaServer,
    llm_url: &str,
    redis: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("MODE", "cloud".to_string()),
        ("STIGMER_BACKEND_ENDPOINT", endpoint.to_string()),
        ("STIGMER_BACKEND_INSECURE", "true".into()),
        ("STIGMER_API_KEY", jwt.to_string()),
        ("DAYTONA_API_URL", daytona.api_url()),
        ("DAYTONA_API_KEY", DAYTONA_KEY.into()),
        ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "dev-tools".into()),
        ("STIGMER_LLM_PROVIDER", "anthropic".into()),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("STIGMER_LLM_BASE_URL", llm_url.to_string()),
        ("STIGMER_HTTP_ADDR", free_addr().to_string()),
        ("STIGMER_CLAIM_WAIT_MS", "500".into()),
        ("STIGMER_STATUS_FLUSH_MS", "50".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(redis.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}
