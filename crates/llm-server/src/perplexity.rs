//! `llm-server perplexity`: perplexity of a text file, computed exactly as llama-perplexity does
//! (tools/perplexity/perplexity.cpp, `perplexity()`): the file tokenized whole with the model's
//! special tokens, cut into chunks of `-c` tokens, BOS written over each chunk's first token when
//! the model adds one, and only the second half of each chunk scored.
//!
//! With `--kl-divergence-base FILE` it also saves the scored distributions in llama-perplexity's
//! format; with `--kl-divergence` as well it reads them back (ours or llama.cpp's) and compares
//! this model with them over the file's tokens (`kl_divergence()` there). The file format and
//! the per-token arithmetic are in `kld.rs`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use engine::{Logits, State};

use crate::cache_args::CacheArgs;
use crate::kld::{self, BaseReader, BaseRow, BaseWriter, Moments, Softmax, Summary, Versus};
use crate::load::{self, Loaded};

/// Arguments of `llm-server perplexity`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (default: the shipped demo model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The text file (not needed with --kl-divergence: the tokens come from the base file).
    #[arg(short = 'f', long = "file", required_unless_present = "kl_divergence")]
    pub file: Option<PathBuf>,
    /// Tokens per chunk [default: 512; with --kl-divergence, the base file's].
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Stop after this many chunks (default: all).
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Save the scored tokens' distributions to FILE (llama-perplexity's format), or with
    /// --kl-divergence compare with those saved there.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    pub kl_base: Option<PathBuf>,
    /// Compare this model with the distributions in --kl-divergence-base (written by
    /// llama-perplexity or by us): KL divergence, top-token agreement, Δp, perplexity ratio.
    #[arg(long = "kl-divergence", requires = "kl_base")]
    pub kl_divergence: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model.clone())?;
    let ctx = args.ctx_size.unwrap_or(512);
    args.device.needs = crate::placement::Needs {
        n_ctx: ctx,
        cache: args.cache.config(),
        ubatch: ctx.min(512),
        logit_rows: ctx.min(512),
    };
    let m = load::open(&path, args.threads, &args.device)?;
    if args.ctx_size.is_some_and(|c| c < 2) {
        bail!("--ctx-size must be at least 2");
    }
    match (&args.kl_base, args.kl_divergence) {
        (Some(base), true) => {
            let mut summary = compare(&args, &m, base)?;
            println!("{}", summary.report());
            Ok(())
        }
        _ => perplexity(&args, &m).map(|_| ()),
    }
}

/// Score the text file; with `--kl-divergence-base`, save the distributions too.
/// Returns the perplexity.
pub(crate) fn perplexity(args: &Args, m: &Loaded) -> anyhow::Result<f64> {
    let file = args.file.as_ref().context("--file is required")?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let tokens = m.tokenizer.encode(&text, true, false);
    let n_ctx = args.ctx_size.unwrap_or(512);
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; a context of {n_ctx} needs at least {}",
            file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let n_chunk = (tokens.len() / n_ctx).min(args.chunks.unwrap_or(usize::MAX));
    let nv = m.model.n_vocab();
    let mut writer = match &args.kl_base {
        Some(p) => Some(BaseWriter::create(
            p,
            n_ctx,
            nv,
            n_chunk,
            &tokens[..n_chunk * n_ctx],
        )?),
        None => None,
    };
    let row_len = if writer.is_some() {
        kld::row_len(nv)
    } else {
        0
    };
    let t0 = Instant::now();
    let mut nll = Moments::default();
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(n_chunk).enumerate() {
        let (logits, next) = run_chunk(args, m, chunk)?;
        // One slot per scored position: its −log p, and its saved row when writing a base.
        let mut codes = vec![0u16; next.len() * row_len];
        let mut slots: Vec<(f64, &mut [u16])> = if row_len > 0 {
            codes.chunks_exact_mut(row_len).map(|r| (0.0, r)).collect()
        } else {
            next.iter().map(|_| (0.0, &mut [][..])).collect()
        };
        engine::ops::par_rows(&mut slots, 1, 4 * nv, m.exec, &|j, slot| {
            let row = &logits[j * nv..(j + 1) * nv];
            let s = Softmax::of(row);
            let (v, out) = &mut slot[0];
            *v = s.nll(row, next[j] as usize);
            if !out.is_empty() {
                kld::encode_row(row, &s, out);
            }
            Ok(())
        })?;
        slots.iter().for_each(|(v, _)| nll.add(*v));
        drop(slots);
        if let Some(w) = &mut writer {
            w.rows(&codes)?;
        }
        eprint!("[{}]{:.4},", i + 1, nll.mean().exp());
    }
    eprintln!();
    if let Some(w) = writer {
        w.finish()?;
    }
    let ppl = nll.mean().exp();
    // llama-perplexity's error estimate: ppl · the standard error of the mean −log p.
    let err = ppl * nll.err_from(2);
    println!("Final estimate: PPL = {ppl:.4} +/- {err:.5}");
    eprintln!(
        "{n_chunk} chunks of {n_ctx}, {} scored tokens, {:.1} s",
        nll.count(),
        t0.elapsed().as_secs_f64()
    );
    Ok(ppl)
}

/// Compare this model with the distributions saved in `base`, over the base's tokens.
pub(crate) fn compare(args: &Args, m: &Loaded, base: &std::path::Path) -> anyhow::Result<Summary> {
    let mut r = BaseReader::open(base)?;
    let nv = m.model.n_vocab();
    if r.n_vocab != nv {
        bail!(
            "{} was computed with a vocabulary of {} tokens; this model has {nv}",
            base.display(),
            r.n_vocab
        );
    }
    if let Some(c) = args.ctx_size.filter(|&c| c != r.n_ctx) {
        bail!(
            "{} was computed with chunks of {} tokens, not {c} (leave -c out to take the file's)",
            base.display(),
            r.n_ctx
        );
    }
    let n_ctx = r.n_ctx;
    let n_chunk = r.n_chunk.min(args.chunks.unwrap_or(usize::MAX));
    let row_len = kld::row_len(nv);
    let mut base_rows = vec![0u16; (n_ctx - 1 - n_ctx / 2) * row_len];
    let tokens = std::mem::take(&mut r.tokens);
    let t0 = Instant::now();
    let mut summary = Summary::default();
    eprintln!("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p");
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(n_chunk).enumerate() {
        r.next_chunk(&mut base_rows)?;
        let (logits, next) = run_chunk(args, m, chunk)?;
        let mut out = vec![Versus::default(); next.len()];
        engine::ops::par_rows(&mut out, 1, 8 * nv, m.exec, &|j, v| {
            let row = &logits[j * nv..(j + 1) * nv];
            let b = BaseRow::new(&base_rows[j * row_len..(j + 1) * row_len], nv);
            v[0] = kld::versus(row, &Softmax::of(row), &b, next[j] as usize);
            Ok(())
        })?;
        out.iter().for_each(|v| summary.add(v));
        eprintln!("{}", summary.chunk_line(i + 1));
    }
    eprintln!(
        "{n_chunk} chunks of {n_ctx}, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Run one chunk (BOS over its first token when the model adds one) and return the logits of
/// its scored positions `n_ctx/2 .. n_ctx − 1` with the token that follows each.
fn run_chunk<'c>(
    args: &Args,
    m: &Loaded,
    chunk: &'c [u32],
) -> anyhow::Result<(Vec<f32>, &'c [u32])> {
    let n_ctx = chunk.len();
    let first = n_ctx / 2;
    let mut input = chunk.to_vec();
    if m.tokenizer.add_bos() {
        if let Some(b) = m.tokenizer.bos() {
            input[0] = b;
        }
    }
    let mut state: State = m.model.new_state_with(n_ctx, args.cache.config())?;
    let mut logits = m
        .model
        .forward(&input, &mut state, Logits::From(first), m.exec)?;
    // The last position's logits score nothing (its next token is in the next chunk).
    logits.truncate((n_ctx - 1 - first) * m.model.n_vocab());
    Ok((logits, &chunk[first + 1..]))
}
