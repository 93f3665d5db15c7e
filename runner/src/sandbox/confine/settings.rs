//! The sandbox settings of the runner's configuration (`STIGMER_SANDBOX*`).

use std::path::PathBuf;

use serde::Serialize;
use stigmer_contract::env as vars;

use super::policy::Limits;
use crate::config::env::Reader;

/// `STIGMER_SANDBOX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Refuse to start unless every layer is enforced.
    Strict,
    /// Use every layer the kernel grants and say which are missing.
    #[default]
    Auto,
    /// No confinement; a warning on every start.
    Off,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Strict => "strict",
            SandboxMode::Auto => "auto",
            SandboxMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// Readable beside the system directories (`STIGMER_SANDBOX_READ_PATHS`).
    pub extra_read_paths: Vec<PathBuf>,
    pub limits: Limits,
    /// Where command cgroups go; `None`: found automatically (root), `Some(None)`: disabled.
    pub cgroup_parent: Option<Option<PathBuf>>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Auto,
            extra_read_paths: Vec::new(),
            limits: Limits::default(),
            cgroup_parent: None,
        }
    }
}

impl SandboxSettings {
    /// Everything a command may read: the system directories, the chosen parts of `/etc`,
    /// and the extra paths.
    pub fn read_paths(&self) -> Vec<PathBuf> {
        SYSTEM_DIRS
            .iter()
            .map(PathBuf::from)
            .chain(ETC_ENTRIES.iter().map(|e| PathBuf::from("/etc").join(e)))
            .chain(self.extra_read_paths.iter().cloned())
            .collect()
    }
}

/// What tools need to run, and nothing of any user's.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The parts of `/etc` programs read to work (users and groups, name resolution, the dynamic
/// linker, certificates, Debian's alternatives), without secrets such as `shadow`, `sudoers`
/// or ssh host keys.
const ETC_ENTRIES: [&str; 27] = [
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "mime.types",
    "protocols",
    "services",
    "gitconfig",
    "inputrc",
    "profile",
    "bash.bashrc",
    "os-release",
    "debian_version",
    "terminfo",
];

pub(crate) fn read(r: &mut Reader<'_>) -> SandboxSettings {
    let mode = match r.string(vars::SANDBOX).map(|m| m.to_ascii_lowercase()) {
        None => SandboxMode::Auto,
        Some(m) if m == "auto" => SandboxMode::Auto,
        Some(m) if m == "strict" => SandboxMode::Strict,
        Some(m) if m == "off" => SandboxMode::Off,
        Some(other) => {
            r.problem(
                vars::SANDBOX,
                format!("unknown value '{other}'; allowed values: auto, strict, off"),
            );
            SandboxMode::Auto
        }
    };
    let mib = 1u64 << 20;
    let limits = Limits {
        max_processes: r.number(&[vars::SANDBOX_MAX_PROCESSES], 256, 8, 65_536),
        max_file_bytes: r.number(&[vars::SANDBOX_MAX_FILE_MB], 1024u64, 1, 1 << 20) * mib,
        cpu_secs: r.number(&[vars::SANDBOX_CPU_SECS], 600, 1, 86_400),
        max_open_files: r.number(&[vars::SANDBOX_MAX_OPEN_FILES], 1024, 64, 1 << 20),
        tmp_bytes: r.number(&[vars::SANDBOX_TMP_MB], 512u64, 1, 1 << 20) * mib,
        memory_bytes: r.number(&[vars::SANDBOX_MEMORY_MB], 2048u64, 16, 1 << 24) * mib,
    };
    SandboxSettings {
        mode,
        extra_read_paths: read_paths(r),
        limits,
        cgroup_parent: read_cgroup(r),
    }
}

fn read_paths(r: &mut Reader<'_>) -> Vec<PathBuf> {
    let Some(raw) = r.string(vars::SANDBOX_READ_PATHS) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for part in raw.split(':').map(str::trim).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(part);
        if !path.is_absolute() {
            r.problem(
                vars::SANDBOX_READ_PATHS,
                format!("'{part}' is not an absolute path; separate absolute paths with ':'"),
            );
            continue;
        }
        paths.push(path);
    }
    paths
}

fn read_cgroup(r: &mut Reader<'_>) -> Option<Option<PathBuf>> {
    let raw = r.string(vars::SANDBOX_CGROUP)?;
    if raw.eq_ignore_ascii_case("off") {
        return Some(None);
    }
    let path = PathBuf::from(&raw);
    if !path.is_absolute() {
        r.problem(
            vars::SANDBOX_CGROUP,
            format!("'{raw}' must be 'off' or the absolute path of a cgroup v2 directory"),
        );
        return None;
    }
    Some(Some(path))
}
