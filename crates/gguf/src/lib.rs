//! GGUF files: read (zero-copy over a memory map) and write (streaming).
//!
//! GGUF is ggml's model file: a header, typed key/value metadata, a tensor table and aligned
//! tensor data. [`GgufFile::open`] maps a file and checks every count, size and offset before it
//! trusts it; malformed input is an [`Error`] naming the byte offset and the problem, never a
//! panic. [`GgufWriter`] writes a file tensor by tensor, so a 20 GB model needs no 20 GB of RAM.
//!
//! ```no_run
//! let file = gguf::GgufFile::open("model.gguf")?;
//! let arch = file.metadata().get_str("general.architecture");
//! for t in file.tensors() {
//!     println!("{} {} {:?}", t.name, t.ty, t.dims);
//! }
//! # Ok::<(), gguf::Error>(())
//! ```
#![deny(missing_docs)]

pub use types::{GgmlType, TypeInfo, TYPES};

mod types;
