//! The `qwen3moe` layout for synthetic files (Qwen3-30B-A3B and smaller): llama-style attention
//! with per-head q/k norms and a routed MoE in every layer, no shared expert (llama.cpp
//! `LLM_ARCH_QWEN3MOE` tensors and keys). Vocabulary: the Qwen3.5 one (`synth` has only that);
//! real Qwen3 files carry a 151,936-token vocabulary, which changes no layer shape.

use gguf::Value;

use super::fill::Init;
use super::qwen35moe::Planned;

/// Shape of a `qwen3moe` model; names follow the GGUF keys.
#[derive(Clone, Debug)]
pub struct Shape {
    pub n_vocab: u64,
    pub n_ctx_train: u64,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub rope_freq_base: f32,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_ff_exp: u64,
    pub rms_eps: f32,
}

impl Shape {
    /// Qwen3-30B-A3B (its `config.json`: hidden 2048, 48 layers, 32/4 heads of 128, 128 experts
    /// of 768, top-8, θ 1e6), with the Qwen3.5 vocabulary.
    pub fn qwen3_30b_a3b() -> Shape {
        Shape {
            n_vocab: 248_320,
            n_ctx_train: 40_960,
            n_embd: 2048,
            n_layer: 48,
            n_head: 32,
            n_head_kv: 4,
            head_dim: 128,
            rope_freq_base: 1.0e6,
            n_expert: 128,
            n_expert_used: 8,
            n_ff_exp: 768,
            rms_eps: 1.0e-6,
        }
    }

    /// 4 layers, 16 experts of 256, top-4, hidden 256.
    pub fn tiny() -> Shape {
        Shape {
            n_ctx_train: 4096,
            n_embd: 256,
            n_layer: 4,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_expert: 16,
            n_expert_used: 4,
            n_ff_exp: 256,
            ..Shape::qwen3_30b_a3b()
        }
    }

    /// Metadata keys `qwen3moe.*`, typed as llama.cpp's converter writes them.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let u = |k: &str, v: u64| (format!("qwen3moe.{k}"), Value::U32(v as u32));
        let f = |k: &str, v: f32| (format!("qwen3moe.{k}"), Value::F32(v));
        vec![
            u("block_count", self.n_layer),
            u("context_length", self.n_ctx_train),
            u("embedding_length", self.n_embd),
            u("feed_forward_length", self.n_ff_exp * 8),
            u("attention.head_count", self.n_head),
            u("attention.head_count_kv", self.n_head_kv),
            f("rope.freq_base", self.rope_freq_base),
            f("attention.layer_norm_rms_epsilon", self.rms_eps),
            u("expert_used_count", self.n_expert_used),
            u("attention.key_length", self.head_dim),
            u("attention.value_length", self.head_dim),
            u("expert_count", self.n_expert),
            u("expert_feed_forward_length", self.n_ff_exp),
        ]
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> Vec<Planned> {
        let (e, hd) = (self.n_embd, self.head_dim);
        let (q, kv) = (self.n_head * hd, self.n_head_kv * hd);
        let (ff, ne) = (self.n_ff_exp, self.n_expert);
        let mut out = vec![Planned::new(
            "token_embd.weight",
            &[e, self.n_vocab],
            Init::Embedding,
        )];
        for il in 0..self.n_layer {
            let blk = |name: &str, dims: &[u64], init: Init| {
                Planned::new(&format!("blk.{il}.{name}"), dims, init).in_layer(il)
            };
            out.extend([
                blk("attn_norm.weight", &[e], Init::Norm),
                blk("attn_q.weight", &[e, q], Init::Matmul),
                blk("attn_k.weight", &[e, kv], Init::Matmul),
                blk("attn_v.weight", &[e, kv], Init::Matmul),
                blk("attn_output.weight", &[q, e], Init::Matmul),
                blk("attn_q_norm.weight", &[hd], Init::Norm),
                blk("attn_k_norm.weight", &[hd], Init::Norm),
                blk("ffn_norm.weight", &[e], Init::Norm),
                blk("ffn_gate_inp.weight", &[e, ne], Init::Router),
                blk("ffn_gate_exps.weight", &[e, ff, ne], Init::Experts),
                blk("ffn_up_exps.weight", &[e, ff, ne], Init::Experts),
                blk("ffn_down_exps.weight", &[ff, e, ne], Init::Experts),
            ]);
        }
        out.push(Planned::new("output_norm.weight", &[e], Init::Norm));
        out.push(Planned::new(
            "output.weight",
            &[e, self.n_vocab],
            Init::Matmul,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_count() {
        // 3 global + 12 per layer (llama.cpp loads exactly these for qwen3moe).
        assert_eq!(Shape::qwen3_30b_a3b().tensors().len(), 3 + 12 * 48);
    }
}
