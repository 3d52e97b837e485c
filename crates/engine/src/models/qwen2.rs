//! `qwen2`: the llama block with q/k/v biases and NeoX RoPE (llama.cpp `src/models/qwen2.cpp`).
//! The weights and forward are `llama.rs`'s; this file holds what differs.

use crate::error::Result;
use crate::ops::RopeStyle;
use crate::weights::Weights;

use super::Llama;

/// Load a `qwen2` file: NeoX RoPE (llama.cpp `LLAMA_ROPE_TYPE_NEOX` for qwen2); the optional
/// `attn_{q,k,v}.bias` tensors are picked up by the llama loader.
pub fn load(w: &Weights) -> Result<Llama> {
    Llama::load_with(w, "qwen2", RopeStyle::Neox)
}
