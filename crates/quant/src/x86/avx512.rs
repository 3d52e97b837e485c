//! AVX-512 kernels for Q8_0 (with a VNNI variant) and the float rows, bit-exact with
//! `dot::scalar` for Q8_0 and within f64 rounding for floats (see `avx2.rs`).
//!
//! Q8_0 takes four blocks per step: their integer sums are reduced together with `hadd`
//! (fewer shuffles than four separate reductions), then added to `sumf` block by block in
//! the scalar order.

use super::avx2::{f16_at, load};
use crate::dot::scalar;
use std::arch::x86_64::*;

/// `acc + Σ4 (x * y)` of unsigned `x` and signed `y` bytes: `vpdpbusd` when `VNNI`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn dot_u8i8<const VNNI: bool>(x: __m256i, y: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: `VNNI = true` bodies are only called from `q8_0_vnni`, which is compiled
        // with avx512vnni and only tabled after detecting it.
        unsafe { dpbusd(x, y) }
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }
}

/// `vpdpbusd` from zero.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
fn dpbusd(x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
}

/// The integer sum of one Q8_0 block pair: `|x| * sign(y, x)` (`y != -128`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn block_sum<const VNNI: bool>(x: &[u8], y: &[u8]) -> __m256i {
    let (qx, qy) = (load(x, 2), load(y, 2));
    dot_u8i8::<VNNI>(_mm256_abs_epi8(qx), _mm256_sign_epi8(qy, qx))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q8_0_body<const VNNI: bool>(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    let (w4, a4) = (w.chunks_exact(4 * 34), a.chunks_exact(4 * 34));
    let (w_rest, a_rest) = (w4.remainder(), a4.remainder());
    for (x, y) in w4.zip(a4) {
        let s: [__m256i; 4] =
            std::array::from_fn(|b| block_sum::<VNNI>(&x[34 * b..], &y[34 * b..]));
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
        let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        let mut sumi = [0i32; 4];
        // SAFETY: `sumi` is 16 writable bytes and `storeu` needs no alignment.
        unsafe { _mm_storeu_si128(sumi.as_mut_ptr().cast(), sums) };
        for (b, &si) in sumi.iter().enumerate() {
            sumf += si as f32 * (f16_at(x, 34 * b) * f16_at(y, 34 * b));
        }
    }
    for (x, y) in w_rest.chunks_exact(34).zip(a_rest.chunks_exact(34)) {
        let s = block_sum::<VNNI>(x, y);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let si = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)));
        sumf += si as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sumf
}

/// `ggml_vec_dot_q8_0_q8_0`: see `scalar::q8_0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    q8_0_body::<false>(w, a)
}

/// [`q8_0`] with VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn q8_0_vnni(w: &[u8], a: &[u8]) -> f32 {
    q8_0_body::<true>(w, a)
}

/// Sixteen values of a float row at element `i`, widened to f32 (as `avx2::widen8`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
fn widen16<const BYTES: usize, const BF: bool>(b: &[u8], i: usize) -> __m512 {
    match (BYTES, BF) {
        (4, _) => {
            let s = &b[4 * i..4 * i + 64];
            // SAFETY: `s` is 64 readable bytes and `loadu` needs no alignment.
            unsafe { _mm512_loadu_ps(s.as_ptr().cast()) }
        }
        (_, false) => _mm512_cvtph_ps(load(b, 2 * i)),
        (_, true) => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(load(
            b,
            2 * i,
        )))),
    }
}

/// Float-row dot: f32 products of 32 values at a time summed in four f64 zmm, then the
/// tail through `tail` (the scalar f64 sum).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn float_dot<const BYTES: usize, const BF: bool>(
    w: &[u8],
    a: &[u8],
    tail: fn(&[u8], &[u8]) -> f64,
) -> f32 {
    let n = w.len() / BYTES;
    let mut acc = [_mm512_setzero_pd(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for h in 0..2 {
            let p = _mm512_mul_ps(
                widen16::<BYTES, BF>(w, i + 16 * h),
                widen16::<BYTES, BF>(a, i + 16 * h),
            );
            let lo = _mm512_castps512_ps256(p);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(p)));
            acc[2 * h] = _mm512_add_pd(acc[2 * h], _mm512_cvtps_pd(lo));
            acc[2 * h + 1] = _mm512_add_pd(acc[2 * h + 1], _mm512_cvtps_pd(hi));
        }
        i += 32;
    }
    let v = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
    let s = _mm512_reduce_add_pd(v);
    (s + tail(&w[i * BYTES..], &a[i * BYTES..])) as f32
}

/// `ggml_vec_dot_f32` with the scalar branch's f64 sum: see `scalar::f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn f32(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<4, false>(w, a, scalar::f32_sum)
}

/// `ggml_vec_dot_f16` with the scalar branch's f64 sum: see `scalar::f16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn f16(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<2, false>(w, a, scalar::f16_sum)
}

/// `ggml_vec_dot_bf16` with the scalar branch's f64 sum: see `scalar::bf16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn bf16(w: &[u8], a: &[u8]) -> f32 {
    float_dot::<2, true>(w, a, scalar::bf16_sum)
}
