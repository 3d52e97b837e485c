//! Scalar dot products of one weight row with one quantized activation row: the reference
//! every SIMD path is tested against, kept forever (STYLE §8).
//!
//! Each function mirrors ggml's `ggml_vec_dot_<w>_<act>_generic` (ggml-cpu/quants.c, llama.cpp
//! b11549) or `ggml_vec_dot_{f32,f16,bf16}`'s scalar branch (ggml-cpu/vec.cpp) operation for
//! operation: integer sums exactly as ggml forms them, then the same f32 products in the same
//! grouping and the same order of additions, so the result is bit-identical to ggml's C built
//! without FMA contraction (`-ffp-contract=off`; the `ggml_vecdot` test checks it). The
//! K-quants keep ggml's eight `sums[l]` lanes (element `i` feeds lane `i % 8`), because the
//! f32 result depends on that split.
//!
//! Inputs are whole blocks whose counts the caller checked; the activation row holds the
//! blocks of `vec_dot_type(weight)` for the same elements.

use crate::block::Block;
use crate::float::bf16_to_f32;
use crate::iq4::{BlockIQ4_NL, BlockIQ4_XS, KVALUES_IQ4NL};
use crate::k_quants::{
    q3_scales, scale_min_k4, BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K,
};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::mxfp4::{e8m0_to_f32_half, BlockMXFP4, KVALUES_MXFP4};
use half::f16;
use std::mem::size_of;

/// The blocks of `bytes` (a whole number of them).
fn blocks<'a, B: Block + 'a>(bytes: &'a [u8]) -> impl Iterator<Item = B> + 'a {
    bytes.chunks_exact(size_of::<B>()).map(B::read)
}

/// Weight blocks paired with their activation blocks.
fn pairs<'a, W: Block + 'a, A: Block + 'a>(
    w: &'a [u8],
    a: &'a [u8],
) -> impl Iterator<Item = (W, A)> + 'a {
    blocks::<W>(w).zip(blocks::<A>(a))
}

/// `Σ x[j] * y[j]` over 32 codes given as 16 packed nibble pairs (`lo(j)`, `hi(j)` for
/// elements `j` and `j + 16`) against Q8 codes: ggml's `sumi0 + sumi1`.
fn nibble_dot(
    qs: &[u8; 16],
    y: &[i8; 32],
    lo: impl Fn(usize, u8) -> i32,
    hi: impl Fn(usize, u8) -> i32,
) -> i32 {
    let (mut sumi0, mut sumi1) = (0i32, 0i32);
    for j in 0..16 {
        sumi0 += lo(j, qs[j]) * y[j] as i32;
        sumi1 += hi(j, qs[j]) * y[j + 16] as i32;
    }
    sumi0 + sumi1
}

/// `ggml_vec_dot_q8_0_q8_0_generic`.
pub(crate) fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ8_0, BlockQ8_0>(w, a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sumf += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sumf
}

/// `ggml_vec_dot_q4_0_q8_0_generic`.
pub(crate) fn q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ4_0, BlockQ8_0>(w, a) {
        let sumi = nibble_dot(
            &x.qs,
            &y.qs,
            |_, q| (q & 0xF) as i32 - 8,
            |_, q| (q >> 4) as i32 - 8,
        );
        sumf += sumi as f32 * x.d.to_f32() * y.d.to_f32();
    }
    sumf
}

/// `ggml_vec_dot_q4_1_q8_1_generic`.
pub(crate) fn q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ4_1, BlockQ8_1>(w, a) {
        let sumi = nibble_dot(
            &x.qs,
            &y.qs,
            |_, q| (q & 0xF) as i32,
            |_, q| (q >> 4) as i32,
        );
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sumf
}

/// The fifth bits of a Q5 block: element `j`'s bit 4 is bit `j` of `qh`.
fn fifth_bit(qh: u32, j: usize) -> i32 {
    (((qh >> j) & 1) << 4) as i32
}

/// `ggml_vec_dot_q5_0_q8_0_generic`.
pub(crate) fn q5_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ5_0, BlockQ8_0>(w, a) {
        let qh = u32::from_le_bytes(x.qh);
        let sumi = nibble_dot(
            &x.qs,
            &y.qs,
            |j, q| ((q & 0xF) as i32 | fifth_bit(qh, j)) - 16,
            |j, q| ((q >> 4) as i32 | fifth_bit(qh, j + 16)) - 16,
        );
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// `ggml_vec_dot_q5_1_q8_1_generic`.
pub(crate) fn q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ5_1, BlockQ8_1>(w, a) {
        let qh = u32::from_le_bytes(x.qh);
        let sumi = nibble_dot(
            &x.qs,
            &y.qs,
            |j, q| (q & 0xF) as i32 | fifth_bit(qh, j),
            |j, q| (q >> 4) as i32 | fifth_bit(qh, j + 16),
        );
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sumf
}

/// `ggml_vec_dot_iq4_nl_q8_0_generic`.
pub(crate) fn iq4_nl(w: &[u8], a: &[u8]) -> f32 {
    let k = |_, q: u8| KVALUES_IQ4NL[(q & 0xF) as usize] as i32;
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockIQ4_NL, BlockQ8_0>(w, a) {
        let d = y.d.to_f32() * x.d.to_f32();
        sumf += d * nibble_dot(&x.qs, &y.qs, k, |j, q| k(j, q >> 4)) as f32;
    }
    sumf
}

/// `ggml_vec_dot_mxfp4_q8_0_generic`.
pub(crate) fn mxfp4(w: &[u8], a: &[u8]) -> f32 {
    let k = |_, q: u8| KVALUES_MXFP4[(q & 0xF) as usize] as i32;
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockMXFP4, BlockQ8_0>(w, a) {
        let d = y.d.to_f32() * e8m0_to_f32_half(x.e);
        sumf += d * nibble_dot(&x.qs, &y.qs, k, |j, q| k(j, q >> 4)) as f32;
    }
    sumf
}

/// `ggml_vec_dot_iq4_xs_q8_K_generic`: one f32 term per 32-value sub-block.
pub(crate) fn iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let k = |_, q: u8| KVALUES_IQ4NL[(q & 0xF) as usize] as i32;
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockIQ4_XS, BlockQ8_K>(w, a) {
        let d4d8 = x.d.to_f32() * y.d;
        for ib in 0..8 {
            let d1 = d4d8 * (x.scale_code(ib) as i32 - 32) as f32;
            let qs: [u8; 16] = std::array::from_fn(|j| x.qs[16 * ib + j]);
            let q8: [i8; 32] = std::array::from_fn(|j| y.qs[32 * ib + j]);
            sumf += d1 * nibble_dot(&qs, &q8, k, |j, q| k(j, q >> 4)) as f32;
        }
    }
    sumf
}

/// `ggml_vec_dot_q2_K_q8_K_generic`: the whole block's sum is one integer.
pub(crate) fn q2_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in pairs::<BlockQ2_K, BlockQ8_K>(w, a) {
        let summs: i32 = (0..16)
            .map(|j| y.bsums[j] as i32 * (x.scales[j] >> 4) as i32)
            .sum();
        let dall = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        let mut isum = 0i32;
        for i in 0..256 {
            let q = (x.qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            isum += (x.scales[i / 16] & 0xF) as i32 * (q as i32 * y.qs[i] as i32);
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// ggml's eight K-quant accumulator lanes: `aux32[i % 8] += scale(i) * code(i) * q8[i]`
/// over one block, with `scale(i)` the scale of element `i`'s sub-block.
fn lanes(q8: &[i8; 256], code: impl Fn(usize) -> i32, scale: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for i in 0..256 {
        aux32[i % 8] += scale(i) * (q8[i] as i32 * code(i));
    }
    aux32
}

/// `sums[l] += d * aux32[l]`, ggml's per-block f32 step for the K-quants.
fn add_lanes(sums: &mut [f32; 8], d: f32, aux32: &[i32; 8]) {
    for (s, &a) in sums.iter_mut().zip(aux32) {
        *s += d * a as f32;
    }
}

/// ggml's final `for l in 0..8: sumf += sums[l]`.
fn fold_lanes(mut sumf: f32, sums: &[f32; 8]) -> f32 {
    for &s in sums {
        sumf += s;
    }
    sumf
}

/// `ggml_vec_dot_q3_K_q8_K_generic`.
pub(crate) fn q3_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = [0f32; 8];
    for (x, y) in pairs::<BlockQ3_K, BlockQ8_K>(w, a) {
        let scales = q3_scales(&x.scales);
        let code = |i: usize| {
            let low = (x.qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            let high = (x.hmask[i % 32] >> (i / 32)) & 1;
            low as i32 - if high != 0 { 0 } else { 4 }
        };
        let aux32 = lanes(&y.qs, code, |i| scales[i / 16] as i32);
        add_lanes(&mut sums, x.d.to_f32() * y.d, &aux32);
    }
    fold_lanes(0.0, &sums)
}

/// Shared body of `ggml_vec_dot_q{4,5}_K_q8_K_generic`: `code(x, i)` is element `i`'s
/// unsigned code; `d`, `dmin` and `scales` are the block's fields.
fn k4<W: Block>(
    w: &[u8],
    a: &[u8],
    fields: impl Fn(&W) -> (f16, f16, [u8; 12]),
    code: impl Fn(&W, usize) -> i32,
) -> f32 {
    let (mut sumf, mut sums) = (0f32, [0f32; 8]);
    for (x, y) in pairs::<W, BlockQ8_K>(w, a) {
        let (d, dmin, packed) = fields(&x);
        let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, &packed));
        let sumi: i32 = (0..16)
            .map(|j| y.bsums[j] as i32 * sm[j / 2].1 as i32)
            .sum();
        let aux32 = lanes(&y.qs, |i| code(&x, i), |i| sm[i / 32].0 as i32);
        add_lanes(&mut sums, d.to_f32() * y.d, &aux32);
        sumf -= dmin.to_f32() * y.d * sumi as f32;
    }
    fold_lanes(sumf, &sums)
}

/// `ggml_vec_dot_q4_K_q8_K_generic`.
pub(crate) fn q4_k(w: &[u8], a: &[u8]) -> f32 {
    k4::<BlockQ4_K>(
        w,
        a,
        |x| (x.d, x.dmin, x.scales),
        |x, i| ((x.qs[(i / 64) * 32 + i % 32] >> (4 * ((i / 32) % 2))) & 0xF) as i32,
    )
}

/// `ggml_vec_dot_q5_K_q8_K_generic`.
pub(crate) fn q5_k(w: &[u8], a: &[u8]) -> f32 {
    k4::<BlockQ5_K>(
        w,
        a,
        |x| (x.d, x.dmin, x.scales),
        |x, i| {
            let low = (x.qs[(i / 64) * 32 + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
            (low | (((x.qh[i % 32] >> (i / 32)) & 1) << 4)) as i32
        },
    )
}

/// `ggml_vec_dot_q6_K_q8_K_generic`.
pub(crate) fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = [0f32; 8];
    for (x, y) in pairs::<BlockQ6_K, BlockQ8_K>(w, a) {
        let code = |i: usize| {
            let (h, r) = (i / 128, i % 128);
            let low = (x.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
            let high = (x.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            (low | (high << 4)) as i32 - 32
        };
        let aux32 = lanes(&y.qs, code, |i| x.scales[i / 16] as i32);
        add_lanes(&mut sums, x.d.to_f32() * y.d, &aux32);
    }
    fold_lanes(0.0, &sums)
}

/// `Σ (x[i] * y[i])`: each product rounded to f32, summed in f64 (ggml's scalar
/// `ggml_vec_dot_{f32,f16,bf16}`; `ggml_float` is double). `N` bytes per value.
fn float_dot<const N: usize>(w: &[u8], a: &[u8], widen: impl Fn([u8; N]) -> f32) -> f64 {
    let mut sumf = 0f64;
    for (x, y) in w.chunks_exact(N).zip(a.chunks_exact(N)) {
        let (x, y) = (
            widen(crate::block::arr(x, 0)),
            widen(crate::block::arr(y, 0)),
        );
        sumf += (x * y) as f64;
    }
    sumf
}

/// The f64 sum of [`f32`] (SIMD kernels finish their tails with it).
pub(crate) fn f32_sum(w: &[u8], a: &[u8]) -> f64 {
    float_dot::<4>(w, a, f32::from_le_bytes)
}

/// The f64 sum of [`f16`].
pub(crate) fn f16_sum(w: &[u8], a: &[u8]) -> f64 {
    float_dot::<2>(w, a, |b| f16::from_le_bytes(b).to_f32())
}

/// The f64 sum of [`bf16`].
pub(crate) fn bf16_sum(w: &[u8], a: &[u8]) -> f64 {
    float_dot::<2>(w, a, |b| bf16_to_f32(u16::from_le_bytes(b)))
}

/// `ggml_vec_dot_f32`, scalar branch.
pub(crate) fn f32(w: &[u8], a: &[u8]) -> f32 {
    f32_sum(w, a) as f32
}

/// `ggml_vec_dot_f16`, scalar branch (activations already rounded to f16).
pub(crate) fn f16(w: &[u8], a: &[u8]) -> f32 {
    f16_sum(w, a) as f32
}

/// `ggml_vec_dot_bf16`, scalar branch (activations already rounded to bf16).
pub(crate) fn bf16(w: &[u8], a: &[u8]) -> f32 {
    bf16_sum(w, a) as f32
}
