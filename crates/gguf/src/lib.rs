//! GGUF files: read (zero-copy over a memory map) and write (streaming).
//!
//! GGUF is ggml's model file: a header, typed key/value metadata, a tensor table and aligned
//! tensor data. [`GgufFile::open`] maps a file and checks every count, size and offset before it
//! trusts it; malformed input is an [`Error`] naming the byte offset and the problem, never a
//! panic. [`GgufWriter`] writes a file tensor by tensor, so a 20 GB model needs no 20 GB of RAM.
//!
//! Main types: [`GgufFile`] (reader, zero-copy tensor views, per-expert slices),
//! [`parse_header`] (the pure parser behind it), [`Metadata`] / [`Value`] / [`Array`] (typed
//! key/value table), [`TensorInfo`], [`GgufWriter`] / [`TensorSpec`], and [`GgmlType`], the
//! ggml type table every other crate reads sizes from.
//!
//! ```
//! use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec, Value};
//!
//! let meta = [("general.architecture".to_string(), Value::String("llama".into()))];
//! let tensors = [TensorSpec::new("token_embd.weight", GgmlType::F32, [2, 3])];
//! let mut w = GgufWriter::new(Vec::new(), &meta, &tensors)?;
//! for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
//!     w.write_data(&x.to_le_bytes())?; // any chunk size; a 20 GB file streams the same way
//! }
//! let bytes = w.finish()?;
//!
//! let file = GgufFile::from_bytes(bytes)?; // GgufFile::open(path) maps a file instead
//! assert_eq!(file.metadata().get_str("general.architecture"), Some("llama"));
//! let t = file.tensor("token_embd.weight").expect("declared above");
//! assert_eq!((t.ty, t.dims.as_slice()), (GgmlType::F32, &[2, 3][..]));
//! assert_eq!(file.tensor_f32(t)?[5], 6.0);
//! # Ok::<(), gguf::Error>(())
//! ```
//!
//! Modules: `header` parses and validates (offsets, sizes, overlaps), `value` holds metadata
//! types and their encoding, `file` the mapped file and views, `writer` the streaming writer,
//! `cursor` the bounds-checked byte reader, `error` the one error enum, `types` the ggml table.
#![deny(missing_docs)]

pub use error::{Error, Result};
pub use file::GgufFile;
pub use header::{
    parse_header, parse_layout, Header, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC,
    MAX_DIMS,
};
pub use types::{GgmlType, TypeInfo, TYPES};
pub use value::{Array, Metadata, Value, ValueType, MAX_ARRAY_DEPTH};
pub use writer::{GgufWriter, TensorSpec};

mod cursor;
mod error;
mod file;
mod header;
#[cfg(test)]
mod testutil;
mod types;
mod value;
mod writer;
