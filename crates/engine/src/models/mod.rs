//! Model architectures, one file each, and the one trait the executor drives them through.
//!
//! [`load`] reads `general.architecture` and builds the matching model from a GGUF file.

mod ffn;
mod gemma3;
mod llama;
mod qwen2;
mod qwen35moe;
mod qwen3moe;

use std::sync::Arc;

use gguf::{GgufFile, Metadata};
use half::f16;

use crate::error::{Error, Result};
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
    /// A fresh per-sequence state (KV cache, recurrent state) for up to `n_ctx` positions.
    fn new_state(&self, n_ctx: usize) -> State;
    /// Run `tokens` at positions `state.n_past..`; write logits of the last token into
    /// `logits` (`n_vocab`), or of every token (`tokens.len() × n_vocab`) when `all_logits`.
    fn forward(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
        exec: Exec,
    ) -> Result<Vec<f32>>;
}

/// Per-sequence state: for each layer its KV cache (attention) or its recurrent state
/// (DeltaNet). f32 for now.
#[derive(Debug)]
pub struct State {
    /// Positions already processed.
    pub n_past: usize,
    /// Capacity in positions.
    pub n_ctx: usize,
    /// One entry per layer.
    pub layers: Vec<LayerState>,
}

/// What one layer remembers of the sequence.
#[derive(Debug)]
pub enum LayerState {
    /// Keys and values, `n_ctx × kv_width` each, in f16 (llama.cpp's default `-ctk/-ctv f16`).
    Kv {
        /// Keys, position-major.
        k: Vec<f16>,
        /// Values, position-major.
        v: Vec<f16>,
    },
    /// DeltaNet: the last `d_conv − 1` inputs of the short convolution (per channel, oldest
    /// first: `[conv_dim][d_conv − 1]`) and the per-head state matrices (`[n_v_head][v][k]`,
    /// value index major, as ggml stores them).
    Recurrent {
        /// Convolution taps.
        conv: Vec<f32>,
        /// Delta-rule state.
        ssm: Vec<f32>,
    },
}

impl LayerState {
    /// A KV cache for `n_ctx` positions of `kv_width` values.
    pub fn kv(kv_width: usize, n_ctx: usize) -> LayerState {
        LayerState::Kv {
            k: vec![f16::ZERO; n_ctx * kv_width],
            v: vec![f16::ZERO; n_ctx * kv_width],
        }
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

/// The last step of every `forward`: the final RMS norm and the output matmul, on the last
/// row of `h` or (`all_logits`) on every row.
pub(crate) fn lm_head(
    h: &[f32],
    norm: &[f32],
    eps: f32,
    output: &QTensor,
    all_logits: bool,
    exec: Exec,
) -> Result<Vec<f32>> {
    let e = norm.len();
    let rows = if all_logits { h } else { &h[h.len() - e..] };
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
