//! Kernel sources compiled at run time by NVRTC for the GPU found, and cached on disk.
//!
//! A module's cache key hashes its source, its options (the `-D` variant defines and the
//! target), the NVRTC version and the driver version, so a changed kernel, a new GPU or a new
//! driver never loads a stale binary. The target is the GPU's own `sm_XY` when NVRTC knows it
//! (a cubin, loaded as is); otherwise the newest `compute_XY` NVRTC has (PTX, which the driver
//! compiles for the GPU at load). Nothing needs a GPU but the load: [`compile`] runs anywhere
//! NVRTC is, which is how CI checks every kernel builds for sm_90 and sm_120.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys::{self, nvrtcResult};

use crate::error::{Error, Result};

/// What NVRTC produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// Machine code for one GPU.
    Cubin(Vec<u8>),
    /// PTX text, compiled by the driver at load.
    Ptx(Vec<u8>),
}

impl Image {
    /// The bytes to hand to the driver.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Image::Cubin(b) | Image::Ptx(b) => b,
        }
    }
}

fn nv(r: nvrtcResult, call: &'static str) -> Result<()> {
    match r {
        nvrtcResult::NVRTC_SUCCESS => Ok(()),
        e => Err(Error::Driver {
            call,
            message: format!("{e:?}"),
        }),
    }
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    crate::driver::ensure_nvrtc()?;
    let (mut a, mut b) = (0, 0);
    // SAFETY: valid out-pointers.
    nv(unsafe { sys::nvrtcVersion(&mut a, &mut b) }, "nvrtcVersion")?;
    Ok((a, b))
}

/// The `sm_XY` numbers NVRTC can build machine code for (`[75, 80, …, 120]`).
pub fn supported_archs() -> Result<Vec<i32>> {
    crate::driver::ensure_nvrtc()?;
    let mut n = 0;
    // SAFETY: valid out-pointers, the array sized from the count.
    unsafe {
        nv(
            sys::nvrtcGetNumSupportedArchs(&mut n),
            "nvrtcGetNumSupportedArchs",
        )?;
        let mut v = vec![0; n.max(0) as usize];
        nv(
            sys::nvrtcGetSupportedArchs(v.as_mut_ptr()),
            "nvrtcGetSupportedArchs",
        )?;
        Ok(v)
    }
}

/// The target option for a GPU of compute capability `arch` (e.g. 90): `sm_90` as a cubin if
/// NVRTC knows it, else PTX for the newest architecture it knows below.
pub fn target_for(arch: i32) -> Result<(String, bool)> {
    let archs = supported_archs()?;
    if archs.contains(&arch) {
        return Ok((format!("--gpu-architecture=sm_{arch}"), true));
    }
    let best = archs
        .iter()
        .copied()
        .filter(|&a| a <= arch)
        .max()
        .ok_or_else(|| {
            Error::Missing(format!(
                "this NVRTC knows no architecture at or below sm_{arch} (it knows {archs:?})"
            ))
        })?;
    Ok((format!("--gpu-architecture=compute_{best}"), false))
}

/// Options every kernel is built with: flush denormals to zero (DESIGN §6: decays multiplied
/// over a chunk underflow into denormals), fused multiply-adds, C++17.
const BASE_OPTIONS: &[&str] = &["-ftz=true", "--fmad=true", "-std=c++17", "-default-device"];

/// Compile `src` (called `name` in messages) for `arch` with `defines`.
pub fn compile(name: &str, src: &str, defines: &[(&str, String)], arch: i32) -> Result<Image> {
    crate::driver::ensure_nvrtc()?;
    let (target, cubin) = target_for(arch)?;
    let mut opts: Vec<String> = BASE_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(target);
    opts.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
    let c_src = CString::new(src).map_err(|_| Error::Size(format!("{name}: NUL in source")))?;
    let c_name = CString::new(name).map_err(|_| Error::Size(format!("{name}: NUL in name")))?;
    let c_opts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).unwrap_or_default())
        .collect();
    let ptrs: Vec<*const std::ffi::c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog = std::ptr::null_mut();
    // SAFETY: NVRTC calls with live C strings; the program is destroyed on every path.
    unsafe {
        nv(
            sys::nvrtcCreateProgram(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "nvrtcCreateProgram",
        )?;
        let r = sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
        let out = if r != nvrtcResult::NVRTC_SUCCESS {
            Err(Error::Compile {
                name: name.to_string(),
                options: opts.join(" "),
                log: program_log(prog),
            })
        } else if cubin {
            let mut n = 0;
            nv(sys::nvrtcGetCUBINSize(prog, &mut n), "nvrtcGetCUBINSize").and_then(|_| {
                let mut v = vec![0u8; n];
                nv(
                    sys::nvrtcGetCUBIN(prog, v.as_mut_ptr().cast()),
                    "nvrtcGetCUBIN",
                )?;
                Ok(Image::Cubin(v))
            })
        } else {
            let mut n = 0;
            nv(sys::nvrtcGetPTXSize(prog, &mut n), "nvrtcGetPTXSize").and_then(|_| {
                let mut v = vec![0u8; n];
                nv(sys::nvrtcGetPTX(prog, v.as_mut_ptr().cast()), "nvrtcGetPTX")?;
                // Drop the terminating NUL; the loader adds its own.
                while v.last() == Some(&0) {
                    v.pop();
                }
                Ok(Image::Ptx(v))
            })
        };
        sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

/// The compiler's messages for `prog`.
///
/// # Safety
/// `prog` must be a live program.
unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut n = 0;
    // SAFETY: as the caller vouches; the buffer is sized from the call before.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut n) != nvrtcResult::NVRTC_SUCCESS || n == 0 {
            return String::new();
        }
        let mut v = vec![0u8; n];
        if sys::nvrtcGetProgramLog(prog, v.as_mut_ptr().cast()) != nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        CStr::from_bytes_until_nul(&v)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The cache folder: `LLM_SERVER_CUDA_CACHE`, else `$XDG_CACHE_HOME/llm-server/cuda`, else
/// `~/.cache/llm-server/cuda`; `None` (no caching) if none can be made.
fn cache_dir() -> Option<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("LLM_SERVER_CUDA_CACHE") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("llm-server/cuda")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache/llm-server/cuda")
    };
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// FNV-1a over `parts`, twice with different offsets: a 128-bit key (not cryptographic; it
/// names cache files).
fn key(parts: &[&[u8]]) -> String {
    let mut out = String::new();
    for seed in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142] {
        let mut h = seed;
        for p in parts {
            for &b in p.iter().chain(&[0xff]) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// [`compile`] through the disk cache, for a GPU of `arch` under driver `driver_version`.
pub fn compile_cached(
    name: &str,
    src: &str,
    defines: &[(&str, String)],
    arch: i32,
    driver_version: i32,
) -> Result<Image> {
    let (maj, min) = nvrtc_version()?;
    let defs: String = defines.iter().map(|(k, v)| format!("{k}={v};")).collect();
    let meta = format!("arch {arch} nvrtc {maj}.{min} driver {driver_version} {BASE_OPTIONS:?}");
    let k = key(&[
        name.as_bytes(),
        src.as_bytes(),
        defs.as_bytes(),
        meta.as_bytes(),
    ]);
    let dir = cache_dir();
    if let Some(dir) = &dir {
        for (ext, cubin) in [("cubin", true), ("ptx", false)] {
            if let Ok(b) = std::fs::read(dir.join(format!("{name}-{k}.{ext}"))) {
                return Ok(if cubin {
                    Image::Cubin(b)
                } else {
                    Image::Ptx(b)
                });
            }
        }
    }
    let img = compile(name, src, defines, arch)?;
    if let Some(dir) = &dir {
        let ext = match img {
            Image::Cubin(_) => "cubin",
            Image::Ptx(_) => "ptx",
        };
        // Written under a temporary name and renamed, so a reader never sees half a file.
        let tmp = dir.join(format!(".{name}-{k}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, img.bytes()).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(format!("{name}-{k}.{ext}")));
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_with_every_part() {
        let a = key(&[b"a", b"b"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, key(&[b"ab", b""]));
        assert_ne!(a, key(&[b"a", b"c"]));
        assert_eq!(a, key(&[b"a", b"b"]));
    }
}
