//! Kernels for packed groups of eight rows (layouts: `packed.rs`): one group against up to
//! four tokens, each lane of a vector one row.
//!
//! A code vector holds four consecutive codes of each row; its product with four activation
//! bytes broadcast to all lanes (`vpdpbusd`, or `maddubs` + `madd` on AVX2) adds those four
//! values' products to each row's i32 lane. Per block the lanes are scaled by the rows' `d`
//! (one `vcvtph2ps` of eight f16) times the token's scale and added to f32 lanes; offsets and
//! mins come back through the activations' block sums as in the tile kernels. Code vectors
//! are unpacked once per group-block and reused for every token.
//!
//! Unsigned codes need no fix-up. The signed formats (Q8_0, IQ4_NL) take `code + 128` with
//! VNNI (whose `vpdpbusd` cannot saturate) and an offset of `−128·d`; AVX2's `maddubs` would
//! saturate its i16 pair sums there, so that flavour keeps ggml's `|x|·sign(y, x)` identity.

use super::avx2::{load, load128, mul_sum_u8};
use crate::gemm::QActs;
use crate::iq4::KVALUES_IQ4NL;
use crate::packed::{PTile, PackedFn};
use gguf::GgmlType as T;
use std::arch::x86_64::*;

use super::{dpbusd, IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// Group-blocks ahead that the kernels prefetch (into the next group: `PTile::w` runs on to
/// the end of the packed rows). Streaming weights from DRAM, the hardware prefetchers alone
/// left decode ~7% slower on the development machine.
pub(super) const PREFETCH_BLOCKS: usize = 2;

/// Group-block bytes per legacy tag.
pub(super) const GB: [usize; 6] = [144, 160, 176, 192, 272, 144];

/// Dispatches a tile's token count to the const-generic body.
macro_rules! by_nt {
    ($g:expr, $f:ident [$($p:tt),*] ($($arg:expr),*)) => {
        match $g.nt {
            1 => $f::<$($p,)* 1>($($arg),*),
            2 => $f::<$($p,)* 2>($($arg),*),
            3 => $f::<$($p,)* 3>($($arg),*),
            _ => $f::<$($p,)* 4>($($arg),*),
        }
    };
}

/// The packed kernels for the CPU's features.
pub(crate) fn kernels(vnni: bool) -> Vec<(T, PackedFn)> {
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

/// Four bytes of `b` at `at` in every i32 lane.
#[inline]
#[target_feature(enable = "avx2")]
fn bcast(b: &[u8], at: usize) -> __m256i {
    // One bounds check and one 4-byte load (indexing the bytes one by one compiled to four
    // byte loads and shifts where the offset is not a constant).
    let v: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
    _mm256_set1_epi32(i32::from_le_bytes(v))
}

/// Asks for the cache lines of `g.w[at..at + len]` (those inside it) ahead of use, if the
/// tile prefetches.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn prefetch(g: &PTile<'_>, at: usize, len: usize) {
    if !g.prefetch {
        return;
    }
    let b = g.w;
    for off in (at..(at + len).min(b.len())).step_by(64) {
        // SAFETY: `off < b.len()`; a prefetch never faults anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().add(off).cast()) };
    }
}

/// Eight bytes of `b` at `at` in the low half of a vector.
#[inline]
#[target_feature(enable = "avx2")]
fn load64(b: &[u8], at: usize) -> __m128i {
    let v = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    _mm_cvtsi64_si128(v as i64)
}

/// Eight f16 at `at` as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn halves(b: &[u8], at: usize) -> __m256 {
    _mm256_cvtph_ps(load128(b, at))
}

/// `acc` plus the four-byte dots of unsigned `u` (`maddubs`-safe on AVX2: pair sums within
/// i16) and signed `y`.
#[inline]
#[target_feature(enable = "avx2")]
fn dp<const VNNI: bool>(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: only the `_vnni` entry points, handed out only on CPUs with AVX512-VNNI/VL,
        // instantiate `VNNI = true`.
        unsafe { dpbusd(acc, u, y) }
    } else {
        _mm256_add_epi32(acc, mul_sum_u8(u, y))
    }
}

/// Bit `from` of each byte of `v` moved to bit `to` (other bits: garbage to be masked;
/// `|from − to| ≤ 4`, so no bit crosses into the bit kept in the neighbouring byte).
#[inline]
#[target_feature(enable = "avx2")]
fn move_bits(v: __m256i, from: i32, to: i32) -> __m256i {
    if to >= from {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128(to - from))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(from - to))
    }
}

/// Writes lane `r` of `acc[t]` to `out[r·ld + t]`.
#[inline]
#[target_feature(enable = "avx2")]
fn store<const NT: usize>(acc: &[__m256; NT], out: &mut [f32], ld: usize) {
    for (t, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 writable f32 and `storeu` needs no alignment.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (r, v) in lanes.iter().enumerate() {
            out[r * ld + t] = *v;
        }
    }
}

/// Code vector `c` (values `4c..4c+4` of each row) of a legacy group-block: unsigned for
/// the 4/5-bit formats; for Q8_0/IQ4_NL `code + 128` with VNNI, the signed code without.
#[inline]
#[target_feature(enable = "avx2")]
fn legacy_code<const K: u8, const VNNI: bool>(x: &[u8], c: usize, iq4: __m256i) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    let qs = [16, 32, 48, 64, 16, 16][K as usize];
    if K == Q8_0 {
        let q = load(x, qs + 32 * c);
        return if VNNI {
            _mm256_xor_si256(q, _mm256_set1_epi8(-128))
        } else {
            q
        };
    }
    let v = load(x, qs + 32 * (c % 4));
    let q = if c < 4 {
        _mm256_and_si256(v, m4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
    };
    match K {
        Q5_0 | Q5_1 => {
            let hb = load(x, if K == Q5_0 { 16 } else { 32 });
            let high = _mm256_and_si256(move_bits(hb, c as i32, 4), _mm256_set1_epi8(0x10));
            _mm256_or_si256(q, high)
        }
        IQ4_NL => _mm256_shuffle_epi8(iq4, q),
        _ => q,
    }
}

/// One group of legacy tag `K` against `NT` tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn legacy<const K: u8, const VNNI: bool, const NT: usize>(
    g: &PTile<'_>,
    a: &QActs,
    out: &mut [f32],
) {
    let signed = K == Q8_0 || K == IQ4_NL;
    // AVX2 runs the signed formats through the sign identity, with no offset term.
    let sign_trick = signed && !VNNI;
    let (nb, gb) = (a.blocks(), GB[K as usize]);
    let ab = if K == Q4_1 || K == Q5_1 { 36 } else { 34 };
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let sm: [&[f32]; NT] = std::array::from_fn(|t| {
        if sign_trick {
            &[][..]
        } else {
            a.sums(g.t0 + t)
        }
    });
    let iq4 = {
        let shift = if VNNI { 128 } else { 0 };
        let t = KVALUES_IQ4NL.map(|v| (i16::from(v) + shift) as u8);
        _mm256_broadcastsi128_si256(load128(&t, 0))
    };
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        // Decode only, and one prefetch per four blocks: legacy blocks are small, and the
        // per-block prefetch cost a quarter of the batched kernel's speed on cache-resident
        // weights (a prompt streams each group once for eight token tiles anyway).
        if NT == 1 && b % 4 == 0 {
            prefetch(g, (b + 4 * PREFETCH_BLOCKS) * gb, 4 * gb);
        }
        let x = &g.w[b * gb..(b + 1) * gb];
        let d = halves(x, 0);
        let m = match K {
            Q4_1 | Q5_1 => halves(x, 16),
            Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
            Q5_0 => _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
            _ => _mm256_mul_ps(d, _mm256_set1_ps(-128.0)),
        };
        let q: [__m256i; 8] = std::array::from_fn(|c| legacy_code::<K, VNNI>(x, c, iq4));
        let u: [__m256i; 8] = if sign_trick {
            q.map(|v| _mm256_abs_epi8(v))
        } else {
            q
        };
        for t in 0..NT {
            let y = &ys[t][b * ab..(b + 1) * ab];
            let mut isum = _mm256_setzero_si256();
            for c in 0..8 {
                let mut yv = bcast(y, ab - 32 + 4 * c);
                if sign_trick {
                    yv = _mm256_sign_epi8(yv, q[c]);
                }
                isum = dp::<VNNI>(isum, u[c], yv);
            }
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(sc[t][b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd, acc[t]);
            if !sign_trick {
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(sm[t][b]), acc[t]);
            }
        }
    }
    store(&acc, out, g.ld);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn legacy_avx2<const K: u8>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, legacy[K, false](g, a, out))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) fn legacy_vnni<const K: u8>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, legacy[K, true](g, a, out))
}

/// One group of Q4_K (`Q5 = false`) or Q5_K against `NT` tokens. Per sub-block of 32 values:
/// eight code vectors, their dots per token summed in i32 and multiplied by the rows' 6-bit
/// scales (`vpmulld`); the mins times the Q8_K sub-block sums through one `madd` (min
/// duplicated in both i16 halves of a lane against the two 16-value sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4<const Q5: bool, const VNNI: bool, const NT: usize>(
    g: &PTile<'_>,
    a: &QActs,
    out: &mut [f32],
) {
    let (nb, gb, qs) = (
        a.blocks(),
        if Q5 { 1440 } else { 1184 },
        if Q5 { 416 } else { 160 },
    );
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        prefetch(g, (b + PREFETCH_BLOCKS) * gb, gb);
        let x = &g.w[b * gb..(b + 1) * gb];
        let y: [&[u8]; NT] = std::array::from_fn(|t| &ys[t][b * 292..(b + 1) * 292]);
        let mut isum = [_mm256_setzero_si256(); NT];
        let mut msum = [_mm256_setzero_si256(); NT];
        for j in 0..8 {
            let scj = _mm256_cvtepu8_epi32(load64(x, 32 + 8 * j));
            let mn = _mm256_cvtepu8_epi32(load64(x, 96 + 8 * j));
            let mn = _mm256_or_si256(mn, _mm256_slli_epi32::<16>(mn));
            let mut q = [_mm256_setzero_si256(); 8];
            for (c, qc) in q.iter_mut().enumerate() {
                let v = load(x, qs + 32 * (8 * (j / 2) + c));
                let v = if j % 2 == 0 {
                    _mm256_and_si256(v, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
                };
                *qc = if Q5 {
                    let hb = move_bits(load(x, 160 + 32 * c), j as i32, 4);
                    _mm256_or_si256(v, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)))
                } else {
                    v
                };
            }
            for t in 0..NT {
                let mut s = _mm256_setzero_si256();
                for (c, &qc) in q.iter().enumerate() {
                    s = dp::<VNNI>(s, qc, bcast(y[t], 4 + 32 * j + 4 * c));
                }
                isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(s, scj));
                let bs = bcast(y[t], 260 + 4 * j);
                msum[t] = _mm256_add_epi32(msum[t], _mm256_madd_epi16(mn, bs));
            }
        }
        let (d, dmin) = (halves(x, 0), halves(x, 16));
        for t in 0..NT {
            let dy = _mm256_set1_ps(sc[t][b]);
            let a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dy), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[t]), _mm256_mul_ps(dmin, dy), a0);
        }
    }
    store(&acc, out, g.ld);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn k4_avx2<const Q5: bool>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, k4[Q5, false](g, a, out))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn k4_vnni<const Q5: bool>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, k4[Q5, true](g, a, out))
}

/// One group of Q6_K against `NT` tokens. Per chunk of 32 values (two 16-value scale
/// groups): eight code vectors of `ql` nibble | two `qh` bits, dots summed per scale group
/// and multiplied by the rows' signed scales; the −32 offset as `32·Σ scale·bsum` through one
/// `madd` of the rows' scale pair against the Q8_K pair of 16-value sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k<const VNNI: bool, const NT: usize>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    if NT == 1 {
        return q6_k_one::<VNNI>(g, a, out);
    }
    let nb = a.blocks();
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        prefetch(g, (b + PREFETCH_BLOCKS) * 1680, 1680);
        let x = &g.w[b * 1680..(b + 1) * 1680];
        let y: [&[u8]; NT] = std::array::from_fn(|t| &ys[t][b * 292..(b + 1) * 292]);
        let mut isum = [_mm256_setzero_si256(); NT];
        let mut off = [_mm256_setzero_si256(); NT];
        for s in 0..8 {
            let (n, k) = (s / 4, s % 4);
            let mut q = [_mm256_setzero_si256(); 8];
            for (c, qc) in q.iter_mut().enumerate() {
                let ql = load(x, 144 + 32 * (16 * n + 8 * (k % 2) + c));
                let low = if k < 2 {
                    _mm256_and_si256(ql, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4)
                };
                let qh = load(x, 1168 + 32 * (8 * n + c));
                // Immediate shifts: the count-in-register form is two µops.
                let qh = match k {
                    0 => _mm256_slli_epi16::<4>(qh),
                    1 => _mm256_slli_epi16::<2>(qh),
                    2 => qh,
                    _ => _mm256_srli_epi16::<2>(qh),
                };
                *qc = _mm256_or_si256(low, _mm256_and_si256(qh, m30));
            }
            let pair = _mm256_cvtepi8_epi16(load128(x, 16 + 16 * s));
            let sc_lo = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pair));
            let sc_hi = _mm256_srai_epi32::<16>(pair);
            for t in 0..NT {
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for c in 0..4 {
                    lo = dp::<VNNI>(lo, q[c], bcast(y[t], 4 + 32 * s + 4 * c));
                    hi = dp::<VNNI>(hi, q[c + 4], bcast(y[t], 20 + 32 * s + 4 * c));
                }
                let scaled =
                    _mm256_add_epi32(_mm256_mullo_epi32(lo, sc_lo), _mm256_mullo_epi32(hi, sc_hi));
                isum[t] = _mm256_add_epi32(isum[t], scaled);
                let bs = bcast(y[t], 260 + 4 * s);
                off[t] = _mm256_add_epi32(off[t], _mm256_madd_epi16(pair, bs));
            }
        }
        let d = halves(x, 0);
        for t in 0..NT {
            let i = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(off[t]));
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(sc[t][b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), dd, acc[t]);
        }
    }
    store(&acc, out, g.ld);
}

/// [`q6_k`] for one token (decode): the four chunks that share a quad's `ql` and `qh` loads
/// are unpacked together (each load feeds two or four code vectors) and summed in eight
/// accumulators, one per (chunk, scale group).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_one<const VNNI: bool>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    let nb = a.blocks();
    let ys = a.row(g.t0);
    let sc = a.scales(g.t0);
    let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        prefetch(g, (b + PREFETCH_BLOCKS) * 1680, 1680);
        let x = &g.w[b * 1680..(b + 1) * 1680];
        let y = &ys[b * 292..(b + 1) * 292];
        let mut isum = _mm256_setzero_si256();
        let mut off = _mm256_setzero_si256();
        for n in 0..2 {
            // sums[k][h]: chunk 4n + k, scale group h (values 0..16 or 16..32 of the chunk).
            let mut sums = [[_mm256_setzero_si256(); 2]; 4];
            for c in 0..8 {
                let ql0 = load(x, 144 + 32 * (16 * n + c));
                let ql1 = load(x, 144 + 32 * (16 * n + 8 + c));
                let qh = load(x, 1168 + 32 * (8 * n + c));
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let at = 4 + 32 * (4 * n + k) + 4 * c;
                    sums[k][c / 4] = dp::<VNNI>(sums[k][c / 4], qk, bcast(y, at));
                }
            }
            for (k, [lo, hi]) in sums.into_iter().enumerate() {
                let s = 4 * n + k;
                let pair = _mm256_cvtepi8_epi16(load128(x, 16 + 16 * s));
                let sc_lo = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pair));
                let sc_hi = _mm256_srai_epi32::<16>(pair);
                isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(lo, sc_lo));
                isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(hi, sc_hi));
                off = _mm256_add_epi32(off, _mm256_madd_epi16(pair, bcast(y, 260 + 4 * s)));
            }
        }
        let i = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(off));
        let dd = _mm256_mul_ps(halves(x, 0), _mm256_set1_ps(sc[b]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), dd, acc);
    }
    store(&[acc], out, g.ld);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_avx2(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, q6_k[false](g, a, out))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) fn q6_k_vnni(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, q6_k[true](g, a, out))
}
