//! llm-server: the command-line entry point. Each subcommand lives in its own module; this file
//! only parses arguments and dispatches.

mod bench;
mod bench_url;
mod cache_args;
mod calibrate;
mod compare;
mod dequant;
mod device_args;
mod fit;
mod fnv;
mod inspect;
mod kld;
mod load;
mod logits;
mod perplexity;
mod placement;
mod quality;
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
    Bench(Box<bench::Args>),
    /// Perplexity of a text file (llama-perplexity's method).
    Perplexity(perplexity::Args),
    /// Write a synthetic-weight GGUF with the exact layout of a real model.
    Synth(synth::Args),
    /// Where a model's tensors and experts would go on this machine, without loading it.
    Fit(fit::Args),
    /// Count how often each expert is chosen over a text (for --expert-stats).
    Calibrate(calibrate::Args),
    /// Tables and charts of `bench --url` results.
    Compare(compare::Args),
    /// Perplexity and KL divergence of files and KV types against a reference, as a matrix.
    Quality(quality::Args),
    /// Dequantize raw ggml blocks to little-endian f32 (a test tool for the bit-exact checks).
    #[command(hide = true)]
    Dequant(dequant::Args),
    /// Logits of every position of a token sequence, as raw f32 (for the oracle scripts).
    #[command(hide = true)]
    Logits(logits::Args),
}

/// Errors print as their message chain (`cannot read X: No such file…`), one line, whatever
/// `RUST_BACKTRACE` says: a CLI user needs the reason, not our stack.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    keep_freed_memory();
    let cli = Cli::parse_from(cache_args::expand_single_dash(std::env::args_os()));
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Fit(args) => fit::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Quality(args) => quality::run(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(*args),
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

/// glibc hands buffers over 128 KiB to `mmap` and gives freed heap tops back to the kernel,
/// so every layer of a prefill page-faulted its megabytes of activations in afresh (zeroed by
/// the kernel): 11% of a MoE prompt's time on the development machine. Buffers up to 32 MiB
/// (glibc's ceiling for this setting) now come from the heap, and freed memory stays with the
/// process for the next layer.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's `mallopt` parameters (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only changes allocator tunables; called before any other thread
        // exists.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
