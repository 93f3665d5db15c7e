//! `write_todos`: the model's plan, replaced whole on every call.

use std::collections::BTreeSet;

use serde::Deserialize;
use stigmer_proto::agentexecution::v1::TodoStatus;

use super::{Failure, TodoUpdate, ToolEffect, ToolOutcome, parse_input};

/// Status names as the model writes them, in display order.
pub(super) const STATUSES: [(&str, TodoStatus); 4] = [
    ("pending", TodoStatus::TodoPending),
    ("in_progress", TodoStatus::TodoInProgress),
    ("completed", TodoStatus::TodoCompleted),
    ("cancelled", TodoStatus::TodoCancelled),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    todos: Vec<TodoInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TodoInput {
    id: Option<String>,
    content: String,
    status: String,
}

pub(super) fn write_todos(input: &serde_json::Value) -> Result<ToolOutcome, Failure> {
    let input: Input = parse_input("write_todos", input)?;
    let todos = to_updates(input.todos)?;
    Ok(ToolOutcome {
        output: summary(&todos),
        is_error: false,
        effect: ToolEffect::Todos(todos),
    })
}

fn to_updates(items: Vec<TodoInput>) -> Result<Vec<TodoUpdate>, Failure> {
    let given: Vec<Option<String>> = items
        .iter()
        .map(|t| t.id.clone().filter(|id| !id.trim().is_empty()))
        .collect();
    let mut used = BTreeSet::new();
    for id in given.iter().flatten() {
        if !used.insert(id.clone()) {
            return Err(Failure::Model(format!(
                "todo id '{id}' is used more than once; ids must be unique"
            )));
        }
    }
    items
        .into_iter()
        .zip(given)
        .enumerate()
        .map(|(index, (item, id))| {
            let id = id.unwrap_or_else(|| fresh_id(index, &mut used));
            to_update(index, item, id)
        })
        .collect()
}

/// `todo-<position>`, or the next free number if the model already used that id.
fn fresh_id(index: usize, used: &mut BTreeSet<String>) -> String {
    let mut n = index + 1;
    loop {
        let id = format!("todo-{n}");
        if used.insert(id.clone()) {
            return id;
        }
        n += 1;
    }
}

fn to_update(index: usize, item: TodoInput, id: String) -> Result<TodoUpdate, Failure> {
    if item.content.trim().is_empty() {
        return Err(Failure::Model(format!(
            "todos[{index}].content must not be empty"
        )));
    }
    let status = parse_status(&item.status).ok_or_else(|| {
        let allowed: Vec<&str> = STATUSES.iter().map(|(name, _)| *name).collect();
        Failure::Model(format!(
            "todos[{index}].status '{}' is not one of: {}",
            item.status,
            allowed.join(", ")
        ))
    })?;
    Ok(TodoUpdate {
        id,
        content: item.content,
        status,
    })
}

fn parse_status(s: &str) -> Option<TodoStatus> {
    STATUSES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, status)| *status)
}

fn status_name(status: TodoStatus) -> &'static str {
    STATUSES
        .iter()
        .find(|(_, s)| *s == status)
        .map_or("unspecified", |(name, _)| name)
}

/// Counts per status, then one line per item, so the model sees what it just set.
fn summary(todos: &[TodoUpdate]) -> String {
    if todos.is_empty() {
        return "todo list cleared".into();
    }
    let counts: Vec<String> = STATUSES
        .iter()
        .filter_map(|(name, status)| {
            let n = todos.iter().filter(|t| t.status == *status).count();
            (n > 0).then(|| format!("{n} {}", name.replace('_', " ")))
        })
        .collect();
    let mut out = format!(
        "todo list updated: {} items ({})",
        todos.len(),
        counts.join(", ")
    );
    for t in todos {
        out.push_str(&format!(
            "\n- {} [{}] {}",
            t.id,
            status_name(t.status),
            t.content
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(input: serde_json::Value) -> ToolOutcome {
        match write_todos(&input) {
            Ok(outcome) => outcome,
            Err(Failure::Model(m)) => panic!("unexpected refusal: {m}"),
            Err(Failure::Cancelled) => panic!("unexpected cancel"),
        }
    }

    fn refusal(input: serde_json::Value) -> String {
        match write_todos(&input) {
            Err(Failure::Model(m)) => m,
            Ok(o) => panic!("expected a refusal, got {o:?}"),
            Err(Failure::Cancelled) => panic!("unexpected cancel"),
        }
    }

    fn todos(outcome: &ToolOutcome) -> &[TodoUpdate] {
        match &outcome.effect {
            ToolEffect::Todos(t) => t,
            ToolEffect::None => panic!("no todos effect"),
        }
    }

    #[test]
    fn parses_statuses_and_generates_missing_ids() {
        let outcome = ok(json!({"todos": [
            {"content": "plan", "status": "completed"},
            {"id": "build", "content": "build it", "status": "in_progress"},
            {"content": "test", "status": "pending"},
            {"content": "gold-plate", "status": "cancelled", "id": ""},
        ]}));
        assert!(!outcome.is_error);
        assert_eq!(
            todos(&outcome),
            [
                TodoUpdate {
                    id: "todo-1".into(),
                    content: "plan".into(),
                    status: TodoStatus::TodoCompleted
                },
                TodoUpdate {
                    id: "build".into(),
                    content: "build it".into(),
                    status: TodoStatus::TodoInProgress
                },
                TodoUpdate {
                    id: "todo-3".into(),
                    content: "test".into(),
                    status: TodoStatus::TodoPending
                },
                TodoUpdate {
                    id: "todo-4".into(),
                    content: "gold-plate".into(),
                    status: TodoStatus::TodoCancelled
                },
            ]
        );
        assert_eq!(
            outcome.output,
            "todo list updated: 4 items (1 pending, 1 in progress, 1 completed, 1 cancelled)\n\
             - todo-1 [completed] plan\n\
             - build [in_progress] build it\n\
             - todo-3 [pending] test\n\
             - todo-4 [cancelled] gold-plate"
        );
    }

    #[test]
    fn generated_ids_do_not_collide_with_given_ones() {
        let outcome = ok(json!({"todos": [
            {"content": "a", "status": "pending"},
            {"id": "todo-1", "content": "b", "status": "pending"},
        ]}));
        let ids: Vec<_> = todos(&outcome).iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["todo-2", "todo-1"]);
    }

    #[test]
    fn invalid_status_is_refused_with_the_allowed_values() {
        let m = refusal(json!({"todos": [
            {"content": "a", "status": "pending"},
            {"content": "b", "status": "done"},
        ]}));
        assert_eq!(
            m,
            "todos[1].status 'done' is not one of: pending, in_progress, completed, cancelled"
        );
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert!(refusal(json!({"todos": [{"content": "a"}]})).contains("missing field `status`"));
        assert!(refusal(json!({"todos": "a, b"})).contains("invalid type"));
        assert!(refusal(json!({})).contains("missing field `todos`"));
        assert!(
            refusal(json!({"todos": [{"content": " ", "status": "pending"}]}))
                .contains("todos[0].content must not be empty")
        );
        assert!(
            refusal(json!({"todos": [
                {"id": "x", "content": "a", "status": "pending"},
                {"id": "x", "content": "b", "status": "pending"},
            ]}))
            .contains("'x' is used more than once")
        );
    }

    #[test]
    fn empty_list_clears() {
        let outcome = ok(json!({"todos": []}));
        assert_eq!(outcome.output, "todo list cleared");
        assert_eq!(outcome.effect, ToolEffect::Todos(vec![]));
    }
}
