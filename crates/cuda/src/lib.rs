//! The GPU backend: the engine's [`Backend`](engine::Backend) on an NVIDIA GPU through CUDA.
//!
//! Nothing is linked at build time: the driver (`libcuda.so.1`) and NVRTC are opened at run
//! time ([`Gpu::open`] says plainly which is missing), and the kernels — `.cu` files in
//! `src/kernels/`, one per op family — are compiled by NVRTC for the GPU found on first use
//! and cached on disk ([`compile`]). So the crate builds and its non-GPU tests run on a
//! machine with no toolkit and no GPU.
//!
//! - [`Cuda`]: the backend (weights uploaded in their GGUF types, activations from a pool,
//!   the KV cache and DeltaNet state as device buffers, decode steps replayed as graphs).
//! - [`load`]: a model file onto a GPU, ready for the engine's `Model` interface.
//!
//! The crate sits above `engine` (it implements the engine's trait; the models never see it),
//! which DESIGN §6 draws as `engine ← cuda`.
//!
//! ```no_run
//! let file = std::sync::Arc::new(gguf::GgufFile::open("model.gguf")?);
//! let model = cuda::load(file, 0)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub use backend::{
    Cuda, CudaAct, CudaIndex, CudaLayer, CudaMat, CudaSeq, CudaStep, CudaVec, NATIVE_TYPES,
    Q8_TYPES,
};
pub use driver::{DevBuf, Event, Gpu};
pub use error::{Error, Result};
pub use hybrid::{take_host_stats, HostStats, Placement};
pub use kernels::Src;

mod backend;
pub mod compile;
mod driver;
mod error;
mod hybrid;
mod kernels;
mod ops;
mod pool;

use std::sync::Arc;

/// Open GPU `ordinal` and load the model in `file` onto it.
pub fn load(
    file: Arc<gguf::GgufFile>,
    ordinal: usize,
) -> std::result::Result<Box<dyn engine::Model>, engine::Error> {
    let b = Cuda::open(ordinal)?;
    engine::load_on(file, b)
}
