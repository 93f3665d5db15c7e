//! Confinement of local-mode commands: layered, each layer used when the kernel grants it,
//! and said out loud when it does not.
//!
//! Runner side (this module, `probe`): [`SandboxSettings`] come from the configuration; at
//! start [`Confinement::detect`] runs the helper once per layer to learn what the kernel
//! grants (`STIGMER_SANDBOX=strict` refuses to start without every layer), and afterwards
//! [`Confinement::plan`] turns each `run_command` into a [`CommandPlan`] for the helper.
//!
//! Helper side (Linux only): `helper` (stage one: namespaces, cgroup, watchdog, reaper) and
//! `init` (stage two: filesystem `view`, `limits`, Landlock rules in `lsm`, seccomp filter in
//! `syscalls`), entered through [`helper_entry`] before the runner does anything else.

mod policy;
mod probe;
mod settings;

#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod helper;
#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod limits;
#[cfg(target_os = "linux")]
mod lsm;
#[cfg(target_os = "linux")]
mod reap;
#[cfg(target_os = "linux")]
mod syscalls;
#[cfg(target_os = "linux")]
mod view;

use std::path::{Path, PathBuf};

pub use policy::{
    CgroupParent, CommandPlan, ERROR_PREFIX, EXIT_PREFIX, Layer, Limits, Network, PLAN_ENV,
    REPORT_PREFIX, Report, SETUP_FAILED_EXIT,
};
pub use probe::{ConfineError, Missing, SandboxStatus};
pub use settings::{SandboxMode, SandboxSettings};

/// `runner __sandbox-exec`: stage one of the helper.
pub const EXEC_ARG: &str = "__sandbox-exec";
/// `runner __sandbox-init`: stage two.
pub const INIT_ARG: &str = "__sandbox-init";

/// The helper this runner uses: `runner-sandbox` beside the runner when it is there (it holds
/// only the helper, so each command's two execs cost less), else the runner itself, which is
/// always a complete helper.
pub fn helper_binary(runner: &Path) -> PathBuf {
    let sibling = runner.with_file_name(HELPER_BINARY);
    let executable = std::fs::metadata(&sibling).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    if executable {
        sibling
    } else {
        runner.to_path_buf()
    }
}

/// The helper's own binary name (a bin target of this crate).
pub const HELPER_BINARY: &str = "runner-sandbox";

/// Runs a helper stage when this process was started as one; `None` for a normal start.
/// Called first thing in `main`, before any thread, runtime or configuration exists.
pub fn helper_entry() -> Option<i32> {
    let arg = std::env::args_os().nth(1)?;
    #[cfg(target_os = "linux")]
    {
        if arg == EXEC_ARG {
            return Some(helper::exec_main());
        }
        if arg == INIT_ARG {
            return Some(init::init_main());
        }
    }
    #[cfg(not(target_os = "linux"))]
    if arg == EXEC_ARG || arg == INIT_ARG {
        eprintln!("{ERROR_PREFIX}command confinement needs Linux");
        return Some(SETUP_FAILED_EXIT);
    }
    None
}

/// Runner side: removes a command's cgroup `name` (killing what is left in it).
pub fn remove_cgroup(parent: &CgroupParent, name: &str) {
    #[cfg(target_os = "linux")]
    cgroup::remove(parent, name);
    #[cfg(not(target_os = "linux"))]
    let _ = (parent, name);
}

/// Runner side, at start: removes command cgroups left by runners that died.
pub fn sweep_cgroups(parent: &CgroupParent) {
    #[cfg(target_os = "linux")]
    cgroup::sweep(parent);
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}

/// A cgroup name no other command of any runner uses: `cmd-<runner pid>-<n>`.
pub fn next_cgroup_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("cmd-{}-{n}", std::process::id())
}

pub(crate) use settings::read as read_settings;

/// How this runner confines commands, decided once at start.
#[derive(Debug, Clone)]
pub struct Confinement {
    mode: SandboxMode,
    /// The runner's own binary, re-executed as the helper.
    helper: PathBuf,
    layers: Vec<Layer>,
    missing: Vec<Missing>,
    report: Report,
    read_paths: Vec<PathBuf>,
    limits: Limits,
    cgroup: Option<CgroupParent>,
}

impl Confinement {
    /// No confinement at all (`STIGMER_SANDBOX=off`, and cloud mode, whose commands run in
    /// Daytona sandboxes).
    pub fn off() -> Self {
        Self {
            mode: SandboxMode::Off,
            helper: PathBuf::new(),
            layers: Vec::new(),
            missing: Vec::new(),
            report: Report::default(),
            read_paths: Vec::new(),
            limits: Limits::default(),
            cgroup: None,
        }
    }

    /// Finds out what the kernel grants by running the helper, layer by layer, in
    /// `scratch` (a directory no session uses). Fails in strict mode when a layer is missing.
    pub async fn detect(
        settings: &SandboxSettings,
        helper: &Path,
        scratch: &Path,
    ) -> Result<Self, ConfineError> {
        if settings.mode == SandboxMode::Off {
            return Ok(Self::off());
        }
        probe::detect(settings, helper, scratch).await
    }

    pub fn enabled(&self) -> bool {
        !self.layers.is_empty()
    }

    pub fn helper(&self) -> &Path {
        &self.helper
    }

    pub fn has(&self, layer: Layer) -> bool {
        self.layers.contains(&layer)
    }

    pub fn cgroup(&self) -> Option<&CgroupParent> {
        self.cgroup.as_ref().filter(|_| self.has(Layer::Cgroup))
    }

    /// The plan for one command in `session_dir`.
    pub fn plan(&self, command: CommandSpec<'_>) -> CommandPlan {
        CommandPlan {
            command: command.command.to_owned(),
            session_dir: command.session_dir.to_path_buf(),
            env: command.env,
            layers: self.layers.clone(),
            network: command.network,
            read_paths: self.read_paths.clone(),
            limits: self.limits,
            cgroup: self.cgroup().cloned(),
            cgroup_name: next_cgroup_name(),
            timeout_ms: u64::try_from(command.timeout.as_millis()).unwrap_or(u64::MAX),
            report: false,
            stdio: false,
        }
    }

    /// Where temporary files go: the private `/tmp` with namespaces, else the session's own
    /// temp directory (the only writable place).
    pub fn tmp_dir<'a>(&self, session_tmp: &'a Path) -> &'a Path {
        if self.has(Layer::Namespaces) {
            Path::new("/tmp")
        } else {
            session_tmp
        }
    }

    /// For the banner, `/status` and `stigmer local status`.
    pub fn status(&self) -> SandboxStatus {
        SandboxStatus {
            mode: self.mode,
            enforced: self.layers.clone(),
            missing: self.missing.clone(),
            landlock_abi: self.report.landlock_abi,
            private_proc: self.report.proc_mounted,
        }
    }
}

/// One command as the sandbox sees it.
pub struct CommandSpec<'a> {
    pub command: &'a str,
    pub session_dir: &'a Path,
    pub env: std::collections::BTreeMap<String, String>,
    pub network: Network,
    pub timeout: std::time::Duration,
}
