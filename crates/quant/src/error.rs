//! The crate's error type: every bad length or unsupported type is an `Err`, never a panic.

use gguf::GgmlType;
use std::fmt;

/// What the caller asked of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Blocks to `f32`.
    Dequantize,
    /// `f32` to blocks.
    Quantize,
    /// Random blocks.
    Random,
    /// Dot product with quantized activations.
    VecDot,
    /// Eight-row packing for the packed matmul kernels.
    Pack,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Dequantize => "dequantize",
            Op::Quantize => "quantize",
            Op::Random => "random blocks",
            Op::VecDot => "vec_dot",
            Op::Pack => "packed matmul",
        })
    }
}

/// Why a `quant` call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// This crate has no kernel for `op` on `ty`.
    #[error("{op} is not supported for type {ty}")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// The operation asked for.
        op: Op,
    },
    /// An element count that is not a whole number of blocks.
    #[error("{n_elements} elements of {ty} is not a whole number of {block_size}-element blocks")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Elements given.
        n_elements: usize,
        /// Elements per block of `ty`.
        block_size: u64,
    },
    /// A byte buffer whose length is not what the element count needs.
    #[error("{n_elements} elements of {ty} take {expected} bytes, but the buffer has {actual}")]
    ByteLength {
        /// The type.
        ty: GgmlType,
        /// Elements given.
        n_elements: usize,
        /// Bytes `n_elements` take.
        expected: u64,
        /// Bytes given.
        actual: usize,
    },
    /// A byte count that is not a whole number of blocks.
    #[error("{n_bytes} bytes is not a whole number of {type_size}-byte {ty} blocks")]
    PartialBytes {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        n_bytes: usize,
        /// Bytes per block of `ty`.
        type_size: u64,
    },
    /// A kernel path this CPU does not have (or that does not exist).
    #[error("no kernel path {path:?} on this CPU")]
    NoKernelPath {
        /// The path asked for.
        path: String,
    },
    /// A [`gemm`](crate::gemm) call whose weight, activation and output buffers disagree.
    #[error("gemm: {0}")]
    GemmShape(String),
    /// A requested RMS that is negative, NaN or infinite.
    #[error("random blocks need a finite, non-negative RMS, got {rms}")]
    BadRms {
        /// The RMS given.
        rms: f32,
    },
}
