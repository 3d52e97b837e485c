//! ggml block quant formats: layouts, dequantize, reference quantize, random blocks.
//!
//! Every format ggml stores weights in is a run of fixed-size *blocks*: a few scales (f16,
//! f32 or an e8m0 exponent) and packed integer codes for `block_size` values. This crate holds
//! one `#[repr(C)]` struct per block layout (STYLE §8), a scalar dequantizer for each that is
//! bit-exact against the `gguf` PyPI package's numpy dequantizers (the f32 operations happen in
//! the same order), and ggml's reference quantizers for the formats `llama-quantize` writes.
//! Sizes come from the one type table, [`GgmlType`] in the `gguf` crate.
//!
//! | family | file | types |
//! |---|---|---|
//! | plain floats | `float.rs` | F32, F16, BF16 |
//! | legacy 32-value blocks | `legacy.rs` | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 |
//! | K-quants, 256-value super-blocks | `k_quants.rs` (+ `k_quantize.rs`) | Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K |
//! | non-linear 4-bit | `iq4.rs` | IQ4_NL, IQ4_XS |
//! | microscaling fp4 | `mxfp4.rs` | MXFP4 |
//!
//! The entry points take raw bytes and `f32` slices and check every length:
//!
//! ```
//! use quant::{dequantize, quantize, GgmlType};
//! let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut blocks = vec![0u8; GgmlType::Q4_K.bytes_for(256).unwrap() as usize];
//! quantize(GgmlType::Q4_K, &x, &mut blocks)?;
//! let mut y = vec![0f32; 256];
//! dequantize(GgmlType::Q4_K, &blocks, &mut y)?;
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.1));
//! # Ok::<(), quant::Error>(())
//! ```
//!
//! Matmuls go through [`vec_dot`]: activations are quantized once per matmul to the weight
//! type's [`vec_dot_type`] ([`quantize_activations`]), then each weight row takes an integer
//! dot product that reproduces ggml's `ggml_vec_dot_*_generic` bit for bit (`dot/`), with
//! AVX2 / AVX-512 kernels (`x86/`) picked at run time that return the same bits
//! ([`kernel_paths`], [`with_path`], [`Kernels`]).
//!
//! [`random_blocks`] fills a buffer with valid random blocks of a given RMS, fast enough to
//! synthesize multi-gigabyte test models.
#![deny(missing_docs)]

pub use block::{Block, Quantize};
pub use dispatch::{
    can_dequantize, can_quantize, dequantize, dequantize_to_vec, quantize, SUPPORTED,
};
pub use dot::{
    kernel_paths, quantize_activations, vec_dot, vec_dot_type, with_path, Kernels, DOT_TYPES,
};
pub use error::{Error, Op};
pub use gemm::{gemm, tile_types, QActs, TILE};
pub use gguf::GgmlType;
pub use iq4::{BlockIQ4_NL, BlockIQ4_XS, KVALUES_IQ4NL};
pub use k_quants::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K};
pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
pub use mxfp4::{e8m0_to_f32_half, BlockMXFP4, KVALUES_MXFP4};
pub use packed::{gemm_packed, group_bytes, pack_group, Packed, GROUP};
pub use random::random_blocks;

mod block;
mod dispatch;
mod dot;
mod error;
mod float;
mod gemm;
mod iq4;
mod k_quantize;
mod k_quants;
mod legacy;
mod mxfp4;
mod packed;
mod random;
#[cfg(target_arch = "x86_64")]
mod x86;
