//! The CPU operations models are written in: norms, matmuls over quantized weights (in
//! `matmul.rs`, re-exported here), RoPE. Attention over a KV cache is `attn.rs`.

pub use crate::matmul::{matmul, matmul_batch, matmul_rows, matmuls, MatJob};

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
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// σ(x).
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU in place: `gate = silu(gate) ⊙ up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.iter_mut()
        .zip(up)
        .for_each(|(g, &u)| *g = silu(*g) * u);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
