//! `llm-server dequant`: raw ggml blocks in, little-endian f32 out (used by the bit-exact
//! tests in `tests/python/test_quant_bitexact.py`). With `--quantize` it runs the other way:
//! f32 in, blocks out, through `quant`'s reference quantizers.

use anyhow::{bail, Context};
use quant::GgmlType;

/// Arguments of `llm-server dequant`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ggml type name, e.g. q4_K.
    #[arg(long = "type")]
    pub ty: String,
    /// File of raw blocks (with --quantize: of little-endian f32 values).
    pub input: std::path::PathBuf,
    /// Output file of f32 values (with --quantize: of raw blocks).
    #[arg(short, long)]
    pub output: std::path::PathBuf,
    /// Quantize f32 input to blocks instead of dequantizing.
    #[arg(long)]
    pub quantize: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(ty) = GgmlType::from_name(&args.ty) else {
        bail!("unknown ggml type {:?}", args.ty);
    };
    let input =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let output = if args.quantize {
        quantize(ty, &input)?
    } else {
        dequantize(ty, &input)?
    };
    std::fs::write(&args.output, output)
        .with_context(|| format!("writing {}", args.output.display()))
}

fn dequantize(ty: GgmlType, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !quant::can_dequantize(ty) {
        bail!("dequantizing {ty} is not supported");
    }
    let type_size = ty.type_size() as usize;
    if !input.len().is_multiple_of(type_size) {
        bail!(
            "{} bytes is not a whole number of {ty} blocks ({type_size} bytes each; {} left over)",
            input.len(),
            input.len() % type_size
        );
    }
    let values = quant::dequantize_to_vec(ty, input)?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn quantize(ty: GgmlType, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !input.len().is_multiple_of(4) {
        bail!("{} bytes is not a whole number of f32 values", input.len());
    }
    let values: Vec<f32> = input
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let block_size = ty.block_size() as usize;
    if !values.len().is_multiple_of(block_size) {
        bail!(
            "{} values is not a whole number of {block_size}-value {ty} blocks",
            values.len()
        );
    }
    let mut out = vec![0u8; values.len() / block_size * ty.type_size() as usize];
    quant::quantize(ty, &values, &mut out)?;
    Ok(out)
}
