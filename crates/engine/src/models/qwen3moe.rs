//! `qwen3moe` (Qwen3-30B-A3B and kin): the llama block with per-head q/k RMS norms, NeoX RoPE and
//! a routed MoE FFN (softmax router, top-k renormalised, no shared expert) — llama.cpp
//! `src/models/qwen3moe.cpp`. Weights and forward are `llama.rs`'s; this file holds what differs.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::RopeStyle;
use crate::weights::Weights;
use std::sync::Arc;

use super::Llama;

/// Load a `qwen3moe` file. The llama loader treats q/k norms and experts as optional; here they
/// are required, so a file missing them fails with the name of what is missing.
pub fn load<B: Backend>(b: Arc<B>, w: &Weights) -> Result<Llama<B>> {
    for key in [
        "qwen3moe.expert_count",
        "qwen3moe.expert_used_count",
        "qwen3moe.expert_feed_forward_length",
    ] {
        if w.metadata().get_u64(key).unwrap_or(0) == 0 {
            return Err(Error::MissingKey {
                key: key.to_string(),
                expected: "positive integer",
            });
        }
    }
    for name in ["blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"] {
        if !w.has(name) {
            return Err(Error::MissingTensor {
                name: name.to_string(),
            });
        }
    }
    Llama::load(b, w, "qwen3moe", RopeStyle::Neox)
}
