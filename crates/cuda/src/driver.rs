//! The CUDA driver API, loaded at run time: the GPU's primary context and a stream, device and
//! pinned host memory, modules, launches, graphs and events.
//!
//! Nothing here links against CUDA: `cudarc` opens `libcuda.so.1` and NVRTC with `dlopen` on
//! first use. Before that, [`Gpu::open`] checks the libraries are there (cudarc would panic),
//! and preloads NVRTC from the usual toolkit folders when the loader path lacks it (a
//! library already loaded satisfies a later `dlopen` of its soname).

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUresult};

use crate::error::{Error, Result};

/// Turn a driver return code into a `Result`, naming the call.
pub(crate) fn check(r: CUresult, call: &'static str) -> Result<()> {
    if r == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    let msg = unsafe {
        match sys::cuGetErrorString(r, &mut s) {
            CUresult::CUDA_SUCCESS if !s.is_null() => {
                CStr::from_ptr(s).to_string_lossy().into_owned()
            }
            _ => format!("{r:?}"),
        }
    };
    Err(Error::Driver { call, message: msg })
}

/// Folders searched for NVRTC when the loader does not find it by name: `CUDA_HOME`,
/// `CUDA_PATH`, `LLM_SERVER_CUDA_LIBS`, the usual toolkit places, and the NVIDIA wheels of a
/// Python environment (`nvidia/cu13/lib`, `nvidia/cuda_nvrtc/lib`).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(extra) = std::env::var_os("LLM_SERVER_CUDA_LIBS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/nvidia/lib64",
    ] {
        dirs.push(PathBuf::from(d));
    }
    for site in python_site_dirs() {
        dirs.push(site.join("nvidia/cu13/lib"));
        dirs.push(site.join("nvidia/cuda_nvrtc/lib"));
    }
    dirs
}

/// `site-packages` folders of the Python environments usually present (a virtualenv, the
/// system's, PyTorch's), where NVIDIA's wheels put their libraries.
fn python_site_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["/usr/lib", "/usr/local/lib", "/opt/torch/.venv/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    let mut out = Vec::new();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python3") {
                out.push(e.path().join("site-packages"));
                out.push(e.path().join("dist-packages"));
            }
        }
    }
    out
}

/// `dlopen` `path` with `RTLD_GLOBAL`, keeping it loaded for the life of the process.
fn dlopen_global(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a plain dlopen of a file; the handle is leaked on purpose (the library stays).
    !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
}

/// Make NVRTC loadable by name: already on the loader path, or found in [`search_dirs`] and
/// preloaded (with its builtins library, which NVRTC itself opens by name).
fn preload_nvrtc() -> std::result::Result<(), String> {
    // SAFETY: probing with dlopen; nothing is called.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let dirs = search_dirs();
    for dir in &dirs {
        for major in ["13", "12"] {
            let lib = dir.join(format!("libnvrtc.so.{major}"));
            if !lib.exists() {
                continue;
            }
            // The builtins (libnvrtc-builtins.so.13.0 and the like) first.
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with(&format!("libnvrtc-builtins.so.{major}")) {
                        dlopen_global(&e.path());
                    }
                }
            }
            if dlopen_global(&lib) {
                return Ok(());
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "NVRTC (libnvrtc.so.13 or .12) not found on the loader path nor in {}; set \
         LLM_SERVER_CUDA_LIBS to its folder",
        searched.join(", ")
    ))
}

/// Find NVRTC (once per process) or say where it was looked for.
pub(crate) fn ensure_nvrtc() -> Result<()> {
    static FOUND: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(preload_nvrtc)
        .clone()
        .map_err(Error::Missing)
}

/// One GPU: its primary context and the stream everything runs on.
#[derive(Debug)]
pub struct Gpu {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    /// A second stream for work beside the main one (hybrid placement's RAM hand-offs),
    /// forked from and joined back to it with events (so graph capture follows it).
    side: sys::CUstream,
    /// `cuda:N`.
    pub ordinal: usize,
    /// The device's name (`NVIDIA H200`).
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Multiprocessors.
    pub sms: u32,
    /// The driver's CUDA version (`13000` for 13.0).
    pub driver_version: i32,
    /// The device takes 64-bit stream memory operations (waits on and writes to a word in
    /// pinned host memory: hybrid placement's polled hand-offs).
    pub(crate) memops64: bool,
    /// Per-kernel timing (`LLM_SERVER_CUDA_PROFILE=1`): every launch between two events.
    profile: Option<std::sync::Mutex<Profile>>,
}

/// Launches timed so far: pending event pairs, then totals by kernel name.
#[derive(Debug, Default)]
struct Profile {
    pending: Vec<(String, sys::CUevent, sys::CUevent)>,
    spare: Vec<sys::CUevent>,
    totals: std::collections::BTreeMap<String, (f64, u64)>,
}

// SAFETY: a context and a stream may be used from any thread once made current there; every
// entry point calls `bind` first.
unsafe impl Send for Gpu {}
// SAFETY: as above; the engine drives one forward at a time per backend (`Backend` callers
// hold the model behind a lock or on one thread).
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Open GPU `ordinal`: find the libraries, initialise the driver, retain the device's
    /// primary context and make a stream. Errors say which library or device is missing.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        // SAFETY: probing with dlopen; nothing is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Missing(
                "the NVIDIA driver library (libcuda.so.1) was not found: no NVIDIA driver \
                 on this machine"
                    .into(),
            ));
        }
        ensure_nvrtc()?;
        // SAFETY: driver calls with valid out-pointers; the context is retained for the life
        // of the process (the primary context is shared by every user of the device).
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            let mut count = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::Missing(format!(
                    "cuda:{ordinal} asked for, {count} CUDA device(s) found"
                )));
            }
            let mut dev = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
            let mut name = [0 as std::ffi::c_char; 256];
            check(
                sys::cuDeviceGetName(name.as_mut_ptr(), 256, dev),
                "cuDeviceGetName",
            )?;
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let attr = |a| -> Result<i32> {
                let mut v = 0;
                check(
                    sys::cuDeviceGetAttribute(&mut v, a, dev),
                    "cuDeviceGetAttribute",
                )?;
                Ok(v)
            };
            use sys::CUdevice_attribute as A;
            let cc = (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
            let memops64 =
                attr(A::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS).unwrap_or(0) != 0;
            let mut driver_version = 0;
            check(
                sys::cuDriverGetVersion(&mut driver_version),
                "cuDriverGetVersion",
            )?;
            // How a host thread waits for the GPU (`LLM_SERVER_CUDA_SCHED`: auto, spin, yield
            // or block): with experts in RAM the worker pool wants every core while the main
            // thread waits.
            let sched = match std::env::var("LLM_SERVER_CUDA_SCHED").as_deref() {
                Ok("spin") => 1,
                Ok("yield") => 2,
                Ok("block") => 4,
                _ => 0,
            };
            if sched != 0 {
                // Ignored where the context is already active (another user of the device).
                let _ = sys::cuDevicePrimaryCtxSetFlags_v2(dev, sched);
            }
            let mut ctx = std::ptr::null_mut();
            check(
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
                "cuDevicePrimaryCtxRetain",
            )?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut stream = std::ptr::null_mut();
            // A non-blocking stream: no implicit sync with the legacy default stream.
            check(sys::cuStreamCreate(&mut stream, 1), "cuStreamCreate")?;
            let mut side = std::ptr::null_mut();
            check(sys::cuStreamCreate(&mut side, 1), "cuStreamCreate")?;
            let profile = std::env::var_os("LLM_SERVER_CUDA_PROFILE")
                .is_some_and(|v| v != "0")
                .then(Default::default);
            Ok(Arc::new(Gpu {
                ctx,
                stream,
                side,
                ordinal,
                name,
                cc,
                sms,
                driver_version,
                memops64,
                profile,
            }))
        }
    }

    /// How host threads wait for the GPU, unless `LLM_SERVER_CUDA_SCHED` chose: with experts
    /// in RAM the worker pool needs every core while the main thread waits (decode on the
    /// 35B-A3B, 16 GB emulated: spinning 67.7, yielding 78.3 tok/s with host-function
    /// hand-offs; with the polled hand-off yielding 96.4, blocking 99.2 — BENCHMARKS.md
    /// 2026-12-02, third and fourth sessions).
    pub(crate) fn prefer_sched(&self, s: Sched) -> Result<()> {
        if std::env::var_os("LLM_SERVER_CUDA_SCHED").is_some() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the context is current; 2 = CU_CTX_SCHED_YIELD, 4 = CU_CTX_SCHED_BLOCKING_SYNC.
        check(unsafe { sys::cuCtxSetFlags(s as u32) }, "cuCtxSetFlags")
    }

    /// Make the context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: the context is alive (retained in `open`).
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    /// Wait for everything queued on the streams.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: live streams.
        check(
            unsafe { sys::cuStreamSynchronize(self.side) },
            "cuStreamSynchronize",
        )?;
        // SAFETY: as above.
        check(
            unsafe { sys::cuStreamSynchronize(self.stream) },
            "cuStreamSynchronize",
        )
    }

    /// Let the side stream go on from here: it waits for what the main stream queued so far
    /// (`e` records the point).
    pub(crate) fn fork(&self, e: &Event) -> Result<()> {
        // SAFETY: live event and streams.
        unsafe {
            check(sys::cuEventRecord(e.e, self.stream), "cuEventRecord")?;
            check(
                sys::cuStreamWaitEvent(self.side, e.e, 0),
                "cuStreamWaitEvent",
            )
        }
    }

    /// Make the main stream wait for what the side stream queued so far (`e` records it).
    pub(crate) fn join(&self, e: &Event) -> Result<()> {
        // SAFETY: live event and streams.
        unsafe {
            check(sys::cuEventRecord(e.e, self.side), "cuEventRecord")?;
            check(
                sys::cuStreamWaitEvent(self.stream, e.e, 0),
                "cuStreamWaitEvent",
            )
        }
    }

    /// Copy `bytes` from device address `src` to host address `dst` on the side stream.
    ///
    /// # Safety
    /// Both ranges must hold `bytes` and stay alive until the side stream passes the copy.
    pub(crate) unsafe fn dtoh_side(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, self.side) },
            "cuMemcpyDtoHAsync",
        )
    }

    /// Copy `bytes` between device addresses on the side stream.
    ///
    /// # Safety
    /// As for [`Gpu::dtoh_side`].
    pub(crate) unsafe fn dtod_side(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.side) },
            "cuMemcpyDtoDAsync",
        )
    }

    /// Record `e` on the main stream (what is queued there so far).
    pub(crate) fn mark_main(&self, e: &Event) -> Result<()> {
        // SAFETY: live event and stream.
        check(
            unsafe { sys::cuEventRecord(e.e, self.stream) },
            "cuEventRecord",
        )
    }

    /// Make the side stream wait for `e`'s last record.
    pub(crate) fn side_waits(&self, e: &Event) -> Result<()> {
        // SAFETY: live event and stream.
        check(
            unsafe { sys::cuStreamWaitEvent(self.side, e.e, 0) },
            "cuStreamWaitEvent",
        )
    }

    /// Pin `bytes` of host memory at `ptr` in place for the device's copies
    /// (`cuMemHostRegister`; read-only where the driver allows it, so a read-only file mapping
    /// can be pinned): copies from it run asynchronously at the bus's speed instead of through
    /// the driver's bounce buffer. Unpinned when the result drops.
    ///
    /// # Safety
    /// The range must stay mapped until the result is dropped.
    pub(crate) unsafe fn pin(self: &Arc<Self>, ptr: *const u8, bytes: usize) -> Result<Pinned> {
        self.bind()?;
        let mut r = sys::CUresult::CUDA_ERROR_NOT_SUPPORTED;
        // 8 = CU_MEMHOSTREGISTER_READ_ONLY, then 0 (drivers or devices without it).
        for flags in [8, 0] {
            // SAFETY: as the caller vouches.
            r = unsafe { sys::cuMemHostRegister_v2(ptr as *mut c_void, bytes, flags) };
            if r == sys::CUresult::CUDA_SUCCESS {
                break;
            }
        }
        check(r, "cuMemHostRegister")?;
        Ok(Pinned {
            ptr: ptr as *mut u8,
            gpu: self.clone(),
        })
    }

    /// Copy `bytes` from host address `src` to device address `dst` on the side stream.
    ///
    /// # Safety
    /// As for [`Gpu::dtoh_side`].
    pub(crate) unsafe fn htod_side(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, self.side) },
            "cuMemcpyHtoDAsync",
        )
    }

    /// Run `f(data)` on a driver thread when the side stream gets there (the stream waits for
    /// it to return). Captured into a graph, it runs at each replay.
    ///
    /// # Safety
    /// `data` must stay valid for as long as the call (or a graph holding it) can run; `f`
    /// must not call the CUDA API and must not unwind.
    pub(crate) unsafe fn host_fn_side(
        &self,
        f: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuLaunchHostFunc(self.side, Some(f), data) },
            "cuLaunchHostFunc",
        )
    }

    /// Write `value` to the 64-bit word at `addr` (device address of pinned host memory) on
    /// the side stream once the work before it is done (its writes visible first).
    ///
    /// # Safety
    /// `addr` must stay valid while the stream (or a graph holding the write) can run it.
    pub(crate) unsafe fn write_value_side(&self, addr: u64, value: u64) -> Result<()> {
        // A driver without the symbol makes cudarc panic: an error here instead.
        let r = std::panic::catch_unwind(|| {
            // SAFETY: as the caller vouches; flags 0 = CU_STREAM_WRITE_VALUE_DEFAULT.
            unsafe { sys::cuStreamWriteValue64_v2(self.side, addr, value, 0) }
        });
        check(
            r.unwrap_or(sys::CUresult::CUDA_ERROR_NOT_SUPPORTED),
            "cuStreamWriteValue64",
        )
    }

    /// Make the side stream wait until the 64-bit word at `addr` equals `value`.
    ///
    /// # Safety
    /// As for [`Gpu::write_value_side`]; something must write `value` there, or the stream
    /// never goes on.
    pub(crate) unsafe fn wait_value_side(&self, addr: u64, value: u64) -> Result<()> {
        let r = std::panic::catch_unwind(|| {
            // SAFETY: as the caller vouches; 1 = CU_STREAM_WAIT_VALUE_EQ.
            unsafe { sys::cuStreamWaitValue64_v2(self.side, addr, value, 1) }
        });
        check(
            r.unwrap_or(sys::CUresult::CUDA_ERROR_NOT_SUPPORTED),
            "cuStreamWaitValue64",
        )
    }

    /// The device address of pinned host memory.
    pub(crate) fn host_device_ptr(&self, h: &HostBuf) -> Result<u64> {
        self.bind()?;
        let mut d = 0;
        // SAFETY: `h` was allocated by cuMemHostAlloc in this context (mapped under UVA).
        check(
            unsafe { sys::cuMemHostGetDevicePointer_v2(&mut d, h.ptr.cast(), 0) },
            "cuMemHostGetDevicePointer",
        )?;
        Ok(d)
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0, 0);
        // SAFETY: valid out-pointers.
        check(
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) },
            "cuMemGetInfo",
        )?;
        Ok((free, total))
    }

    /// `cuda:N (name, sm_XY)`.
    pub fn describe(&self) -> String {
        format!(
            "cuda:{} ({}, sm_{}{})",
            self.ordinal, self.name, self.cc.0, self.cc.1
        )
    }

    /// Allocate `bytes` of device memory (at least one byte is asked of the driver).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DevBuf> {
        self.bind()?;
        let mut ptr = 0;
        // SAFETY: valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(1)) };
        if r == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            return Err(Error::OutOfMemory {
                wanted: bytes,
                free,
                total,
            });
        }
        check(r, "cuMemAlloc")?;
        Ok(DevBuf {
            ptr,
            bytes,
            gpu: self.clone(),
        })
    }

    /// Copy `src` to device address `dst`, queued on the stream (`src` must stay alive and
    /// unchanged until the stream passes the copy: pinned buffers, or a sync after).
    ///
    /// # Safety
    /// `dst` must have room for `src`.
    pub(crate) unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: the caller vouches for `dst`; `src` is a live slice.
        check(
            unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), self.stream) },
            "cuMemcpyHtoDAsync",
        )
    }

    /// Copy `dst.len()` bytes from device address `src`, queued on the stream.
    ///
    /// # Safety
    /// `src` must hold `dst.len()` bytes; `dst` must stay alive until the stream passes.
    pub(crate) unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), src, dst.len(), self.stream)
            },
            "cuMemcpyDtoHAsync",
        )
    }

    /// Copy `bytes` between device addresses, queued on the stream.
    ///
    /// # Safety
    /// Both ranges must be allocated.
    pub(crate) unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream) },
            "cuMemcpyDtoDAsync",
        )
    }

    /// Set `bytes` at `dst` to `value`, queued on the stream.
    ///
    /// # Safety
    /// The range must be allocated.
    pub(crate) unsafe fn memset(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        // SAFETY: as the caller vouches.
        check(
            unsafe { sys::cuMemsetD8Async(dst, value, bytes, self.stream) },
            "cuMemsetD8Async",
        )
    }

    /// Load a compiled module (cubin or PTX).
    pub(crate) fn load_module(&self, image: &[u8]) -> Result<Module> {
        self.bind()?;
        let mut m = std::ptr::null_mut();
        // The driver reads a NUL-terminated PTX string or a cubin image.
        let mut owned = image.to_vec();
        owned.push(0);
        // SAFETY: a valid image pointer for the call.
        check(
            unsafe { sys::cuModuleLoadData(&mut m, owned.as_ptr().cast()) },
            "cuModuleLoadData",
        )?;
        Ok(Module { m })
    }

    /// Launch `f` on the stream. `args` points at each parameter's value, in order.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, size and order, and every
    /// pointer passed must be valid for what the kernel does with it.
    pub(crate) unsafe fn launch(
        &self,
        f: &Func,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let timed = self.profile.as_ref().map(|p| {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            let mut ev = || {
                p.spare.pop().unwrap_or_else(|| {
                    let mut e = std::ptr::null_mut();
                    // SAFETY: valid out-pointer; default flags (timing on).
                    unsafe { sys::cuEventCreate(&mut e, 0) };
                    e
                })
            };
            let (a, b) = (ev(), ev());
            // SAFETY: live events and stream.
            unsafe { sys::cuEventRecord(a, self.stream) };
            (a, b)
        });
        // SAFETY: as the caller vouches.
        let r = check(
            unsafe {
                sys::cuLaunchKernel(
                    f.f,
                    grid.0,
                    grid.1,
                    grid.2,
                    block.0,
                    block.1,
                    block.2,
                    smem,
                    self.stream,
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            f.name,
        );
        if let (Some((a, b)), Some(p)) = (timed, &self.profile) {
            // SAFETY: live event and stream.
            unsafe { sys::cuEventRecord(b, self.stream) };
            p.lock().unwrap_or_else(|e| e.into_inner()).pending.push((
                format!("{} {}x{}x{}", f.name, grid.0, grid.1, grid.2),
                a,
                b,
            ));
        }
        r
    }

    /// Whether launches are being timed (`LLM_SERVER_CUDA_PROFILE=1`; graphs are then off).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Time per kernel and grid since the last call (ms, launches), after waiting for the
    /// stream.
    pub fn profile_report(&self) -> Result<Vec<(String, f64, u64)>> {
        let Some(p) = &self.profile else {
            return Ok(Vec::new());
        };
        self.sync()?;
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        for (name, a, b) in std::mem::take(&mut p.pending) {
            let mut ms = 0f32;
            // SAFETY: both events recorded on the stream, which has finished.
            unsafe { sys::cuEventElapsedTime_v2(&mut ms, a, b) };
            let t = p.totals.entry(name).or_default();
            t.0 += ms as f64;
            t.1 += 1;
            p.spare.extend([a, b]);
        }
        let out = std::mem::take(&mut p.totals)
            .into_iter()
            .map(|(n, (ms, c))| (n, ms, c))
            .collect();
        Ok(out)
    }

    /// Start recording the stream's work into a graph (nothing runs until it is launched).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        // SAFETY: a live stream. Relaxed mode: other threads' unsafe calls are not this
        // capture's business.
        check(
            unsafe {
                sys::cuStreamBeginCapture_v2(
                    self.stream,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
                )
            },
            "cuStreamBeginCapture",
        )
    }

    /// Stop recording and instantiate what was recorded.
    pub(crate) fn end_capture(&self) -> Result<Graph> {
        let mut g = std::ptr::null_mut();
        // SAFETY: the stream is capturing (begin_capture).
        check(
            unsafe { sys::cuStreamEndCapture(self.stream, &mut g) },
            "cuStreamEndCapture",
        )?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: `g` is the graph just captured.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, g, 0) };
        // SAFETY: the executable graph keeps what it needs; the template can go.
        unsafe { sys::cuGraphDestroy(g) };
        check(r, "cuGraphInstantiate")?;
        Ok(Graph { exec })
    }

    /// Replay a graph on the stream.
    pub(crate) fn launch_graph(&self, g: &Graph) -> Result<()> {
        // SAFETY: a live executable graph.
        check(
            unsafe { sys::cuGraphLaunch(g.exec, self.stream) },
            "cuGraphLaunch",
        )
    }

    /// Pinned (page-locked) host memory of `bytes`.
    pub(crate) fn alloc_host(self: &Arc<Self>, bytes: usize) -> Result<HostBuf> {
        self.bind()?;
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 = portable off, plain pinned memory.
        check(
            unsafe { sys::cuMemHostAlloc(&mut p, bytes.max(1), 0) },
            "cuMemHostAlloc",
        )?;
        Ok(HostBuf {
            ptr: p.cast(),
            bytes,
            gpu: self.clone(),
        })
    }

    /// An event for ordering only (no timing: cheaper, and what graph capture wants).
    pub(crate) fn order_event(self: &Arc<Self>) -> Result<Event> {
        self.bind()?;
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out-pointer; 2 = CU_EVENT_DISABLE_TIMING.
        check(unsafe { sys::cuEventCreate(&mut e, 2) }, "cuEventCreate")?;
        Ok(Event {
            e,
            gpu: self.clone(),
        })
    }

    /// A timing event.
    pub fn event(self: &Arc<Self>) -> Result<Event> {
        self.bind()?;
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out-pointer; default flags (timing on).
        check(unsafe { sys::cuEventCreate(&mut e, 0) }, "cuEventCreate")?;
        Ok(Event {
            e,
            gpu: self.clone(),
        })
    }
}

/// Device memory, freed on drop.
#[derive(Debug)]
pub struct DevBuf {
    ptr: u64,
    bytes: usize,
    gpu: Arc<Gpu>,
}

impl DevBuf {
    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Its size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Copy `data` into the start of the buffer and wait for it.
    pub fn upload(&self, data: &[u8]) -> Result<()> {
        if data.len() > self.bytes {
            return Err(Error::Size(format!(
                "upload of {} bytes into {}",
                data.len(),
                self.bytes
            )));
        }
        self.gpu.bind()?;
        // SAFETY: the buffer holds `data.len()` bytes; the sync keeps `data` alive long enough.
        unsafe { self.gpu.htod(self.ptr, data)? };
        self.gpu.sync()
    }

    /// Read the first `out.len()` bytes back (waits for the stream).
    pub fn download(&self, out: &mut [u8]) -> Result<()> {
        if out.len() > self.bytes {
            return Err(Error::Size(format!(
                "download of {} bytes from {}",
                out.len(),
                self.bytes
            )));
        }
        self.gpu.bind()?;
        // SAFETY: in range; synced before `out` is used.
        unsafe { self.gpu.dtoh(out, self.ptr)? };
        self.gpu.sync()
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: allocated by cuMemAlloc, freed once. Errors at drop are ignored.
            unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

// SAFETY: a device address; the driver serialises frees.
unsafe impl Send for DevBuf {}
// SAFETY: as above.
unsafe impl Sync for DevBuf {}

/// Pinned host memory, freed on drop.
/// How a host thread waits for the GPU (the context's scheduling flag).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sched {
    Yield = 2,
    Block = 4,
}

/// Host memory pinned in place ([`Gpu::pin`]).
#[derive(Debug)]
pub(crate) struct Pinned {
    ptr: *mut u8,
    gpu: Arc<Gpu>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: registered by `pin`, unregistered once.
            unsafe { sys::cuMemHostUnregister(self.ptr.cast()) };
        }
    }
}

// SAFETY: only the address is kept, to unregister it.
unsafe impl Send for Pinned {}
// SAFETY: as above.
unsafe impl Sync for Pinned {}

#[derive(Debug)]
pub(crate) struct HostBuf {
    ptr: *mut u8,
    bytes: usize,
    gpu: Arc<Gpu>,
}

impl HostBuf {
    /// The bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `bytes` bytes allocated by cuMemHostAlloc, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    /// Its size.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Its address (for copies and host functions the streams order).
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: allocated by cuMemHostAlloc, freed once.
            unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
        }
    }
}

// SAFETY: plain host memory owned by the value.
unsafe impl Send for HostBuf {}
// SAFETY: shared access is read-only through `&self` (none offered).
unsafe impl Sync for HostBuf {}

/// A loaded module.
#[derive(Debug)]
pub(crate) struct Module {
    m: sys::CUmodule,
}

// SAFETY: module handles are context-wide.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// The kernel `name` (an `extern "C"` function of the source).
    pub(crate) fn func(&self, name: &'static str) -> Result<Func> {
        let c = CString::new(name).map_err(|_| Error::Size(format!("kernel name {name:?}")))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: a live module and a NUL-terminated name.
        check(
            unsafe { sys::cuModuleGetFunction(&mut f, self.m, c.as_ptr()) },
            "cuModuleGetFunction",
        )
        .map_err(|e| Error::Kernel {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok(Func { f, name })
    }
}

/// A kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Func {
    f: sys::CUfunction,
    name: &'static str,
}

impl Func {
    /// Let the kernel use up to `bytes` of dynamic shared memory (past the 48 KB default).
    pub(crate) fn set_max_smem(&self, bytes: u32) -> Result<()> {
        // SAFETY: a live function handle.
        check(
            unsafe {
                sys::cuFuncSetAttribute(
                    self.f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
            },
            "cuFuncSetAttribute",
        )
    }
}

// SAFETY: function handles are context-wide.
unsafe impl Send for Func {}
// SAFETY: as above.
unsafe impl Sync for Func {}

/// An instantiated graph.
#[derive(Debug)]
pub struct Graph {
    exec: sys::CUgraphExec,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once.
        unsafe { sys::cuGraphExecDestroy(self.exec) };
    }
}

// SAFETY: an executable graph is a context-wide handle.
unsafe impl Send for Graph {}

/// A timing event.
#[derive(Debug)]
pub struct Event {
    e: sys::CUevent,
    gpu: Arc<Gpu>,
}

impl Event {
    /// Record on the stream.
    pub fn record(&self) -> Result<()> {
        // SAFETY: live event and stream.
        check(
            unsafe { sys::cuEventRecord(self.e, self.gpu.stream) },
            "cuEventRecord",
        )
    }

    /// Milliseconds from `start` to this event (both recorded; waits for this one).
    pub fn since(&self, start: &Event) -> Result<f32> {
        // SAFETY: live events.
        unsafe {
            check(sys::cuEventSynchronize(self.e), "cuEventSynchronize")?;
            let mut ms = 0f32;
            check(
                sys::cuEventElapsedTime_v2(&mut ms, start.e, self.e),
                "cuEventElapsedTime",
            )?;
            Ok(ms)
        }
    }
}

// SAFETY: an event is a context-wide handle; recording and waiting are thread-safe in the
// driver.
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { sys::cuEventDestroy_v2(self.e) };
    }
}
