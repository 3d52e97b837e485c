//! AVX2 kernels for the K-quants (Q2_K..Q6_K against Q8_K), bit-exact with `dot::scalar`.
//!
//! ggml's generic Q3_K..Q6_K code keeps eight f32 lanes, `sums[l] += d * aux32[l]` with
//! `aux32[l]` the scaled integer sum over elements `i % 8 == l`. ggml's own AVX2 code mixes
//! those lanes (`maddubs` adds neighbours), so its f32 result differs in the last bits; here
//! the lanes are kept: [`PAIR`] reorders each 16-byte lane so `maddubs` adds elements `k` and
//! `k + 8` (same `i % 8`), and `unpack{lo,hi}_epi16` interleaves two such results whose
//! scales then multiply in one `madd` ([`Lanes`]). The eight lane sums are exact integers,
//! so `sums` and the final fold repeat the scalar f32 operations exactly.
//!
//! Q2_K's block sum is a single integer (ggml's `isum`), so it needs no lanes.

use super::avx2::{f16_at, f32_at, hsum_i32, load, load128};
use std::arch::x86_64::*;

/// `pshufb` control: in each 128-bit lane byte `k` goes to `2k`, byte `k + 8` to `2k + 1`.
pub(super) const PAIR: [i8; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];

/// Reorders `v` by [`PAIR`] in both lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn pair(v: __m256i) -> __m256i {
    let p = PAIR.map(|b| b as u8);
    _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(load128(&p, 0)))
}

/// ggml's eight integer lanes, two vectors: `lo` holds lanes 0..4 in each 128-bit half,
/// `hi` lanes 4..8 (the halves are added at the end).
struct Lanes {
    lo: __m256i,
    hi: __m256i,
}

impl Lanes {
    /// Empty lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new() -> Lanes {
        Lanes {
            lo: _mm256_setzero_si256(),
            hi: _mm256_setzero_si256(),
        }
    }

    /// Adds `s0 * p0 + s1 * p1`, where `p0`, `p1` are `maddubs` results of [`pair`]ed bytes
    /// (i16 `k` of each half is lane `k`) and `scales` holds `s0 | s1 << 16` in each i32
    /// of a half.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(&mut self, p0: __m256i, p1: __m256i, scales: __m256i) {
        self.lo = _mm256_add_epi32(
            self.lo,
            _mm256_madd_epi16(_mm256_unpacklo_epi16(p0, p1), scales),
        );
        self.hi = _mm256_add_epi32(
            self.hi,
            _mm256_madd_epi16(_mm256_unpackhi_epi16(p0, p1), scales),
        );
    }

    /// The eight lanes `aux32[0..8]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn finish(&self) -> __m256i {
        let fold =
            |v: __m256i| _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm256_set_m128i(fold(self.hi), fold(self.lo))
    }
}

/// ggml's per-block `sums[l] += d * aux32[l]` (a multiply then an add, no FMA).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn add_lanes(sums: __m256, d: f32, aux32: __m256i) -> __m256 {
    _mm256_add_ps(
        sums,
        _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(aux32)),
    )
}

/// ggml's final `for l in 0..8: sumf += sums[l]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn fold_lanes(mut sumf: f32, sums: __m256) -> f32 {
    let mut s = [0f32; 8];
    // SAFETY: `s` is 8 writable f32s and `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), sums) };
    for v in s {
        sumf += v;
    }
    sumf
}

/// The 6-bit scales and mins of a Q4_K/Q5_K block (12 bytes at `at`), unpacked as ggml's
/// `utmp` code does: bytes 0..8 are the eight scales, 8..16 the eight mins.
#[inline]
pub(super) fn k4_scales(x: &[u8], at: usize) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |k: usize| {
        u32::from_le_bytes([
            x[at + 4 * k],
            x[at + 4 * k + 1],
            x[at + 4 * k + 2],
            x[at + 4 * k + 3],
        ])
    };
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let utmp = [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(utmp) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// `Σ_j bsums[j] * mins[j / 2]` of a Q8_K block (`y`) and the eight mins in `sm[8..16]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn min_sum(y: &[u8], sm: &[u8; 16]) -> i32 {
    let dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    let m16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(load128(sm, 0), dup));
    hsum_i32(_mm256_madd_epi16(load(y, 260), m16))
}

/// The eight scales in `sm[0..8]` as i16, both halves: i32 `c` is `s[2c] | s[2c + 1] << 16`.
#[inline]
#[target_feature(enable = "avx2")]
fn k4_scale_pairs(sm: &[u8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(load128(sm, 0)))
}

/// i32 `c` of `pairs` (`c < 4`) in every i32.
#[inline]
#[target_feature(enable = "avx2")]
fn broadcast_pair(pairs: __m256i, c: usize) -> __m256i {
    _mm256_permutevar8x32_epi32(pairs, _mm256_set1_epi32(c as i32))
}

/// Shared body of Q4_K and Q5_K: `codes(x, c)` gives chunk `c`'s 64 codes as two
/// [`pair`]ed vectors (sub-blocks `2c` and `2c + 1`); `qs` is where the nibbles start.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4(w: &[u8], a: &[u8], ts: usize, codes: impl Fn(&[u8], usize) -> (__m256i, __m256i)) -> f32 {
    let (mut sumf, mut sums) = (0f32, _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(ts).zip(a.chunks_exact(292)) {
        let yd = f32_at(y, 0);
        let sm = k4_scales(x, 4);
        let sumi = min_sum(y, &sm);
        let pairs = k4_scale_pairs(&sm);
        let mut acc = Lanes::new();
        for c in 0..4 {
            let (lo, hi) = codes(x, c);
            let p0 = _mm256_maddubs_epi16(lo, pair(load(y, 4 + 64 * c)));
            let p1 = _mm256_maddubs_epi16(hi, pair(load(y, 36 + 64 * c)));
            acc.add(p0, p1, broadcast_pair(pairs, c));
        }
        sums = add_lanes(sums, f16_at(x, 0) * yd, acc.finish());
        sumf -= f16_at(x, 2) * yd * sumi as f32;
    }
    fold_lanes(sumf, sums)
}

/// The low and high nibbles of the 32 [`pair`]ed bytes at `at`.
#[inline]
#[target_feature(enable = "avx2")]
fn nibble_pair(x: &[u8], at: usize) -> (__m256i, __m256i) {
    let q = pair(load(x, at));
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(q, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
    )
}

/// `ggml_vec_dot_q4_K_q8_K` with ggml's generic lanes: see `scalar::q4_k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4_k(w: &[u8], a: &[u8]) -> f32 {
    k4(w, a, 144, |x, c| nibble_pair(x, 16 + 32 * c))
}

/// `ggml_vec_dot_q5_K_q8_K` with ggml's generic lanes: see `scalar::q5_k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_k(w: &[u8], a: &[u8]) -> f32 {
    k4(w, a, 176, |x, c| {
        let (lo, hi) = nibble_pair(x, 48 + 32 * c);
        let qh = pair(load(x, 16));
        let fifth = |bit: usize| {
            let m = _mm256_set1_epi8(1 << bit);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        };
        (
            _mm256_or_si256(lo, fifth(2 * c)),
            _mm256_or_si256(hi, fifth(2 * c + 1)),
        )
    })
}

/// Sixteen signed sub-block scales (`s`) arranged for [`add_chunk16`]: i32 `2g` holds
/// `s[4g] | s[4g + 2] << 16`, i32 `2g + 1` holds `s[4g + 1] | s[4g + 3] << 16`.
#[inline]
#[target_feature(enable = "avx2")]
fn scales16(s: &[i8; 16]) -> __m256i {
    let order: [u8; 16] = [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15];
    let b: [u8; 16] = std::array::from_fn(|j| s[order[j] as usize] as u8);
    _mm256_cvtepi8_epi16(load128(&b, 0))
}

/// Adds one 128-value chunk `h` of a 16-value-sub-block type: `p[k]` is the `maddubs`
/// result of elements `128 h + 32 k..+32` ([`pair`]ed; half 0 is sub-block `8h + 2k`,
/// half 1 sub-block `8h + 2k + 1`); `sc` comes from [`scales16`].
#[inline]
#[target_feature(enable = "avx2")]
fn add_chunk16(acc: &mut Lanes, p: &[__m256i; 4], sc: __m256i, h: usize) {
    for m in 0..2 {
        let g = (2 * h + m) as i32;
        let idx = _mm256_setr_epi32(
            2 * g,
            2 * g,
            2 * g,
            2 * g,
            2 * g + 1,
            2 * g + 1,
            2 * g + 1,
            2 * g + 1,
        );
        acc.add(p[2 * m], p[2 * m + 1], _mm256_permutevar8x32_epi32(sc, idx));
    }
}

/// `maddubs(u, y) - maddubs(bias, y)`: the pair sums of `(u - bias) * y` for unsigned
/// codes `u` (exact: each term fits i16).
#[inline]
#[target_feature(enable = "avx2")]
fn biased_maddubs(u: __m256i, y: __m256i, bias: i8) -> __m256i {
    _mm256_sub_epi16(
        _mm256_maddubs_epi16(u, y),
        _mm256_maddubs_epi16(_mm256_set1_epi8(bias), y),
    )
}

/// `ggml_vec_dot_q6_K_q8_K` with ggml's generic lanes: see `scalar::q6_k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let mut sums = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let s: [i8; 16] = std::array::from_fn(|j| x[192 + j] as i8);
        let sc = scales16(&s);
        let mut acc = Lanes::new();
        for h in 0..2 {
            let (ql0, ql1, qh) = (
                pair(load(x, 64 * h)),
                pair(load(x, 64 * h + 32)),
                pair(load(x, 128 + 32 * h)),
            );
            let high = |k: i32| {
                let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k));
                _mm256_slli_epi16::<4>(_mm256_and_si256(v, m3))
            };
            let low = [
                ql0,
                ql1,
                _mm256_srli_epi16::<4>(ql0),
                _mm256_srli_epi16::<4>(ql1),
            ];
            let p: [__m256i; 4] = std::array::from_fn(|k| {
                let u = _mm256_or_si256(_mm256_and_si256(low[k], m4), high(k as i32));
                biased_maddubs(u, pair(load(y, 4 + 128 * h + 32 * k)), 32)
            });
            add_chunk16(&mut acc, &p, sc, h);
        }
        sums = add_lanes(sums, f16_at(x, 208) * f32_at(y, 0), acc.finish());
    }
    fold_lanes(0.0, sums)
}

/// `ggml_vec_dot_q3_K_q8_K` with ggml's generic lanes: see `scalar::q3_k`. Codes are
/// taken unsigned (`low | hbit << 2`) with the 4 subtracted through `biased_maddubs`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q3_k(w: &[u8], a: &[u8]) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let mut sums = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(110).zip(a.chunks_exact(292)) {
        let packed: [u8; 12] = std::array::from_fn(|j| x[96 + j]);
        let sc = scales16(&crate::k_quants::q3_scales(&packed));
        let hmask = pair(load(x, 0));
        let mut acc = Lanes::new();
        for h in 0..2 {
            let qs = pair(load(x, 32 + 32 * h));
            let p: [__m256i; 4] = std::array::from_fn(|k| {
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * k as i32)), m3);
                let m = _mm256_set1_epi8(1 << (4 * h + k));
                let hbit = _mm256_and_si256(
                    _mm256_cmpeq_epi8(_mm256_and_si256(hmask, m), m),
                    _mm256_set1_epi8(4),
                );
                biased_maddubs(
                    _mm256_or_si256(low, hbit),
                    pair(load(y, 4 + 128 * h + 32 * k)),
                    4,
                )
            });
            add_chunk16(&mut acc, &p, sc, h);
        }
        sums = add_lanes(sums, f16_at(x, 108) * f32_at(y, 0), acc.finish());
    }
    fold_lanes(0.0, sums)
}

/// `ggml_vec_dot_q2_K_q8_K`: see `scalar::q2_k` (one integer sum per block, any order).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q2_k(w: &[u8], a: &[u8]) -> f32 {
    let (m3, m4) = (_mm256_set1_epi8(3), _mm_set1_epi8(0x0F));
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(84).zip(a.chunks_exact(292)) {
        let sc = load128(x, 0);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
        let summs = hsum_i32(_mm256_madd_epi16(load(y, 260), mins));
        let sc = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m4));
        let mut acc = _mm256_setzero_si256();
        for n in 0..2 {
            let qs = load(x, 16 + 32 * n);
            for j in 0..4 {
                let q = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let p = _mm256_maddubs_epi16(q, load(y, 4 + 128 * n + 32 * j));
                // i16 scale of sub-block 8n + 2j in the low half, 8n + 2j + 1 in the high one.
                let s = (8 * n + 2 * j) as i16;
                let ctrl = _mm256_setr_m128i(
                    _mm_set1_epi16(s | -0x8000),
                    _mm_set1_epi16((s + 1) | -0x8000),
                );
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, ctrl)));
            }
        }
        let isum = hsum_i32(acc);
        let (dall, dmin) = (f32_at(y, 0) * f16_at(x, 80), f32_at(y, 0) * f16_at(x, 82));
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}
