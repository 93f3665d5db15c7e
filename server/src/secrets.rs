//! Secret runtime environment values: runners get them in full when they claim an execution;
//! every other answer carries a mask instead.

use stigmer_proto::agentexecution::v1::AgentExecution;

pub const MASK: &str = "***";

pub fn masked(mut execution: AgentExecution) -> AgentExecution {
    if let Some(spec) = execution.spec.as_mut() {
        for value in spec.runtime_env.values_mut() {
            if value.is_secret {
                value.value = MASK.to_string();
            }
        }
    }
    execution
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, RuntimeEnvValue};

    use super::*;

    #[test]
    fn masks_only_secret_values() {
        let env = |value: &str, is_secret| RuntimeEnvValue {
            value: value.into(),
            is_secret,
        };
        let execution = AgentExecution {
            spec: Some(AgentExecutionSpec {
                runtime_env: HashMap::from([
                    ("TOKEN".to_string(), env("s3cret", true)),
                    ("REGION".to_string(), env("eu", false)),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = masked(execution).spec.unwrap();
        assert_eq!(spec.runtime_env["TOKEN"], env(MASK, true));
        assert_eq!(spec.runtime_env["REGION"], env("eu", false));
    }
}
