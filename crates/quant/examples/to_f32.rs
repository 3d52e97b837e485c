//! Rewrites a GGUF model with every tensor dequantized to F32 (metadata kept, except
//! `general.file_type` = 0, ALL_F32). With F32 weights two engines differ only in summation
//! order, which is how the oracle notes separate "the math is right" from "quantized
//! activations amplify rounding" (tools/logits-oracle).
//!
//! Usage: `cargo run -p quant --release --example to_f32 -- IN.gguf OUT.gguf`

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;

use gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec, Value};

fn convert(input: &str, output: &str) -> Result<(), Box<dyn std::error::Error>> {
    let file = GgufFile::open(input)?;
    let metadata: Vec<(String, Value)> = file
        .metadata()
        .entries()
        .iter()
        .map(|(k, v)| match k.as_str() {
            "general.file_type" => (k.clone(), Value::U32(0)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), GgmlType::F32, t.dims.clone()))
        .collect();
    let mut w = GgufWriter::new(BufWriter::new(File::create(output)?), &metadata, &specs)?;
    for t in file.tensors() {
        let values = quant::dequantize_to_vec(t.ty, file.tensor_data(t))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_data(&bytes)?;
    }
    w.finish()?;
    println!("{input} → {output}: {} tensors as F32", specs.len());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: to_f32 IN.gguf OUT.gguf");
        return ExitCode::from(2);
    };
    match convert(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("to_f32: {e}");
            ExitCode::FAILURE
        }
    }
}
