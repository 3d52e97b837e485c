//! `llm-server compare DIR|FILES…` (issue 13 req. 3): the results of `bench --url` runs
//! (JSON lines, `scripts/bench.sh` writes one file a configuration) as a markdown table —
//! configuration × suite and concurrency, aggregate decode tok/s as the median over the runs
//! of that configuration with their spread, GPU memory, ratios to `--baseline` — and two
//! charts, each as SVG and PNG: decode tok/s by configuration and suite, and time to first
//! token by prompt length.
//!
//! A configuration is named by its file (`<date>-<engine>-<config>.jsonl` → `engine-config`;
//! other names as they are), so repeated runs of one configuration on other dates pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::kld::median;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// `llm-server compare` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Result files (`.jsonl`), or folders of them.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Give each cell's ratio to this configuration.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Where the charts go (`compare-decode.{svg,png}`, `compare-ttft.{svg,png}`).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// No charts, the table only.
    #[arg(long)]
    pub no_charts: bool,
}

/// What the table and charts need of one configuration.
#[derive(Debug, Default)]
struct Config {
    /// (suite, concurrency) → aggregate decode tok/s of each run.
    decode: BTreeMap<(usize, usize), Vec<f64>>,
    /// Peak GPU MiB over its runs.
    vram: Option<u64>,
    /// suite → (tokens in, TTFT s) of its concurrency-1 requests.
    ttft: BTreeMap<usize, Vec<(f64, f64)>>,
}

/// Suites in table order.
const SUITES: [&str; 4] = ["short", "medium", "long", "multi-turn"];

fn suite_index(s: &str) -> usize {
    SUITES.iter().position(|&x| x == s).unwrap_or(SUITES.len())
}

/// `2026-12-02-ours-demo-cpu.jsonl` → `ours-demo-cpu`.
fn label(p: &Path) -> String {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let b = stem.as_bytes();
    let dated = b.len() > 11
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && b[10] == b'-';
    match dated {
        true => stem[11..].to_string(),
        false => stem,
    }
}

fn files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no .jsonl result files in {inputs:?}");
    }
    Ok(out)
}

fn read(files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, Config>> {
    let mut configs: BTreeMap<String, Config> = BTreeMap::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let c = configs.entry(label(f)).or_default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", f.display(), i + 1))?;
            let suite = suite_index(v["suite"].as_str().unwrap_or(""));
            let conc = v["concurrency"].as_u64().unwrap_or(0) as usize;
            match v["kind"].as_str() {
                Some("summary") => {
                    let tps = v["aggregate_decode_tok_s"].as_f64().with_context(|| {
                        format!(
                            "{}:{}: a summary without aggregate_decode_tok_s",
                            f.display(),
                            i + 1
                        )
                    })?;
                    c.decode.entry((suite, conc)).or_default().push(tps);
                    if let Some(m) = v["gpu_mem_peak_mib"].as_u64() {
                        c.vram = Some(c.vram.map_or(m, |x| x.max(m)));
                    }
                }
                Some("request") => {
                    let (n, t) = (v["tokens_in"].as_f64(), v["ttft_s"].as_f64());
                    if let (Some(n), Some(t), 1, true) = (
                        n,
                        t,
                        conc,
                        v["error"].is_null() && v["turn"].as_u64() == Some(0),
                    ) {
                        c.ttft.entry(suite).or_default().push((n, t));
                    }
                }
                _ => bail!(
                    "{}:{}: not a bench --url line (no \"kind\")",
                    f.display(),
                    i + 1
                ),
            }
        }
    }
    Ok(configs)
}

/// The markdown table.
fn table(configs: &BTreeMap<String, Config>, baseline: Option<&str>) -> anyhow::Result<String> {
    let mut cols: Vec<(usize, usize)> = configs
        .values()
        .flat_map(|c| c.decode.keys().copied())
        .collect();
    cols.sort();
    cols.dedup();
    let base = match baseline {
        Some(b) => Some(configs.get(b).with_context(|| {
            format!(
                "--baseline {b:?}: no such configuration (have: {})",
                configs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?),
        None => None,
    };
    let name = |s: usize| SUITES.get(s).copied().unwrap_or("other");
    let mut out = String::from("| config |");
    for &(s, c) in &cols {
        out += &format!(" {} ×{c} |", name(s));
    }
    out += " GPU MiB |\n|---|";
    out += &"---:|".repeat(cols.len() + 1);
    out += "\n";
    for (label, c) in configs {
        out += &format!("| {label} |");
        for col in &cols {
            let cell = match c.decode.get(col) {
                Some(v) if !v.is_empty() => {
                    let m = median(v);
                    let spread = v.iter().copied().fold(f64::MIN, f64::max)
                        - v.iter().copied().fold(f64::MAX, f64::min);
                    let mut s = format!("{m:.1}");
                    if v.len() > 1 {
                        s += &format!(" ± {:.1}", spread / 2.0);
                    }
                    if let Some(b) = base.and_then(|b| b.decode.get(col)) {
                        s += &format!(" ({:.2}×)", m / median(b));
                    }
                    s
                }
                _ => "–".into(),
            };
            out += &format!(" {cell} |");
        }
        out += &format!(" {} |\n", c.vram.map_or("–".into(), |m| m.to_string()));
    }
    Ok(out)
}

const FONT: &str = "dejavu-sans";

/// Both charts, each as SVG and PNG.
fn charts(configs: &BTreeMap<String, Config>, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = chart_files(dir, "compare-decode", &decode_bars(configs))?.to_vec();
    written.extend(chart_files(dir, "compare-ttft", &Ttft(configs))?);
    Ok(written)
}

/// A chart that draws on any plotters backend.
pub(crate) trait Chart {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// `chart` into `dir/stem.svg` and `dir/stem.png`.
pub(crate) fn chart_files(
    dir: &Path,
    stem: &str,
    chart: &impl Chart,
) -> anyhow::Result<[PathBuf; 2]> {
    use_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (svg, png) = (
        dir.join(format!("{stem}.svg")),
        dir.join(format!("{stem}.png")),
    );
    let size = (900, 500);
    chart.draw(&SVGBackend::new(&svg, size).into_drawing_area())?;
    chart.draw(&BitMapBackend::new(&png, size).into_drawing_area())?;
    Ok([svg, png])
}

fn palette(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

/// Aggregate decode tok/s by suite (groups) and configuration (bars), at the lowest
/// concurrency each ran.
fn decode_bars(configs: &BTreeMap<String, Config>) -> Bars {
    let mut suites: Vec<usize> = configs
        .values()
        .flat_map(|c| c.decode.keys().map(|k| k.0))
        .collect();
    suites.sort();
    suites.dedup();
    let level = |c: &Config, s: usize| {
        c.decode
            .iter()
            .filter(|((su, _), _)| *su == s)
            .min_by_key(|((_, lv), _)| *lv)
            .map(|(_, v)| median(v))
    };
    let groups: Vec<String> = suites
        .iter()
        .map(|&s| SUITES.get(s).copied().unwrap_or("other").to_string())
        .collect();
    let series: Vec<(String, Vec<Option<f64>>)> = configs
        .iter()
        .map(|(l, c)| (l.clone(), suites.iter().map(|&s| level(c, s)).collect()))
        .collect();
    Bars {
        title: "decode tok/s (aggregate, lowest concurrency)",
        y_desc: "tok/s",
        groups,
        series,
    }
}

/// A grouped bar chart: for each group (x), one bar per series, with a legend.
pub(crate) struct Bars {
    pub title: &'static str,
    pub y_desc: &'static str,
    /// The x axis's groups.
    pub groups: Vec<String>,
    /// Each series' name and its value in each group (none: no bar).
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

impl Chart for Bars {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        bar_chart(area, self)
    }
}

fn bar_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    Bars {
        title,
        y_desc,
        groups,
        series,
    }: &Bars,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(err)?;
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(f64::MIN_POSITIVE, f64::max);
    let n = series.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // Room under zero for the groups' names (the axis's own labels fall on round
        // numbers, not on the groups' middles).
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, -top * 0.08..top * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(*y_desc)
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let names = groups.iter().enumerate().map(|(i, name)| {
        Text::new(
            name.clone(),
            (i as f64 + 0.5, -top * 0.03),
            TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        )
    });
    chart.draw_series(names).map_err(err)?;
    for (ci, (label, values)) in series.iter().enumerate() {
        let color = palette(ci);
        let bars: Vec<Rectangle<(f64, f64)>> = values
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                let v = (*v)?;
                let x0 = gi as f64 + 0.1 + 0.8 * ci as f64 / n;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.8 / n * 0.9, v)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    legend_and_present(&mut chart, area)
}

/// Register the embedded font under [`FONT`].
fn use_font() -> anyhow::Result<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded font does not load"))
}

/// Median time to first token against the median prompt length of each suite, one line a
/// configuration (concurrency 1, first turns).
struct Ttft<'a>(&'a BTreeMap<String, Config>);

impl Chart for Ttft<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        ttft_chart(self.0, area)
    }
}

fn ttft_chart<DB: DrawingBackend>(
    configs: &BTreeMap<String, Config>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(err)?;
    let points: Vec<(String, Vec<(f64, f64)>)> = configs
        .iter()
        .map(|(l, c)| {
            let mut p: Vec<(f64, f64)> = c
                .ttft
                .values()
                .map(|v| {
                    let n: Vec<f64> = v.iter().map(|x| x.0).collect();
                    let t: Vec<f64> = v.iter().map(|x| x.1).collect();
                    (median(&n), median(&t))
                })
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            (l.clone(), p)
        })
        .collect();
    let xmax = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(10.0f64, f64::max);
    let ymax = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.01f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "time to first token by prompt length (concurrency 1)",
            (FONT, 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax * 1.1, 0f64..ymax * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("prompt tokens")
        .y_desc("seconds")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (ci, (label, p)) in points.iter().enumerate() {
        let color = palette(ci);
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(p.iter().map(|&xy| Circle::new(xy, 4, color.filled())))
            .map_err(err)?;
    }
    legend_and_present(&mut chart, area)
}

/// The legend box, then the picture written out.
fn legend_and_present<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let files = files(&args.inputs)?;
    let configs = read(&files)?;
    print!("{}", table(&configs, args.baseline.as_deref())?);
    if !args.no_charts {
        for f in charts(&configs, &args.out_dir)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}
