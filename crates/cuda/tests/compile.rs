//! Every kernel source, in every variant the backend compiles, builds under NVRTC for the
//! H200 (sm_90) and the reference card (sm_120, Blackwell). Needs NVRTC only, no GPU: CI gets
//! it from the `nvidia-cuda-nvrtc` wheel in the test venv (`scripts/test.sh` sets
//! `LLM_SERVER_CUDA_LIBS` and `LLM_SERVER_REQUIRE_NVRTC=1`); elsewhere the test says it skipped.

use cuda::compile::{compile, supported_archs, Image};
use cuda::Src;

/// A module to compile: source, variant defines, target architecture.
type Job = (Src, Vec<(&'static str, String)>, i32);

fn variants(src: Src) -> Vec<Vec<(&'static str, String)>> {
    match src {
        Src::Matmul => cuda::NATIVE_TYPES
            .iter()
            .map(|t| {
                vec![
                    ("WTYPE", t.id().to_string()),
                    ("MMV_SPLIT", "1".into()),
                    ("MMV_UNROLL", "4".into()),
                    ("MMV1_ROWS", "2".into()),
                    ("MMV1_UNROLL", "2".into()),
                    ("MMVQ_UNROLL", "2".into()),
                    ("MMVQ_R", "2".into()),
                ]
            })
            .collect(),
        Src::Attention => [64, 128, 256]
            .iter()
            .map(|d| vec![("D", d.to_string())])
            .collect(),
        Src::DeltaNet => [32, 64, 128, 256]
            .iter()
            .flat_map(|d| [2, 4, 8].map(|l| vec![("DK", d.to_string()), ("LPR", l.to_string())]))
            .collect(),
        _ => vec![vec![]],
    }
}

#[test]
fn every_kernel_compiles_for_sm90_and_sm120() {
    let archs = match supported_archs() {
        Ok(a) => a,
        Err(e) => {
            assert!(
                std::env::var_os("LLM_SERVER_REQUIRE_NVRTC").is_none(),
                "NVRTC required but not found: {e}"
            );
            eprintln!("skipped: no NVRTC ({e})");
            return;
        }
    };
    let jobs: Vec<Job> = Src::ALL
        .iter()
        .flat_map(|&s| variants(s).into_iter().map(move |v| (s, v)))
        .flat_map(|(s, v)| [90, 120].map(|a| (s, v.clone(), a)))
        .collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<_> = jobs.chunks(jobs.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let archs = &archs;
                scope.spawn(move || {
                    let mut bad = Vec::new();
                    for (src, defs, arch) in chunk {
                        let (name, _) = src.file();
                        match compile(name, &src.text(), defs, *arch) {
                            Ok(img) if img.bytes().is_empty() => {
                                bad.push(format!("{name} {defs:?} sm_{arch}: empty image"))
                            }
                            // Machine code exactly when NVRTC knows the architecture.
                            Ok(img) if matches!(img, Image::Cubin(_)) != archs.contains(arch) => {
                                bad.push(format!("{name} {defs:?} sm_{arch}: wrong image kind"))
                            }
                            Ok(img) => {
                                // For reading the machine code (registers, spills):
                                // cuobjdump --dump-resource-usage DIR/*.cubin.
                                if let Some(dir) = std::env::var_os("LLM_SERVER_CUBIN_DIR") {
                                    let tag: Vec<String> =
                                        defs.iter().map(|(k, v)| format!("{k}{v}")).collect();
                                    let file = format!("{name}-{}-sm{arch}.cubin", tag.join("-"));
                                    let _ = std::fs::write(
                                        std::path::Path::new(&dir).join(file),
                                        img.bytes(),
                                    );
                                }
                            }
                            Err(e) => bad.push(format!("{name} {defs:?} sm_{arch}: {e}")),
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a compile thread panicked".into()])
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} kernel modules compiled", jobs.len());
}
