//! The model being served: network, tokenizer, chat template, and the names and limits the API
//! reports for it.

use engine::{ChatError, ChatTemplate, Exec, Model, Tokenizer};

use crate::generate::Generator;

/// A loaded model as the server sees it.
pub struct ServedModel {
    /// The network.
    pub model: Box<dyn Model>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The GGUF's chat template, or ChatML when the file has none (as llama-server does).
    pub template: ChatTemplate,
    /// Threads for forward passes.
    pub exec: Exec,
    /// The id in `/v1/models` and in responses (`--alias`, else the file stem).
    pub id: String,
    /// Context size of each request (prompt + completion).
    pub n_ctx: usize,
    /// When the server loaded it (Unix seconds), the model's `created`.
    pub created: u64,
    /// KV cache types of each request's state (`-ctk/-ctv`).
    pub cache: engine::CacheConfig,
    /// Where the chat route puts the model's `<think>` reasoning.
    pub reasoning: ReasoningFormat,
    /// How `/v1/embeddings` pools a text's token states.
    pub pooling: Pooling,
    /// Prompt tokens a forward call takes (`-ub`).
    pub ubatch: usize,
    /// The sequence kept for the next request's prompt ([`crate::cache`]).
    pub prompt_cache: std::sync::Mutex<crate::cache::PromptCache>,
    /// How long one request may generate once its turn comes (`serve --timeout`; `None`: no
    /// limit): then it ends as if `max_tokens` were reached.
    pub timeout: Option<std::time::Duration>,
    /// Where the slots' forward calls meet ([`crate::batch`]).
    pub batcher: crate::batch::Batcher,
    /// Generations at once (`-np`; one where the backend cannot batch).
    pub slots: usize,
    /// The grammar engine for structured output, made on first use.
    grammars: std::sync::OnceLock<Result<crate::grammar::Grammars, String>>,
}

/// How token states become one embedding (the GGUF's `{arch}.pooling_type`; mean when it
/// names none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the tokens.
    #[default]
    Mean,
    /// The first token's state.
    Cls,
    /// The last token's state (decoder embedding models).
    Last,
}

/// llama-server's `--reasoning-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Left in `content` as the model wrote it.
    None,
    /// Taken out into `reasoning_content` (`message` and stream `delta`), as DeepSeek's API.
    #[default]
    Deepseek,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("id", &self.id)
            .field("arch", &self.model.arch())
            .field("n_ctx", &self.n_ctx)
            .finish_non_exhaustive()
    }
}

impl ServedModel {
    /// Wrap a loaded model; without a template in the file, ChatML is used.
    pub fn new(
        model: Box<dyn Model>,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        exec: Exec,
        id: String,
        n_ctx: usize,
    ) -> Result<ServedModel, ChatError> {
        let template = match template {
            Some(t) => t,
            None => {
                let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("");
                ChatTemplate::chatml(text(tokenizer.bos()), text(tokenizer.eos()))?
            }
        };
        Ok(ServedModel {
            model,
            tokenizer,
            template,
            exec,
            id,
            n_ctx,
            created: crate::response::unix_now(),
            cache: engine::CacheConfig::default(),
            reasoning: ReasoningFormat::default(),
            pooling: Pooling::default(),
            ubatch: 512,
            prompt_cache: std::sync::Mutex::new(crate::cache::PromptCache::new(
                crate::cache::DEFAULT_CACHE_MIB,
            )),
            grammars: std::sync::OnceLock::new(),
            timeout: None,
            batcher: crate::batch::Batcher::new(),
            slots: 1,
        })
    }

    /// The same model with its chat template replaced by `source` (`--chat-template-file`),
    /// the vocabulary's BOS/EOS texts bound as the GGUF's template has them.
    pub fn with_template_source(mut self, source: &str) -> Result<ServedModel, ChatError> {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        let (bos, eos) = (text(self.tokenizer.bos()), text(self.tokenizer.eos()));
        self.template = ChatTemplate::new(source, &bos, &eos)?;
        Ok(self)
    }

    /// A request's `model` must be the one served (absent is fine, as llama-server allows).
    pub fn check_model(&self, asked: Option<&str>) -> Result<(), crate::ApiError> {
        match asked {
            Some(name) if name != self.id => Err(crate::ApiError::ModelNotFound {
                model: name.to_string(),
                served: self.id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Where the prompt cache should be able to resume `prompt` (`req` rendered with the
    /// generation prompt), ascending: where its system messages end and the first user text
    /// begins (a prefix many requests share) and where the conversation ends before the
    /// generation prompt (the next turn
    /// continues from there, with the reply, not from the generation prompt). Each is the
    /// token count of that part rendered alone, as far as its tokens agree with the prompt's.
    pub(crate) fn marks(&self, req: &engine::ChatRequest, prompt: &[u32]) -> Vec<usize> {
        let end_of = |messages: &serde_json::Value| -> Option<usize> {
            let text = self
                .template
                .render(&engine::ChatRequest {
                    messages,
                    add_generation_prompt: false,
                    ..*req
                })
                .ok()?;
            let toks = crate::generate::prompt_tokens(&self.tokenizer, &text, true);
            let n = toks.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            (n > 0 && n < prompt.len()).then_some(n)
        };
        let mut marks = Vec::new();
        if let Some(list) = req.messages.as_array() {
            let system = list
                .iter()
                .take_while(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
                .count();
            if system > 0 && system < list.len() {
                // With a placeholder user message (templates may refuse a conversation of
                // system messages alone): the prefix ends where the real user text begins.
                let mut head = list[..system].to_vec();
                head.push(serde_json::json!({"role": "user", "content": "\u{a4}"}));
                marks.extend(end_of(&serde_json::Value::Array(head)));
            }
        }
        marks.extend(end_of(req.messages));
        marks.sort_unstable();
        marks.dedup();
        marks
    }

    /// The grammar engine over this model's vocabulary (built on first use: a token trie of
    /// the whole vocabulary).
    pub(crate) fn grammars(&self) -> Result<&crate::grammar::Grammars, crate::ApiError> {
        self.grammars
            .get_or_init(|| crate::grammar::Grammars::new(&self.tokenizer))
            .as_ref()
            .map_err(|e| crate::ApiError::Internal {
                message: format!("structured output: {e}"),
            })
    }

    /// The grammar of a forced tool call (`named`: that tool, exactly once; else one or more
    /// of any) over `tools` (OpenAI's form), in this template's call format.
    pub(crate) fn forced_calls(
        &self,
        tools: Option<&serde_json::Value>,
        named: Option<&str>,
    ) -> Result<crate::grammar::Constraint, crate::ApiError> {
        let force = match named {
            Some(n) => crate::grammar::Force::Named(n),
            None => crate::grammar::Force::Any,
        };
        let list = tools
            .and_then(serde_json::Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        // Qwen3.5's templates write calls as XML; the others this server parses, as JSON.
        let xml = self.template.source().contains("<function=");
        self.grammars()?
            .tool_calls(&self.tokenizer, xml, list, force)
            .map_err(|e| crate::ApiError::invalid("tool_choice", format!("tool_choice: {e}")))
    }

    /// The same model serving `n` generations at once (`-np/--parallel`), batched into one
    /// step — where its backend batches; one at a time where it cannot (the CUDA backend
    /// today: concurrent sequences would only take turns, each holding device memory).
    pub fn with_slots(mut self, n: usize) -> ServedModel {
        self.slots = if self.model.batches() { n.max(1) } else { 1 };
        let cache = std::mem::take(&mut *crate::cache::lock(&self.prompt_cache));
        self.prompt_cache = std::sync::Mutex::new(cache.with_slots(self.slots));
        self
    }

    /// The same model with requests limited to `t` of generation each (`None`: no limit).
    pub fn with_timeout(mut self, t: Option<std::time::Duration>) -> ServedModel {
        self.timeout = t;
        self
    }

    /// The same model with a prompt cache of `mib` MiB of checkpoints (0: none).
    pub fn with_prompt_cache(mut self, mib: usize) -> ServedModel {
        let cache = crate::cache::PromptCache::new(mib).with_slots(self.slots);
        self.prompt_cache = std::sync::Mutex::new(cache);
        self
    }

    /// The same model taking prompts `ubatch` tokens a forward call (default 512).
    pub fn with_ubatch(mut self, ubatch: usize) -> ServedModel {
        self.ubatch = ubatch.max(1);
        self
    }

    /// The same model with KV caches of the given types.
    pub fn with_cache(mut self, cache: engine::CacheConfig) -> ServedModel {
        self.cache = cache;
        self
    }

    /// The same model pooling embeddings as `p` says.
    pub fn with_pooling(mut self, p: Pooling) -> ServedModel {
        self.pooling = p;
        self
    }

    /// The same model with reasoning put where `format` says.
    pub fn with_reasoning(mut self, format: ReasoningFormat) -> ServedModel {
        self.reasoning = format;
        self
    }

    /// What the token loop needs.
    pub fn generator(&self) -> Generator<'_> {
        Generator {
            model: self.model.as_ref(),
            tokenizer: &self.tokenizer,
            exec: self.exec,
            ubatch: self.ubatch,
            cache: Some(&self.prompt_cache),
            batcher: Some(&self.batcher),
        }
    }

    /// Ids of every end-of-generation token (banned by `ignore_eos`).
    pub fn eog_tokens(&self) -> Vec<u32> {
        (0..self.tokenizer.n_vocab() as u32)
            .filter(|&t| self.tokenizer.is_eog(t))
            .collect()
    }
}

/// The shipped demo model, loaded once for the crate's tests.
#[cfg(test)]
pub(crate) fn demo() -> std::sync::Arc<ServedModel> {
    use std::sync::{Arc, OnceLock};
    static DEMO: OnceLock<Arc<ServedModel>> = OnceLock::new();
    DEMO.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/demo-moe-f16.gguf"
        );
        let file = Arc::new(gguf::GgufFile::open(path).expect("demo model"));
        let tokenizer = Tokenizer::from_gguf(file.metadata()).expect("tokenizer");
        let template = ChatTemplate::from_gguf(file.metadata()).expect("template");
        let model = engine::load(file).expect("load");
        // One thread: tests run in parallel, and a spinning pool on a busy machine crawls.
        let exec = Exec { threads: 1 };
        let m = ServedModel::new(model, tokenizer, template, exec, "demo".into(), 256);
        Arc::new(m.expect("served model"))
    })
    .clone()
}
