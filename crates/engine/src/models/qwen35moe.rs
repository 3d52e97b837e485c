//! `qwen35moe` (Qwen3.5-35B-A3B and its kin): a 3:1 stack of gated DeltaNet and gated
//! full-attention layers, each followed by a routed MoE with a sigmoid-gated shared expert.
//! Written top to bottom in the order of `spec/qwen35moe.md` §4 (llama.cpp
//! `src/models/qwen35moe.cpp`).
//!
//! Two siblings share this graph and load through here (see [`Variant`]): `qwen35`, the dense
//! Qwen3.5 (a SwiGLU FFN instead of the MoE; llama.cpp `qwen35.cpp`), and `qwen3next`
//! (Qwen3-Next; llama.cpp `qwen3next.cpp`), which fuses β/α into one projection, may fuse
//! q/k/v/z (`ssm_in`, older files), and groups value heads by key head instead of tiling them.

use std::sync::Arc;

use crate::backend::{AttnBlock, AttnParams, Backend, DeltaNet, DeltaShape, Experts};
use crate::error::{Error, Result};
use crate::kv::CacheConfig;
use crate::ops::{AttnShape, Exec, Rope, RopeStyle};
use crate::weights::Weights;

use super::ffn::{load_experts, SwiGlu};
use super::{Keys, Logits, Model, State};

/// Which member of the family a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `qwen35moe` and `qwen35`: value head j reads key head `j mod n_k_head` (tiled, spec §2.4).
    Qwen35,
    /// `qwen3next`: value head j reads key head `j / (n_v_head / n_k_head)` (grouped, HF order).
    Qwen3Next,
}

/// Hyperparameters (spec §1, §2.1), read once.
#[derive(Clone, Debug)]
pub struct Hparams {
    /// `general.architecture`, the prefix of every key.
    pub arch: String,
    pub variant: Variant,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    /// Trunk layers: `block_count − nextn_predict_layers` (the MTP block is not run).
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope: Rope,
    pub rms_eps: f32,
    /// Per layer: DeltaNet (true) or full attention.
    pub recurrent: Vec<bool>,
    /// DeltaNet key heads (`ssm.group_count`).
    pub ssm_n_k_head: usize,
    /// DeltaNet value heads (`ssm.time_step_rank`).
    pub ssm_n_v_head: usize,
    /// Key head width (`ssm.state_size`).
    pub ssm_d_state: usize,
    /// Value width, all heads (`ssm.inner_size`).
    pub ssm_d_inner: usize,
    pub ssm_d_conv: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_exp: usize,
    pub n_ff_shexp: usize,
    /// Dense FFN width (`qwen35`; 0 for the MoE members).
    pub n_ff: usize,
}

impl Hparams {
    /// Read the `{arch}.*` keys.
    pub fn from_gguf(w: &Weights, arch: &str) -> Result<Hparams> {
        let k = Keys::new(w.metadata(), arch);
        let variant = if arch == "qwen3next" {
            Variant::Qwen3Next
        } else {
            Variant::Qwen35
        };
        let dense = arch == "qwen35";
        let n_block = k.usize("block_count")?;
        let n_layer = n_block.saturating_sub(k.opt_usize("nextn_predict_layers").unwrap_or(0));
        let interval = k.opt_usize("full_attention_interval").unwrap_or(4).max(1);
        let recurrent = match w
            .metadata()
            .get_array("qwen35moe.attention.recurrent_layers")
        {
            Some(gguf::Array::Bool(v)) => v.iter().take(n_layer).copied().collect(),
            _ => (0..n_layer).map(|i| (i + 1) % interval != 0).collect(),
        };
        let head_dim = k.usize("attention.key_length")?;
        let hp = Hparams {
            arch: arch.to_string(),
            variant,
            n_vocab: k.n_vocab()?,
            n_ctx_train: k.usize("context_length")?,
            n_embd: k.usize("embedding_length")?,
            n_layer,
            n_head: k.usize("attention.head_count")?,
            n_head_kv: k.usize("attention.head_count_kv")?,
            head_dim,
            rope: Rope {
                n_rot: k.usize("rope.dimension_count")?,
                base: k.opt_f32("rope.freq_base").unwrap_or(10_000.0),
                // Text positions fill the four M-RoPE streams as (p, p, p, 0); with sections
                // covering every slot that is plain NeoX RoPE (spec §4.1 step 4).
                style: RopeStyle::Neox,
            },
            rms_eps: k.f32("attention.layer_norm_rms_epsilon")?,
            recurrent,
            ssm_n_k_head: k.usize("ssm.group_count")?,
            ssm_n_v_head: k.usize("ssm.time_step_rank")?,
            ssm_d_state: k.usize("ssm.state_size")?,
            ssm_d_inner: k.usize("ssm.inner_size")?,
            ssm_d_conv: k.usize("ssm.conv_kernel")?,
            n_expert: if dense { 0 } else { k.usize("expert_count")? },
            n_expert_used: if dense {
                0
            } else {
                k.usize("expert_used_count")?
            },
            n_ff_exp: if dense {
                0
            } else {
                k.usize("expert_feed_forward_length")?
            },
            n_ff_shexp: k
                .opt_usize("expert_shared_feed_forward_length")
                .unwrap_or(0),
            n_ff: if dense {
                k.usize("feed_forward_length")?
            } else {
                0
            },
        };
        hp.check()?;
        Ok(hp)
    }

    /// Reject values that would make shapes or indexing meaningless.
    fn check(&self) -> Result<()> {
        let bad = |key: &str, problem: String| {
            Err(Error::BadKey {
                key: format!("{}.{key}", self.arch),
                problem,
            })
        };
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(
                "attention.head_count_kv",
                format!("{} does not divide {}", self.n_head_kv, self.n_head),
            );
        }
        if self.ssm_n_k_head == 0 || !self.ssm_n_v_head.is_multiple_of(self.ssm_n_k_head) {
            return bad(
                "ssm.group_count",
                format!(
                    "{} does not divide {}",
                    self.ssm_n_k_head, self.ssm_n_v_head
                ),
            );
        }
        if self.ssm_d_conv < 2 {
            // The convolution keeps d_conv − 1 past inputs per channel; every released model
            // has 4.
            return bad(
                "ssm.conv_kernel",
                format!("{} (at least 2 expected)", self.ssm_d_conv),
            );
        }
        if !self.ssm_d_inner.is_multiple_of(self.ssm_n_v_head) {
            return bad(
                "ssm.inner_size",
                format!(
                    "{} is not a multiple of {}",
                    self.ssm_d_inner, self.ssm_n_v_head
                ),
            );
        }
        if self.n_ff == 0 && (self.n_expert_used == 0 || self.n_expert_used > self.n_expert) {
            return bad(
                "expert_used_count",
                format!("{} of {} experts", self.n_expert_used, self.n_expert),
            );
        }
        if self.rope.n_rot > self.head_dim || !self.rope.n_rot.is_multiple_of(2) {
            return bad(
                "rope.dimension_count",
                format!("{} for heads of {}", self.rope.n_rot, self.head_dim),
            );
        }
        Ok(())
    }

    /// Value head width.
    fn head_v_dim(&self) -> usize {
        self.ssm_d_inner / self.ssm_n_v_head
    }

    /// The DeltaNet layers' shape.
    fn delta_shape(&self) -> DeltaShape {
        DeltaShape {
            n_k_head: self.ssm_n_k_head,
            n_v_head: self.ssm_n_v_head,
            d_k: self.ssm_d_state,
            d_v: self.head_v_dim(),
            d_conv: self.ssm_d_conv,
            grouped: self.variant == Variant::Qwen3Next,
            eps: self.rms_eps,
        }
    }
}

/// DeltaNet's input projection: q‖k‖v for the convolution, and z for the output gate.
#[derive(Debug)]
enum Projection<B: Backend> {
    /// `attn_qkv` [n_embd, conv_dim] (in_proj_qkv) and `attn_gate` [n_embd, d_inner] (in_proj_z).
    Split { attn_qkv: B::Mat, attn_gate: B::Mat },
    /// Older Qwen3-Next files: `ssm_in` [n_embd, conv_dim + d_inner] with, per key head,
    /// [q (d_state) ‖ k (d_state) ‖ v (r·head_v) ‖ z (r·head_v)], r = value heads per key head.
    Fused { ssm_in: B::Mat },
}

/// β and α projections (one value per value head each).
#[derive(Debug)]
enum Gates<B: Backend> {
    /// `ssm_beta` and `ssm_alpha`, [n_embd, n_v_head] each (in_proj_b, in_proj_a).
    Split { ssm_beta: B::Mat, ssm_alpha: B::Mat },
    /// Qwen3-Next `ssm_ba` [n_embd, 2·n_v_head]: per key head, r β then r α.
    Fused { ssm_beta_alpha: B::Mat },
}

/// Spec §4.2 weights (HF names in brackets).
#[derive(Debug)]
struct DeltaNetLayer<B: Backend> {
    proj: Projection<B>,
    ssm_conv1d: B::Vector, // [d_conv, conv_dim]: taps contiguous per channel
    ssm_dt: B::Vector,     // [n_v_head]
    ssm_a: B::Vector,      // [n_v_head] = −exp(A_log)
    gates: Gates<B>,
    ssm_norm: B::Vector, // [head_v_dim], shared by the heads, no +1
    ssm_out: B::Mat,     // [d_inner, n_embd]
}

/// Spec §4.1 weights.
#[derive(Debug)]
struct Attention<B: Backend> {
    attn_q: B::Mat, // [n_embd, 2·n_head·head_dim]: per head 256 query then 256 gate rows
    attn_k: B::Mat, // [n_embd, n_head_kv·head_dim]
    attn_v: B::Mat, // [n_embd, n_head_kv·head_dim]
    attn_output: B::Mat, // [n_head·head_dim, n_embd]
    attn_q_norm: B::Vector, // [head_dim]
    attn_k_norm: B::Vector, // [head_dim]
}

#[derive(Debug)]
enum Mixer<B: Backend> {
    DeltaNet(DeltaNetLayer<B>),
    Attention(Attention<B>),
}

#[derive(Debug)]
struct Layer<B: Backend> {
    attn_norm: B::Vector, // [n_embd]
    mixer: Mixer<B>,
    post_attention_norm: B::Vector, // [n_embd]
    ffn: Ffn<B>,
}

/// The FFN half: the MoE of spec §4.3 (routed experts and the sigmoid-gated shared expert,
/// `ffn_{gate,up,down}_shexp` and `ffn_gate_inp_shexp`), or `qwen35`'s dense SwiGLU.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once: boxing would buy nothing
enum Ffn<B: Backend> {
    Moe(Experts<B>),
    Dense(SwiGlu<B>),
}

/// Column maps that split fused projections into their parts (the same for every layer).
#[derive(Debug)]
struct Splits<B: Backend> {
    /// Spec §4.1 step 1: the query and gate halves of each head of `attn_q`'s output.
    q: B::Index,
    gate: B::Index,
    /// Qwen3-Next's fused `ssm_in` (per key head [q ‖ k ‖ v ‖ z]) into q‖k‖v and z.
    mix: B::Index,
    z: B::Index,
    /// Qwen3-Next's fused `ssm_ba` (per key head r β then r α) into β and α.
    beta: B::Index,
    alpha: B::Index,
}

impl<B: Backend> Splits<B> {
    fn new(b: &B, hp: &Hparams) -> Result<Splits<B>> {
        let hd = hp.head_dim;
        let half = |off: usize| -> Vec<u32> {
            (0..hp.n_head)
                .flat_map(|h| (0..hd).map(move |i| (h * 2 * hd + off + i) as u32))
                .collect()
        };
        let (nk, dk, di, nv) = (
            hp.ssm_n_k_head,
            hp.ssm_d_state,
            hp.ssm_d_inner,
            hp.ssm_n_v_head,
        );
        let vg = di / nk; // value (and z) width per key head
        let group = 2 * dk + 2 * vg;
        let g = |off: usize, w: usize| -> Vec<u32> {
            (0..nk)
                .flat_map(|k| (0..w).map(move |i| (k * group + off + i) as u32))
                .collect()
        };
        let mut mix = g(0, dk);
        mix.extend(g(dk, dk));
        mix.extend(g(2 * dk, vg));
        let r = nv / nk;
        let ba = |off: usize| -> Vec<u32> {
            (0..nk)
                .flat_map(|k| (0..r).map(move |i| (k * 2 * r + off + i) as u32))
                .collect()
        };
        Ok(Splits {
            q: b.index(half(0))?,
            gate: b.index(half(hd))?,
            mix: b.index(mix)?,
            z: b.index(g(2 * dk + vg, vg))?,
            beta: b.index(ba(0))?,
            alpha: b.index(ba(r))?,
        })
    }
}

/// A loaded `qwen35moe` model.
#[derive(Debug)]
pub struct Qwen35Moe<B: Backend> {
    b: Arc<B>,
    hp: Hparams,
    token_embd: B::Mat, // [n_embd, n_vocab]
    layers: Vec<Layer<B>>,
    output_norm: B::Vector, // [n_embd]
    output: B::Mat,         // [n_embd, n_vocab]
    splits: Splits<B>,
}

impl<B: Backend> Qwen35Moe<B> {
    /// Load the tensors of spec §2.2, checking every shape.
    pub fn load(b: Arc<B>, w: &Weights, arch: &str) -> Result<Qwen35Moe<B>> {
        let hp = Hparams::from_gguf(w, arch)?;
        let e = hp.n_embd as u64;
        let v = hp.n_vocab as u64;
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| load_layer(&*b, w, &hp, i))
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        Ok(Qwen35Moe {
            token_embd: b.mat(token_embd)?,
            output: b.mat(output)?,
            output_norm: b.vector(w.vector("output_norm.weight", e)?)?,
            splits: Splits::new(&*b, &hp)?,
            layers,
            hp,
            b,
        })
    }
}

fn load_layer<B: Backend>(b: &B, w: &Weights, hp: &Hparams, i: usize) -> Result<Layer<B>> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let u = |x: usize| x as u64;
    let e = u(hp.n_embd);
    let mat = |name: &str, dims: &[u64]| b.mat(w.get(&n(name), dims)?);
    let vec = |name: &str, len: u64| b.vector(w.vector(&n(name), len)?);
    let mixer = if hp.recurrent[i] {
        let (conv, vh) = (u(hp.delta_shape().conv_dim()), u(hp.ssm_n_v_head));
        let taps = w.get(&n("ssm_conv1d.weight"), &[u(hp.ssm_d_conv), conv])?;
        Mixer::DeltaNet(DeltaNetLayer {
            proj: if w.has(&n("ssm_in.weight")) {
                let dim = conv + u(hp.ssm_d_inner);
                Projection::Fused {
                    ssm_in: mat("ssm_in.weight", &[e, dim])?,
                }
            } else {
                Projection::Split {
                    attn_qkv: mat("attn_qkv.weight", &[e, conv])?,
                    attn_gate: mat("attn_gate.weight", &[e, u(hp.ssm_d_inner)])?,
                }
            },
            ssm_conv1d: b.vector(taps.to_f32()?)?,
            ssm_dt: vec("ssm_dt.bias", vh)?,
            ssm_a: vec("ssm_a", vh)?,
            gates: if hp.variant == Variant::Qwen3Next {
                Gates::Fused {
                    ssm_beta_alpha: mat("ssm_ba.weight", &[e, 2 * vh])?,
                }
            } else {
                Gates::Split {
                    ssm_beta: mat("ssm_beta.weight", &[e, vh])?,
                    ssm_alpha: mat("ssm_alpha.weight", &[e, vh])?,
                }
            },
            ssm_norm: vec("ssm_norm.weight", u(hp.head_v_dim()))?,
            ssm_out: mat("ssm_out.weight", &[u(hp.ssm_d_inner), e])?,
        })
    } else {
        let q = u(hp.n_head * hp.head_dim);
        let kv = u(hp.n_head_kv * hp.head_dim);
        Mixer::Attention(Attention {
            attn_q: mat("attn_q.weight", &[e, 2 * q])?,
            attn_k: mat("attn_k.weight", &[e, kv])?,
            attn_v: mat("attn_v.weight", &[e, kv])?,
            attn_output: mat("attn_output.weight", &[q, e])?,
            attn_q_norm: vec("attn_q_norm.weight", u(hp.head_dim))?,
            attn_k_norm: vec("attn_k_norm.weight", u(hp.head_dim))?,
        })
    };
    let blk = format!("blk.{i}");
    let ffn = if hp.n_ff > 0 {
        Ffn::Dense(SwiGlu::load(b, w, (&blk, ""), hp.n_embd, hp.n_ff)?)
    } else {
        let sizes = (hp.n_ff_exp, hp.n_expert, hp.n_expert_used);
        let shexp = SwiGlu::load(b, w, (&blk, "_shexp"), hp.n_embd, hp.n_ff_shexp)?;
        let gate = vec("ffn_gate_inp_shexp.weight", e)?;
        Ffn::Moe(Experts {
            shared: Some(shexp.into_shared(Some(gate))),
            ..load_experts(b, w, &blk, hp.n_embd, sizes)?
        })
    };
    Ok(Layer {
        attn_norm: vec("attn_norm.weight", e)?,
        mixer,
        post_attention_norm: vec("post_attention_norm.weight", e)?,
        ffn,
    })
}

impl<B: Backend> Qwen35Moe<B> {
    /// Spec §4.1: gated full attention for the step's tokens of normed input `x`.
    fn full_attn(
        &self,
        s: &B::Step,
        m: &Attention<B>,
        kv: &mut B::Layer,
        x: &B::Act,
    ) -> Result<B::Act> {
        let (b, hp) = (&*self.b, &self.hp);
        let hd = hp.head_dim;
        // 1. per head: query ‖ gate; 2. keys and values.
        let [qg, k, v] = b.matmuls(s, [&m.attn_q, &m.attn_k, &m.attn_v], x)?;
        let p = AttnBlock {
            q_cols: Some(&self.splits.q),
            gate_cols: Some(&self.splits.gate),
            q_norm: Some(&m.attn_q_norm), // 3. Qcur_normed
            k_norm: Some(&m.attn_k_norm), //    Kcur_normed
            eps: hp.rms_eps,
            rope: hp.rope, // 4.
            attn: AttnParams {
                shape: AttnShape {
                    n_head: hp.n_head,
                    n_head_kv: hp.n_head_kv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                },
                window: None,
            },
        };
        let o = b.attention_block(s, kv, [qg, k, v], p)?; // 5.–7.
        b.matmul(s, &m.attn_output, &o) // 8.
    }

    /// Spec §4.2: gated DeltaNet for the step's tokens of normed input `x`.
    fn deltanet(
        &self,
        s: &B::Step,
        m: &DeltaNetLayer<B>,
        st: &mut B::Layer,
        x: &B::Act,
    ) -> Result<B::Act> {
        let (b, sp) = (&*self.b, &self.splits);
        // 1.–2. q‖k‖v, z, β, α.
        let (mix, z, beta, alpha) = match (&m.proj, &m.gates) {
            (
                Projection::Split {
                    attn_qkv,
                    attn_gate,
                },
                Gates::Split {
                    ssm_beta,
                    ssm_alpha,
                },
            ) => {
                let [mix, z, beta, alpha] =
                    b.matmuls(s, [attn_qkv, attn_gate, ssm_beta, ssm_alpha], x)?;
                (mix, z, beta, alpha)
            }
            (proj, gates) => {
                let (mix, z) = match proj {
                    Projection::Split {
                        attn_qkv,
                        attn_gate,
                    } => {
                        let [mix, z] = b.matmuls(s, [attn_qkv, attn_gate], x)?;
                        (mix, z)
                    }
                    Projection::Fused { ssm_in } => {
                        let f = b.matmul(s, ssm_in, x)?;
                        (b.gather_cols(s, &f, &sp.mix)?, b.gather_cols(s, &f, &sp.z)?)
                    }
                };
                let (beta, alpha) = match gates {
                    Gates::Split {
                        ssm_beta,
                        ssm_alpha,
                    } => {
                        let [beta, alpha] = b.matmuls(s, [ssm_beta, ssm_alpha], x)?;
                        (beta, alpha)
                    }
                    Gates::Fused { ssm_beta_alpha } => {
                        let f = b.matmul(s, ssm_beta_alpha, x)?;
                        (
                            b.gather_cols(s, &f, &sp.beta)?,
                            b.gather_cols(s, &f, &sp.alpha)?,
                        )
                    }
                };
                (mix, z, beta, alpha)
            }
        };
        let p = DeltaNet {
            conv1d: &m.ssm_conv1d,
            dt: &m.ssm_dt,
            a: &m.ssm_a,
            shape: self.hp.delta_shape(),
        };
        let o = b.deltanet(s, st, &p, &mix, [&beta, &alpha])?; // 2.–6.
        let normed = b.norm_gate(s, &o, &m.ssm_norm, &z, self.hp.rms_eps)?; // 7.
        b.matmul(s, &m.ssm_out, &normed) // 8.
    }

    /// The whole forward for one step.
    fn graph(
        &self,
        s: &B::Step,
        states: &mut [B::Layer],
        which: Logits,
        n: usize,
    ) -> Result<B::Act> {
        let (b, eps) = (&*self.b, self.hp.rms_eps);
        let mut h = b.embed(s, &self.token_embd)?;
        let mut x = b.rms_norm(s, &h, &self.layers[0].attn_norm, eps)?; // attn_norm
        for (il, (l, ls)) in self.layers.iter().zip(states.iter_mut()).enumerate() {
            let a = match &l.mixer {
                Mixer::DeltaNet(m) => self.deltanet(s, m, ls, &x)?,
                Mixer::Attention(m) => self.full_attn(s, m, ls, &x)?,
            };
            // attn_residual, attn_post_norm
            let mut xn = b.add_norm(s, &mut h, &a, &l.post_attention_norm, eps)?;
            if il + 1 == self.layers.len() {
                h = b.keep_rows(s, h, which.first(n))?;
                xn = b.keep_rows(s, xn, which.first(n))?;
            }
            // l_out, then the next layer's attn_norm (result_norm after the last)
            let next = self
                .layers
                .get(il + 1)
                .map_or(&self.output_norm, |n| &n.attn_norm);
            x = match &l.ffn {
                // spec §4.3: ffn_out
                Ffn::Moe(m) => b.moe_add_norm(s, m, &xn, (&mut h, next, eps))?,
                Ffn::Dense(d) => {
                    let f = d.forward(b, s, &xn)?;
                    b.add_norm(s, &mut h, &f, next, eps)?
                }
            };
        }
        if which == Logits::Hidden {
            return Ok(x);
        }
        b.matmul(s, &self.output, &x) // result_output
    }
}

impl<B: Backend> Model for Qwen35Moe<B> {
    fn arch(&self) -> &str {
        &self.hp.arch
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
        let d = hp.delta_shape();
        let layers = (0..hp.n_layer)
            .map(|i| match hp.recurrent[i] {
                true => self
                    .b
                    .recurrent_layer(d.conv_dim() * (d.d_conv - 1), d.n_v_head * d.d_v * d.d_k),
                false => self.b.kv_layer(hp.n_head_kv, hp.head_dim, n_ctx, cache),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped demo model (a qwen35moe).
    fn demo_file() -> std::sync::Arc<gguf::GgufFile> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/demo-moe-f16.gguf"
        );
        std::sync::Arc::new(gguf::GgufFile::open(path).expect("demo model"))
    }

    /// Hyperparameters that would break the layer shapes are load errors naming the key.
    #[test]
    fn bad_hyperparameters_are_errors() {
        let hp = Hparams::from_gguf(&Weights::new(demo_file()), "qwen35moe").expect("demo hparams");
        assert!(hp.check().is_ok());
        for (d_conv, ok) in [(1, false), (0, false), (2, true)] {
            let bad = Hparams {
                ssm_d_conv: d_conv,
                ..hp.clone()
            };
            let r = bad.check();
            assert_eq!(r.is_ok(), ok, "d_conv {d_conv}");
            if let Err(e) = r {
                assert!(e.to_string().contains("ssm.conv_kernel"), "{e}");
            }
        }
    }

    /// A batched step (continuous batching) gives each sequence the logits its own forward
    /// gives: decode rows of two sequences and a prompt chunk of a third in one step, then
    /// decode rows alone, then rows the batch cannot take together (two prompt chunks).
    #[test]
    fn a_batched_step_gives_each_sequence_its_own_logits() {
        let m = crate::load(demo_file()).expect("demo model loads");
        let exec = Exec { threads: 2 };
        let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[7, 8, 9], &[]];
        let fresh = || -> Vec<State> {
            prompts
                .iter()
                .map(|p| {
                    let mut st = m.new_state(64).unwrap();
                    if !p.is_empty() {
                        m.forward(p, &mut st, Logits::Last, exec).unwrap();
                    }
                    st
                })
                .collect()
        };
        let (mut alone, mut batched) = (fresh(), fresh());
        let steps: [[&[u32]; 3]; 3] = [
            [&[11], &[12], &[20, 21, 22, 23]],
            [&[13], &[14], &[24]],
            [&[15, 16], &[17], &[25, 26]],
        ];
        for step in steps {
            let want: Vec<Vec<f32>> = alone
                .iter_mut()
                .zip(step)
                .map(|(st, t)| m.forward(t, st, Logits::Last, exec).unwrap())
                .collect();
            let mut rows: Vec<crate::Row<'_>> = batched
                .iter_mut()
                .zip(step)
                .map(|(state, tokens)| crate::Row {
                    tokens,
                    state,
                    which: Logits::Last,
                })
                .collect();
            let got = m.forward_batch(&mut rows, exec).unwrap();
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let err = w
                    .iter()
                    .zip(g)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let scale = w.iter().map(|a| a.abs()).fold(0f32, f32::max);
                assert!(
                    err <= 1e-4 * scale,
                    "sequence {i}: max error {err} of {scale}"
                );
            }
        }
        for (a, b) in alone.iter().zip(&batched) {
            assert_eq!(a.n_past, b.n_past);
        }
        // A batch past a sequence's context is refused before anything runs.
        let mut short = m.new_state(2).unwrap();
        let mut other = m.new_state(8).unwrap();
        let mut rows = [
            crate::Row {
                tokens: &[1, 2, 3],
                state: &mut short,
                which: Logits::Last,
            },
            crate::Row {
                tokens: &[4],
                state: &mut other,
                which: Logits::Last,
            },
        ];
        assert!(m.forward_batch(&mut rows, exec).is_err());
        assert_eq!((short.n_past, other.n_past), (0, 0));
    }

    /// The prompt cache's promise: a sequence put back to a checkpoint continues exactly as it
    /// did from there (DeltaNet state and position restored, the KV rows before it intact).
    #[test]
    fn rewind_to_a_checkpoint_repeats_the_continuation() {
        let m = crate::load(demo_file()).expect("demo model loads");
        let exec = Exec { threads: 2 };
        let mut st = m.new_state(64).unwrap();
        m.forward(&[1, 2, 3, 4, 5, 6, 7, 8], &mut st, Logits::Last, exec)
            .unwrap();
        let cp = m.checkpoint(&st).unwrap();
        assert!(cp.recurrent() && cp.bytes() > 0 && cp.n_past() == 8);
        assert!(cp.at(4).is_none(), "recurrent state cannot be cut back");
        let first = m.forward(&[9, 10, 11], &mut st, Logits::All, exec).unwrap();
        let later = m.forward(&[12], &mut st, Logits::Last, exec).unwrap();
        m.rewind(&mut st, &cp).unwrap();
        assert_eq!(st.n_past, 8);
        let again = m.forward(&[9, 10, 11], &mut st, Logits::All, exec).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            later,
            m.forward(&[12], &mut st, Logits::Last, exec).unwrap()
        );
        // Forward of a checkpoint is refused: it would skip positions never computed.
        let ahead = m.checkpoint(&st).unwrap();
        m.rewind(&mut st, &cp).unwrap();
        assert!(m.rewind(&mut st, &ahead).is_err());
    }
}
