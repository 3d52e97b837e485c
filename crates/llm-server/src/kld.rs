//! The per-token arithmetic of `llm-server perplexity` and llama-perplexity's log-probability
//! file (`--kl-divergence-base`), so that distributions saved by either program can be compared
//! with the other's: the way llama.cpp users compare a quantization with its base model, and
//! the way we compare our engine with llama.cpp over a whole text.
//!
//! The file, as llama.cpp b11549's tools/perplexity writes it (all little-endian):
//! `"_logits_"`, `u32 n_ctx`, `i32 n_vocab`, `i32 n_chunk`, the `n_ctx · n_chunk` tokens as
//! `i32` (before the BOS substitution), then for every chunk the rows of positions
//! `n_ctx/2 .. n_ctx − 1` (those whose next token is scored). A row is `2·⌈n_vocab/2⌉ + 4`
//! `u16`: `f32 scale`, `f32 min_log_prob`, then per token `code`, with
//! `log p ≈ scale · code + min_log_prob`; the range is the row's top 16 nats, anything below
//! gets code 0.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use engine::ops::exp_fast;

const MAGIC: &[u8; 8] = b"_logits_";
/// Log-probabilities more than this far below the row's top are not kept (code 0).
const RANGE: f32 = 16.0;
/// Values summed in f32 before the partial sum goes into the f64 total.
const BLOCK: usize = 1024;

/// `u16` per row of a file for `n_vocab` tokens.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// One row of logits, summarised: its maximum, the first token that reaches it, and
/// `ln Σ exp(x − max)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax {
    pub max: f32,
    pub argmax: usize,
    pub lse: f64,
}

impl Softmax {
    pub fn of(row: &[f32]) -> Softmax {
        fast(
            #[inline(always)]
            || {
                let max = lanes(row, f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
                    .into_iter()
                    .fold(f32::NEG_INFINITY, f32::max);
                let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
                let sum = blocked_sum(
                    row.chunks(BLOCK)
                        .map(|b| lanes_sum(b, |v| exp_fast(v - max))),
                );
                Softmax {
                    max,
                    argmax,
                    lse: sum.ln(),
                }
            },
        )
    }

    /// `−log p(tok)`.
    pub fn nll(&self, row: &[f32], tok: usize) -> f64 {
        f64::from(self.max) + self.lse - f64::from(row[tok])
    }
}

/// `f` with AVX2 and FMA enabled where the CPU has them: the row loops below (a 262K-token
/// vocabulary is 67M values per chunk of perplexity) vectorise eight wide instead of four.
#[inline(always)]
fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: AVX2 and FMA are present (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

/// Sixteen running values of `op` over `row` (lane `k` sees elements `k, k+16, …`): a
/// reduction the compiler keeps in vector registers, which a serial fold over f32 is not.
#[inline(always)]
fn lanes(row: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> [f32; 16] {
    let mut acc = [init; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for k in 0..16 {
            acc[k] = op(acc[k], c[k]);
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        acc[k] = op(acc[k], v);
    }
    acc
}

/// `Σ f(v)` over a block, in f32 lanes.
#[inline(always)]
fn lanes_sum(b: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    lanes(b, 0.0, |a, v| a + f(v)).iter().sum()
}

/// The blocks' partial sums added in f64: [`BLOCK`] terms in f32 lose well under 1e-6
/// relative, the f64 total nothing more.
#[inline(always)]
fn blocked_sum(parts: impl Iterator<Item = f32>) -> f64 {
    parts.map(f64::from).sum()
}

/// Write one row of a log-probability file: `out` is [`row_len`] long.
pub fn encode_row(row: &[f32], s: &Softmax, out: &mut [u16]) {
    fast(
        #[inline(always)]
        || encode_body(row, s, out),
    )
}

#[inline(always)]
fn encode_body(row: &[f32], s: &Softmax, out: &mut [u16]) {
    let lo = lanes(row, f32::INFINITY, |m, v| if v < m { v } else { m })
        .into_iter()
        .fold(f32::INFINITY, f32::min)
        .max(s.max - RANGE);
    let scale = (s.max - lo) / 65535.0;
    let min_log_prob = lo - s.max - s.lse as f32;
    let (head, codes) = out.split_at_mut(4);
    for (pair, v) in head.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let b = v.to_bits();
        pair[0] = b as u16;
        pair[1] = (b >> 16) as u16;
    }
    codes.fill(0);
    if scale > 0.0 {
        let inv = 1.0 / scale;
        for (c, &v) in codes.iter_mut().zip(row) {
            if v > lo {
                *c = (inv * (v - lo)).round_ties_even().min(65535.0) as u16;
            }
        }
    }
}

/// A row of a log-probability file, read back.
pub struct BaseRow<'a> {
    scale: f32,
    min_log_prob: f32,
    codes: &'a [u16],
}

impl<'a> BaseRow<'a> {
    pub fn new(row: &'a [u16], n_vocab: usize) -> BaseRow<'a> {
        let f = |i: usize| f32::from_bits(u32::from(row[i]) | (u32::from(row[i + 1]) << 16));
        BaseRow {
            scale: f(0),
            min_log_prob: f(2),
            codes: &row[4..4 + n_vocab],
        }
    }

    fn log_p(&self, tok: usize) -> f32 {
        self.scale * f32::from(self.codes[tok]) + self.min_log_prob
    }
}

/// What one scored position contributes to the comparison of a model (Q) with a base.
#[derive(Clone, Copy, Debug, Default)]
pub struct Versus {
    pub nll: f64,
    pub nll_base: f64,
    pub kld: f64,
    /// `p(tok) − p_base(tok)`.
    pub p_diff: f64,
    pub same_top: bool,
}

/// Compare our logits `row` (summarised by `s`) at a position whose next token is `tok` with
/// the base's saved distribution: KL(base ‖ ours) over the tokens the base kept.
pub fn versus(row: &[f32], s: &Softmax, base: &BaseRow, tok: usize) -> Versus {
    let norm = s.max + s.lse as f32;
    let (scale, min_lp) = (base.scale, base.min_log_prob);
    let kld = fast(
        #[inline(always)]
        || {
            blocked_sum(
                row.chunks(BLOCK)
                    .zip(base.codes.chunks(BLOCK))
                    .map(|(lb, cb)| {
                        let mut acc = [0f32; 16];
                        for (l16, c16) in lb.chunks(16).zip(cb.chunks(16)) {
                            for k in 0..l16.len() {
                                let lp_base = scale * f32::from(c16[k]) + min_lp;
                                let term = exp_fast(lp_base) * (lp_base - (l16[k] - norm));
                                acc[k] += if lp_base > -RANGE { term } else { 0.0 };
                            }
                        }
                        acc.iter().sum::<f32>()
                    }),
            )
        },
    );
    // The first token with the largest code, as llama-perplexity picks the base's top token.
    let top_code = base.codes.iter().copied().max().unwrap_or(0);
    let base_top = base.codes.iter().position(|&c| c == top_code).unwrap_or(0);
    let nll = s.nll(row, tok);
    let nll_base = -f64::from(base.log_p(tok));
    Versus {
        nll,
        nll_base,
        kld,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        same_top: s.argmax == base_top,
    }
}

/// Streams a log-probability file out, chunk by chunk.
pub struct BaseWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl BaseWriter {
    pub fn create(
        path: &Path,
        n_ctx: usize,
        n_vocab: usize,
        n_chunk: usize,
        tokens: &[u32],
    ) -> anyhow::Result<BaseWriter> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = BaseWriter {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
        };
        let mut head = MAGIC.to_vec();
        head.extend((n_ctx as u32).to_le_bytes());
        head.extend((n_vocab as i32).to_le_bytes());
        head.extend((n_chunk as i32).to_le_bytes());
        head.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        w.write(&head)?;
        Ok(w)
    }

    pub fn rows(&mut self, rows: &[u16]) -> anyhow::Result<()> {
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// A log-probability file opened for reading: its header checked against its size, the rows
/// read a chunk at a time.
pub struct BaseReader {
    input: BufReader<File>,
    path: PathBuf,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    pub tokens: Vec<u32>,
}

impl BaseReader {
    pub fn open(path: &Path) -> anyhow::Result<BaseReader> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut input = BufReader::new(file);
        let mut head = [0u8; 20];
        let bad = || {
            format!(
                "{} is not a log-probability file (llama-perplexity --kl-divergence-base): ",
                path.display()
            )
        };
        if input.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
            bail!("{}it does not start with \"_logits_\"", bad());
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (n_ctx, n_vocab, n_chunk) = (word(8) as usize, word(12) as i32, word(16) as i32);
        if n_ctx < 2 || n_vocab <= 0 || n_chunk <= 0 {
            bail!(
                "{}n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}",
                bad()
            );
        }
        let (n_vocab, n_chunk) = (n_vocab as usize, n_chunk as usize);
        let rows = (n_ctx - 1 - n_ctx / 2) as u64;
        let expect =
            20 + 4 * (n_ctx * n_chunk) as u64 + n_chunk as u64 * rows * 2 * row_len(n_vocab) as u64;
        if size != expect {
            bail!(
                "{}{size} bytes where n_ctx {n_ctx}, n_vocab {n_vocab} and {n_chunk} chunks make {expect} \
                 (truncated, or written by another version)",
                bad()
            );
        }
        let mut raw = vec![0u8; 4 * n_ctx * n_chunk];
        input
            .read_exact(&mut raw)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let tokens = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(BaseReader {
            input,
            path: path.to_path_buf(),
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
        })
    }

    /// The next chunk's rows into `rows` (`(n_ctx − 1 − n_ctx/2) · row_len` long).
    pub fn next_chunk(&mut self, rows: &mut [u16]) -> anyhow::Result<()> {
        let mut raw = vec![0u8; 2 * rows.len()];
        self.input
            .read_exact(&mut raw)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        for (v, c) in rows.iter_mut().zip(raw.chunks_exact(2)) {
            *v = u16::from_le_bytes([c[0], c[1]]);
        }
        Ok(())
    }
}

/// Running sums of [`Versus`] over the positions scored so far, and the figures
/// llama-perplexity prints from them.
#[derive(Default)]
pub struct Summary {
    nll: Moments,
    nll_base: Moments,
    nll_cross: f64,
    kld: Moments,
    p_diff: Moments,
    p_diff2: Moments,
    same_top: usize,
    kld_values: Vec<f64>,
    p_diff_values: Vec<f64>,
}

/// [`Summary::headline`]'s figures.
#[derive(Debug, Clone, Copy)]
pub struct Headline {
    pub ppl: f64,
    pub kld_mean: f64,
    pub kld_999: f64,
    pub same_top: f64,
}

/// Σx, Σx², n.
#[derive(Default, Clone, Copy)]
pub struct Moments {
    sum: f64,
    sum2: f64,
    n: usize,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
        self.n += 1;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    pub fn count(&self) -> usize {
        self.n
    }

    /// Standard error of the mean (0 for ten values or fewer, as llama-perplexity's KL
    /// statistics have it).
    pub fn err(&self) -> f64 {
        self.err_from(11)
    }

    /// Standard error of the mean, 0 below `min` values (llama-perplexity's own perplexity
    /// line gives one from two values on).
    pub fn err_from(&self, min: usize) -> f64 {
        let n = self.n as f64;
        let var = self.sum2 / n - self.mean() * self.mean();
        if var > 0.0 && self.n >= min.max(2) {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        }
    }
}

impl Summary {
    pub fn add(&mut self, v: &Versus) {
        self.nll.add(v.nll);
        self.nll_base.add(v.nll_base);
        self.nll_cross += v.nll * v.nll_base;
        self.kld.add(v.kld);
        self.p_diff.add(v.p_diff);
        self.p_diff2.add(v.p_diff * v.p_diff);
        self.same_top += usize::from(v.same_top);
        self.kld_values.push(v.kld);
        self.p_diff_values.push(v.p_diff);
    }

    /// Covariance of the two mean log-likelihoods.
    fn cov(&self) -> f64 {
        let n = self.nll.n as f64;
        if self.nll.n < 10 {
            return 0.0;
        }
        (self.nll_cross / n - self.nll.mean() * self.nll_base.mean()) / (n - 1.0)
    }

    fn ln_ratio(&self) -> (f64, f64) {
        let (e, eb) = (self.nll.err(), self.nll_base.err());
        let var = e * e + eb * eb - 2.0 * self.cov();
        (self.nll.mean() - self.nll_base.mean(), var.max(0.0).sqrt())
    }

    fn rms_p_diff(&self) -> (f64, f64) {
        let rms = self.p_diff2.mean().sqrt();
        let err = if rms > 0.0 {
            0.5 / rms * self.p_diff2.err()
        } else {
            0.0
        };
        (rms, err)
    }

    fn same_top(&self) -> (f64, f64) {
        let n = self.nll.n as f64;
        let p = self.same_top as f64 / n.max(1.0);
        (p, (p * (1.0 - p) / (n - 1.0).max(1.0)).sqrt())
    }

    /// One line per chunk, as llama-perplexity prints them.
    pub fn chunk_line(&self, chunk: usize) -> String {
        let ppl = self.nll.mean().exp();
        let (lr, lr_err) = self.ln_ratio();
        let (rms, rms_err) = self.rms_p_diff();
        let (top, top_err) = self.same_top();
        format!(
            "{chunk:4}    {ppl:9.4} ± {:9.4}    {lr:10.5} ± {lr_err:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
            ppl * self.nll.err(),
            self.kld.mean(),
            self.kld.err(),
            100.0 * rms,
            100.0 * rms_err,
            100.0 * top,
            100.0 * top_err
        )
    }

    /// The closing statistics.
    /// The quality matrix's figures: PPL of the model and of the base, mean and 99.9th
    /// percentile KL divergence, same top token (fraction).
    pub fn headline(&mut self) -> Headline {
        let kld = sorted(&mut self.kld_values);
        Headline {
            ppl: self.nll.mean().exp(),
            kld_mean: self.kld.mean(),
            kld_999: percentile(kld, 0.999),
            same_top: self.same_top().0,
        }
    }

    pub fn report(&mut self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        let (ppl, ppl_base) = (self.nll.mean().exp(), self.nll_base.mean().exp());
        let (ppl_err, ppl_base_err) = (ppl * self.nll.err(), ppl_base * self.nll_base.err());
        let cov = self.cov();
        let (lr, lr_err) = self.ln_ratio();
        line("====== Perplexity statistics ======".into());
        line(format!(
            "Mean PPL(Q)                   : {ppl:10.6} ± {ppl_err:10.6}"
        ));
        line(format!(
            "Mean PPL(base)                : {ppl_base:10.6} ± {ppl_base_err:10.6}"
        ));
        let cor = cov / (self.nll.err() * self.nll_base.err());
        line(format!(
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
            100.0 * cor
        ));
        line(format!(
            "Mean ln(PPL(Q)/PPL(base))     : {lr:10.6} ± {lr_err:10.6}"
        ));
        line(format!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
            lr.exp(),
            lr.exp() * lr_err
        ));
        let diff_var = ppl_err * ppl_err + ppl_base_err * ppl_base_err - 2.0 * ppl * ppl_base * cov;
        line(format!(
            "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
            ppl - ppl_base,
            diff_var.max(0.0).sqrt()
        ));
        line(String::new());
        line("====== KL divergence statistics ======".into());
        line(format!(
            "Mean    KLD: {:10.6} ± {:10.6}",
            self.kld.mean(),
            self.kld.err()
        ));
        let kld = sorted(&mut self.kld_values);
        let quantiles = [0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001];
        quantile_lines("KLD", kld, &quantiles, |v| format!("{v:10.6}"))
            .into_iter()
            .for_each(&mut line);
        line(String::new());
        line("====== Token probability statistics ======".into());
        line(format!(
            "Mean    Δp: {:6.3} ± {:5.3} %",
            100.0 * self.p_diff.mean(),
            100.0 * self.p_diff.err()
        ));
        let pd = sorted(&mut self.p_diff_values);
        let quantiles = [
            0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001,
        ];
        quantile_lines("Δp", pd, &quantiles, |v| format!("{:6.3}%", 100.0 * v))
            .into_iter()
            .for_each(&mut line);
        let (rms, rms_err) = self.rms_p_diff();
        line(format!(
            "RMS Δp    : {:6.3} ± {:5.3} %",
            100.0 * rms,
            100.0 * rms_err
        ));
        let (top, top_err) = self.same_top();
        line(format!(
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * top,
            100.0 * top_err
        ));
        s
    }
}

/// A sorted distribution as llama-perplexity prints it: `Maximum NAME: …`, one line per
/// quantile (largest first; 0.5 as `Median`), `Minimum NAME: …`.
fn quantile_lines(name: &str, v: &[f64], qs: &[f64], show: impl Fn(f64) -> String) -> Vec<String> {
    let ends = (
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    );
    let mut out = vec![format!("Maximum {name}: {}", show(ends.1))];
    for &q in qs {
        let label = match q == 0.5 {
            true => "Median".to_string(),
            false => format!("{:4.1}%", 100.0 * q),
        };
        out.push(format!("{label:<8}{name}: {}", show(percentile(v, q))));
    }
    out.push(format!("Minimum {name}: {}", show(ends.0)));
    out
}

/// The median of `v` (the mean of the middle two for an even count; NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    match s.is_empty() {
        true => f64::NAN,
        false => percentile(sorted(&mut s), 0.5),
    }
}

fn sorted(v: &mut [f64]) -> &[f64] {
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of sorted `v`, interpolating between neighbours.
fn percentile(v: &[f64], q: f64) -> f64 {
    let Some(&last) = v.last() else {
        return 0.0;
    };
    let at = q * (v.len() - 1) as f64;
    let i = at.floor() as usize;
    if i + 1 >= v.len() {
        return last;
    }
    let f = at - i as f64;
    (1.0 - f) * v[i] + f * v[i + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 * 30.0 - 20.0
            })
            .collect()
    }

    fn exact_lse(row: &[f32]) -> f64 {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        max + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
    }

    #[test]
    fn softmax_matches_f64() {
        for (n, seed) in [(1, 1), (7, 2), (1023, 3), (1025, 4), (262_144, 5)] {
            let row = logits(n, seed);
            let s = Softmax::of(&row);
            let got = s.max as f64 + s.lse;
            assert!(
                (got - exact_lse(&row)).abs() < 1e-5,
                "n {n}: {got} vs {}",
                exact_lse(&row)
            );
            assert_eq!(row[s.argmax], s.max);
        }
    }

    #[test]
    fn encoded_rows_decode_to_log_probs() {
        let row = logits(5001, 9);
        let s = Softmax::of(&row);
        let mut enc = vec![0u16; row_len(row.len())];
        encode_row(&row, &s, &mut enc);
        assert_eq!(enc.len(), 5006);
        let base = BaseRow::new(&enc, row.len());
        let lse = exact_lse(&row);
        for (i, &v) in row.iter().enumerate() {
            let exact = v as f64 - lse;
            if exact > -lse + s.max as f64 - 15.9 {
                // Within half a code step (16 nats / 65535) and f32 rounding.
                assert!((base.log_p(i) as f64 - exact).abs() < 2e-4, "token {i}");
            }
        }
        // Against itself: no divergence (but for the codes' rounding: the decoded base sums
        // to 1 only within ~1e-5), the same top token, the same likelihood.
        let v = versus(&row, &s, &base, s.argmax);
        assert!(v.kld.abs() < 1e-5, "{}", v.kld);
        assert!(v.same_top);
        assert!((v.nll - v.nll_base).abs() < 2e-4);
    }

    #[test]
    fn kld_of_a_shifted_distribution() {
        // Two tokens: base p = (0.5, 0.5), ours (e/(1+e), 1/(1+e)) → KL = ½ ln((1+e)²/(4e)).
        let base_logits = [0.0f32, 0.0];
        let ours = [1.0f32, 0.0];
        let mut enc = vec![0u16; row_len(2)];
        encode_row(&base_logits, &Softmax::of(&base_logits), &mut enc);
        let base = BaseRow::new(&enc, 2);
        let v = versus(&ours, &Softmax::of(&ours), &base, 0);
        let e = std::f64::consts::E;
        let want = 0.5 * ((1.0 + e) * (1.0 + e) / (4.0 * e)).ln();
        assert!((v.kld - want).abs() < 1e-5, "{} vs {want}", v.kld);
        assert!((v.p_diff - (e / (1.0 + e) - 0.5)).abs() < 1e-5);
        assert!(v.same_top, "ties go to the first token on both sides");
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.1), 1.4);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
