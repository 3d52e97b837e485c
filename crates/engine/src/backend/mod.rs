//! The one interface every model's `forward` is written against, and the driver that runs a
//! forward on a backend.
//!
//! A [`Backend`] owns where weights, activations and per-sequence state live and runs the
//! operations of the seven architectures on them: embeddings, norms, matmuls over quantized
//! weights, RoPE, attention over a KV cache, the gated DeltaNet, the routed MoE, the gated
//! activations. Model files (`models/*.rs`) hold the math in the order of their spec and call
//! these ops; they never see a device. [`Cpu`] is the engine's own backend (the worker pool and
//! the x86 kernels); the `cuda` crate implements the same trait for NVIDIA GPUs.
//!
//! The ops take a [`Backend::Step`], what one forward call knows (its tokens, their positions,
//! the thread count), so a backend can keep positions on its device: the CUDA backend records a
//! decode step once as a graph and replays it per token with new positions, which it can only
//! do if no op takes a position as an argument.
//!
//! Activation shapes are rows × width, one row per token; widths are given in each op's doc.

mod cpu;
mod moe;

use std::any::Any;

use crate::error::{Error, Result};
use crate::kv::CacheConfig;
use crate::models::Logits;
use crate::ops::{AttnShape, Exec, Rope};
use crate::weights::QTensor;

pub use cpu::{Cpu, CpuAct, CpuLayer, CpuStep};
pub use moe::experts_sum;

/// Operations on a device, over its own buffers. Errors are the engine's: a backend maps its
/// device failures (out of memory, a failed launch) to [`Error::Backend`].
pub trait Backend: Send + Sync + Sized + 'static {
    /// A weight matrix in its file type: `[row_len, n_rows]`, or `[row_len, n_ff, n_expert]`
    /// for the stacked experts.
    type Mat: Send + Sync + std::fmt::Debug;
    /// An f32 vector (norm weights, biases, per-head parameters, convolution taps).
    type Vector: Send + Sync + std::fmt::Debug;
    /// A column map for [`Backend::gather_cols`].
    type Index: Send + Sync + std::fmt::Debug;
    /// Activations: rows of f32.
    type Act: Send;
    /// One layer's memory of a sequence: a KV cache or a DeltaNet state.
    type Layer: Send;
    /// What a sequence keeps between calls besides its layers (the CUDA backend's recorded
    /// decode graph).
    type SeqExtra: Send + Default;
    /// One forward call's context.
    type Step;

    /// A short name for messages (`cpu`, `cuda:0 (NVIDIA H200)`).
    fn name(&self) -> String;

    /// Take a weight matrix from the file.
    fn mat(&self, t: QTensor) -> Result<Self::Mat>;
    /// Take an f32 vector.
    fn vector(&self, v: Vec<f32>) -> Result<Self::Vector>;
    /// Take a column map.
    fn index(&self, cols: Vec<u32>) -> Result<Self::Index>;
    /// A zeroed KV cache layer for `n_ctx` positions.
    fn kv_layer(
        &self,
        n_head_kv: usize,
        head_dim: usize,
        n_ctx: usize,
        cache: CacheConfig,
    ) -> Result<Self::Layer>;
    /// A zeroed DeltaNet layer state: `conv` convolution values and `ssm` state values.
    fn recurrent_layer(&self, conv: usize, ssm: usize) -> Result<Self::Layer>;
    /// Bytes a layer's KV cache holds (0 for recurrent state).
    fn kv_bytes(&self, l: &Self::Layer) -> usize;
    /// A host copy of a layer's recurrent state (convolution taps, then the state matrices),
    /// for a prompt-cache [`Checkpoint`]; `None` for a KV layer, whose earlier positions stay
    /// as they are when the sequence goes back.
    fn save_layer(&self, l: &Self::Layer) -> Result<Option<Vec<u8>>>;
    /// Put back into a recurrent layer what [`Backend::save_layer`] copied of it.
    fn load_layer(&self, l: &mut Self::Layer, saved: &[u8]) -> Result<()>;

    /// Run one forward call: make the step for `req`, let `graph` compute the output rows
    /// (logits, `n_vocab` wide) and bring them back to the host.
    fn forward(
        &self,
        req: Request<'_>,
        seq: &mut Seq<Self>,
        graph: &mut Graph<'_, Self>,
    ) -> Result<Vec<f32>>;

    /// Whether [`Backend::forward_batch`] runs several sequences in one step.
    fn batches(&self) -> bool {
        false
    }
    /// One forward call over several sequences (continuous batching): the rows of request
    /// `i` follow those of request `i − 1`, at that request's own positions, over the layers
    /// of `seqs[i]`. Row-wise ops see one batch (a matmul of every sequence's rows is one
    /// matrix product); attention and DeltaNet each sequence's own state. The output rows are
    /// those `graph` keeps of the whole batch.
    fn forward_batch(
        &self,
        reqs: &[Request<'_>],
        seqs: &mut [&mut Seq<Self>],
        graph: &mut Graph<'_, Self>,
    ) -> Result<Vec<f32>> {
        let _ = (reqs, seqs, graph);
        Err(Error::Backend {
            backend: self.name(),
            message: "no batched forward".into(),
        })
    }

    /// Rows of the token embedding table `table` (`[n_embd, n_vocab]`) for the step's tokens:
    /// `n × n_embd`.
    fn embed(&self, s: &Self::Step, table: &Self::Mat) -> Result<Self::Act>;
    /// `x ← c·x`.
    fn scale(&self, s: &Self::Step, x: &mut Self::Act, c: f32) -> Result<()>;
    /// RMS norm of each group of `w.len()` values (a row, or a head), times `w`.
    fn rms_norm(
        &self,
        s: &Self::Step,
        x: &Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Act>;
    /// [`Backend::rms_norm`] in place.
    fn rms_norm_inplace(
        &self,
        s: &Self::Step,
        x: &mut Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<()>;
    /// `h ← h + a`.
    fn add(&self, s: &Self::Step, h: &mut Self::Act, a: &Self::Act) -> Result<()>;
    /// `h ← h + a`, then the RMS norm of each row of `h` times `w` (a residual add and the next
    /// norm, which a GPU does in one pass).
    fn add_norm(
        &self,
        s: &Self::Step,
        h: &mut Self::Act,
        a: &Self::Act,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Act>;
    /// `x ← x + b` for every row.
    fn add_bias(&self, s: &Self::Step, x: &mut Self::Act, b: &Self::Vector) -> Result<()>;
    /// `x·wᵀ`: `n × row_len` in, `n × n_rows` out.
    fn matmul(&self, s: &Self::Step, w: &Self::Mat, x: &Self::Act) -> Result<Self::Act>;
    /// Several matrices of the same input at once.
    fn matmuls<const N: usize>(
        &self,
        s: &Self::Step,
        w: [&Self::Mat; N],
        x: &Self::Act,
    ) -> Result<[Self::Act; N]>;
    /// `out[t][j] = x[t][cols[j]]`.
    fn gather_cols(&self, s: &Self::Step, x: &Self::Act, cols: &Self::Index) -> Result<Self::Act>;
    /// Rotate every head (`head_dim` wide) of every row for its token's position.
    fn rope(&self, s: &Self::Step, x: &mut Self::Act, head_dim: usize, rope: Rope) -> Result<()>;
    /// Store the step's keys and values (`n × n_head_kv·head_dim`) at its positions, then
    /// attend: each query row (`n × n_head·head_dim`, normed and rotated) sees the positions up
    /// to its own (within the window, if any). Out: `n × n_head·head_dim`.
    fn attention(
        &self,
        s: &Self::Step,
        layer: &mut Self::Layer,
        qkv: [&Self::Act; 3],
        p: AttnParams,
    ) -> Result<Self::Act>;
    /// The whole of gated attention between its projections (spec qwen35moe §4.1 steps 3–7):
    /// q is columns `q_cols` of `qg` (all of it without), the gate columns `gate_cols` (no
    /// gate without); q and k get their per-head RMS norms (where given) and RoPE; then
    /// [`Backend::attention`], times σ(gate). Made of the ops above here; a GPU does it in
    /// three passes.
    fn attention_block(
        &self,
        s: &Self::Step,
        layer: &mut Self::Layer,
        [qg, k, v]: [Self::Act; 3],
        b: AttnBlock<'_, Self>,
    ) -> Result<Self::Act> {
        attention_block_ops(self, s, layer, [qg, k, v], b)
    }
    /// `x ← x ⊙ σ(g)`.
    fn sigmoid_mul(&self, s: &Self::Step, x: &mut Self::Act, g: &Self::Act) -> Result<()>;
    /// The gated activation `act(gate) ⊙ up`.
    fn glu(&self, s: &Self::Step, gate: Self::Act, up: &Self::Act, kind: Glu) -> Result<Self::Act>;
    /// `w·act(gate) ⊙ up`: a gated FFN's activation and down projection (one pass on a GPU).
    fn glu_matmul(
        &self,
        s: &Self::Step,
        gate: Self::Act,
        up: &Self::Act,
        kind: Glu,
        w: &Self::Mat,
    ) -> Result<Self::Act>;
    /// Routed experts: router, top-k, the chosen experts' SwiGLU FFNs, weighted sum; plus the
    /// shared expert when the block has one.
    fn moe(&self, s: &Self::Step, m: &Experts<Self>, x: &Self::Act) -> Result<Self::Act>;
    /// [`Backend::moe`] of `x` added to the residual `h`, then the RMS norm of `h` times `w`
    /// ([`Backend::add_norm`]): a GPU sums the experts into the residual and norms in one pass.
    fn moe_add_norm(
        &self,
        s: &Self::Step,
        m: &Experts<Self>,
        x: &Self::Act,
        (h, w, eps): (&mut Self::Act, &Self::Vector, f32),
    ) -> Result<Self::Act> {
        let f = self.moe(s, m, x)?;
        self.add_norm(s, h, &f, w, eps)
    }
    /// Spec `qwen35moe.md` §4.2 steps 2–6: gates from the raw β and α projections, the short
    /// convolution of `mix` (`n × conv_dim`: q ‖ k ‖ v), q and k L2-normalised, the delta rule
    /// over the step's tokens. Out: `n × n_v_head·d_v`.
    fn deltanet(
        &self,
        s: &Self::Step,
        layer: &mut Self::Layer,
        p: &DeltaNet<'_, Self>,
        mix: &Self::Act,
        beta_alpha: [&Self::Act; 2],
    ) -> Result<Self::Act>;
    /// Spec §4.2 step 7: RMS norm of each head of `o` (`w.len()` wide) times `silu(z)`.
    fn norm_gate(
        &self,
        s: &Self::Step,
        o: &Self::Act,
        w: &Self::Vector,
        z: &Self::Act,
        eps: f32,
    ) -> Result<Self::Act>;
    /// Rows `first..` of `x`.
    fn keep_rows(&self, s: &Self::Step, x: Self::Act, first: usize) -> Result<Self::Act>;
    /// `x ← c·tanh(x/c)` (Gemma's final logit soft-capping).
    fn softcap(&self, s: &Self::Step, x: &mut Self::Act, c: f32) -> Result<()>;
}

/// A model's forward for one step: from the step and the sequence's layers to the output rows.
pub type Graph<'a, B> = dyn FnMut(&<B as Backend>::Step, &mut [<B as Backend>::Layer]) -> Result<<B as Backend>::Act>
    + 'a;

/// What one forward call is asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The tokens, in order.
    pub tokens: &'a [u32],
    /// Position of the first.
    pub pos0: usize,
    /// Which rows get logits.
    pub which: Logits,
    /// Threads (the CPU backend's pool).
    pub exec: Exec,
}

/// A sequence's state on backend `B`: one entry per layer, and the backend's extra.
#[derive(Debug, Default)]
pub struct Seq<B: Backend> {
    /// Per layer.
    pub layers: Vec<B::Layer>,
    /// The backend's own (recorded graphs).
    pub extra: B::SeqExtra,
}

/// Per-sequence state, as the callers of [`crate::Model`] hold it: positions, and the layers
/// on the model's backend.
pub struct State {
    /// Positions already processed.
    pub n_past: usize,
    /// Capacity in positions.
    pub n_ctx: usize,
    kv_bytes: usize,
    seq: Box<dyn Any + Send>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("n_past", &self.n_past)
            .field("n_ctx", &self.n_ctx)
            .field("kv_bytes", &self.kv_bytes)
            .finish_non_exhaustive()
    }
}

impl State {
    /// A state of `layers` on backend `b`.
    pub fn new<B: Backend>(b: &B, n_ctx: usize, layers: Vec<B::Layer>) -> State {
        let kv_bytes = layers.iter().map(|l| b.kv_bytes(l)).sum();
        State {
            n_past: 0,
            n_ctx,
            kv_bytes,
            seq: Box::new(Seq::<B> {
                layers,
                extra: B::SeqExtra::default(),
            }),
        }
    }

    /// Bytes of the KV caches (every attention layer, keys and values).
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes
    }

    /// The state, leaving in its place an empty one that no model accepts: how a sequence
    /// moves to the thread that runs a batched step while its owner waits for it.
    pub fn take(&mut self) -> State {
        let empty = State {
            n_past: self.n_past,
            n_ctx: self.n_ctx,
            kv_bytes: 0,
            seq: Box::new(()),
        };
        std::mem::replace(self, empty)
    }
}

/// A sequence at a position, for the prompt cache: the position and a host copy of every
/// recurrent layer's state there (DeltaNet's state cannot be cut back, so a sequence can only
/// go back to where a checkpoint was taken; a model without recurrent layers can go back to
/// any earlier position, its KV cache rows before it being untouched by what came after).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    n_past: usize,
    layers: Vec<Option<Vec<u8>>>,
}

impl Checkpoint {
    /// The position (tokens processed).
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Host bytes it holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(Vec::len).sum()
    }

    /// Whether it holds recurrent state (else any earlier position is as good).
    pub fn recurrent(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// The sequence at another position `n`, for a model without recurrent layers (where
    /// any position up to the sequence's own is as good as another).
    pub fn at(&self, n: usize) -> Option<Checkpoint> {
        (!self.recurrent()).then(|| Checkpoint {
            n_past: n,
            layers: self.layers.clone(),
        })
    }
}

/// A [`Checkpoint`] of `state` where it is now, on backend `b`.
pub fn checkpoint<B: Backend>(b: &B, state: &State) -> Result<Checkpoint> {
    let seq = state
        .seq
        .downcast_ref::<Seq<B>>()
        .ok_or(Error::StateMismatch { layer: 0 })?;
    Ok(Checkpoint {
        n_past: state.n_past,
        layers: seq
            .layers
            .iter()
            .map(|l| b.save_layer(l))
            .collect::<Result<_>>()?,
    })
}

/// Put `state` back to checkpoint `cp`, taken of this same state (the caller keeps that
/// promise: a checkpoint of another sequence would mix two histories) at a position not past
/// the current one.
pub fn rewind<B: Backend>(b: &B, state: &mut State, cp: &Checkpoint) -> Result<()> {
    if cp.n_past > state.n_past {
        return Err(Error::Shape(format!(
            "rewind to position {} of a sequence at {}",
            cp.n_past, state.n_past
        )));
    }
    let seq = state
        .seq
        .downcast_mut::<Seq<B>>()
        .ok_or(Error::StateMismatch { layer: 0 })?;
    if seq.layers.len() != cp.layers.len() {
        return Err(Error::StateMismatch { layer: 0 });
    }
    for (i, (l, saved)) in seq.layers.iter_mut().zip(&cp.layers).enumerate() {
        match saved {
            Some(bytes) => b.load_layer(l, bytes)?,
            None if b.save_layer(l)?.is_some() => return Err(Error::StateMismatch { layer: i }),
            None => {}
        }
    }
    state.n_past = cp.n_past;
    Ok(())
}

/// Run `graph` on backend `b` for `tokens` of a sequence in `state`: checks the batch fits the
/// state and the token ids the vocabulary, then hands over to [`Backend::forward`].
pub fn run<B: Backend>(
    b: &B,
    n_vocab: usize,
    (tokens, which, exec): (&[u32], Logits, Exec),
    state: &mut State,
    graph: &mut Graph<'_, B>,
) -> Result<Vec<f32>> {
    let n = tokens.len();
    check_fits(n_vocab, tokens, state)?;
    let seq = state
        .seq
        .downcast_mut::<Seq<B>>()
        .ok_or(Error::StateMismatch { layer: 0 })?;
    let req = Request {
        tokens,
        pos0: state.n_past,
        which,
        exec,
    };
    let logits = b.forward(req, seq, graph)?;
    state.n_past += n;
    Ok(logits)
}

/// One sequence's part of a batched forward ([`crate::Model::forward_batch`]).
#[derive(Debug)]
pub struct Row<'a> {
    /// Its next tokens.
    pub tokens: &'a [u32],
    /// Its state, advanced by the call.
    pub state: &'a mut State,
    /// Which of its rows get logits.
    pub which: Logits,
}

/// A model's forward for a step of `n` rows of which `which` get outputs (the batch's, not
/// one sequence's).
pub type BatchGraph<'a, B> = dyn FnMut(
        &<B as Backend>::Step,
        &mut [<B as Backend>::Layer],
        Logits,
        usize,
    ) -> Result<<B as Backend>::Act>
    + 'a;

/// Run `rows` (sequences with their next tokens) through `graph` on backend `b`: as one step
/// where the backend batches and the rows allow it (every row wants its last token's logits
/// and at most one row is more than a token — a prompt chunk, placed first, so the rows that
/// get logits are the batch's last ones), else one [`run`] per row. Logits per row, in order.
pub fn run_batch<B: Backend>(
    b: &B,
    n_vocab: usize,
    rows: &mut [Row<'_>],
    exec: Exec,
    graph: &mut BatchGraph<'_, B>,
) -> Result<Vec<Vec<f32>>> {
    let multi = rows.iter().filter(|r| r.tokens.len() > 1).count();
    let together = b.batches()
        && rows.len() > 1
        && multi <= 1
        && rows
            .iter()
            .all(|r| r.which == Logits::Last && !r.tokens.is_empty());
    if !together {
        return rows
            .iter_mut()
            .map(|r| {
                let (n, which) = (r.tokens.len(), r.which);
                run(b, n_vocab, (r.tokens, which, exec), r.state, &mut |s, l| {
                    graph(s, l, which, n)
                })
            })
            .collect();
    }
    for r in rows.iter() {
        check_fits(n_vocab, r.tokens, r.state)?;
    }
    // The prompt chunk (if any) first; the others keep their order.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].tokens.len() == 1);
    let n: usize = rows.iter().map(|r| r.tokens.len()).sum();
    let first = rows[order[0]].tokens.len() - 1;
    let reqs: Vec<Request<'_>> = order
        .iter()
        .map(|&i| Request {
            tokens: rows[i].tokens,
            pos0: rows[i].state.n_past,
            which: Logits::Last,
            exec,
        })
        .collect();
    let mut seqs: Vec<Option<&mut Seq<B>>> = rows
        .iter_mut()
        .map(|r| r.state.seq.downcast_mut::<Seq<B>>())
        .collect();
    let mut ordered = order
        .iter()
        .map(|&i| seqs[i].take().ok_or(Error::StateMismatch { layer: 0 }))
        .collect::<Result<Vec<_>>>()?;
    let out = b.forward_batch(&reqs, &mut ordered, &mut |s, l| {
        graph(s, l, Logits::From(first), n)
    })?;
    drop(ordered);
    if out.len() != rows.len() * n_vocab {
        return Err(Error::Shape(format!(
            "a batch of {} sequences gave {} logits",
            rows.len(),
            out.len()
        )));
    }
    let mut logits = vec![Vec::new(); rows.len()];
    for (k, &i) in order.iter().enumerate() {
        logits[i] = out[k * n_vocab..(k + 1) * n_vocab].to_vec();
    }
    for r in rows.iter_mut() {
        r.state.n_past += r.tokens.len();
    }
    Ok(logits)
}

/// `tokens` fit the state's context and the vocabulary.
fn check_fits(n_vocab: usize, tokens: &[u32], state: &State) -> Result<()> {
    if state.n_past + tokens.len() > state.n_ctx {
        return Err(Error::ContextFull {
            needed: state.n_past + tokens.len(),
            n_ctx: state.n_ctx,
        });
    }
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(Error::BadToken { id, n_vocab });
    }
    Ok(())
}

/// Parameters of [`Backend::attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    /// Heads and scale.
    pub shape: AttnShape,
    /// A sliding window: keys with `pos − p < window` only (llama.cpp `is_masked_swa`).
    pub window: Option<usize>,
}

/// [`Backend::attention_block`] made of the backend's single ops (the default, and a GPU's
/// fallback).
pub fn attention_block_ops<B: Backend>(
    be: &B,
    s: &B::Step,
    layer: &mut B::Layer,
    [qg, mut k, v]: [B::Act; 3],
    b: AttnBlock<'_, B>,
) -> Result<B::Act> {
    let gate = match b.gate_cols {
        Some(c) => Some(be.gather_cols(s, &qg, c)?),
        None => None,
    };
    let mut q = match b.q_cols {
        Some(c) => be.gather_cols(s, &qg, c)?,
        None => qg,
    };
    if let Some(w) = b.q_norm {
        be.rms_norm_inplace(s, &mut q, w, b.eps)?;
    }
    if let Some(w) = b.k_norm {
        be.rms_norm_inplace(s, &mut k, w, b.eps)?;
    }
    let hd = b.attn.shape.head_dim;
    be.rope(s, &mut q, hd, b.rope)?;
    be.rope(s, &mut k, hd, b.rope)?;
    let mut o = be.attention(s, layer, [&q, &k, &v], b.attn)?;
    if let Some(g) = gate {
        be.sigmoid_mul(s, &mut o, &g)?;
    }
    Ok(o)
}

/// What [`Backend::attention_block`] does around the attention itself.
pub struct AttnBlock<'a, B: Backend> {
    /// The query columns of the projection (`None`: all of it).
    pub q_cols: Option<&'a B::Index>,
    /// The gate columns (`None`: no output gate).
    pub gate_cols: Option<&'a B::Index>,
    /// Per-head RMS norm weights of q.
    pub q_norm: Option<&'a B::Vector>,
    /// Per-head RMS norm weights of k.
    pub k_norm: Option<&'a B::Vector>,
    /// The norms' epsilon.
    pub eps: f32,
    /// Positions, applied to q and k.
    pub rope: Rope,
    /// Heads, scale, window.
    pub attn: AttnParams,
}

impl<B: Backend> std::fmt::Debug for AttnBlock<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttnBlock")
            .field("gated", &self.gate_cols.is_some())
            .field("q_norm", &self.q_norm.is_some())
            .field("k_norm", &self.k_norm.is_some())
            .field("rope", &self.rope)
            .field("attn", &self.attn)
            .finish()
    }
}

/// The activation of a gated FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glu {
    /// `silu(gate) ⊙ up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) ⊙ up` (Gemma's GEGLU; the CPU rounds through ggml's f16 table).
    Gelu,
}

/// A routed-expert block's weights (llama.cpp `build_moe_ffn` with softmax gating and top-k
/// weights renormalised).
#[derive(Debug)]
pub struct Experts<B: Backend> {
    /// Router, `[n_embd, n_expert]`.
    pub gate_inp: B::Mat,
    /// `[n_embd, n_ff_exp, n_expert]`.
    pub gate_exps: B::Mat,
    /// `[n_embd, n_ff_exp, n_expert]`.
    pub up_exps: B::Mat,
    /// `[n_ff_exp, n_embd, n_expert]`.
    pub down_exps: B::Mat,
    /// Experts per token.
    pub n_expert_used: usize,
    /// Experts in all.
    pub n_expert: usize,
    /// Expert FFN width.
    pub n_ff_exp: usize,
    /// The shared expert, if any.
    pub shared: Option<SharedExpert<B>>,
}

/// A MoE block's shared expert: a SwiGLU FFN every token takes, its output scaled by
/// `σ(gate_inp · x)` when there is a gate (Qwen's `ffn_gate_inp_shexp`).
#[derive(Debug)]
pub struct SharedExpert<B: Backend> {
    /// `[n_embd, n_ff_shexp]`.
    pub gate: B::Mat,
    /// `[n_embd, n_ff_shexp]`.
    pub up: B::Mat,
    /// `[n_ff_shexp, n_embd]`.
    pub down: B::Mat,
    /// `[n_embd]`.
    pub gate_inp: Option<B::Vector>,
}

/// The shape of a gated DeltaNet layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaShape {
    /// Key (and query) heads.
    pub n_k_head: usize,
    /// Value heads.
    pub n_v_head: usize,
    /// Key head width.
    pub d_k: usize,
    /// Value head width.
    pub d_v: usize,
    /// Convolution taps.
    pub d_conv: usize,
    /// Value head `j` reads key head `j / (n_v_head / n_k_head)` (Qwen3-Next) instead of
    /// `j mod n_k_head` (Qwen3.5).
    pub grouped: bool,
    /// The L2 norms' epsilon.
    pub eps: f32,
}

impl DeltaShape {
    /// Channels of the convolution: q, k and v.
    pub fn conv_dim(&self) -> usize {
        2 * self.n_k_head * self.d_k + self.n_v_head * self.d_v
    }

    /// The key head value head `j` reads.
    pub fn k_head(&self, j: usize) -> usize {
        match self.grouped {
            true => j / (self.n_v_head / self.n_k_head),
            false => j % self.n_k_head,
        }
    }
}

/// The weights [`Backend::deltanet`] reads.
#[derive(Debug)]
pub struct DeltaNet<'a, B: Backend> {
    /// Convolution taps, `[d_conv, conv_dim]` (taps contiguous per channel).
    pub conv1d: &'a B::Vector,
    /// Time-step bias, `[n_v_head]`.
    pub dt: &'a B::Vector,
    /// `−exp(A_log)`, `[n_v_head]`.
    pub a: &'a B::Vector,
    /// Heads and widths.
    pub shape: DeltaShape,
}
