//! llm-server: the command-line entry point. Each subcommand lives in its own module; this file
//! only parses arguments and dispatches.

mod dequant;
mod inspect;
mod logits;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "llm-server",
    version,
    about = "Local LLM inference server for large MoE GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a GGUF file's architecture, hyperparameters, tokenizer and tensor table.
    Inspect(inspect::Args),
    /// Write a synthetic-weight GGUF with the exact layout of a real model.
    Synth(synth::Args),
    /// Dequantize raw ggml blocks to little-endian f32 (a test tool for the bit-exact checks).
    #[command(hide = true)]
    Dequant(dequant::Args),
    /// Logits of every position of a token sequence, as raw f32 (for the oracle scripts).
    #[command(hide = true)]
    Logits(logits::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Dequant(args) => dequant::run(args),
        Command::Logits(args) => logits::run(args),
    }
}
