//! `gemma3`: pre- and post-normed attention and GEGLU FFN, per-head q/k norms, embeddings
//! scaled by √n_embd, and sliding-window attention in five of every six layers (with their own
//! RoPE base). Mirrors llama.cpp `src/models/gemma3.cpp`.

use half::f16;

use crate::error::{Error, Result};
use crate::kv::{CacheConfig, KvCache, KvPass};
use crate::ops::{self, AttnShape, Exec, Rope, RopeStyle};
use crate::weights::{QTensor, Weights};

use super::{Keys, LayerState, Logits, Model, State};

/// Hyperparameters, read once.
#[derive(Clone, Debug)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    /// RoPE of the global layers and of the sliding-window layers (base 10,000 unless
    /// `rope.freq_base_swa` says otherwise, llama.cpp's `rope_freq_base_train_swa` default).
    pub rope: Rope,
    pub rope_swa: Rope,
    /// Sliding window (0: none) and which layers use it.
    pub n_swa: usize,
    pub is_swa: Vec<bool>,
    /// `final_logit_softcapping` (0: none).
    pub softcap: f32,
}

impl Hparams {
    /// Read the `gemma3.*` keys.
    pub fn from_gguf(w: &Weights) -> Result<Hparams> {
        let k = Keys::new(w.metadata(), "gemma3");
        let n_embd = k.usize("embedding_length")?;
        let n_head = k.usize("attention.head_count")?;
        let n_layer = k.usize("block_count")?;
        let head_dim = k
            .opt_usize("attention.key_length")
            .unwrap_or(n_embd / n_head.max(1));
        let n_swa = k.opt_usize("attention.sliding_window").unwrap_or(0);
        // llama.cpp `set_swa_pattern(6)`: layer il slides iff il % 6 < 5.
        let pattern = k
            .opt_usize("attention.sliding_window_pattern")
            .unwrap_or(6)
            .max(1);
        let is_swa = (0..n_layer)
            .map(|il| n_swa > 0 && il % pattern < pattern - 1)
            .collect();
        let n_rot = k.opt_usize("rope.dimension_count").unwrap_or(head_dim);
        let rope = Rope {
            n_rot,
            base: k.opt_f32("rope.freq_base").unwrap_or(10_000.0),
            style: RopeStyle::Neox,
        };
        let base_swa = k.opt_f32("rope.freq_base_swa").unwrap_or(10_000.0);
        Ok(Hparams {
            n_vocab: k.n_vocab()?,
            n_ctx_train: k.usize("context_length")?,
            n_embd,
            n_layer,
            n_ff: k.usize("feed_forward_length")?,
            n_head,
            n_head_kv: k.opt_usize("attention.head_count_kv").unwrap_or(n_head),
            head_dim,
            rms_eps: k.f32("attention.layer_norm_rms_epsilon")?,
            rope,
            rope_swa: Rope {
                base: base_swa,
                ..rope
            },
            n_swa,
            is_swa,
            softcap: k.opt_f32("final_logit_softcapping").unwrap_or(0.0),
        })
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,      // [n_embd]
    wq: QTensor,              // [n_embd, n_head·head_dim]
    wk: QTensor,              // [n_embd, n_head_kv·head_dim]
    wv: QTensor,              // [n_embd, n_head_kv·head_dim]
    q_norm: Vec<f32>,         // [head_dim]
    k_norm: Vec<f32>,         // [head_dim]
    wo: QTensor,              // [n_head·head_dim, n_embd]
    attn_post_norm: Vec<f32>, // [n_embd]
    ffn_norm: Vec<f32>,       // [n_embd]
    ffn_gate: QTensor,        // [n_embd, n_ff]
    ffn_up: QTensor,          // [n_embd, n_ff]
    ffn_down: QTensor,        // [n_ff, n_embd]
    ffn_post_norm: Vec<f32>,  // [n_embd]
}

/// A loaded Gemma 3.
#[derive(Debug)]
pub struct Gemma3 {
    hp: Hparams,
    token_embd: QTensor, // [n_embd, n_vocab]
    layers: Vec<Layer>,
    output_norm: Vec<f32>, // [n_embd]
    output: QTensor,       // [n_embd, n_vocab], token_embd when tied
}

impl Gemma3 {
    /// Load every tensor, checking shapes.
    pub fn load(w: &Weights) -> Result<Gemma3> {
        let hp = Hparams::from_gguf(w)?;
        let u = |x: usize| x as u64;
        let (e, v, ff, hd) = (u(hp.n_embd), u(hp.n_vocab), u(hp.n_ff), u(hp.head_dim));
        let (q, kv) = (u(hp.n_head * hp.head_dim), u(hp.n_head_kv * hp.head_dim));
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(Layer {
                    attn_norm: w.vector(&n("attn_norm.weight"), e)?,
                    wq: w.get(&n("attn_q.weight"), &[e, q])?,
                    wk: w.get(&n("attn_k.weight"), &[e, kv])?,
                    wv: w.get(&n("attn_v.weight"), &[e, kv])?,
                    q_norm: w.vector(&n("attn_q_norm.weight"), hd)?,
                    k_norm: w.vector(&n("attn_k_norm.weight"), hd)?,
                    wo: w.get(&n("attn_output.weight"), &[q, e])?,
                    attn_post_norm: w.vector(&n("post_attention_norm.weight"), e)?,
                    ffn_norm: w.vector(&n("ffn_norm.weight"), e)?,
                    ffn_gate: w.get(&n("ffn_gate.weight"), &[e, ff])?,
                    ffn_up: w.get(&n("ffn_up.weight"), &[e, ff])?,
                    ffn_down: w.get(&n("ffn_down.weight"), &[ff, e])?,
                    ffn_post_norm: w.vector(&n("post_ffw_norm.weight"), e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        let output_norm = w.vector("output_norm.weight", e)?;
        Ok(Gemma3 {
            hp,
            token_embd,
            layers,
            output_norm,
            output,
        })
    }

    /// Attention for `n` tokens of normed input `x` from `pos0`, sliding or global.
    fn attention(
        &self,
        il: usize,
        (kc, vc): (&mut KvCache, &mut KvCache),
        x: &[f32],
        pos0: usize,
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let (hp, l) = (&self.hp, &self.layers[il]);
        let (n, hd) = (x.len() / hp.n_embd, hp.head_dim);
        let (qw, kvw) = (hp.n_head * hd, hp.n_head_kv * hd);
        let (mut q, mut k, mut v) = (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
        ops::matmuls([&l.wq, &l.wk, &l.wv], x, n, [&mut q, &mut k, &mut v], exec)?;
        ops::rms_norm_inplace(&mut q, &l.q_norm, hp.rms_eps); // Qcur_normed
        ops::rms_norm_inplace(&mut k, &l.k_norm, hp.rms_eps); // Kcur_normed
        let rope = if hp.is_swa[il] { hp.rope_swa } else { hp.rope };
        // llama.cpp scales Q by 1/√head_dim before attention and uses kq_scale 1.
        let shape = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hd,
            scale: 1.0,
        };
        let q_scale = 1.0 / (hd as f32).sqrt();
        let mut o = vec![0f32; n * qw];
        let mut pass = KvPass::new(kc, vc, pos0)?;
        for t in 0..n {
            let pos = pos0 + t;
            let qt = &mut q[t * qw..(t + 1) * qw];
            rope.apply(qt, hd, pos);
            qt.iter_mut().for_each(|x| *x *= q_scale);
            let kt = &mut k[t * kvw..(t + 1) * kvw];
            rope.apply(kt, hd, pos);
            pass.push(kt, &v[t * kvw..(t + 1) * kvw])?;
        }
        // A sliding layer sees keys with pos − p < n_swa (llama.cpp `is_masked_swa`).
        let window = hp.is_swa[il].then_some(hp.n_swa);
        pass.attend_all(&q, window, shape, &mut o, exec)?;
        let mut out = vec![0f32; n * hp.n_embd];
        ops::matmul(&l.wo, &o, n, &mut out, exec)?;
        Ok(out)
    }

    /// GEGLU FFN: `down(gelu(gate·x) ⊙ up·x)`.
    fn ffn(&self, l: &Layer, x: &[f32], exec: Exec) -> Result<Vec<f32>> {
        let (n, ff) = (x.len() / self.hp.n_embd, self.hp.n_ff);
        let (mut gate, mut up) = (vec![0f32; n * ff], vec![0f32; n * ff]);
        ops::matmuls([&l.ffn_gate, &l.ffn_up], x, n, [&mut gate, &mut up], exec)?;
        ops::gated_par(&mut gate, &up, 8, exec, &|g, u| {
            g.iter_mut()
                .zip(u)
                .for_each(|(g, &u)| *g = gelu_ggml(*g) * u);
        })?; // ffn_geglu
        let mut out = vec![0f32; n * self.hp.n_embd];
        ops::matmul(&l.ffn_down, &gate, n, &mut out, exec)?;
        Ok(out)
    }
}

/// GELU (tanh form) as ggml's CPU backend computes it with `GGML_GELU_FP16`: the input rounded
/// to f16 and the result read from a table of f16 results; exact 0 below −10 and identity above
/// 10. The table (all 65,536 f16 inputs, built once) is ggml's method and spares a libm `tanh`
/// per value (8% of a Gemma prefill).
fn gelu_ggml(x: f32) -> f32 {
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

impl Model for Gemma3 {
    fn arch(&self) -> &str {
        "gemma3"
    }

    fn n_vocab(&self) -> usize {
        self.hp.n_vocab
    }

    fn n_ctx_train(&self) -> usize {
        self.hp.n_ctx_train
    }

    fn new_state_with(&self, n_ctx: usize, cache: CacheConfig) -> Result<State> {
        let hp = &self.hp;
        let layers = (0..hp.n_layer)
            .map(|_| LayerState::kv(hp.n_head_kv, hp.head_dim, n_ctx, cache))
            .collect::<Result<_>>()?;
        Ok(State {
            n_past: 0,
            n_ctx,
            layers,
        })
    }

    fn forward(
        &self,
        tokens: &[u32],
        state: &mut State,
        which: Logits,
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let (n, e) = (tokens.len(), hp.n_embd);
        let pos0 = state.n_past;
        let mut h = super::embed(&self.token_embd, tokens, state)?;
        let scale = (e as f32).sqrt();
        h.iter_mut().for_each(|v| *v *= scale); // inp_scaled
        let mut x = vec![0f32; n * e];
        let mut y = vec![0f32; n * e];
        for (il, ls) in state.layers.iter_mut().enumerate() {
            let l = &self.layers[il];
            let LayerState::Kv { k, v } = ls else {
                return Err(Error::StateMismatch { layer: il });
            };
            ops::rms_norm(&h, &l.attn_norm, hp.rms_eps, &mut x); // attn_norm
            let a = self.attention(il, (k, v), &x, pos0, exec)?;
            ops::rms_norm(&a, &l.attn_post_norm, hp.rms_eps, &mut y); // attn_post_norm
            ops::add_inplace(&mut h, &y); // sa_out
            if il + 1 == self.layers.len() {
                super::keep_output_rows(which, e, &mut [&mut h, &mut x, &mut y]);
            }
            ops::rms_norm(&h, &l.ffn_norm, hp.rms_eps, &mut x); // ffn_norm
            let f = self.ffn(l, &x, exec)?;
            ops::rms_norm(&f, &l.ffn_post_norm, hp.rms_eps, &mut y); // ffn_post_norm
            ops::add_inplace(&mut h, &y); // l_out
        }
        state.n_past += n;
        let mut logits = super::lm_head(&h, &self.output_norm, hp.rms_eps, &self.output, exec)?;
        if hp.softcap > 0.0 {
            logits
                .iter_mut()
                .for_each(|v| *v = (*v / hp.softcap).tanh() * hp.softcap);
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
