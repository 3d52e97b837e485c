//! The CUDA crate's errors.

/// What can go wrong finding, compiling for or running on a GPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A library or device is not there (the message says which and where it was looked for).
    #[error("{0}")]
    Missing(String),
    /// A driver or NVRTC call failed.
    #[error("{call} failed: {message}")]
    Driver {
        /// The API call.
        call: &'static str,
        /// The driver's words.
        message: String,
    },
    /// A kernel source did not compile.
    #[error("NVRTC could not compile {name} ({options}):\n{log}")]
    Compile {
        /// The source's name.
        name: String,
        /// The options given.
        options: String,
        /// The compiler's log.
        log: String,
    },
    /// A kernel is not in its module.
    #[error("kernel {name}: {message}")]
    Kernel {
        /// The kernel's name.
        name: String,
        /// What the driver said.
        message: String,
    },
    /// The device is out of memory.
    #[error("out of GPU memory: {wanted} bytes asked for, {free} of {total} free")]
    OutOfMemory {
        /// Bytes asked for.
        wanted: usize,
        /// Free bytes at the time.
        free: usize,
        /// The device's total.
        total: usize,
    },
    /// A weight type the kernels do not read.
    #[error("tensor {name:?}: type {ty} has no GPU kernel")]
    Unsupported {
        /// The tensor.
        name: String,
        /// Its type.
        ty: gguf::GgmlType,
    },
    /// Sizes that do not fit an operation (a caller's bug, reported).
    #[error("size mismatch: {0}")]
    Size(String),
}

/// Result with the CUDA crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
