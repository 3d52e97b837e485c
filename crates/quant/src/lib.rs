//! ggml block quant formats: layouts, dequantize, reference quantize.
#![deny(missing_docs)]

pub use gguf::GgmlType;
