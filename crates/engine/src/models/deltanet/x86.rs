//! AVX2 + FMA bodies of the delta rule's f32 primitives (`kernels::F32Ops` for `Avx2`). Plain
//! f32 arithmetic in 8-lane registers; each keeps several accumulators so that independent
//! multiply-adds overlap. Each function checks its slice lengths once at the top and then loads
//! through raw pointers: per-load bounds checks cost as much as the arithmetic here.

use std::arch::x86_64::*;

use super::kernels::{MR, NR};

// `block` loads the `NR` rows of `b` by hand.
const _: () = assert!(NR == 2);

/// Eight floats from `p`.
///
/// # Safety
/// `p..p + 8` must be readable.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load(p: *const f32) -> __m256 {
    // SAFETY: the caller's contract; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(p) }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `a · b` (over the shorter length) in four accumulators.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (m, am) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8m + 8 ≤ i + 32 ≤ n, within both slices.
            let (x, y) = unsafe { (load(pa.add(i + 8 * m)), load(pb.add(i + 8 * m))) };
            *am = _mm256_fmadd_ps(x, y, *am);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n.
        let (x, y) = unsafe { (load(pa.add(i)), load(pb.add(i))) };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for j in i..n {
        s = a[j].mul_add(b[j], s);
    }
    s
}

/// `y += a · x` (over the shorter length).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n, within both slices; `y` is borrowed mutably, `x` is another slice.
        unsafe {
            let v = _mm256_fmadd_ps(av, load(px.add(i)), load(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
        }
        i += 8;
    }
    for j in i..n {
        y[j] = a.mul_add(x[j], y[j]);
    }
}

/// Dot products of `MR` rows of `a` with `NR` rows of `b` (each `k` long), `[c][r]`: eight
/// accumulators, six loads per eight multiply-adds.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn block(a: &[f32], b: &[f32], k: usize) -> [[f32; MR]; NR] {
    assert!(a.len() >= MR * k && b.len() >= NR * k);
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let k8 = k - k % 8;
    let mut p = 0;
    while p < k8 {
        // SAFETY: p + 8 ≤ k, and rows r < MR, c < NR start at r·k, c·k (lengths asserted).
        unsafe {
            let bv = [load(pb.add(p)), load(pb.add(k + p))];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = load(pa.add(r * k + p));
                for (acc_rc, &bc) in acc_r.iter_mut().zip(&bv) {
                    *acc_rc = _mm256_fmadd_ps(av, bc, *acc_rc);
                }
            }
        }
        p += 8;
    }
    let mut out = [[0f32; MR]; NR];
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, &v) in acc_r.iter().enumerate() {
            let mut s = hsum(v);
            for q in k8..k {
                s = a[r * k + q].mul_add(b[c * k + q], s);
            }
            out[c][r] = s;
        }
    }
    out
}

/// `row ← e · row + Σ_c coef_c · x_c` (rows `x_c` of `x`, each `row.len()` long), 32 columns
/// at a time held in four registers across every `c`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn update_row(row: &mut [f32], e: f32, coef: &[f32], x: &[f32]) {
    let n = row.len();
    assert!(x.len() >= coef.len() * n);
    let (pr, px) = (row.as_mut_ptr(), x.as_ptr());
    let ev = _mm256_set1_ps(e);
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 ≤ n; x_c spans c·n..(c + 1)·n within `x` (asserted).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (m, am) in acc.iter_mut().enumerate() {
                *am = _mm256_mul_ps(ev, load(pr.add(i + 8 * m)));
            }
            for (c, &cf) in coef.iter().enumerate() {
                let (cv, xc) = (_mm256_set1_ps(cf), px.add(c * n + i));
                for (m, am) in acc.iter_mut().enumerate() {
                    *am = _mm256_fmadd_ps(cv, load(xc.add(8 * m)), *am);
                }
            }
            for (m, am) in acc.iter().enumerate() {
                _mm256_storeu_ps(pr.add(i + 8 * m), *am);
            }
        }
        i += 32;
    }
    for j in i..n {
        let mut v = e * row[j];
        for (c, &cf) in coef.iter().enumerate() {
            v = cf.mul_add(x[c * n + j], v);
        }
        row[j] = v;
    }
}
