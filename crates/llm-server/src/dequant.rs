//! `llm-server dequant`: raw ggml blocks in, little-endian f32 out (used by the bit-exact tests).

/// Arguments of `llm-server dequant`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ggml type name, e.g. q4_K.
    #[arg(long = "type")]
    pub ty: String,
    /// File of raw blocks.
    pub input: std::path::PathBuf,
    /// Output file of f32 values.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
