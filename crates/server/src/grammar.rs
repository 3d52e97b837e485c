//! Structured output (issue 12 req. 3): `response_format` `json_object` and `json_schema`
//! enforced while decoding. Each step the grammar engine (llguidance) computes which tokens
//! may come next; the others' logits go to −∞ before sampling, and the sampled token advances
//! the parser. When the JSON is complete only an end-of-generation token is allowed.
//!
//! Why llguidance: it is maintained (Microsoft's guidance team) and used by llama.cpp, vLLM and
//! SGLang; it turns a JSON Schema into a grammar itself (types, `enum`, `const`, `required`,
//! `additionalProperties`, `$ref`, lengths and bounds) and computes a mask over a 248K-token
//! vocabulary in well under a millisecond (its lexer runs over a token trie), which is what
//! keeps decode speed within the 10% (BENCHMARKS.md).

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

    /// A constraint to the JSON Schema `schema` (`{"type": "object"}` for `json_object`);
    /// an error names what the engine could not compile. The JSON is written compactly with
    /// `", "` and `": "` between items (no free whitespace: a model could otherwise pad the
    /// answer with newlines until `max_tokens`), unless the schema's own `x-guidance` options
    /// say otherwise.
    pub fn json(&self, schema: serde_json::Value) -> Result<Constraint, String> {
        let mut schema = match schema {
            serde_json::Value::Bool(true) => serde_json::json!({}),
            s => s,
        };
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({"whitespace_flexible": false, "item_separator": ", ",
                                   "key_separator": ": "})
            });
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| e.to_string())?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint(m)),
        }
    }
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
