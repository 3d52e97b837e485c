//! The CPU operations models are written in: norms, matmuls over quantized weights (in
//! `matmul.rs`, re-exported here), RoPE. Attention over a KV cache is `attn.rs`.

use half::f16;

pub use crate::matmul::{matmul, matmul_batch, matmul_rows, matmuls, par_rows, quantize, MatJob};

/// How an operation may run: the number of worker threads.
#[derive(Clone, Copy, Debug)]
pub struct Exec {
    /// Worker threads for matmuls (≥ 1).
    pub threads: usize,
}

impl Default for Exec {
    fn default() -> Exec {
        Exec {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) ⊙ w`, one row of `w.len()` at a time (llama.cpp `rms_norm` +
/// `mul`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm`] with the rows shared out on the worker pool.
pub fn rms_norm_par(
    x: &[f32],
    w: &[f32],
    eps: f32,
    out: &mut [f32],
    exec: Exec,
) -> crate::Result<()> {
    let n = w.len();
    crate::matmul::par_rows(out, n, 4 * n, exec, &|t, o| {
        rms_norm(&x[t * n..(t + 1) * n], w, eps, o);
        Ok(())
    })
}

/// In-place RMS norm of each `w.len()`-sized group (per-head q/k norms).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for xr in x.chunks_exact_mut(n) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

/// Dot product in f32, accumulated in 8 lanes (so the compiler vectorises it).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x[t] += b` for each row of `b.len()`.
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
    }
}

/// `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
}

/// SiLU, `x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}

/// σ(x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// `e^x` in f32 operations a compiler vectorises (libm's `expf` is a call per value; SwiGLU
/// over a MoE layer's experts made it 2% of a prefill, all on one thread). `x = n·ln2 + r`
/// with `n` rounded to even (the `1.5·2^23` trick) and `ln2` split in two (Cody–Waite: the
/// high part has few enough bits that `n·hi` is exact), `e^r` by Taylor to `r^7` (remainder
/// below 6e-9 relative for `|r| ≤ ln2/2`), `2^n` written into the exponent. Inputs are clamped
/// to `[−87, 88]`: below, the result is `e^−87` (≈ 1.6e-38) rather than smaller; above, `e^88`.
/// Within 2 ulp of `expf` in the range; NaN stays NaN.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 355/512
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − 355/512
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// SwiGLU in place: `gate = silu(gate) ⊙ up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { swiglu_avx2(gate, up) };
    }
    swiglu_body(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    swiglu_body(gate, up)
}

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32]) {
    gate.iter_mut()
        .zip(up)
        .for_each(|(g, &u)| *g = silu(*g) * u);
}

/// [`swiglu`] on the worker pool.
pub fn swiglu_par(gate: &mut [f32], up: &[f32], exec: Exec) -> crate::Result<()> {
    let _stage = crate::prof::stage("swiglu");
    gated_par(gate, up, 16, exec, &swiglu)
}

/// `f(gate, up)` over matching chunks of 16K values on the worker pool (a prefill's FFN is
/// megabytes): the gated activations, SwiGLU and GEGLU. `cost` is per value, in matmul
/// multiply-adds.
pub fn gated_par(
    gate: &mut [f32],
    up: &[f32],
    cost: usize,
    exec: Exec,
    f: &(dyn Fn(&mut [f32], &[f32]) + Sync),
) -> crate::Result<()> {
    const CHUNK: usize = 1 << 14;
    let n = gate.len().min(up.len());
    crate::matmul::par_rows(&mut gate[..n], CHUNK, cost * CHUNK, exec, &|i, g| {
        f(g, &up[i * CHUNK..i * CHUNK + g.len()]);
        Ok(())
    })
}

/// Softmax in place (max-subtracted, f32).
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// Which dimensions RoPE rotates together (llama.cpp `LLAMA_ROPE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (llama).
    Normal,
    /// Halves `(i, i + n_rot/2)` (GPT-NeoX; qwen2, gemma, qwen3.5).
    Neox,
}

/// RoPE parameters of a model.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    /// Frequency base θ.
    pub base: f32,
    /// Pairing.
    pub style: RopeStyle,
}

impl Rope {
    /// Rotate every head of `x` (heads of `head_dim`) for position `pos` (llama.cpp
    /// `ggml_rope_ext` with no scaling: θ_i = pos · base^(−2i/n_rot)).
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let theta = pos as f32 * self.base.powf(-2.0 * i as f32 / self.n_rot as f32);
                let (sin, cos) = theta.sin_cos();
                let (a, b) = match self.style {
                    RopeStyle::Normal => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// Shape of a grouped-query attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// KV heads (query head h reads KV head h / (n_head / n_head_kv)).
    pub n_head_kv: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Logit scale (usually 1/√head_dim).
    pub scale: f32,
}

/// GELU (tanh form) as ggml's CPU backend computes it with `GGML_GELU_FP16`: the input rounded
/// to f16 and the result read from a table of f16 results; exact 0 below −10 and identity above
/// 10. The table (all 65,536 f16 inputs, built once) is ggml's method and spares a libm `tanh`
/// per value (8% of a Gemma prefill).
pub fn gelu_ggml(x: f32) -> f32 {
    static TABLE: std::sync::OnceLock<Box<[f32]>> = std::sync::OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let table = TABLE.get_or_init(|| (0..=u16::MAX).map(gelu_f16).collect());
    table[usize::from(f16::from_f32(x).to_bits())]
}

/// The GELU of one f16 input (by its bits), rounded to f16.
fn gelu_f16(bits: u16) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let x = f16::from_bits(bits).to_f32();
    let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh());
    f16::from_f32(g).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_fast(x), x.exp());
            worst = worst.max((got - want).abs() / (want * f32::EPSILON));
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(f32::NAN).is_nan());
        assert!(exp_fast(-1000.0) < 1e-37 && exp_fast(1000.0) > 1e38);
        let (mut g, up) = (vec![-3.0f32, 0.0, 2.5], vec![2.0f32, 1.0, -1.0]);
        swiglu_par(&mut g, &up, Exec { threads: 2 }).unwrap();
        let want: Vec<f32> = [-3.0f32, 0.0, 2.5]
            .iter()
            .zip(&up)
            .map(|(&x, &u)| silu(x) * u)
            .collect();
        assert!(g
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }

    #[test]
    fn rope_keeps_norm_and_is_identity_at_zero() {
        let rope = Rope {
            n_rot: 8,
            base: 10000.0,
            style: RopeStyle::Neox,
        };
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        let mut x = orig.clone();
        rope.apply(&mut x, 16, 0);
        assert_eq!(x, orig);
        rope.apply(&mut x, 16, 7);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        assert_eq!(&x[8..], &orig[8..], "dims past n_rot pass through");
    }

    #[test]
    fn gelu_matches_the_tanh_form_at_f16_precision() {
        assert_eq!(gelu_ggml(-20.0), 0.0);
        assert_eq!(gelu_ggml(12.0), 12.0);
        assert!((gelu_ggml(1.0) - 0.841_192).abs() < 1e-3);
        assert!(gelu_ggml(-1.0) < 0.0);
        // The table gives what the formula gives, for inputs between f16 values too.
        for x in [-9.99f32, -3.3, -0.5, -1e-3, 0.0, 1e-7, 0.3, 2.71, 9.9] {
            assert_eq!(gelu_ggml(x), gelu_f16(f16::from_f32(x).to_bits()), "{x}");
        }
        assert!(gelu_ggml(f32::NAN).is_nan());
    }
}
