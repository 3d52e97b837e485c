//! Whole models on the GPU against the CPU engine on the same file: logits over 1,024
//! positions of WikiText-2 (prefill in chunks, then decode steps through the recorded graph),
//! KL divergence and same-top-1 within llama.cpp's own cross-build spread (its AVX2 and
//! AVX-512 builds differ by mean KL 1.4e-3–5.4e-3 and top-1 96.5–97.9%, BENCHMARKS.md; we
//! hold trained models to the tight end, KL ≤ 1.4e-3 and top-1 ≥ 96.5%, and random-weight
//! synthetic files to KL ≤ 5.4e-3), perplexity within 0.2% (0.5% for random weights), and
//! greedy decoding identical on F16/F32 files with trained weights. The demo model always; other files listed in
//! `LLM_SERVER_GPU_MODELS` (colon-separated; `scripts/device/gpu-tests.sh` makes tiny
//! synthetic qwen35moe / qwen3moe / qwen3next files and passes whatever real models it has).

use std::path::PathBuf;
use std::sync::Arc;

use engine::{Exec, Logits, Model, Tokenizer};

fn root() -> PathBuf {
    std::env::var_os("LLM_SERVER_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

fn files() -> Vec<PathBuf> {
    let mut v = vec![root().join("models/demo-moe-f16.gguf")];
    if let Some(more) = std::env::var_os("LLM_SERVER_GPU_MODELS") {
        v.extend(std::env::split_paths(&more).filter(|p| !p.as_os_str().is_empty()));
    }
    v
}

/// Log-softmax of a row, in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Per position: KL(cpu ‖ gpu), same arg-max, −log p(next) under each.
struct Agreement {
    kl: Vec<f64>,
    same: Vec<bool>,
    nll_cpu: Vec<f64>,
    nll_gpu: Vec<f64>,
}

fn compare(cpu: &[f32], gpu: &[f32], n_vocab: usize, next: &[u32]) -> Agreement {
    let mut a = Agreement {
        kl: vec![],
        same: vec![],
        nll_cpu: vec![],
        nll_gpu: vec![],
    };
    for (i, (c, g)) in cpu
        .chunks_exact(n_vocab)
        .zip(gpu.chunks_exact(n_vocab))
        .enumerate()
    {
        let (lp, lq) = (log_softmax(c), log_softmax(g));
        a.kl.push(lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum());
        let am = |v: &[f64]| (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b });
        a.same.push(am(&lp) == am(&lq));
        if let Some(&t) = next.get(i) {
            a.nll_cpu.push(-lp[t as usize]);
            a.nll_gpu.push(-lq[t as usize]);
        }
    }
    a
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The logits of `tokens` from `model`: a prefill in chunks of `chunk` (every row), then
/// the last `decode` tokens one at a time.
fn logits(model: &dyn Model, tokens: &[u32], chunk: usize, decode: usize) -> Vec<f32> {
    let exec = Exec { threads: 8 };
    let mut st = model.new_state(tokens.len()).expect("state");
    let mut out = Vec::new();
    let pre = tokens.len() - decode;
    for c in tokens[..pre].chunks(chunk) {
        out.extend(
            model
                .forward(c, &mut st, Logits::All, exec)
                .expect("prefill"),
        );
    }
    for &t in &tokens[pre..] {
        out.extend(
            model
                .forward(&[t], &mut st, Logits::Last, exec)
                .expect("decode"),
        );
    }
    out
}

fn greedy(model: &dyn Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let exec = Exec { threads: 8 };
    let mut st = model.new_state(prompt.len() + n).expect("state");
    let mut l = model
        .forward(prompt, &mut st, Logits::Last, exec)
        .expect("prompt");
    let mut out = vec![];
    for _ in 0..n {
        let t = (0..l.len()).fold(0, |b, j| if l[j] > l[b] { j } else { b }) as u32;
        out.push(t);
        l = model
            .forward(&[t], &mut st, Logits::Last, exec)
            .expect("step");
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn gpu_logits_agree_with_the_cpu_engine() {
    let backend = cuda::Cuda::open(0).expect("GPU");
    for path in files() {
        let (name, file, cpu, tokens) = opened(&path);
        let gpu = engine::load_on(file, backend.clone()).expect("gpu load");
        agree(&name, &*cpu, &*gpu, &tokens);
    }
}

/// A test file: its name, the file, the model on the CPU engine, and 1,024 tokens of
/// WikiText-2 (ids spread over the vocabulary where the file has no tokenizer).
fn opened(path: &std::path::Path) -> (String, Arc<gguf::GgufFile>, Box<dyn Model>, Vec<u32>) {
    let text = std::fs::read_to_string(root().join("tests/data/wikitext-2-raw/wiki.test.raw"))
        .expect("wikitext");
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = Arc::new(gguf::GgufFile::open(path).expect("model file"));
    let cpu = engine::load(file.clone()).expect("cpu load");
    let nv = cpu.n_vocab();
    let tokens: Vec<u32> = match Tokenizer::from_gguf(file.metadata()).ok() {
        Some(t) => t
            .encode(&text[..60_000], false, false)
            .into_iter()
            .take(1024)
            .collect(),
        None => (0..1024).map(|i| (i * 7919 % nv) as u32).collect(),
    };
    assert_eq!(tokens.len(), 1024, "{name}: tokens");
    (name, file, cpu, tokens)
}

/// `gpu` against `cpu` over `tokens` (prefill in chunks of 256, the last 64 as decode steps):
/// KL, top-1 and perplexity within the bounds above; greedy decoding identical on F16/F32
/// files with trained weights.
fn agree(name: &str, cpu: &dyn Model, gpu: &dyn Model, tokens: &[u32]) {
    let nv = cpu.n_vocab();
    let n = tokens.len();
    let c = logits(cpu, tokens, 256, 64);
    let g = logits(gpu, tokens, 256, 64);
    let a = compare(&c, &g, nv, &tokens[1..]);
    let (kl, top1) = (
        mean(&a.kl),
        a.same.iter().filter(|&&s| s).count() as f64 / a.same.len() as f64,
    );
    let (pc, pg) = (mean(&a.nll_cpu).exp(), mean(&a.nll_gpu).exp());
    let dec = compare(&c[(n - 64) * nv..], &g[(n - 64) * nv..], nv, &[]);
    eprintln!(
        "{name}: {n} positions, mean KL {kl:.3e}, top-1 {:.2}%, max KL {:.3e}; decode steps: \
         KL {:.3e}; PPL cpu {pc:.4} gpu {pg:.4} ({:+.3}%)",
        100.0 * top1,
        a.kl.iter().copied().fold(0.0, f64::max),
        mean(&dec.kl),
        100.0 * (pg / pc - 1.0),
    );
    // Files with trained weights (PPL far under the vocabulary) are held to the tight end
    // of llama.cpp's cross-build spread, KL and top-1. A random-weight synthetic file's
    // distributions are nearly flat: its arg-max is decided by rounding (top-1 says
    // nothing), and the CPU's own activation quantization (Q8_K for K-quants) is most of
    // the difference; it is held to the spread's wide end.
    let trained = pc < nv as f64 / 4.0;
    let kl_bound = if trained { 1.4e-3 } else { 5.4e-3 };
    assert!(kl <= kl_bound, "{name}: mean KL {kl:.3e} > {kl_bound:.1e}");
    assert!(!trained || top1 >= 0.965, "{name}: top-1 {top1:.4}");
    // PPL within 0.2% where it means something; a random-weight file's PPL is about its
    // vocabulary size and moves with rounding (−0.25% seen on the Q8_0 qwen3next one).
    let ppl_bound = if trained { 0.002 } else { 0.005 };
    assert!(
        (pg / pc - 1.0).abs() <= ppl_bound,
        "{name}: PPL {pc} vs {pg}"
    );
    let f16 = ["F16", "F32", "f16", "f32"]
        .iter()
        .any(|s| name.contains(s));
    // Greedy decoding must match on F16/F32 files with trained weights (a random-weight
    // file's arg-max is decided by rounding).
    if f16 && trained {
        let (gc, gg) = (
            greedy(cpu, &tokens[..32], 64),
            greedy(gpu, &tokens[..32], 64),
        );
        assert_eq!(gc, gg, "{name}: greedy 64 tokens");
    }
}

/// A decode step replayed from the recorded graph gives exactly what launching its kernels
/// one by one gives.
#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn graph_replay_matches_eager_decode() {
    let path = root().join("models/demo-moe-f16.gguf");
    let file = Arc::new(gguf::GgufFile::open(&path).expect("demo"));
    let with = engine::load_on(file.clone(), cuda::Cuda::open(0).expect("GPU")).expect("load");
    // Read when a backend opens (edition 2021: set_var is safe).
    std::env::set_var("LLM_SERVER_CUDA_GRAPHS", "0");
    let without = engine::load_on(file, cuda::Cuda::open(0).expect("GPU")).expect("load");
    std::env::remove_var("LLM_SERVER_CUDA_GRAPHS");
    let exec = Exec { threads: 1 };
    let tokens: Vec<u32> = (0..40).map(|i| (i * 31 % 6000) as u32).collect();
    let (mut a, mut b) = (
        with.new_state(64).expect("state"),
        without.new_state(64).expect("state"),
    );
    for i in 0..tokens.len() {
        let x = with
            .forward(&tokens[i..=i], &mut a, Logits::Last, exec)
            .expect("graph step");
        let y = without
            .forward(&tokens[i..=i], &mut b, Logits::Last, exec)
            .expect("eager step");
        assert_eq!(x, y, "position {i}");
    }
}

/// The prompt cache on the GPU (issue 12 req. 6): a sequence put back to a checkpoint (its
/// DeltaNet buffers copied to the host and back) continues exactly as it did — prefill and
/// graph-replayed decode steps alike, the recorded graph still valid after the restore.
#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn rewind_to_a_checkpoint_repeats_the_continuation_on_the_gpu() {
    let path = root().join("models/demo-moe-f16.gguf");
    let file = Arc::new(gguf::GgufFile::open(&path).expect("demo"));
    let m = engine::load_on(file, cuda::Cuda::open(0).expect("GPU")).expect("load");
    let exec = Exec { threads: 1 };
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 % 6000) as u32).collect();
    let mut st = m.new_state(64).expect("state");
    m.forward(&tokens[..12], &mut st, Logits::Last, exec)
        .expect("prefill");
    let cp = m.checkpoint(&st).expect("checkpoint");
    assert!(cp.recurrent() && cp.n_past() == 12);
    let run = |st: &mut engine::State| -> Vec<Vec<f32>> {
        let mut out = vec![m
            .forward(&tokens[12..16], st, Logits::All, exec)
            .expect("batch")];
        for t in &tokens[16..] {
            out.push(m.forward(&[*t], st, Logits::Last, exec).expect("step"));
        }
        out
    };
    let first = run(&mut st);
    m.rewind(&mut st, &cp).expect("rewind");
    assert_eq!(st.n_past, 12);
    assert_eq!(first, run(&mut st));
}

/// Hybrid placement (issue 11): experts kept in RAM by the planner's rules — every other
/// expert, the first layer's all and the rest's upper half, all of them (`--cpu-moe`) —
/// give logits within the same bounds of the CPU engine's: prefill (batches stream the RAM
/// experts to the GPU) and decode (steps replayed from a graph whose host nodes have the pool
/// compute the RAM experts).
#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn hybrid_placements_agree_with_the_cpu_engine() {
    for path in files() {
        let (name, file, cpu, tokens) = opened(&path);
        let experts: Vec<(String, usize, usize)> = file
            .tensors()
            .iter()
            .filter(|t| t.name.contains("_exps.weight"))
            .map(|t| {
                let layer = t.name.split('.').nth(1).and_then(|l| l.parse().ok());
                (t.name.clone(), layer.unwrap_or(0), t.dims[2] as usize)
            })
            .collect();
        if experts.is_empty() {
            continue;
        }
        type Rule = fn(usize, usize, usize) -> bool;
        let rules: [(&str, Rule); 3] = [
            ("every other expert in RAM", |_, e, _| e % 2 == 1),
            ("layer 0 and upper halves in RAM", |l, e, n| {
                l == 0 || e >= n / 2
            }),
            ("all experts in RAM", |_, _, _| true),
        ];
        for (what, rule) in rules {
            let mut p = cuda::Placement::default();
            for (t, layer, n) in &experts {
                p.in_ram
                    .insert(t.clone(), (0..*n).map(|e| rule(*layer, e, *n)).collect());
            }
            let backend = cuda::Cuda::open(0).expect("GPU");
            backend.set_placement(p);
            let gpu = engine::load_on(file.clone(), backend).expect("hybrid load");
            agree(&format!("{name} ({what})"), &*cpu, &*gpu, &tokens);
        }
    }
}
