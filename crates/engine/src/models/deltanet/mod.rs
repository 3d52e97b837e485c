//! The gated delta rule of a DeltaNet layer (spec `qwen35moe.md` §4.2 steps 5–6), in two forms
//! that compute the same thing:
//!
//! - **recurrent**, token by token: decay the state, write the token's value under its key,
//!   read the output with its query. The decode path (one token) and the reference in tests;
//!   the recurrence of llama.cpp's CPU kernel (`ggml_compute_forward_gated_delta_net`), which
//!   llama.cpp runs for prefill too.
//! - **chunked**, for prefill: tokens in chunks of 64 (llama.cpp
//!   `build_delta_net_chunking`), each chunk's writes found at once by solving a small
//!   triangular system (the WY/UT form), so the state is read and written once per chunk
//!   instead of four times per token.
//!
//! Value heads are independent and run in parallel on the CPU pool. The f32 loops are AVX2 +
//! FMA kernels where the CPU has them (`kernels.rs`, `x86.rs`). At Qwen3.5-35B-A3B's shape
//! (32 heads of 128 × 128) the chunked form runs a 512-token prefill in about 0.55–0.65× the
//! recurrent form's time on one core (`examples/deltanet_bench.rs`): the same multiply-adds,
//! but as small matrix products whose operands stay in registers.
//!
//! Notation per value head (state `S`, `d_v × d_k`, row `a` contiguous as ggml stores it), for
//! tokens `t` of a chunk starting from state `S₀`, with `γ_t = g_0 + … + g_t` (log-decays
//! summed within the chunk):
//!
//! ```text
//! recurrent:  S ← e^{g_t} S;  u_t = β_t (v_t − S k_t);  S ← S + u_t k_tᵀ;  o_t = S q_t
//! chunked:    u_t + Σ_{s<t} β_t e^{γ_t−γ_s} (k_t·k_s) u_s = β_t (v_t − e^{γ_t} S₀ k_t)
//!             o_t = e^{γ_t} S₀ q_t + Σ_{s≤t} e^{γ_t−γ_s} (q_t·k_s) u_s
//!             S  ← e^{γ_L} S₀ + Σ_s e^{γ_L−γ_s} u_s k_sᵀ          (L: the chunk's last token)
//! ```
//! The first line is a unit lower-triangular system in the `u_t`, solved by forward
//! substitution. Cumulative decays are summed and exponentiated in f64: a chunk's `γ` can reach
//! hundreds, and the difference of two such f32 sums would lose the digits that matter.

mod kernels;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::Mutex;

use crate::ops::Exec;
use crate::pool::Pool;
use kernels::{F32Ops, Part, Portable};

/// Tokens per chunk (llama.cpp's `CS` for gated DeltaNet).
pub const CHUNK: usize = 64;

/// Head layout of one DeltaNet layer.
#[derive(Clone, Debug)]
pub struct Dims {
    /// Key heads (`ssm.group_count`).
    pub n_k_head: usize,
    /// Key head width (`ssm.state_size`).
    pub d_k: usize,
    /// Value head width.
    pub d_v: usize,
    /// For each value head, the key (and query) head it reads.
    pub k_head: Vec<usize>,
}

impl Dims {
    fn n_v_head(&self) -> usize {
        self.k_head.len()
    }
}

/// One call's inputs, token-major.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Queries, `n × n_k_head × d_k`, L2-normalised and scaled by `1/√d_k`.
    pub q: &'a [f32],
    /// Keys, `n × n_k_head × d_k`, L2-normalised.
    pub k: &'a [f32],
    /// Values, `n × n_v_head × d_v`.
    pub v: &'a [f32],
    /// Write strengths β (after the sigmoid), `n × n_v_head`.
    pub beta: &'a [f32],
    /// Log-decays g ≤ 0, `n × n_v_head`.
    pub g: &'a [f32],
}

/// How [`run`] processes a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Token by token.
    Recurrent,
    /// In chunks of [`CHUNK`].
    Chunked,
}

/// Run the delta rule over `n` tokens (`n = beta.len() / n_v_head`), updating `state`
/// (`n_v_head × d_v × d_k`); returns the outputs `o`, `n × n_v_head × d_v`.
///
/// One token goes through the recurrent form, more through the chunked one, except for heads
/// narrower than 64: the chunked form's `len²` terms then outweigh what its register blocking
/// saves (measured with `examples/deltanet_bench.rs`: at 32 × 32 heads it is 1.35× slower, at
/// 64 × 64 1.1× faster, at 128 × 128 1.7× faster).
pub fn run(state: &mut [f32], x: &Inputs, d: &Dims, exec: Exec) -> Vec<f32> {
    let n = x.beta.len() / d.n_v_head().max(1);
    let form = if n > 1 && d.d_k.min(d.d_v) >= 64 {
        Form::Chunked
    } else {
        Form::Recurrent
    };
    run_with(state, x, d, form, exec)
}

/// State multiply-adds per call under which the heads run on the calling thread alone: waking
/// the pool costs more than it saves (a decode step of 8 heads of 32 × 32 ran 1.4× slower on
/// two threads than on one).
const MIN_PARALLEL_WORK: usize = 1 << 18;

/// [`run`] with the form chosen by the caller.
pub fn run_with(state: &mut [f32], x: &Inputs, d: &Dims, form: Form, exec: Exec) -> Vec<f32> {
    let _stage = crate::prof::stage("deltanet");
    let (nv, dv, dk) = (d.n_v_head(), d.d_v, d.d_k);
    let n = x.beta.len() / nv.max(1);
    // One slot per value head: its state and its outputs (`n × d_v`), taken by one thread.
    let heads: Vec<Mutex<(&mut [f32], Vec<f32>)>> = state
        .chunks_exact_mut(dv * dk)
        .map(|s| Mutex::new((s, vec![0f32; n * dv])))
        .collect();
    let pool = Pool::global(exec.threads);
    let mut threads = pool.threads().min(exec.threads).clamp(1, nv.max(1));
    if n * nv * dv * dk < MIN_PARALLEL_WORK {
        threads = 1;
    }
    #[cfg(target_arch = "x86_64")]
    let avx2 = kernels::Avx2::detect();
    let job = |i: usize| {
        if i >= threads {
            return;
        }
        for j in (i..nv).step_by(threads) {
            let mut slot = heads[j].lock().unwrap_or_else(|e| e.into_inner());
            let (s, o) = &mut *slot;
            let h = Head { x, d, j };
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = avx2 {
                // SAFETY: the token proves the CPU has AVX2 and FMA.
                unsafe { h.run_avx2(k, form, s, o) };
                continue;
            }
            h.run(Portable, form, s, o);
        }
    };
    pool.run_parts(threads, &job);
    let mut out = vec![0f32; n * nv * dv];
    for (j, slot) in heads.into_iter().enumerate() {
        let (_, o) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
        for (t, ot) in o.chunks_exact(dv).enumerate() {
            out[(t * nv + j) * dv..(t * nv + j + 1) * dv].copy_from_slice(ot);
        }
    }
    out
}

/// One value head's share of a call.
struct Head<'a, 'b> {
    x: &'a Inputs<'b>,
    d: &'a Dims,
    j: usize,
}

impl<'b> Head<'_, 'b> {
    /// [`Head::run`] compiled with AVX2 and FMA, so the kernels inline.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, k: kernels::Avx2, form: Form, s: &mut [f32], o: &mut [f32]) {
        self.run(k, form, s, o);
    }

    /// Every token through `form`: `s` the head's state, `o` its outputs (`n × d_v`).
    #[inline(always)]
    fn run<K: F32Ops>(&self, k: K, form: Form, s: &mut [f32], o: &mut [f32]) {
        match form {
            Form::Recurrent => self.recurrent(k, s, o),
            Form::Chunked => {
                let n = o.len() / self.d.d_v;
                let mut work = Work::new(self.d, n.min(CHUNK));
                for t0 in (0..n).step_by(CHUNK) {
                    let len = CHUNK.min(n - t0);
                    work.load(self, t0, len);
                    work.solve(k, s);
                    work.outputs(k, &mut o[t0 * self.d.d_v..(t0 + len) * self.d.d_v]);
                    work.update(k, s);
                }
            }
        }
    }

    /// Query, key and value rows of token `t`.
    #[inline(always)]
    fn qkv(&self, t: usize) -> (&'b [f32], &'b [f32], &'b [f32]) {
        let (d, x) = (self.d, self.x);
        let (kw, nv, dk, dv) = (d.n_k_head * d.d_k, d.n_v_head(), d.d_k, d.d_v);
        let kh = d.k_head[self.j];
        let (q, k, v) = (x.q, x.k, x.v);
        (
            &q[t * kw + kh * dk..t * kw + (kh + 1) * dk],
            &k[t * kw + kh * dk..t * kw + (kh + 1) * dk],
            &v[(t * nv + self.j) * dv..(t * nv + self.j + 1) * dv],
        )
    }

    /// β and g of token `t`.
    #[inline(always)]
    fn gates(&self, t: usize) -> (f32, f32) {
        let i = t * self.d.n_v_head() + self.j;
        (self.x.beta[i], self.x.g[i])
    }

    /// The recurrent form: llama.cpp's CPU kernel, rows fused (each row's update needs only
    /// that row) and the query pre-scaled instead of the output.
    #[inline(always)]
    fn recurrent<K: F32Ops>(&self, ops: K, s: &mut [f32], o: &mut [f32]) {
        let dk = self.d.d_k;
        for (t, ot) in o.chunks_exact_mut(self.d.d_v).enumerate() {
            let (q, k, v) = self.qkv(t);
            let (beta, g) = self.gates(t);
            let decay = g.exp();
            s.iter_mut().for_each(|e| *e *= decay);
            for (a, row) in s.chunks_exact_mut(dk).enumerate() {
                let u = beta * (v[a] - ops.dot(row, k));
                ops.axpy(row, u, k);
                ot[a] = ops.dot(row, q);
            }
        }
    }
}

/// One chunk of one value head: its inputs gathered contiguously, and the intermediate sums.
struct Work {
    len: usize,
    d_k: usize,
    d_v: usize,
    /// Queries, keys (`len × d_k`) and values (`len × d_v`) of the chunk.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    beta: Vec<f32>,
    /// γ_t, the log-decays summed from the chunk's start (f64, see the module note).
    gamma: Vec<f64>,
    /// `e^{γ_t}`, and `e^{γ_t − γ_s}` for `s ≤ t` (`len × len`, row `t`).
    decay0: Vec<f32>,
    decay: Vec<f32>,
    /// `k_t·k_s` and `q_t·k_s` (`len × len`, row `t`).
    kk: Vec<f32>,
    qk: Vec<f32>,
    /// `S₀ q_t` (`len × d_v`).
    sq: Vec<f32>,
    /// `S₀ k_t`, then the writes `u_t` in its place (`len × d_v`).
    u: Vec<f32>,
}

impl Work {
    /// Buffers for chunks of up to `cap` tokens.
    fn new(d: &Dims, cap: usize) -> Work {
        let (dk, dv) = (d.d_k, d.d_v);
        Work {
            len: 0,
            d_k: dk,
            d_v: dv,
            q: vec![0f32; cap * dk],
            k: vec![0f32; cap * dk],
            v: vec![0f32; cap * dv],
            beta: vec![0f32; cap],
            gamma: vec![0f64; cap],
            decay0: vec![0f32; cap],
            decay: vec![0f32; cap * cap],
            kk: vec![0f32; cap * cap],
            qk: vec![0f32; cap * cap],
            sq: vec![0f32; cap * dv],
            u: vec![0f32; cap * dv],
        }
    }

    /// Gather tokens `t0..t0 + len` of the head, and the decays between them.
    #[inline(always)]
    fn load(&mut self, h: &Head, t0: usize, len: usize) {
        let (dk, dv) = (self.d_k, self.d_v);
        self.len = len;
        let mut gamma = 0f64;
        for c in 0..len {
            let (q, k, v) = h.qkv(t0 + c);
            let (beta, g) = h.gates(t0 + c);
            self.q[c * dk..(c + 1) * dk].copy_from_slice(q);
            self.k[c * dk..(c + 1) * dk].copy_from_slice(k);
            self.v[c * dv..(c + 1) * dv].copy_from_slice(v);
            self.beta[c] = beta;
            gamma += f64::from(g);
            self.gamma[c] = gamma;
            self.decay0[c] = (gamma as f32).exp();
        }
        for t in 0..len {
            for s in 0..=t {
                self.decay[t * len + s] = ((self.gamma[t] - self.gamma[s]) as f32).exp();
            }
        }
    }

    /// The writes `u_t`: `S₀ k_t` and `S₀ q_t` from the state, the key and query Gram
    /// matrices, then forward substitution through the unit lower-triangular system.
    #[inline(always)]
    fn solve<K: F32Ops>(&mut self, ops: K, s: &[f32]) {
        let (dk, dv, len) = (self.d_k, self.d_v, self.len);
        let (k, q) = (&self.k[..len * dk], &self.q[..len * dk]);
        kernels::gemm_nt(ops, (s, k), dk, &mut self.u[..len * dv], Part::Full);
        kernels::gemm_nt(ops, (s, q), dk, &mut self.sq[..len * dv], Part::Full);
        kernels::gemm_nt(ops, (k, k), dk, &mut self.kk[..len * len], Part::Lower);
        kernels::gemm_nt(ops, (k, q), dk, &mut self.qk[..len * len], Part::Lower);
        // u_t = β_t v_t − β_t e^{γ_t} S₀k_t − Σ_{s<t} β_t e^{γ_t−γ_s} (k_t·k_s) u_s, in place
        // of S₀k_t; the sum runs in registers (`update_row`).
        let mut coef = [0f32; CHUNK];
        for t in 0..len {
            let (done, rest) = self.u.split_at_mut(t * dv);
            let beta = self.beta[t];
            for (s_, c) in coef[..t].iter_mut().enumerate() {
                *c = -beta * self.decay[t * len + s_] * self.kk[t * len + s_];
            }
            let ut = &mut rest[..dv];
            ops.update_row(ut, -beta * self.decay0[t], &coef[..t], done);
            ops.axpy(ut, beta, &self.v[t * dv..(t + 1) * dv]);
        }
    }

    /// `o_t = e^{γ_t} S₀ q_t + Σ_{s≤t} e^{γ_t−γ_s} (q_t·k_s) u_s` into `o` (`len × d_v`).
    #[inline(always)]
    fn outputs<K: F32Ops>(&self, ops: K, o: &mut [f32]) {
        let (dv, len) = (self.d_v, self.len);
        let mut coef = [0f32; CHUNK];
        for (t, ot) in o.chunks_exact_mut(dv).enumerate() {
            for (s_, c) in coef[..=t].iter_mut().enumerate() {
                *c = self.decay[t * len + s_] * self.qk[t * len + s_];
            }
            ot.copy_from_slice(&self.sq[t * dv..(t + 1) * dv]);
            ops.update_row(ot, self.decay0[t], &coef[..=t], &self.u[..(t + 1) * dv]);
        }
    }

    /// `S ← e^{γ_L} S₀ + Σ_s e^{γ_L−γ_s} u_s k_sᵀ`, row by row.
    #[inline(always)]
    fn update<K: F32Ops>(&mut self, ops: K, s: &mut [f32]) {
        let (dk, dv, len) = (self.d_k, self.d_v, self.len);
        let last = len - 1;
        // The outputs are done with the keys: scale them in place by their decay to the end.
        for c in 0..len {
            let w = self.decay[last * len + c];
            self.k[c * dk..(c + 1) * dk]
                .iter_mut()
                .for_each(|e| *e *= w);
        }
        let mut coef = [0f32; CHUNK];
        for (a, row) in s.chunks_exact_mut(dk).enumerate() {
            for (c, cf) in coef[..len].iter_mut().enumerate() {
                *cf = self.u[c * dv + a];
            }
            ops.update_row(row, self.decay0[last], &coef[..len], &self.k[..len * dk]);
        }
    }
}

/// Spec §4.2 step 3 for every token (`mix`: `n × conv_dim`, `taps`: `conv_dim × k`): causal depthwise
/// convolution over (state ‖ new inputs), then SiLU; the state keeps the last
/// `d_conv − 1` raw inputs. Channels are independent: blocks of them go out across the
/// pool, each block reading and writing whole runs of a token's row (one channel at a
/// time strode across rows a cache line per value).
pub fn conv(
    taps_in: &[f32],
    k: usize,
    state: &mut [f32],
    mix: &[f32],
    exec: Exec,
) -> crate::Result<Vec<f32>> {
    let cd = taps_in.len() / k.max(1);
    let n = mix.len() / cd;
    if n == 1 {
        return conv_one(taps_in, k, state, mix, exec);
    }
    let cb = [64, 32, 16, 8, 4, 2, 1]
        .into_iter()
        .find(|&b| cd.is_multiple_of(b))
        .unwrap_or(1);
    let mut y = vec![0f32; n * cd];
    let yd = crate::matmul::Disjoint::new(&mut y);
    // A few ns per channel and token (taps, SiLU): ~16 matmul multiply-adds each.
    let cost = 16 * k * n * cb;
    crate::matmul::par_rows(state, (k - 1) * cb, cost, exec, &|blk, st| {
        let c0 = blk * cb;
        // The block's window, time-major (so the loops below run along channels): its
        // k − 1 stored inputs, then this call's; and its taps, tap-major.
        let mut w = vec![0f32; (k - 1 + n) * cb];
        let mut taps = vec![0f32; k * cb];
        for j in 0..cb {
            for i in 0..k - 1 {
                w[i * cb + j] = st[j * (k - 1) + i];
            }
            for i in 0..k {
                taps[i * cb + j] = taps_in[(c0 + j) * k + i];
            }
        }
        for t in 0..n {
            w[(k - 1 + t) * cb..(k + t) * cb].copy_from_slice(&mix[t * cd + c0..t * cd + c0 + cb]);
        }
        let mut acc = vec![0f32; cb];
        for t in 0..n {
            // The last tap first, then the others in order (the single-channel order).
            let (last, cur) = (&taps[(k - 1) * cb..], &w[(t + k - 1) * cb..(t + k) * cb]);
            acc.iter_mut()
                .zip(last.iter().zip(cur))
                .for_each(|(a, (&tp, &x))| *a = tp * x);
            for i in 0..k - 1 {
                let (tp, x) = (
                    &taps[i * cb..(i + 1) * cb],
                    &w[(t + i) * cb..(t + i + 1) * cb],
                );
                acc.iter_mut()
                    .zip(tp.iter().zip(x))
                    .for_each(|(a, (&tp, &x))| *a += tp * x);
            }
            // SAFETY: this block alone writes columns c0..c0 + cb.
            let yt = unsafe { yd.slice(t * cd + c0, cb) };
            yt.iter_mut()
                .zip(&acc)
                .for_each(|(y, &a)| *y = crate::ops::silu(a));
        }
        for j in 0..cb {
            for i in 0..k - 1 {
                st[j * (k - 1) + i] = w[(n + i) * cb + j];
            }
        }
        Ok(())
    })?;
    Ok(y)
}

/// [`conv`] for one token (decode), channel by channel in runs of [`DECODE_RUN`] across the
/// pool: its few hundred KB of taps and state come cold from memory after the layer's
/// weights went through the cache (26 µs a layer on one thread, ~3 ns a channel, which is
/// the cost given to `par_rows`). The same products in the same order as the block form, so
/// the same bits.
fn conv_one(
    taps_in: &[f32],
    k: usize,
    state: &mut [f32],
    x: &[f32],
    exec: Exec,
) -> crate::Result<Vec<f32>> {
    const DECODE_RUN: usize = 256;
    let mut y = vec![0f32; x.len()];
    let yd = crate::matmul::Disjoint::new(&mut y);
    crate::matmul::par_rows(
        state,
        DECODE_RUN * (k - 1),
        300 * DECODE_RUN,
        exec,
        &|r, st| {
            let c0 = r * DECODE_RUN;
            let nc = st.len() / (k - 1);
            // SAFETY: run `r` alone writes channels c0..c0 + nc.
            let yr = unsafe { yd.slice(c0, nc) };
            let rows = st
                .chunks_exact_mut(k - 1)
                .zip(taps_in[c0 * k..].chunks_exact(k));
            for ((yc, &xc), (st, taps)) in yr.iter_mut().zip(&x[c0..]).zip(rows) {
                let mut a = taps[k - 1] * xc;
                for (tp, sv) in taps.iter().zip(st.iter()) {
                    a += tp * sv;
                }
                *yc = a;
                // Oldest out, this input in (`rotate_left` is a memmove call per channel).
                for i in 1..k - 1 {
                    st[i - 1] = st[i];
                }
                st[k - 2] = xc;
            }
            // SiLU in its own pass, which vectorises (the loop above, strided, does not).
            yr.iter_mut().for_each(|v| *v = crate::ops::silu(*v));
            Ok(())
        },
    )?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use crate::testutil::uniform;

    /// The convolution of a prefill equals the same tokens one at a time (the decode path),
    /// bit for bit, outputs and final state.
    #[test]
    fn conv_prefill_equals_token_by_token() {
        let (cd, k, n) = (96, 4, 13);
        let taps = uniform(cd * k, 1);
        let mix: Vec<f32> = uniform(n * cd, 2).iter().map(|v| v * 4.0 - 2.0).collect();
        let state0 = uniform(cd * (k - 1), 3);
        let exec = Exec { threads: 2 };
        let mut s_all = state0.clone();
        let y_all = conv(&taps, k, &mut s_all, &mix, exec).unwrap();
        let mut s_one = state0;
        let mut y_one = Vec::new();
        for t in 0..n {
            y_one.extend(conv(&taps, k, &mut s_one, &mix[t * cd..(t + 1) * cd], exec).unwrap());
        }
        assert_eq!(y_all, y_one);
        assert_eq!(s_all, s_one);
    }

    /// Inputs shaped like the model's: unit keys, queries scaled by 1/√d_k, β in (0, 1), and
    /// log-decays from −0.01 to −6 so a chunk's γ runs into the hundreds.
    fn inputs(d: &Dims, n: usize, seed: u64) -> [Vec<f32>; 5] {
        let (kw, nv) = (d.n_k_head * d.d_k, d.k_head.len());
        let mut q: Vec<f32> = uniform(n * kw, seed).iter().map(|x| x - 0.5).collect();
        let mut k: Vec<f32> = uniform(n * kw, seed + 1).iter().map(|x| x - 0.5).collect();
        for (qh, kh) in q.chunks_exact_mut(d.d_k).zip(k.chunks_exact_mut(d.d_k)) {
            let (nq, nk) = (ops::dot(qh, qh).sqrt(), ops::dot(kh, kh).sqrt());
            let qs = 1.0 / (d.d_k as f32).sqrt() / nq;
            qh.iter_mut().for_each(|x| *x *= qs);
            kh.iter_mut().for_each(|x| *x /= nk);
        }
        let v = uniform(n * nv * d.d_v, seed + 2)
            .iter()
            .map(|x| 2.0 * x - 1.0)
            .collect();
        let beta = uniform(n * nv, seed + 3)
            .iter()
            .map(|x| 0.05 + 0.9 * x)
            .collect();
        let g = uniform(n * nv, seed + 4)
            .iter()
            .map(|x| -0.01 - 6.0 * x * x * x)
            .collect();
        [q, k, v, beta, g]
    }

    fn dims() -> Dims {
        Dims {
            n_k_head: 2,
            d_k: 32,
            d_v: 48,
            k_head: vec![0, 1, 0, 1],
        }
    }

    /// Run `n` tokens split into calls at `cuts` (carrying the state), in `form`.
    fn run_split(d: &Dims, n: usize, cuts: &[usize], form: Form) -> (Vec<f32>, Vec<f32>) {
        let [q, k, v, beta, g] = inputs(d, n, 7);
        let (kw, nv) = (d.n_k_head * d.d_k, d.k_head.len());
        let mut state = uniform(nv * d.d_v * d.d_k, 99)
            .iter()
            .map(|x| x - 0.5)
            .collect::<Vec<_>>();
        let mut out = Vec::new();
        let exec = Exec { threads: 2 };
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(n);
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            let x = Inputs {
                q: &q[a * kw..b * kw],
                k: &k[a * kw..b * kw],
                v: &v[a * nv * d.d_v..b * nv * d.d_v],
                beta: &beta[a * nv..b * nv],
                g: &g[a * nv..b * nv],
            };
            out.extend(run_with(&mut state, &x, d, form, exec));
        }
        (out, state)
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn chunked_matches_recurrent() {
        let d = dims();
        // 150 tokens: two whole chunks and a partial one, in one call.
        let (o_ref, s_ref) = run_split(&d, 150, &[], Form::Recurrent);
        let (o, s) = run_split(&d, 150, &[], Form::Chunked);
        eprintln!(
            "chunked vs recurrent: outputs {:e}, state {:e}",
            rel(&o, &o_ref),
            rel(&s, &s_ref)
        );
        assert!(rel(&o, &o_ref) < 1e-5, "outputs {:e}", rel(&o, &o_ref));
        assert!(rel(&s, &s_ref) < 1e-5, "state {:e}", rel(&s, &s_ref));
        // The state carried across calls of odd sizes (a chunk boundary inside each call).
        let (o2, s2) = run_split(&d, 150, &[1, 70, 133], Form::Chunked);
        assert!(rel(&o2, &o_ref) < 1e-5, "outputs {:e}", rel(&o2, &o_ref));
        assert!(rel(&s2, &s_ref) < 1e-5, "state {:e}", rel(&s2, &s_ref));
        // Each output token, not only the whole: the worst token is close too.
        let dv = d.d_v * d.k_head.len();
        let worst = o
            .chunks_exact(dv)
            .zip(o_ref.chunks_exact(dv))
            .map(|(a, b)| rel(a, b))
            .fold(0f64, f64::max);
        assert!(worst < 1e-4, "worst token {worst:e}");
    }

    #[test]
    fn one_token_is_the_recurrent_step() {
        let d = dims();
        let (o_ref, s_ref) = run_split(&d, 3, &[1, 2], Form::Recurrent);
        let (o, s) = run_split(&d, 3, &[1, 2], Form::Chunked);
        assert!(rel(&o, &o_ref) < 1e-6 && rel(&s, &s_ref) < 1e-6);
    }

    #[test]
    fn portable_path_agrees_with_itself_and_the_fast_one() {
        // `run_with` takes the AVX2 path where the CPU has it; drive the portable one directly.
        let d = dims();
        let n = 100;
        let [q, k, v, beta, g] = inputs(&d, n, 3);
        let x = Inputs {
            q: &q,
            k: &k,
            v: &v,
            beta: &beta,
            g: &g,
        };
        let s0 = uniform(d.d_v * d.d_k, 5);
        let head = Head { x: &x, d: &d, j: 1 };
        let mut results = Vec::new();
        for form in [Form::Recurrent, Form::Chunked] {
            let (mut s, mut o) = (s0.clone(), vec![0f32; n * d.d_v]);
            head.run(Portable, form, &mut s, &mut o);
            results.push((o, s));
        }
        let ((o_r, s_r), (o_c, s_c)) = (&results[0], &results[1]);
        assert!(rel(o_c, o_r) < 1e-5 && rel(s_c, s_r) < 1e-5);
        let mut state = vec![0f32; d.k_head.len() * d.d_v * d.d_k];
        state[d.d_v * d.d_k..2 * d.d_v * d.d_k].copy_from_slice(&s0);
        let all = run_with(&mut state, &x, &d, Form::Chunked, Exec { threads: 1 });
        let nv = d.k_head.len();
        let o_fast: Vec<f32> = (0..n)
            .flat_map(|t| all[(t * nv + 1) * d.d_v..(t * nv + 2) * d.d_v].to_vec())
            .collect();
        assert!(rel(&o_fast, o_r) < 1e-5);
    }
}
