//! Where a command runs the model: `--device` and llama.cpp's `-ngl/--n-gpu-layers`, shared
//! by every command that loads one.

use std::path::Path;
use std::sync::Arc;

/// `--device` and `-ngl`; flatten into a command's arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Where to run: `cpu`, `cuda` or `cuda:N` (default: the first GPU when there is one with
    /// its driver and NVRTC, else the CPU, saying why).
    #[arg(long, value_name = "DEV")]
    pub device: Option<String>,
    /// Layers on the GPU (llama.cpp's `-ngl`): 0 keeps the model on the CPU; `all`, `auto`
    /// or any number ≥ the layer count (99) puts the whole model on the GPU (the default).
    #[arg(long = "n-gpu-layers", value_name = "N")]
    pub n_gpu_layers: Option<String>,
    /// Which experts stay in RAM (hybrid placement).
    #[command(flatten)]
    pub placement: crate::placement::PlacementArgs,
    /// Read the model file into memory instead of mapping it (llama.cpp's `--no-mmap`).
    #[arg(long = "no-mmap", overrides_with = "mmap")]
    pub no_mmap: bool,
    /// Map the model file (the default; llama.cpp's `--mmap`).
    #[arg(long, overrides_with = "no_mmap")]
    pub mmap: bool,
    /// llama.cpp's `-fa/--flash-attn on|off|auto`: accepted so its command lines run; attention
    /// here is always the fused online-softmax kind (`off` changes nothing).
    #[arg(long = "flash-attn", value_name = "on|off|auto")]
    pub flash_attn: Option<FlashAttn>,
    /// llama-server's `--jinja`: accepted; chat templates are always run as Jinja here.
    #[arg(long)]
    pub jinja: bool,
    /// What the command will allocate (set by the command, for the planner).
    #[arg(skip)]
    pub needs: crate::placement::Needs,
}

/// `--flash-attn` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttn {
    /// As llama.cpp's.
    On,
    /// As llama.cpp's.
    Off,
    /// As llama.cpp's.
    Auto,
}

/// What [`DeviceArgs`] resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU engine.
    Cpu,
    /// GPU N, the whole model on it.
    Cuda(usize),
}

impl DeviceArgs {
    /// The device to use for a model of `n_layer` layers: `Ok(None)` means try GPU 0 and fall
    /// back to the CPU.
    pub fn resolve(&self, n_layer: usize) -> anyhow::Result<Option<Device>> {
        let ngl = match self.n_gpu_layers.as_deref() {
            None | Some("all") | Some("auto") | Some("-1") => None,
            Some(s) => Some(s.parse::<usize>().map_err(|_| {
                anyhow::anyhow!("-ngl {s:?}: expected a number of layers, `all` or `auto`")
            })?),
        };
        let dev = match self.device.as_deref() {
            None | Some("auto") => None,
            Some("cpu") => Some(Device::Cpu),
            Some("cuda") | Some("gpu") => Some(Device::Cuda(0)),
            Some(s) => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Some(Device::Cuda(n)),
                _ => anyhow::bail!("--device {s:?}: expected cpu, cuda or cuda:N"),
            },
        };
        match (dev, ngl) {
            (Some(Device::Cpu), _) | (None, Some(0)) => Ok(Some(Device::Cpu)),
            (_, Some(n)) if n < n_layer => anyhow::bail!(
                "-ngl {n}: this model has {n_layer} layers, and splitting layers between the \
                 CPU and the GPU comes with hybrid placement (issue 11); use -ngl 0 (CPU) or \
                 -ngl all (GPU)"
            ),
            (Some(Device::Cuda(_)), _) => Ok(dev),
            (None, _) => Ok(None),
        }
    }
}

/// The layer count of the model in `file` (`{arch}.block_count`), 0 if unknown.
pub fn n_layer(file: &gguf::GgufFile) -> usize {
    hparam(file, "block_count").unwrap_or(0) as usize
}

/// The model's hyperparameter `key` (`{arch}.key`, e.g. `expert_count`), if the file has it.
pub fn hparam(file: &gguf::GgufFile, key: &str) -> Option<u64> {
    let md = file.metadata();
    let arch = md.get_str("general.architecture").unwrap_or_default();
    md.get_u64(&format!("{arch}.{key}"))
}

/// A loaded model and, when it runs on a GPU, the GPU backend.
pub type Placed = (Box<dyn engine::Model>, Option<Arc<cuda::Cuda>>);

/// Load `file` where `args` says; the GPU backend too when one is used.
/// (`file` comes from [`crate::load::open_model_file`], which follows `--no-mmap`.)
pub fn load(path: &Path, file: Arc<gguf::GgufFile>, args: &DeviceArgs) -> anyhow::Result<Placed> {
    use anyhow::Context;
    let want = args.resolve(n_layer(&file))?;
    let gpu = match want {
        Some(Device::Cpu) => None,
        Some(Device::Cuda(n)) => Some(cuda::Cuda::open(n).with_context(|| format!("cuda:{n}"))?),
        None => match cuda::Cuda::open(0) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("no GPU used ({e}); running on the CPU");
                None
            }
        },
    };
    let mut upload_bytes = 0;
    if let Some(g) = &gpu {
        let free = g.gpu().mem_info().ok().map(|(free, _)| free as u64);
        let plan = crate::placement::plan(&file, &args.placement, &args.needs, free)
            .with_context(|| format!("placing {}", path.display()))?;
        for n in &plan.notes {
            eprintln!("note: {n}");
        }
        if plan.counts().0 > 0 {
            eprintln!("placement: {}", plan.summary());
        }
        g.set_placement(plan.placement());
        upload_bytes = plan.dense_bytes + plan.expert_bytes().0;
    }
    let t0 = std::time::Instant::now();
    let progress = gpu
        .clone()
        .filter(|_| upload_bytes > 0)
        .map(|g| Progress::start(g, upload_bytes));
    let model = match &gpu {
        Some(g) => engine::load_on(file, g.clone()),
        None => engine::load(file),
    }
    .with_context(|| format!("cannot load {}", path.display()));
    if let Some(p) = progress {
        p.stop();
    }
    let model = model?;
    if let Some(g) = &gpu {
        eprintln!(
            "loaded {:.2} GiB of weights onto {} in {:.1} s",
            g.weight_bytes() as f64 / (1u64 << 30) as f64,
            g.gpu().describe(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok((model, gpu))
}

/// A progress bar on a terminal's stderr while the weights go to the GPU (the backend's count
/// of uploaded bytes against the plan's), every 200 ms; nothing when stderr is not a terminal.
struct Progress {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(g: Arc<cuda::Cuda>, total: u64) -> Progress {
        use std::io::IsTerminal;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let gib = |b: f64| b / (1u64 << 30) as f64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let done = (g.weight_bytes() as f64).min(total as f64);
                    let frac = done / total as f64;
                    let w = 30;
                    let filled = ((frac * w as f64) as usize).min(w);
                    eprint!(
                        "\rloading [{}{}] {:3.0}% {:.1} of {:.1} GiB ",
                        "#".repeat(filled),
                        ".".repeat(w - filled),
                        100.0 * frac,
                        gib(done),
                        gib(total as f64)
                    );
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                eprint!("\r{}\r", " ".repeat(64));
            })
        });
        Progress { stop, thread }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dev: Option<&str>, ngl: Option<&str>) -> DeviceArgs {
        DeviceArgs {
            device: dev.map(str::to_string),
            n_gpu_layers: ngl.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn devices_and_layer_counts_resolve() {
        assert_eq!(args(None, None).resolve(40).unwrap(), None);
        assert_eq!(
            args(Some("cpu"), None).resolve(40).unwrap(),
            Some(Device::Cpu)
        );
        assert_eq!(
            args(None, Some("0")).resolve(40).unwrap(),
            Some(Device::Cpu)
        );
        assert_eq!(
            args(Some("cuda:1"), Some("99")).resolve(40).unwrap(),
            Some(Device::Cuda(1))
        );
        assert_eq!(
            args(Some("cuda"), Some("all")).resolve(40).unwrap(),
            Some(Device::Cuda(0))
        );
        assert_eq!(args(None, Some("40")).resolve(40).unwrap(), None);
        let e = args(None, Some("12")).resolve(40).unwrap_err().to_string();
        assert!(e.contains("-ngl 12") && e.contains("40 layers"), "{e}");
        assert!(args(Some("tpu"), None).resolve(40).is_err());
        assert!(args(None, Some("many")).resolve(40).is_err());
    }
}
