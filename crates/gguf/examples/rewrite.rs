//! Reads a GGUF file and writes it back out with [`gguf::GgufWriter`], streaming tensor data
//! in 1 MiB chunks. For a file from gguf-py or llama.cpp the output is byte-identical, which
//! `tests/crosscheck.py` uses to check both halves of the crate against gguf-py.
//!
//! Usage: `cargo run -p gguf --example rewrite -- IN.gguf OUT.gguf`

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;

use gguf::{GgufFile, GgufWriter, TensorSpec};

fn rewrite(input: &str, output: &str) -> Result<(), Box<dyn std::error::Error>> {
    let file = GgufFile::open(input)?;
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.ty, t.dims.clone()))
        .collect();
    let out = BufWriter::new(File::create(output)?);
    let mut w = GgufWriter::new(out, file.metadata().entries(), &specs)?;
    for t in file.tensors() {
        for chunk in file.tensor_data(t).chunks(1 << 20) {
            w.write_data(chunk)?;
        }
    }
    w.finish()?;
    println!(
        "{input}: v{}, {} keys, {} tensors",
        file.version(),
        file.metadata().len(),
        specs.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: rewrite IN.gguf OUT.gguf");
        return ExitCode::from(2);
    };
    match rewrite(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
