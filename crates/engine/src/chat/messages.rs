//! From OpenAI request messages to what chat templates expect to iterate.
//!
//! Templates are written for Hugging Face's `apply_chat_template`, which hands them Python
//! dicts. Two shapes in OpenAI requests differ from what templates were written for, and
//! llama.cpp (`common/chat.cpp`) adapts both; we do the same so prompts match llama-server's:
//!
//! * `tool_calls[].function.arguments` is a JSON *string* in the API, but templates iterate it
//!   as a mapping (Qwen3.5: `arguments|items`) or re-serialize it (Qwen2.5: `arguments|tojson`).
//!   A string that parses to a JSON object is replaced by that object; anything else is kept
//!   as sent, and the template decides (it usually raises).
//! * `content` may be a list of parts. Templates that render typed content (Qwen3.5, Gemma 3)
//!   get the list unchanged, so the output equals HF's. For the others (ChatML-style
//!   `'...' + message.content`), where HF would raise, the text parts are joined with `"\n"`
//!   into one string, as llama.cpp's `concat_typed_text` does. Whether a template renders
//!   typed content is probed once when it is loaded (`ChatTemplate::new`).
//!
//! Everything else (`reasoning_content`, `tool_call_id`, `name`, unknown keys) passes through.

use super::ChatError;
use serde_json::{Map, Value};

/// Checks the shape every template relies on and applies the two adaptations above.
pub fn normalize(messages: &Value, typed_content: bool) -> Result<Value, ChatError> {
    let list = messages.as_array().ok_or(ChatError::MessagesNotArray)?;
    let mut out = Vec::with_capacity(list.len());
    for (index, message) in list.iter().enumerate() {
        let obj = message.as_object().ok_or(ChatError::BadMessage {
            index,
            reason: "a message must be a JSON object",
        })?;
        if !obj.get("role").is_some_and(Value::is_string) {
            return Err(ChatError::BadMessage {
                index,
                reason: "`role` must be a string",
            });
        }
        let mut obj = obj.clone();
        normalize_tool_calls(&mut obj, index)?;
        if !typed_content {
            flatten_content(&mut obj);
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

fn normalize_tool_calls(msg: &mut Map<String, Value>, index: usize) -> Result<(), ChatError> {
    let calls = match msg.get_mut("tool_calls") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(ChatError::BadMessage {
                index,
                reason: "`tool_calls` must be an array",
            });
        }
    };
    for call in calls {
        let Some(Value::Object(function)) = call.get_mut("function") else {
            continue;
        };
        let Some(Value::String(args)) = function.get("arguments") else {
            continue;
        };
        if let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(args) {
            function.insert("arguments".into(), parsed);
        }
    }
    Ok(())
}

fn flatten_content(msg: &mut Map<String, Value>) {
    let Some(Value::Array(parts)) = msg.get("content") else {
        return;
    };
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .map(|p| p.get("text").and_then(Value::as_str).unwrap_or_default())
        .collect();
    let joined = texts.join("\n");
    msg.insert("content".into(), Value::String(joined));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_object_arguments_only() {
        let msgs = json!([{"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [2]}"}},
            {"type": "function", "function": {"name": "g", "arguments": "not json"}},
            {"type": "function", "function": {"name": "h", "arguments": "[1]"}}
        ]}]);
        let out = normalize(&msgs, true).unwrap();
        let calls = &out[0]["tool_calls"];
        assert_eq!(calls[0]["function"]["arguments"], json!({"b": 1, "a": [2]}));
        // Key order is the sender's, as in Python's json.loads.
        let keys: Vec<_> = calls[0]["function"]["arguments"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(calls[1]["function"]["arguments"], "not json");
        assert_eq!(calls[2]["function"]["arguments"], "[1]");
    }

    #[test]
    fn flattens_text_parts_when_template_is_untyped() {
        let msgs = json!([{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}
        ]}]);
        assert_eq!(normalize(&msgs, false).unwrap()[0]["content"], "a\nb");
        assert_eq!(
            normalize(&msgs, true).unwrap()[0]["content"],
            msgs[0]["content"]
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            normalize(&json!({}), true),
            Err(ChatError::MessagesNotArray)
        ));
        let no_role = json!([{"role": "user", "content": "x"}, {"content": "y"}]);
        assert!(matches!(
            normalize(&no_role, true),
            Err(ChatError::BadMessage { index: 1, .. })
        ));
        let bad_calls = json!([{"role": "assistant", "tool_calls": {"x": 1}}]);
        assert!(matches!(
            normalize(&bad_calls, true),
            Err(ChatError::BadMessage { index: 0, .. })
        ));
        assert!(matches!(
            normalize(&json!(["hi"]), true),
            Err(ChatError::BadMessage { .. })
        ));
    }
}
