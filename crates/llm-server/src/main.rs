//! llm-server: the command-line entry point. Each subcommand lives in its own module; this file
//! only parses arguments and dispatches.

mod bench;
mod cache_args;
mod dequant;
mod inspect;
mod load;
mod logits;
mod perplexity;
mod run;
mod serve;
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
    /// Serve the model over HTTP with the OpenAI API (chat and text completions, streaming).
    Serve(serve::Args),
    /// Print a GGUF file's architecture, hyperparameters, tokenizer and tensor table.
    Inspect(inspect::Args),
    /// Run one prompt and print the tokens as they come.
    Run(run::Args),
    /// Prompt and generation speed, measured like llama-bench (-p 512 -n 128).
    Bench(bench::Args),
    /// Perplexity of a text file (llama-perplexity's method).
    Perplexity(perplexity::Args),
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
    let cli = Cli::parse_from(cache_args::expand_single_dash(std::env::args_os()));
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Dequant(args) => dequant::run(args),
        Command::Logits(args) => logits::run(args),
    }
}

/// Lets the terminal commands end quietly when their reader goes away (`llm-server inspect
/// FILE | head`): Rust ignores SIGPIPE, so `println!` on a closed pipe panics. The default
/// action (exit) is restored for every command but `serve`, where a client closing its socket
/// must never end the process.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL at start-up, before any other thread
    // exists, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
