//! `llama` and the llama-shaped decoders (`qwen2`, `qwen3moe`): pre-norm blocks of grouped-query
//! attention with RoPE, then a SwiGLU FFN or a routed MoE. Mirrors llama.cpp
//! `src/models/llama.cpp` (`llm_build_llama`) with the options those files add: q/k/v biases
//! (qwen2), per-head q/k RMS norms (qwen3moe), NeoX RoPE, routed experts, tied output.

use std::sync::Arc;

use crate::backend::{AttnParams, Backend, Experts};
use crate::error::{Error, Result};
use crate::kv::CacheConfig;
use crate::ops::{AttnShape, Exec, Rope, RopeStyle};
use crate::weights::Weights;

use super::ffn::{load_experts, SwiGlu};
use super::{Keys, Logits, Model, State};

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
struct Layer<B: Backend> {
    attn_norm: B::Vector,      // [n_embd]
    wq: B::Mat,                // [n_embd, n_head·head_dim]
    wk: B::Mat,                // [n_embd, n_head_kv·head_dim]
    wv: B::Mat,                // [n_embd, n_head_kv·head_dim]
    bq: Option<B::Vector>,     // [n_head·head_dim] (qwen2)
    bk: Option<B::Vector>,     // [n_head_kv·head_dim]
    bv: Option<B::Vector>,     // [n_head_kv·head_dim]
    q_norm: Option<B::Vector>, // [head_dim] (qwen3moe)
    k_norm: Option<B::Vector>, // [head_dim]
    wo: B::Mat,                // [n_head·head_dim, n_embd]
    ffn_norm: B::Vector,       // [n_embd]
    ffn: Ffn<B>,
}

/// The FFN half of a layer.
#[derive(Debug)]
enum Ffn<B: Backend> {
    Dense(SwiGlu<B>),
    Moe(Experts<B>),
}

/// A loaded llama-family model.
#[derive(Debug)]
pub struct Llama<B: Backend> {
    b: Arc<B>,
    arch: String,
    hp: Hparams,
    token_embd: B::Mat, // [n_embd, n_vocab]
    layers: Vec<Layer<B>>,
    output_norm: B::Vector, // [n_embd]
    output: B::Mat,         // [n_embd, n_vocab] (token_embd when tied)
}

impl<B: Backend> Llama<B> {
    /// Load a file of architecture `arch` with the given RoPE pairing (`qwen2` uses NeoX).
    pub fn load(b: Arc<B>, w: &Weights, arch: &str, style: RopeStyle) -> Result<Llama<B>> {
        let hp = Hparams::from_gguf(w, arch, style)?;
        let (e, v) = (hp.n_embd as u64, hp.n_vocab as u64);
        let q = (hp.n_head * hp.head_dim) as u64;
        let kv = (hp.n_head_kv * hp.head_dim) as u64;
        let hd = hp.head_dim as u64;
        let be = &*b;
        let vec = |name: &str, len: u64| be.vector(w.vector(name, len)?);
        let opt_vec = |name: &str, len: u64| {
            w.optional_vector(name, len)?
                .map(|v| be.vector(v))
                .transpose()
        };
        let mat = |name: &str, dims: &[u64]| be.mat(w.get(name, dims)?);
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                let blk = format!("blk.{i}");
                Ok(Layer {
                    attn_norm: vec(&n("attn_norm.weight"), e)?,
                    wq: mat(&n("attn_q.weight"), &[e, q])?,
                    wk: mat(&n("attn_k.weight"), &[e, kv])?,
                    wv: mat(&n("attn_v.weight"), &[e, kv])?,
                    bq: opt_vec(&n("attn_q.bias"), q)?,
                    bk: opt_vec(&n("attn_k.bias"), kv)?,
                    bv: opt_vec(&n("attn_v.bias"), kv)?,
                    q_norm: opt_vec(&n("attn_q_norm.weight"), hd)?,
                    k_norm: opt_vec(&n("attn_k_norm.weight"), hd)?,
                    wo: mat(&n("attn_output.weight"), &[q, e])?,
                    ffn_norm: vec(&n("ffn_norm.weight"), e)?,
                    ffn: if hp.n_expert > 0 {
                        let sizes = (hp.n_ff_exp, hp.n_expert, hp.n_expert_used);
                        Ffn::Moe(load_experts(be, w, &blk, hp.n_embd, sizes)?)
                    } else {
                        Ffn::Dense(SwiGlu::load(be, w, (&blk, ""), hp.n_embd, hp.n_ff)?)
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        Ok(Llama {
            arch: arch.to_string(),
            output_norm: vec("output_norm.weight", e)?,
            output: be.mat(output)?,
            token_embd: be.mat(token_embd)?,
            layers,
            hp,
            b,
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

    /// Self-attention block for the step's tokens, normed input `x`.
    fn attention(
        &self,
        s: &B::Step,
        l: &Layer<B>,
        kv: &mut B::Layer,
        x: &B::Act,
    ) -> Result<B::Act> {
        let (b, hp) = (&*self.b, &self.hp);
        let [mut q, mut k, mut v] = b.matmuls(s, [&l.wq, &l.wk, &l.wv], x)?;
        for (t, bias) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
            if let Some(bias) = bias {
                b.add_bias(s, t, bias)?;
            }
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            b.rms_norm_inplace(s, &mut q, qn, hp.rms_eps)?; // Qcur_normed
            b.rms_norm_inplace(s, &mut k, kn, hp.rms_eps)?; // Kcur_normed
        }
        b.rope(s, &mut q, hp.head_dim, hp.rope)?;
        b.rope(s, &mut k, hp.head_dim, hp.rope)?;
        let p = AttnParams {
            shape: self.attn_shape(),
            window: None,
        };
        let attn = b.attention(s, kv, [&q, &k, &v], p)?; // kqv
        b.matmul(s, &l.wo, &attn) // kqv_out
    }

    /// The whole forward for one step.
    fn graph(
        &self,
        s: &B::Step,
        layers: &mut [B::Layer],
        which: Logits,
        n: usize,
    ) -> Result<B::Act> {
        let (b, eps) = (&*self.b, self.hp.rms_eps);
        let mut h = b.embed(s, &self.token_embd)?;
        let mut x = b.rms_norm(s, &h, &self.layers[0].attn_norm, eps)?; // attn_norm
        let last = self.layers.len() - 1;
        for (i, (l, kv)) in self.layers.iter().zip(layers.iter_mut()).enumerate() {
            let a = self.attention(s, l, kv, &x)?; // kqv_out
            let mut xn = b.add_norm(s, &mut h, &a, &l.ffn_norm, eps)?; // ffn_inp, ffn_norm
            if i == last {
                h = b.keep_rows(s, h, which.first(n))?;
                xn = b.keep_rows(s, xn, which.first(n))?;
            }
            // ffn_out; l_out, then the next layer's attn_norm (result_norm after the last)
            let next = self
                .layers
                .get(i + 1)
                .map_or(&self.output_norm, |n| &n.attn_norm);
            x = match &l.ffn {
                Ffn::Dense(f) => {
                    let f = f.forward(b, s, &xn)?;
                    b.add_norm(s, &mut h, &f, next, eps)?
                }
                Ffn::Moe(m) => b.moe_add_norm(s, m, &xn, (&mut h, next, eps))?,
            };
        }
        if which == Logits::Hidden {
            return Ok(x);
        }
        b.matmul(s, &self.output, &x) // result_output
    }
}

impl<B: Backend> Model for Llama<B> {
    fn arch(&self) -> &str {
        &self.arch
    }

    fn backend(&self) -> String {
        self.b.name()
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
            .map(|_| self.b.kv_layer(hp.n_head_kv, hp.head_dim, n_ctx, cache))
            .collect::<Result<_>>()?;
        Ok(State::new(&*self.b, n_ctx, layers))
    }

    fn checkpoint(&self, state: &State) -> Result<crate::backend::Checkpoint> {
        crate::backend::checkpoint(&*self.b, state)
    }

    fn rewind(&self, state: &mut State, cp: &crate::backend::Checkpoint) -> Result<()> {
        crate::backend::rewind(&*self.b, state, cp)
    }

    fn batches(&self) -> bool {
        self.b.batches()
    }

    fn forward_batch(&self, rows: &mut [super::Row<'_>], exec: Exec) -> Result<Vec<Vec<f32>>> {
        crate::backend::run_batch(
            &*self.b,
            self.hp.n_vocab,
            rows,
            exec,
            &mut |s, layers, which, n| self.graph(s, layers, which, n),
        )
    }
}
