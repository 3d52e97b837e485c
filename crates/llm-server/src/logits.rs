//! `llm-server logits`: the logits of every position of a token sequence, as raw f32 — what the
//! oracle scripts (tools/logits-oracle) compare with llama.cpp's.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cache_args::CacheArgs;

/// Arguments of `llm-server logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Token ids, little-endian u32.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output: f32 logits, one row of n_vocab per position.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Tokens per forward call (prefill batch).
    #[arg(short = 'b', long, default_value_t = 512)]
    pub batch: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.tokens)
        .with_context(|| format!("cannot read {}", args.tokens.display()))?;
    if bytes.len() % 4 != 0 || bytes.is_empty() {
        bail!(
            "{}: {} bytes is not a non-empty list of u32 token ids",
            args.tokens.display(),
            bytes.len()
        );
    }
    let tokens: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let file = crate::load::open_model_file(&args.model, &args.device)?;
    let (model, _gpu) = crate::device_args::load(&args.model, Arc::new(file), &args.device)?;
    let mut exec = engine::Exec::default();
    if let Some(t) = args.threads {
        exec.threads = t.max(1);
    }
    let mut state = model.new_state_with(tokens.len(), args.cache.config())?;
    let mut out = Vec::with_capacity(tokens.len() * model.n_vocab() * 4);
    for chunk in tokens.chunks(args.batch.max(1)) {
        let logits = model.forward(chunk, &mut state, engine::Logits::All, exec)?;
        out.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(&args.output, out)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}
