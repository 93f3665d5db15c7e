//! What an agent or execution may ask for, checked the same way by the CLI (before sending),
//! the control plane (authoritative, at apply and at execution creation) and the runner.

use crate::agent::v1::Agent;

/// The built-in tools a runner offers. The runner implements exactly these; the control plane
/// refuses any other name in an agent's tool list.
pub const BUILTIN_TOOLS: &[&str] = &[
    "run_command",
    "read_file",
    "write_file",
    "edit_file",
    "list_directory",
    "write_todos",
];

/// Largest token budget accepted: far above any single execution's need, low enough that a
/// typo (an extra few zeros) is caught rather than silently meaning "unlimited".
pub const MAX_TOKEN_BUDGET: u64 = 1_000_000_000;

/// Which built-in tools an agent is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    /// `tools` unset and no (deprecated) `allowed_tools`: every built-in tool.
    AllBuiltIn,
    /// Exactly these (possibly none).
    Only(&'a [String]),
}

impl Agent {
    /// `tools` when set (empty: none); else `allowed_tools`, empty meaning all, which is what
    /// agents stored before `tools` existed meant.
    pub fn tool_choice(&self) -> ToolChoice<'_> {
        match &self.tools {
            Some(list) => ToolChoice::Only(&list.names),
            None if self.allowed_tools.is_empty() => ToolChoice::AllBuiltIn,
            None => ToolChoice::Only(&self.allowed_tools),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "unknown tool {names}; the built-in tools are {}",
        BUILTIN_TOOLS.join(", ")
    )]
    UnknownTools { names: String },
    #[error(
        "set `tools` or the older `allowed_tools`, not both (`tools` decides: omitted = all \
         built-in tools, [] = none)"
    )]
    BothToolLists,
    #[error(
        "{field} {value} is invalid: use a whole number of tokens from 1 to {MAX_TOKEN_BUDGET}, \
         or leave it out for no budget"
    )]
    TokenBudget { field: String, value: i128 },
}

/// Every name must be a built-in tool; all unknown ones are named at once.
pub fn check_tool_names(names: &[String]) -> Result<(), RuleError> {
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !BUILTIN_TOOLS.contains(&n.as_str()))
        .map(|n| format!("'{n}'"))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(RuleError::UnknownTools {
            names: unknown.join(", "),
        })
    }
}

/// The agent's tool lists: known names only, and not both lists.
pub fn check_agent_tools(agent: &Agent) -> Result<(), RuleError> {
    if agent.tools.is_some() && !agent.allowed_tools.is_empty() {
        return Err(RuleError::BothToolLists);
    }
    match agent.tool_choice() {
        ToolChoice::AllBuiltIn => Ok(()),
        ToolChoice::Only(names) => check_tool_names(names),
    }
}

/// A token budget, when set, is 1..=[`MAX_TOKEN_BUDGET`]. Signed so that the CLI can name a
/// negative number from a YAML file instead of failing to parse it.
pub fn check_token_budget(field: &str, value: Option<i128>) -> Result<(), RuleError> {
    match value {
        None => Ok(()),
        Some(v) if (1..=i128::from(MAX_TOKEN_BUDGET)).contains(&v) => Ok(()),
        Some(v) => Err(RuleError::TokenBudget {
            field: field.to_owned(),
            value: v,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::ToolList;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tool_choice_tells_unset_from_empty() {
        let old = Agent::default();
        assert_eq!(old.tool_choice(), ToolChoice::AllBuiltIn);
        let old_list = Agent {
            allowed_tools: names(&["read_file"]),
            ..Default::default()
        };
        assert_eq!(
            old_list.tool_choice(),
            ToolChoice::Only(&names(&["read_file"]))
        );
        let none = Agent {
            tools: Some(ToolList::default()),
            ..Default::default()
        };
        assert_eq!(none.tool_choice(), ToolChoice::Only(&[]));
    }

    #[test]
    fn unknown_tools_are_all_named() {
        assert_eq!(check_tool_names(&names(BUILTIN_TOOLS)), Ok(()));
        let err = check_tool_names(&names(&["read_file", "shell", "rm"])).expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("'shell', 'rm'") && text.contains("run_command"),
            "{text}"
        );
        let both = Agent {
            tools: Some(ToolList::default()),
            allowed_tools: names(&["read_file"]),
            ..Default::default()
        };
        assert_eq!(check_agent_tools(&both), Err(RuleError::BothToolLists));
    }

    #[test]
    fn budgets_are_bounded() {
        assert_eq!(check_token_budget("token_budget", None), Ok(()));
        assert_eq!(check_token_budget("token_budget", Some(1)), Ok(()));
        let max = i128::from(MAX_TOKEN_BUDGET);
        assert_eq!(check_token_budget("token_budget", Some(max)), Ok(()));
        for bad in [0, -5, max + 1] {
            let err = check_token_budget("token_budget", Some(bad)).expect_err("refused");
            assert!(
                err.to_string()
                    .contains(&format!("token_budget {bad} is invalid")),
                "{err}"
            );
        }
    }
}
