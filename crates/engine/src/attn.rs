//! Attention of a batch of queries over a layer's KV cache, read in its stored type.
//!
//! The work is cut into items of (up to [`QBLOCK`] consecutive queries, one KV head, a range of
//! positions) and the positions of an item go by in chunks of [`CHUNK`]: a chunk's keys and
//! values are widened to f32 once (f16 with F16C, q8_0/q4_0 through their dequantizers) and
//! then serve every query of the block and every query head of the KV head's group. Each
//! (query, head) keeps a running maximum, sum and weighted sum of values across chunks (the
//! "online" softmax of flash attention), so no score row of the whole context is stored, and
//! one decode query can be split over several position ranges on several threads and merged
//! at the end ("flash decoding"). Nothing is widened per call beyond the chunks in flight: a
//! decode step costs O(context), with no copy of the cache.
//!
//! Quantized keys are scored as llama.cpp's CPU flash attention scores them: the query is
//! quantized to Q8_0 (rotated first when the cache is) and takes the integer block dot. f16
//! keys take a plain f32 dot with the widened key (why not ggml's f16 rounding of q: see
//! `kv.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;
use crate::kv::{hadamard, KvCache, KvType};
use crate::matmul::{fork_join, threads_for, Disjoint};
use crate::ops::{dot, AttnShape, Exec};
use crate::pool::Pool;

/// Positions widened at a time.
const CHUNK: usize = 64;
/// Queries per work item.
const QBLOCK: usize = 8;
/// Fewest positions a decode split takes (below this, splitting costs more than it saves).
const MIN_SPLIT: usize = 256;

/// `out[t]` (`n_head × head_dim`) for the `n` queries of `q`, query `t` at position
/// `base + t`, seeing positions `first(t) ..= base + t` of the `(keys, values)` caches
/// (`first` from the sliding `window`, else 0).
pub(crate) fn attend(
    (k, v): (&KvCache, &KvCache),
    q: &[f32],
    base: usize,
    window: Option<usize>,
    s: AttnShape,
    out: &mut [f32],
    exec: Exec,
) -> Result<()> {
    let _stage = crate::prof::stage("attention");
    let (hd, group) = (s.head_dim, s.n_head / s.n_head_kv);
    let qw = s.n_head * hd;
    let n = q.len() / qw.max(1);
    if n == 0 {
        return Ok(());
    }
    let first = |t: usize| window.map_or(0, |w| (base + t + 1).saturating_sub(w));
    let pool = Pool::global(exec.threads);
    // Work in matmul multiply-adds: a score and a value sum per (query, head, position), each
    // an f32 dot over widened values, about twice the cost of a quantized multiply-add.
    let threads = threads_for(4 * n * (base + n) * qw, exec, pool);
    let n_blocks = n.div_ceil(QBLOCK);
    // Few queries over a long context (decode): split the positions so that every thread has
    // several items to take (three KV heads on two threads left one idle a third of the time).
    let span = base + n - first(0);
    let splits = (4 * threads)
        .div_ceil(n_blocks * s.n_head_kv)
        .min(span / MIN_SPLIT)
        .max(1);
    let items = n_blocks * s.n_head_kv * splits;
    // Per item: for each (query, head of the group) the running max, sum and hd sums.
    let stride = QBLOCK * group * (hd + 2);
    let mut partial = vec![0f32; items * stride];
    let dst = Disjoint::new(&mut partial);
    let next = AtomicUsize::new(0);
    let ctx = Ctx {
        k,
        v,
        q,
        base,
        s,
        group,
        first: &first,
    };
    fork_join(pool, threads, &|_| {
        let mut sc = Scratch::default();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                return Ok(());
            }
            let (b, rest) = (i / (s.n_head_kv * splits), i % (s.n_head_kv * splits));
            let (kvh, split) = (rest / splits, rest % splits);
            let queries = b * QBLOCK..((b + 1) * QBLOCK).min(n);
            let lo = first(queries.start);
            let hi = base + queries.end;
            let per = (hi - lo).div_ceil(splits);
            let range = (lo + split * per).min(hi)..(lo + (split + 1) * per).min(hi);
            // SAFETY: item `i` alone writes its stride of `partial`.
            let part = unsafe { dst.slice(i * stride, stride) };
            let it = Item {
                queries,
                kvh,
                range,
            };
            ctx.item(it, part, &mut sc)?;
        }
    })?;
    // Merge the splits of each (query, head) and undo the value rotation.
    for t in 0..n {
        let (b, qi) = (t / QBLOCK, t % QBLOCK);
        for h in 0..s.n_head {
            let (kvh, g) = (h / group, h % group);
            let at = |split: usize| {
                let item = (b * s.n_head_kv + kvh) * splits + split;
                item * stride + (qi * group + g) * (hd + 2)
            };
            let m = (0..splits)
                .map(|sp| partial[at(sp)])
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[t * qw + h * hd..t * qw + (h + 1) * hd];
            o.fill(0.0);
            let mut l = 0f32;
            for sp in 0..splits {
                let p = &partial[at(sp)..at(sp) + hd + 2];
                if p[0] == f32::NEG_INFINITY {
                    continue; // a split with no position this query sees
                }
                let c = (p[0] - m).exp();
                l += c * p[1];
                o.iter_mut().zip(&p[2..]).for_each(|(o, &a)| *o += c * a);
            }
            if l > 0.0 {
                o.iter_mut().for_each(|v| *v /= l);
            }
            if v.rotation() > 0 {
                hadamard(o, v.rotation());
            }
        }
    }
    Ok(())
}

/// What every work item reads.
struct Ctx<'a> {
    k: &'a KvCache,
    v: &'a KvCache,
    q: &'a [f32],
    base: usize,
    s: AttnShape,
    group: usize,
    first: &'a (dyn Fn(usize) -> usize + Sync),
}

/// One work item: a block of queries, a KV head, a range of positions.
struct Item {
    queries: std::ops::Range<usize>,
    kvh: usize,
    range: std::ops::Range<usize>,
}

/// A thread's buffers: one chunk of widened keys and values, scores, the quantized queries.
#[derive(Default)]
struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    rotated: Vec<f32>,
    q_dot: Vec<u8>,
}

impl Ctx<'_> {
    /// The queries of `it` × the heads of its KV head over its positions, into `part`:
    /// per (query, head) `[max, sum, Σ weight·value (hd)]`, max −∞ where no position is seen.
    fn item(&self, it: Item, part: &mut [f32], sc: &mut Scratch) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked just above).
            return unsafe { self.item_avx2(it, part, sc) };
        }
        self.item_body(it, part, sc)
    }

    /// [`Ctx::item`] compiled for AVX2 (eight-lane dots and sums of values).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn item_avx2(&self, it: Item, part: &mut [f32], sc: &mut Scratch) -> Result<()> {
        self.item_body(it, part, sc)
    }

    #[inline(always)]
    fn item_body(&self, it: Item, part: &mut [f32], sc: &mut Scratch) -> Result<()> {
        let Item {
            queries,
            kvh,
            range,
        } = it;
        let (s, g) = (self.s, self.group);
        let (hd, qw) = (s.head_dim, s.n_head * s.head_dim);
        let nq = queries.len();
        for e in part.chunks_exact_mut(hd + 2).take(nq * g) {
            e[0] = f32::NEG_INFINITY;
            e[1..].fill(0.0);
        }
        let q_of = |t: usize, j: usize| {
            let h = kvh * g + j;
            &self.q[t * qw + h * hd..t * qw + (h + 1) * hd]
        };
        let quant_keys = self.k.ty() != KvType::F16;
        let kty = self.k.ty().ggml();
        let khb = self.k.ty().row_bytes(hd);
        let Scratch {
            keys,
            values,
            scores: score_buf,
            rotated,
            q_dot,
        } = sc;
        let q_row = quant::vec_dot_type(kty).bytes_for(hd as u64).unwrap_or(0) as usize;
        if quant_keys {
            // Each (query, head) in the key type's dot type, rotated as the keys are.
            q_dot.clear();
            let mut row = Vec::new();
            for t in queries.clone() {
                for j in 0..g {
                    rotated.clear();
                    rotated.extend_from_slice(q_of(t, j));
                    if self.k.rotation() > 0 {
                        hadamard(rotated, self.k.rotation());
                    }
                    quant::quantize_activations(kty, rotated, &mut row)?;
                    q_dot.extend_from_slice(&row);
                }
            }
        }
        let kernels = quant::Kernels::current();
        let (vty, vhb) = (self.v.ty().ggml(), self.v.ty().row_bytes(hd));
        for c0 in range.clone().step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(range.end);
            let np = c1 - c0;
            if !quant_keys {
                keys.resize(np * hd, 0.0);
                for (p, kr) in (c0..c1).zip(keys.chunks_exact_mut(hd)) {
                    let bytes = &self.k.row(p)[kvh * khb..(kvh + 1) * khb];
                    quant::dequantize(kty, bytes, kr)?;
                }
            }
            values.resize(np * hd, 0.0);
            for (p, vr) in (c0..c1).zip(values.chunks_exact_mut(hd)) {
                quant::dequantize(vty, &self.v.row(p)[kvh * vhb..(kvh + 1) * vhb], vr)?;
            }
            score_buf.resize(np, 0.0);
            for (qi, t) in queries.clone().enumerate() {
                let pos = self.base + t;
                // Positions of the chunk this query sees.
                let lo = (self.first)(t).max(c0);
                let hi = (pos + 1).min(c1);
                if lo >= hi {
                    continue;
                }
                for j in 0..g {
                    let scores = &mut score_buf[lo - c0..hi - c0];
                    if quant_keys {
                        let qd = &q_dot[(qi * g + j) * q_row..(qi * g + j + 1) * q_row];
                        for (p, x) in (lo..hi).zip(scores.iter_mut()) {
                            let kb = &self.k.row(p)[kvh * khb..(kvh + 1) * khb];
                            *x = kernels.vec_dot(kty, hd, kb, qd)? * s.scale;
                        }
                    } else {
                        let qv = q_of(t, j);
                        for (p, x) in (lo..hi).zip(scores.iter_mut()) {
                            *x = dot(qv, &keys[(p - c0) * hd..(p - c0 + 1) * hd]) * s.scale;
                        }
                    }
                    let e = &mut part[(qi * g + j) * (hd + 2)..(qi * g + j + 1) * (hd + 2)];
                    let m_new = scores.iter().copied().fold(e[0], f32::max);
                    if m_new > e[0] {
                        let c = crate::ops::exp_fast(e[0] - m_new);
                        e[1..].iter_mut().for_each(|v| *v *= c);
                        e[0] = m_new;
                    }
                    let (head, acc) = e.split_at_mut(2);
                    for (p, &sv) in (lo..hi).zip(scores.iter()) {
                        let w = crate::ops::exp_fast(sv - m_new);
                        head[1] += w;
                        let vr = &values[(p - c0) * hd..(p - c0 + 1) * hd];
                        acc.iter_mut().zip(vr).for_each(|(a, &x)| *a += w * x);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention (whole score row, max-subtracted softmax) over f32 keys and values.
    fn reference(q: &[f32], k: &[f32], v: &[f32], n_kv: usize, s: AttnShape) -> Vec<f32> {
        let (hd, kvw) = (s.head_dim, s.n_head_kv * s.head_dim);
        let group = s.n_head / s.n_head_kv;
        let mut out = vec![0f32; s.n_head * hd];
        for h in 0..s.n_head {
            let kvh = h / group;
            let qh = &q[h * hd..(h + 1) * hd];
            let mut sc: Vec<f32> = (0..n_kv)
                .map(|p| dot(qh, &k[p * kvw + kvh * hd..p * kvw + (kvh + 1) * hd]) * s.scale)
                .collect();
            crate::ops::softmax(&mut sc);
            for (p, &w) in sc.iter().enumerate() {
                for d in 0..hd {
                    out[h * hd + d] += w * v[p * kvw + kvh * hd + d];
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::uniform(n, seed)
            .into_iter()
            .map(|u| u * 4.0 - 2.0)
            .collect()
    }

    /// f16 cache: every query of a prefill and a decode step after a long context (split over
    /// threads) against the plain form on the same f16-rounded keys and values.
    #[test]
    fn chunked_online_softmax_equals_the_plain_form() {
        let s = AttnShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let (kvw, qw) = (s.n_head_kv * s.head_dim, s.n_head * s.head_dim);
        for (n_ctx, n, window) in [(19, 19, None), (700, 1, None), (300, 40, Some(100))] {
            let round = |x: Vec<f32>| -> Vec<f32> {
                x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
            };
            let (k, v) = (round(values(n_ctx * kvw, 1)), round(values(n_ctx * kvw, 2)));
            let q = values(n * qw, 3);
            let mut kc = KvCache::keys(KvType::F16, s.n_head_kv, s.head_dim, n_ctx).unwrap();
            let mut vc = KvCache::values(KvType::F16, s.n_head_kv, s.head_dim, n_ctx).unwrap();
            for p in 0..n_ctx {
                kc.store(p, &k[p * kvw..(p + 1) * kvw]).unwrap();
                vc.store(p, &v[p * kvw..(p + 1) * kvw]).unwrap();
            }
            let base = n_ctx - n;
            let mut out = vec![f32::NAN; n * qw];
            let exec = Exec { threads: 2 };
            attend((&kc, &vc), &q, base, window, s, &mut out, exec).unwrap();
            for t in 0..n {
                let pos = base + t;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let want = reference(
                    &q[t * qw..(t + 1) * qw],
                    &k[lo * kvw..],
                    &v[lo * kvw..],
                    pos + 1 - lo,
                    s,
                );
                for (i, (a, b)) in out[t * qw..(t + 1) * qw].iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 2e-5,
                        "ctx {n_ctx} query {t} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
