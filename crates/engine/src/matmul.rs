//! Matmuls over quantized weights on the worker pool.
//!
//! As ggml's CPU backend does, activations are quantized once per matmul to the weight type's
//! dot type (Q8_0, Q8_1, Q8_K; F16/BF16 for half-float weights) and weight rows take integer
//! block dots: `quant::gemm`'s tile kernels where the CPU has them, else `quant::vec_dot`
//! (bit-exact with ggml's reference). Types without a dot kernel dequantize rows to f32.
//!
//! [`matmul_batch`] runs several matmuls as one pool job — a layer's Q/K/V projections, the
//! gate and up projections of every chosen expert — so a decode step pays one fork/join per
//! group instead of one per matrix, and a batch that shares its input (same slice, same weight
//! type) quantizes it once. Rows go out in chunks from one shared counter rather than a fixed
//! share per thread: a thread the OS preempts (a busy machine, more threads than free cores)
//! then delays only its current chunk.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::ops::{dot, Exec};
use crate::pool::Pool;
use crate::weights::QTensor;

/// One matmul of a [`matmul_batch`]: rows `rows` of `w` times the `n_tokens` rows of `x`,
/// into `out` (`n_tokens × rows.len()`, token-major).
#[derive(Debug)]
pub struct MatJob<'a> {
    /// The weight matrix (2-D, or a 3-D expert tensor seen as rows).
    pub w: &'a QTensor,
    /// Which rows of `w`.
    pub rows: Range<usize>,
    /// Activations, `n_tokens × w.row_len()` (not read when `acts` is given).
    pub x: &'a [f32],
    /// The activations already quantized for `w`'s type ([`quantize`]), where the caller
    /// has them: a MoE layer quantizes its input once for all its experts.
    pub acts: Option<&'a quant::QActs>,
    /// Tokens in `x`.
    pub n_tokens: usize,
    /// Output, `n_tokens × rows.len()`.
    pub out: &'a mut [f32],
}

/// `out[t] = W · x[t]` for `n_tokens` rows of `x` (each `w.row_len()` long); `out` is
/// `n_tokens × w.n_rows()`, token-major.
pub fn matmul(w: &QTensor, x: &[f32], n_tokens: usize, out: &mut [f32], exec: Exec) -> Result<()> {
    matmul_rows(w, 0..w.n_rows(), x, n_tokens, out, exec)
}

/// [`matmul`] with the rows `rows` of W only (one expert's slice of a 3-D expert tensor);
/// `out` is `n_tokens × rows.len()`.
pub fn matmul_rows(
    w: &QTensor,
    rows: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    exec: Exec,
) -> Result<()> {
    matmul_batch(
        &mut [MatJob {
            w,
            rows,
            x,
            acts: None,
            n_tokens,
            out,
        }],
        exec,
    )
}

/// Several whole matrices times the same input (a layer's Q, K and V projections), as one
/// pool job with the input quantized once per weight type.
pub fn matmuls<const N: usize>(
    ws: [&QTensor; N],
    x: &[f32],
    n_tokens: usize,
    outs: [&mut [f32]; N],
    exec: Exec,
) -> Result<()> {
    let mut jobs: Vec<MatJob<'_>> = ws
        .into_iter()
        .zip(outs)
        .map(|(w, out)| MatJob {
            w,
            rows: 0..w.n_rows(),
            x,
            acts: None,
            n_tokens,
            out,
        })
        .collect();
    matmul_batch(&mut jobs, exec)
}

/// Weight rows per chunk at most (64 rows of a 4096-wide Q4_K matrix are 147 KB; 32 Q8_K
/// activation rows 150 KB: together inside L2).
const ROW_BLOCK: usize = 64;
/// Activation rows per cache block.
const TOKEN_BLOCK: usize = 32;
/// Multiply-adds per thread below which a matmul batch uses fewer threads (~25 µs of work at decode speed).
const MIN_WORK: usize = 1 << 18;

/// Every job of `jobs`, as one pool job.
pub fn matmul_batch(jobs: &mut [MatJob<'_>], exec: Exec) -> Result<()> {
    for j in jobs.iter() {
        let k = j.w.row_len();
        let input_ok = match j.acts {
            Some(a) => a.n_tokens() == j.n_tokens && a.row_len() == k && a.weight() == j.w.ty,
            None => j.x.len() == j.n_tokens * k,
        };
        if !input_ok || j.out.len() != j.n_tokens * j.rows.len() || j.rows.end > j.w.n_rows() {
            return Err(Error::Shape(format!(
                "matmul of {} rows {:?} (row length {k}) with {} activations for {} tokens into {}",
                j.w.n_rows(),
                j.rows,
                j.x.len(),
                j.n_tokens,
                j.out.len()
            )));
        }
    }
    let _stage = crate::prof::stage("matmul");
    let pool = Pool::global(exec.threads);
    // A thread per MIN_WORK multiply-adds at most: below that the fork/join costs more than
    // it saves (the 12M-parameter demo model decoded 50× faster on one thread than on two
    // on a busy machine).
    let work: usize = jobs
        .iter()
        .map(|j| j.rows.len() * j.w.row_len() * j.n_tokens)
        .sum();
    let threads = threads_for(work, exec, pool);
    let mut packed = Vec::with_capacity(jobs.len());
    for j in jobs.iter() {
        packed.push(j.w.packed(|rows| pack(j.w, rows, exec))?);
    }
    let (store, which) = quantize_all(jobs, threads, pool)?;
    let total_rows: usize = jobs.iter().map(|j| j.rows.len()).sum();
    // Whole packed groups per chunk (a job's rows start at a group in every model here; where
    // not, `gemm_rows` takes the odd rows through the row kernels).
    let chunk = total_rows
        .div_ceil(threads * 4)
        .clamp(quant::GROUP, ROW_BLOCK)
        .next_multiple_of(quant::GROUP);
    // (job, rows of the job) of every chunk, in job order.
    let mut chunks = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let n = j.rows.len();
        chunks.extend((0..n).step_by(chunk).map(|r| (i, r..(r + chunk).min(n))));
    }
    let views: Vec<JobView<'_>> = jobs
        .iter_mut()
        .zip(&which)
        .zip(packed)
        .map(|((j, a), packed)| JobView {
            w: j.w,
            packed,
            first: j.rows.start,
            n: j.rows.len(),
            x: j.x,
            n_tokens: j.n_tokens,
            acts: j.acts.or(a.map(|i| &store[i])),
            dst: Disjoint::new(j.out),
        })
        .collect();
    let next = AtomicUsize::new(0);
    fork_join(pool, threads, &|_| {
        while let Some((job, r)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
            views[*job].run(r.clone())?;
        }
        Ok(())
    })
}

/// `part(0) … part(threads − 1)` on the pool (on this thread alone when `threads` is 1); the
/// first error a part returns is the result.
pub(crate) fn fork_join(
    pool: &Pool,
    threads: usize,
    part: &(dyn Fn(usize) -> Result<()> + Sync),
) -> Result<()> {
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let run = |i: usize| {
        if i < threads {
            if let Err(e) = part(i) {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    };
    pool.run_parts(threads, &run);
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `rows` (whole groups of eight rows of `w`) packed on the pool.
fn pack(w: &QTensor, rows: &[u8], exec: Exec) -> Result<Option<quant::Packed>> {
    let (ty, k) = (w.ty, w.row_len());
    let Some(gb) = quant::group_bytes(ty, k) else {
        return Ok(None);
    };
    let src = quant::GROUP * w.row_bytes();
    let mut data = vec![0u8; rows.len() / src * gb];
    advise_huge_pages(&mut data);
    // Moving a byte counted as eight multiply-adds: a 1024-wide Q4_K matrix of 1024 rows goes
    // out to about nine threads, an expert tensor to all.
    par_rows(&mut data, gb, 8 * src, exec, &|g, out| {
        Ok(quant::pack_group(
            ty,
            k,
            &rows[g * src..(g + 1) * src],
            out,
        )?)
    })?;
    Ok(Some(quant::Packed::from_groups(ty, k, data)?))
}

/// Asks Linux for 2 MiB pages under `buf` (transparent huge pages in `madvise` mode, the
/// usual default, give them only where asked): a decode step streams every packed weight
/// once, and with 4 KiB pages that is a TLB miss every 4 KiB. Called before the first write
/// (a large `vec![0; n]` is fresh, untouched mapped memory), so the pages are huge from the
/// start. `LLM_SERVER_THP=0` leaves them alone (for comparisons).
fn advise_huge_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if std::env::var("LLM_SERVER_THP").is_ok_and(|v| v == "0") {
            return;
        }
        let (lo, hi) = (
            buf.as_mut_ptr() as usize,
            buf.as_mut_ptr() as usize + buf.len(),
        );
        let (start, end) = (lo.next_multiple_of(HUGE), hi / HUGE * HUGE);
        if end > start {
            // SAFETY: the range lies inside `buf`; MADV_HUGEPAGE changes no contents, and a
            // failure (no THP in this kernel) leaves ordinary pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// A job as the pool threads see it.
struct JobView<'a> {
    w: &'a QTensor,
    packed: Option<&'a quant::Packed>,
    first: usize,
    n: usize,
    x: &'a [f32],
    n_tokens: usize,
    acts: Option<&'a quant::QActs>,
    dst: Disjoint<'a>,
}

impl JobView<'_> {
    /// Rows `r` (of the job's rows, at most [`ROW_BLOCK`]) against every token, stored
    /// token-major. Tokens go in blocks of [`TOKEN_BLOCK`], so the weight rows and the block's
    /// activations stay in cache and the small result tile is stored row by row.
    fn run(&self, r: Range<usize>) -> Result<()> {
        let rows = self.first + r.start..self.first + r.end;
        let (nr, k) = (r.len(), self.w.row_len());
        let store = |t0: usize, tile: &[f32], nt: usize| {
            for t in 0..nt {
                // SAFETY: the chunk owning rows `r` is the only writer of these indices.
                let dst = unsafe { self.dst.slice((t0 + t) * self.n + r.start, nr) };
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = tile[j * nt + t];
                }
            }
        };
        let mut tile = vec![0f32; nr * TOKEN_BLOCK.min(self.n_tokens)];
        match self.acts {
            Some(a) => {
                for t0 in (0..self.n_tokens).step_by(TOKEN_BLOCK) {
                    let nt = TOKEN_BLOCK.min(self.n_tokens - t0);
                    self.gemm_rows(rows.clone(), a, t0..t0 + nt, &mut tile)?;
                    store(t0, &tile, nt);
                }
            }
            None => {
                let mut wrows = vec![0f32; nr * k];
                for (j, row) in wrows.chunks_exact_mut(k.max(1)).enumerate() {
                    self.w.dequant_row(rows.start + j, row)?;
                }
                for t0 in (0..self.n_tokens).step_by(TOKEN_BLOCK) {
                    let nt = TOKEN_BLOCK.min(self.n_tokens - t0);
                    for (j, row) in wrows.chunks_exact(k.max(1)).enumerate() {
                        for t in 0..nt {
                            let xt = &self.x[(t0 + t) * k..(t0 + t + 1) * k];
                            tile[j * nt + t] = dot(row, xt);
                        }
                    }
                    store(t0, &tile, nt);
                }
            }
        }
        Ok(())
    }
}

impl JobView<'_> {
    /// `out[j·nt + t] = row_{rows.start + j} · x_{tokens.start + t}`: whole packed groups
    /// through the packed kernels, rows outside them through the row kernels.
    fn gemm_rows(
        &self,
        rows: Range<usize>,
        a: &quant::QActs,
        tokens: Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        let (data, rb, nt) = (self.w.data(), self.w.row_bytes(), tokens.len());
        let by_row = |r: Range<usize>, out: &mut [f32]| {
            quant::gemm(&data[r.start * rb..r.end * rb], a, tokens.clone(), out, nt)
        };
        let Some(p) = self.packed else {
            return Ok(by_row(rows, out)?);
        };
        let g = quant::GROUP;
        let lo = rows.start.next_multiple_of(g).min(rows.end);
        let hi = (rows.end / g * g).min(p.rows()).max(lo);
        if lo > rows.start {
            by_row(rows.start..lo, out)?;
        }
        if hi > lo {
            let o = &mut out[(lo - rows.start) * nt..];
            quant::gemm_packed(p, lo..hi, a, tokens.clone(), o, nt)?;
        }
        if rows.end > hi {
            by_row(hi..rows.end, &mut out[(hi - rows.start) * nt..])?;
        }
        Ok(())
    }
}

/// Each job's activations quantized, once per distinct (input slice, weight type): the
/// quantized batches, and for each job the index of its batch (`None`: no dot kernel for the
/// type, rows are dequantized instead). All batches are quantized in one pool job, in units of
/// [`QUANT_UNIT`] tokens (a MoE layer has a distinct input per expert: one pool round trip
/// each left most threads idle at 16 threads).
fn quantize_all(
    jobs: &[MatJob<'_>],
    threads: usize,
    pool: &Pool,
) -> Result<(Vec<quant::QActs>, Vec<Option<usize>>)> {
    // A shared batch needs the same input and the same weight type (`gemm` picks its kernel
    // by the type the batch was quantized for).
    let mut inputs: Vec<(quant::GgmlType, &[f32], usize)> = Vec::new();
    let mut which = Vec::with_capacity(jobs.len());
    for j in jobs {
        let ty = j.w.ty;
        if !quant::DOT_TYPES.contains(&ty) || j.acts.is_some() {
            which.push(None);
            continue;
        }
        let same = |&(t, x, _): &(quant::GgmlType, &[f32], usize)| t == ty && std::ptr::eq(x, j.x);
        match inputs.iter().position(same) {
            Some(i) => which.push(Some(i)),
            None => {
                inputs.push((ty, j.x, j.w.row_len()));
                which.push(Some(inputs.len() - 1));
            }
        }
    }
    let store = quantize_inputs(&inputs, threads, pool)?;
    Ok((store, which))
}

/// Each `(weight type, x, row length)` of `inputs` quantized, all in one pool job on up to
/// `threads` threads, in units of [`QUANT_UNIT`] tokens.
fn quantize_inputs(
    inputs: &[(quant::GgmlType, &[f32], usize)],
    threads: usize,
    pool: &Pool,
) -> Result<Vec<quant::QActs>> {
    // (input, token range) of every unit, in input order.
    let mut units = Vec::new();
    for (i, &(_, x, k)) in inputs.iter().enumerate() {
        let n = x.len() / k.max(1);
        units.extend(
            (0..n.max(1))
                .step_by(QUANT_UNIT)
                .map(|t| (i, t..(t + QUANT_UNIT).min(n))),
        );
    }
    let slots: Vec<Mutex<Option<quant::QActs>>> = units.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let quantize = |u: usize| -> Result<()> {
        let (i, ref t) = units[u];
        let (ty, x, k) = inputs[i];
        let part = quant::QActs::new(ty, &x[t.start * k..t.end * k], k)?;
        *slots[u].lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
        Ok(())
    };
    // A decode step's few rows: not worth waking the pool.
    let tokens: usize = inputs.iter().map(|&(_, x, k)| x.len() / k.max(1)).sum();
    let threads = if tokens < QUANT_UNIT {
        1
    } else {
        threads.min(units.len()).max(1)
    };
    fork_join(pool, threads, &|_| loop {
        let u = next.fetch_add(1, Ordering::Relaxed);
        if u >= units.len() {
            return Ok(());
        }
        quantize(u)?;
    })?;
    let mut parts: Vec<Vec<quant::QActs>> = inputs.iter().map(|_| Vec::new()).collect();
    for ((i, _), slot) in units.iter().zip(slots) {
        if let Some(p) = slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            parts[*i].push(p);
        }
    }
    let mut store = Vec::with_capacity(inputs.len());
    for p in parts {
        store.push(quant::QActs::concat(p)?);
    }
    Ok(store)
}

/// Tokens per unit of activation quantization.
const QUANT_UNIT: usize = 16;

/// `x` (`n × w_ty`'s row length `k`) quantized for products with rows of type `w_ty`, in
/// units of [`QUANT_UNIT`] tokens across the pool; `None` where the type has no dot kernel.
pub fn quantize(
    w_ty: quant::GgmlType,
    x: &[f32],
    k: usize,
    exec: Exec,
) -> Result<Option<quant::QActs>> {
    if !quant::DOT_TYPES.contains(&w_ty) {
        return Ok(None);
    }
    let pool = Pool::global(exec.threads);
    // About four multiply-adds' time per value quantized.
    let threads = threads_for(4 * x.len(), exec, pool);
    Ok(quantize_inputs(&[(w_ty, x, k)], threads, pool)?.pop())
}

/// `f(i, row_i)` for every `row_len`-sized row of `out` (the last may be shorter), the rows
/// shared out in chunks across the pool (one thread per [`MIN_WORK`] of `cost` per row, the
/// caller's estimate in multiply-adds): the element-wise stages between matmuls, which on one
/// thread kept fifteen of sixteen threads waiting for half of a MoE prefill, and the packing
/// of weights.
pub fn par_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    cost: usize,
    exec: Exec,
    f: &(dyn Fn(usize, &mut [T]) -> Result<()> + Sync),
) -> Result<()> {
    let len = out.len();
    let n = if row_len == 0 {
        0
    } else {
        len.div_ceil(row_len)
    };
    let pool = Pool::global(exec.threads);
    let threads = threads_for(n * cost, exec, pool).min(n.max(1));
    let chunk = n.div_ceil(threads * 4).max(1);
    let next = AtomicUsize::new(0);
    let dst = Disjoint::new(out);
    fork_join(pool, threads, &|_| loop {
        let c = next.fetch_add(1, Ordering::Relaxed) * chunk;
        if c >= n {
            return Ok(());
        }
        for i in c..(c + chunk).min(n) {
            let at = i * row_len;
            // SAFETY: row `i` belongs to this chunk alone.
            f(i, unsafe { dst.slice(at, row_len.min(len - at)) })?;
        }
    })
}

/// Threads for a job of `work` multiply-adds: one per [`MIN_WORK`], at most the pool's and
/// `exec`'s.
pub(crate) fn threads_for(work: usize, exec: Exec, pool: &Pool) -> usize {
    let max = pool.threads().min(exec.threads);
    // Each thread more costs every thread a little (wake-up, the shared chunk counter, the
    // join), so a thread's share must grow with the count: MIN_WORK · (15 + t)/16 each.
    let mut t = 1;
    while t < max && work / (t + 1) >= MIN_WORK * (16 + t) / 16 {
        t += 1;
    }
    t
}

/// A slice that several threads write at disjoint indices.
pub(crate) struct Disjoint<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: `slice`'s contract (no index handed to two threads at once) makes shared use sound.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(s: &'a mut [T]) -> Disjoint<'a, T> {
        Disjoint {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// The `len` values from `at` (checked against the length), to write.
    ///
    /// # Safety
    /// No other thread touches these indices while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len, "{at}+{len} out of {}", self.len);
        // SAFETY: in bounds (checked), and the caller guarantees no concurrent access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Weights;
    use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec};
    use std::sync::Arc;

    /// A one-tensor GGUF in memory: `rows` random rows of `k` values of `ty`.
    fn matrix(ty: GgmlType, k: usize, rows: usize) -> QTensor {
        let dims = [k as u64, rows as u64];
        let spec = TensorSpec::new("w", ty, dims);
        let mut data = vec![0u8; ty.bytes_for((k * rows) as u64).unwrap() as usize];
        quant::random_blocks(ty, &mut data, k as u64 + rows as u64, 1.0).unwrap();
        let mut w = GgufWriter::new(Vec::new(), &[], &[spec]).unwrap();
        w.write_data(&data).unwrap();
        let file = GgufFile::from_bytes(w.finish().unwrap()).unwrap();
        Weights::new(Arc::new(file)).get("w", &dims).unwrap()
    }

    /// Row ranges that start and end inside packed groups, whole groups, the tail past the
    /// last group, and batches of one and several tokens: every output against `vec_dot` of
    /// the file's row with the same quantized activations.
    #[test]
    fn row_ranges_through_packed_groups_and_row_kernels_agree_with_vec_dot() {
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
            GgmlType::F16,
        ] {
            let (k, rows) = (256, 27);
            let w = matrix(ty, k, rows);
            for (range, n) in [(0..27, 5), (3..21, 1), (8..16, 3), (5..6, 2), (24..27, 4)] {
                let x: Vec<f32> = crate::testutil::uniform(n * k, 9)
                    .iter()
                    .map(|u| u - 0.5)
                    .collect();
                let mut out = vec![f32::NAN; n * range.len()];
                let exec = Exec { threads: 2 };
                matmul_rows(&w, range.clone(), &x, n, &mut out, exec).unwrap();
                let rb = w.row_bytes();
                for t in 0..n {
                    let mut act = Vec::new();
                    quant::quantize_activations(ty, &x[t * k..(t + 1) * k], &mut act).unwrap();
                    for (j, r) in range.clone().enumerate() {
                        let row = &w.data()[r * rb..(r + 1) * rb];
                        let want = quant::vec_dot(ty, k, row, &act).unwrap();
                        let got = out[t * range.len() + j];
                        assert!(
                            (got - want).abs() <= want.abs().max(1.0) * 1e-4,
                            "{ty} rows {range:?} token {t} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
