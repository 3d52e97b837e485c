//! Model architectures, one file each, and the one trait the executor drives them through.
//!
//! [`load`] reads `general.architecture` and builds the matching model from a GGUF file.

pub mod deltanet;
mod ffn;
mod gemma3;
mod llama;
mod qwen2;
mod qwen35moe;
mod qwen3moe;

use std::sync::Arc;

use gguf::{GgufFile, Metadata};

use crate::backend::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::kv::CacheConfig;
use crate::ops::{Exec, RopeStyle};
use crate::weights::Weights;

pub use crate::backend::{Row, State};
pub use llama::Llama;

/// Architectures [`load`] knows.
pub const SUPPORTED: &str = "llama, qwen2, qwen3moe, qwen35, qwen35moe, qwen3next, gemma3";

/// A loaded model: turns tokens at given positions into logits, updating its state.
pub trait Model: Send + Sync {
    /// `general.architecture`.
    fn arch(&self) -> &str;
    /// Where it runs (`cpu`, `cuda:0 (…)`).
    fn backend(&self) -> String;
    /// Vocabulary size (rows of the output matrix).
    fn n_vocab(&self) -> usize;
    /// Context length the model was trained for.
    fn n_ctx_train(&self) -> usize;
    /// A fresh per-sequence state (KV cache, recurrent state) for up to `n_ctx` positions,
    /// with the KV cache types of `cache`; errors if the model's heads do not fit the types
    /// (or the device has no room for it).
    fn new_state_with(&self, n_ctx: usize, cache: CacheConfig) -> Result<State>;
    /// [`Model::new_state_with`] and the default f16 cache.
    fn new_state(&self, n_ctx: usize) -> Result<State> {
        self.new_state_with(n_ctx, CacheConfig::default())
    }
    /// Run `tokens` at positions `state.n_past..` and return the logits of the tokens `which`
    /// names, one row of `n_vocab` each: [`Model::forward_batch`] of the one sequence.
    fn forward(
        &self,
        tokens: &[u32],
        state: &mut State,
        which: Logits,
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let mut rows = [Row {
            tokens,
            state,
            which,
        }];
        let mut out = self.forward_batch(&mut rows, exec)?;
        out.pop()
            .ok_or_else(|| Error::Shape("a forward of one sequence gave no logits".into()))
    }
    /// Whether [`Model::forward_batch`] runs its rows as one step (else one call per row).
    fn batches(&self) -> bool {
        false
    }
    /// Several sequences' next tokens at once (the server's continuous batching; one row for
    /// [`Model::forward`]): each row's logits, in one step where the backend batches (a matmul
    /// over every sequence's rows is one matrix product), else one pass per row
    /// ([`crate::backend::run_batch`]).
    fn forward_batch(&self, rows: &mut [Row<'_>], exec: Exec) -> Result<Vec<Vec<f32>>>;
    /// `state` where it is now, for the prompt cache ([`crate::backend::Checkpoint`]).
    fn checkpoint(&self, state: &State) -> Result<crate::backend::Checkpoint>;
    /// Put `state` back to a checkpoint taken of it.
    fn rewind(&self, state: &mut State, cp: &crate::backend::Checkpoint) -> Result<()>;
}

/// The tokens of a [`Model::forward`] batch that get logits. The others' last layer stops
/// after its mixer (attention or DeltaNet, which the state needs) — llama.cpp does the same
/// with its `inp_out_ids` — so a prompt's final layer runs its FFN for one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last token (generation).
    Last,
    /// Every token.
    All,
    /// Tokens `i..` of the batch (perplexity scores the second half of a chunk).
    From(usize),
    /// Not logits: every token's final hidden state after the output norm (`n_embd` values
    /// each), for embeddings.
    Hidden,
}

impl Logits {
    /// The first row of a batch of `n` tokens that gets logits.
    pub fn first(self, n: usize) -> usize {
        match self {
            Logits::Last => n.saturating_sub(1),
            Logits::All | Logits::Hidden => 0,
            Logits::From(i) => i.min(n),
        }
    }
}

/// Load the model in `file` on the CPU.
pub fn load(file: Arc<GgufFile>) -> Result<Box<dyn Model>> {
    load_on(file, Arc::new(Cpu))
}

/// Load the model in `file` onto backend `b`.
pub fn load_on<B: Backend>(file: Arc<GgufFile>, b: Arc<B>) -> Result<Box<dyn Model>> {
    let w = Weights::new(file);
    let arch = Keys::new(w.metadata(), "general").string("general.architecture")?;
    match arch.as_str() {
        "llama" => Ok(Box::new(Llama::load(b, &w, "llama", RopeStyle::Normal)?)),
        "qwen2" => Ok(Box::new(qwen2::load(b, &w)?)),
        "qwen3moe" => Ok(Box::new(qwen3moe::load(b, &w)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(b, &w)?)),
        "qwen35" | "qwen35moe" | "qwen3next" => {
            Ok(Box::new(qwen35moe::Qwen35Moe::load(b, &w, &arch)?))
        }
        other => Err(Error::UnsupportedArch {
            arch: other.to_string(),
            supported: SUPPORTED,
        }),
    }
}

/// Typed reads of an architecture's metadata keys (`{arch}.{name}`), erroring with the key.
pub(crate) struct Keys<'a> {
    md: &'a Metadata,
    arch: &'a str,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(md: &'a Metadata, arch: &'a str) -> Keys<'a> {
        Keys { md, arch }
    }

    fn full(&self, name: &str) -> String {
        if name.starts_with("general.") || name.starts_with("tokenizer.") {
            name.to_string()
        } else {
            format!("{}.{name}", self.arch)
        }
    }

    /// Vocabulary size: the length of `tokenizer.ggml.tokens`, else `{arch}.vocab_size`.
    pub(crate) fn n_vocab(&self) -> Result<usize> {
        match self.md.get_array("tokenizer.ggml.tokens") {
            Some(tokens) => Ok(tokens.len()),
            None => self.opt_usize("vocab_size").ok_or(Error::MissingKey {
                key: "tokenizer.ggml.tokens".into(),
                expected: "array (or a vocab_size key)",
            }),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<String> {
        let key = self.full(name);
        self.md
            .get_str(&key)
            .map(str::to_string)
            .ok_or(Error::MissingKey {
                key,
                expected: "string",
            })
    }

    pub(crate) fn usize(&self, name: &str) -> Result<usize> {
        let key = self.full(name);
        self.md
            .get_u64(&key)
            .map(|v| v as usize)
            .ok_or(Error::MissingKey {
                key,
                expected: "integer",
            })
    }

    pub(crate) fn opt_usize(&self, name: &str) -> Option<usize> {
        self.md.get_u64(&self.full(name)).map(|v| v as usize)
    }

    pub(crate) fn f32(&self, name: &str) -> Result<f32> {
        let key = self.full(name);
        self.md
            .get_f64(&key)
            .map(|v| v as f32)
            .ok_or(Error::MissingKey {
                key,
                expected: "number",
            })
    }

    pub(crate) fn opt_f32(&self, name: &str) -> Option<f32> {
        self.md.get_f64(&self.full(name)).map(|v| v as f32)
    }
}
