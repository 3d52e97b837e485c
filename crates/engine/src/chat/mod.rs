//! Chat templates: the Jinja template embedded in a GGUF, rendered into a prompt.
//!
//! Output is meant to be byte-identical to Hugging Face's `apply_chat_template(...,
//! tokenize=False)` (and so to llama.cpp's `--jinja`), which tests/golden/chat checks for the
//! Qwen3.5, SmolLM2, Qwen2.5-Coder and Gemma 3 templates (tools/chat-golden makes the files).
//!
//! - `env.rs`: the minijinja environment set up like HF's jinja2 one.
//! - `python.rs`: Python's `str()` and `json.dumps` spellings that templates rely on.
//! - `messages.rs`: OpenAI request messages adapted the way llama.cpp adapts them
//!   (tool-call arguments parsed into objects; text parts joined for untyped templates).
//!
//! ```
//! use engine::chat::{ChatRequest, ChatTemplate};
//! let t = ChatTemplate::new("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "", "")?;
//! let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
//! let req = ChatRequest { messages: &messages, tools: None, add_generation_prompt: true,
//!                         enable_thinking: None, extra: None };
//! assert_eq!(t.render(&req)?, "<user>hi");
//! # Ok::<(), engine::chat::ChatError>(())
//! ```

mod env;
mod messages;
mod python;
mod strftime;

pub use strftime::strftime;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// llama.cpp's `CHATML_TEMPLATE_SRC`: what llama-server renders with when the GGUF has no
/// template (gemma-3-270m's GGUF, for one). Callers use it via [`ChatTemplate::chatml`].
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\n' -}}\n{%- endif -%}";

/// A marker only a template that prints typed content parts can echo back.
const TYPED_PROBE: &str = "<<typed-content-probe>>";

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not parse.
    #[error("chat template syntax error at line {line}: {message}")]
    Syntax {
        /// 1-based line in the template (0 when unknown).
        line: usize,
        /// minijinja's description.
        message: String,
    },
    /// The template called `raise_exception(message)`, e.g. roles that do not alternate.
    #[error("chat template raised at line {line}: {message}")]
    Raised {
        /// 1-based line in the template (0 when unknown).
        line: usize,
        /// The template's own message.
        message: String,
    },
    /// Rendering failed otherwise (a missing key, `str + None`, an unknown filter, ...).
    #[error("chat template failed at line {line}: {message}")]
    Render {
        /// 1-based line in the template (0 when unknown).
        line: usize,
        /// minijinja's description.
        message: String,
    },
    /// `messages` is not a JSON array.
    #[error("`messages` must be a JSON array")]
    MessagesNotArray,
    /// One message has a shape no template can use.
    #[error("message {index}: {reason}")]
    BadMessage {
        /// Position in `messages`.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A special-token id in the GGUF points outside `tokenizer.ggml.tokens`.
    #[error("GGUF {key} = {id} is outside the {n_vocab}-token vocabulary")]
    TokenId {
        /// The metadata key.
        key: &'static str,
        /// Its value.
        id: u64,
        /// Length of `tokenizer.ggml.tokens`.
        n_vocab: usize,
    },
}

/// What to render: an OpenAI-style chat request's template inputs.
#[derive(Clone, Copy, Debug)]
pub struct ChatRequest<'a> {
    /// OpenAI messages: `role`, `content` (string, list of parts or null), `tool_calls`
    /// (`[{id, type, function: {name, arguments}}]`), `tool_call_id`, `name`,
    /// `reasoning_content`.
    pub messages: &'a serde_json::Value,
    /// OpenAI tool definitions (`[{type: "function", function: {...}}]`).
    pub tools: Option<&'a serde_json::Value>,
    /// End with the header of an assistant turn, so the model writes the reply.
    pub add_generation_prompt: bool,
    /// Qwen-style thinking switch; `None` leaves `enable_thinking` undefined.
    pub enable_thinking: Option<bool>,
    /// `chat_template_kwargs`, passed through as template variables.
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// A compiled chat template with the special-token texts it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: Arc<str>,
    bos_token: String,
    eos_token: String,
    /// Whether the template prints content given as a list of parts (see `messages.rs`).
    typed_content: bool,
    /// The time `strftime_now` reports ([`env::SYSTEM_CLOCK`] for the real clock).
    clock: Arc<AtomicI64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("typed_content", &self.typed_content)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts bound to those variables.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        let clock = Arc::new(AtomicI64::new(env::SYSTEM_CLOCK));
        let env = env::build(source.to_string(), clock.clone()).map_err(template_error)?;
        let mut t = ChatTemplate {
            env,
            source: Arc::from(source),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            typed_content: true,
            clock,
        };
        t.typed_content = t.probe_typed_content();
        Ok(t)
    }

    /// The template in `tokenizer.chat_template`, or `None` when the file has none (then
    /// llama.cpp uses [`CHATML_TEMPLATE`]). The BOS/EOS texts come from the vocabulary.
    pub fn from_gguf(md: &gguf::Metadata) -> Result<Option<ChatTemplate>, ChatError> {
        let Some(source) = md.get_str("tokenizer.chat_template") else {
            return Ok(None);
        };
        let bos = token_text(md, "tokenizer.ggml.bos_token_id")?;
        let eos = token_text(md, "tokenizer.ggml.eos_token_id")?;
        ChatTemplate::new(source, &bos, &eos).map(Some)
    }

    /// The template's Jinja text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// llama.cpp's fallback for GGUFs without a template ([`CHATML_TEMPLATE`]).
    pub fn chatml(bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::new(CHATML_TEMPLATE, bos_token, eos_token)
    }

    /// Pins the time `strftime_now` reports (seconds since the epoch, UTC), for
    /// reproducible prompts in tests; by default it is the system clock.
    pub fn with_fixed_time(self, unix_secs: i64) -> ChatTemplate {
        self.clock.store(unix_secs, Ordering::Relaxed);
        self
    }

    /// The text `bos_token` renders as.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text `eos_token` renders as.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders the prompt exactly as HF's `apply_chat_template(..., tokenize=False)`.
    /// Template errors, including its own `raise_exception`, come back as [`ChatError`]
    /// with the template line.
    ///
    /// Two things llama-server does around rendering are left to the caller: when the
    /// tokenizer adds BOS itself (`tokenizer.ggml.add_bos_token`), a leading
    /// [`bos_token`](Self::bos_token) text must be dropped (Gemma's template prints it), and
    /// a final assistant turn meant as a prefix of the reply ("prefill") is rendered here as
    /// a finished turn, end-of-turn marker included.
    pub fn render(&self, req: &ChatRequest) -> Result<String, ChatError> {
        let messages = messages::normalize(req.messages, self.typed_content)?;
        let ctx = self.context(&messages, req);
        let template = self
            .env
            .get_template(env::TEMPLATE_NAME)
            .map_err(template_error)?;
        template.render(ctx).map_err(template_error)
    }

    /// The variables HF's `apply_chat_template` passes: special tokens (which
    /// `chat_template_kwargs` may override), the kwargs, then the fixed inputs, which they
    /// may not. `tools` and `documents` are always defined (`None` when absent), as in HF.
    fn context(&self, messages: &serde_json::Value, req: &ChatRequest) -> Value {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        for (k, v) in req.extra.into_iter().flatten() {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        // An empty tools list counts as none, as in llama.cpp.
        let tools = req
            .tools
            .filter(|t| t.as_array().is_none_or(|a| !a.is_empty()));
        ctx.insert(
            "tools".into(),
            tools.map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(req.add_generation_prompt),
        );
        if let Some(on) = req.enable_thinking {
            ctx.insert("enable_thinking".into(), Value::from(on));
        }
        Value::from_iter(ctx)
    }

    /// Renders one user message given as a text part: llama.cpp's `requires_typed_content`
    /// probe turned around. A template that raises or drops the text is treated as untyped.
    fn probe_typed_content(&self) -> bool {
        let messages = serde_json::json!([
            {"role": "user", "content": [{"type": "text", "text": TYPED_PROBE}]}
        ]);
        let req = ChatRequest {
            messages: &messages,
            tools: None,
            add_generation_prompt: true,
            enable_thinking: None,
            extra: None,
        };
        self.render(&req).is_ok_and(|out| out.contains(TYPED_PROBE))
    }
}

/// The vocabulary text of the token whose id is stored under `key` ("" when the key is
/// absent, as llama.cpp does for models without that token).
fn token_text(md: &gguf::Metadata, key: &'static str) -> Result<String, ChatError> {
    let Some(id) = md.get_u64(key) else {
        return Ok(String::new());
    };
    let tokens = md
        .get("tokenizer.ggml.tokens")
        .and_then(gguf::Value::as_array)
        .and_then(gguf::Array::as_strings)
        .unwrap_or_default();
    usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .cloned()
        .ok_or(ChatError::TokenId {
            key,
            id,
            n_vocab: tokens.len(),
        })
}

fn template_error(err: minijinja::Error) -> ChatError {
    let line = err.line().unwrap_or(0);
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<env::Raised>() {
            return ChatError::Raised {
                line,
                message: raised.0.clone(),
            };
        }
        source = s.source();
    }
    let message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    match err.kind() {
        ErrorKind::SyntaxError => ChatError::Syntax { line, message },
        _ => ChatError::Render { line, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(messages: &serde_json::Value) -> ChatRequest<'_> {
        ChatRequest {
            messages,
            tools: None,
            add_generation_prompt: true,
            enable_thinking: None,
            extra: None,
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = ChatTemplate::new("ok\n{% if %}", "", "").unwrap_err();
        assert!(matches!(err, ChatError::Syntax { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn raised_and_render_errors_are_told_apart() {
        let t = ChatTemplate::new("{% if messages|length > 1 %}\n{{ raise_exception('one only') }}{% endif %}{{ messages[0].content + 1 }}", "", "").unwrap();
        let two = json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]);
        let err = t.render(&req(&two)).unwrap_err();
        assert!(
            matches!(&err, ChatError::Raised { line: 2, message } if message == "one only"),
            "{err:?}"
        );
        let one = json!([{"role": "user", "content": "a"}]);
        assert!(matches!(
            t.render(&req(&one)),
            Err(ChatError::Render { line: 2, .. })
        ));
    }

    #[test]
    fn context_follows_hf() {
        let src = "{{ bos_token }}|{{ tools is none }}|{{ documents is none }}|{{ enable_thinking is defined }}|{{ flag }}|{{ add_generation_prompt }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let m = json!([{"role": "user", "content": "x"}]);
        let extra = json!({"flag": 3, "bos_token": "[B]", "add_generation_prompt": false});
        let empty = json!([]);
        let r = ChatRequest {
            tools: Some(&empty),
            extra: extra.as_object(),
            ..req(&m)
        };
        assert_eq!(t.render(&r).unwrap(), "[B]|True|True|False|3|True");
        let r = ChatRequest {
            enable_thinking: Some(false),
            ..req(&m)
        };
        assert!(t.render(&r).unwrap().contains("|True|"));
    }

    #[test]
    fn typed_content_is_probed() {
        let chatml = ChatTemplate::chatml("", "").unwrap();
        assert!(!chatml.typed_content);
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
        assert_eq!(
            chatml.render(&req(&parts)).unwrap(),
            "<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"
        );
        let typed = ChatTemplate::new(
            "{% for p in messages[0].content %}{{ p.text }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(typed.typed_content);
        assert_eq!(typed.render(&req(&parts)).unwrap(), "ab");
    }

    #[test]
    fn from_gguf_reads_template_and_special_tokens() {
        let mut md = gguf::Metadata::new();
        assert!(ChatTemplate::from_gguf(&md).unwrap().is_none());
        let tokens = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        md.insert(
            "tokenizer.ggml.tokens".into(),
            gguf::Value::Array(gguf::Array::String(tokens)),
        )
        .unwrap();
        md.insert("tokenizer.ggml.bos_token_id".into(), gguf::Value::U32(1))
            .unwrap();
        md.insert("tokenizer.ggml.eos_token_id".into(), gguf::Value::U32(7))
            .unwrap();
        md.insert(
            "tokenizer.chat_template".into(),
            gguf::Value::String("{{ bos_token }}".into()),
        )
        .unwrap();
        let err = ChatTemplate::from_gguf(&md).unwrap_err();
        assert!(
            matches!(
                err,
                ChatError::TokenId {
                    id: 7,
                    n_vocab: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
