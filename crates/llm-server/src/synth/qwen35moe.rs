//! The `qwen35moe` layout (and its siblings `qwen35`, dense, and `qwen3next`) for synthetic files: hyperparameters of each preset, the metadata keys
//! llama.cpp reads (spec §2.1) and the tensor list with shapes (spec §2.2), in the order the
//! llama.cpp converter writes them.

use gguf::Value;

use super::fill::Init;

/// Shape of a `qwen35moe` model; names follow the GGUF keys (spec §1, §2.1).
#[derive(Clone, Debug)]
pub struct Shape {
    /// `qwen35moe`, `qwen35` (dense FFN) or `qwen3next` (fused β/α, grouped value heads).
    pub arch: &'static str,
    /// Dense FFN width (`qwen35`); 0 for the MoE members.
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u64,
    pub n_embd: u64,
    pub n_layer: u64,
    /// Layer i is full attention iff `(i + 1) % full_attention_interval == 0`.
    pub full_attention_interval: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// `attention.key_length` = `value_length`.
    pub head_dim: u64,
    /// `rope.dimension_count` (partial rotary: a quarter of the head).
    pub n_rot: u64,
    pub rope_sections: [i32; 4],
    pub rope_freq_base: f32,
    /// `ssm.group_count`: DeltaNet key heads.
    pub ssm_n_group: u64,
    /// `ssm.time_step_rank`: DeltaNet value heads.
    pub ssm_dt_rank: u64,
    /// `ssm.state_size`: DeltaNet key/value head dim.
    pub ssm_d_state: u64,
    pub ssm_d_conv: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_ff_exp: u64,
    pub n_ff_shexp: u64,
    pub rms_eps: f32,
}

impl Shape {
    /// Qwen3.5-35B-A3B (spec §1).
    pub fn qwen35_35b_a3b() -> Shape {
        Shape {
            arch: "qwen35moe",
            n_ff: 0,
            n_vocab: 248_320,
            n_ctx_train: 262_144,
            n_embd: 2048,
            n_layer: 40,
            full_attention_interval: 4,
            n_head: 16,
            n_head_kv: 2,
            head_dim: 256,
            n_rot: 64,
            rope_sections: [11, 11, 10, 0],
            rope_freq_base: 1.0e7,
            ssm_n_group: 16,
            ssm_dt_rank: 32,
            ssm_d_state: 128,
            ssm_d_conv: 4,
            n_expert: 256,
            n_expert_used: 8,
            n_ff_exp: 512,
            n_ff_shexp: 512,
            rms_eps: 1.0e-6,
        }
    }

    /// A few layers and 16 experts, same structure (3 DeltaNet : 1 attention, GQA, a key head
    /// per two value heads, partial RoPE), every matmul input a multiple of 256 so K-quants fit.
    pub fn tiny() -> Shape {
        Shape {
            n_ctx_train: 4096,
            n_embd: 256,
            n_layer: 4,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_rot: 16,
            rope_sections: [3, 3, 2, 0],
            ssm_n_group: 2,
            ssm_dt_rank: 4,
            ssm_d_state: 64,
            n_expert: 16,
            n_expert_used: 4,
            n_ff_exp: 256,
            n_ff_shexp: 256,
            ..Shape::qwen35_35b_a3b()
        }
    }

    /// Larger than `tiny`, smaller than the real thing: ~1.8 GB of Q4_K experts, for CPU
    /// benchmarks that must not fit in cache.
    pub fn small() -> Shape {
        Shape {
            n_ctx_train: 32_768,
            n_embd: 1024,
            n_layer: 16,
            n_head: 8,
            n_head_kv: 2,
            head_dim: 128,
            n_rot: 32,
            rope_sections: [6, 5, 5, 0],
            ssm_n_group: 8,
            ssm_dt_rank: 16,
            ssm_d_state: 64,
            n_expert: 128,
            n_expert_used: 8,
            n_ff_exp: 512,
            n_ff_shexp: 512,
            ..Shape::qwen35_35b_a3b()
        }
    }

    /// The same shape as another member of the family: `qwen3next`, or `qwen35` with a dense
    /// FFN of `n_ff` in place of the MoE.
    pub fn into_arch(self, arch: &'static str, n_ff: u64) -> Shape {
        Shape {
            arch,
            n_ff: if arch == "qwen35" { n_ff } else { 0 },
            ..self
        }
    }

    pub fn is_recurrent(&self, layer: u64) -> bool {
        !(layer + 1).is_multiple_of(self.full_attention_interval)
    }

    /// DeltaNet value width: value heads × head dim (`ssm.inner_size`).
    fn d_inner(&self) -> u64 {
        self.ssm_dt_rank * self.ssm_d_state
    }

    /// Channels of the short convolution: q and k (key heads) plus v (value heads).
    fn conv_dim(&self) -> u64 {
        2 * self.ssm_n_group * self.ssm_d_state + self.d_inner()
    }

    /// The metadata keys of spec §2.1, `qwen35moe.` prefix, typed as llama.cpp's converter
    /// writes them (u32 counts, f32 reals, an i32 array for the rope sections).
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let arch = self.arch;
        let u = |k: &str, v: u64| (format!("{arch}.{k}"), Value::U32(v as u32));
        let f = |k: &str, v: f32| (format!("{arch}.{k}"), Value::F32(v));
        let mut md = vec![
            u("block_count", self.n_layer),
            u("context_length", self.n_ctx_train),
            u("embedding_length", self.n_embd),
            u("attention.head_count", self.n_head),
            u("attention.head_count_kv", self.n_head_kv),
            f("rope.freq_base", self.rope_freq_base),
            f("attention.layer_norm_rms_epsilon", self.rms_eps),
        ];
        if self.n_ff > 0 {
            md.push(u("feed_forward_length", self.n_ff));
        } else {
            md.extend([
                u("expert_count", self.n_expert),
                u("expert_used_count", self.n_expert_used),
            ]);
        }
        md.extend([
            u("attention.key_length", self.head_dim),
            u("attention.value_length", self.head_dim),
        ]);
        if self.n_ff == 0 {
            md.push(u("expert_feed_forward_length", self.n_ff_exp));
            md.push(u("expert_shared_feed_forward_length", self.n_ff_shexp));
        }
        md.push(u("rope.dimension_count", self.n_rot));
        // Qwen3-Next has no M-RoPE; llama.cpp reads the sections only for Qwen3.5.
        if arch != "qwen3next" {
            let sections = Value::Array(gguf::Array::I32(self.rope_sections.to_vec()));
            md.push((format!("{arch}.rope.dimension_sections"), sections));
        }
        md.extend([
            u("ssm.conv_kernel", self.ssm_d_conv),
            u("ssm.state_size", self.ssm_d_state),
            u("ssm.group_count", self.ssm_n_group),
            u("ssm.time_step_rank", self.ssm_dt_rank),
            u("ssm.inner_size", self.d_inner()),
            u("full_attention_interval", self.full_attention_interval),
        ]);
        md
    }

    /// Every tensor of the model, in file order, with its shape (GGUF `ne` order) and how to
    /// fill it.
    pub fn tensors(&self) -> Vec<Planned> {
        let e = self.n_embd;
        let mut out = vec![Planned::new(
            "token_embd.weight",
            &[e, self.n_vocab],
            Init::Embedding,
        )];
        for il in 0..self.n_layer {
            let blk = |name: &str, dims: &[u64], init: Init| {
                Planned::new(&format!("blk.{il}.{name}"), dims, init).in_layer(il)
            };
            out.push(blk("attn_norm.weight", &[e], Init::Norm));
            if self.is_recurrent(il) {
                self.push_deltanet(&mut out, &blk);
            } else {
                self.push_attention(&mut out, &blk);
            }
            out.push(blk("post_attention_norm.weight", &[e], Init::Norm));
            self.push_moe(&mut out, &blk);
        }
        out.push(Planned::new("output_norm.weight", &[e], Init::Norm));
        out.push(Planned::new(
            "output.weight",
            &[e, self.n_vocab],
            Init::Matmul,
        ));
        out
    }

    /// Spec §2.2, DeltaNet layer (HF names in brackets).
    fn push_deltanet(&self, out: &mut Vec<Planned>, blk: &dyn Fn(&str, &[u64], Init) -> Planned) {
        let (e, vh) = (self.n_embd, self.ssm_dt_rank);
        out.push(blk("attn_qkv.weight", &[e, self.conv_dim()], Init::Matmul)); // in_proj_qkv
        out.push(blk("attn_gate.weight", &[e, self.d_inner()], Init::Matmul)); // in_proj_z
        out.push(blk(
            "ssm_conv1d.weight",
            &[self.ssm_d_conv, self.conv_dim()],
            Init::Conv,
        ));
        out.push(blk("ssm_dt.bias", &[vh], Init::DtBias));
        out.push(blk("ssm_a", &[vh], Init::SsmA));
        if self.arch == "qwen3next" {
            // Per key head: its value heads' β, then their α (llama.cpp qwen3next.cpp).
            out.push(blk("ssm_ba.weight", &[e, 2 * vh], Init::Matmul));
        } else {
            out.push(blk("ssm_beta.weight", &[e, vh], Init::Matmul)); // in_proj_b
            out.push(blk("ssm_alpha.weight", &[e, vh], Init::Matmul)); // in_proj_a
        }
        out.push(blk("ssm_norm.weight", &[self.ssm_d_state], Init::Norm));
        out.push(blk("ssm_out.weight", &[self.d_inner(), e], Init::Matmul));
    }

    /// Spec §2.2, full-attention layer: q carries a gate half per head.
    fn push_attention(&self, out: &mut Vec<Planned>, blk: &dyn Fn(&str, &[u64], Init) -> Planned) {
        let e = self.n_embd;
        let q = self.head_dim * self.n_head;
        let kv = self.head_dim * self.n_head_kv;
        out.push(blk("attn_q.weight", &[e, 2 * q], Init::Matmul));
        out.push(blk("attn_k.weight", &[e, kv], Init::Matmul));
        out.push(blk("attn_v.weight", &[e, kv], Init::Matmul));
        out.push(blk("attn_output.weight", &[q, e], Init::Matmul));
        out.push(blk("attn_q_norm.weight", &[self.head_dim], Init::Norm));
        out.push(blk("attn_k_norm.weight", &[self.head_dim], Init::Norm));
    }

    /// Spec §2.2, MoE block of every layer: router, 3-D expert tensors, shared expert.
    fn push_moe(&self, out: &mut Vec<Planned>, blk: &dyn Fn(&str, &[u64], Init) -> Planned) {
        let (e, ff, n) = (self.n_embd, self.n_ff_exp, self.n_expert);
        if self.n_ff > 0 {
            // `qwen35`: a dense SwiGLU FFN in every layer.
            out.push(blk("ffn_gate.weight", &[e, self.n_ff], Init::Matmul));
            out.push(blk("ffn_up.weight", &[e, self.n_ff], Init::Matmul));
            out.push(blk("ffn_down.weight", &[self.n_ff, e], Init::Matmul));
            return;
        }
        out.push(blk("ffn_gate_inp.weight", &[e, n], Init::Router));
        out.push(blk("ffn_gate_exps.weight", &[e, ff, n], Init::Experts));
        out.push(blk("ffn_up_exps.weight", &[e, ff, n], Init::Experts));
        out.push(blk("ffn_down_exps.weight", &[ff, e, n], Init::Experts));
        out.push(blk("ffn_gate_inp_shexp.weight", &[e], Init::Matmul));
        out.push(blk(
            "ffn_gate_shexp.weight",
            &[e, self.n_ff_shexp],
            Init::Matmul,
        ));
        out.push(blk(
            "ffn_up_shexp.weight",
            &[e, self.n_ff_shexp],
            Init::Matmul,
        ));
        out.push(blk(
            "ffn_down_shexp.weight",
            &[self.n_ff_shexp, e],
            Init::Matmul,
        ));
    }
}

/// A tensor to write: name, shape, how to fill it, and its layer (for per-layer quant rules).
#[derive(Clone, Debug)]
pub struct Planned {
    pub name: String,
    pub dims: Vec<u64>,
    pub init: Init,
    pub layer: Option<u64>,
}

impl Planned {
    pub fn new(name: &str, dims: &[u64], init: Init) -> Planned {
        Planned {
            name: name.to_string(),
            dims: dims.to_vec(),
            init,
            layer: None,
        }
    }

    pub fn in_layer(mut self, il: u64) -> Planned {
        self.layer = Some(il);
        self
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_counts_match_spec() {
        // Spec §2.2: 733 tensors without MTP; 19 per DeltaNet layer, 16 per attention layer.
        let s = Shape::qwen35_35b_a3b();
        let t = s.tensors();
        assert_eq!(t.len(), 733);
        assert_eq!(
            t.iter().filter(|p| p.name.starts_with("blk.0.")).count(),
            19
        );
        assert_eq!(
            t.iter().filter(|p| p.name.starts_with("blk.3.")).count(),
            16
        );
        let qkv = t
            .iter()
            .find(|p| p.name == "blk.0.attn_qkv.weight")
            .map(|p| p.dims.clone());
        assert_eq!(qkv, Some(vec![2048, 8192]));
        let q = t
            .iter()
            .find(|p| p.name == "blk.3.attn_q.weight")
            .map(|p| p.dims.clone());
        assert_eq!(q, Some(vec![2048, 8192]));
        let down = t
            .iter()
            .find(|p| p.name == "blk.7.ffn_down_exps.weight")
            .map(|p| p.dims.clone());
        assert_eq!(down, Some(vec![512, 2048, 256]));
        // Spec §3.1: 34,660,610,688 parameters without MTP.
        assert_eq!(
            t.iter().map(Planned::n_elements).sum::<u64>(),
            34_660_610_688
        );
    }

    #[test]
    fn layer_pattern() {
        let s = Shape::qwen35_35b_a3b();
        let full: Vec<u64> = (0..s.n_layer).filter(|&i| !s.is_recurrent(i)).collect();
        assert_eq!(full, vec![3, 7, 11, 15, 19, 23, 27, 31, 35, 39]);
    }
}
