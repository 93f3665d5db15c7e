//! Finding out, at start, which layers this machine grants: by running the real helper with
//! each layer on a harmless command, not by guessing from kernel versions. A layer that works
//! here is then required for every command; one that does not is reported with the kernel's
//! reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::policy::{
    CgroupParent, CommandPlan, ERROR_PREFIX, EXIT_PREFIX, Layer, Network, REPORT_PREFIX, Report,
};
use super::settings::{SandboxMode, SandboxSettings};
use super::{Confinement, EXEC_ARG};

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A layer (or part of one) that is not enforced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub layer: String,
    pub reason: String,
}

/// What the runner enforces, as the banner, `/status` and `stigmer local status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxStatus {
    pub mode: SandboxMode,
    pub enforced: Vec<Layer>,
    pub missing: Vec<Missing>,
    /// The Landlock ABI in force (0: none).
    pub landlock_abi: i32,
    /// Commands see a `/proc` with only their own processes.
    pub private_proc: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "STIGMER_SANDBOX=strict, but this machine does not allow every sandbox layer: {}. \
         Fix the cause, or use STIGMER_SANDBOX=auto to run with the layers that work",
        describe(missing)
    )]
    Strict { missing: Vec<Missing> },
    #[error("cannot run the sandbox helper '{}': {source}", helper.display())]
    Helper {
        helper: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox layers work one by one but not together: {reason}")]
    Inconsistent { reason: String },
}

fn describe(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{} ({})", m.layer, m.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) async fn detect(
    settings: &SandboxSettings,
    helper: &Path,
    scratch: &Path,
) -> Result<Confinement, ConfineError> {
    let mut missing = Vec::new();
    let cgroup = match find_cgroup_parent(settings) {
        Ok(parent) => {
            super::sweep_cgroups(&parent);
            Some(parent)
        }
        Err(reason) => {
            missing.push(Missing {
                layer: Layer::Cgroup.to_string(),
                reason,
            });
            None
        }
    };
    let candidates: Vec<Layer> = Layer::ALL
        .into_iter()
        .filter(|l| *l != Layer::Cgroup || cgroup.is_some())
        .collect();
    let mut confinement = Confinement {
        mode: settings.mode,
        helper: helper.to_path_buf(),
        // Decided below; each probe names the layers it tries.
        layers: Vec::new(),
        missing: Vec::new(),
        report: Report::default(),
        read_paths: settings.read_paths(),
        limits: settings.limits,
        cgroup,
    };
    let (layers, report) = match try_layers(&confinement, scratch, &candidates).await? {
        Ok(report) => (candidates, report),
        Err(_) => one_by_one(&confinement, scratch, &candidates, &mut missing).await?,
    };
    if layers.contains(&Layer::Namespaces) && !report.proc_mounted {
        missing.push(Missing {
            layer: "private /proc".into(),
            reason: "the kernel refused to mount /proc in the PID namespace (the host's \
                     /proc has masked paths, as in many containers); commands see no /proc"
                .into(),
        });
    }
    if layers.contains(&Layer::Landlock) && !report.landlock_full {
        missing.push(Missing {
            layer: "landlock (part)".into(),
            reason: format!(
                "the kernel has Landlock ABI {}; signal and abstract-socket scoping need ABI 6, \
                 TCP rules ABI 4",
                report.landlock_abi
            ),
        });
    }
    confinement.layers = layers;
    confinement.report = report;
    confinement.missing = missing;
    check_strict(&confinement)?;
    Ok(confinement)
}

/// Tries each layer alone to learn which fail and why, then the working ones together.
async fn one_by_one(
    confinement: &Confinement,
    scratch: &Path,
    candidates: &[Layer],
    missing: &mut Vec<Missing>,
) -> Result<(Vec<Layer>, Report), ConfineError> {
    let mut working = Vec::new();
    for layer in candidates {
        match try_layers(confinement, scratch, &[*layer]).await? {
            Ok(_) => working.push(*layer),
            Err(reason) => missing.push(Missing {
                layer: layer.to_string(),
                reason,
            }),
        }
    }
    if working.is_empty() {
        return Ok((working, Report::default()));
    }
    match try_layers(confinement, scratch, &working).await? {
        Ok(report) => Ok((working, report)),
        Err(reason) => Err(ConfineError::Inconsistent { reason }),
    }
}

fn check_strict(confinement: &Confinement) -> Result<(), ConfineError> {
    if confinement.mode != SandboxMode::Strict {
        return Ok(());
    }
    let required_missing: Vec<Missing> = confinement
        .missing
        .iter()
        .filter(|m| {
            Layer::ALL
                .iter()
                .find(|l| l.as_str() == m.layer)
                .is_none_or(|l| l.required_by_strict())
        })
        .cloned()
        .collect();
    if required_missing.is_empty() {
        Ok(())
    } else {
        Err(ConfineError::Strict {
            missing: required_missing,
        })
    }
}

/// Runs `true` through the helper with `layers`; the inner result is the helper's report, or
/// its reason for failing.
async fn try_layers(
    confinement: &Confinement,
    scratch: &Path,
    layers: &[Layer],
) -> Result<Result<Report, String>, ConfineError> {
    let plan = CommandPlan {
        command: "true".into(),
        session_dir: scratch.to_path_buf(),
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        layers: layers.to_vec(),
        network: Network::None,
        read_paths: confinement.read_paths.clone(),
        limits: confinement.limits,
        cgroup: confinement.cgroup.clone(),
        cgroup_name: super::next_cgroup_name(),
        timeout_ms: u64::try_from(PROBE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        report: true,
        stdio: false,
    };
    let (status, output) = run_helper(&confinement.helper, &plan).await?;
    Ok(interpret(&status, &output))
}

/// Reads the helper's status channel (`status`) and, for context, the command's output.
fn interpret(status: &str, output: &str) -> Result<Report, String> {
    let line = |prefix: &str| status.lines().find_map(|l| l.strip_prefix(prefix));
    if let Some(reason) = line(ERROR_PREFIX) {
        return Err(reason.to_owned());
    }
    match line(EXIT_PREFIX).map(str::trim) {
        Some("0") => Ok(line(REPORT_PREFIX)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()),
        Some(code) => Err(format!(
            "the probe command exited with {code}: {}",
            output.trim()
        )),
        None => Err("the helper ended without a status (killed?)".to_owned()),
    }
}

/// Runs the helper with `plan` until it exits; returns its status channel and the command's
/// output. stdin stays open meanwhile (closing it means "stop").
async fn run_helper(helper: &Path, plan: &CommandPlan) -> Result<(String, String), ConfineError> {
    let fail = |source| ConfineError::Helper {
        helper: helper.to_path_buf(),
        source,
    };
    let mut child = tokio::process::Command::new(helper)
        .arg(EXEC_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let mut line = serde_json::to_vec(plan).map_err(|e| fail(std::io::Error::other(e)))?;
    line.push(b'\n');
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut() {
        pipe.write_all(&line).await.map_err(fail)?;
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (String::new(), String::new());
    let read_all = async {
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out).await;
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut err).await;
        }
    };
    let status = match tokio::time::timeout(PROBE_TIMEOUT, async {
        read_all.await;
        child.wait().await
    })
    .await
    {
        Ok(status) => status.map_err(fail)?,
        Err(_) => {
            return Ok((String::new(), "the probe did not finish in time".into()));
        }
    };
    drop(stdin);
    if let Some(parent) = plan.cgroup.as_ref().filter(|_| plan.has(Layer::Cgroup)) {
        super::remove_cgroup(parent, &plan.cgroup_name);
    }
    let _ = status;
    Ok((err, out))
}

/// A parent directory for command cgroups: the configured one, or one this runner can make
/// (as root) under the system's cgroup filesystem.
fn find_cgroup_parent(settings: &SandboxSettings) -> Result<CgroupParent, String> {
    match &settings.cgroup_parent {
        Some(None) => Err("disabled by STIGMER_SANDBOX_CGROUP=off".into()),
        Some(Some(dir)) => {
            if dir.join("cgroup.controllers").exists() {
                enable_v2_controllers(dir)?;
                Ok(CgroupParent::V2(dir.clone()))
            } else {
                Err(format!(
                    "STIGMER_SANDBOX_CGROUP '{}' is not a cgroup v2 directory",
                    dir.display()
                ))
            }
        }
        None => auto_cgroup_parent(),
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_DIR: &str = "stigmer-sandbox";

fn auto_cgroup_parent() -> Result<CgroupParent, String> {
    let root = Path::new(CGROUP_ROOT);
    let hint = "needs root, or a delegated cgroup v2 directory in STIGMER_SANDBOX_CGROUP";
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(CGROUP_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e} ({hint})", dir.display()))?;
        enable_v2_controllers(&dir)?;
        return Ok(CgroupParent::V2(dir));
    }
    let pids_root = root.join("pids");
    if !pids_root.join("tasks").exists() {
        return Err("no cgroup v2 filesystem and no cgroup v1 'pids' hierarchy".into());
    }
    let pids = pids_root.join(CGROUP_DIR);
    std::fs::create_dir_all(&pids)
        .map_err(|e| format!("cannot create {}: {e} ({hint})", pids.display()))?;
    let memory = root.join("memory");
    let memory = memory
        .join("tasks")
        .exists()
        .then(|| memory.join(CGROUP_DIR))
        .filter(|dir| std::fs::create_dir_all(dir).is_ok());
    Ok(CgroupParent::V1 { pids, memory })
}

fn enable_v2_controllers(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    std::fs::write(&control, "+pids +memory").map_err(|e| {
        format!(
            "cannot enable pids and memory in {}: {e}",
            control.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_reasons_are_read_from_its_status_channel() {
        assert_eq!(
            interpret(
                "stigmer-sandbox: creating a user namespace: EPERM\n",
                "noise"
            ),
            Err("creating a user namespace: EPERM".into())
        );
        let ok = interpret(
            "stigmer-sandbox-report: {\"landlock_abi\":6,\"landlock_full\":true,\"proc_mounted\":true}\nstigmer-sandbox-exit: 0\n",
            "",
        )
        .expect("ok");
        assert_eq!(ok.landlock_abi, 6);
        assert!(
            interpret("stigmer-sandbox-exit: 1\n", "boom")
                .is_err_and(|r| r.contains("exited with 1: boom"))
        );
        assert!(interpret("", "").is_err_and(|r| r.contains("without a status")));
    }
}
