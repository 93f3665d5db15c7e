//! The Landlock ruleset: a second wall that needs no privilege and also works where
//! namespaces are refused (containers, Ubuntu's AppArmor user-namespace restriction).
//!
//! Reads and execution only beneath the system directories and the session; writes only
//! beneath the session (and the private `/tmp` with namespaces); character devices limited to
//! the harmless ones. Linking or renaming a file into the session from outside is refused
//! (the REFER right is granted only within the session). Without network, TCP bind and connect
//! are refused (ABI 4), and from ABI 6 the command can neither signal a process outside its
//! domain (the runner) nor reach an abstract Unix socket outside it.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::error::HelperError;
use super::policy::Network;

/// The newest ABI whose rights we ask for; older kernels get what they support (best effort),
/// and the report says which ABI was in force.
const TARGET_ABI: ABI = ABI::V6;

/// Devices a command may read and write.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

pub struct Rules<'a> {
    pub read: &'a [PathBuf],
    pub write: &'a [PathBuf],
    /// Readable only with a PID namespace (a private `/proc`).
    pub proc: bool,
    pub network: Network,
}

/// What was enforced: the ABI in force and whether every right was.
pub struct Enforced {
    pub abi: i32,
    pub full: bool,
}

pub fn apply(rules: &Rules<'_>) -> Result<Enforced, HelperError> {
    let fail = |e: landlock::RulesetError| HelperError::Landlock(e.to_string());
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let device = read | AccessFs::WriteFile | AccessFs::IoctlDev;
    // Best effort for the rights an older kernel lacks; no Landlock at all is refused below
    // (NotEnforced), so the probe reports the layer missing instead of a command silently
    // running without it.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(fail)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(fail)?;
    if rules.network == Network::None {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET_ABI))
            .map_err(fail)?;
    }
    let mut created = ruleset.create().map_err(fail)?;
    for path in rules.read {
        created = add(created, path, read)?;
    }
    if rules.proc {
        created = add(created, Path::new("/proc"), read)?;
    }
    for device_path in DEVICES {
        created = add(created, Path::new(device_path), device)?;
    }
    for path in rules.write {
        created = add(created, path, all)?;
    }
    let status = created.restrict_self().map_err(fail)?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        _ => 0,
    };
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(HelperError::Landlock(
            "the kernel does not enforce Landlock (not built in, or disabled at boot)".into(),
        ));
    }
    Ok(Enforced {
        abi,
        full: status.ruleset == RulesetStatus::FullyEnforced,
    })
}

/// Adds a rule for `path` when it exists; paths missing on this machine are skipped.
fn add(
    created: landlock::RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, HelperError> {
    let fd = match PathFd::new(path) {
        Ok(fd) => fd,
        Err(_) if !path.exists() => return Ok(created),
        Err(e) => return Err(HelperError::Landlock(format!("{}: {e}", path.display()))),
    };
    // A file only takes file rights (asking for directory rights on one would count as
    // "partially enforced").
    let access = if path.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET_ABI)
    };
    created
        .add_rule(PathBeneath::new(fd, access))
        .map_err(|e| HelperError::Landlock(format!("{}: {e}", path.display())))
}
