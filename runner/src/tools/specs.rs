//! What the model is told about each tool: a description and a strict input schema.
//!
//! Schemas forbid unknown properties, and `execute` refuses them too, so a misspelt optional
//! field (`replaceAll`) is reported instead of silently ignored.

use std::sync::{Arc, LazyLock};

use serde_json::{Value, json};

use super::files::DEFAULT_READ_LINES;
use super::todos::STATUSES;
use crate::llm::ToolSpec;
use crate::sandbox::MAX_READ_BYTES;

/// Every built-in tool's spec, built once: executions share the schemas (a clone of a spec
/// copies its name and description, not its schema).
static BUILT_IN: LazyLock<Vec<ToolSpec>> =
    LazyLock::new(|| super::ALL_TOOLS.iter().filter_map(|n| build(n)).collect());

/// The spec of tool `name`, or None if there is no such tool.
pub(super) fn spec(name: &str) -> Option<ToolSpec> {
    BUILT_IN.iter().find(|s| s.name == name).cloned()
}

fn build(name: &str) -> Option<ToolSpec> {
    let (description, input_schema) = match name {
        "run_command" => run_command(),
        "read_file" => read_file(),
        "write_file" => write_file(),
        "edit_file" => edit_file(),
        "list_directory" => list_directory(),
        "write_todos" => write_todos(),
        _ => return None,
    };
    Some(ToolSpec {
        name: name.to_owned(),
        description,
        input_schema: Arc::new(input_schema),
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

const PATH_RULES: &str = "Paths are relative to the working directory, or absolute inside it; \
    paths leading outside it (through '..' or symlinks) are refused.";

fn run_command() -> (String, Value) {
    let description = "Run a shell command with /bin/sh -c in the working directory and return \
        its exit code and output. Stdin is empty, stdout and stderr are merged, and long output \
        is cut in the middle. The environment is minimal (PATH, HOME, LANG, TMPDIR plus the \
        agent's variables). Commands that run longer than the timeout are killed. Processes \
        left running in the background are killed when the command exits, so do not start \
        servers meant to outlive it."
        .to_owned();
    let schema = object(
        json!({
            "command": {
                "type": "string",
                "minLength": 1,
                "description": "The shell command line, e.g. \"cargo test 2>&1 | tail -n 50\"."
            },
            "timeout_secs": {
                "type": "integer",
                "minimum": 1,
                "description": "Seconds before the command is killed. Defaults to the \
                    runner's setting; values above its maximum are lowered to it."
            }
        }),
        &["command"],
    );
    (description, schema)
}

fn read_file() -> (String, Value) {
    let description = format!(
        "Read a text file and return its contents (invalid UTF-8 is replaced). Returns up to \
         {DEFAULT_READ_LINES} lines by default; use offset and limit to page through longer \
         files. Files above {} MiB cannot be read. {PATH_RULES}",
        MAX_READ_BYTES / (1024 * 1024)
    );
    let schema = object(
        json!({
            "path": {"type": "string", "minLength": 1, "description": "The file to read."},
            "offset": {
                "type": "integer",
                "minimum": 1,
                "description": "First line to return, 1-based. Default 1."
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "description": format!("Number of lines to return. Default {DEFAULT_READ_LINES}.")
            }
        }),
        &["path"],
    );
    (description, schema)
}

fn write_file() -> (String, Value) {
    let description = format!(
        "Create or overwrite a file with the given content, creating missing parent \
         directories. To change part of an existing file prefer edit_file. {PATH_RULES}"
    );
    let schema = object(
        json!({
            "path": {"type": "string", "minLength": 1, "description": "The file to write."},
            "content": {"type": "string", "description": "The complete new content."}
        }),
        &["path", "content"],
    );
    (description, schema)
}

fn edit_file() -> (String, Value) {
    let description = format!(
        "Replace an exact string in a text file. old_string must match the file exactly, \
         whitespace and indentation included, and must occur exactly once unless replace_all \
         is true; include surrounding lines to make it unique. Returns how many replacements \
         were made. {PATH_RULES}"
    );
    let schema = object(
        json!({
            "path": {"type": "string", "minLength": 1, "description": "The file to edit."},
            "old_string": {
                "type": "string",
                "minLength": 1,
                "description": "The exact text to replace."
            },
            "new_string": {
                "type": "string",
                "description": "The text to put in its place (may be empty to delete)."
            },
            "replace_all": {
                "type": "boolean",
                "description": "Replace every occurrence instead of requiring exactly one. \
                    Default false."
            }
        }),
        &["path", "old_string", "new_string"],
    );
    (description, schema)
}

fn list_directory() -> (String, Value) {
    let description = format!(
        "List a directory, one entry per line sorted by name: directories end with '/', files \
         show their size in bytes. {PATH_RULES}"
    );
    let schema = object(
        json!({
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "The directory to list. Default '.', the working directory."
            }
        }),
        &[],
    );
    (description, schema)
}

fn write_todos() -> (String, Value) {
    let description = "Record your plan as a todo list that the user can follow. Each call \
        replaces the whole list, so always send every item with its current status. Keep one \
        item in_progress at a time and mark items completed as soon as they are done. Items \
        without an id get todo-1, todo-2, ... by position."
        .to_owned();
    let statuses: Vec<&str> = STATUSES.iter().map(|(name, _)| *name).collect();
    let item = object(
        json!({
            "id": {"type": "string", "description": "Stable id of the item; optional."},
            "content": {"type": "string", "minLength": 1, "description": "What to do."},
            "status": {"type": "string", "enum": statuses}
        }),
        &["content", "status"],
    );
    let schema = object(
        json!({
            "todos": {
                "type": "array",
                "items": item,
                "description": "The complete todo list, in order."
            }
        }),
        &["todos"],
    );
    (description, schema)
}
