//! Set-up the runner benches share: the cloud-mode stack (a real `redis-server`, the Daytona
//! contract server, the control plane in its Redis configuration) and its runners.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use testkit::control_plane::TestControlPlane;
use testkit::daytona::{DaytonaOptions, DaytonaServer};
use testkit::process::{ChildProcess, free_addr};
use testkit::redis::RedisServer;

const DAYTONA_KEY: &str = "bench-key";

/// Redis, Daytona stand-in and control plane (with the agent `bench`) for cloud runners.
pub struct CloudStack {
    pub cp: Arc<TestControlPlane>,
    jwt: String,
    redis: RedisServer,
    daytona: DaytonaServer,
}

impl CloudStack {
    /// `start_delay`: how long the Daytona stand-in takes to start a sandbox.
    pub async fn start(dir: &Path, start_delay: Duration) -> Self {
        let redis = RedisServer::start();
        let mut options = DaytonaOptions::new(DAYTONA_KEY);
        options.start_delay = start_delay;
        let daytona = DaytonaServer::start(options).await;
        let jwt = testkit::pki::unsigned_jwt("bench");
        let mut config = stigmer_server::ServerConfig::local(dir.join("cloud-data"));
        config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
        config.redis = Some(stigmer_server::RedisSettings::new(
            stigmer_server::RedisTarget::Url(redis.url()),
        ));
        let cp = Arc::new(TestControlPlane::start_with(config, None).await);
        cp.apply_agent("bench", "").await;
        Self {
            cp,
            jwt,
            redis,
            daytona,
        }
    }

    /// `count` cloud runners (`bin`) against this stack and the LLM at `llm_url`, with `extra`
    /// settings, each ready; logs under `dir/logs` as `<name>-<i>`.
    pub async fn runners(
        &self,
        bin: &Path,
        dir: &Path,
        count: usize,
        llm_url: &str,
        extra: &[(&str, &str)],
        name: &str,
    ) -> Vec<ChildProcess> {
        let mut runners = Vec::new();
        for i in 0..count {
            let mut env: BTreeMap<String, String> = [
                ("MODE", "cloud".to_string()),
                ("STIGMER_BACKEND_ENDPOINT", self.cp.endpoint()),
                ("STIGMER_BACKEND_INSECURE", "true".into()),
                ("STIGMER_API_KEY", self.jwt.clone()),
                ("REDIS_URL", self.redis.url()),
                ("DAYTONA_API_URL", self.daytona.api_url()),
                ("DAYTONA_API_KEY", DAYTONA_KEY.into()),
                ("DAYTONA_DEV_TOOLS_SNAPSHOT_ID", "bench".into()),
                ("STIGMER_LLM_PROVIDER", "anthropic".into()),
                ("ANTHROPIC_API_KEY", "bench-key".into()),
                ("STIGMER_LLM_BASE_URL", llm_url.to_string()),
                ("STIGMER_HTTP_ADDR", free_addr().to_string()),
                ("LOG_LEVEL", "warn".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut runner =
                ChildProcess::spawn(bin, &env, &dir.join("logs"), &format!("{name}-{i}"));
            runner.wait_ready(Duration::from_secs(20)).await;
            runners.push(runner);
        }
        runners
    }
}

/// The `p`th percentile of `values` (sorted in place); NaN when there are none.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[idx.min(values.len() - 1)]
}

/// Resident set size of process `pid` in KiB (NaN when it cannot be read).
pub fn rss_kib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}
