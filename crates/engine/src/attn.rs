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

/// A thread's buffers: one chunk of widened keys and values, the scores (then weights) of an
/// item's rows, its queries gathered (f32) or quantized (`q_dot`).
#[derive(Default)]
struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    q_f32: Vec<f32>,
    q_dot: Vec<u8>,
}

impl Ctx<'_> {
    /// The queries of `it` × the heads of its KV head over its positions, into `part`:
    /// per (query, head) `[max, sum, Σ weight·value (hd)]`, max −∞ where no position is seen.
    fn item(&self, it: Item, part: &mut [f32], sc: &mut Scratch) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present (checked just above).
            return unsafe { self.item_avx2(it, part, sc) };
        }
        self.item_body::<false>(it, part, sc)
    }

    /// [`Ctx::item`] compiled for AVX2 and FMA (the tiles below in eight-lane registers).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn item_avx2(&self, it: Item, part: &mut [f32], sc: &mut Scratch) -> Result<()> {
        self.item_body::<true>(it, part, sc)
    }

    /// Per chunk of positions: the scores of every row (query × head of the group) against
    /// every position, masked to what each query sees; the online-softmax update per row,
    /// which turns scores into weights; then the rows' weighted sums of values. Scores and
    /// sums go through register tiles ([`score_tile`], [`value_tile`]): one key or value
    /// loaded serves several rows, and the sums stay in registers across positions instead of
    /// being read and written back per position.
    #[inline(always)]
    fn item_body<const FMA: bool>(
        &self,
        it: Item,
        part: &mut [f32],
        sc: &mut Scratch,
    ) -> Result<()> {
        let Item {
            queries,
            kvh,
            range,
        } = it;
        let (s, g) = (self.s, self.group);
        let (hd, qw) = (s.head_dim, s.n_head * s.head_dim);
        let rows = queries.len() * g;
        for e in part.chunks_exact_mut(hd + 2).take(rows) {
            e[0] = f32::NEG_INFINITY;
            e[1..].fill(0.0);
        }
        let quant_keys = self.k.ty() != KvType::F16;
        let kty = self.k.ty().ggml();
        let khb = self.k.ty().row_bytes(hd);
        let Scratch {
            keys,
            values,
            scores,
            q_f32,
            q_dot,
        } = sc;
        // The rows' queries, row r = (query r / g, head kvh·g + r % g): contiguous f32 for the
        // score tiles, or (quantized keys) in the key type's dot type, rotated as the keys are.
        let q_row = quant::vec_dot_type(kty).bytes_for(hd as u64).unwrap_or(0) as usize;
        let q_of = |r: usize| {
            let (t, h) = (queries.start + r / g, kvh * g + r % g);
            &self.q[t * qw + h * hd..t * qw + (h + 1) * hd]
        };
        q_f32.clear();
        q_dot.clear();
        if quant_keys {
            let mut row = Vec::new();
            let mut one = Vec::new();
            for r in 0..rows {
                one.clear();
                one.extend_from_slice(q_of(r));
                if self.k.rotation() > 0 {
                    hadamard(&mut one, self.k.rotation());
                }
                quant::quantize_activations(kty, &one, &mut row)?;
                q_dot.extend_from_slice(&row);
            }
        } else {
            (0..rows).for_each(|r| q_f32.extend_from_slice(q_of(r)));
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
            scores.resize(rows * np, 0.0);
            if quant_keys {
                for (r, sr) in scores.chunks_exact_mut(np).enumerate() {
                    let qd = &q_dot[r * q_row..(r + 1) * q_row];
                    for (p, x) in (c0..c1).zip(sr.iter_mut()) {
                        let kb = &self.k.row(p)[kvh * khb..(kvh + 1) * khb];
                        *x = kernels.vec_dot(kty, hd, kb, qd)?;
                    }
                }
            } else {
                scores_f32::<FMA>(q_f32, keys, hd, np, scores);
            }
            // Scores to weights: mask, scale, running max, exponentials, running sum.
            for (r, (sr, e)) in scores
                .chunks_exact_mut(np)
                .zip(part.chunks_exact_mut(hd + 2))
                .enumerate()
            {
                let t = queries.start + r / g;
                let lo = (self.first)(t).max(c0) - c0;
                let hi = (self.base + t + 1).min(c1).saturating_sub(c0);
                if lo >= hi {
                    sr.fill(0.0);
                    continue;
                }
                sr.iter_mut().for_each(|x| *x *= s.scale);
                let m_new = sr[lo..hi].iter().copied().fold(e[0], f32::max);
                if m_new > e[0] {
                    let c = crate::ops::exp_fast(e[0] - m_new);
                    e[1..].iter_mut().for_each(|v| *v *= c);
                    e[0] = m_new;
                }
                sr[..lo].fill(0.0);
                sr[hi..].fill(0.0);
                let w = &mut sr[lo..hi];
                w.iter_mut()
                    .for_each(|x| *x = crate::ops::exp_fast(*x - m_new));
                e[1] += w.iter().sum::<f32>();
            }
            weighted_values::<FMA>(scores, values, hd, np, part);
        }
        Ok(())
    }
}

/// `a·b + c`, fused where the caller was compiled with FMA (Rust does not contract `a * b + c`
/// by itself; without the feature `mul_add` would be a libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `scores[r][p] = q_r · k_p` for the `rows × np` pairs (`q`: rows × hd, `k`: np × hd), in
/// tiles of [`score_tile`].
#[inline(always)]
fn scores_f32<const FMA: bool>(q: &[f32], k: &[f32], hd: usize, np: usize, scores: &mut [f32]) {
    const R: usize = 4;
    const P: usize = 3;
    let rows = q.len() / hd;
    if !hd.is_multiple_of(8) {
        for (r, sr) in scores.chunks_exact_mut(np).enumerate() {
            for (p, x) in sr.iter_mut().enumerate() {
                *x = dot(&q[r * hd..(r + 1) * hd], &k[p * hd..(p + 1) * hd]);
            }
        }
        return;
    }
    let mut r = 0;
    while r < rows {
        let nr = R.min(rows - r);
        let mut p = 0;
        while p < np {
            let npp = P.min(np - p);
            let (qs, ks) = (&q[r * hd..(r + nr) * hd], &k[p * hd..(p + npp) * hd]);
            let tile = if nr == R && npp == P {
                score_tile::<FMA, R, P>(qs, ks, hd)
            } else {
                let mut t = [[0f32; P]; R];
                for i in 0..nr {
                    for j in 0..npp {
                        t[i][j] = dot(&qs[i * hd..(i + 1) * hd], &ks[j * hd..(j + 1) * hd]);
                    }
                }
                t
            };
            for (i, tr) in tile.iter().enumerate().take(nr) {
                scores[(r + i) * np + p..(r + i) * np + p + npp].copy_from_slice(&tr[..npp]);
            }
            p += npp;
        }
        r += nr;
    }
}

/// The R × P dot products of R query rows with P key rows (`hd` a multiple of 8): R·P
/// eight-lane sums held in registers over the whole head.
#[inline(always)]
fn score_tile<const FMA: bool, const R: usize, const P: usize>(
    q: &[f32],
    k: &[f32],
    hd: usize,
) -> [[f32; P]; R] {
    // Rows as arrays of eight, all `n8` long, so the loop below indexes without checks and
    // the R·P sums stay in registers.
    let n8 = hd / 8;
    let qc: [&[[f32; 8]]; R] =
        std::array::from_fn(|i| &q[i * hd..(i + 1) * hd].as_chunks().0[..n8]);
    let kc: [&[[f32; 8]]; P] =
        std::array::from_fn(|j| &k[j * hd..(j + 1) * hd].as_chunks().0[..n8]);
    let mut acc = [[[0f32; 8]; P]; R];
    for d in 0..n8 {
        for (ai, qr) in acc.iter_mut().zip(&qc) {
            let qv = &qr[d];
            for (aij, kr) in ai.iter_mut().zip(&kc) {
                let kv = &kr[d];
                for l in 0..8 {
                    aij[l] = madd::<FMA>(qv[l], kv[l], aij[l]);
                }
            }
        }
    }
    acc.map(|ai| ai.map(|a| a.iter().sum()))
}

/// `part[r][2..] += Σ_p w[r][p] · v_p` for every row (`w`: rows × np, `v`: np × hd, `part`
/// rows of `hd + 2`), in tiles of [`value_tile`] over 32 dimensions at a time.
#[inline(always)]
fn weighted_values<const FMA: bool>(w: &[f32], v: &[f32], hd: usize, np: usize, part: &mut [f32]) {
    const R: usize = 3;
    const D: usize = 32;
    let rows = w.len() / np.max(1);
    let mut r = 0;
    while r < rows {
        let nr = R.min(rows - r);
        let mut d = 0;
        while d < hd {
            if nr == R && d + D <= hd {
                value_tile::<FMA, R, D>(
                    &w[r * np..(r + R) * np],
                    v,
                    hd,
                    np,
                    d,
                    &mut part[r * (hd + 2)..],
                );
                d += D;
                continue;
            }
            for i in r..r + nr {
                let acc = &mut part[i * (hd + 2) + 2 + d..i * (hd + 2) + 2 + hd.min(d + D)];
                for (p, &wp) in w[i * np..(i + 1) * np].iter().enumerate() {
                    let vr = &v[p * hd + d..p * hd + d + acc.len()];
                    acc.iter_mut().zip(vr).for_each(|(a, &x)| *a += wp * x);
                }
            }
            d += D;
        }
        r += nr;
    }
}

/// Dimensions `d0..d0 + D` of R rows' weighted sums, kept in registers over the chunk's
/// positions: per position D values loaded once for R rows.
#[inline(always)]
fn value_tile<const FMA: bool, const R: usize, const D: usize>(
    w: &[f32],
    v: &[f32],
    hd: usize,
    np: usize,
    d0: usize,
    part: &mut [f32],
) {
    let mut acc = [[0f32; D]; R];
    for (i, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&part[i * (hd + 2) + 2 + d0..i * (hd + 2) + 2 + d0 + D]);
    }
    for p in 0..np {
        let vr = &v[p * hd + d0..p * hd + d0 + D];
        for (i, a) in acc.iter_mut().enumerate() {
            let wp = w[i * np + p];
            for l in 0..D {
                a[l] = madd::<FMA>(wp, vr[l], a[l]);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        part[i * (hd + 2) + 2 + d0..i * (hd + 2) + 2 + d0 + D].copy_from_slice(a);
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
        // Head sizes for every path of the tiles: whole tiles (64, 256), a value tail (80),
        // no eight-lane tiles at all (36); groups of 3 and 4 query heads per KV head.
        for (n_head, n_head_kv, head_dim) in [(6, 2, 64), (4, 1, 256), (3, 1, 80), (2, 2, 36)] {
            let s = AttnShape {
                n_head,
                n_head_kv,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            check_against_plain(s);
        }
    }

    fn check_against_plain(s: AttnShape) {
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
                        "{s:?} ctx {n_ctx} query {t} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
