//! Feed-forward blocks shared by several architectures: the dense SwiGLU FFN and the loading of
//! a routed mixture of experts (llama.cpp `build_ffn` with `LLM_FFN_SILU`/`LLM_FFN_PAR`, and
//! `build_moe_ffn`, which runs as one backend op).

use crate::backend::{Backend, Experts, Glu, SharedExpert};
use crate::error::Result;
use crate::weights::Weights;

/// `down(silu(gate·x) ⊙ up·x)`.
#[derive(Debug)]
pub struct SwiGlu<B: Backend> {
    gate: B::Mat, // [n_embd, n_ff]
    up: B::Mat,   // [n_embd, n_ff]
    down: B::Mat, // [n_ff, n_embd]
}

impl<B: Backend> SwiGlu<B> {
    /// `{blk}.ffn_gate{suffix}`, `…_up…`, `…_down…` (e.g. `blk.0.ffn_gate` or, with suffix
    /// `_shexp`, the shared expert).
    pub fn load(
        b: &B,
        w: &Weights,
        (blk, suffix): (&str, &str),
        n_embd: usize,
        n_ff: usize,
    ) -> Result<SwiGlu<B>> {
        let (e, f) = (n_embd as u64, n_ff as u64);
        Ok(SwiGlu {
            gate: b.mat(w.get(&format!("{blk}.ffn_gate{suffix}.weight"), &[e, f])?)?,
            up: b.mat(w.get(&format!("{blk}.ffn_up{suffix}.weight"), &[e, f])?)?,
            down: b.mat(w.get(&format!("{blk}.ffn_down{suffix}.weight"), &[f, e])?)?,
        })
    }

    /// The FFN on the rows of `x`.
    pub fn forward(&self, b: &B, s: &B::Step, x: &B::Act) -> Result<B::Act> {
        self.forward_with(b, s, x, Glu::Silu)
    }

    /// The FFN with another gate activation (Gemma's GEGLU).
    pub fn forward_with(&self, b: &B, s: &B::Step, x: &B::Act, glu: Glu) -> Result<B::Act> {
        let [gate, up] = b.matmuls(s, [&self.gate, &self.up], x)?; // ffn_gate, ffn_up
        b.glu_matmul(s, gate, &up, glu, &self.down) // ffn_swiglu, ffn_down
    }

    /// The same weights as a MoE block's shared expert.
    pub fn into_shared(self, gate_inp: Option<B::Vector>) -> SharedExpert<B> {
        SharedExpert {
            gate: self.gate,
            up: self.up,
            down: self.down,
            gate_inp,
        }
    }
}

/// `blk.N.ffn_gate_inp` and the three `*_exps` tensors.
pub fn load_experts<B: Backend>(
    b: &B,
    w: &Weights,
    blk: &str,
    n_embd: usize,
    (n_ff_exp, n_expert, n_expert_used): (usize, usize, usize),
) -> Result<Experts<B>> {
    let (e, f, ne) = (n_embd as u64, n_ff_exp as u64, n_expert as u64);
    Ok(Experts {
        gate_inp: b.mat(w.get(&format!("{blk}.ffn_gate_inp.weight"), &[e, ne])?)?,
        gate_exps: b.mat(w.get(&format!("{blk}.ffn_gate_exps.weight"), &[e, f, ne])?)?,
        up_exps: b.mat(w.get(&format!("{blk}.ffn_up_exps.weight"), &[e, f, ne])?)?,
        down_exps: b.mat(w.get(&format!("{blk}.ffn_down_exps.weight"), &[f, e, ne])?)?,
        n_expert_used,
        n_expert,
        n_ff_exp,
        shared: None,
    })
}
