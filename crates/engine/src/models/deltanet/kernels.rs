//! The f32 loops of the delta rule behind one trait, [`F32Ops`], with two implementations: a
//! portable one in plain Rust (what the baseline x86-64 build vectorises with SSE2), and AVX2 +
//! FMA intrinsics (`x86.rs`) for the CPUs that have them, reached only through a token that
//! [`Avx2::detect`] hands out after checking the CPU. Callers are generic over the trait, so the
//! delta rule is written once.

/// Rows of `a` and of `b` per register block of [`gemm_nt`].
pub(super) const MR: usize = 4;
pub(super) const NR: usize = 2;

/// The f32 primitives the delta rule is built from.
pub(super) trait F32Ops: Copy {
    /// `a · b`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// `y += a · x`.
    fn axpy(self, y: &mut [f32], a: f32, x: &[f32]);
    /// Dot products of the `MR` rows of `a` with the `NR` rows of `b` (all `k` long):
    /// `[c][r] = a_r · b_c`.
    fn block(self, a: &[f32], b: &[f32], k: usize) -> [[f32; MR]; NR];
    /// `row ← e · row + Σ_c coef_c · x_c` for the rows `x_c` of `x` (each `row.len()` long).
    fn update_row(self, row: &mut [f32], e: f32, coef: &[f32], x: &[f32]);
}

/// Plain Rust, for any CPU.
#[derive(Clone, Copy, Debug)]
pub(super) struct Portable;

impl F32Ops for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        crate::ops::dot(a, b)
    }

    #[inline(always)]
    fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(e, &v)| *e += a * v);
    }

    #[inline(always)]
    fn block(self, a: &[f32], b: &[f32], k: usize) -> [[f32; MR]; NR] {
        let mut out = [[0f32; MR]; NR];
        for (c, oc) in out.iter_mut().enumerate() {
            for (r, o) in oc.iter_mut().enumerate() {
                *o = self.dot(&a[r * k..(r + 1) * k], &b[c * k..(c + 1) * k]);
            }
        }
        out
    }

    #[inline(always)]
    fn update_row(self, row: &mut [f32], e: f32, coef: &[f32], x: &[f32]) {
        let n = row.len();
        row.iter_mut().for_each(|v| *v *= e);
        for (&c, xc) in coef.iter().zip(x.chunks_exact(n)) {
            self.axpy(row, c, xc);
        }
    }
}

/// Proof that this CPU has AVX2 and FMA; its methods run `x86.rs`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token, if the CPU has the features (std checks once and caches).
    pub(super) fn detect() -> Option<Avx2> {
        let ok = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        ok.then_some(Avx2(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl F32Ops for Avx2 {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: an `Avx2` exists only where `detect` found AVX2 and FMA.
        unsafe { super::x86::dot(a, b) }
    }

    #[inline(always)]
    fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: as in `dot`.
        unsafe { super::x86::axpy(y, a, x) }
    }

    #[inline(always)]
    fn block(self, a: &[f32], b: &[f32], k: usize) -> [[f32; MR]; NR] {
        // SAFETY: as in `dot`.
        unsafe { super::x86::block(a, b, k) }
    }

    #[inline(always)]
    fn update_row(self, row: &mut [f32], e: f32, coef: &[f32], x: &[f32]) {
        // SAFETY: as in `dot`.
        unsafe { super::x86::update_row(row, e, coef, x) }
    }
}

/// Which entries of [`gemm_nt`]'s result are wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// All.
    Full,
    /// `i ≤ j` (a causal Gram matrix); the others may be left stale.
    Lower,
}

/// `out[j][i] = a_i · b_j` for the rows `a_i` of `a` and `b_j` of `b` (each `k` long); `out` is
/// `n_b × n_a`, row-major. Register blocks of `MR × NR` rows where they fit.
#[inline(always)]
pub(super) fn gemm_nt<K: F32Ops>(
    ops: K,
    (a, b): (&[f32], &[f32]),
    k: usize,
    out: &mut [f32],
    part: Part,
) {
    let (na, nb) = (a.len() / k, b.len() / k);
    let first = |i: usize| if part == Part::Lower { i - i % NR } else { 0 };
    let mut i = 0;
    while i + MR <= na {
        let mut j = first(i);
        while j + NR <= nb {
            let acc = ops.block(&a[i * k..(i + MR) * k], &b[j * k..(j + NR) * k], k);
            for (c, row) in acc.iter().enumerate() {
                out[(j + c) * na + i..(j + c) * na + i + MR].copy_from_slice(row);
            }
            j += NR;
        }
        for j in j..nb {
            for r in i..i + MR {
                out[j * na + r] = ops.dot(&a[r * k..(r + 1) * k], &b[j * k..(j + 1) * k]);
            }
        }
        i += MR;
    }
    for r in i..na {
        for j in first(r)..nb {
            out[j * na + r] = ops.dot(&a[r * k..(r + 1) * k], &b[j * k..(j + 1) * k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_paths(f: impl Fn(&dyn Fn(&[f32], &[f32], usize) -> Vec<f32>)) {
        f(&|a, b, k| {
            let mut out = vec![0f32; a.len() / k * b.len() / k];
            gemm_nt(Portable, (a, b), k, &mut out, Part::Full);
            out
        });
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = Avx2::detect() {
            f(&|a, b, k| {
                let mut out = vec![0f32; a.len() / k * b.len() / k];
                gemm_nt(avx2, (a, b), k, &mut out, Part::Full);
                out
            });
        }
    }

    #[test]
    fn gemm_nt_matches_dots_with_ragged_edges() {
        for k in [37, 64, 128] {
            let a: Vec<f32> = (0..7 * k)
                .map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8)
                .collect();
            let b: Vec<f32> = (0..5 * k)
                .map(|i| ((i * 7) % 11) as f32 * 0.2 - 1.0)
                .collect();
            check_paths(|gemm| {
                let out = gemm(&a, &b, k);
                for j in 0..5 {
                    for i in 0..7 {
                        let want: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                        assert!((out[j * 7 + i] - want).abs() < 1e-3, "k {k}: {i} {j}");
                    }
                }
            });
        }
    }

    #[test]
    fn update_row_paths_agree() {
        let (n, len) = (40, 5);
        let x: Vec<f32> = (0..n * len)
            .map(|i| ((i * 5) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let coef = [0.5, -1.0, 0.25, 2.0, -0.125];
        let row0: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mut want = row0.clone();
        Portable.update_row(&mut want, 0.9, &coef, &x);
        let expect0 = 0.9 * row0[3] + (0..len).map(|c| coef[c] * x[c * n + 3]).sum::<f32>();
        assert!((want[3] - expect0).abs() < 1e-5);
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = Avx2::detect() {
            let mut got = row0.clone();
            avx2.update_row(&mut got, 0.9, &coef, &x);
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        }
    }
}
