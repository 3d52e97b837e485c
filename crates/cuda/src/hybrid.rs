//! Hybrid placement (DESIGN §3): the experts of a MoE layer placed one by one, some on the GPU
//! and the rest in RAM, and a MoE call that runs both sides at once.
//!
//! A [`Placement`] given to the backend before the model loads says, per stacked expert
//! tensor, which experts stay in RAM. Such a tensor keeps only its GPU experts on the device
//! (packed, in slot order) with a map from expert id to slot (−1: in RAM), and keeps the whole
//! tensor in RAM for the worker pool. In a MoE call the top-k kernel writes each pair's slot
//! beside its expert id; the GPU's expert products skip pairs whose slot is −1 (their rows
//! are 0). Beside them, on a second stream forked after the routing, the pairs, their weights
//! and the layer's input go to pinned host memory, the worker pool computes the RAM experts'
//! weighted sum, and a copy brings it back; the main stream joins the side stream before the
//! sum is added with the rest. The pool is handed the job by a 64-bit write to a word of
//! pinned memory that a thread of ours spins on, and the stream waits on a word that thread
//! writes back ([`Handoff::Poll`]; a host function run by the driver's thread where the device
//! lacks those memory operations). One hand-off each way per layer, nothing waited for on the
//! host — so a decode step with RAM experts is still recorded once as a CUDA graph and
//! replayed. A batch instead streams each expert tensor whole to the GPU, its RAM experts
//! from pinned pages, double-buffered ([`Cuda::stream_experts`]).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::backend::experts_sum;
use engine::{Exec, QTensor};

use crate::backend::{Cuda, CudaAct, CudaMat};
use crate::driver::{DevBuf, Event, HostBuf, Pinned};
use crate::error::{Error, Result};
use crate::kernels::lock;

/// Which experts of which stacked expert tensors stay in RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// By GGUF tensor name (`blk.N.ffn_{gate,up,down}_exps.weight`): per expert, `true` where it
    /// stays in RAM. A tensor not named here is wholly on the GPU.
    pub in_ram: HashMap<String, Vec<bool>>,
}

impl Placement {
    /// Experts kept in RAM, over all tensors.
    pub fn n_in_ram(&self) -> usize {
        self.in_ram
            .values()
            .map(|v| v.iter().filter(|&&b| b).count())
            .sum()
    }
}

/// The RAM side of a stacked expert tensor under hybrid placement.
#[derive(Debug)]
pub(crate) struct HostExperts {
    /// The RAM experts' bytes pinned in place, run by run (whole pages inside each run; none
    /// where the driver refused: copies from there go through its bounce buffer). Declared
    /// first so it is unpinned before the tensor's mapping can go.
    pinned: Vec<Pinned>,
    /// The whole tensor, in RAM.
    pub(crate) tensor: QTensor,
    /// Per expert its slot on the GPU, or −1.
    pub(crate) slot: Vec<i32>,
    /// The same on the device (read by `topk`).
    pub(crate) slot_dev: DevBuf,
}

/// How a MoE layer's RAM side is handed to the worker pool and back
/// (`LLM_SERVER_HYBRID_HANDOFF`: `hostfn` or `poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handoff {
    /// A host function on the side stream (`cuLaunchHostFunc`): the driver's callback thread
    /// runs the job when the stream gets there.
    HostFn,
    /// A 64-bit write to a word of pinned memory that a thread of ours spins on, and a stream
    /// wait on another word the thread writes back ([`Listener`]): no driver thread to wake.
    Poll,
}

impl Handoff {
    /// Poll where the device takes 64-bit stream memory operations, unless
    /// `LLM_SERVER_HYBRID_HANDOFF=hostfn` (decode 84.3 → 96.4 tok/s on the 35B-A3B, 16 GB
    /// emulated, BENCHMARKS.md 2026-12-02 fourth session).
    pub(crate) fn from_env(memops64: bool) -> Handoff {
        match std::env::var("LLM_SERVER_HYBRID_HANDOFF").as_deref() {
            Ok("hostfn") => Handoff::HostFn,
            _ if memops64 => Handoff::Poll,
            _ => Handoff::HostFn,
        }
    }
}

/// Totals of the RAM side since the last [`take_host_stats`]: jobs run, nanoseconds spent in
/// them, expert bytes they read (each RAM expert a job used, once).
static HOST_JOBS: AtomicU64 = AtomicU64::new(0);
static HOST_NS: AtomicU64 = AtomicU64::new(0);
static HOST_BYTES: AtomicU64 = AtomicU64::new(0);

/// What the RAM side did since the last call (for `bench`'s per-token breakdown).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostStats {
    /// Jobs run (one per MoE layer a forward).
    pub jobs: u64,
    /// Time inside them (the pool computing, the copies between staging and result).
    pub busy: Duration,
    /// Expert weight bytes they read.
    pub bytes: u64,
}

/// The RAM side's totals since the last call, and zero them.
pub fn take_host_stats() -> HostStats {
    HostStats {
        jobs: HOST_JOBS.swap(0, Ordering::Relaxed),
        busy: Duration::from_nanos(HOST_NS.swap(0, Ordering::Relaxed)),
        bytes: HOST_BYTES.swap(0, Ordering::Relaxed),
    }
}

/// What the per-layer choice of a batch's RAM side weighs (issue 11 req. 5), measured once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Host-to-device copies from pinned memory, bytes/s.
    pub h2d: f64,
    /// The pool's threads reading RAM experts, bytes/s.
    pub ram: f64,
    /// Seconds of the pool's arithmetic a (token, RAM expert) pair.
    pub pair: f64,
}

/// The pool's arithmetic rate a thread on a (token, expert) pair's three products, flop/s:
/// 16 threads computing a 35B-A3B layer's RAM experts for 512-token batches took 16 µs a pair
/// of 6.3 Mflop (pp512 527 tok/s with `LLM_SERVER_HYBRID_STREAM=0`, BENCHMARKS.md 2026-12-02,
/// fourth session): 25 Gflop/s a thread.
const POOL_FLOPS_PER_THREAD: f64 = 25e9;

/// Whether a batch of `n` tokens, each choosing `k` of `ne` experts, runs a layer's RAM side
/// sooner by streaming its `ram` RAM experts (`bytes` each: gate, up and down) to the GPU than
/// by the pool computing the ones the batch uses: all of them copied at `r.h2d`, against the
/// expected number used, `ram·(1 − (1 − k/ne)ⁿ)` under uniform routing, read at `r.ram`, plus
/// the pairs' arithmetic. The expected histogram, not the batch's own: the ids are on the GPU
/// until its top-k has run, and waiting for them would stop the copies running ahead.
pub fn stream_pays(n: usize, k: usize, ne: usize, ram: usize, bytes: usize, r: Rates) -> bool {
    if ram == 0 || ne == 0 {
        return false;
    }
    let stream = (ram * bytes) as f64 / r.h2d;
    let p = (k as f64 / ne as f64).min(1.0);
    let used = ram as f64 * (1.0 - (1.0 - p).powf(n as f64));
    let pairs = (n * k) as f64 * ram as f64 / ne as f64;
    let pool = used * bytes as f64 / r.ram + pairs * r.pair;
    stream < pool
}

/// Bytes/s of `threads` threads summing `bytes` as 64-bit words, each its own share.
fn read_rate(bytes: &[u8], threads: usize) -> f64 {
    let threads = threads.max(1);
    let share = (bytes.len() / threads) & !63;
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let part = &bytes[i * share..(i + 1) * share];
            s.spawn(move || {
                let sum = part.chunks_exact(8).fold(0u64, |a, c| {
                    a.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                });
                std::hint::black_box(sum);
            });
        }
    });
    (share * threads) as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

/// The pinned staging of the hand-offs, the fork/join events, and the device buffers a batch
/// streams whole expert tensors into (one forward at a time).
#[derive(Debug, Default)]
pub(crate) struct Staging {
    host: Option<Arc<HostBuf>>,
    events: Option<(Event, Event)>,
    /// Two buffers a batch streams expert tensors into, used in turn.
    device: [Option<Arc<DevBuf>>; 2],
    /// Tensors streamed so far (which buffer is next).
    next: usize,
    /// The main stream's mark after the product before the last, and the copies' end.
    stream_events: Option<(Event, Event)>,
}

/// The runs `[a, b)` of consecutive experts that are in RAM (`ram`) or on the GPU.
fn runs(slot: &[i32], ram: bool) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut e = 0;
    std::iter::from_fn(move || {
        while e < slot.len() && (slot[e] < 0) != ram {
            e += 1;
        }
        if e == slot.len() {
            return None;
        }
        let a = e;
        while e < slot.len() && (slot[e] < 0) == ram {
            e += 1;
        }
        Some((a, e))
    })
}

/// The whole 4 KiB pages inside `bytes`: their start and length (0 if none). Pinning only
/// those keeps two tensors (or runs) from pinning a shared page twice.
fn page_inner(bytes: &[u8]) -> (*const u8, usize) {
    const PAGE: usize = 4096;
    let a = bytes.as_ptr() as usize;
    let (start, end) = (a.next_multiple_of(PAGE), (a + bytes.len()) / PAGE * PAGE);
    match end > start {
        true => (start as *const u8, end - start),
        false => (bytes.as_ptr(), 0),
    }
}

/// One MoE layer's RAM side, run by a host function on the side stream: read the pairs,
/// weights and input from pinned memory, compute the RAM experts' weighted sum, write it back.
/// Kept alive by the backend until the forward that queued it has finished, or by the
/// sequence for as long as a recorded graph replays it.
pub(crate) struct HostJob {
    w: [Arc<HostExperts>; 3],
    n: usize,
    k: usize,
    width: usize,
    exec: Exec,
    /// Compute the sum (`LLM_SERVER_HYBRID_CPU=0`: leave the result as it is — wrong output,
    /// for timing the hand-offs alone).
    compute: bool,
    /// The staging (ids, weights, x, y), owned here so a graph keeps it.
    buf: Arc<HostBuf>,
    err: Mutex<Option<String>>,
}

impl std::fmt::Debug for HostJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostJob")
            .field("tensor", &self.w[0].tensor.name)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl HostJob {
    /// Byte offsets of ids, weights, x and y in the staging.
    fn offsets(n: usize, k: usize, width: usize) -> [usize; 4] {
        [0, 4 * n * k, 8 * n * k, 8 * n * k + 4 * n * width]
    }

    fn bytes(n: usize, k: usize, width: usize) -> usize {
        8 * n * k + 8 * n * width
    }

    /// [`HostJob::sum`], timed into the totals [`take_host_stats`] reads; an error or a
    /// panic kept for the forward to report (nothing may unwind into the driver or past the
    /// listener).
    fn run(&self) {
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self.compute {
            true => self.sum(),
            false => Ok(0),
        }));
        let err = match r {
            Ok(Ok(bytes)) => {
                HOST_JOBS.fetch_add(1, Ordering::Relaxed);
                HOST_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                HOST_BYTES.fetch_add(bytes, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => "moe experts in RAM: a worker panicked".to_string(),
        };
        *lock(&self.err) = Some(err);
    }

    /// Compute the RAM experts' weighted sum from the staging into it; the expert bytes read.
    fn sum(&self) -> std::result::Result<u64, String> {
        let (n, k, width) = (self.n, self.k, self.width);
        let [oi, ow, ox, oy] = Self::offsets(n, k, width);
        let p = self.buf.ptr();
        // SAFETY: the staging holds bytes(n, k, width) ≥ these ranges; the side stream runs
        // this function after its copies in and before its copy out, and nothing else touches
        // the staging meanwhile (one forward at a time; every stream use is ordered).
        let (ids, wts, x, y) = unsafe {
            (
                std::slice::from_raw_parts(p.add(oi).cast::<i32>(), n * k),
                std::slice::from_raw_parts(p.add(ow).cast::<f32>(), n * k),
                std::slice::from_raw_parts(p.add(ox).cast::<f32>(), n * width),
                std::slice::from_raw_parts_mut(p.add(oy).cast::<f32>(), n * width),
            )
        };
        let slot = &self.w[0].slot;
        // Every pair of the layer is here, GPU experts' too: live routing statistics.
        engine::routing::record(
            &self.w[0].tensor.name,
            slot.len(),
            ids.iter().map(|&e| e as usize),
        );
        let mut used = vec![false; slot.len()];
        for &e in ids {
            if let Some(u) = used.get_mut(e as usize).filter(|_| slot[e as usize] < 0) {
                *u = true;
            }
        }
        let per_expert: usize = self
            .w
            .iter()
            .map(|h| h.tensor.data().len() / slot.len().max(1))
            .sum();
        let bytes = (used.iter().filter(|&&u| u).count() * per_expert) as u64;
        let pairs = ids
            .iter()
            .zip(wts)
            .enumerate()
            .filter(|&(_, (&e, _))| slot.get(e as usize).is_some_and(|&s| s < 0))
            .map(|(pi, (&e, &wt))| (pi / k, e as usize, wt));
        let [g, u, d] = &self.w;
        let out = experts_sum([&g.tensor, &u.tensor, &d.tensor], x, pairs, self.exec)
            .map_err(|e| format!("moe experts in RAM ({}): {e}", g.tensor.name))?;
        y.copy_from_slice(&out);
        Ok(bytes)
    }

    /// The error of a run, if one failed.
    pub(crate) fn error(&self) -> Option<String> {
        lock(&self.err).clone()
    }
}

/// The host function the side stream calls.
unsafe extern "C" fn run_host_job(data: *mut c_void) {
    // SAFETY: `data` is an `Arc<HostJob>`'s pointer, kept alive by its owners for as long as
    // a stream or graph can call this (see HostJob).
    unsafe { &*(data as *const HostJob) }.run();
}

/// The polled hand-off's thread: it spins on the `go` word of a pinned control block until
/// the side stream writes a job's address there, runs the job, and writes the address to the
/// `done` word, which the side stream waits for (and then clears). Spinning costs a core
/// while decode runs; after [`Listener::IDLE`] without a job it polls every 50 µs instead, and
/// after a second every millisecond (an idle server: the first hand-off of the next request
/// waits at most that long).
#[derive(Debug)]
pub(crate) struct Listener {
    /// The device address of the control block (128 bytes of pinned memory, owned by the
    /// thread): `go` at byte 0, `done` at byte [`Listener::DONE`] (own cache lines).
    pub(crate) dev: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    const IDLE: Duration = Duration::from_millis(20);
    pub(crate) const DONE: u64 = 64;

    pub(crate) fn start(gpu: &Arc<crate::driver::Gpu>) -> Result<Listener> {
        let ctl = gpu.alloc_host(128)?;
        // SAFETY: 128 bytes just allocated, nothing else uses them yet.
        unsafe { std::ptr::write_bytes(ctl.ptr(), 0, 128) };
        let dev = gpu.host_device_ptr(&ctl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("llm-ram-experts".into())
            .spawn(move || listen(&ctl, &s))
            .map_err(|e| Error::Size(format!("cannot start the RAM experts' thread: {e}")))?;
        Ok(Listener {
            dev,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(ctl: &HostBuf, stop: &AtomicBool) {
    // SAFETY: the control block is 128 bytes of pinned memory, 8-aligned words at 0 and 64,
    // alive while `ctl` is; the GPU writes `go` and reads `done` through the bus, this thread
    // the other way round — atomics, so neither access is torn or cached away.
    let (go, done) = unsafe {
        (
            &*ctl.ptr().cast::<AtomicU64>(),
            &*ctl.ptr().add(Listener::DONE as usize).cast::<AtomicU64>(),
        )
    };
    let mut last = Instant::now();
    let mut spins = 0u32;
    // Between polls once idle: 50 µs, then 1 ms after a second.
    let mut nap = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let job = go.load(Ordering::Acquire);
        if job == 0 {
            spins = spins.wrapping_add(1);
            if !nap.is_zero() {
                std::thread::sleep(nap);
                if last.elapsed() > Duration::from_secs(1) {
                    nap = Duration::from_millis(1);
                }
            } else if spins.is_multiple_of(1024) && last.elapsed() > Listener::IDLE {
                nap = Duration::from_micros(50);
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        nap = Duration::ZERO;
        go.store(0, Ordering::Relaxed);
        // SAFETY: the stream wrote the address of a job its owners keep alive for as long as
        // the stream (or a graph) can run the write (see HostJob).
        unsafe { &*(job as *const HostJob) }.run();
        done.store(job, Ordering::Release);
        last = Instant::now();
    }
}

impl Cuda {
    /// Use `p` for the tensors loaded from now on.
    pub fn set_placement(&self, p: Placement) {
        if p.n_in_ram() > 0 {
            // A driver without cuCtxSetFlags (before CUDA 12.1) keeps its default: slower, not
            // wrong.
            if self.handoff == Handoff::Poll && self.listener.get().is_none() {
                match Listener::start(&self.gpu) {
                    Ok(l) => drop(self.listener.set(l)),
                    Err(e) => eprintln!("note: RAM experts handed off by host functions ({e})"),
                }
            }
            // The listener spins for the pool; the main thread sleeps while it waits. With
            // host functions the driver's thread needs it to yield.
            let _ = self.gpu.prefer_sched(match self.listener.get() {
                Some(_) => crate::driver::Sched::Block,
                None => crate::driver::Sched::Yield,
            });
        }
        *lock(&self.placement) = p;
    }

    /// Experts of `t` that stay in RAM under the placement, if any do.
    pub(crate) fn in_ram(&self, t: &QTensor) -> Option<Vec<bool>> {
        let p = lock(&self.placement);
        let v = p.in_ram.get(&t.name)?;
        v.iter().any(|&b| b).then(|| v.clone())
    }

    /// Upload the GPU experts of `t` (its bytes `data`, `expert_bytes` an expert) packed in
    /// slot order; the map and the tensor stay for the RAM side.
    pub(crate) fn upload_experts(
        &self,
        t: &QTensor,
        data: &[u8],
        in_ram: &[bool],
        expert_bytes: usize,
    ) -> Result<(Arc<DevBuf>, HostExperts)> {
        if in_ram.len() as u64 != t.dims.get(2).copied().unwrap_or(1) {
            return Err(Error::Size(format!(
                "{}: a placement for {} experts, the tensor has {:?}",
                t.name,
                in_ram.len(),
                t.dims
            )));
        }
        let mut slot = Vec::with_capacity(in_ram.len());
        let mut packed = Vec::new();
        for (e, &ram) in in_ram.iter().enumerate() {
            if ram {
                slot.push(-1);
            } else {
                slot.push((packed.len() / expert_bytes.max(1)) as i32);
                packed.extend_from_slice(&data[e * expert_bytes..(e + 1) * expert_bytes]);
            }
        }
        let buf = self.gpu.alloc(packed.len())?;
        buf.upload(&packed)?;
        self.count_weights(packed.len());
        let slot_bytes: Vec<u8> = slot.iter().flat_map(|s| s.to_le_bytes()).collect();
        let slot_dev = self.gpu.alloc(slot_bytes.len())?;
        slot_dev.upload(&slot_bytes)?;
        let mut pinned = Vec::new();
        for (a, b) in runs(&slot, true) {
            let (p, len) = page_inner(&data[a * expert_bytes..b * expert_bytes]);
            if len == 0 {
                continue;
            }
            // SAFETY: inside `data`, which the tensor (kept beside the pin, dropped after
            // it) maps for as long as the model lives.
            match unsafe { self.gpu.pin(p, len) } {
                Ok(pin) => pinned.push(pin),
                Err(e) => {
                    eprintln!(
                        "note: {}: RAM experts not pinned ({e}); prefill copies them slower",
                        t.name
                    );
                    pinned.clear();
                    break;
                }
            }
        }
        Ok((
            Arc::new(buf),
            HostExperts {
                pinned,
                tensor: t.clone(),
                slot,
                slot_dev,
            },
        ))
    }

    /// Queue a MoE call's RAM side on the side stream, forked after the routing: its pairs
    /// (`ids`), their `weights` and the input `x` to pinned memory, the pool's weighted sum
    /// of the RAM experts, and that sum back to the device (the returned rows, n × width).
    /// The caller queues the GPU's experts on the main stream, then [`Cuda::join_ram`].
    pub(crate) fn queue_ram_experts(
        &self,
        ids: u64,
        weights: &CudaAct,
        x: &CudaAct,
        w: [&CudaMat; 3],
        exec: Exec,
    ) -> Result<CudaAct> {
        let (n, k, width) = (x.rows, weights.width, x.width);
        let hosts: Vec<Arc<HostExperts>> = w.iter().filter_map(|m| m.host.clone()).collect();
        let Ok([g, u, d]) = <[Arc<HostExperts>; 3]>::try_from(hosts) else {
            return Err(Error::Size(
                "moe: gate, up and down experts placed differently".into(),
            ));
        };
        if g.slot != u.slot || g.slot != d.slot {
            return Err(Error::Size(
                "moe: gate, up and down experts placed differently".into(),
            ));
        }
        let bytes = HostJob::bytes(n, k, width);
        let out = self.act(n, width)?;
        let mut st = lock(&self.staging_h);
        if st.host.as_ref().is_none_or(|h| h.bytes() < bytes) {
            // Earlier calls of this forward may still use the old staging: wait for them. (A
            // recorded graph keeps its own through its jobs.)
            self.gpu.sync()?;
            st.host = Some(Arc::new(self.gpu.alloc_host(bytes)?));
        }
        if st.events.is_none() {
            st.events = Some((self.gpu.order_event()?, self.gpu.order_event()?));
        }
        let buf = st.host.clone().expect("allocated above");
        let (fork, _) = st.events.as_ref().expect("made above");
        let job = Arc::new(HostJob {
            w: [g, u, d],
            n,
            k,
            width,
            exec,
            compute: self.hybrid_cpu,
            buf: buf.clone(),
            err: Mutex::new(None),
        });
        let [oi, ow, ox, oy] = HostJob::offsets(n, k, width);
        let p = buf.ptr();
        self.gpu.fork(fork)?;
        // SAFETY: the staging holds `bytes`; ids and weights hold n·k values, x and out n ×
        // width; the job (and through it the staging) stays alive while a stream or graph
        // can run these (pending_jobs, then the sequence's graph).
        unsafe {
            self.gpu.dtoh_side(p.add(oi), ids, 4 * n * k)?;
            self.gpu.dtoh_side(p.add(ow), weights.ptr(), 4 * n * k)?;
            self.gpu.dtoh_side(p.add(ox), x.ptr(), 4 * n * width)?;
            let addr = Arc::as_ptr(&job) as u64;
            match self.listener.get() {
                Some(l) => {
                    self.gpu.write_value_side(l.dev, addr)?;
                    self.gpu.wait_value_side(l.dev + Listener::DONE, addr)?;
                    self.gpu.write_value_side(l.dev + Listener::DONE, 0)?;
                }
                None => self.gpu.host_fn_side(run_host_job, addr as *mut c_void)?,
            }
            self.gpu.htod_side(out.ptr(), p.add(oy), 4 * n * width)?;
        }
        lock(&self.pending_jobs).push(job);
        Ok(out)
    }

    /// Whether a batch can stream `w`'s RAM experts to the GPU: it has some, the kernels read
    /// the file's type as it is, and streaming is on (`hybrid_stream`).
    pub(crate) fn streamable(&self, w: &CudaMat) -> bool {
        self.hybrid_stream && w.host.as_ref().is_some_and(|h| h.tensor.ty == w.ty)
    }

    /// `w` whole on the device for one batch (DESIGN §3 item 4): its GPU experts copied from
    /// their slots, its RAM experts from RAM (pinned: at the bus's speed), into one of two
    /// staging buffers, in id order. The copies run on the side stream ahead of the products:
    /// a tensor's copies wait only for the product that read its buffer two tensors before,
    /// so the next tensor's copies overlap this one's product, and the main stream waits for
    /// them before its product.
    pub(crate) fn stream_experts(&self, w: &CudaMat) -> Result<CudaMat> {
        let h = w.host.as_ref().expect("streamable");
        let eb = w.m * w.row_bytes;
        let total = eb * w.experts;
        let data = h.tensor.data();
        if data.len() < total {
            return Err(Error::Size(format!(
                "{}: {} bytes in the file for {total}",
                h.tensor.name,
                data.len()
            )));
        }
        let mut st = lock(&self.staging_h);
        let i = st.next % 2;
        st.next += 1;
        let buf = self.staging_buffer(&mut st, i, total)?;
        if st.stream_events.is_none() {
            st.stream_events = Some((self.gpu.order_event()?, self.gpu.order_event()?));
        }
        let (mark, ready) = st.stream_events.as_ref().expect("made above");
        // `mark` was recorded after the product two tensors back (this buffer's last reader)
        // was queued: wait for it, then mark the main stream for the next call.
        if st.next > 1 {
            self.gpu.side_waits(mark)?;
        }
        self.gpu.mark_main(mark)?;
        // SAFETY (both loops): the staging holds `total` ≥ b·eb bytes; the file's bytes are
        // checked above and outlive the copies (the model's mapping); the packed buffer holds
        // the slots of GPU experts a..b (consecutive: slots follow ids).
        for (a, b) in runs(&h.slot, true) {
            let (dst, src) = (buf.ptr() + (a * eb) as u64, &data[a * eb..b * eb]);
            // The pinned pages inside the run in one copy, its unpinned edges apart (a copy
            // touching unpinned memory goes through the driver's bounce buffer whole).
            let (p, len) = page_inner(src);
            let head = match h.pinned.is_empty() || len == 0 {
                true => src.len(),
                false => p as usize - src.as_ptr() as usize,
            };
            let mut pieces = vec![(0, head)];
            if head < src.len() {
                pieces.push((head, len));
                pieces.push((head + len, src.len() - head - len));
            }
            for (off, n) in pieces.into_iter().filter(|&(_, n)| n > 0) {
                // SAFETY: see above.
                unsafe {
                    self.gpu
                        .htod_side(dst + off as u64, src.as_ptr().add(off), n)?
                };
            }
        }
        for (a, b) in runs(&h.slot, false) {
            let src = w.buf.ptr() + (h.slot[a] as usize * eb) as u64;
            // SAFETY: see above.
            unsafe {
                self.gpu
                    .dtod_side(buf.ptr() + (a * eb) as u64, src, (b - a) * eb)?
            };
        }
        self.gpu.join(ready)?;
        Ok(CudaMat {
            buf,
            host: None,
            ..w.clone()
        })
    }

    /// Whether a batch of `n` tokens streams the RAM experts of the layer `w` (its gate
    /// experts; `bytes` an expert over gate, up and down) rather than the pool computing them
    /// ([`stream_pays`] with the rates measured at the first call).
    pub(crate) fn stream_pays(
        &self,
        w: &CudaMat,
        n: usize,
        k: usize,
        bytes: usize,
        exec: Exec,
    ) -> Result<bool> {
        let Some(h) = w.host.as_ref() else {
            return Ok(false);
        };
        if !self.hybrid_choose {
            return Ok(true);
        }
        let ram = h.slot.iter().filter(|&&s| s < 0).count();
        let r = match self.rates.get() {
            Some(r) => *r,
            None => {
                let r = self.measure_rates(w, exec)?;
                eprintln!(
                    "hybrid prefill: pinned copies {:.1} GB/s, RAM experts read at {:.1} GB/s                      ({} threads): batches stream a layer's RAM experts where that is sooner",
                    r.h2d / 1e9,
                    r.ram / 1e9,
                    exec.threads
                );
                *self.rates.get_or_init(|| r)
            }
        };
        Ok(stream_pays(n, k, w.experts, ram, bytes, r))
    }

    /// [`Rates`] from `w`'s longest run of RAM experts (at most 256 MiB of it): read by the
    /// pool's thread count, then copied to the GPU from its pinned pages twice (the faster
    /// copy counts) — into the first streaming buffer, made here at the size streaming makes
    /// it (the plan counts it; no other device memory is taken).
    fn measure_rates(&self, w: &CudaMat, exec: Exec) -> Result<Rates> {
        let h = w.host.as_ref().expect("RAM experts");
        let eb = w.m * w.row_bytes;
        let data = h.tensor.data();
        let (a, b) = runs(&h.slot, true)
            .max_by_key(|&(a, b)| b - a)
            .unwrap_or((0, 0));
        let (p, len) = page_inner(&data[a * eb..(b * eb).min(data.len())]);
        let len = len.min(256 << 20);
        // SAFETY: inside the tensor's bytes (page_inner of a slice of them).
        let src = unsafe { std::slice::from_raw_parts(p, len) };
        let ram = read_rate(src, exec.threads);
        let mut h2d = 0.0f64;
        if len >= 1 << 20 && !h.pinned.is_empty() {
            let dst = self.staging_buffer(&mut lock(&self.staging_h), 0, eb * w.experts)?;
            // Earlier products may still read it (none do before the first batch's choice).
            self.gpu.sync()?;
            for _ in 0..2 {
                let t = Instant::now();
                // SAFETY: `dst` holds `len` bytes; the source is synced before it can go.
                unsafe { self.gpu.htod(dst.ptr(), src)? };
                self.gpu.sync()?;
                h2d = h2d.max(len as f64 / t.elapsed().as_secs_f64().max(1e-9));
            }
        }
        Ok(Rates {
            // Nothing pinned to time: copies go through the driver's bounce buffer, slowly.
            h2d: if h2d > 0.0 { h2d } else { ram / 4.0 },
            ram,
            pair: 6.0 * (w.k * w.m) as f64 / (exec.threads.max(1) as f64 * POOL_FLOPS_PER_THREAD),
        })
    }

    /// Streaming buffer `i` with room for `total` bytes, made (again) if it has less.
    fn staging_buffer(&self, st: &mut Staging, i: usize, total: usize) -> Result<Arc<DevBuf>> {
        match &st.device[i] {
            Some(d) if d.bytes() >= total => Ok(d.clone()),
            _ => {
                // Earlier products may still read the old buffer.
                self.gpu.sync()?;
                st.device[i] = None;
                let d = Arc::new(self.gpu.alloc(total)?);
                st.device[i] = Some(d.clone());
                Ok(d)
            }
        }
    }

    /// Make the main stream wait for the RAM side queued by [`Cuda::queue_ram_experts`].
    pub(crate) fn join_ram(&self) -> Result<()> {
        let st = lock(&self.staging_h);
        let (_, join) = st.events.as_ref().expect("queued before");
        self.gpu.join(join)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_experts_by_side() {
        let slot = [-1, -1, 0, 1, -1, 2, -1];
        assert_eq!(
            runs(&slot, true).collect::<Vec<_>>(),
            [(0, 2), (4, 5), (6, 7)]
        );
        assert_eq!(runs(&slot, false).collect::<Vec<_>>(), [(2, 4), (5, 6)]);
        assert_eq!(runs(&[], true).count(), 0);
        assert_eq!(runs(&[0, 1], true).count(), 0);
    }

    /// The 35B-A3B at 16 GB (96 of 256 experts a layer in RAM, 1.7 MB each; ~41 GB/s over
    /// PCIe, 45 GB/s RAM, 16 threads): a few tokens go to the pool, a 512-token batch streams.
    #[test]
    fn small_batches_stay_on_the_pool_large_ones_stream() {
        let r = Rates {
            h2d: 41e9,
            ram: 45e9,
            pair: 6.0 * 2048.0 * 512.0 / (16.0 * POOL_FLOPS_PER_THREAD),
        };
        let pays = |n| stream_pays(n, 8, 256, 96, 1_700_000, r);
        assert!(!pays(9) && !pays(16));
        assert!(pays(64) && pays(512));
        let crossover = (1..512).find(|&n| pays(n)).expect("some batch streams");
        assert!((17..64).contains(&crossover), "{crossover}");
        // Nothing in RAM: nothing to stream.
        assert!(!stream_pays(512, 8, 256, 0, 1_700_000, r));
    }

    #[test]
    fn page_inner_keeps_whole_pages_only() {
        let buf = vec![0u8; 6 * 4096];
        let base = buf.as_ptr() as usize;
        let off = base.next_multiple_of(4096) - base; // the first page boundary inside
                                                      // From 100 bytes before a boundary to 3 pages and 50 bytes after it: 3 whole pages.
        let s = &buf[off + 4096 - 100..off + 4 * 4096 + 50];
        let (p, len) = page_inner(s);
        assert_eq!((p as usize - base, len), (off + 4096, 3 * 4096));
        // Less than a page: nothing.
        assert_eq!(page_inner(&buf[off + 10..off + 4000]).1, 0);
    }
}
