//! Structured output (issue 12 req. 3): `response_format` `json_object` and `json_schema`
//! enforced while decoding. Each step the grammar engine (llguidance) computes which tokens
//! may come next; the others' logits go to −∞ before sampling, and the sampled token advances
//! the parser. When the JSON is complete only an end-of-generation token is allowed.
//!
//! Why llguidance: it is maintained (Microsoft's guidance team) and used by llama.cpp, vLLM and
//! SGLang; it turns a JSON Schema into a grammar itself (types, `enum`, `const`, `required`,
//! `additionalProperties`, `$ref`, lengths and bounds) and computes a mask over a 248K-token
//! vocabulary in well under a millisecond (its lexer runs over a token trie), which is what
//! keeps decode speed within the issue's 10% (BENCHMARKS.md).

use std::sync::Arc;

use engine::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

/// A model's grammar engine: its vocabulary as a token trie, made once (on first use).
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

impl Grammars {
    /// The engine for `tok`'s vocabulary. Special tokens get llguidance's marker byte so no
    /// grammar spells them out by accident; the end token is an end-of-generation one.
    pub fn new(tok: &Tokenizer) -> Result<Grammars, String> {
        let n = tok.n_vocab() as u32;
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                let bytes = tok.token_bytes(id);
                match tok.is_special(id) {
                    true => [&[TokTrie::SPECIAL_TOKEN_MARKER], bytes].concat(),
                    false => bytes.to_vec(),
                }
            })
            .collect();
        let eos = tok
            .eos()
            .filter(|&e| tok.is_eog(e))
            .or_else(|| (0..n).find(|&t| tok.is_eog(t)))
            .ok_or("the vocabulary has no end-of-generation token")?;
        let info = TokRxInfo {
            tok_bos: tok.bos(),
            ..TokRxInfo::new(n, eos)
        };
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.set_stderr_log_level(0);
        Ok(Grammars { factory })
    }

    /// A constraint to the JSON Schema `schema` (`{"type": "object"}` for `json_object`),
    /// written compactly (`", "` and `": "` between items, no free whitespace); an error names
    /// what the engine could not compile.
    pub fn json(&self, schema: serde_json::Value) -> Result<Constraint, String> {
        let schema = match schema {
            serde_json::Value::Bool(true) => serde_json::json!({}),
            s => s,
        };
        self.constraint(TopLevelGrammar::from_json_schema(compact(schema)))
    }

    /// A constraint to `grammar`, or what the engine could not compile in it.
    fn constraint(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint(m)),
        }
    }
}

/// Which calls a forced `tool_choice` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force<'a> {
    /// One or more calls, of any of the tools (OpenAI `required`, Anthropic `any`).
    Any,
    /// Exactly one call of this tool (a named choice).
    Named(&'a str),
}

impl Grammars {
    /// A constraint to tool calls in the chat template's format: Qwen3.5's XML
    /// (`<function=NAME>` with `<parameter=KEY>` blocks) when the template writes that, else
    /// Qwen3/Hermes JSON (`{"name": …, "arguments": {…}}`), each inside `<tool_call>` tags
    /// (the vocabulary's own tokens where it has them). `tools` in OpenAI's form. A JSON
    /// argument follows its parameter's schema; an XML `string` parameter is any text without
    /// `<` (a limit of this grammar); required parameters come first, in declared order, then the optional ones.
    pub fn tool_calls(
        &self,
        tok: &Tokenizer,
        xml: bool,
        tools: &[serde_json::Value],
        force: Force<'_>,
    ) -> Result<Constraint, String> {
        let tag = |t: &str| match tok.token_id(t).filter(|&id| tok.is_special(id)) {
            Some(_) => t.to_string(),
            None => lark_string(t),
        };
        let mut calls = Vec::new();
        let mut rules = String::new();
        for (i, t) in tools.iter().enumerate() {
            let f = t.get("function").unwrap_or(t);
            let Some(name) = f.get("name").and_then(serde_json::Value::as_str) else {
                continue;
            };
            if matches!(force, Force::Named(n) if n != name) {
                continue;
            }
            let params = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            calls.push(format!("f{i}"));
            if xml {
                let props = params
                    .get("properties")
                    .and_then(serde_json::Value::as_object);
                let required: Vec<&str> = params
                    .get("required")
                    .and_then(serde_json::Value::as_array)
                    .map(|r| r.iter().filter_map(serde_json::Value::as_str).collect())
                    .unwrap_or_default();
                let mut order: Vec<(&String, &serde_json::Value, bool)> = props
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v, required.contains(&k.as_str())))
                    .collect();
                order.sort_by_key(|&(_, _, req)| !req); // stable: declared order within each
                let mut body = Vec::new();
                for (j, (k, v, req)) in order.iter().enumerate() {
                    // A string runs to the closing tag in one lexeme (a separate value lexeme
                    // would swallow the newline before it).
                    let value = match v.get("type").and_then(serde_json::Value::as_str) {
                        Some("string") => "TEXT_CLOSE".to_string(),
                        _ => format!("%json {} \"\\n</parameter>\\n\"", compact_schema(v)),
                    };
                    rules.push_str(&format!(
                        "p{i}_{j}: {} \"\\n\" {value}\n",
                        lark_string(&format!("<parameter={k}>"))
                    ));
                    body.push(format!("p{i}_{j}{}", if *req { "" } else { "?" }));
                }
                rules.push_str(&format!(
                    "f{i}: {} \"\\n\" {} \"</function>\"\n",
                    lark_string(&format!("<function={name}>")),
                    body.join(" ")
                ));
            } else {
                let schema = serde_json::json!({"type": "object",
                    "properties": {"name": {"const": name}, "arguments": params},
                    "required": ["name", "arguments"], "additionalProperties": false});
                rules.push_str(&format!("f{i}: %json {}\n", compact_schema(&schema)));
            }
        }
        if calls.is_empty() {
            return Err(match force {
                Force::Named(n) => format!("no tool named {n:?} in tools"),
                Force::Any => "tool_choice forces a call but no tools are given".into(),
            });
        }
        let repeat = if force == Force::Any { "+" } else { "" };
        let lark = format!(
            "start: call{repeat}\ncall: {} \"\\n\" ({}) \"\\n\" {} \"\\n\"\n{rules}TEXT_CLOSE: /[^<]*\\n<\\/parameter>\\n/\n",
            tag("<tool_call>"),
            calls.join(" | "),
            tag("</tool_call>"),
        );
        self.constraint(TopLevelGrammar::from_lark(lark))
    }
}

/// `s` as a Lark string literal.
fn lark_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `schema` with llguidance's options for compact JSON (`", "` and `": "` between items, no
/// free whitespace: a model could otherwise pad the answer with newlines until `max_tokens`),
/// unless it sets its own `x-guidance`.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ",
                               "key_separator": ": "})
        });
    }
    schema
}

/// [`compact`] as one line of JSON (for a Lark `%json` rule).
fn compact_schema(v: &serde_json::Value) -> String {
    compact(v.clone()).to_string()
}

/// One generation's grammar state (cloned fresh for each choice).
#[derive(Clone)]
pub struct Constraint(Matcher);

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// Set the logits of tokens the grammar does not allow next to −∞ (only an end token
    /// once the output is complete).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.0.compute_mask_or_eos().map_err(|e| e.to_string())?;
        for (t, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(t as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advance past the sampled token.
    pub fn accept(&mut self, tok: u32) -> Result<(), String> {
        self.0.consume_token(tok).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo_tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/demo-moe-f16.gguf"
        );
        let file = gguf::GgufFile::open(path).expect("demo model");
        Tokenizer::from_gguf(file.metadata()).expect("tokenizer")
    }

    /// Whether `c` takes `text`'s tokens one by one (each allowed by its mask) and may end
    /// after them.
    fn takes(c: &Constraint, tok: &Tokenizer, text: &str) -> bool {
        let mut c = c.clone();
        let mut logits = vec![0f32; tok.n_vocab()];
        for (i, t) in tok.encode(text, false, true).into_iter().enumerate() {
            logits.iter_mut().for_each(|l| *l = 0.0);
            if let Err(e) = c.mask(&mut logits) {
                eprintln!("mask error {e}");
                return false;
            }
            if logits[t as usize] == f32::NEG_INFINITY {
                eprintln!(
                    "refused #{i} {:?} in {text:?}",
                    String::from_utf8_lossy(tok.token_bytes(t))
                );
                return false;
            }
            if c.accept(t).is_err() {
                return false;
            }
        }
        c.0.is_accepting().unwrap_or(false)
    }

    fn tools() -> Vec<serde_json::Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"},
                "days": {"type": "integer"}}, "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "get_time", "parameters": {
                "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                "required": ["tz"]}}}),
        ]
    }

    #[test]
    fn json_schema_takes_compact_json_only() {
        let tok = demo_tokenizer();
        let g = Grammars::new(&tok).unwrap();
        let c = g
            .json(
                json!({"type": "object", "properties": {"a": {"type": "integer"},
                         "b": {"enum": ["x", "y"]}}, "required": ["a", "b"],
                         "additionalProperties": false}),
            )
            .unwrap();
        assert!(takes(&c, &tok, r#"{"a": 12, "b": "y"}"#));
        assert!(!takes(&c, &tok, r#"{"a": 12, "b": "z"}"#));
        assert!(!takes(&c, &tok, r#"{"a": "12", "b": "y"}"#));
        assert!(
            !takes(&c, &tok, "{\n\"a\": 1, \"b\": \"x\"}"),
            "no free whitespace"
        );
        assert!(!takes(&c, &tok, r#"{"a": 1}"#), "b is required");
        assert!(g.json(json!({"type": "strnig"})).is_err());
    }

    #[test]
    fn forced_tool_calls_in_both_forms() {
        let tok = demo_tokenizer();
        let g = Grammars::new(&tok).unwrap();
        let xml = g.tool_calls(&tok, true, &tools(), Force::Any).unwrap();
        let call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n\
                    <parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n";
        assert!(takes(&xml, &tok, call));
        let time = "<tool_call>\n<function=get_time>\n<parameter=tz>\n\"UTC\"\n</parameter>\n\
                    </function>\n</tool_call>\n";
        assert!(takes(&xml, &tok, &format!("{call}{time}")), "several calls");
        assert!(!takes(&xml, &tok, "Sure!"), "text instead of a call");
        assert!(!takes(&xml, &tok, &call.replace("get_weather", "get_rain")));
        let named = g
            .tool_calls(&tok, true, &tools(), Force::Named("get_time"))
            .unwrap();
        assert!(takes(&named, &tok, time) && !takes(&named, &tok, call));
        assert!(
            !takes(&named, &tok, &format!("{time}{time}")),
            "exactly one call"
        );
        let js = g.tool_calls(&tok, false, &tools(), Force::Any).unwrap();
        let json_call =
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>\n";
        assert!(takes(&js, &tok, json_call));
        assert!(!takes(&js, &tok, &json_call.replace("CET", "PST")));
        assert!(g
            .tool_calls(&tok, true, &tools(), Force::Named("nope"))
            .is_err());
    }
}
