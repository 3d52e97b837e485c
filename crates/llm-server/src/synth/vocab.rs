//! The Qwen3.5 vocabulary as a GGUF byte-level BPE vocab (placeholder).

pub const placeholder: () = ();
