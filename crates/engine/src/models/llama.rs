//! `llama` and the llama-shaped decoders (`qwen2`, `qwen3moe`): pre-norm blocks of grouped-query
//! attention with RoPE, then a SwiGLU FFN or a routed MoE. Mirrors llama.cpp
//! `src/models/llama.cpp` (`llm_build_llama`) with the options those files add: q/k/v biases
//! (qwen2), per-head q/k RMS norms (qwen3moe), NeoX RoPE, routed experts, tied output.

use crate::error::{Error, Result};
use crate::kv::{CacheConfig, KvCache, KvPass};
use crate::ops::{self, AttnShape, Exec, Rope, RopeStyle};
use crate::weights::{QTensor, Weights};

use super::ffn::{RoutedExperts, SwiGlu};
use super::{Keys, LayerState, Logits, Model, State};

/// Hyperparameters, read once from `{arch}.*` keys.
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
    pub rope: Rope,
    pub rms_eps: f32,
    /// Routed experts and how many each token uses (0 for a dense FFN).
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_exp: usize,
}

impl Hparams {
    /// Read the `llama`-family keys of `arch`.
    pub fn from_gguf(w: &Weights, arch: &str, style: RopeStyle) -> Result<Hparams> {
        let k = Keys::new(w.metadata(), arch);
        let n_embd = k.usize("embedding_length")?;
        let n_head = k.usize("attention.head_count")?;
        if n_head == 0 || n_embd % n_head != 0 {
            let key = format!("{arch}.attention.head_count");
            return Err(Error::BadKey {
                key,
                problem: format!("{n_head} does not divide {n_embd}"),
            });
        }
        let head_dim = k
            .opt_usize("attention.key_length")
            .unwrap_or(n_embd / n_head);
        Ok(Hparams {
            n_vocab: k.n_vocab()?,
            n_ctx_train: k.usize("context_length")?,
            n_embd,
            n_layer: k.usize("block_count")?,
            n_ff: k.opt_usize("feed_forward_length").unwrap_or(0),
            n_head,
            n_head_kv: k.opt_usize("attention.head_count_kv").unwrap_or(n_head),
            head_dim,
            rope: Rope {
                n_rot: k.opt_usize("rope.dimension_count").unwrap_or(head_dim),
                base: k.opt_f32("rope.freq_base").unwrap_or(10_000.0),
                style,
            },
            rms_eps: k.f32("attention.layer_norm_rms_epsilon")?,
            n_expert: k.opt_usize("expert_count").unwrap_or(0),
            n_expert_used: k.opt_usize("expert_used_count").unwrap_or(0),
            n_ff_exp: k.opt_usize("expert_feed_forward_length").unwrap_or(0),
        })
    }
}

/// One decoder layer's weights (shapes in GGUF order).
#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,      // [n_embd]
    wq: QTensor,              // [n_embd, n_head·head_dim]
    wk: QTensor,              // [n_embd, n_head_kv·head_dim]
    wv: QTensor,              // [n_embd, n_head_kv·head_dim]
    bq: Option<Vec<f32>>,     // [n_head·head_dim] (qwen2)
    bk: Option<Vec<f32>>,     // [n_head_kv·head_dim]
    bv: Option<Vec<f32>>,     // [n_head_kv·head_dim]
    q_norm: Option<Vec<f32>>, // [head_dim] (qwen3moe)
    k_norm: Option<Vec<f32>>, // [head_dim]
    wo: QTensor,              // [n_head·head_dim, n_embd]
    ffn_norm: Vec<f32>,       // [n_embd]
    ffn: Ffn,
}

/// The FFN half of a layer.
#[derive(Debug)]
enum Ffn {
    Dense(SwiGlu),
    Moe(RoutedExperts),
}

/// A loaded llama-family model.
#[derive(Debug)]
pub struct Llama {
    arch: String,
    hp: Hparams,
    token_embd: QTensor, // [n_embd, n_vocab]
    layers: Vec<Layer>,
    output_norm: Vec<f32>, // [n_embd]
    output: QTensor,       // [n_embd, n_vocab] (token_embd when tied)
}

impl Llama {
    /// Load a `llama` file (normal RoPE).
    pub fn load(w: &Weights, arch: &str) -> Result<Llama> {
        Llama::load_with(w, arch, RopeStyle::Normal)
    }

    /// Load with the given RoPE pairing (`qwen2` uses NeoX).
    pub(crate) fn load_with(w: &Weights, arch: &str, style: RopeStyle) -> Result<Llama> {
        let hp = Hparams::from_gguf(w, arch, style)?;
        let (e, v) = (hp.n_embd as u64, hp.n_vocab as u64);
        let q = (hp.n_head * hp.head_dim) as u64;
        let kv = (hp.n_head_kv * hp.head_dim) as u64;
        let hd = hp.head_dim as u64;
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                let blk = format!("blk.{i}");
                Ok(Layer {
                    attn_norm: w.vector(&n("attn_norm.weight"), e)?,
                    wq: w.get(&n("attn_q.weight"), &[e, q])?,
                    wk: w.get(&n("attn_k.weight"), &[e, kv])?,
                    wv: w.get(&n("attn_v.weight"), &[e, kv])?,
                    bq: w.optional_vector(&n("attn_q.bias"), q)?,
                    bk: w.optional_vector(&n("attn_k.bias"), kv)?,
                    bv: w.optional_vector(&n("attn_v.bias"), kv)?,
                    q_norm: w.optional_vector(&n("attn_q_norm.weight"), hd)?,
                    k_norm: w.optional_vector(&n("attn_k_norm.weight"), hd)?,
                    wo: w.get(&n("attn_output.weight"), &[q, e])?,
                    ffn_norm: w.vector(&n("ffn_norm.weight"), e)?,
                    ffn: if hp.n_expert > 0 {
                        Ffn::Moe(RoutedExperts::load(
                            w,
                            &blk,
                            hp.n_embd,
                            hp.n_ff_exp,
                            hp.n_expert,
                            hp.n_expert_used,
                        )?)
                    } else {
                        Ffn::Dense(SwiGlu::load(w, &blk, "", hp.n_embd, hp.n_ff)?)
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        let output_norm = w.vector("output_norm.weight", e)?;
        Ok(Llama {
            arch: arch.to_string(),
            hp,
            token_embd,
            layers,
            output_norm,
            output,
        })
    }

    fn attn_shape(&self) -> AttnShape {
        let hp = &self.hp;
        AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            scale: 1.0 / (hp.head_dim as f32).sqrt(),
        }
    }

    /// Self-attention block for `n` tokens of normed input `x`, starting at `pos0`.
    fn attention(
        &self,
        l: &Layer,
        (k_cache, v_cache): (&mut KvCache, &mut KvCache),
        x: &[f32],
        pos0: usize,
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let n = x.len() / hp.n_embd;
        let (qw, kvw) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
        let (mut q, mut k, mut v) = (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
        ops::matmuls([&l.wq, &l.wk, &l.wv], x, n, [&mut q, &mut k, &mut v], exec)?;
        for (t, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
            if let Some(b) = b {
                ops::add_bias(t, b);
            }
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            ops::rms_norm_inplace(&mut q, qn, hp.rms_eps); // Qcur_normed
            ops::rms_norm_inplace(&mut k, kn, hp.rms_eps); // Kcur_normed
        }
        let mut attn = vec![0f32; n * qw];
        let mut pass = KvPass::new(k_cache, v_cache, pos0)?;
        for t in 0..n {
            let pos = pos0 + t;
            let (qt, kt) = (&mut q[t * qw..(t + 1) * qw], &mut k[t * kvw..(t + 1) * kvw]);
            hp.rope.apply(qt, hp.head_dim, pos);
            hp.rope.apply(kt, hp.head_dim, pos);
            pass.push(kt, &v[t * kvw..(t + 1) * kvw])?;
        }
        pass.attend_all(&q, None, self.attn_shape(), &mut attn, exec)?;
        let mut out = vec![0f32; n * hp.n_embd];
        ops::matmul(&l.wo, &attn, n, &mut out, exec)?;
        Ok(out)
    }

    /// The FFN half: dense SwiGLU or routed experts.
    fn ffn(&self, l: &Layer, x: &[f32], exec: Exec) -> Result<Vec<f32>> {
        match &l.ffn {
            Ffn::Dense(f) => f.forward(x, exec),
            Ffn::Moe(m) => m.forward(x, exec),
        }
    }
}

impl Model for Llama {
    fn arch(&self) -> &str {
        &self.arch
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
        let mut x = vec![0f32; n * e];
        let last = self.layers.len() - 1;
        for (i, (l, kv)) in self.layers.iter().zip(state.layers.iter_mut()).enumerate() {
            ops::rms_norm(&h, &l.attn_norm, hp.rms_eps, &mut x); // attn_norm
            let LayerState::Kv { k, v } = kv else {
                return Err(Error::StateMismatch { layer: i });
            };
            let a = self.attention(l, (k, v), &x, pos0, exec)?; // kqv_out
            ops::add_inplace(&mut h, &a); // ffn_inp
            if i == last {
                super::keep_output_rows(which, e, &mut [&mut h, &mut x]);
            }
            ops::rms_norm(&h, &l.ffn_norm, hp.rms_eps, &mut x); // ffn_norm
            let f = self.ffn(l, &x, exec)?; // ffn_out
            ops::add_inplace(&mut h, &f); // l_out
        }
        state.n_past += n;
        let logits = super::lm_head(&h, &self.output_norm, hp.rms_eps, &self.output, exec)?;
        Ok(logits)
    }
}
