//! Cross-check with ggml's own C: our `vec_dot` (every path) against ggml's
//! `ggml_vec_dot_*_generic` (ggml-cpu/quants.c) and the scalar `ggml_vec_dot_{f32,f16,bf16}`
//! (ggml-cpu/vec.cpp), bit for bit, and our activation quantizers against
//! `quantize_row_q8_{0,1,K}_generic` / `ggml_compute_fp32_to_{fp16,bf16}`, byte for byte.
//!
//! Needs `LLM_SERVER_GGML_SRC` (a llama.cpp `ggml/` directory, e.g. `.cache/llama.cpp-b11549/ggml`)
//! and gcc/g++; skips otherwise. ggml is built without SIMD (so vec.cpp takes its scalar
//! branch) and with `-ffp-contract=off`: the generic C then rounds exactly like our Rust,
//! which never fuses a multiply and an add. (A real llama.cpp build uses ggml's AVX2/AVX-512
//! kernels, whose f32 order differs; ours keep the generic order on every path.)

use quant::{
    kernel_paths, quantize_activations, random_blocks, vec_dot_type, with_path, GgmlType, DOT_TYPES,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HARNESS: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-cpu/quants.h"
void ggml_vec_dot_f32(int n, float * s, size_t bs, const float * x, size_t bx, const float * y, size_t by, int nrc);
void ggml_vec_dot_f16(int n, float * s, size_t bs, ggml_fp16_t * x, size_t bx, ggml_fp16_t * y, size_t by, int nrc);
void ggml_vec_dot_bf16(int n, float * s, size_t bs, ggml_bf16_t * x, size_t bx, ggml_bf16_t * y, size_t by, int nrc);
float ggml_table_f32_f16[1 << 16];
void ggml_abort(const char * file, int line, const char * fmt, ...) { (void)fmt; fprintf(stderr, "%s:%d\n", file, line); abort(); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void)t; (void)ne; return 0; }
size_t ggml_type_size(enum ggml_type t) { (void)t; return 0; }
const char * ggml_type_name(enum ggml_type t) { (void)t; return "?"; }
typedef void (*dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
static dot_t dot_fn(int ty) {
    switch (ty) {
        case 0: return (dot_t)ggml_vec_dot_f32;
        case 1: return (dot_t)ggml_vec_dot_f16;
        case 30: return (dot_t)ggml_vec_dot_bf16;
        case 2: return ggml_vec_dot_q4_0_q8_0_generic;
        case 3: return ggml_vec_dot_q4_1_q8_1_generic;
        case 6: return ggml_vec_dot_q5_0_q8_0_generic;
        case 7: return ggml_vec_dot_q5_1_q8_1_generic;
        case 8: return ggml_vec_dot_q8_0_q8_0_generic;
        case 10: return ggml_vec_dot_q2_K_q8_K_generic;
        case 11: return ggml_vec_dot_q3_K_q8_K_generic;
        case 12: return ggml_vec_dot_q4_K_q8_K_generic;
        case 13: return ggml_vec_dot_q5_K_q8_K_generic;
        case 14: return ggml_vec_dot_q6_K_q8_K_generic;
        case 20: return ggml_vec_dot_iq4_nl_q8_0_generic;
        case 23: return ggml_vec_dot_iq4_xs_q8_K_generic;
        case 39: return ggml_vec_dot_mxfp4_q8_0_generic;
        default: return NULL;
    }
}
/* dot TYPE N ROWS WBYTES ABYTES < rows, act  -> ROWS f32
   quant ACT_TYPE N ABYTES < N f32             -> ABYTES bytes */
int main(int argc, char ** argv) {
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t)i);
    int ty = atoi(argv[2]); long n = atol(argv[3]);
    if (strcmp(argv[1], "quant") == 0) {
        size_t ab = atol(argv[4]);
        float * x = malloc(n * 4); unsigned char * y = calloc(ab + 64, 1);
        if (fread(x, 4, n, stdin) != (size_t)n) return 1;
        switch (ty) {
            case 8: quantize_row_q8_0_generic(x, y, n); break;
            case 9: quantize_row_q8_1_generic(x, y, n); break;
            case 15: quantize_row_q8_K_generic(x, y, n); break;
            case 1: for (long i = 0; i < n; ++i) ((ggml_fp16_t *)y)[i] = ggml_compute_fp32_to_fp16(x[i]); break;
            case 30: for (long i = 0; i < n; ++i) ((ggml_bf16_t *)y)[i] = ggml_compute_fp32_to_bf16(x[i]); break;
            case 0: memcpy(y, x, n * 4); break;
            default: return 2;
        }
        fwrite(y, 1, ab, stdout);
        return 0;
    }
    long rows = atol(argv[4]); size_t wb = atol(argv[5]), ab = atol(argv[6]);
    unsigned char * w = malloc(rows * wb); unsigned char * a = malloc(ab);
    if (fread(w, 1, rows * wb, stdin) != rows * wb || fread(a, 1, ab, stdin) != ab) return 1;
    dot_t f = dot_fn(ty);
    if (!f) return 2;
    for (long r = 0; r < rows; ++r) { float s; f((int)n, &s, 0, w + r * wb, 0, a, 0, 1); fwrite(&s, 4, 1, stdout); }
    return 0;
}
"#;

/// Builds the harness once per test binary; `None` when LLM_SERVER_GGML_SRC is unset.
fn harness() -> Option<PathBuf> {
    let src = PathBuf::from(std::env::var_os("LLM_SERVER_GGML_SRC")?);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ggml_vecdot");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::write(dir.join("harness.c"), HARNESS).expect("write harness");
    let inc = [
        src.join("include"),
        src.join("src"),
        src.join("src/ggml-cpu"),
    ]
    .map(|p| format!("-I{}", p.display()));
    let flags = ["-O2", "-ffp-contract=off", "-c"];
    let compile = |cc: &str, file: PathBuf, obj: &str, std: &str| {
        let status = Command::new(cc)
            .args(flags)
            .arg(std)
            .args(&inc)
            .arg(&file)
            .arg("-o")
            .arg(dir.join(obj))
            .status()
            .expect("run the C compiler");
        assert!(status.success(), "compiling {}", file.display());
    };
    compile("gcc", dir.join("harness.c"), "harness.o", "-std=gnu11");
    compile(
        "gcc",
        src.join("src/ggml-quants.c"),
        "ggml-quants.o",
        "-std=gnu11",
    );
    compile(
        "gcc",
        src.join("src/ggml-cpu/quants.c"),
        "quants.o",
        "-std=gnu11",
    );
    compile(
        "g++",
        src.join("src/ggml-cpu/vec.cpp"),
        "vec.o",
        "-std=gnu++17",
    );
    let exe = dir.join("harness");
    let objs = ["harness.o", "ggml-quants.o", "quants.o", "vec.o"].map(|o| dir.join(o));
    let status = Command::new("g++")
        .args(&objs)
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .status()
        .expect("link");
    assert!(status.success(), "linking the ggml harness");
    Some(exe)
}

fn run(exe: &Path, args: &[String], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run harness");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("harness output");
    writer
        .join()
        .expect("writer thread")
        .expect("write to harness");
    assert!(out.status.success(), "harness {args:?} failed");
    out.stdout
}

/// Activations like a model's: roughly normal with a few outliers.
fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if s.is_multiple_of(97) {
                u * 30.0
            } else {
                u
            }
        })
        .collect()
}

#[test]
fn scalar_vec_dot_is_bit_exact_with_ggml_generic() {
    let Some(exe) = harness() else {
        eprintln!("LLM_SERVER_GGML_SRC unset: skipping the ggml vec_dot cross-check");
        return;
    };
    let (n, rows) = (4096usize, 32usize);
    for &ty in DOT_TYPES {
        let act_ty = vec_dot_type(ty);
        let x = activations(n, 17 + ty.id() as u64);
        let mut act = Vec::new();
        quantize_activations(ty, &x, &mut act).expect("quantize activations");
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let args = [
            "quant".into(),
            act_ty.id().to_string(),
            n.to_string(),
            act.len().to_string(),
        ];
        assert!(
            run(&exe, &args, &xb) == act,
            "{act_ty} activations differ from ggml's"
        );

        let wb = ty.bytes_for(n as u64).expect("whole blocks") as usize;
        let mut w = vec![0u8; rows * wb];
        random_blocks(ty, &mut w, 3 + ty.id() as u64, 0.02).expect("random blocks");
        let args: Vec<String> = [
            "dot".into(),
            ty.id().to_string(),
            n.to_string(),
            rows.to_string(),
            wb.to_string(),
            act.len().to_string(),
        ]
        .into();
        let want = run(&exe, &args, &[w.as_slice(), act.as_slice()].concat());
        // Every path: the block types must match ggml's bits; float rows may differ in the
        // last bit on SIMD paths (f64 sums in another order), so those check the scalar path.
        for &path in kernel_paths()
            .iter()
            .filter(|&&p| p == "scalar" || ty.block_size() > 1)
        {
            let got: Vec<f32> = with_path(path, || {
                w.chunks_exact(wb)
                    .map(|row| quant::vec_dot(ty, n, row, &act).expect("vec_dot"))
                    .collect()
            })
            .expect("path exists");
            for (r, (g, wnt)) in got.iter().zip(want.chunks_exact(4)).enumerate() {
                let wnt = f32::from_le_bytes([wnt[0], wnt[1], wnt[2], wnt[3]]);
                assert_eq!(
                    g.to_bits(),
                    wnt.to_bits(),
                    "{ty} row {r} path {path}: ours {g} vs ggml {wnt}"
                );
            }
        }
        println!(
            "{ty:>7}: {rows} rows of {n} bit-exact with ggml (activations {act_ty} byte-exact)"
        );
    }
}

#[test]
fn every_type_has_a_ggml_id_in_the_harness() {
    // The harness switch above lists these ids; keep it in step with DOT_TYPES.
    let ids: Vec<u32> = DOT_TYPES.iter().map(|t: &GgmlType| t.id()).collect();
    assert_eq!(
        ids,
        [0, 1, 30, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23, 39]
    );
}
