//! `llm-server run`: one prompt from the terminal, tokens printed as they come, then the speed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use engine::{ChatRequest, Sampler, SamplerParams, StopMatcher, StopStep};

use crate::cache_args::CacheArgs;
use crate::load;

/// Arguments of `llm-server run` (llama.cpp's names for the sampling flags).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (default: the shipped demo model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Wrap the prompt as a user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Stop when the output contains this text (repeatable); the text itself is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Context size (prompt + generated tokens).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Sampling flags, as llama-cli / llama-server spell them.
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "typical", default_value_t = 1.0)]
    pub typical_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed of the draw.
    #[arg(short = 's', long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplerParams {
        SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: Vec::new(),
            seed: self.seed,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model)?;
    let m = load::open(&path, args.threads)?;
    let mut sampler = Sampler::new(args.sampling.params())?;
    let prompt = if args.chat {
        let Some(t) = &m.template else {
            bail!("{} has no chat template; drop --chat", path.display())
        };
        let messages = serde_json::json!([{"role": "user", "content": args.prompt}]);
        let req = ChatRequest {
            messages: &messages,
            tools: None,
            add_generation_prompt: true,
            enable_thinking: None,
            extra: None,
        };
        t.render(&req)?
    } else {
        args.prompt.clone()
    };
    // A template that writes the BOS text itself must not get a second BOS from the tokenizer
    // (llama.cpp drops the duplicate the same way).
    let bos_in_text = m
        .tokenizer
        .bos()
        .and_then(|b| m.tokenizer.token_text(b))
        .is_some_and(|t| prompt.starts_with(t));
    let tokens = m.tokenizer.encode(&prompt, !bos_in_text, args.chat);
    if tokens.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    if tokens.len() + args.n_predict > args.ctx_size {
        bail!(
            "prompt ({} tokens) + {} to generate exceed the context of {}",
            tokens.len(),
            args.n_predict,
            args.ctx_size
        );
    }
    tokens.iter().for_each(|&t| sampler.accept(t));
    let mut state = m.model.new_state_with(args.ctx_size, args.cache.config())?;
    let t0 = Instant::now();
    let mut logits = m
        .model
        .forward(&tokens, &mut state, false, m.exec)
        .context("prefill")?;
    let prefill = t0.elapsed();
    let (mut out, mut pending) = (std::io::stdout().lock(), Vec::new());
    let mut stops = StopMatcher::new(&args.stop);
    let t1 = Instant::now();
    let mut generated = 0;
    while generated < args.n_predict {
        let tok = sampler.sample(&logits);
        if m.tokenizer.is_eog(tok) {
            break;
        }
        sampler.accept(tok);
        generated += 1;
        pending.extend_from_slice(m.tokenizer.token_bytes(tok));
        let text = take_utf8_prefix(&mut pending);
        match stops.push(&text) {
            StopStep::Continue(t) => write_flush(&mut out, t.as_bytes())?,
            StopStep::Stop(t) => {
                write_flush(&mut out, t.as_bytes())?;
                pending.clear();
                break;
            }
        }
        if generated < args.n_predict {
            logits = m.model.forward(&[tok], &mut state, false, m.exec)?;
        }
    }
    out.write_all(stops.finish().as_bytes())?;
    out.write_all(&pending)?;
    writeln!(out)?;
    let decode = t1.elapsed();
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tok/s); generated: {} tokens in {:.2} s ({:.1} tok/s)",
        tokens.len(),
        prefill.as_secs_f64(),
        tokens.len() as f64 / prefill.as_secs_f64(),
        generated,
        decode.as_secs_f64(),
        generated as f64 / decode.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Take the longest complete UTF-8 prefix of `pending`, keeping a split character's bytes
/// for the next token; bytes that can never be UTF-8 come out as U+FFFD.
fn take_utf8_prefix(pending: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        // An error with no length is an incomplete sequence at the end: wait for more bytes.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => pending.len(),
    };
    let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
    pending.drain(..valid);
    text
}

fn write_flush(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_waits_for_the_rest() {
        let mut pending = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8_prefix(&mut pending), "");
        pending.push("é".as_bytes()[1]);
        assert_eq!(take_utf8_prefix(&mut pending), "é");
        assert!(pending.is_empty());
    }
}
