//! The engine's error type: what went wrong loading or running a model, with the names a user
//! needs to find it (the GGUF key, the tensor, the shapes).

use gguf::GgmlType;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// A quant kernel refused its input.
    #[error(transparent)]
    Quant(#[from] quant::Error),
    /// The architecture in `general.architecture` is not one we implement.
    #[error("architecture {arch:?} is not supported (supported: {supported})")]
    UnsupportedArch {
        /// What the file says.
        arch: String,
        /// What we have.
        supported: &'static str,
    },
    /// A required metadata key is missing or has the wrong type.
    #[error("metadata key {key:?} is missing or not a {expected}")]
    MissingKey {
        /// The full GGUF key.
        key: String,
        /// The type we needed.
        expected: &'static str,
    },
    /// A metadata value is out of the range the model can use.
    #[error("metadata key {key:?}: {problem}")]
    BadKey {
        /// The full GGUF key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A required tensor is missing.
    #[error("tensor {name:?} is missing")]
    MissingTensor {
        /// Its GGUF name.
        name: String,
    },
    /// A tensor's shape is not what the hyperparameters imply.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    BadShape {
        /// Its GGUF name.
        name: String,
        /// What the hyperparameters imply (GGUF `ne` order).
        expected: Vec<u64>,
        /// What the file has.
        found: Vec<u64>,
    },
    /// A tensor has a type the operation cannot use.
    #[error("tensor {name:?} has type {ty}, which {op} does not support")]
    BadType {
        /// Its GGUF name.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// The operation.
        op: &'static str,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// A state made by another model was passed to `forward`.
    #[error("layer {layer}: the state does not belong to this model")]
    StateMismatch {
        /// The layer whose state had the wrong kind.
        layer: usize,
    },
    /// A quantized KV cache type was asked of a model whose heads are not whole blocks.
    #[error("a {ty} KV cache needs a head size that is a multiple of {block}; this model's is {head_dim}")]
    CacheBlock {
        /// The cache type (`q8_0`, `q4_0`).
        ty: &'static str,
        /// The model's head size.
        head_dim: usize,
        /// Values per block of that type.
        block: usize,
    },
    /// A KV cache type name we do not know.
    #[error("unknown KV cache type {name:?} (expected f16, q8_0 or q4_0)")]
    UnknownCacheType {
        /// What was asked for.
        name: String,
    },
    /// The sequence would pass the context the state was made for.
    #[error("context full: {needed} positions needed, the state holds {n_ctx}")]
    ContextFull {
        /// Positions the call needs.
        needed: usize,
        /// Positions the state holds.
        n_ctx: usize,
    },
    /// An operation's buffers disagree in size (a bug in the caller, reported not panicked).
    #[error("op shape mismatch: {0}")]
    Shape(String),
    /// The backend's device failed (out of memory, a failed launch, a missing library).
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend (`cuda:0`).
        backend: String,
        /// What failed, with the device's own words.
        message: String,
    },
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
