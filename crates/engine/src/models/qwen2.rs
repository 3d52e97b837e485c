//! `qwen2`: the llama block with q/k/v biases and NeoX RoPE (llama.cpp `src/models/qwen2.cpp`).
//! The weights and forward are `llama.rs`'s; this file holds what differs.

use crate::backend::Backend;
use crate::error::Result;
use crate::ops::RopeStyle;
use crate::weights::Weights;
use std::sync::Arc;

use super::Llama;

/// Load a `qwen2` file: NeoX RoPE (llama.cpp `LLAMA_ROPE_TYPE_NEOX` for qwen2); the optional
/// `attn_{q,k,v}.bias` tensors are picked up by the llama loader.
pub fn load<B: Backend>(b: Arc<B>, w: &Weights) -> Result<Llama<B>> {
    Llama::load(b, w, "qwen2", RopeStyle::Neox)
}
