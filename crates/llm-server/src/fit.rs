//! `llm-server fit`: the placement a model would get, without loading its weights — every
//! tensor group, where it goes, the bytes on each side, and the decode speed the measured
//! bandwidths allow (issue 11 req. 3).

use std::path::PathBuf;

use crate::cache_args::CacheArgs;
use crate::device_args::DeviceArgs;
use crate::load;
use crate::placement::{self, Needs};

/// `llm-server fit` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Context to plan KV cache and state for (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Tokens of a prefill micro-batch.
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: usize,
    /// Worker threads (for the RAM bandwidth measurement).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Skip the bandwidth measurements (no decode estimate).
    #[arg(long)]
    pub no_bandwidth: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model.clone())?;
    let file = load::open_gguf(&path)?;
    let needs = Needs {
        n_ctx: args.ctx_size,
        cache: args.cache.config(),
        ubatch: args.ubatch.max(1),
        logit_rows: 1,
    };
    let want = args.device.resolve(crate::device_args::n_layer(&file))?;
    let gpu = match want {
        Some(crate::device_args::Device::Cpu) => None,
        Some(crate::device_args::Device::Cuda(n)) => Some(cuda::Cuda::open(n)?),
        None => cuda::Cuda::open(0).ok(),
    };
    let free = match &gpu {
        Some(g) => Some(g.gpu().mem_info()?.0 as u64),
        None => None,
    };
    let plan = placement::plan(&file, &args.device.placement, &needs, free)?;
    println!(
        "{} on {}{}",
        path.display(),
        gpu.as_ref().map_or("no GPU".into(), |g| g.gpu().describe()),
        free.map_or(String::new(), |f| format!(
            ", {:.0} MiB free",
            f as f64 / (1 << 20) as f64
        ))
    );
    let k = crate::device_args::hparam(&file, "expert_used_count").unwrap_or(0) as usize;
    let (gpu_bw, ram_bw) = match args.no_bandwidth {
        true => (None, None),
        false => {
            let threads = args
                .threads
                .unwrap_or_else(|| engine::Exec::default().threads);
            let g = match &gpu {
                Some(g) => Some(g.copy_bandwidth(1 << 30)?),
                None => None,
            };
            (g, Some(crate::bench::read_bandwidth(threads)))
        }
    };
    placement::print(&plan, k, gpu_bw, ram_bw);
    Ok(())
}
