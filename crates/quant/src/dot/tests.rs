//! The dot-product tester (STYLE §9): every case runs through every path this CPU has and
//! is compared with the scalar path (block types bit for bit, float rows to 1e-6), and the
//! scalar path is compared with an f64 dot of the dequantized rows.

use super::*;
use crate::{dequantize_to_vec, random_blocks};
use GgmlType as T;

/// The little-endian f16 at `at`, in f64.
fn f16_at(b: &[u8], at: usize) -> f64 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f64()
}

/// A small xorshift generator for activations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly normal values (sum of uniforms) with occasional outliers, like activations.
    fn activation(&mut self) -> f32 {
        let u = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .sum::<f32>();
        if self.next().is_multiple_of(64) {
            u * 20.0
        } else {
            u
        }
    }
}

/// One test case: a weight row and a quantized activation row.
struct Case {
    ty: GgmlType,
    n: usize,
    w: Vec<u8>,
    act: Vec<u8>,
}

impl Case {
    fn random(ty: GgmlType, n: usize, seed: u64) -> Case {
        let mut w = vec![0u8; ty.bytes_for(n as u64).expect("whole blocks") as usize];
        random_blocks(ty, &mut w, seed, 0.02).expect("random blocks");
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let x: Vec<f32> = (0..n).map(|_| rng.activation()).collect();
        Case::with(ty, w, x)
    }

    fn with(ty: GgmlType, w: Vec<u8>, x: Vec<f32>) -> Case {
        let mut act = Vec::new();
        quantize_activations(ty, &x, &mut act).expect("quantize activations");
        Case {
            ty,
            n: x.len(),
            w,
            act,
        }
    }

    /// `(Σ w_i a_i, Σ |w_i a_i|)` in f64 over the dequantized rows.
    fn reference(&self) -> (f64, f64) {
        let w = dequantize_to_vec(self.ty, &self.w).expect("dequantize weights");
        let a = dequantize_to_vec(vec_dot_type(self.ty), &self.act).expect("dequantize acts");
        let terms = w.iter().zip(&a).map(|(&w, &a)| w as f64 * a as f64);
        let (mut sum, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
        if vec_dot_type(self.ty) == T::Q8_1 {
            // ggml's Q4_1/Q5_1 dot takes `m * s` with `s = d * Σq` stored as f16, not `m * d * Σq`.
            let ts = self.ty.type_size() as usize;
            for (x, y) in self.w.chunks_exact(ts).zip(self.act.chunks_exact(36)) {
                let (m, dy, s) = (f16_at(x, 2), f16_at(y, 0), f16_at(y, 2));
                let sum_q: i32 = y[4..].iter().map(|&q| q as i8 as i32).sum();
                sum += m * (s - dy * sum_q as f64);
            }
        }
        (sum, magnitude)
    }

    /// Runs the case through every path and checks it (see the module doc).
    fn check(&self) {
        let want = SCALAR
            .vec_dot(self.ty, self.n, &self.w, &self.act)
            .expect("scalar");
        let (exact, magnitude) = self.reference();
        let blocks = self.n as f64 / self.ty.block_size() as f64;
        // Per block a few f32 roundings, plus the running f32 sum: (blocks + 8) ulps of the magnitude.
        let tol = (blocks.min(self.n as f64 / 8.0) + 8.0) * f32::EPSILON as f64 * magnitude;
        assert!(
            (want as f64 - exact).abs() <= tol,
            "{} n={}: scalar {want} vs f64 {exact} (tol {tol:e})",
            self.ty,
            self.n
        );
        for k in Kernels::available() {
            let got = k
                .vec_dot(self.ty, self.n, &self.w, &self.act)
                .expect("vec_dot");
            if self.ty.block_size() > 1 {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} n={} path {}: {got} vs scalar {want}",
                    self.ty,
                    self.n,
                    k.name
                );
            } else {
                let err = (got - want).abs() as f64;
                assert!(
                    err <= 1e-6 * want.abs() as f64 + 1e-12 * magnitude,
                    "{} n={} path {}: {got} vs scalar {want}",
                    self.ty,
                    self.n,
                    k.name
                );
            }
        }
    }
}

/// Row lengths worth testing for `ty`: one block, odd counts, a model-sized row.
fn sizes(ty: GgmlType) -> Vec<usize> {
    let bs = ty.block_size() as usize;
    if bs == 1 {
        vec![1, 7, 15, 16, 17, 33, 100, 4096, 4101]
    } else {
        [1, 2, 3, 5, 8, 16, 4096 / bs, 4096 / bs + 1]
            .iter()
            .map(|k| k * bs)
            .collect()
    }
}

#[test]
fn every_path_matches_scalar_on_random_rows() {
    for &ty in DOT_TYPES {
        for n in sizes(ty) {
            for seed in 0..4 {
                Case::random(ty, n, seed * 1000 + n as u64).check();
            }
        }
    }
}

/// The bytes of a `ty` block that hold codes or sub-block scales (not the f16/e8m0 scales).
fn code_bytes(ty: GgmlType) -> std::ops::Range<usize> {
    match ty {
        T::Q4_0 | T::IQ4_NL => 2..18,
        T::Q4_1 => 4..20,
        T::Q5_0 => 2..22,
        T::Q5_1 => 4..24,
        T::Q8_0 => 2..34,
        T::MXFP4 => 1..17,
        T::Q2_K => 0..80,
        T::Q3_K => 0..108,
        T::Q4_K => 4..144,
        T::Q5_K => 4..176,
        T::Q6_K => 0..208,
        T::IQ4_XS => 2..136,
        _ => 0..0,
    }
}

#[test]
fn extreme_codes_match_scalar() {
    // All-ones code bytes (largest codes and sub-scales, Q8_0 -1) and alternating 0x80 / 0x7F
    // (Q8_0 -128 and 127), against activations at the quantizer's extremes.
    for &ty in DOT_TYPES.iter().filter(|t| t.block_size() > 1) {
        let n = 8 * ty.block_size() as usize;
        let ts = ty.type_size() as usize;
        for pattern in [[0xFFu8, 0xFF], [0x80, 0x7F]] {
            let mut w = vec![0u8; ts * 8];
            random_blocks(ty, &mut w, 7, 1.0).expect("random blocks");
            for block in w.chunks_exact_mut(ts) {
                for i in code_bytes(ty) {
                    block[i] = pattern[i % 2];
                }
            }
            for x in [
                vec![1.0f32; n],
                (0..n)
                    .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
                    .collect(),
            ] {
                Case::with(ty, w.clone(), x).check();
            }
        }
    }
}

#[test]
fn zero_rows_give_zero() {
    for &ty in DOT_TYPES {
        let n = 2 * ty.block_size().max(32) as usize;
        let w = vec![0u8; ty.bytes_for(n as u64).expect("blocks") as usize];
        let case = Case::with(ty, w, vec![0.5; n]);
        for k in Kernels::available() {
            assert_eq!(
                k.vec_dot(ty, n, &case.w, &case.act),
                Ok(0.0),
                "{ty} {}",
                k.name
            );
        }
    }
}

#[test]
fn vec_dot_types_follow_ggml() {
    assert_eq!(vec_dot_type(T::Q4_K), T::Q8_K);
    assert_eq!(vec_dot_type(T::Q6_K), T::Q8_K);
    assert_eq!(vec_dot_type(T::IQ4_XS), T::Q8_K);
    assert_eq!(vec_dot_type(T::Q4_0), T::Q8_0);
    assert_eq!(vec_dot_type(T::Q5_0), T::Q8_0);
    assert_eq!(vec_dot_type(T::IQ4_NL), T::Q8_0);
    assert_eq!(vec_dot_type(T::MXFP4), T::Q8_0);
    assert_eq!(vec_dot_type(T::Q4_1), T::Q8_1);
    assert_eq!(vec_dot_type(T::F16), T::F16);
    assert_eq!(vec_dot_type(T::BF16), T::BF16);
    assert_eq!(vec_dot_type(T::F32), T::F32);
    for &ty in DOT_TYPES {
        assert_eq!(vec_dot_type(ty).block_size() % ty.block_size(), 0, "{ty}");
    }
}

#[test]
fn paths_and_forcing() {
    let paths = kernel_paths();
    assert_eq!(paths[0], "scalar");
    assert_eq!(Kernels::current().name(), *paths.last().expect("a path"));
    let inner = with_path("scalar", || Kernels::current().name()).expect("scalar exists");
    assert_eq!(inner, "scalar");
    assert_eq!(Kernels::current().name(), *paths.last().expect("a path"));
    assert!(matches!(
        with_path("neon", || ()),
        Err(Error::NoKernelPath { .. })
    ));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(paths.contains(&"avx2"));
    }
    println!("kernel paths: {paths:?}");
}

#[test]
fn bad_lengths_and_types_are_errors() {
    let case = Case::random(T::Q4_K, 512, 1);
    assert_eq!(
        vec_dot(T::Q4_K, 512, &case.w, &case.act).map(|v| v.is_finite()),
        Ok(true)
    );
    assert!(matches!(
        vec_dot(T::Q4_K, 512, &case.w[..144], &case.act),
        Err(Error::ByteLength { .. })
    ));
    assert!(matches!(
        vec_dot(T::Q4_K, 512, &case.w, &case.act[..292]),
        Err(Error::ByteLength { .. })
    ));
    assert!(matches!(
        vec_dot(T::Q4_K, 500, &case.w, &case.act),
        Err(Error::PartialBlock { .. })
    ));
    let err = Error::Unsupported {
        ty: T::IQ2_XXS,
        op: Op::VecDot,
    };
    assert_eq!(
        vec_dot(T::IQ2_XXS, 256, &[0; 66], &[0; 292]),
        Err(err.clone())
    );
    let mut out = Vec::new();
    assert_eq!(
        quantize_activations(T::IQ2_XXS, &[0.0; 256], &mut out),
        Err(err)
    );
    assert!(matches!(
        quantize_activations(T::Q4_K, &[0.0; 100], &mut out),
        Err(Error::PartialBlock { .. })
    ));
    quantize_activations(T::Q4_0, &[1.0; 64], &mut out).expect("two Q8_0 blocks");
    assert_eq!(out.len(), 68);
}
