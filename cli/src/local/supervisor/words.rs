//! How the supervisor words exits and durations for people.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;

/// "exit status 3", "killed by SIGKILL".
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        None => "status unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => s.to_string(),
        },
    }
}

pub(super) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub(super) fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(
            describe(Some(ExitStatus::from_raw(3 << 8))),
            "exit status 3"
        );
        assert_eq!(describe(Some(ExitStatus::from_raw(9))), "killed by SIGKILL");
        assert_eq!(describe(None), "status unknown");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }
}
