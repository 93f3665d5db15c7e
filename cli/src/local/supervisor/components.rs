//! The two children, as data: what differs between the control plane and the runner (binary,
//! arguments, environment, health check, stop timeout, restart policy, what giving up means).
//! Everything else is the same [`Child`](super::child::Child).

use std::net::SocketAddr;

use tokio::process::Command;

use super::super::keys;
use super::super::secrets::KEY_VARIABLES;
use super::Settings;
use super::child::{GiveUp, Liveness, Spec};
use crate::args::Component;
use stigmer_contract::env as vars;

/// `stigmer-server`: started first, stopped last. Restarting it would cut every client, so
/// its health is only reported; giving up on it stops the platform.
pub(super) fn control_plane(s: &Settings) -> Spec {
    Spec {
        component: Component::Server,
        name: "the control plane",
        binary: s.server_bin.clone(),
        stop_timeout: s.server_stop_timeout,
        drains: false,
        liveness: Liveness::Report,
        policy: s.policy,
        on_give_up: GiveUp::StopPlatform,
        start_hint: Some((
            "in use",
            "\nAnother program holds the port: stop it, or pick another one with --port.",
        )),
    }
}

/// The runner: started once the control plane serves, drained first at a stop. A runner
/// that stays unready is restarted; giving up on it leaves the control plane up.
pub(super) fn runner(s: &Settings) -> Spec {
    Spec {
        component: Component::Runner,
        name: "the runner",
        binary: s.runner_bin.clone(),
        stop_timeout: s.runner_stop_timeout,
        drains: true,
        liveness: Liveness::Restart {
            after: s.unhealthy_after,
        },
        policy: s.policy,
        on_give_up: GiveUp::KeepPlatform,
        start_hint: None,
    }
}

/// Starts the control plane on `port` (0: any; a restart reuses the first one's port, so
/// that the runner's endpoint stays valid).
pub(super) fn server_command(s: &Settings, port: u16) -> Command {
    let mut cmd = Command::new(&s.server_bin);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(s.paths.server_data())
        // Files, not values: a key on the command line is visible in `ps`. With role
        // keys, the well-known local key opens nothing.
        .arg("--runner-key-file")
        .arg(keys::Role::Runner.file(&s.paths))
        .arg("--client-key-file")
        .arg(keys::Role::Client.file(&s.paths))
        // A key for every API, should the user's shell set one, must not come along.
        .env_remove("STIGMER_SERVER_API_KEYS")
        .env_remove("STIGMER_SERVER_RUNNER_KEY_FILE")
        .env_remove("STIGMER_SERVER_CLIENT_KEY_FILE")
        // Log files are read with less and grep: no colour codes in them.
        .env("NO_COLOR", "1")
        .current_dir(s.paths.root());
    // The control plane has no use for the LLM key.
    for var in KEY_VARIABLES {
        cmd.env_remove(var);
    }
    cmd
}

/// Starts the runner against the control plane at `endpoint`, its health on `http_addr`.
pub(super) fn runner_command(s: &Settings, endpoint: &str, http_addr: SocketAddr) -> Command {
    let mut cmd = Command::new(&s.runner_bin);
    cmd.envs(runner_env(s, endpoint, http_addr))
        .current_dir(s.paths.runner_cwd());
    if let Some(key) = &s.llm.key {
        // The one place the key leaves this process: the runner's environment.
        cmd.env(key.variable, key.value.expose());
    }
    cmd
}

/// The runner's environment on top of the supervisor's own (which carries the user's
/// `STIGMER_LLM_*` settings): local mode, this control plane, this data directory, its runner
/// key. No `.env`: the runner's configuration is exactly this environment, so nothing a tool
/// command writes can come back as configuration at the next start.
fn runner_env(s: &Settings, endpoint: &str, http_addr: SocketAddr) -> Vec<(String, String)> {
    vec![
        (vars::MODE.into(), "local".into()),
        (vars::DOTENV.into(), "off".into()),
        (vars::BACKEND_ENDPOINT.into(), endpoint.to_string()),
        (vars::API_KEY.into(), s.keys.runner.expose().to_string()),
        (
            vars::SANDBOX_ROOT_DIR.into(),
            s.sandbox_root.display().to_string(),
        ),
        (vars::HTTP_ADDR.into(), http_addr.to_string()),
        ("NO_COLOR".into(), "1".into()),
    ]
}
