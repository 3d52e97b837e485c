//! `llm-server quality` (issue 13 req. 4): the quality a quant or KV type costs, as one matrix.
//! For a reference file and a list of other files and KV cache types: perplexity over a text
//! and KL divergence against the reference's distributions — PPL, ΔPPL %, mean and 99.9th
//! percentile KLD, same top-1 % — printed as a markdown table and drawn as a chart (mean KLD
//! by file and KV type, SVG and PNG).
//!
//! Resumable: the reference's distributions (llama-perplexity's file format, `kld.rs`) are
//! written once into `--work-dir`, named by the reference, the text and the chunking, and
//! reused by every later run with the same three.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use engine::KvType;

use crate::cache_args::CacheArgs;
use crate::device_args::DeviceArgs;
use crate::load;
use crate::perplexity;

/// `llm-server quality` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reference model (e.g. the Q8_0 or F16 file).
    #[arg(short = 'r', long = "reference")]
    pub reference: PathBuf,
    /// A model to measure against the reference (repeatable).
    #[arg(short = 'm', long = "model")]
    pub models: Vec<PathBuf>,
    /// KV cache types to measure each model with (K and V alike; a list).
    #[arg(long = "cache-types", value_delimiter = ',', default_value = "f16")]
    pub cache_types: Vec<String>,
    #[command(flatten)]
    pub text: crate::calibrate::TextArgs,
    /// Where the reference's distributions are kept between runs.
    #[arg(long, default_value = ".cache/quality")]
    pub work_dir: PathBuf,
    /// Where the chart goes (`quality-kld.{svg,png}`).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// No chart.
    #[arg(long)]
    pub no_charts: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One row of the matrix.
struct Row {
    model: String,
    kv: KvType,
    h: crate::kld::Headline,
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// FNV-1a of a file's bytes and length (the text, to name the reference's file).
fn text_id(p: &Path) -> anyhow::Result<String> {
    let b = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(format!("{:016x}-{}", crate::fnv::Fnv::of(&b), b.len()))
}

/// Perplexity's arguments for `model` with KV type `kv`.
fn ppl_args(a: &Args, model: &Path, kv: KvType, base: &Path, compare: bool) -> perplexity::Args {
    perplexity::Args {
        model: Some(model.to_path_buf()),
        file: Some(a.text.file.clone()),
        ctx_size: (!compare).then_some(a.text.ctx_size),
        chunks: a.text.chunks,
        threads: a.text.threads,
        kl_base: Some(base.to_path_buf()),
        kl_divergence: compare,
        cache: CacheArgs {
            cache_type_k: kv,
            cache_type_v: kv,
        },
        device: DeviceArgs {
            needs: crate::placement::Needs {
                n_ctx: a.text.ctx_size,
                ubatch: a.text.ctx_size.min(512),
                logit_rows: a.text.ctx_size.min(512),
                ..Default::default()
            },
            ..a.device.clone()
        },
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.text.ctx_size < 2 {
        bail!("--ctx-size must be at least 2");
    }
    let kvs: Vec<KvType> = a
        .cache_types
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e: engine::Error| anyhow::anyhow!("--cache-types {t:?}: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(&a.work_dir)
        .with_context(|| format!("cannot create {}", a.work_dir.display()))?;
    let base = a.work_dir.join(format!(
        "{}.{}.c{}.n{}.kld",
        name(&a.reference),
        text_id(&a.text.file)?,
        a.text.ctx_size,
        a.text.chunks.map_or("all".to_string(), |n| n.to_string())
    ));
    // The reference's own perplexity, kept beside its distributions: the file's log-probs are
    // clipped to a range below the top (llama-perplexity's format), so a PPL recomputed from
    // them is lower than the model's for rare tokens.
    let ppl_file = base.with_extension("kld.ppl");
    let ref_ppl = match (base.exists(), std::fs::read_to_string(&ppl_file)) {
        (true, Ok(t)) if t.trim().parse::<f64>().is_ok() => {
            eprintln!(
                "quality: reusing the reference's distributions {}",
                base.display()
            );
            t.trim().parse::<f64>().expect("checked")
        }
        _ => {
            eprintln!(
                "quality: the reference's distributions → {}",
                base.display()
            );
            let partial = base.with_extension("kld.partial");
            let pa = ppl_args(&a, &a.reference, KvType::F16, &partial, false);
            let m = load::open(&a.reference, a.text.threads, &pa.device)?;
            let ppl = perplexity::perplexity(&pa, &m)?;
            // Only a finished file is reused (a run stopped half-way starts over).
            std::fs::write(&ppl_file, format!("{ppl}\n"))
                .with_context(|| format!("cannot write {}", ppl_file.display()))?;
            std::fs::rename(&partial, &base)
                .with_context(|| format!("cannot write {}", base.display()))?;
            ppl
        }
    };
    // The reference under other KV types, then every model under every KV type.
    let mut runs: Vec<(PathBuf, KvType)> = kvs
        .iter()
        .filter(|&&k| k != KvType::F16)
        .map(|&k| (a.reference.clone(), k))
        .collect();
    for m in &a.models {
        runs.extend(kvs.iter().map(|&k| (m.clone(), k)));
    }
    let mut rows = Vec::new();
    for (model, kv) in runs {
        eprintln!("quality: {} with a {kv} KV cache", name(&model));
        let pa = ppl_args(&a, &model, kv, &base, true);
        let m = load::open(&model, a.text.threads, &pa.device)?;
        let h = perplexity::compare(&pa, &m, &base)?.headline();
        rows.push(Row {
            model: name(&model),
            kv,
            h,
        });
    }
    print!("{}", table(&name(&a.reference), ref_ppl, &rows));
    if !a.no_charts && !rows.is_empty() {
        // One group a model (rows come model by model), one series a KV type.
        let mut groups: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
        groups.dedup();
        let series: Vec<(String, Vec<Option<f64>>)> = kvs
            .iter()
            .map(|&k| {
                let v = groups
                    .iter()
                    .map(|g| {
                        rows.iter()
                            .find(|r| &r.model == g && r.kv == k)
                            .map(|r| r.h.kld_mean)
                    })
                    .collect();
                (format!("KV {k}"), v)
            })
            .collect();
        let bars = crate::compare::Bars {
            title: "mean KL divergence from the reference",
            y_desc: "KLD",
            groups,
            series,
        };
        for f in crate::compare::chart_files(&a.out_dir, "quality-kld", &bars)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}

fn table(reference: &str, ref_ppl: f64, rows: &[Row]) -> String {
    let mut s = format!(
        "Reference: {reference} (f16 KV), PPL {ref_ppl:.4}\n\n| model | KV | PPL | ΔPPL % | \
         mean KLD | 99.9% KLD | same top-1 % |\n|---|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.4} | {:+.3} | {:.6} | {:.6} | {:.3} |\n",
            r.model,
            r.kv,
            r.h.ppl,
            100.0 * (r.h.ppl / ref_ppl - 1.0),
            r.h.kld_mean,
            r.h.kld_999,
            100.0 * r.h.same_top
        );
    }
    s
}
