//! `llm-server synth`: synthetic-weight GGUF files with the layout of real models.

mod vocab;

/// Arguments of `llm-server synth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output file.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let _ = vocab::placeholder;
    anyhow::bail!("not yet implemented")
}
