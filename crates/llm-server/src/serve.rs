//! `llm-server serve`: the OpenAI-compatible HTTP server (the `server` crate) on one model, with
//! llama-server's flag names.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use server::{AppState, Pooling, ReasoningFormat, ServedModel};

use crate::cache_args::CacheArgs;
use crate::load;

/// Arguments of `llm-server serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (default: the shipped demo model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the line `listening on http://…` tells which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Context size of each request, prompt + completion (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Model id in `/v1/models` and responses (default: the file name without `.gguf`).
    #[arg(short = 'a', long)]
    pub alias: Option<String>,
    /// Require `Authorization: Bearer KEY` on `/v1` routes.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Generations at once (llama-server's `-np/--parallel`): their tokens go through the
    /// model as one batch each step, and a new request's prompt joins the running batch a
    /// `-ub` chunk at a time. One where the backend cannot batch (CUDA, for now).
    #[arg(long = "parallel", default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a slot; more are refused with 429 (OpenAI) or 529
    /// (Anthropic) and `Retry-After`.
    #[arg(long, default_value_t = server::queue::DEFAULT_MAX_WAITING)]
    pub max_queue: usize,
    /// Seconds a request may generate once its turn comes (llama-server's `--timeout`, default
    /// 600; 0: no limit): then it ends as at `max_tokens` (`finish_reason: length`, logged as
    /// `finish=timeout`).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// On SIGINT/SIGTERM: seconds the requests in flight get to finish before they are
    /// cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// A Jinja chat template to use instead of the GGUF's (llama-server's flag).
    #[arg(long)]
    pub chat_template_file: Option<PathBuf>,
    /// Where the chat route puts the model's `<think>` reasoning: `deepseek` (or `auto`) in
    /// `reasoning_content`, `none` left in `content` (llama-server's flag).
    #[arg(long, value_enum, default_value = "auto")]
    pub reasoning_format: ReasoningArg,
    /// MiB the prompt cache's checkpoints may hold (llama-server's `--cache-ram`/`-cram`; 0: no
    /// prompt cache, -1: no limit). A request whose prompt begins like the previous sequence
    /// resumes from it; models with DeltaNet layers resume from a checkpoint taken at the end
    /// of a prompt or of a generation.
    #[arg(long = "cache-ram", value_name = "MiB", allow_negative_numbers = true,
          default_value_t = server::cache::DEFAULT_CACHE_MIB as i64)]
    pub cache_ram: i64,
    #[command(flatten)]
    pub live_stats: crate::calibrate::LiveArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub batch: crate::cache_args::BatchArgs,
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
}

/// `--reasoning-format` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ReasoningArg {
    /// As `deepseek`.
    Auto,
    /// Reasoning in `reasoning_content`.
    Deepseek,
    /// Reasoning left in `content`.
    None,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model)?;
    eprintln!("loading {}", path.display());
    args.device.needs = crate::placement::Needs {
        n_ctx: args.ctx_size,
        cache: args.cache.config(),
        ubatch: args.batch.ubatch(),
        ..Default::default()
    };
    let m = load::open(&path, args.threads, &args.device)?;
    let n_ctx = match args.ctx_size {
        0 => m.model.n_ctx_train(),
        n => n,
    };
    let id = args.alias.unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    // One token through the model before listening: the first matmul of each weight matrix
    // repacks it for the fast kernels (and reads it from disk), which the first request
    // should not wait for.
    let t0 = std::time::Instant::now();
    let mut state = m.model.new_state(1).context("warm-up state")?;
    m.model
        .forward(&[0], &mut state, engine::Logits::Last, m.exec)
        .context("warm-up forward pass")?;
    eprintln!("weights ready in {:.1} s", t0.elapsed().as_secs_f64());
    let mut model = ServedModel::new(m.model, m.tokenizer, m.template, m.exec, id, n_ctx)
        .with_context(|| format!("{}: chat template", path.display()))?;
    if let Some(file) = &args.chat_template_file {
        let source = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the chat template {}", file.display()))?;
        model = model
            .with_template_source(&source)
            .with_context(|| format!("{}: chat template", file.display()))?;
    }
    let model = model
        .with_pooling(match m.pooling {
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            _ => Pooling::Mean,
        })
        .with_cache(args.cache.config())
        .with_ubatch(args.batch.ubatch())
        .with_slots(args.parallel)
        .with_timeout(
            (args.timeout > 0.0).then(|| std::time::Duration::from_secs_f64(args.timeout)),
        )
        .with_prompt_cache(match args.cache_ram {
            n if n < 0 => usize::MAX >> 20,
            n => n as usize,
        })
        .with_reasoning(match args.reasoning_format {
            ReasoningArg::Auto | ReasoningArg::Deepseek => ReasoningFormat::Deepseek,
            ReasoningArg::None => ReasoningFormat::None,
        });
    // One line that says what runs where, and what it holds.
    let file_gib = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / (1u64 << 30) as f64);
    let cache = args.cache.config();
    let kv_bytes = model
        .model
        .new_state_with(n_ctx, cache)
        .map_or(0, |st| st.kv_bytes());
    eprintln!(
        "ready: {} ({}, {file_gib:.2} GiB) on {} | context {n_ctx}, KV {}/{} {:.0} MiB a \
         request | {} slots | {} threads | resident {:.0} MiB",
        model.id,
        model.model.arch(),
        model.model.backend(),
        cache.k,
        cache.v,
        kv_bytes as f64 / (1u64 << 20) as f64,
        model.slots,
        model.exec.threads,
        server::metrics::resident_bytes().unwrap_or(0) as f64 / (1u64 << 20) as f64,
    );
    let live = crate::calibrate::LiveStats::start(&args.live_stats, &path, "serve")
        .map(std::sync::Arc::new);
    if let Some(l) = live.clone() {
        // Saved every minute while serving (and once more at the end).
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
            if let Err(e) = l.save() {
                eprintln!("expert stats: {e:#}");
            }
        });
    }
    let state = AppState::new(model, args.api_key).with_max_queue(args.max_queue);
    // Generation runs on blocking threads; the async side only parses and streams.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        // Scripts and tests wait for this line (the real port when --port 0).
        let mut out = std::io::stdout();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
        let grace = std::time::Duration::from_secs_f64(args.shutdown_grace.max(0.0));
        server::serve_until_signal(listener, state, grace).await?;
        if let Some(l) = &live {
            l.save()?;
        }
        eprintln!("stopped");
        anyhow::Ok(())
    })
}
