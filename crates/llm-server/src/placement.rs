//! Where a MoE model's experts go (issue 11, DESIGN §3): llama.cpp's placement flags
//! (`--cpu-moe`, `--n-cpu-moe`, `-ot`, `--fit`, `--fit-target`) and ours (`--vram-budget`),
//! and the planner that turns them, the file's tensor table and the free GPU memory into a
//! [`cuda::Placement`] — without reading a weight.
//!
//! The planner fills the GPU in DESIGN §3's order: every non-expert tensor, the KV cache and
//! recurrent state for the context, the compute buffers, then experts one by one, spread
//! evenly over the layers (uniform routing; lowest ids first). Experts the flags send to RAM
//! stay there. What is left goes to RAM, where the worker pool computes it.

use std::collections::BTreeMap;

use engine::{CacheConfig, KvType};

use crate::device_args::hparam;
use gguf::{GgmlType, GgufFile};

const MIB: f64 = 1024.0 * 1024.0;

/// The placement flags; flatten into a command's arguments (through `DeviceArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PlacementArgs {
    /// Keep every MoE expert in RAM (llama.cpp's `--cpu-moe`).
    #[arg(long)]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers in RAM (llama.cpp's `--n-cpu-moe`, `-ncmoe`).
    #[arg(long = "n-cpu-moe", value_name = "N")]
    pub n_cpu_moe: Option<usize>,
    /// `REGEX=DEVICE`: tensors whose name matches go to DEVICE (`CPU`: in RAM; `CUDA0`: the
    /// GPU), llama.cpp's `-ot/--override-tensor`, repeatable, first match wins. Only MoE expert
    /// tensors can stay in RAM here; other matches stay on the GPU (with a note).
    #[arg(long = "override-tensor", value_name = "REGEX=DEVICE")]
    pub override_tensor: Vec<String>,
    /// Fit the model in the GPU's free memory by keeping experts in RAM (`on`, the default
    /// with a GPU) or not (`off`: a model that does not fit is an error before loading).
    #[arg(long, value_name = "on|off")]
    pub fit: Option<String>,
    /// MiB of GPU memory `--fit` leaves free (llama.cpp's `--fit-target`, `-fitt`; default 1024).
    #[arg(long = "fit-target", value_name = "MiB")]
    pub fit_target: Option<u64>,
    /// MiB of GPU memory the model may use in all (weights, KV cache, state, compute buffers),
    /// instead of the free memory less `--fit-target`.
    #[arg(long = "vram-budget", value_name = "MiB")]
    pub vram_budget: Option<u64>,
    /// Routing statistics of this model (`llm-server calibrate`): `--fit` puts the most used
    /// experts on the GPU (without it: every expert equally likely).
    #[arg(long = "expert-stats", value_name = "FILE")]
    pub expert_stats: Option<std::path::PathBuf>,
}

/// What the planner needs besides the file: the context and cache types the command will
/// allocate and the rows of a micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Positions of KV cache (and one recurrent state) to allocate.
    pub n_ctx: usize,
    /// The KV cache types.
    pub cache: CacheConfig,
    /// Tokens of a prefill micro-batch.
    pub ubatch: usize,
    /// Rows of logits a call brings back (1, or the micro-batch for perplexity).
    pub logit_rows: usize,
}

impl Default for Needs {
    fn default() -> Needs {
        Needs {
            n_ctx: 4096,
            cache: CacheConfig::default(),
            ubatch: 512,
            logit_rows: 1,
        }
    }
}

/// One layer's stacked experts.
#[derive(Debug, Clone, Default)]
pub struct LayerExperts {
    /// Tensor names (gate, up, down).
    pub names: Vec<String>,
    /// Experts in the layer.
    pub n_expert: usize,
    /// Bytes of one expert (its rows of the three tensors).
    pub expert_bytes: u64,
    /// Per expert: kept in RAM.
    pub in_ram: Vec<bool>,
}

/// The plan: the placement and the bytes it puts on each side.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// By layer.
    pub layers: BTreeMap<usize, LayerExperts>,
    /// Non-expert weight bytes (all on the GPU).
    pub dense_bytes: u64,
    /// KV cache and recurrent state bytes.
    pub state_bytes: u64,
    /// Compute buffers (activations of a micro-batch, logits).
    pub compute_bytes: u64,
    /// With experts in RAM: the two buffers a prefill batch streams whole expert tensors
    /// into, in turn (each as large as the largest).
    pub stream_bytes: u64,
    /// The GPU memory the plan may use (`None`: not limited).
    pub budget: Option<u64>,
    /// Notes for the user (flags that could not be followed as written).
    pub notes: Vec<String>,
}

impl Plan {
    /// Expert bytes on the GPU and in RAM.
    pub fn expert_bytes(&self) -> (u64, u64) {
        let mut gpu = 0;
        let mut ram = 0;
        for l in self.layers.values() {
            let r = l.in_ram.iter().filter(|&&b| b).count() as u64;
            ram += r * l.expert_bytes;
            gpu += (l.n_expert as u64 - r) * l.expert_bytes;
        }
        (gpu, ram)
    }

    /// GPU bytes in all.
    pub fn gpu_bytes(&self) -> u64 {
        self.dense_bytes
            + self.state_bytes
            + self.compute_bytes
            + self.stream_bytes
            + self.expert_bytes().0
    }

    /// The backend's placement.
    pub fn placement(&self) -> cuda::Placement {
        let mut p = cuda::Placement::default();
        for l in self.layers.values() {
            if l.in_ram.iter().any(|&b| b) {
                for n in &l.names {
                    p.in_ram.insert(n.clone(), l.in_ram.clone());
                }
            }
        }
        p
    }

    /// Experts in RAM / in all.
    pub fn counts(&self) -> (usize, usize) {
        let ram = self
            .layers
            .values()
            .map(|l| l.in_ram.iter().filter(|&&b| b).count())
            .sum();
        (ram, self.layers.values().map(|l| l.n_expert).sum())
    }

    /// Weight bytes one decode token reads on each side with uniform routing (`k` experts of
    /// each layer's `n_expert`): (GPU, RAM).
    pub fn decode_bytes(&self, k: usize) -> (f64, f64) {
        let mut gpu = self.dense_bytes as f64;
        let mut ram = 0.0;
        for l in self.layers.values() {
            let frac = l.in_ram.iter().filter(|&&b| b).count() as f64 / l.n_expert.max(1) as f64;
            let per_tok = k as f64 * l.expert_bytes as f64;
            ram += frac * per_tok;
            gpu += (1.0 - frac) * per_tok;
        }
        (gpu, ram)
    }

    /// A one-line summary: experts on each side and the GPU bytes.
    pub fn summary(&self) -> String {
        let (ram, all) = self.counts();
        let (g, r) = self.expert_bytes();
        format!(
            "experts: {} of {all} on the GPU ({:.0} MiB), {ram} in RAM ({:.0} MiB); GPU total {:.0} MiB{}",
            all - ram,
            g as f64 / MIB,
            r as f64 / MIB,
            self.gpu_bytes() as f64 / MIB,
            self.budget
                .map_or(String::new(), |b| format!(" of a {:.0} MiB budget", b as f64 / MIB))
        )
    }
}

/// `on`/`off` (and llama.cpp's spellings) for `--fit`.
fn fit_flag(s: Option<&str>) -> anyhow::Result<Option<bool>> {
    Ok(match s {
        None => None,
        Some("on" | "1" | "true" | "yes") => Some(true),
        Some("off" | "0" | "false" | "no") => Some(false),
        Some(o) => anyhow::bail!("--fit {o:?}: expected on or off"),
    })
}

/// An `-ot` rule.
struct Override {
    re: regex::Regex,
    to_ram: bool,
}

fn overrides(rules: &[String]) -> anyhow::Result<Vec<Override>> {
    let mut out = Vec::new();
    for r in rules {
        // llama.cpp also takes several rules in one argument, comma-separated.
        for one in r.split(',').filter(|s| !s.is_empty()) {
            let Some((pat, dev)) = one.rsplit_once('=') else {
                anyhow::bail!("-ot {one:?}: expected REGEX=DEVICE (e.g. exps=CPU)");
            };
            let to_ram = match dev.to_ascii_uppercase().as_str() {
                "CPU" => true,
                d if d == "CUDA" || d == "GPU" || d.starts_with("CUDA") => false,
                _ => anyhow::bail!("-ot {one:?}: unknown device {dev:?} (CPU, CUDA0)"),
            };
            let re = regex::Regex::new(pat).map_err(|e| {
                // The parser's message draws a caret under the pattern: keep its last line.
                let why = e.to_string();
                let why = why.lines().last().unwrap_or_default().trim().to_string();
                anyhow::anyhow!("-ot {one:?}: bad regular expression ({why})")
            })?;
            out.push(Override { re, to_ram });
        }
    }
    Ok(out)
}

/// Bytes a tensor takes on the GPU (types the kernels do not read become f16).
fn gpu_bytes_of(ty: GgmlType, n_bytes: u64, n_elements: u64) -> u64 {
    if cuda::NATIVE_TYPES.contains(&ty) {
        n_bytes
    } else {
        2 * n_elements
    }
}

/// `blk.N.ffn_{gate,up,down}_exps.weight` → N.
fn expert_layer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (n, t) = rest.split_once('.')?;
    matches!(
        t,
        "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight"
    )
    .then(|| n.parse().ok())
    .flatten()
}

/// KV cache and recurrent state bytes for `n_ctx` positions (from the file's hyperparameters).
pub fn state_bytes(file: &GgufFile, n_ctx: usize, cache: CacheConfig) -> u64 {
    let hp = |k: &str| hparam(file, k);
    let u = |k: &str| hp(k).unwrap_or(0);
    let n_layer = u("block_count");
    let n_head = u("attention.head_count").max(1);
    let n_kv = hp("attention.head_count_kv").unwrap_or(n_head);
    let emb = u("embedding_length");
    let kd = hp("attention.key_length").unwrap_or(emb / n_head);
    let vd = hp("attention.value_length").unwrap_or(kd);
    let interval = u("full_attention_interval");
    let n_attn = n_layer.checked_div(interval).unwrap_or(n_layer);
    let row = |t: KvType, w: u64| t.row_bytes(w as usize) as u64;
    let kv = n_attn * n_ctx as u64 * (row(cache.k, n_kv * kd) + row(cache.v, n_kv * vd));
    // DeltaNet layers (qwen35moe, qwen3next): the convolution's last taps and the state.
    let rec = if interval > 0 {
        let (d_k, inner, n_v, n_k) = (
            u("ssm.state_size"),
            u("ssm.inner_size"),
            u("ssm.time_step_rank"),
            u("ssm.group_count"),
        );
        let d_v = inner / n_v.max(1);
        let conv = u("ssm.conv_kernel").saturating_sub(1) * (2 * n_k * d_k + inner);
        (n_layer - n_attn) * 4 * (conv + n_v * d_k * d_v)
    } else {
        0
    };
    kv + rec
}

/// What the CUDA driver itself takes after the plan is made (kernel modules as they load,
/// graphs, the GPU page tables that map pinned host memory). The VRAM-budget test
/// (scripts/device/vram-budget.sh) measured the process up to 262 MiB past its plan with
/// 8 GB and 12 GB cards emulated before this reserve existed (BENCHMARKS.md 2026-12-02,
/// fourth session). With 384 MiB the 8 GB and 12 GB runs stayed inside (80 and 120 MiB to
/// spare) but serving at 16 GB (four concurrent streams after a 16,384-token prefill) went
/// 12 MiB past (fifth session); 512 MiB.
const RUNTIME_RESERVE: u64 = 512 << 20;

/// Compute buffers a micro-batch of `ubatch` tokens needs (activations in flight and the
/// logits rows), from the widest rows of the file, and [`RUNTIME_RESERVE`]. An estimate with
/// room: the 35B-A3B's measured pool is 161 MiB at -ub 512 (BENCHMARKS.md 2026-12-02); this
/// gives 230 MiB before the reserve.
fn compute_bytes(file: &GgufFile, needs: &Needs) -> u64 {
    let u = |k: &str| hparam(file, k).unwrap_or(0);
    let emb = u("embedding_length");
    let k = u("expert_used_count").max(1);
    let ff = u("expert_feed_forward_length").max(u("feed_forward_length"));
    let vocab = file
        .tensors()
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .map_or(0, |t| t.dims.get(1).copied().unwrap_or(0));
    let per_token = 24 * emb + 4 * k * ff + 4 * u("ssm.inner_size");
    (64 << 20)
        + 4 * needs.ubatch as u64 * per_token
        + 4 * needs.logit_rows as u64 * vocab
        + RUNTIME_RESERVE
}

/// Make the plan for `file` under `args`, with `free` bytes of GPU memory (`None`: unknown,
/// no GPU).
pub fn plan(
    file: &GgufFile,
    args: &PlacementArgs,
    needs: &Needs,
    free: Option<u64>,
) -> anyhow::Result<Plan> {
    let rules = overrides(&args.override_tensor)?;
    let stats = match &args.expert_stats {
        Some(p) => Some(crate::calibrate::read(p, file)?),
        None => None,
    };
    let fit =
        fit_flag(args.fit.as_deref())?.unwrap_or(free.is_some() || args.vram_budget.is_some());
    let n_ctx = match needs.n_ctx {
        0 => hparam(file, "context_length").unwrap_or(4096) as usize,
        n => n,
    };
    let mut plan = Plan {
        state_bytes: state_bytes(file, n_ctx, needs.cache),
        compute_bytes: compute_bytes(file, needs),
        ..Plan::default()
    };
    let mut kept_dense = Vec::new();
    let mut largest_experts = 0;
    for t in file.tensors() {
        let bytes = gpu_bytes_of(t.ty, t.n_bytes, t.n_elements);
        let rule = rules.iter().find(|r| r.re.is_match(&t.name));
        match expert_layer(&t.name) {
            Some(il) => {
                largest_experts = largest_experts.max(bytes);
                let n_expert = t.dims.get(2).copied().unwrap_or(1) as usize;
                let l = plan.layers.entry(il).or_default();
                l.names.push(t.name.clone());
                l.n_expert = n_expert;
                l.expert_bytes += bytes / n_expert.max(1) as u64;
                if l.in_ram.len() != n_expert {
                    l.in_ram = vec![false; n_expert];
                }
                let by_flag = args.cpu_moe || args.n_cpu_moe.is_some_and(|n| il < n);
                if by_flag || rule.is_some_and(|r| r.to_ram) {
                    l.in_ram.iter_mut().for_each(|b| *b = true);
                }
            }
            None => {
                plan.dense_bytes += bytes;
                if rule.is_some_and(|r| r.to_ram) {
                    kept_dense.push(t.name.clone());
                }
            }
        }
    }
    if !kept_dense.is_empty() {
        plan.notes.push(format!(
            "-ot: {} tensor(s) matched to CPU stay on the GPU ({}{}): only MoE expert tensors \
             (…_exps) can stay in RAM here; the GPU runs everything else",
            kept_dense.len(),
            kept_dense[..kept_dense.len().min(3)].join(", "),
            if kept_dense.len() > 3 { ", …" } else { "" }
        ));
    }
    if let (Some(st), Some(p)) = (&stats, &args.expert_stats) {
        for (il, l) in &plan.layers {
            match st.get(il) {
                Some(c) if c.len() == l.n_expert => {}
                Some(c) => anyhow::bail!(
                    "--expert-stats {}: layer {il} has {} counts, the model {} experts",
                    p.display(),
                    c.len(),
                    l.n_expert
                ),
                None => anyhow::bail!("--expert-stats {}: no counts for layer {il}", p.display()),
            }
        }
    }
    if plan.counts().0 > 0 {
        plan.stream_bytes = 2 * largest_experts;
    }
    let budget = match (args.vram_budget, free) {
        (Some(b), _) => Some(b << 20),
        (None, Some(f)) => Some(f.saturating_sub(args.fit_target.unwrap_or(1024) << 20)),
        (None, None) => None,
    };
    plan.budget = budget;
    let Some(budget) = budget else {
        return Ok(plan);
    };
    let fixed = plan.dense_bytes + plan.state_bytes + plan.compute_bytes;
    if fixed > budget {
        anyhow::bail!(
            "the GPU budget is {:.0} MiB but the model's non-expert weights ({:.0} MiB), KV cache \
             and state for -c {} ({:.0} MiB) and compute buffers ({:.0} MiB) alone need {:.0} \
             MiB: use a smaller -c, a smaller KV type (-ctk/-ctv q8_0), a larger --vram-budget, \
             or the CPU (--device cpu)",
            budget as f64 / MIB,
            plan.dense_bytes as f64 / MIB,
            n_ctx,
            plan.state_bytes as f64 / MIB,
            plan.compute_bytes as f64 / MIB,
            fixed as f64 / MIB
        );
    }
    if plan.gpu_bytes() <= budget {
        return Ok(plan);
    }
    // Some experts will be in RAM: the streaming buffers come first.
    plan.stream_bytes = 2 * largest_experts;
    let fixed = fixed + plan.stream_bytes;
    if fixed > budget {
        anyhow::bail!(
            "the GPU budget is {:.0} MiB: the non-expert part ({:.0} MiB) fits, but not with the \
             {:.0} MiB of buffers a prefill streams RAM experts through; use a smaller -c or a larger \
             --vram-budget",
            budget as f64 / MIB,
            (fixed - plan.stream_bytes) as f64 / MIB,
            plan.stream_bytes as f64 / MIB
        );
    }
    if !fit {
        anyhow::bail!(
            "the model needs {:.0} MiB of GPU memory with this placement and {:.0} MiB is \
             available: use --fit on, --n-cpu-moe N or --cpu-moe",
            plan.gpu_bytes() as f64 / MIB,
            budget as f64 / MIB
        );
    }
    // Fill: experts the flags left on the GPU go back to RAM, then come to the GPU again one at
    // a time, most used first (by the stats; without them round robin over the layers, lowest
    // ids first), while they fit.
    let mut room = budget - fixed;
    let mut order = Vec::new();
    for (&il, l) in plan.layers.iter_mut() {
        let use_of = |e: usize| match stats.as_ref().and_then(|s| s.get(&il)) {
            // Laplace-smoothed share of the layer's choices (unseen experts still rank).
            Some(c) => (c[e] as f64 + 1.0) / (c.iter().sum::<u64>() as f64 + c.len() as f64),
            None => 1.0 / l.n_expert as f64,
        };
        for (e, ram) in l.in_ram.iter_mut().enumerate() {
            if !*ram {
                order.push((use_of(e), e, il));
            }
            *ram = true;
        }
    }
    // Most used first; ties by expert id, then layer (the round robin).
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, e, il) in order {
        let l = plan.layers.get_mut(&il).expect("listed above");
        if l.expert_bytes <= room {
            room -= l.expert_bytes;
            l.in_ram[e] = false;
        }
    }
    Ok(plan)
}

/// Print the plan (`llm-server fit`): every tensor group, where it goes, the bytes on each
/// side and the decode speed the bandwidths (bytes a second) predict.
pub fn print(plan: &Plan, k: usize, gpu_bw: Option<f64>, ram_bw: Option<f64>) {
    println!("| tensors | where | MiB |");
    println!("|---|---|---:|");
    println!(
        "| non-expert weights | GPU | {:.0} |",
        plan.dense_bytes as f64 / MIB
    );
    println!(
        "| KV cache and recurrent state | GPU | {:.0} |",
        plan.state_bytes as f64 / MIB
    );
    println!(
        "| compute buffers and the driver's own growth | GPU | {:.0} |",
        plan.compute_bytes as f64 / MIB
    );
    if plan.stream_bytes > 0 {
        println!(
            "| prefill's streaming buffers (2 × the largest expert tensor) | GPU | {:.0} |",
            plan.stream_bytes as f64 / MIB
        );
    }
    for (il, l) in &plan.layers {
        let ram: Vec<usize> = (0..l.n_expert).filter(|&e| l.in_ram[e]).collect();
        let g = l.n_expert - ram.len();
        let where_ = match (g, ram.len()) {
            (_, 0) => "GPU".to_string(),
            (0, _) => "RAM".to_string(),
            _ => format!("GPU {g}, RAM {} (experts {})", ram.len(), ranges(&ram)),
        };
        println!(
            "| blk.{il} experts ({} × {:.2} MiB) | {where_} | {:.0} |",
            l.n_expert,
            l.expert_bytes as f64 / MIB,
            (l.n_expert as u64 * l.expert_bytes) as f64 / MIB
        );
    }
    let (_, r) = plan.expert_bytes();
    println!();
    println!("{}", plan.summary());
    println!(
        "RAM: {:.0} MiB of experts (read from the file's mapping)",
        r as f64 / MIB
    );
    let (dg, dr) = plan.decode_bytes(k);
    let line = format!(
        "decode reads {:.0} MB of weights a token on the GPU and {:.0} MB in RAM",
        dg / 1e6,
        dr / 1e6
    );
    match (gpu_bw, ram_bw) {
        (Some(g), Some(r)) => {
            // Bandwidths in bytes a second.
            let t = dg / g + dr / r;
            println!(
                "{line}; at {:.0} GB/s (GPU copy) and {:.1} GB/s (RAM read): at most {:.0} \
                 tok/s from bandwidth alone",
                g / 1e9,
                r / 1e9,
                1.0 / t.max(1e-12)
            );
        }
        _ => println!("{line}"),
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
}

/// `0-3, 7, 9-12`.
fn ranges(v: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(match i == j {
            true => v[i].to_string(),
            false => format!("{}-{}", v[i], v[j]),
        });
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> GgufFile {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(crate::load::DEFAULT_MODEL);
        GgufFile::open(p).expect("demo model")
    }

    fn args(f: impl FnOnce(&mut PlacementArgs)) -> PlacementArgs {
        let mut a = PlacementArgs::default();
        f(&mut a);
        a
    }

    fn in_ram_by_layer(p: &Plan) -> Vec<usize> {
        p.layers
            .values()
            .map(|l| l.in_ram.iter().filter(|&&b| b).count())
            .collect()
    }

    #[test]
    fn flags_send_whole_layers_to_ram() {
        let f = demo();
        let n = Needs::default();
        let none = plan(&f, &PlacementArgs::default(), &n, None).unwrap();
        assert_eq!(none.counts(), (0, 256));
        assert!(none.placement().in_ram.is_empty());
        let all = plan(&f, &args(|a| a.cpu_moe = true), &n, None).unwrap();
        assert_eq!(all.counts(), (256, 256));
        // gate, up and down of each of the 8 layers
        assert_eq!(all.placement().in_ram.len(), 24);
        let first3 = plan(&f, &args(|a| a.n_cpu_moe = Some(3)), &n, None).unwrap();
        assert_eq!(in_ram_by_layer(&first3), [32, 32, 32, 0, 0, 0, 0, 0]);
        let ot = plan(
            &f,
            &args(|a| a.override_tensor = vec![r"blk\.5\.ffn_up_exps=CPU,output=CPU".into()]),
            &n,
            None,
        )
        .unwrap();
        assert_eq!(in_ram_by_layer(&ot), [0, 0, 0, 0, 0, 32, 0, 0]);
        assert!(ot.notes[0].contains("stay on the GPU"), "{:?}", ot.notes);
        let gpu = plan(
            &f,
            &args(|a| a.override_tensor = vec!["exps=CUDA0".into()]),
            &n,
            None,
        )
        .unwrap();
        assert_eq!(gpu.counts().0, 0);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let f = demo();
        let n = Needs::default();
        let err = |a: PlacementArgs| format!("{:#}", plan(&f, &a, &n, None).unwrap_err());
        assert!(err(args(|a| a.override_tensor = vec!["exps".into()])).contains("REGEX=DEVICE"));
        assert!(
            err(args(|a| a.override_tensor = vec!["exps=TPU".into()])).contains("unknown device")
        );
        assert!(err(args(|a| a.override_tensor = vec!["(exps=CPU".into()]))
            .contains("bad regular expression"));
        assert!(err(args(|a| a.fit = Some("maybe".into()))).contains("on or off"));
        // A budget below the non-expert part: an error before loading, naming the parts.
        let e = err(args(|a| a.vram_budget = Some(50)));
        assert!(e.contains("alone need") && e.contains("-c 4096"), "{e}");
        // Too small with --fit off: says how to make it fit.
        let e = err(args(|a| {
            a.vram_budget = Some(95 + (RUNTIME_RESERVE >> 20));
            a.fit = Some("off".into())
        }));
        assert!(e.contains("--fit on"), "{e}");
    }

    #[test]
    fn fit_fills_the_budget_evenly_and_keeps_flagged_layers_in_ram() {
        let f = demo();
        let n = Needs::default();
        let full = plan(&f, &PlacementArgs::default(), &n, None).unwrap();
        let mib = |b: u64| b.div_ceil(1 << 20);
        // A budget 3 MiB short of the whole model: some experts go to RAM, evenly.
        let budget = mib(full.gpu_bytes()) - 3;
        let p = plan(&f, &args(|a| a.vram_budget = Some(budget)), &n, None).unwrap();
        let by_layer = in_ram_by_layer(&p);
        assert!(p.counts().0 > 0 && p.gpu_bytes() <= budget << 20);
        let (lo, hi) = (
            by_layer.iter().min().unwrap(),
            by_layer.iter().max().unwrap(),
        );
        assert!(hi - lo <= 1, "{by_layer:?}");
        // Experts in RAM are the highest ids of each layer (uniform use: lowest ids first).
        for l in p.layers.values() {
            let first_ram = l.in_ram.iter().position(|&b| b).unwrap();
            assert!(l.in_ram[first_ram..].iter().all(|&b| b));
        }
        // With --n-cpu-moe 2 as well, layers 0 and 1 stay wholly in RAM and the rest get more.
        let q = plan(
            &f,
            &args(|a| {
                a.vram_budget = Some(budget);
                a.n_cpu_moe = Some(2)
            }),
            &n,
            None,
        )
        .unwrap();
        let by_layer = in_ram_by_layer(&q);
        assert_eq!(&by_layer[..2], [32, 32]);
        assert!(by_layer[2..].iter().all(|&r| r < 32));
        assert!(q.gpu_bytes() <= budget << 20);
        // A larger context takes its KV cache from the experts' share.
        let long = Needs { n_ctx: 16384, ..n };
        let r = plan(
            &f,
            &args(|a| a.vram_budget = Some(budget + 11)),
            &long,
            None,
        )
        .unwrap();
        assert!(r.state_bytes > p.state_bytes);
        assert!(
            r.counts().0 > p.counts().0,
            "{} vs {}",
            r.counts().0,
            p.counts().0
        );
    }

    /// A stats file for the demo model: expert `e` of every layer chosen (e·7 mod 32)²+1 times.
    fn stats_file(f: &GgufFile, fingerprint: &str, experts: usize) -> std::path::PathBuf {
        let counts: serde_json::Map<String, serde_json::Value> = (0..8)
            .map(|l| {
                let row: Vec<u64> = (0..experts)
                    .map(|e| ((e * 7 % 32).pow(2) + 1) as u64)
                    .collect();
                (l.to_string(), serde_json::json!(row))
            })
            .collect();
        let v = serde_json::json!({
            "format": crate::calibrate::FORMAT, "version": 1,
            "model": {"name": "demo", "fingerprint": fingerprint},
            "counts": counts,
        });
        let p = std::env::temp_dir().join(format!(
            "stats-{}-{fingerprint}-{experts}.json",
            std::process::id()
        ));
        std::fs::write(&p, v.to_string()).unwrap();
        let _ = f;
        p
    }

    #[test]
    fn expert_stats_put_the_most_used_experts_on_the_gpu() {
        let f = demo();
        let n = Needs::default();
        let full = plan(&f, &PlacementArgs::default(), &n, None).unwrap();
        let budget = full.gpu_bytes().div_ceil(1 << 20) - 3;
        let good = stats_file(&f, &crate::calibrate::fingerprint(&f), 32);
        let p = plan(
            &f,
            &args(|a| {
                a.vram_budget = Some(budget);
                a.expert_stats = Some(good.clone())
            }),
            &n,
            None,
        )
        .unwrap();
        for l in p.layers.values() {
            // Every GPU expert is used at least as often as every RAM expert.
            let use_of = |e: usize| (e * 7 % 32).pow(2);
            let gpu_min = (0..32).filter(|&e| !l.in_ram[e]).map(use_of).min().unwrap();
            let ram_max = (0..32).filter(|&e| l.in_ram[e]).map(use_of).max().unwrap();
            assert!(gpu_min >= ram_max, "{:?}", l.in_ram);
        }
        let err = |path| {
            let a = args(|a| {
                a.vram_budget = Some(budget);
                a.expert_stats = Some(path)
            });
            format!("{:#}", plan(&f, &a, &n, None).unwrap_err())
        };
        let other = stats_file(&f, "fnv1a64:0000000000000000", 32);
        assert!(err(other.clone()).contains("made for another model"));
        let short = stats_file(&f, &crate::calibrate::fingerprint(&f), 16);
        assert!(err(short.clone()).contains("layer 0 has 16 counts"));
        let missing = std::env::temp_dir().join("no-such-stats.json");
        assert!(err(missing).contains("cannot read --expert-stats"));
        for p in [good, other, short] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn ranges_read_well() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }
}
