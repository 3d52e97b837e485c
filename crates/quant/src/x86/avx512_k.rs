//! AVX-512 kernels for Q4_K, Q5_K and Q6_K, bit-exact with `dot::scalar` (see `avx2_k.rs`
//! for why ggml's eight lanes are kept and how [`PAIR`] does it).
//!
//! A zmm holds two 32-value sub-blocks (Q4_K/Q5_K) or four 16-value ones (Q6_K), one per
//! 128-bit lane after `maddubs`. Instead of AVX2's `unpack` + `madd` (shuffle-port bound),
//! the scale multiplies twice, each a `vpdpwssd`: with `s` in the even i16 slots it gives
//! lanes 0, 2, 4, 6, with `s` in the odd slots lanes 1, 3, 5, 7 ([`Lanes`]).
//!
//! Measured on the Sapphire-Rapids-class development VM these are ~20% slower than the AVX2
//! kernels (512-bit uops leave only ports 0 and 5 for vector work), so they sit in the
//! non-default `avx512vnni` path, tested, for CPUs where 512-bit work runs at full rate.

use super::avx2::{f16_at, f32_at, load, load128};
use super::avx2_k::{add_lanes, fold_lanes, k4_scales, min_sum, PAIR};
use std::arch::x86_64::*;

/// 64 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load512(b: &[u8], at: usize) -> __m512i {
    let s = &b[at..at + 64];
    // SAFETY: `s` is 64 readable bytes and `loadu` needs no alignment.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// The 32 bytes at `at` in both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn broadcast256(b: &[u8], at: usize) -> __m512i {
    _mm512_broadcast_i64x4(load(b, at))
}

/// Reorders every 128-bit lane of `v` by [`PAIR`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn pair(v: __m512i) -> __m512i {
    let p = PAIR.map(|b| b as u8);
    _mm512_shuffle_epi8(v, _mm512_broadcast_i32x4(load128(&p, 0)))
}

/// i16 `a` in every i16 of the low 256 bits and `b` in the high ones.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn halves16(a: i16, b: i16) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi16(a)),
        _mm256_set1_epi16(b),
    )
}

/// ggml's eight integer lanes: `even` holds lanes 0, 2, 4, 6 in each 128-bit lane, `odd`
/// lanes 1, 3, 5, 7.
struct Lanes {
    even: __m512i,
    odd: __m512i,
}

impl Lanes {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new() -> Lanes {
        Lanes {
            even: _mm512_setzero_si512(),
            odd: _mm512_setzero_si512(),
        }
    }

    /// Adds `s * p`: `p` is a `maddubs` result of [`pair`]ed bytes (i16 `k` of a 128-bit
    /// lane is lane `k`), `s` the i32 scale of each 128-bit lane's sub-block (`|s| < 2^15`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn add(&mut self, p: __m512i, s: __m512i) {
        let even = _mm512_and_si512(s, _mm512_set1_epi32(0xFFFF));
        self.even = _mm512_dpwssd_epi32(self.even, p, even);
        self.odd = _mm512_dpwssd_epi32(self.odd, p, _mm512_slli_epi32::<16>(s));
    }

    /// The eight lanes `aux32[0..8]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    fn finish(&self) -> __m256i {
        let fold = |v: __m512i| {
            let h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
        };
        let (e, o) = (fold(self.even), fold(self.odd));
        _mm256_set_m128i(_mm_unpackhi_epi32(e, o), _mm_unpacklo_epi32(e, o))
    }
}

/// Shared body of Q4_K/Q5_K: `codes(x, c)` gives chunk `c`'s 64 [`pair`]ed codes,
/// sub-block `2c` in the low half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4(w: &[u8], a: &[u8], ts: usize, codes: impl Fn(&[u8], usize) -> __m512i) -> f32 {
    let (mut sumf, mut sums) = (0f32, _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(ts).zip(a.chunks_exact(292)) {
        let yd = f32_at(y, 0);
        let sm = k4_scales(x, 4);
        let sumi = min_sum(y, &sm);
        let sc = _mm512_cvtepu8_epi32(load128(&sm, 0));
        let mut acc = Lanes::new();
        for c in 0..4 {
            let p = _mm512_maddubs_epi16(codes(x, c), pair(load512(y, 4 + 64 * c)));
            let c = 2 * c as i32;
            let idx = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi32(c)),
                _mm256_set1_epi32(c + 1),
            );
            acc.add(p, _mm512_permutexvar_epi32(idx, sc));
        }
        sums = add_lanes(sums, f16_at(x, 0) * yd, acc.finish());
        sumf -= f16_at(x, 2) * yd * sumi as f32;
    }
    fold_lanes(sumf, sums)
}

/// The low nibbles of the 32 [`pair`]ed bytes at `at` in the low half, high ones in the high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn nibbles(x: &[u8], at: usize) -> __m512i {
    let q = pair(broadcast256(x, at));
    _mm512_and_si512(_mm512_srlv_epi16(q, halves16(0, 4)), _mm512_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_k_body(w: &[u8], a: &[u8]) -> f32 {
    k4(w, a, 144, |x, c| nibbles(x, 16 + 32 * c))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5_k_body(w: &[u8], a: &[u8]) -> f32 {
    k4(w, a, 176, |x, c| {
        let qh = pair(broadcast256(x, 16));
        let bit = _mm512_and_si512(
            _mm512_srlv_epi16(qh, halves16(2 * c as i16, 2 * c as i16 + 1)),
            _mm512_set1_epi8(1),
        );
        _mm512_or_si512(nibbles(x, 48 + 32 * c), _mm512_slli_epi16::<4>(bit))
    })
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_body(w: &[u8], a: &[u8]) -> f32 {
    let (m4, m3) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
    let mut sums = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let sc = _mm512_cvtepi8_epi32(load128(x, 192));
        let mut acc = Lanes::new();
        for h in 0..2 {
            let ql = pair(load512(x, 64 * h));
            let qh = pair(broadcast256(x, 128 + 32 * h));
            for m in 0..2 {
                let low = if m == 0 {
                    ql
                } else {
                    _mm512_srli_epi16::<4>(ql)
                };
                let shift = halves16(4 * m as i16, 4 * m as i16 + 2);
                let high =
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, shift), m3));
                let u = _mm512_or_si512(_mm512_and_si512(low, m4), high);
                let yv = pair(load512(y, 4 + 128 * h + 64 * m));
                let p = _mm512_sub_epi16(
                    _mm512_maddubs_epi16(u, yv),
                    _mm512_maddubs_epi16(_mm512_set1_epi8(32), yv),
                );
                let g = 4 * (2 * h + m) as i32;
                let idx = _mm512_setr_epi32(
                    g,
                    g,
                    g,
                    g,
                    g + 1,
                    g + 1,
                    g + 1,
                    g + 1,
                    g + 2,
                    g + 2,
                    g + 2,
                    g + 2,
                    g + 3,
                    g + 3,
                    g + 3,
                    g + 3,
                );
                acc.add(p, _mm512_permutexvar_epi32(idx, sc));
            }
        }
        sums = add_lanes(sums, f16_at(x, 208) * f32_at(y, 0), acc.finish());
    }
    fold_lanes(0.0, sums)
}

/// `ggml_vec_dot_q4_K_q8_K` with ggml's generic lanes (see `scalar::q4_k`), VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn q4_k_vnni(w: &[u8], a: &[u8]) -> f32 {
    q4_k_body(w, a)
}

/// `ggml_vec_dot_q5_K_q8_K` with ggml's generic lanes (see `scalar::q5_k`), VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn q5_k_vnni(w: &[u8], a: &[u8]) -> f32 {
    q5_k_body(w, a)
}

/// `ggml_vec_dot_q6_K_q8_K` with ggml's generic lanes (see `scalar::q6_k`), VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn q6_k_vnni(w: &[u8], a: &[u8]) -> f32 {
    q6_k_body(w, a)
}
