//! Fuzz the GGUF reader: any input must parse to `Ok` or `Err`, never panic, overflow or
//! allocate beyond what the input justifies; every view of a file that parsed must work; and
//! writing a parsed file back out must give a file that parses to the same content.
#![no_main]

use gguf::{Error, GgufFile, GgufWriter, TensorSpec};
use libfuzzer_sys::fuzz_target;

/// Writes `file`'s metadata and tensors with [`GgufWriter`], in uneven chunks.
fn rewrite(file: &GgufFile) -> Option<Vec<u8>> {
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.ty, t.dims.clone()))
        .collect();
    let mut w = match GgufWriter::new(Vec::new(), file.metadata().entries(), &specs) {
        Ok(w) => w,
        // The reader accepts names llama.cpp can't hold; the writer refuses to produce them.
        Err(Error::NameTooLong { .. }) => return None,
        Err(e) => panic!("writer rejects what the reader accepted: {e}"),
    };
    for t in file.tensors() {
        for chunk in file.tensor_data(t).chunks(7) {
            w.write_data(chunk).expect("declared size");
        }
    }
    Some(w.finish().expect("all data written"))
}

fuzz_target!(|data: &[u8]| {
    let header = gguf::parse_header(data);
    let file = GgufFile::from_bytes(data.to_vec());
    // The pure parser and the file wrapper must agree.
    assert_eq!(header.is_ok(), file.is_ok());
    let Ok(file) = file else { return };
    for (key, value) in file.metadata().iter() {
        assert!(file.metadata().get(key).is_some());
        let _ = (
            value.as_u64(),
            value.as_f64(),
            value.as_str(),
            value.as_array().map(|a| a.len()),
        );
    }
    for t in file.tensors() {
        let data = file.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes);
        assert_eq!(file.tensor(&t.name), Some(t));
        let _ = file.tensor_f32(t).map(|v| v.iter().sum::<f32>());
        let _ = file.tensor_f16(t);
        let _ = file.tensor_bf16(t);
        let _ = file.tensor_f64(t);
        let _ = file.tensor_i8(t);
        let _ = file.tensor_i16(t);
        let _ = file.tensor_i32(t);
        let _ = file.tensor_i64(t);
        if t.dims.len() == 3 {
            for e in 0..t.dims[2].min(4) {
                let slice = file
                    .expert_data(t, e)
                    .expect("expert in range of a valid 3-D tensor");
                assert_eq!(slice.len() as u64 * t.dims[2], t.n_bytes);
            }
            assert!(file.expert_data(t, t.dims[2]).is_err());
        }
    }
    // A legal alignment of up to 2^31 makes even an empty file's padding gigabytes long.
    if file.alignment() > 1 << 16 {
        return;
    }
    let Some(out) = rewrite(&file) else { return };
    let again = GgufFile::from_bytes(out.clone()).expect("own output parses");
    // Debug, not ==, so NaN metadata compares equal to itself.
    let entries = |f: &GgufFile| format!("{:?}", f.metadata().entries());
    assert_eq!(entries(&again), entries(&file));
    assert_eq!(again.tensors().len(), file.tensors().len());
    for (a, b) in again.tensors().iter().zip(file.tensors()) {
        assert_eq!((&a.name, a.ty, &a.dims), (&b.name, b.ty, &b.dims));
        assert_eq!(again.tensor_data(a), file.tensor_data(b));
    }
    assert_eq!(rewrite(&again), Some(out), "writing is deterministic");
});
