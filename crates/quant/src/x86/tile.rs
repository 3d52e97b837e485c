//! Tile kernels (see `gemm.rs`): one weight row against up to four tokens, each weight block
//! unpacked once, f32 partial sums kept in eight lanes across blocks.
//!
//! Integer part, per (block, token): unsigned weight codes times signed activation bytes,
//! summed into eight i32 — `maddubs` + `madd` on AVX2, one `vpdpbusd` where AVX512-VNNI
//! (with VL, so on ymm registers) exists. Formats with an offset (Q4_0's −8, Q5_0's −16,
//! Q6_K's −32) and formats with a min (Q4_1, Q5_1, Q4_K, Q5_K) multiply the unsigned codes
//! and correct with the activation block sums that `QActs` (Q8_0/Q8_1) or the Q8_K block
//! (`bsums`) carries; the signed formats (Q8_0, IQ4_NL) use the `|x|·sign(y, x)` identity.
//! Code ranges keep every i16 `maddubs` pair sum exact: 4/5-bit codes ≤ 31, 6-bit ≤ 63,
//! `|x|` ≤ 128, activations −127..=127.

use super::avx2::{bits, f16_at, load, load128, mul_sum_u8, nibbles, table};
use super::avx2_k::k4_scales;
use crate::gemm::{QActs, Tile, TileFn};
use crate::iq4::KVALUES_IQ4NL;
use gguf::GgmlType as T;
use std::arch::x86_64::*;

use super::{dpbusd, IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// Block bytes of each legacy tag.
const BYTES: [usize; 6] = [18, 20, 22, 24, 34, 18];

/// Dispatches a tile's shape to the const-generic body: four rows of one token, or one row
/// of one to four tokens.
macro_rules! by_shape {
    ($g:expr, $f:ident [$($p:tt),*] ($($arg:expr),*)) => {
        match ($g.rows, $g.nt) {
            (4, 1) => $f::<$($p,)* 4, 1>($($arg),*),
            (_, 1) => $f::<$($p,)* 1, 1>($($arg),*),
            (_, 2) => $f::<$($p,)* 1, 2>($($arg),*),
            (_, 3) => $f::<$($p,)* 1, 3>($($arg),*),
            _ => $f::<$($p,)* 1, 4>($($arg),*),
        }
    };
}

/// The kernels of this file for the CPU's features.
pub(crate) fn kernels(vnni: bool) -> Vec<(T, TileFn)> {
    if vnni {
        vec![
            (T::Q4_0, legacy_vnni::<Q4_0>),
            (T::Q4_1, legacy_vnni::<Q4_1>),
            (T::Q5_0, legacy_vnni::<Q5_0>),
            (T::Q5_1, legacy_vnni::<Q5_1>),
            (T::Q8_0, legacy_vnni::<Q8_0>),
            (T::IQ4_NL, legacy_vnni::<IQ4_NL>),
            (T::Q4_K, k4_vnni::<false>),
            (T::Q5_K, k4_vnni::<true>),
            (T::Q6_K, q6_k_vnni),
        ]
    } else {
        vec![
            (T::Q4_0, legacy_avx2::<Q4_0>),
            (T::Q4_1, legacy_avx2::<Q4_1>),
            (T::Q5_0, legacy_avx2::<Q5_0>),
            (T::Q5_1, legacy_avx2::<Q5_1>),
            (T::Q8_0, legacy_avx2::<Q8_0>),
            (T::IQ4_NL, legacy_avx2::<IQ4_NL>),
            (T::Q4_K, k4_avx2::<false>),
            (T::Q5_K, k4_avx2::<true>),
            (T::Q6_K, q6_k_avx2),
        ]
    }
}

/// Sum of the eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Unsigned `u` times signed `y` into eight i32, through VNNI when `VNNI`.
#[inline]
#[target_feature(enable = "avx2")]
fn udot<const VNNI: bool>(u: __m256i, y: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: only the `_vnni` entry points, compiled with (and handed out only on CPUs
        // with) AVX512-VNNI/VL, instantiate `VNNI = true`.
        unsafe { dpbusd(_mm256_setzero_si256(), u, y) }
    } else {
        mul_sum_u8(u, y)
    }
}

/// f16 → f32 for every bit pattern (256 KiB), ggml's old `ggml_table_f32_f16`: one load
/// per conversion, where the integer path (`f16_at`) costs a dozen ops and scalar
/// `vcvtph2ps` measured slower still on the development machine. The legacy kernels read
/// one or two scales per 32 values, so the conversion was their largest cost.
fn f16_table() -> &'static [f32; 65536] {
    static TABLE: std::sync::OnceLock<Box<[f32; 65536]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (h, v) in t.iter_mut().enumerate() {
            *v = f16_at(&(h as u16).to_le_bytes(), 0);
        }
        t
    })
}

/// The f16 at `at` through `table` (indexed by a u16: no bounds check).
#[inline]
fn f16_lut(table: &[f32; 65536], b: &[u8], at: usize) -> f32 {
    table[usize::from(u16::from_le_bytes([b[at], b[at + 1]]))]
}

/// `vpdpwssd`: `acc` plus the pairwise i16 products of `p` and `s`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dpwssd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, p, s)
}

/// `acc + madd(p, s)`, fused into one `vpdpwssd` when `VNNI`.
#[inline]
#[target_feature(enable = "avx2")]
fn madd_acc<const VNNI: bool>(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: as in `udot`, only VNNI entry points instantiate `VNNI = true`.
        unsafe { dpwssd(acc, p, s) }
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
}

/// A legacy block's codes (unsigned, or signed for Q8_0/IQ4_NL), its scale `d` and the
/// factor of the activation block sum `d_y·Σq_y` in the dot (the offset or the min).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode<const K: u8>(x: &[u8], lut: &[f32; 65536]) -> (__m256i, f32, f32) {
    let d = f16_lut(lut, x, 0);
    let high = |at: usize| _mm256_and_si256(bits(x, at), _mm256_set1_epi8(0x10));
    match K {
        Q4_0 => (nibbles(x, 2), d, -8.0 * d),
        Q4_1 => (nibbles(x, 4), d, f16_lut(lut, x, 2)),
        Q5_0 => (_mm256_or_si256(nibbles(x, 6), high(2)), d, -16.0 * d),
        Q5_1 => (
            _mm256_or_si256(nibbles(x, 8), high(4)),
            d,
            f16_lut(lut, x, 2),
        ),
        Q8_0 => (load(x, 2), d, 0.0),
        _ => (
            _mm256_shuffle_epi8(table(&KVALUES_IQ4NL), nibbles(x, 2)),
            d,
            0.0,
        ),
    }
}

/// `R` rows of legacy tag `K` against `NT` tokens (`R = 1`, or `R = 4` for one token: four
/// independent chains hide the FMA latency a lone matvec row waits on).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn legacy<const K: u8, const VNNI: bool, const R: usize, const NT: usize>(
    g: &Tile<'_>,
    a: &QActs,
    out: &mut [f32],
) {
    let signed = K == Q8_0 || K == IQ4_NL;
    let (nb, bb) = (a.blocks(), BYTES[K as usize]);
    let ab = if K == Q4_1 || K == Q5_1 { 36 } else { 34 };
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    // The signed formats need no block sums.
    let sm: [&[f32]; NT] = std::array::from_fn(|t| if signed { &[][..] } else { a.sums(g.t0 + t) });
    let rows: [&[u8]; R] = std::array::from_fn(|r| &g.w[r * g.row_bytes..(r + 1) * g.row_bytes]);
    let lut = f16_table();
    let mut acc = [[_mm256_setzero_ps(); NT]; R];
    let mut bias = [[0f32; NT]; R];
    for b in 0..nb {
        for r in 0..R {
            let (q, d, c) = decode::<K>(&rows[r][b * bb..(b + 1) * bb], lut);
            let u = if signed { _mm256_abs_epi8(q) } else { q };
            let dv = _mm256_set1_ps(d);
            for t in 0..NT {
                let mut y = load(ys[t], b * ab + ab - 32);
                if signed {
                    y = _mm256_sign_epi8(y, q);
                }
                let s = _mm256_cvtepi32_ps(udot::<VNNI>(u, y));
                let dd = _mm256_mul_ps(dv, _mm256_set1_ps(sc[t][b]));
                acc[r][t] = _mm256_fmadd_ps(s, dd, acc[r][t]);
                if !signed {
                    bias[r][t] += c * sm[t][b];
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..NT {
            out[r * g.ld + t] = hsum_ps(acc[r][t]) + bias[r][t];
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn legacy_avx2<const K: u8>(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, legacy[K, false](g, a, out))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn legacy_vnni<const K: u8>(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, legacy[K, true](g, a, out))
}

/// `R` Q4_K (`Q5 = false`) or Q5_K rows against `NT` tokens. Per super-block and token: the
/// eight sub-block sums times their 6-bit scales (`madd` with the scale as i16), and the
/// mins times the Q8_K block's 16-value sums, both folded into the lanes with `d·d_y` and
/// `−dmin·d_y`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn k4<const Q5: bool, const VNNI: bool, const R: usize, const NT: usize>(
    g: &Tile<'_>,
    a: &QActs,
    out: &mut [f32],
) {
    let (nb, bb) = (a.blocks(), if Q5 { 176 } else { 144 });
    let qs = if Q5 { 48 } else { 16 };
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let rows: [&[u8]; R] = std::array::from_fn(|r| &g.w[r * g.row_bytes..(r + 1) * g.row_bytes]);
    let m4 = _mm256_set1_epi8(0x0F);
    let dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    let mut acc = [[_mm256_setzero_ps(); NT]; R];
    for b in 0..nb {
        for r in 0..R {
            let x = &rows[r][b * bb..(b + 1) * bb];
            let sm = k4_scales(x, 4);
            let (d, dmin) = (f16_at(x, 0), f16_at(x, 2));
            let mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(load128(&sm, 0), dup));
            let q: [__m256i; 8] = std::array::from_fn(|j| {
                let v = load(x, qs + 32 * (j / 2));
                let v = if j % 2 == 0 {
                    v
                } else {
                    _mm256_srli_epi16::<4>(v)
                };
                let v = _mm256_and_si256(v, m4);
                if Q5 {
                    let hb = _mm256_srl_epi16(load(x, 16), _mm_cvtsi32_si128(j as i32));
                    let hb = _mm256_and_si256(hb, _mm256_set1_epi8(1));
                    _mm256_or_si256(v, _mm256_slli_epi16::<4>(hb))
                } else {
                    v
                }
            });
            for t in 0..NT {
                let y = &ys[t][b * 292..(b + 1) * 292];
                let mut isum = _mm256_setzero_si256();
                for (j, &qj) in q.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(qj, load(y, 4 + 32 * j));
                    isum = madd_acc::<VNNI>(isum, p, _mm256_set1_epi16(i16::from(sm[j])));
                }
                let msum = _mm256_madd_epi16(load(y, 260), mins);
                let dy = sc[t][b];
                let a0 =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dy), acc[r][t]);
                acc[r][t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(-dmin * dy), a0);
            }
        }
    }
    for r in 0..R {
        for t in 0..NT {
            out[r * g.ld + t] = hsum_ps(acc[r][t]);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn k4_avx2<const Q5: bool>(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, k4[Q5, false](g, a, out))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn k4_vnni<const Q5: bool>(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, k4[Q5, true](g, a, out))
}

/// `R` Q6_K rows against `NT` tokens: 6-bit codes (`ql` nibble | two `qh` bits) as unsigned,
/// each 32-code vector spanning two 16-value groups (one scale per 128-bit half); the −32
/// offset comes back as `32·Σ scale·bsum` from the Q8_K block sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn q6_k<const VNNI: bool, const R: usize, const NT: usize>(
    g: &Tile<'_>,
    a: &QActs,
    out: &mut [f32],
) {
    let nb = a.blocks();
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let rows: [&[u8]; R] = std::array::from_fn(|r| &g.w[r * g.row_bytes..(r + 1) * g.row_bytes]);
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let mut acc = [[_mm256_setzero_ps(); NT]; R];
    for b in 0..nb {
        for r in 0..R {
            let x = &rows[r][b * 210..(b + 1) * 210];
            let d = f16_at(x, 208);
            let s16 = _mm256_cvtepi8_epi16(load128(x, 192));
            let q: [__m256i; 8] = std::array::from_fn(|m| {
                let (n, k) = (m / 4, m % 4);
                let ql = load(x, 64 * n + 32 * (k % 2));
                let low = if k < 2 {
                    ql
                } else {
                    _mm256_srli_epi16::<4>(ql)
                };
                let qh = _mm256_srl_epi16(load(x, 128 + 32 * n), _mm_cvtsi32_si128(2 * k as i32));
                let high = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3));
                _mm256_or_si256(_mm256_and_si256(low, m4), high)
            });
            let sv: [__m256i; 8] = std::array::from_fn(|m| {
                let s = |i: usize| i16::from(x[192 + i] as i8);
                _mm256_set_m128i(_mm_set1_epi16(s(2 * m + 1)), _mm_set1_epi16(s(2 * m)))
            });
            for t in 0..NT {
                let y = &ys[t][b * 292..(b + 1) * 292];
                let mut isum = _mm256_setzero_si256();
                for m in 0..8 {
                    let p = _mm256_maddubs_epi16(q[m], load(y, 4 + 32 * m));
                    isum = madd_acc::<VNNI>(isum, p, sv[m]);
                }
                let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load(y, 260), s16));
                isum = _mm256_sub_epi32(isum, off);
                let dy = sc[t][b];
                acc[r][t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dy), acc[r][t]);
            }
        }
    }
    for r in 0..R {
        for t in 0..NT {
            out[r * g.ld + t] = hsum_ps(acc[r][t]);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn q6_k_avx2(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, q6_k[false](g, a, out))
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn q6_k_vnni(g: &Tile<'_>, a: &QActs, out: &mut [f32]) {
    by_shape!(g, q6_k[true](g, a, out))
}
