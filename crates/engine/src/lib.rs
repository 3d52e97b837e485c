//! The inference engine: everything between a GGUF file and a sampled token.
//!
//! - [`tokenizer`]: byte-level BPE (GPT-2 style, with llama.cpp's named pre-tokenizers) and
//!   SentencePiece, built from the GGUF vocabulary.
//! - [`chat`]: the chat template embedded in the GGUF, rendered with minijinja.
//! - [`models`]: one file per architecture, written top to bottom like its spec.
//! - [`backend`]: the operations the models are written in, and the CPU backend; the `cuda`
//!   crate adds the GPU one.
//! - [`kv`]: the KV cache (f16, q8_0 or q4_0, llama.cpp's `-ctk/-ctv`) and attention over it.
//!
//! Dimension names used in shape comments (GGUF `ne` order, contiguous first):
//! `n_embd` hidden size, `n_vocab` vocabulary, `n_ff` FFN width, `n_head`/`n_head_kv` query and
//! KV heads, `head_dim` per-head width, `n_expert`/`n_expert_used` routed experts, `n_ff_exp`
//! expert FFN width, `n_tokens` tokens in a batch.
#![deny(missing_docs)]

pub use backend::{Backend, Cpu, State};
pub use chat::{ChatError, ChatRequest, ChatTemplate};
pub use error::{Error, Result};
pub use kv::{CacheConfig, KvCache, KvType};
pub use models::{load, load_on, Logits, Model, Row};
pub use ops::Exec;
pub use sampler::{Sampler, SamplerError, SamplerParams};
pub use stop::{StopMatcher, StopStep};
pub use tokenizer::{Tokenizer, TokenizerError};
pub use weights::{QTensor, Weights};

mod attn;
pub mod backend;
pub mod chat;
mod error;
pub mod kv;
mod matmul;
pub mod models;
pub mod ops;
mod pool;
pub mod prof;
pub mod routing;
pub mod sampler;
mod stop;
#[cfg(test)]
mod testutil;
pub mod tokenizer;
mod weights;
