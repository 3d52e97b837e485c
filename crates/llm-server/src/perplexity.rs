//! `llm-server perplexity`: perplexity of a text file, computed exactly as llama-perplexity does
//! (tools/perplexity/perplexity.cpp, `perplexity()`): the file tokenized whole with the model's
//! special tokens, cut into chunks of `-c` tokens, BOS written over each chunk's first token when
//! the model adds one, and only the second half of each chunk scored.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::cache_args::CacheArgs;
use crate::load;

/// Arguments of `llm-server perplexity`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (default: the shipped demo model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The text file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Stop after this many chunks (default: all).
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model)?;
    let m = load::open(&path, args.threads)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let n_ctx = args.ctx_size;
    if n_ctx < 2 {
        bail!("--ctx-size must be at least 2");
    }
    let mut tokens = m.tokenizer.encode(&text, true, false);
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; a context of {n_ctx} needs at least {}",
            args.file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let n_chunk = (tokens.len() / n_ctx).min(args.chunks.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let bos = if m.tokenizer.add_bos() {
        m.tokenizer.bos()
    } else {
        None
    };
    let t0 = Instant::now();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    for i in 0..n_chunk {
        let chunk = &mut tokens[i * n_ctx..(i + 1) * n_ctx];
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut state = m.model.new_state_with(n_ctx, args.cache.config())?;
        let logits = m.model.forward(chunk, &mut state, true, m.exec)?;
        let nv = m.model.n_vocab();
        for j in first..n_ctx - 1 {
            let row = &logits[j * nv..(j + 1) * nv];
            let v = -log_softmax_at(row, chunk[j + 1] as usize);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        eprint!("[{}]{:.4},", i + 1, (nll / count as f64).exp());
    }
    eprintln!();
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    // llama-perplexity's error estimate: ppl · sqrt(var / (n − 1)).
    let err = ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt();
    println!("Final estimate: PPL = {ppl:.4} +/- {err:.5}");
    eprintln!(
        "{n_chunk} chunks of {n_ctx}, {count} scored tokens, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// log softmax(row)[i], in f64 like llama-perplexity's `log_softmax`.
fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[i] as f64 - max - sum.ln()
}
