//! Tool calls in the model's answer. Qwen-style templates ask for `<tool_call>…</tool_call>`
//! blocks holding either Qwen3.5's XML form (`<function=NAME>` with `<parameter=KEY>` values)
//! or Qwen3/Hermes' JSON (`{"name": …, "arguments": {…}}`). [`ToolSplit`] takes the answer as
//! it streams and returns text and whole calls: text is released as soon as it cannot be the
//! start of `<tool_call>`; a call is returned once its closing tag arrives (its arguments are
//! not streamed piecemeal). A block that does not parse stays text.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::think::partial_tag;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments (an object).
    pub arguments: Value,
}

/// Answer text or a call.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// Plain answer text.
    Text(String),
    /// A complete call.
    Call(ToolCall),
}

/// The declared type of each tool's parameters (from the request's JSON schemas): an XML
/// value whose parameter is declared `string` stays a string, others are read as JSON first.
#[derive(Clone, Debug, Default)]
pub struct ParamTypes(HashMap<(String, String), String>);

impl ParamTypes {
    /// From tools in OpenAI's form (`[{type: function, function: {name, parameters}}]`).
    pub fn from_tools(tools: &[Value]) -> ParamTypes {
        let mut m = HashMap::new();
        for t in tools {
            let f = t.get("function").unwrap_or(t);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let props = f
                .get("parameters")
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object);
            for (k, v) in props.into_iter().flatten() {
                if let Some(ty) = v.get("type").and_then(Value::as_str) {
                    m.insert((name.to_string(), k.clone()), ty.to_string());
                }
            }
        }
        ParamTypes(m)
    }
}

/// Splits an answer into text and tool calls.
#[derive(Debug)]
pub struct ToolSplit {
    types: ParamTypes,
    held: String,
    inside: bool,
}

impl ToolSplit {
    /// A splitter reading values by `types`.
    pub fn new(types: ParamTypes) -> ToolSplit {
        ToolSplit {
            types,
            held: String::new(),
            inside: false,
        }
    }

    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.inside {
                let Some(at) = self.held.find(CLOSE) else {
                    return out;
                };
                let rest = self.held[at + CLOSE.len()..].to_string();
                let body = std::mem::replace(&mut self.held, rest);
                let body = &body[..at];
                match parse_call(body, &self.types) {
                    Some(call) => out.push(Piece::Call(call)),
                    None => text_piece(&mut out, format!("{OPEN}{body}{CLOSE}")),
                }
                self.inside = false;
                continue;
            }
            if let Some(at) = self.held.find(OPEN) {
                let rest = self.held[at + OPEN.len()..].to_string();
                let before = std::mem::replace(&mut self.held, rest);
                text_piece(&mut out, before[..at].to_string());
                self.inside = true;
                continue;
            }
            let keep = partial_tag(&self.held, OPEN);
            let tail = self.held.split_off(self.held.len() - keep);
            text_piece(&mut out, std::mem::replace(&mut self.held, tail));
            return out;
        }
    }

    /// What is held when generation ends: an unfinished call is text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if self.inside {
            text_piece(&mut out, format!("{OPEN}{held}"));
        } else {
            text_piece(&mut out, held);
        }
        self.inside = false;
        out
    }
}

fn text_piece(out: &mut Vec<Piece>, t: String) {
    if !t.is_empty() {
        out.push(Piece::Text(t));
    }
}

/// A whole answer as (text, calls).
pub fn split_calls(text: &str, types: ParamTypes) -> (String, Vec<ToolCall>) {
    let mut s = ToolSplit::new(types);
    let (mut t, mut calls) = (String::new(), Vec::new());
    for p in s.push(text).into_iter().chain(s.finish()) {
        match p {
            Piece::Text(x) => t.push_str(&x),
            Piece::Call(c) => calls.push(c),
        }
    }
    (t, calls)
}

/// The body of a `<tool_call>` block, in either form.
fn parse_call(body: &str, types: &ParamTypes) -> Option<ToolCall> {
    let body = body.trim();
    if let Some(rest) = body.strip_prefix("<function=") {
        return parse_xml(rest, types);
    }
    let v: Value = serde_json::from_str(body).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => return None,
    };
    arguments
        .is_object()
        .then_some(ToolCall { name, arguments })
}

/// `NAME>` then `<parameter=KEY>\nVALUE\n</parameter>`… then `</function>`.
fn parse_xml(rest: &str, types: &ParamTypes) -> Option<ToolCall> {
    let end = rest.find('>')?;
    let name = rest[..end].trim().to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = &rest[end + 1..];
    let mut args = Map::new();
    loop {
        let r = rest.trim_start();
        if let Some(after) = r.strip_prefix("</function>") {
            return after.trim().is_empty().then_some(ToolCall {
                name,
                arguments: Value::Object(args),
            });
        }
        let r = r.strip_prefix("<parameter=")?;
        let close = r.find('>')?;
        let key = r[..close].trim().to_string();
        let r = &r[close + 1..];
        let stop = r.find("</parameter>")?;
        let raw = r[..stop].strip_prefix('\n').unwrap_or(&r[..stop]);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let declared = types
            .0
            .get(&(name.clone(), key.clone()))
            .map(String::as_str);
        let value = match declared {
            Some("string") => Value::String(raw.to_string()),
            _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        };
        args.insert(key, value);
        rest = &r[stop + "</parameter>".len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types() -> ParamTypes {
        ParamTypes::from_tools(&[
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "days": {"type": "integer"}, "zip": {"type": "string"}}}}}),
        ])
    }

    const TWO: &str = "Let me look.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=zip>\n75001\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>";

    fn want() -> (String, Vec<ToolCall>) {
        (
            "Let me look.\n\n\n".into(),
            vec![
                ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris", "days": 3, "zip": "75001"}),
                },
                ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Rome"}),
                },
            ],
        )
    }

    #[test]
    fn both_forms_several_calls_split_anywhere() {
        assert_eq!(split_calls(TWO, types()), want());
        for cut in 0..=TWO.len() {
            if !TWO.is_char_boundary(cut) {
                continue;
            }
            let mut s = ToolSplit::new(types());
            let (mut t, mut calls) = (String::new(), Vec::new());
            for p in [&TWO[..cut], &TWO[cut..]]
                .iter()
                .flat_map(|x| s.push(x))
                .collect::<Vec<_>>()
                .into_iter()
                .chain(s.finish())
            {
                match p {
                    Piece::Text(x) => t.push_str(&x),
                    Piece::Call(c) => calls.push(c),
                }
            }
            assert_eq!((t, calls), want(), "cut {cut}");
        }
    }

    #[test]
    fn broken_or_unfinished_calls_stay_text() {
        let bad = "<tool_call>\n<function=f>\n<parameter=x>1</function>\n</tool_call>";
        assert_eq!(split_calls(bad, types()), (bad.to_string(), vec![]));
        let open = "a <tool_call>\n{\"name\": \"f\"";
        assert_eq!(split_calls(open, types()), (open.to_string(), vec![]));
        assert_eq!(
            split_calls("<tool_ca", types()),
            ("<tool_ca".to_string(), vec![])
        );
        let empty_args = "<tool_call>{\"name\": \"f\"}</tool_call>";
        assert_eq!(
            split_calls(empty_args, types()).1,
            vec![ToolCall {
                name: "f".into(),
                arguments: json!({})
            }]
        );
    }
}
