//! `qwen35moe` (Qwen3.5-35B-A3B and its kin): a 3:1 stack of gated DeltaNet and gated
//! full-attention layers, each followed by a routed MoE with a sigmoid-gated shared expert.
//! Written top to bottom in the order of `spec/qwen35moe.md` §4 (llama.cpp
//! `src/models/qwen35moe.cpp`).
//!
//! Two siblings share this graph and load through here (see [`Variant`]): `qwen35`, the dense
//! Qwen3.5 (a SwiGLU FFN instead of the MoE; llama.cpp `qwen35.cpp`), and `qwen3next`
//! (Qwen3-Next; llama.cpp `qwen3next.cpp`), which fuses β/α into one projection, may fuse
//! q/k/v/z (`ssm_in`, older files), and groups value heads by key head instead of tiling them.

use crate::error::{Error, Result};
use crate::kv::{CacheConfig, KvCache, KvPass};
use crate::ops::{self, AttnShape, Exec, Rope, RopeStyle};
use crate::weights::{QTensor, Weights};

use super::deltanet;
use super::ffn::{RoutedExperts, SwiGlu};
use super::{Keys, LayerState, Logits, Model, State};

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

    /// Channels of the short convolution: q, k (key heads) and v (value heads).
    fn conv_dim(&self) -> usize {
        2 * self.ssm_n_k_head * self.ssm_d_state + self.ssm_d_inner
    }

    /// The key head value head `j` reads (spec §2.4 for the tiled order; Qwen3-Next groups).
    fn k_head(&self, j: usize) -> usize {
        match self.variant {
            Variant::Qwen35 => j % self.ssm_n_k_head,
            Variant::Qwen3Next => j / (self.ssm_n_v_head / self.ssm_n_k_head),
        }
    }
}

/// DeltaNet's input projection: q‖k‖v for the convolution, and z for the output gate.
#[derive(Debug)]
enum Projection {
    /// `attn_qkv` [n_embd, conv_dim] (in_proj_qkv) and `attn_gate` [n_embd, d_inner] (in_proj_z).
    Split {
        attn_qkv: QTensor,
        attn_gate: QTensor,
    },
    /// Older Qwen3-Next files: `ssm_in` [n_embd, conv_dim + d_inner] with, per key head,
    /// [q (d_state) ‖ k (d_state) ‖ v (r·head_v) ‖ z (r·head_v)], r = value heads per key head.
    Fused { ssm_in: QTensor },
}

/// β and α projections (one value per value head each).
#[derive(Debug)]
enum Gates {
    /// `ssm_beta` and `ssm_alpha`, [n_embd, n_v_head] each (in_proj_b, in_proj_a).
    Split {
        ssm_beta: QTensor,
        ssm_alpha: QTensor,
    },
    /// Qwen3-Next `ssm_ba` [n_embd, 2·n_v_head]: per key head, r β then r α.
    Fused { ssm_beta_alpha: QTensor },
}

/// Spec §4.2 weights (HF names in brackets).
#[derive(Debug)]
struct DeltaNet {
    proj: Projection,
    ssm_conv1d: Vec<f32>, // [d_conv, conv_dim]: taps contiguous per channel
    ssm_dt: Vec<f32>,     // [n_v_head]
    ssm_a: Vec<f32>,      // [n_v_head] = −exp(A_log)
    gates: Gates,
    ssm_norm: Vec<f32>, // [head_v_dim], shared by the heads, no +1
    ssm_out: QTensor,   // [d_inner, n_embd]
}

/// Spec §4.1 weights.
#[derive(Debug)]
struct Attention {
    attn_q: QTensor, // [n_embd, 2·n_head·head_dim]: per head 256 query then 256 gate rows
    attn_k: QTensor, // [n_embd, n_head_kv·head_dim]
    attn_v: QTensor, // [n_embd, n_head_kv·head_dim]
    attn_output: QTensor, // [n_head·head_dim, n_embd]
    attn_q_norm: Vec<f32>, // [head_dim]
    attn_k_norm: Vec<f32>, // [head_dim]
}

#[derive(Debug)]
enum Mixer {
    DeltaNet(DeltaNet),
    Attention(Attention),
}

/// Spec §4.3 weights.
#[derive(Debug)]
struct Moe {
    routed: RoutedExperts,
    ffn_gate_inp_shexp: Vec<f32>, // [n_embd]
    shexp: SwiGlu,                // ffn_{gate,up,down}_shexp
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    mixer: Mixer,
    post_attention_norm: Vec<f32>, // [n_embd]
    ffn: Ffn,
}

/// The FFN half: the MoE of spec §4.3, or `qwen35`'s dense SwiGLU.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once: boxing would buy nothing
enum Ffn {
    Moe(Moe),
    Dense(SwiGlu),
}

/// A loaded `qwen35moe` model.
#[derive(Debug)]
pub struct Qwen35Moe {
    hp: Hparams,
    token_embd: QTensor, // [n_embd, n_vocab]
    layers: Vec<Layer>,
    output_norm: Vec<f32>, // [n_embd]
    output: QTensor,       // [n_embd, n_vocab]
}

impl Qwen35Moe {
    /// Load the tensors of spec §2.2, checking every shape.
    pub fn load(w: &Weights, arch: &str) -> Result<Qwen35Moe> {
        let hp = Hparams::from_gguf(w, arch)?;
        let e = hp.n_embd as u64;
        let v = hp.n_vocab as u64;
        let token_embd = w.get("token_embd.weight", &[e, v])?;
        let layers = (0..hp.n_layer)
            .map(|i| load_layer(w, &hp, i))
            .collect::<Result<Vec<_>>>()?;
        let output = w
            .optional("output.weight", &[e, v])?
            .unwrap_or_else(|| token_embd.clone());
        let output_norm = w.vector("output_norm.weight", e)?;
        Ok(Qwen35Moe {
            hp,
            token_embd,
            layers,
            output_norm,
            output,
        })
    }
}

fn load_layer(w: &Weights, hp: &Hparams, i: usize) -> Result<Layer> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let u = |x: usize| x as u64;
    let e = u(hp.n_embd);
    let mixer = if hp.recurrent[i] {
        let (conv, vh) = (u(hp.conv_dim()), u(hp.ssm_n_v_head));
        Mixer::DeltaNet(DeltaNet {
            proj: if w.has(&n("ssm_in.weight")) {
                let dim = conv + u(hp.ssm_d_inner);
                Projection::Fused {
                    ssm_in: w.get(&n("ssm_in.weight"), &[e, dim])?,
                }
            } else {
                Projection::Split {
                    attn_qkv: w.get(&n("attn_qkv.weight"), &[e, conv])?,
                    attn_gate: w.get(&n("attn_gate.weight"), &[e, u(hp.ssm_d_inner)])?,
                }
            },
            ssm_conv1d: w
                .get(&n("ssm_conv1d.weight"), &[u(hp.ssm_d_conv), conv])?
                .to_f32()?,
            ssm_dt: w.vector(&n("ssm_dt.bias"), vh)?,
            ssm_a: w.vector(&n("ssm_a"), vh)?,
            gates: if hp.variant == Variant::Qwen3Next {
                Gates::Fused {
                    ssm_beta_alpha: w.get(&n("ssm_ba.weight"), &[e, 2 * vh])?,
                }
            } else {
                Gates::Split {
                    ssm_beta: w.get(&n("ssm_beta.weight"), &[e, vh])?,
                    ssm_alpha: w.get(&n("ssm_alpha.weight"), &[e, vh])?,
                }
            },
            ssm_norm: w.vector(&n("ssm_norm.weight"), u(hp.head_v_dim()))?,
            ssm_out: w.get(&n("ssm_out.weight"), &[u(hp.ssm_d_inner), e])?,
        })
    } else {
        let q = u(hp.n_head * hp.head_dim);
        let kv = u(hp.n_head_kv * hp.head_dim);
        Mixer::Attention(Attention {
            attn_q: w.get(&n("attn_q.weight"), &[e, 2 * q])?,
            attn_k: w.get(&n("attn_k.weight"), &[e, kv])?,
            attn_v: w.get(&n("attn_v.weight"), &[e, kv])?,
            attn_output: w.get(&n("attn_output.weight"), &[q, e])?,
            attn_q_norm: w.vector(&n("attn_q_norm.weight"), u(hp.head_dim))?,
            attn_k_norm: w.vector(&n("attn_k_norm.weight"), u(hp.head_dim))?,
        })
    };
    let blk = format!("blk.{i}");
    let ffn = if hp.n_ff > 0 {
        Ffn::Dense(SwiGlu::load(w, &blk, "", hp.n_embd, hp.n_ff)?)
    } else {
        Ffn::Moe(Moe {
            routed: RoutedExperts::load(
                w,
                &blk,
                hp.n_embd,
                hp.n_ff_exp,
                hp.n_expert,
                hp.n_expert_used,
            )?,
            ffn_gate_inp_shexp: w.vector(&n("ffn_gate_inp_shexp.weight"), e)?,
            shexp: SwiGlu::load(w, &blk, "_shexp", hp.n_embd, hp.n_ff_shexp)?,
        })
    };
    Ok(Layer {
        attn_norm: w.vector(&n("attn_norm.weight"), e)?,
        mixer,
        post_attention_norm: w.vector(&n("post_attention_norm.weight"), e)?,
        ffn,
    })
}

impl Qwen35Moe {
    /// Spec §4.1: gated full attention for `n` tokens of normed input `x` from `pos0`.
    fn full_attn(
        &self,
        m: &Attention,
        (kc, vc): (&mut KvCache, &mut KvCache),
        x: &[f32],
        pos0: usize,
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let (n, hd) = (x.len() / hp.n_embd, hp.head_dim);
        let (qw, kvw) = (hp.n_head * hd, hp.n_head_kv * hd);
        let mut qg = vec![0f32; n * 2 * qw];
        let (mut k, mut v) = (vec![0f32; n * kvw], vec![0f32; n * kvw]);
        // 1. per head: query ‖ gate; 2. keys and values.
        let (wq, wk, wv) = (&m.attn_q, &m.attn_k, &m.attn_v);
        ops::matmuls([wq, wk, wv], x, n, [&mut qg, &mut k, &mut v], exec)?;
        let shape = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut o = vec![0f32; n * qw];
        let (mut q, mut gate) = (vec![0f32; n * qw], vec![0f32; n * qw]);
        let mut pass = KvPass::new(kc, vc, pos0)?;
        for t in 0..n {
            let pos = pos0 + t;
            let (qt, gt) = (
                &mut q[t * qw..(t + 1) * qw],
                &mut gate[t * qw..(t + 1) * qw],
            );
            for h in 0..hp.n_head {
                let src = &qg[t * 2 * qw + h * 2 * hd..t * 2 * qw + (h + 1) * 2 * hd];
                qt[h * hd..(h + 1) * hd].copy_from_slice(&src[..hd]);
                gt[h * hd..(h + 1) * hd].copy_from_slice(&src[hd..]);
            }
            let kt = &mut k[t * kvw..(t + 1) * kvw];
            ops::rms_norm_inplace(qt, &m.attn_q_norm, hp.rms_eps); // 3. Qcur_normed
            ops::rms_norm_inplace(kt, &m.attn_k_norm, hp.rms_eps); //    Kcur_normed
            hp.rope.apply(qt, hd, pos); // 4.
            hp.rope.apply(kt, hd, pos);
            pass.push(kt, &v[t * kvw..(t + 1) * kvw])?; // 5.
        }
        pass.attend_all(&q, None, shape, &mut o, exec)?; // 6.
        o.iter_mut()
            .zip(&gate)
            .for_each(|(o, &g)| *o *= ops::sigmoid(g)); // 7.
        let mut out = vec![0f32; n * hp.n_embd];
        ops::matmul(&m.attn_output, &o, n, &mut out, exec)?; // 8.
        Ok(out)
    }

    /// Spec §4.2: gated DeltaNet for `n` tokens of normed input `x` (the delta rule itself in
    /// `models/deltanet/`: recurrent for one token, chunked for more).
    fn deltanet(
        &self,
        m: &DeltaNet,
        (conv, ssm): (&mut [f32], &mut [f32]),
        x: &[f32],
        exec: Exec,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let n = x.len() / hp.n_embd;
        let (di, nv) = (hp.ssm_d_inner, hp.ssm_n_v_head);
        let (mix, z) = self.project(&m.proj, x, exec)?; // 1.
        let (beta, alpha) = self.gates(&m.gates, x, exec)?; // 2.
        let glue = crate::prof::stage("deltanet glue: gates");
        let beta: Vec<f32> = beta.iter().map(|&v| ops::sigmoid(v)).collect();
        let g: Vec<f32> = alpha
            .chunks_exact(nv)
            .flat_map(|at| (0..nv).map(move |j| m.ssm_a[j] * softplus(at[j] + m.ssm_dt[j])))
            .collect();
        drop(glue);
        let (q, k, v) = self.conv_qkv(m, conv, &mix, exec)?; // 3.–4.
        let inputs = deltanet::Inputs {
            q: &q,
            k: &k,
            v: &v,
            beta: &beta,
            g: &g,
        };
        let o = deltanet::run(ssm, &inputs, &self.delta_dims(), exec); // 5.–6.
        let hv = hp.head_v_dim();
        let glue = crate::prof::stage("deltanet glue: output norm");
        let mut normed = vec![0f32; n * di];
        crate::matmul::par_rows(&mut normed, hv, 16 * hv, exec, &|i, nt| {
            ops::rms_norm(&o[i * hv..(i + 1) * hv], &m.ssm_norm, hp.rms_eps, nt); // 7.
            nt.iter_mut()
                .zip(&z[i * hv..(i + 1) * hv])
                .for_each(|(v, &zv)| *v *= ops::silu(zv));
            Ok(())
        })?;
        drop(glue);
        let mut out = vec![0f32; n * hp.n_embd];
        ops::matmul(&m.ssm_out, &normed, n, &mut out, exec)?; // 8.
        Ok(out)
    }

    /// Spec §4.2 steps 3–4 for every token: the short convolution, then q and k L2-normalised
    /// per key head (q also scaled by 1/√d_k); returns q, k (`n × n_k_head·d_k`) and v
    /// (`n × d_inner`).
    fn conv_qkv(
        &self,
        m: &DeltaNet,
        conv: &mut [f32],
        mix: &[f32],
        exec: Exec,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let hp = &self.hp;
        let (cd, dk) = (hp.conv_dim(), hp.ssm_d_state);
        let kw = hp.ssm_n_k_head * dk;
        let n = mix.len() / cd;
        let glue = crate::prof::stage("deltanet glue: conv");
        let y = deltanet::conv(&m.ssm_conv1d, hp.ssm_d_conv, conv, mix, exec)?; // 3.
        drop(glue);
        let _glue = crate::prof::stage("deltanet glue: q/k/v");
        let (mut q, mut k) = (vec![0f32; n * kw], vec![0f32; n * kw]);
        let mut v = vec![0f32; n * hp.ssm_d_inner];
        let q_scale = 1.0 / (dk as f32).sqrt();
        // q, k and v of token t, normed: one row of `v` per token, q and k alongside it.
        let (qd, kd) = (
            crate::matmul::Disjoint::new(&mut q),
            crate::matmul::Disjoint::new(&mut k),
        );
        crate::matmul::par_rows(&mut v, hp.ssm_d_inner, 4 * cd, exec, &|t, vt| {
            let yt = &y[t * cd..(t + 1) * cd];
            // SAFETY: token t alone writes row t of q and of k.
            let (qt, kt) = unsafe { (qd.slice(t * kw, kw), kd.slice(t * kw, kw)) };
            qt.copy_from_slice(&yt[..kw]);
            kt.copy_from_slice(&yt[kw..2 * kw]);
            vt.copy_from_slice(&yt[2 * kw..]);
            for (qh, kh) in qt.chunks_exact_mut(dk).zip(kt.chunks_exact_mut(dk)) {
                l2_norm(qh, hp.rms_eps, q_scale);
                l2_norm(kh, hp.rms_eps, 1.0);
            }
            Ok(())
        })?;
        Ok((q, k, v))
    }

    /// The head layout the delta rule needs.
    fn delta_dims(&self) -> deltanet::Dims {
        let hp = &self.hp;
        deltanet::Dims {
            n_k_head: hp.ssm_n_k_head,
            d_k: hp.ssm_d_state,
            d_v: hp.head_v_dim(),
            k_head: (0..hp.ssm_n_v_head).map(|j| hp.k_head(j)).collect(),
        }
    }

    /// Spec §4.2 step 1: `mix` = q‖k‖v (`n × conv_dim`) and `z` (`n × d_inner`), unpacking the
    /// fused Qwen3-Next form (per key head [q ‖ k ‖ v ‖ z]) into the split layout.
    fn project(&self, p: &Projection, x: &[f32], exec: Exec) -> Result<(Vec<f32>, Vec<f32>)> {
        let hp = &self.hp;
        let n = x.len() / hp.n_embd;
        let (cd, di) = (hp.conv_dim(), hp.ssm_d_inner);
        let (mut mix, mut z) = (vec![0f32; n * cd], vec![0f32; n * di]);
        match p {
            Projection::Split {
                attn_qkv,
                attn_gate,
            } => {
                ops::matmuls([attn_qkv, attn_gate], x, n, [&mut mix, &mut z], exec)?;
            }
            Projection::Fused { ssm_in } => {
                let mut fused = vec![0f32; n * (cd + di)];
                ops::matmul(ssm_in, x, n, &mut fused, exec)?;
                let (nk, dk) = (hp.ssm_n_k_head, hp.ssm_d_state);
                let vg = di / nk; // value (and z) width per key head
                let group = 2 * dk + 2 * vg;
                for t in 0..n {
                    let (src, mt, zt) = (
                        &fused[t * (cd + di)..],
                        &mut mix[t * cd..],
                        &mut z[t * di..],
                    );
                    for g in 0..nk {
                        let s = &src[g * group..(g + 1) * group];
                        mt[g * dk..(g + 1) * dk].copy_from_slice(&s[..dk]);
                        mt[nk * dk + g * dk..nk * dk + (g + 1) * dk]
                            .copy_from_slice(&s[dk..2 * dk]);
                        mt[2 * nk * dk + g * vg..2 * nk * dk + (g + 1) * vg]
                            .copy_from_slice(&s[2 * dk..2 * dk + vg]);
                        zt[g * vg..(g + 1) * vg].copy_from_slice(&s[2 * dk + vg..]);
                    }
                }
            }
        }
        Ok((mix, z))
    }

    /// Spec §4.2 step 2's inputs: the β and α projections (`n × n_v_head` each), unpacking
    /// Qwen3-Next's fused form (per key head r β then r α).
    fn gates(&self, g: &Gates, x: &[f32], exec: Exec) -> Result<(Vec<f32>, Vec<f32>)> {
        let hp = &self.hp;
        let (n, nv) = (x.len() / hp.n_embd, hp.ssm_n_v_head);
        let (mut beta, mut alpha) = (vec![0f32; n * nv], vec![0f32; n * nv]);
        match g {
            Gates::Split {
                ssm_beta,
                ssm_alpha,
            } => {
                ops::matmuls([ssm_beta, ssm_alpha], x, n, [&mut beta, &mut alpha], exec)?;
            }
            Gates::Fused { ssm_beta_alpha } => {
                let mut ba = vec![0f32; n * 2 * nv];
                ops::matmul(ssm_beta_alpha, x, n, &mut ba, exec)?;
                let r = nv / hp.ssm_n_k_head;
                for t in 0..n {
                    for (g, s) in ba[t * 2 * nv..(t + 1) * 2 * nv]
                        .chunks_exact(2 * r)
                        .enumerate()
                    {
                        beta[t * nv + g * r..t * nv + (g + 1) * r].copy_from_slice(&s[..r]);
                        alpha[t * nv + g * r..t * nv + (g + 1) * r].copy_from_slice(&s[r..]);
                    }
                }
            }
        }
        Ok((beta, alpha))
    }

    /// Spec §4.3: the routed experts plus the sigmoid-gated shared expert.
    fn moe(&self, m: &Moe, x: &[f32], exec: Exec) -> Result<Vec<f32>> {
        let e = self.hp.n_embd;
        let mut y = m.routed.forward(x, exec)?; // ffn_moe_out
        let sh = m.shexp.forward(x, exec)?; // ffn_shexp
        let _stage = crate::prof::stage("moe shared-expert gate");
        for (t, (yt, st)) in y.chunks_exact_mut(e).zip(sh.chunks_exact(e)).enumerate() {
            let s = ops::sigmoid(ops::dot(&m.ffn_gate_inp_shexp, &x[t * e..(t + 1) * e]));
            yt.iter_mut().zip(st).for_each(|(a, &b)| *a += s * b);
        }
        Ok(y) // ffn_out
    }
}

impl Model for Qwen35Moe {
    fn arch(&self) -> &str {
        &self.hp.arch
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
            .map(|i| {
                if hp.recurrent[i] {
                    Ok(LayerState::Recurrent {
                        conv: vec![0f32; hp.conv_dim() * (hp.ssm_d_conv - 1)],
                        ssm: vec![0f32; hp.ssm_n_v_head * hp.head_v_dim() * hp.ssm_d_state],
                    })
                } else {
                    LayerState::kv(hp.n_head_kv, hp.head_dim, n_ctx, cache)
                }
            })
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
        let _stage = crate::prof::stage("forward (total)");
        let hp = &self.hp;
        let (n, e) = (tokens.len(), hp.n_embd);
        let pos0 = state.n_past;
        let mut h = super::embed(&self.token_embd, tokens, state)?;
        let mut x = vec![0f32; n * e];
        for (il, (l, ls)) in self.layers.iter().zip(state.layers.iter_mut()).enumerate() {
            let norm = crate::prof::stage("norms, residuals");
            ops::rms_norm_par(&h, &l.attn_norm, hp.rms_eps, &mut x, exec)?; // attn_norm
            drop(norm);
            let a = match (&l.mixer, ls) {
                (Mixer::DeltaNet(m), LayerState::Recurrent { conv, ssm }) => {
                    self.deltanet(m, (conv, ssm), &x, exec)?
                }
                (Mixer::Attention(m), LayerState::Kv { k, v }) => {
                    self.full_attn(m, (k, v), &x, pos0, exec)?
                }
                _ => return Err(Error::StateMismatch { layer: il }),
            };
            let norm = crate::prof::stage("norms, residuals");
            ops::add_inplace(&mut h, &a); // attn_residual
            if il + 1 == self.layers.len() {
                super::keep_output_rows(which, e, &mut [&mut h, &mut x]);
            }
            ops::rms_norm_par(&h, &l.post_attention_norm, hp.rms_eps, &mut x, exec)?; // attn_post_norm
            drop(norm);
            let f = match &l.ffn {
                Ffn::Moe(m) => self.moe(m, &x, exec)?,
                Ffn::Dense(d) => d.forward(&x, exec)?,
            };
            ops::add_inplace(&mut h, &f); // l_out
        }
        state.n_past += n;
        let logits = super::lm_head(&h, &self.output_norm, hp.rms_eps, &self.output, exec)?;
        Ok(logits)
    }
}

/// ln(1 + eˣ), linear past 20 as ggml's softplus (ggml `ggml_softplus` threshold).
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `x ← x / max(‖x‖, eps) · scale` (ggml `l2_norm`).
fn l2_norm(x: &mut [f32], eps: f32, scale: f32) {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let s = scale / norm.max(eps);
    x.iter_mut().for_each(|v| *v *= s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hyperparameters that would break the layer shapes are load errors naming the key.
    #[test]
    fn bad_hyperparameters_are_errors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/demo-moe-f16.gguf"
        );
        let file = std::sync::Arc::new(gguf::GgufFile::open(path).expect("demo model"));
        let hp = Hparams::from_gguf(&Weights::new(file), "qwen35moe").expect("demo hparams");
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

    #[test]
    fn l2_norm_unit() {
        let mut x = vec![3.0, 4.0];
        l2_norm(&mut x, 1e-6, 1.0);
        assert!((x[0] - 0.6).abs() < 1e-6 && (x[1] - 0.8).abs() < 1e-6);
    }
}
