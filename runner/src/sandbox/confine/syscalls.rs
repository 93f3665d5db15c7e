//! The seccomp filter: system calls a command never needs and an attacker would.
//!
//! Refused with EPERM (so that tools fail with a readable "Operation not permitted"):
//! reading or writing other processes (ptrace, process_vm_*), the mount family, bpf, keyrings,
//! perf events, io_uring (which bypasses seccomp for the operations it queues), kernel modules,
//! kexec, reboot, swap, the clock, and new user namespaces (`unshare`/`clone` with
//! CLONE_NEWUSER). `clone3` answers ENOSYS because its flags live in memory that a filter
//! cannot read; C libraries then fall back to `clone`, whose flags it can. Without network,
//! sockets other than Unix-domain ones are refused too.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::error::HelperError;
use super::policy::Network;

const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
];

pub fn apply(network: Network) -> Result<(), HelperError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| HelperError::Seccomp(format!("unsupported architecture: {e}")))?;
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    install(denials(network)?, eperm, arch)?;
    install(BTreeMap::from([(libc::SYS_clone3, vec![])]), enosys, arch)
}

fn denials(network: Network) -> Result<BTreeMap<i64, Vec<SeccompRule>>, HelperError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let new_user = libc::CLONE_NEWUSER as u64;
    rules.insert(
        libc::SYS_unshare,
        vec![rule(0, SeccompCmpOp::MaskedEq(new_user), new_user)?],
    );
    rules.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(new_user), new_user)?],
    );
    if network == Network::None {
        rules.insert(
            libc::SYS_socket,
            vec![rule(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?],
        );
    }
    Ok(rules)
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, HelperError> {
    let fail = |e: seccompiler::BackendError| HelperError::Seccomp(e.to_string());
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(fail)?;
    SeccompRule::new(vec![condition]).map_err(fail)
}

fn install(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<(), HelperError> {
    let fail = |e: String| HelperError::Seccomp(e);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch)
        .map_err(|e| fail(e.to_string()))?;
    let program: BpfProgram = filter.try_into().map_err(|e| fail(format!("{e}")))?;
    seccompiler::apply_filter(&program).map_err(|e| fail(e.to_string()))
}
