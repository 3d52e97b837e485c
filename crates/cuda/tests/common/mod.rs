//! What the GPU tests share: opening the GPU (tests that need one are `#[ignore]`d and run by
//! `scripts/device/gpu-tests.sh` with `--ignored`), random inputs, weights of any type as
//! `QTensor`s of an in-memory GGUF, and the error measure.

#![allow(dead_code)]

use std::sync::Arc;

use cuda::Cuda;
use engine::{QTensor, Weights};
use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec};

/// A backend of its own on GPU 0 (tests run in parallel and each drives its backend's step
/// buffer by hand), with poisoned (NaN-filled) fresh activations.
pub fn gpu() -> Arc<Cuda> {
    // Edition 2021: set_var is safe; every test sets the same value.
    std::env::set_var("LLM_SERVER_CUDA_POISON", "1");
    Cuda::open(0).expect("a CUDA GPU (these tests run on the GPU machine)")
}

/// Deterministic values in [-1, 1) (an LCG: the same on every machine).
pub fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Tensors of an in-memory GGUF: each `(name, type, dims, f32 values)` quantized to its type.
pub fn tensors(specs: &[(String, GgmlType, Vec<u64>, Vec<f32>)]) -> Vec<QTensor> {
    let ts: Vec<TensorSpec> = specs
        .iter()
        .map(|(n, t, d, _)| TensorSpec::new(n.as_str(), *t, d.clone()))
        .collect();
    let mut w = GgufWriter::new(Vec::new(), &[], &ts).expect("gguf header");
    for (_, ty, dims, vals) in specs {
        let n: u64 = dims.iter().product();
        assert_eq!(vals.len() as u64, n);
        let mut bytes = vec![0u8; ty.bytes_for(n).expect("whole blocks") as usize];
        quant::quantize(*ty, vals, &mut bytes).expect("quantize");
        w.write_data(&bytes).expect("data");
    }
    let file = Arc::new(GgufFile::from_bytes(w.finish().expect("finish")).expect("parse"));
    let weights = Weights::new(file);
    specs
        .iter()
        .map(|(n, _, d, _)| weights.get(n, d).expect("tensor"))
        .collect()
}

/// One tensor.
pub fn tensor(name: &str, ty: GgmlType, dims: &[u64], seed: u64) -> QTensor {
    let n = dims.iter().product::<u64>() as usize;
    tensors(&[(name.to_string(), ty, dims.to_vec(), rand(n, seed))]).remove(0)
}

/// ‖a − b‖ / ‖b‖ (NaN anywhere in `a` gives infinity).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    if a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// Assert `rel_err(got, want) ≤ bound`, naming the case.
pub fn close(what: &str, got: &[f32], want: &[f32], bound: f64) {
    let e = rel_err(got, want);
    eprintln!("{what}: rel err {e:.2e} (bound {bound:.0e})");
    assert!(e <= bound, "{what}: rel err {e:.3e} > {bound:.1e}");
}
