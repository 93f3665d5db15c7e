//! An MCP tool result as the model reads it: text as it is, other content (images, audio,
//! embedded resources, links) as a one-line summary, `isError` as a failed tool call.
//!
//! The result is read as JSON (its wire form) rather than through the SDK's content enums, so
//! that content types a newer server sends still come out readable.

use rmcp::model::CallToolResult;
use serde_json::Value;

use crate::tools::ToolOutcome;

pub fn outcome(result: &CallToolResult) -> ToolOutcome {
    let json = serde_json::to_value(result).unwrap_or(Value::Null);
    let is_error = json.get("isError").and_then(Value::as_bool) == Some(true);
    let blocks: Vec<String> = json
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| blocks.iter().map(block).collect())
        .unwrap_or_default();
    let mut output = blocks.join("\n");
    if output.is_empty()
        && let Some(structured) = json.get("structuredContent")
    {
        output = structured.to_string();
    }
    if output.is_empty() {
        output = if is_error {
            "the tool failed and said nothing".to_owned()
        } else {
            "(no output)".to_owned()
        };
    }
    if is_error {
        ToolOutcome::error(output)
    } else {
        ToolOutcome::ok(output)
    }
}

fn block(block: &Value) -> String {
    let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
    match field("type") {
        "text" => field("text").to_owned(),
        kind @ ("image" | "audio") => format!(
            "[{kind} {}, {} bytes]",
            or_unknown(field("mimeType")),
            base64_len(field("data"))
        ),
        "resource" => {
            let resource = block.get("resource").unwrap_or(&Value::Null);
            let get = |name: &str| resource.get(name).and_then(Value::as_str);
            let uri = get("uri").unwrap_or("");
            let mime = get("mimeType").unwrap_or("");
            match (get("text"), get("blob")) {
                (Some(text), _) => format!("[resource {uri}{}]\n{text}", mime_suffix(mime)),
                (None, Some(blob)) => format!(
                    "[resource {uri}, {}, {} bytes]",
                    or_unknown(mime),
                    base64_len(blob)
                ),
                (None, None) => format!("[resource {uri}]"),
            }
        }
        "resource_link" => {
            let name = field("name");
            let mime = field("mimeType");
            format!(
                "[resource link {}{}{}]",
                field("uri"),
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                },
                mime_suffix(mime)
            )
        }
        other => format!("[{} content]", or_unknown(other)),
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown type" } else { s }
}

fn mime_suffix(mime: &str) -> String {
    if mime.is_empty() {
        String::new()
    } else {
        format!(", {mime}")
    }
}

/// Decoded size of base64 `data`, without decoding it.
fn base64_len(data: &str) -> usize {
    let data = data.trim_end();
    let padding = data.bytes().rev().take_while(|b| *b == b'=').count();
    (data.len() / 4 * 3 + (data.len() % 4).saturating_sub(1)).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> CallToolResult {
        serde_json::from_value(json).expect("a CallToolResult")
    }

    #[test]
    fn text_image_audio_resources_and_errors() {
        let result = parse(serde_json::json!({
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
                {"type": "resource", "resource": {"uri": "file:///a.txt", "mimeType": "text/plain", "text": "A"}},
                {"type": "resource", "resource": {"uri": "file:///b.bin", "blob": "AAAAAA=="}},
                {"type": "resource_link", "uri": "file:///c", "name": "c"}
            ]
        }));
        let outcome = outcome(&result);
        assert!(!outcome.is_error);
        assert_eq!(
            outcome.output,
            "hello\n[image image/png, 5 bytes]\n[audio audio/wav, 3 bytes]\n\
             [resource file:///a.txt, text/plain]\nA\n[resource file:///b.bin, unknown type, 4 bytes]\n\
             [resource link file:///c (c)]"
        );
        let failed = super::outcome(&parse(serde_json::json!({
            "content": [{"type": "text", "text": "no such file"}], "isError": true
        })));
        assert!(failed.is_error);
        assert_eq!(failed.output, "no such file");
    }
}
