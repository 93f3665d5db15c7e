//! The helper process, stage two (`runner __sandbox-init`): with namespaces, PID 1 of the
//! command's PID namespace. It builds the command's world, locks itself in, then starts the
//! command and reaps every process until the command's shell exits. With namespaces, its exit
//! ends every process left in the namespace (the kernel kills them all when PID 1 dies).
//!
//! Order matters: the filesystem view needs capabilities (mounts), so it comes first; then
//! the limits; then Landlock (which needs no privilege); then every capability is dropped;
//! seccomp comes last because it refuses the mount calls the view needed.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::error::HelperError;
use super::policy::{CommandPlan, Layer, PLAN_ENV, REPORT_PREFIX, Report, SETUP_FAILED_EXIT};
use super::{limits, lsm, syscalls, view};

const SHELL: &str = "/bin/sh";
const HOSTNAME: &str = "sandbox";

pub fn init_main() -> i32 {
    super::error::exit_code(run())
}

fn run() -> Result<i32, HelperError> {
    // A stdio server's plan comes in a variable: our stdin is the server's.
    let plan: CommandPlan = match std::env::var(PLAN_ENV) {
        Ok(json) => serde_json::from_str(&json),
        Err(_) => serde_json::from_reader(std::io::stdin().lock()),
    }
    .map_err(|e| HelperError::Plan(e.to_string()))?;
    // If the first stage dies (SIGKILL from the runner), so do we, and with us the namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| HelperError::sys("setting the parent-death signal", e))?;
    let namespaces = plan.has(Layer::Namespaces);
    let mut report = Report::default();
    if namespaces {
        report.proc_mounted = view::build(&plan)?;
        nix::unistd::sethostname(HOSTNAME)
            .map_err(|e| HelperError::sys("setting the host name", e))?;
    }
    if plan.has(Layer::Limits) {
        let processes_now = if namespaces {
            0
        } else {
            limits::processes_of_current_user()
        };
        limits::apply_rlimits(&plan.limits, processes_now)?;
    }
    if plan.has(Layer::Landlock) {
        let write = writable_paths(&plan, namespaces);
        let enforced = lsm::apply(&lsm::Rules {
            read: &plan.read_paths,
            write: &write,
            proc: namespaces && report.proc_mounted,
            network: plan.network,
        })?;
        report.landlock_abi = enforced.abi;
        report.landlock_full = enforced.full;
    }
    limits::drop_all_capabilities()?;
    if plan.has(Layer::Seccomp) {
        syscalls::apply(plan.network)?;
    }
    if plan.report {
        let json = serde_json::to_string(&report).map_err(|e| HelperError::Plan(e.to_string()))?;
        eprintln!("{REPORT_PREFIX}{json}");
    }
    // Our stderr is the helper's status channel; the command writes both streams to the
    // output, merged in the order it writes them.
    let output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| HelperError::io("duplicating the output", e))?;
    // A stdio server speaks over stdin and stdout; its stderr (logs) goes to the status
    // channel, where the runner keeps the last lines for error messages.
    let (stdin, stderr) = if plan.stdio {
        (Stdio::inherit(), Stdio::inherit())
    } else {
        (Stdio::null(), Stdio::from(output))
    };
    let shell = Command::new(SHELL)
        .arg("-c")
        .arg(&plan.command)
        .current_dir(&plan.session_dir)
        .env_clear()
        .envs(&plan.env)
        .stdin(stdin)
        .stderr(stderr)
        .spawn()
        .map_err(|e| HelperError::io("starting the shell", e))?;
    let shell_pid = Pid::from_raw(i32::try_from(shell.id()).map_err(|_| HelperError::NoPid)?);
    Ok(reap_until(shell_pid))
}

/// With namespaces the private `/tmp` and `/dev/shm` are the command's too.
fn writable_paths(plan: &CommandPlan, namespaces: bool) -> Vec<std::path::PathBuf> {
    let mut write = vec![plan.session_dir.clone()];
    if namespaces {
        write.push("/tmp".into());
        write.push("/dev/shm".into());
    }
    write
}

/// Reaps every child (as PID 1, orphans of the namespace are ours) until the shell exits;
/// returns its exit code, 128 + n for a signal.
fn reap_until(shell: Pid) -> i32 {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == shell => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == shell => {
                return 128 + signal as i32;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED_EXIT,
        }
    }
}
