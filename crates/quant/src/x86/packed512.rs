//! Packed kernels on 512-bit registers: two consecutive groups (sixteen rows) per call, each
//! vector holding group A's eight rows in its low half and group B's in its high half, so one
//! `vpdpbusd` against four broadcast activation bytes serves sixteen rows (`packed.rs`'s
//! kernels serve eight). The layouts are `packed.rs`'s unchanged: the halves are loaded from
//! the two groups and joined (`vinserti64x4`), one extra shuffle per code vector against the
//! four or so dot instructions it feeds.
//!
//! Q4_K, Q5_K and Q6_K (the experts of the Q4_K_M files) and the legacy 32-value formats;
//! the arithmetic is `packed.rs`'s `k4`, `q6_k` and (VNNI flavour) `legacy` lane for lane,
//! which the tests hold to `vec_dot`. The joining by halves
//! keeps the per-row sums in the same order as the eight-row kernels', so the results match
//! them bit for bit. `LLM_SERVER_NO_ZMM=1` turns these kernels off (for comparisons).

use super::avx2::{load, load128};
use super::packed::{prefetch, GB, PREFETCH_BLOCKS};
use super::{IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::gemm::QActs;
use crate::iq4::KVALUES_IQ4NL;
use crate::packed::{PTile, PackedFn};
use gguf::GgmlType as T;
use std::arch::x86_64::*;

/// Dispatches a tile's token count (1 to [`PAIR_TILE`](crate::packed::PAIR_TILE)) to the
/// const-generic body.
macro_rules! by_nt {
    ($g:expr, $f:ident [$($p:tt),*] ($($arg:expr),*)) => {
        match $g.nt {
            1 => $f::<$($p,)* 1>($($arg),*),
            2 => $f::<$($p,)* 2>($($arg),*),
            3 => $f::<$($p,)* 3>($($arg),*),
            4 => $f::<$($p,)* 4>($($arg),*),
            5 => $f::<$($p,)* 5>($($arg),*),
            6 => $f::<$($p,)* 6>($($arg),*),
            7 => $f::<$($p,)* 7>($($arg),*),
            _ => $f::<$($p,)* 8>($($arg),*),
        }
    };
}

/// The pair kernels for this CPU: only with AVX-512 F/BW/VL and VNNI.
pub(crate) fn kernels() -> Vec<(T, PackedFn)> {
    if !super::has_avx512_vnni() {
        return Vec::new();
    }
    vec![
        (T::Q4_K, k4_pair::<false>),
        (T::Q5_K, k4_pair::<true>),
        (T::Q6_K, q6_k_pair),
        (T::Q4_0, legacy_pair::<Q4_0>),
        (T::Q4_1, legacy_pair::<Q4_1>),
        (T::Q5_0, legacy_pair::<Q5_0>),
        (T::Q5_1, legacy_pair::<Q5_1>),
        (T::Q8_0, legacy_pair::<Q8_0>),
        (T::IQ4_NL, legacy_pair::<IQ4_NL>),
    ]
}

/// Group A's 32 bytes at `at` in the low half, group B's in the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn join(a: &[u8], b: &[u8], at: usize) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(a, at)), load(b, at))
}

/// Eight bytes of each group at `at` (one per row), widened to sixteen i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn bytes16(a: &[u8], b: &[u8], at: usize) -> __m512i {
    let lo = u64::from_le_bytes(a[at..at + 8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    _mm512_cvtepu8_epi32(_mm_set_epi64x(hi as i64, lo as i64))
}

/// Eight f16 of each group at `at`, as sixteen f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
fn halves16(a: &[u8], b: &[u8], at: usize) -> __m512 {
    let h = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load128(a, at)), load128(b, at));
    _mm512_cvtph_ps(h)
}

/// Four bytes of `y` at `at` in every i32 lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn bcast(y: &[u8], at: usize) -> __m512i {
    let v: [u8; 4] = y[at..at + 4].try_into().expect("4 bytes");
    _mm512_set1_epi32(i32::from_le_bytes(v))
}

/// Writes lane `r` of `acc[t]` to `out[r·ld + t]` (rows 0–7 group A, 8–15 group B).
#[inline]
#[target_feature(enable = "avx512f")]
fn store<const NT: usize>(acc: &[__m512; NT], out: &mut [f32], ld: usize) {
    for (t, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` is 16 writable f32 and `storeu` needs no alignment.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (r, v) in lanes.iter().enumerate() {
            out[r * ld + t] = *v;
        }
    }
}

/// Groups A (`g.w`) and B (`g.w[g.stride..]`) of Q4_K (`Q5 = false`) or Q5_K against `NT`
/// tokens: `packed.rs`'s `k4` on sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4<const Q5: bool, const NT: usize>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    let (nb, gb, qs) = (
        a.blocks(),
        if Q5 { 1440 } else { 1184 },
        if Q5 { 416 } else { 160 },
    );
    let (wa, wb) = (g.w, &g.w[g.stride..]);
    let second = PTile { w: wb, ..*g };
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        for tile in [g, &second] {
            prefetch(tile, (b + PREFETCH_BLOCKS) * gb, gb);
        }
        let (xa, xb) = (&wa[b * gb..(b + 1) * gb], &wb[b * gb..(b + 1) * gb]);
        let y: [&[u8]; NT] = std::array::from_fn(|t| &ys[t][b * 292..(b + 1) * 292]);
        let mut isum = [_mm512_setzero_si512(); NT];
        let mut msum = [_mm512_setzero_si512(); NT];
        for j in 0..8 {
            let scj = bytes16(xa, xb, 32 + 8 * j);
            let mn = bytes16(xa, xb, 96 + 8 * j);
            let mn = _mm512_or_si512(mn, _mm512_slli_epi32::<16>(mn));
            let mut q = [_mm512_setzero_si512(); 8];
            for (c, qc) in q.iter_mut().enumerate() {
                let v = join(xa, xb, qs + 32 * (8 * (j / 2) + c));
                let v = if j % 2 == 0 {
                    _mm512_and_si512(v, m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4)
                };
                *qc = if Q5 {
                    // Bit j of each byte to bit 4 (|j − 4| ≤ 4: no bit crosses a byte).
                    let hb = join(xa, xb, 160 + 32 * c);
                    let hb = if j <= 4 {
                        _mm512_sll_epi16(hb, _mm_cvtsi32_si128(4 - j as i32))
                    } else {
                        _mm512_srl_epi16(hb, _mm_cvtsi32_si128(j as i32 - 4))
                    };
                    _mm512_or_si512(v, _mm512_and_si512(hb, _mm512_set1_epi8(0x10)))
                } else {
                    v
                };
            }
            for t in 0..NT {
                let mut s = _mm512_setzero_si512();
                for (c, &qc) in q.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, qc, bcast(y[t], 4 + 32 * j + 4 * c));
                }
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s, scj));
                let bs = bcast(y[t], 260 + 4 * j);
                msum[t] = _mm512_add_epi32(msum[t], _mm512_madd_epi16(mn, bs));
            }
        }
        let (d, dmin) = (halves16(xa, xb, 0), halves16(xa, xb, 16));
        for t in 0..NT {
            let dy = _mm512_set1_ps(sc[t][b]);
            let a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, dy), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[t]), _mm512_mul_ps(dmin, dy), a0);
        }
    }
    store(&acc, out, g.ld);
}

/// Groups A and B of Q6_K against `NT` tokens: `packed.rs`'s `q6_k` on sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k<const NT: usize>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    let nb = a.blocks();
    let (wa, wb) = (g.w, &g.w[g.stride..]);
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let (m4, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let (xa, xb) = (&wa[b * 1680..(b + 1) * 1680], &wb[b * 1680..(b + 1) * 1680]);
        let y: [&[u8]; NT] = std::array::from_fn(|t| &ys[t][b * 292..(b + 1) * 292]);
        let mut isum = [_mm512_setzero_si512(); NT];
        let mut off = [_mm512_setzero_si512(); NT];
        for s in 0..8 {
            let (n, k) = (s / 4, s % 4);
            let mut q = [_mm512_setzero_si512(); 8];
            for (c, qc) in q.iter_mut().enumerate() {
                let ql = join(xa, xb, 144 + 32 * (16 * n + 8 * (k % 2) + c));
                let low = if k < 2 {
                    _mm512_and_si512(ql, m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4)
                };
                let qh = join(xa, xb, 1168 + 32 * (8 * n + c));
                let qh = match k {
                    0 => _mm512_slli_epi16::<4>(qh),
                    1 => _mm512_slli_epi16::<2>(qh),
                    2 => qh,
                    _ => _mm512_srli_epi16::<2>(qh),
                };
                *qc = _mm512_or_si512(low, _mm512_and_si512(qh, m30));
            }
            let both = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(load128(xa, 16 + 16 * s)),
                load128(xb, 16 + 16 * s),
            );
            let pair = _mm512_cvtepi8_epi16(both);
            let sc_lo = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pair));
            let sc_hi = _mm512_srai_epi32::<16>(pair);
            for t in 0..NT {
                let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for c in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, q[c], bcast(y[t], 4 + 32 * s + 4 * c));
                    hi = _mm512_dpbusd_epi32(hi, q[c + 4], bcast(y[t], 20 + 32 * s + 4 * c));
                }
                let scaled =
                    _mm512_add_epi32(_mm512_mullo_epi32(lo, sc_lo), _mm512_mullo_epi32(hi, sc_hi));
                isum[t] = _mm512_add_epi32(isum[t], scaled);
                let bs = bcast(y[t], 260 + 4 * s);
                off[t] = _mm512_add_epi32(off[t], _mm512_madd_epi16(pair, bs));
            }
        }
        let d = halves16(xa, xb, 0);
        for t in 0..NT {
            let i = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<5>(off[t]));
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(sc[t][b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), dd, acc[t]);
        }
    }
    store(&acc, out, g.ld);
}

/// An eight-row kernel `f` on group A, then on group B (rows 8–15 of `out`): what a pair
/// kernel does where the eight-row form is the faster one.
#[inline]
fn group_by_group(
    g: &PTile<'_>,
    a: &QActs,
    out: &mut [f32],
    f: impl Fn(&PTile<'_>, &QActs, &mut [f32]),
) {
    f(g, a, out);
    let second = PTile {
        w: &g.w[g.stride..],
        ..*g
    };
    f(&second, a, &mut out[8 * g.ld..]);
}

/// Q6_K pairs for two or more tokens; a decode step (one token) keeps the eight-row kernel,
/// whose one-token form shares its `ql`/`qh` loads across four chunks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_pair(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    match g.nt {
        1 => group_by_group(g, a, out, |g, a, o| super::packed::q6_k_vnni(g, a, o)),
        _ => by_nt!(g, q6_k[](g, a, out)),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_pair<const Q5: bool>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    by_nt!(g, k4[Q5](g, a, out))
}

/// Code vector `c` (values `4c..4c+4` of each row) of both groups' legacy group-blocks:
/// unsigned for the 4/5-bit formats, `code + 128` for Q8_0 and IQ4_NL (`packed.rs`'s
/// `legacy_code`, VNNI flavour).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn legacy_code<const K: u8>(xa: &[u8], xb: &[u8], c: usize, iq4: __m512i) -> __m512i {
    let m4 = _mm512_set1_epi8(0x0F);
    let qs = [16, 32, 48, 64, 16, 16][K as usize];
    if K == Q8_0 {
        return _mm512_xor_si512(join(xa, xb, qs + 32 * c), _mm512_set1_epi8(-128));
    }
    let v = join(xa, xb, qs + 32 * (c % 4));
    let q = if c < 4 {
        _mm512_and_si512(v, m4)
    } else {
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4)
    };
    match K {
        Q5_0 | Q5_1 => {
            // Bit c of each byte to bit 4 (|c − 4| ≤ 4: no bit crosses a byte).
            let hb = join(xa, xb, if K == Q5_0 { 16 } else { 32 });
            let hb = if c <= 4 {
                _mm512_sll_epi16(hb, _mm_cvtsi32_si128(4 - c as i32))
            } else {
                _mm512_srl_epi16(hb, _mm_cvtsi32_si128(c as i32 - 4))
            };
            _mm512_or_si512(q, _mm512_and_si512(hb, _mm512_set1_epi8(0x10)))
        }
        IQ4_NL => _mm512_shuffle_epi8(iq4, q),
        _ => q,
    }
}

/// Groups A and B of legacy tag `K` against `NT` tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy<const K: u8, const NT: usize>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    let (nb, gb) = (a.blocks(), GB[K as usize]);
    let ab = if K == Q4_1 || K == Q5_1 { 36 } else { 34 };
    let (wa, wb) = (g.w, &g.w[g.stride..]);
    let ys: [&[u8]; NT] = std::array::from_fn(|t| a.row(g.t0 + t));
    let sc: [&[f32]; NT] = std::array::from_fn(|t| a.scales(g.t0 + t));
    let sm: [&[f32]; NT] = std::array::from_fn(|t| a.sums(g.t0 + t));
    let iq4 = {
        let t = KVALUES_IQ4NL.map(|v| (i16::from(v) + 128) as u8);
        _mm512_broadcast_i32x4(load128(&t, 0))
    };
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let (xa, xb) = (&wa[b * gb..(b + 1) * gb], &wb[b * gb..(b + 1) * gb]);
        let d = halves16(xa, xb, 0);
        let m = match K {
            Q4_1 | Q5_1 => halves16(xa, xb, 16),
            Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
            _ => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        };
        let q: [__m512i; 8] = std::array::from_fn(|c| legacy_code::<K>(xa, xb, c, iq4));
        for t in 0..NT {
            let y = &ys[t][b * ab..(b + 1) * ab];
            let mut isum = _mm512_setzero_si512();
            for (c, &qc) in q.iter().enumerate() {
                isum = _mm512_dpbusd_epi32(isum, qc, bcast(y, ab - 32 + 4 * c));
            }
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(sc[t][b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, acc[t]);
            acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(sm[t][b]), acc[t]);
        }
    }
    store(&acc, out, g.ld);
}

/// Legacy pairs for two or more tokens; a decode step keeps the eight-row kernel and its
/// prefetch (legacy blocks are small: decode streams them from memory).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn legacy_pair<const K: u8>(g: &PTile<'_>, a: &QActs, out: &mut [f32]) {
    match g.nt {
        1 => group_by_group(g, a, out, |g, a, o| {
            super::packed::legacy_vnni::<K>(g, a, o)
        }),
        _ => by_nt!(g, legacy[K](g, a, out)),
    }
}
