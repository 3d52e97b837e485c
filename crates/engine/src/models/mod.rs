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

use crate::error::{Error, Result};
use crate::kv::{CacheConfig, KvCache};
use crate::ops;
use crate::ops::Exec;
use crate::weights::{QTensor, Weights};

pub use llama::Llama;

/// Architectures [`load`] knows.
pub const SUPPORTED: &str = "llama, qwen2, qwen3moe, qwen35, qwen35moe, qwen3next, gemma3";

/// A loaded model: turns tokens at given positions into logits, updating its state.
pub trait Model: Send + Sync {
    /// `general.architecture`.
    fn arch(&self) -> &str;
    /// Vocabulary size (rows of the output matrix).
    fn n_vocab(&self) -> usize;
    /// Context length the model was trained for.
    fn n_ctx_train(&self) -> usize;
    /// A fresh per-sequence state (KV cache, recurrent state) for up to `n_ctx` positions,
    /// with the KV cache types of `cache`; errors if the model's heads do not fit the types.
    fn new_state_with(&self, n_ctx: usize, cache: CacheConfig) -> Result<State>;
    /// [`Model::new_state_with`] and the default f16 cache, which takes any head size.
    fn new_state(&self, n_ctx: usize) -> State {
        self.new_state_with(n_ctx, CacheConfig::default())
            .unwrap_or_else(|e| unreachable!("an f16 cache fits every model: {e}"))
    }
    /// Run `tokens` at positions `state.n_past..` and return the logits of the tokens `which`
    /// names, one row of `n_vocab` each.
    fn forward(
        &self,
        tokens: &[u32],
        state: &mut State,
        which: Logits,
        exec: Exec,
    ) -> Result<Vec<f32>>;
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
}

impl Logits {
    /// The first row of a batch of `n` tokens that gets logits.
    pub fn first(self, n: usize) -> usize {
        match self {
            Logits::Last => n.saturating_sub(1),
            Logits::All => 0,
            Logits::From(i) => i.min(n),
        }
    }
}

/// Drop the rows of `bufs` (each `n × width`) that [`Logits`] `which` does not need, before the
/// last layer's FFN.
pub(crate) fn keep_output_rows(which: Logits, width: usize, bufs: &mut [&mut Vec<f32>]) {
    for b in bufs {
        let first = which.first(b.len() / width);
        b.drain(..first * width);
    }
}

/// Per-sequence state: for each layer its KV cache (attention) or its recurrent state
/// (DeltaNet).
#[derive(Debug)]
pub struct State {
    /// Positions already processed.
    pub n_past: usize,
    /// Capacity in positions.
    pub n_ctx: usize,
    /// One entry per layer.
    pub layers: Vec<LayerState>,
}

impl State {
    /// Bytes of the KV caches (every attention layer, keys and values).
    pub fn kv_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Kv { k, v } => k.bytes() + v.bytes(),
                LayerState::Recurrent { .. } => 0,
            })
            .sum()
    }
}

/// What one layer remembers of the sequence.
#[derive(Debug)]
pub enum LayerState {
    /// Keys and values, `n_ctx` rows of `kv_width` each, in the state's cache types.
    Kv {
        /// Keys, position-major.
        k: KvCache,
        /// Values, position-major.
        v: KvCache,
    },
    /// DeltaNet: the last `d_conv − 1` inputs of the short convolution (per channel, oldest
    /// first: `[conv_dim][d_conv − 1]`) and the per-head state matrices (`[n_v_head][v][k]`,
    /// value index major, as ggml stores them), f32 like llama.cpp's (`type_r/type_s`).
    Recurrent {
        /// Convolution taps.
        conv: Vec<f32>,
        /// Delta-rule state.
        ssm: Vec<f32>,
    },
}

impl LayerState {
    /// A KV cache for `n_ctx` positions of `n_head_kv` heads of `head_dim`, in the types of
    /// `cache`.
    pub fn kv(
        n_head_kv: usize,
        head_dim: usize,
        n_ctx: usize,
        cache: CacheConfig,
    ) -> Result<LayerState> {
        Ok(LayerState::Kv {
            k: KvCache::keys(cache.k, n_head_kv, head_dim, n_ctx)?,
            v: KvCache::values(cache.v, n_head_kv, head_dim, n_ctx)?,
        })
    }
}

/// Load the model in `file`.
pub fn load(file: Arc<GgufFile>) -> Result<Box<dyn Model>> {
    let w = Weights::new(file);
    let arch = Keys::new(w.metadata(), "general").string("general.architecture")?;
    match arch.as_str() {
        "llama" => Ok(Box::new(Llama::load(&w, "llama")?)),
        "qwen2" => Ok(Box::new(qwen2::load(&w)?)),
        "qwen3moe" => Ok(Box::new(qwen3moe::load(&w)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(&w)?)),
        "qwen35" | "qwen35moe" | "qwen3next" => {
            Ok(Box::new(qwen35moe::Qwen35Moe::load(&w, &arch)?))
        }
        other => Err(Error::UnsupportedArch {
            arch: other.to_string(),
            supported: SUPPORTED,
        }),
    }
}

/// The first step of every `forward`: check the batch fits the state, and look up the token
/// embeddings (`tokens.len() × n_embd`, ids checked against the vocabulary).
pub(crate) fn embed(token_embd: &QTensor, tokens: &[u32], state: &State) -> Result<Vec<f32>> {
    let (n, e, n_vocab) = (tokens.len(), token_embd.row_len(), token_embd.n_rows());
    if state.n_past + n > state.n_ctx {
        return Err(Error::ContextFull {
            needed: state.n_past + n,
            n_ctx: state.n_ctx,
        });
    }
    let mut h = vec![0f32; n * e];
    for (row, &id) in h.chunks_exact_mut(e).zip(tokens) {
        if id as usize >= n_vocab {
            return Err(Error::BadToken { id, n_vocab });
        }
        token_embd.dequant_row(id as usize, row)?;
    }
    Ok(h)
}

/// The last step of every `forward`: the final RMS norm and the output matmul, on every row
/// of `h` (the rows that get logits: [`keep_output_rows`] has dropped the others).
pub(crate) fn lm_head(
    rows: &[f32],
    norm: &[f32],
    eps: f32,
    output: &QTensor,
    exec: Exec,
) -> Result<Vec<f32>> {
    let e = norm.len();
    let mut normed = vec![0f32; rows.len()];
    ops::rms_norm(rows, norm, eps, &mut normed); // result_norm
    let mut logits = vec![0f32; rows.len() / e * output.n_rows()];
    ops::matmul(output, &normed, rows.len() / e, &mut logits, exec)?; // result_output
    Ok(logits)
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
