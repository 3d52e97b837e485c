//! x86-64 SIMD dot kernels and the run-time choice between them (STYLE §9).
//!
//! Each path is a [`Kernels`] table built at compile time from the scalar one with the
//! path's kernels swapped in; [`detect`] hands a table out only after
//! `is_x86_feature_detected!` confirmed every feature its kernels are compiled with, which is
//! what makes calling them sound.
//!
//! | path | features | files |
//! |---|---|---|
//! | `avx2` | AVX2, FMA, F16C | `avx2.rs` (legacy blocks, floats), `avx2_k.rs` (K-quants) |
//! | `avx512` (default) | AVX-512 F/BW/VL + AVX2, FMA, F16C | `avx512.rs` (floats, Q8_0), else AVX2's |
//! | `avx512vnni` | the above + AVX512-VNNI | `avx512.rs` Q8_0 with `vpdpbusd`, `avx512_k.rs` |
//!
//! `avx512vnni` is listed before `avx512` because it is not the default: its kernels
//! measured slower on the development machine (see `avx512_k.rs`). The Q8_0 body is one
//! `#[target_feature]` fn generic over `const VNNI: bool` compiled with the base AVX-512
//! features; its `_vnni` entry point adds `avx512vnni` and is the only caller of the
//! `VNNI = true` copy, whose `vpdpbusd` sits in a small `unsafe` call that inlines once the
//! body inlines into that entry point.
//!
//! All block kernels return the scalar result bit for bit: integer sums are exact whatever
//! the order, and the f32 steps repeat ggml's generic order (for the K-quants that means
//! keeping ggml's eight lanes `aux32[i % 8]`, see `avx2_k.rs`). They assume activation
//! codes in `-127..=127`, which every quantizer here produces (the sign trick of
//! `mul_sum_i8` cannot negate -128).

use crate::dot::{DotFn, Kernels, SCALAR};
use gguf::GgmlType as T;

mod avx2;
mod avx2_k;
mod avx512;
mod avx512_k;
mod packed;
mod packed512;
mod tile;

/// The legacy 32-value formats as const-generic tags (`tile.rs`, `packed.rs`).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const IQ4_NL: u8 = 5;

/// `vpdpbusd` on 256-bit registers: `acc` plus the four-byte dots of unsigned `u` and signed
/// `y`. Only the VNNI flavours of the tile and packed kernels reach it.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dpbusd(
    acc: std::arch::x86_64::__m256i,
    u: std::arch::x86_64::__m256i,
    y: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    std::arch::x86_64::_mm256_dpbusd_epi32(acc, u, y)
}

/// Kernels every path here has, AVX2 flavour.
const AVX2_DOTS: &[(T, DotFn)] = &[
    (T::F32, avx2::f32),
    (T::F16, avx2::f16),
    (T::BF16, avx2::bf16),
    (T::Q8_0, avx2::q8_0),
    (T::Q4_0, avx2::q4_0),
    (T::Q4_1, avx2::q4_1),
    (T::Q5_0, avx2::q5_0),
    (T::Q5_1, avx2::q5_1),
    (T::IQ4_NL, avx2::iq4_nl),
    (T::MXFP4, avx2::mxfp4),
    (T::IQ4_XS, avx2::iq4_xs),
    (T::Q2_K, avx2_k::q2_k),
    (T::Q3_K, avx2_k::q3_k),
    (T::Q4_K, avx2_k::q4_k),
    (T::Q5_K, avx2_k::q5_k),
    (T::Q6_K, avx2_k::q6_k),
];

/// The AVX2 path.
static AVX2: Kernels = Kernels::with(&SCALAR, "avx2", AVX2_DOTS);

/// The AVX-512 path, the default where AVX-512 exists: the AVX2 kernels except where a
/// 512-bit or batched kernel measured faster (floats, Q8_0).
static AVX512: Kernels = Kernels::with(
    &Kernels::with(&SCALAR, "avx512", AVX2_DOTS),
    "avx512",
    &[
        (T::F32, avx512::f32),
        (T::F16, avx512::f16),
        (T::BF16, avx512::bf16),
        (T::Q8_0, avx512::q8_0),
    ],
);

/// AVX-512 with VNNI dot instructions and 512-bit K-quant kernels. Not the default: on the
/// development machine (Sapphire Rapids class) these measured slower than [`AVX512`]
/// (`examples/vec_dot_bench.rs`), but they are tested on every CPU that has them.
static AVX512_VNNI: Kernels = Kernels::with(
    &AVX512,
    "avx512vnni",
    &[
        (T::Q8_0, avx512::q8_0_vnni),
        (T::Q4_K, avx512_k::q4_k_vnni),
        (T::Q5_K, avx512_k::q5_k_vnni),
        (T::Q6_K, avx512_k::q6_k_vnni),
    ],
);

/// The SIMD paths this CPU can run, the default (fastest measured) last.
pub(crate) fn detect() -> Vec<&'static Kernels> {
    let mut paths = Vec::new();
    if !has_avx2() {
        return paths;
    }
    paths.push(&AVX2);
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    if avx512 {
        if is_x86_feature_detected!("avx512vnni") {
            paths.push(&AVX512_VNNI);
        }
        paths.push(&AVX512);
    }
    paths
}

/// The tile kernels (`tile.rs`) this CPU can run: none without AVX2/FMA/F16C; the VNNI
/// flavour of the 32-value formats where AVX512-VNNI and VL exist.
pub(crate) fn tile_kernels() -> Vec<(T, crate::gemm::TileFn)> {
    if !has_avx2() {
        return Vec::new();
    }
    tile::kernels(has_vnni())
}

/// Widens the f16s of `data` into `out` eight at a time (`vcvtph2ps`, exact); returns how
/// many it converted (the caller does the last `< 8`).
///
/// # Safety
/// The CPU must have F16C and AVX.
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn widen_f16(data: &[u8], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = (data.len() / 2).min(out.len()) / 8 * 8;
    for (src, dst) in data[..2 * n]
        .chunks_exact(16)
        .zip(out[..n].chunks_exact_mut(8))
    {
        // SAFETY: `src` is 16 readable bytes, `dst` 8 writable f32; no alignment needed.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().cast());
            _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    n
}

/// The packed-group kernels (`packed.rs`) this CPU can run, chosen as for [`tile_kernels`].
pub(crate) fn packed_kernels() -> Vec<(T, crate::packed::PackedFn)> {
    if !has_avx2() {
        return Vec::new();
    }
    packed::kernels(has_vnni())
}

/// AVX2 with FMA and F16C: what every SIMD path here needs.
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// AVX512-VNNI on 256-bit registers (the VNNI flavour of the tile and packed kernels).
fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// What the 512-bit packed kernels need: AVX2/FMA/F16C, AVX-512 F/BW/VL and VNNI.
fn has_avx512_vnni() -> bool {
    has_avx2() && has_vnni() && is_x86_feature_detected!("avx512bw")
}

/// The packed kernels that take two groups (sixteen rows) per call, where this CPU has them.
pub(crate) fn packed_pair_kernels() -> Vec<(T, crate::packed::PackedFn)> {
    packed512::kernels()
}

/// Every packed-kernel flavour this CPU can run (AVX2, then VNNI), for the tests.
#[cfg(test)]
pub(crate) fn packed_flavours() -> Vec<Vec<(T, crate::packed::PackedFn)>> {
    if !has_avx2() {
        return Vec::new();
    }
    let mut all = vec![packed::kernels(false)];
    if has_vnni() {
        all.push(packed::kernels(true));
    }
    all
}

/// Every tile-kernel flavour this CPU can run (AVX2, then VNNI), for the tests.
#[cfg(test)]
pub(crate) fn tile_flavours() -> Vec<Vec<(T, crate::gemm::TileFn)>> {
    let mut all = vec![tile_kernels()];
    if all[0].is_empty() {
        return Vec::new();
    }
    let vnni = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
    if vnni {
        all.insert(0, tile::kernels(false));
    }
    all
}
