//! AVX2 kernels for the 32-value blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4),
//! IQ4_XS and the float rows, plus the load/sum helpers the other x86 files share.
//!
//! The integer part follows ggml's arch/x86/quants.c (`bytes_from_nibbles_32`,
//! `bytes_from_bits_32`, `mul_sum_i8_pairs` via `maddubs`); each block's integer sum is then
//! reduced to a scalar and the f32 step is the scalar kernel's, in its order, so the result
//! is the scalar one bit for bit. Float rows accumulate f32 products in four f64 vectors.

use crate::dot::scalar;
use crate::iq4::KVALUES_IQ4NL;
use crate::mxfp4::{e8m0_to_f32_half, KVALUES_MXFP4};
use std::arch::x86_64::*;

/// 32 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load(b: &[u8], at: usize) -> __m256i {
    let s = &b[at..at + 32];
    // SAFETY: `s` is 32 readable bytes and `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// 16 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load128(b: &[u8], at: usize) -> __m128i {
    let s = &b[at..at + 16];
    // SAFETY: `s` is 16 readable bytes and `loadu` needs no alignment.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// The little-endian f16 at `at`, widened exactly in scalar integer ops: no shuffle-port
/// `vcvtph2ps`, no call that would spill vector registers, and no f32 subnormal operand
/// (whose microcode assist costs ~100 cycles; K-quant `d`/`dmin` are often f16 subnormals).
#[inline]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let (e, mag) = (h & 0x7C00, (h & 0x7FFF) << 13);
    let v = if e == 0x7C00 {
        f32::from_bits(mag | 0x7F80_0000)
    } else if e == 0 {
        (h & 0x3FF) as f32 * f32::from_bits((127 - 24) << 23)
    } else {
        f32::from_bits(mag + ((127 - 15) << 23))
    };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// The little-endian f32 at `at` (Q8_K's scale).
#[inline]
pub(super) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Sum of eight i32 lanes (exact: wrapping never happens for block sums).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Pairwise `x * y` of unsigned codes (`<= 127`) and signed bytes, summed into 8 i32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn mul_sum_u8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Pairwise `x * y` of signed bytes (`y != -128`), summed into 8 i32: `|x| * sign(y, x)`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256i {
    mul_sum_u8(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x))
}

/// 16 bytes of packed nibbles at `at` as 32 bytes: low nibbles first, then high ones
/// (ggml's `bytes_from_nibbles_32`): element `j` of a legacy block lands in byte `j`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn nibbles(b: &[u8], at: usize) -> __m256i {
    let q = load128(b, at);
    let v = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of the little-endian u32 at `at` as bytes: 0xFF where the bit is set
/// (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn bits(b: &[u8], at: usize) -> __m256i {
    let x = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}

/// A 16-entry i8 table in both 128-bit lanes, for `pshufb` lookups.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn table(k: &[i8; 16]) -> __m256i {
    let t = k.map(|v| v as u8);
    _mm256_broadcastsi128_si256(load128(&t, 0))
}

/// `ggml_vec_dot_q8_0_q8_0`: see `scalar::q8_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let sumi = hsum_i32(mul_sum_i8(load(x, 2), load(y, 2)));
        sumf += sumi as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sumf
}

/// `ggml_vec_dot_q4_0_q8_0`: see `scalar::q4_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let q = _mm256_sub_epi8(nibbles(x, 2), _mm256_set1_epi8(8));
        let sumi = hsum_i32(mul_sum_i8(q, load(y, 2)));
        sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0);
    }
    sumf
}

/// `ggml_vec_dot_q4_1_q8_1`: see `scalar::q4_1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let sumi = hsum_i32(mul_sum_u8(nibbles(x, 4), load(y, 4)));
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * sumi as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sumf
}

/// `ggml_vec_dot_q5_0_q8_0`: see `scalar::q5_0`. Codes `nibble | 0xF0` where the fifth
/// bit is clear read as `nibble - 16` in i8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let high = _mm256_andnot_si256(bits(x, 2), _mm256_set1_epi8(0xF0u8 as i8));
        let q = _mm256_or_si256(nibbles(x, 6), high);
        let sumi = hsum_i32(mul_sum_i8(q, load(y, 2)));
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * sumi as f32;
    }
    sumf
}

/// `ggml_vec_dot_q5_1_q8_1`: see `scalar::q5_1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let high = _mm256_and_si256(bits(x, 4), _mm256_set1_epi8(0x10));
        let q = _mm256_or_si256(nibbles(x, 8), high);
        let sumi = hsum_i32(mul_sum_u8(q, load(y, 4)));
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * sumi as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sumf
}

/// `ggml_vec_dot_iq4_nl_q8_0`: see `scalar::iq4_nl`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_nl(w: &[u8], a: &[u8]) -> f32 {
    let k = table(&KVALUES_IQ4NL);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let q = _mm256_shuffle_epi8(k, nibbles(x, 2));
        let d = f16_at(y, 0) * f16_at(x, 0);
        sumf += d * hsum_i32(mul_sum_i8(q, load(y, 2))) as f32;
    }
    sumf
}

/// `ggml_vec_dot_mxfp4_q8_0`: see `scalar::mxfp4`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mxfp4(w: &[u8], a: &[u8]) -> f32 {
    let k = table(&KVALUES_MXFP4);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(17).zip(a.chunks_exact(34)) {
        let q = _mm256_shuffle_epi8(k, nibbles(x, 1));
        let d = f16_at(y, 0) * e8m0_to_f32_half(x[0]);
        sumf += d * hsum_i32(mul_sum_i8(q, load(y, 2))) as f32;
    }
    sumf
}

/// `ggml_vec_dot_iq4_xs_q8_K`: see `scalar::iq4_xs` (one f32 term per sub-block).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let k = table(&KVALUES_IQ4NL);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)) {
        let d4d8 = f16_at(x, 0) * f32_at(y, 0);
        let h = u16::from_le_bytes([x[2], x[3]]);
        for ib in 0..8 {
            let ls =
                ((x[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((h >> (2 * ib)) & 3) as u8) << 4);
            let d1 = d4d8 * (ls as i32 - 32) as f32;
            let q = _mm256_shuffle_epi8(k, nibbles(x, 8 + 16 * ib));
            sumf += d1 * hsum_i32(mul_sum_i8(q, load(y, 4 + 32 * ib))) as f32;
        }
    }
    sumf
}

/// Eight values of a float row at element `i`, widened to f32: `BYTES` 4 is f32, 2 with
/// `BF` false f16, with `BF` true bf16.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn widen8<const BYTES: usize, const BF: bool>(b: &[u8], i: usize) -> __m256 {
    match (BYTES, BF) {
        (4, _) => _mm256_castsi256_ps(load(b, 4 * i)),
        (_, false) => _mm256_cvtph_ps(load128(b, 2 * i)),
        (_, true) => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load128(
            b,
            2 * i,
        )))),
    }
}

/// Float-row dot: f32 products of 16 values at a time, summed in four f64 vectors, then
/// the tail through `tail` (the scalar f64 sum).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn float_dot<const BYTES: usize, const BF: bool>(
    w: &[u8],
    a: &[u8],
    tail: fn(&[u8], &[u8]) -> f64,
) -> f32 {
    let n = w.len() / BYTES;
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = 0;
    while i + 16 <= n {
        for h in 0..2 {
            let p = _mm256_mul_ps(
                widen8::<BYTES, BF>(w, i + 8 * h),
                widen8::<BYTES, BF>(a, i + 8 * h),
            );
            acc[2 * h] = _mm256_add_pd(acc[2 * h], _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
            acc[2 * h + 1] = _mm256_add_pd(
                acc[2 * h + 1],
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(p)),
            );
        }
        i += 16;
    }
    let v = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    let s = _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    (s + tail(&w[i * BYTES..], &a[i * BYTES..])) as f32
}

/// `ggml_vec_dot_f32` with the scalar branch's f64 sum: see `scalar::f32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<4, false>(w, a, scalar::f32_sum)
}

/// `ggml_vec_dot_f16` with the scalar branch's f64 sum: see `scalar::f16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<2, false>(w, a, scalar::f16_sum)
}

/// `ggml_vec_dot_bf16` with the scalar branch's f64 sum: see `scalar::bf16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<2, true>(w, a, scalar::bf16_sum)
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_at_widens_every_f16_exactly() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = super::f16_at(&h.to_le_bytes(), 0);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }
}
