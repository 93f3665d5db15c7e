//! Step 4 (pure): the AgentRunner's status from what was applied and observed.
//!
//! `lastTransitionTime` changes only when a condition's status flips, and the caller writes
//! the status only when it differs from the stored one, so an unchanged world produces no
//! writes (and no watch events that would trigger another reconcile).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{AgentRunner, AgentRunnerStatus};

/// Condition type: the desired runners are up (or the user asked for none).
pub const READY: &str = "Ready";
/// Condition type: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a human (spec, Secret, apply or rollout failure).
pub const DEGRADED: &str = "Degraded";

/// Why a reconcile was blocked: the condition and event reason, and the label of the
/// failure metric, named once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedReason {
    /// The spec failed validation.
    InvalidSpec,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret exists without the referenced key.
    SecretKeyNotFound,
    /// Applying the owned objects failed.
    ApplyFailed,
}

impl BlockedReason {
    /// The PascalCase reason of conditions and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyNotFound => "SecretKeyNotFound",
            Self::ApplyFailed => "ApplyFailed",
        }
    }

    /// The `reason` label of the reconcile-failure metric (snake_case, like
    /// `Error::metric_label()`).
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::InvalidSpec => "invalid_spec",
            Self::SecretNotFound => "secret_not_found",
            Self::SecretKeyNotFound => "secret_key_not_found",
            Self::ApplyFailed => "apply_failed",
        }
    }
}

/// Why the pipeline stopped before applying anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub reason: BlockedReason,
    /// Human-readable explanation naming the field, Secret or key.
    pub message: String,
}

/// What the reconcile saw.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Replicas the Deployment should have (zero when suspended).
    pub desired_replicas: i32,
    /// The Deployment as the apiserver returned it, if it exists.
    pub deployment: Option<&'a Deployment>,
    /// Set when validation or dereferencing stopped the pipeline.
    pub blocked: Option<&'a Blocked>,
    /// Label selector of the pods.
    pub selector: &'a str,
}

/// Compute the new status. `now` is used only for conditions whose status flips.
pub fn compute(runner: &AgentRunner, observed: Observed<'_>, now: Timestamp) -> AgentRunnerStatus {
    let counts = Counts::of(observed.deployment);
    let generation = runner.metadata.generation;
    let previous = runner
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = [
        ready(runner, &observed, &counts),
        progressing(&observed, &counts),
        degraded(&observed, &counts),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        let fresh = Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        };
        keep_transition_time(previous, fresh)
    })
    .collect();
    AgentRunnerStatus {
        observed_generation: generation,
        replicas: counts.replicas,
        ready_replicas: counts.ready,
        updated_replicas: counts.updated,
        selector: Some(observed.selector.to_owned()),
        conditions,
    }
}

/// Whether `new` must be written over `old`.
pub fn needs_write(old: Option<&AgentRunnerStatus>, new: &AgentRunnerStatus) -> bool {
    old != Some(new)
}

fn keep_transition_time(previous: &[Condition], mut fresh: Condition) -> Condition {
    if let Some(prev) = previous.iter().find(|c| c.type_ == fresh.type_)
        && prev.status == fresh.status
    {
        fresh.last_transition_time = prev.last_transition_time.clone();
    }
    fresh
}

#[derive(Debug, Default)]
struct Counts {
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    /// The Deployment controller has seen the latest Deployment spec.
    current: bool,
    /// A Deployment condition that means the rollout cannot finish.
    stalled: Option<(&'static str, String)>,
}

impl Counts {
    fn of(deployment: Option<&Deployment>) -> Self {
        let Some(d) = deployment else {
            return Counts::default();
        };
        let Some(s) = &d.status else {
            return Counts {
                current: d.metadata.generation.is_none(),
                ..Default::default()
            };
        };
        let current = match (s.observed_generation, d.metadata.generation) {
            (Some(seen), Some(gen_)) => seen >= gen_,
            _ => false,
        };
        let stalled = s.conditions.iter().flatten().find_map(|c| {
            let type_ = c.type_.as_deref();
            let failed_replicas =
                type_ == Some("ReplicaFailure") && c.status.as_deref() == Some("True");
            let deadline = type_ == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded");
            (failed_replicas || deadline).then(|| {
                let reason = if deadline {
                    "RolloutStalled"
                } else {
                    "ReplicaFailure"
                };
                (reason, c.message.clone().unwrap_or_default())
            })
        });
        Counts {
            replicas: s.replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            updated: s.updated_replicas.unwrap_or(0),
            available: s.available_replicas.unwrap_or(0),
            current,
            stalled,
        }
    }

    fn rolling(&self, desired: i32) -> bool {
        !self.current
            || self.updated < desired
            || self.replicas > self.updated
            || self.available < desired
    }
}

type Cond = (&'static str, bool, &'static str, String);

fn ready(runner: &AgentRunner, o: &Observed<'_>, c: &Counts) -> Cond {
    let desired = o.desired_replicas;
    if runner.spec.suspend {
        return (
            READY,
            false,
            "Suspended",
            "spec.suspend is true: runners are scaled to zero".into(),
        );
    }
    if let Some(b) = o.blocked
        && (o.deployment.is_none() || c.ready == 0)
    {
        return (READY, false, b.reason.as_str(), b.message.clone());
    }
    if desired == 0 {
        return (READY, true, "ScaledToZero", "no runners are desired".into());
    }
    let message = format!("{}/{} runner pods ready", c.ready, desired);
    if c.ready >= desired {
        (READY, true, "RunnersReady", message)
    } else {
        (READY, false, "RunnersNotReady", message)
    }
}

fn progressing(o: &Observed<'_>, c: &Counts) -> Cond {
    if let Some(b) = o.blocked {
        return (
            PROGRESSING,
            false,
            b.reason.as_str(),
            "changes are not applied until the problem is fixed".into(),
        );
    }
    if c.rolling(o.desired_replicas) {
        let message = format!(
            "{} of {} runner pods updated, {} available",
            c.updated, o.desired_replicas, c.available
        );
        return (PROGRESSING, true, "RollingOut", message);
    }
    (
        PROGRESSING,
        false,
        "RolloutComplete",
        "the runner pods match the spec".into(),
    )
}

fn degraded(o: &Observed<'_>, c: &Counts) -> Cond {
    if let Some(b) = o.blocked {
        return (DEGRADED, true, b.reason.as_str(), b.message.clone());
    }
    if let Some((reason, message)) = &c.stalled {
        return (DEGRADED, true, reason, message.clone());
    }
    (DEGRADED, false, "AsExpected", "no problems found".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AgentRunnerSpec;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    const SELECTOR: &str = "app=x";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn runner(replicas: i32) -> AgentRunner {
        let mut ar = AgentRunner::new(
            "demo",
            AgentRunnerSpec {
                replicas,
                ..Default::default()
            },
        );
        ar.metadata.generation = Some(2);
        ar
    }

    fn deployment(gen_: i64, seen: i64, replicas: i32, updated: i32, ready: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(gen_);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(seen),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        });
        d
    }

    fn observed<'a>(
        desired: i32,
        d: Option<&'a Deployment>,
        b: Option<&'a Blocked>,
    ) -> Observed<'a> {
        Observed {
            desired_replicas: desired,
            deployment: d,
            blocked: b,
            selector: SELECTOR,
        }
    }

    fn cond<'a>(s: &'a AgentRunnerStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn all_ready_is_ready_and_not_progressing() {
        let ar = runner(3);
        let d = deployment(1, 1, 3, 3, 3);
        let s = compute(&ar, observed(3, Some(&d), None), at(100));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(
            (s.replicas, s.ready_replicas, s.updated_replicas),
            (3, 3, 3)
        );
        assert_eq!(s.selector.as_deref(), Some(SELECTOR));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "RunnersReady");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, READY).observed_generation, Some(2));
    }

    #[test]
    fn rollout_in_progress_is_progressing() {
        let ar = runner(3);
        let d = deployment(2, 2, 4, 1, 3);
        let s = compute(&ar, observed(3, Some(&d), None), at(100));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, PROGRESSING).reason, "RollingOut");
        assert_eq!(cond(&s, READY).status, "True");
        let unseen = deployment(3, 2, 3, 3, 3);
        let s = compute(&ar, observed(3, Some(&unseen), None), at(100));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let mut ar = runner(2);
        let d = deployment(1, 1, 2, 2, 1);
        let first = compute(&ar, observed(2, Some(&d), None), at(100));
        assert_eq!(cond(&first, READY).last_transition_time, Time(at(100)));
        ar.status = Some(first.clone());

        // Same facts later: identical status, so nothing to write.
        let again = compute(&ar, observed(2, Some(&d), None), at(200));
        assert_eq!(again, first);
        assert!(!needs_write(ar.status.as_ref(), &again));

        // Ready flips: its time moves, the others' stay.
        let d2 = deployment(1, 1, 2, 2, 2);
        let flipped = compute(&ar, observed(2, Some(&d2), None), at(300));
        assert_eq!(cond(&flipped, READY).last_transition_time, Time(at(300)));
        assert_eq!(cond(&flipped, DEGRADED).last_transition_time, Time(at(100)));
        assert!(needs_write(ar.status.as_ref(), &flipped));
    }

    #[test]
    fn message_change_without_flip_keeps_time() {
        let mut ar = runner(3);
        let d = deployment(1, 1, 3, 3, 1);
        let s = compute(&ar, observed(3, Some(&d), None), at(100));
        ar.status = Some(s);
        let d = deployment(1, 1, 3, 3, 2);
        let s = compute(&ar, observed(3, Some(&d), None), at(500));
        assert_eq!(cond(&s, READY).message, "2/3 runner pods ready");
        assert_eq!(cond(&s, READY).last_transition_time, Time(at(100)));
    }

    #[test]
    fn metric_labels_are_the_reasons_in_snake_case() {
        use BlockedReason::*;
        for r in [InvalidSpec, SecretNotFound, SecretKeyNotFound, ApplyFailed] {
            let mut snake = String::new();
            for (i, c) in r.as_str().chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(r.metric_label(), snake);
        }
    }

    #[test]
    fn blocked_without_pods_is_degraded_and_not_ready() {
        let ar = runner(1);
        let b = Blocked {
            reason: BlockedReason::SecretNotFound,
            message: "Secret \"jwt\" not found".into(),
        };
        let s = compute(&ar, observed(1, None, Some(&b)), at(100));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "SecretNotFound");
        assert_eq!(cond(&s, DEGRADED).message, "Secret \"jwt\" not found");
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "SecretNotFound");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
    }

    #[test]
    fn blocked_with_running_pods_stays_ready() {
        let ar = runner(2);
        let d = deployment(1, 1, 2, 2, 2);
        let b = Blocked {
            reason: BlockedReason::SecretKeyNotFound,
            message: "key".into(),
        };
        let s = compute(&ar, observed(2, Some(&d), Some(&b)), at(100));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "True");
    }

    #[test]
    fn suspended_and_scaled_to_zero() {
        let mut ar = runner(3);
        ar.spec.suspend = true;
        let s = compute(&ar, observed(0, None, None), at(1));
        assert_eq!(cond(&s, READY).reason, "Suspended");
        assert_eq!(cond(&s, READY).status, "False");
        let ar = runner(0);
        let d = deployment(1, 1, 0, 0, 0);
        let s = compute(&ar, observed(0, Some(&d), None), at(1));
        assert_eq!(cond(&s, READY).reason, "ScaledToZero");
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
    }

    #[test]
    fn stalled_rollout_is_degraded() {
        let ar = runner(1);
        let mut d = deployment(1, 1, 1, 0, 0);
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("pods \"x\" is forbidden: violates PodSecurity".into()),
                ..Default::default()
            }]);
        }
        let s = compute(&ar, observed(1, Some(&d), None), at(1));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "ReplicaFailure");
        assert!(cond(&s, DEGRADED).message.contains("PodSecurity"));
    }
}
