//! `llm-server run`: one prompt from the terminal, tokens printed as they come, then the speed.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::bail;
use engine::{ChatRequest, SamplerParams};
use server::{Generator, Params};

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
    pub batch: crate::cache_args::BatchArgs,
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
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

pub fn run(mut args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model)?;
    args.device.needs = crate::placement::Needs {
        n_ctx: args.ctx_size,
        cache: args.cache.config(),
        ubatch: args.batch.ubatch(),
        ..Default::default()
    };
    let m = load::open(&path, args.threads, &args.device)?;
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
    let tokens = server::prompt_tokens(&m.tokenizer, &prompt, args.chat);
    let params = Params {
        max_tokens: args.n_predict,
        n_ctx: args.ctx_size,
        stop: args.stop.clone(),
        sampling: args.sampling.params(),
        cache: args.cache.config(),
        logprobs: None,
        prompt_logprobs: false,
        think_budget: None,
        marks: Vec::new(),
        constraint: None,
        deadline: None,
    };
    let generator = Generator {
        model: m.model.as_ref(),
        tokenizer: &m.tokenizer,
        exec: m.exec,
        ubatch: args.batch.ubatch(),
        cache: None,
        batcher: None,
    };
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let o = server::generate(generator, &tokens, &params, |text| {
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tok/s); generated: {} tokens in {:.2} s ({:.1} tok/s)",
        o.prompt_tokens,
        o.prefill.as_secs_f64(),
        o.prompt_tokens as f64 / o.prefill.as_secs_f64(),
        o.completion_tokens,
        o.decode.as_secs_f64(),
        o.completion_tokens as f64 / o.decode.as_secs_f64().max(1e-9)
    );
    Ok(())
}
