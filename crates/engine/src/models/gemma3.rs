//! `gemma3`: pre- and post-normed attention and GEGLU FFN, per-head q/k norms, embeddings
//! scaled by √n_embd, and sliding-window attention in five of every six layers (with their own
//! RoPE base). Mirrors llama.cpp `src/models/gemma3.cpp`.

use std::sync::Arc;

use crate::backend::{AttnParams, Backend, Glu};
use crate::error::Result;
use crate::kv::CacheConfig;
use crate::ops::{AttnShape, Exec, Rope, RopeStyle};
use crate::weights::Weights;

use super::ffn::SwiGlu;
use super::{Keys, Logits, Model, State};

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
struct Layer<B: Backend> {
    attn_norm: B::Vector,      // [n_embd]
    wq: B::Mat,                // [n_embd, n_head·head_dim]
    wk: B::Mat,                // [n_embd, n_head_kv·head_dim]
    wv: B::Mat,                // [n_embd, n_head_kv·head_dim]
    q_norm: B::Vector,         // [head_dim]
    k_norm: B::Vector,         // [head_dim]
    wo: B::Mat,                // [n_head·head_dim, n_embd]
    attn_post_norm: B::Vector, // [n_embd]
    ffn_norm: B::Vector,       // [n_embd]
    ffn: SwiGlu<B>,            // ffn_{gate,up} [n_embd, n_ff], ffn_down [n_ff, n_embd], GEGLU
    ffn_post_norm: B::Vector,  // [n_embd]
}

/// A loaded Gemma 3.
#[derive(Debug)]
pub struct Gemma3<B: Backend> {
    b: Arc<B>,
    hp: Hparams,
    token_embd: B::Mat, // [n_embd, n_vocab]
    layers: Vec<Layer<B>>,
    output_norm: B::Vector, // [n_embd]
    output: B::Mat,         // [n_embd, n_vocab], token_embd when tied
}

impl<B: Backend> Gemma3<B> {
    /// Load every tensor, checking shapes.
    pub fn load(b: Arc<B>, w: &Weights) -> Result<Gemma3<B>> {
        let hp = Hparams::from_gguf(w)?;
        let u = |x: usize| x as u64;
        let (e, v, hd) = (u(hp.n_embd), u(hp.n_vocab), u(hp.head_dim));
        let (q, kv) = (u(hp.n_head * hp.head_dim), u(hp.n_head_kv * hp.head_dim));
        let be = &*b;
        let vec = |name: &str, len: u64| be.vector(w.vector(name, len)?);
        let mat = |name: &str, dims: &[u64]| be.mat(w.get(name, dims)?);
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(Layer {
                    attn_norm: vec(&n("attn_norm.weight"), e)?,
                    wq: mat(&n("attn_q.weight"), &[e, q])?,
                    wk: mat(&n("attn_k.weight"), &[e, kv])?,
                    wv: mat(&n("attn_v.weight"), &[e, kv])?,
                    q_norm: vec(&n("attn_q_norm.weight"), hd)?,
                    k_norm: vec(&n("attn_k_norm.weight"), hd)?,
                    wo: mat(&n("attn_output.weight"), &[q, e])?,
                    attn_post_norm: vec(&n("post_attention_norm.weight"), e)?,
                    ffn_norm: vec(&n("ffn_norm.weight"), e)?,
                    ffn: SwiGlu::load(be, w, (&format!("blk.{i}"), ""), hp.n_embd, hp.n_ff)?,
                    ffn_post_norm: vec(&n("post_ffw_norm.weight"), e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        Ok(Gemma3 {
            output_norm: vec("output_norm.weight", e)?,
            output: be.mat(output)?,
            token_embd: be.mat(token_embd)?,
            layers,
            hp,
            b,
        })
    }

    /// Attention for the step's tokens of normed input `x`, sliding or global.
    fn attention(&self, s: &B::Step, il: usize, kv: &mut B::Layer, x: &B::Act) -> Result<B::Act> {
        let (b, hp, l) = (&*self.b, &self.hp, &self.layers[il]);
        let hd = hp.head_dim;
        let [mut q, mut k, v] = b.matmuls(s, [&l.wq, &l.wk, &l.wv], x)?;
        b.rms_norm_inplace(s, &mut q, &l.q_norm, hp.rms_eps)?; // Qcur_normed
        b.rms_norm_inplace(s, &mut k, &l.k_norm, hp.rms_eps)?; // Kcur_normed
        let rope = if hp.is_swa[il] { hp.rope_swa } else { hp.rope };
        b.rope(s, &mut q, hd, rope)?;
        b.rope(s, &mut k, hd, rope)?;
        // llama.cpp scales Q by 1/√head_dim before attention and uses kq_scale 1.
        b.scale(s, &mut q, 1.0 / (hd as f32).sqrt())?;
        let p = AttnParams {
            shape: AttnShape {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim: hd,
                scale: 1.0,
            },
            // A sliding layer sees keys with pos − p < n_swa (llama.cpp `is_masked_swa`).
            window: hp.is_swa[il].then_some(hp.n_swa),
        };
        let o = b.attention(s, kv, [&q, &k, &v], p)?;
        b.matmul(s, &l.wo, &o)
    }

    /// The whole forward for one step.
    fn graph(
        &self,
        s: &B::Step,
        layers: &mut [B::Layer],
        which: Logits,
        n: usize,
    ) -> Result<B::Act> {
        let (b, hp, eps) = (&*self.b, &self.hp, self.hp.rms_eps);
        let mut h = b.embed(s, &self.token_embd)?;
        b.scale(s, &mut h, (hp.n_embd as f32).sqrt())?; // inp_scaled
        let mut x = b.rms_norm(s, &h, &self.layers[0].attn_norm, eps)?; // attn_norm
        let last = self.layers.len() - 1;
        for (il, kv) in layers.iter_mut().enumerate() {
            let l = &self.layers[il];
            let a = self.attention(s, il, kv, &x)?;
            let y = b.rms_norm(s, &a, &l.attn_post_norm, eps)?; // attn_post_norm
            let mut xn = b.add_norm(s, &mut h, &y, &l.ffn_norm, eps)?; // sa_out, ffn_norm
            if il == last {
                h = b.keep_rows(s, h, which.first(n))?;
                xn = b.keep_rows(s, xn, which.first(n))?;
            }
            let f = l.ffn.forward_with(b, s, &xn, Glu::Gelu)?; // ffn_geglu, ffn_down
            let y = b.rms_norm(s, &f, &l.ffn_post_norm, eps)?; // ffn_post_norm
                                                               // l_out, then the next layer's attn_norm (result_norm after the last)
            let next = self
                .layers
                .get(il + 1)
                .map_or(&self.output_norm, |n| &n.attn_norm);
            x = b.add_norm(s, &mut h, &y, next, eps)?;
        }
        if which == Logits::Hidden {
            return Ok(x);
        }
        let mut logits = b.matmul(s, &self.output, &x)?; // result_output
        if hp.softcap > 0.0 {
            b.softcap(s, &mut logits, hp.softcap)?;
        }
        Ok(logits)
    }
}

impl<B: Backend> Model for Gemma3<B> {
    fn arch(&self) -> &str {
        "gemma3"
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
