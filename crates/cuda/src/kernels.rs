//! The kernel sources and their compiled modules: each `.cu` file of `kernels/` is compiled on
//! first use, once per variant (`-D` defines: the weight type of a matmul module, the head
//! width of an attention module), with `common.cuh` and `quant.cuh` in front of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::compile;
use crate::driver::{Func, Gpu, Module};
use crate::error::Result;

const COMMON: &str = include_str!("kernels/common.cuh");
const QUANT: &str = include_str!("kernels/quant.cuh");

/// A kernel source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    /// `matmul.cu` (variant: `WTYPE`).
    Matmul,
    /// `moe.cu`.
    Moe,
    /// `norm.cu`.
    Norm,
    /// `elementwise.cu`.
    Elementwise,
    /// `rope.cu`.
    Rope,
    /// `attention.cu` (variant: `D`).
    Attention,
    /// `deltanet.cu` (variant: `DK`).
    DeltaNet,
}

impl Src {
    /// Every source, for the compile test.
    pub const ALL: [Src; 7] = [
        Src::Matmul,
        Src::Moe,
        Src::Norm,
        Src::Elementwise,
        Src::Rope,
        Src::Attention,
        Src::DeltaNet,
    ];

    /// File name and text.
    pub fn file(self) -> (&'static str, &'static str) {
        match self {
            Src::Matmul => ("matmul.cu", include_str!("kernels/matmul.cu")),
            Src::Moe => ("moe.cu", include_str!("kernels/moe.cu")),
            Src::Norm => ("norm.cu", include_str!("kernels/norm.cu")),
            Src::Elementwise => ("elementwise.cu", include_str!("kernels/elementwise.cu")),
            Src::Rope => ("rope.cu", include_str!("kernels/rope.cu")),
            Src::Attention => ("attention.cu", include_str!("kernels/attention.cu")),
            Src::DeltaNet => ("deltanet.cu", include_str!("kernels/deltanet.cu")),
        }
    }

    /// The whole text NVRTC compiles: the shared headers, then the file.
    pub fn text(self) -> String {
        let (_, body) = self.file();
        format!("{COMMON}\n{QUANT}\n{body}")
    }
}

/// A variant: the `-D` defines a module is compiled with.
pub type Defines = Vec<(&'static str, String)>;

/// Compiled modules and their kernels, made on first use.
#[derive(Debug)]
pub(crate) struct Kernels {
    gpu: Arc<Gpu>,
    arch: i32,
    modules: Mutex<HashMap<(Src, Defines), Arc<Module>>>,
    funcs: Mutex<HashMap<(Src, Defines, &'static str), Func>>,
}

impl Kernels {
    pub(crate) fn new(gpu: Arc<Gpu>) -> Kernels {
        let arch = gpu.cc.0 * 10 + gpu.cc.1;
        Kernels {
            gpu,
            arch,
            modules: Mutex::default(),
            funcs: Mutex::default(),
        }
    }

    /// Kernel `name` of `src` compiled with `defines`.
    pub(crate) fn func(
        &self,
        src: Src,
        defines: &[(&'static str, String)],
        name: &'static str,
    ) -> Result<Func> {
        let key = (src, defines.to_vec(), name);
        if let Some(f) = lock(&self.funcs).get(&key) {
            return Ok(*f);
        }
        let module = self.module(src, defines)?;
        let f = module.func(name)?;
        lock(&self.funcs).insert(key, f);
        Ok(f)
    }

    fn module(&self, src: Src, defines: &[(&'static str, String)]) -> Result<Arc<Module>> {
        let key = (src, defines.to_vec());
        if let Some(m) = lock(&self.modules).get(&key) {
            return Ok(m.clone());
        }
        let (file, _) = src.file();
        let image = compile::compile_cached(
            file,
            &src.text(),
            defines,
            self.arch,
            self.gpu.driver_version,
        )?;
        let m = Arc::new(self.gpu.load_module(image.bytes())?);
        lock(&self.modules).insert(key, m.clone());
        Ok(m)
    }
}

/// Lock a mutex, taking the data even if a panicking thread poisoned it (the maps stay
/// consistent: inserts are single calls).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
