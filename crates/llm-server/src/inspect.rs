//! `llm-server inspect`: a readable gguf-dump.

/// Arguments of `llm-server inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file.
    pub file: std::path::PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
