//! Hybrid placement (DESIGN §3): the experts of a MoE layer placed one by one, some on the GPU
//! and the rest in RAM, and a MoE call that runs both sides at once.
//!
//! A [`Placement`] given to the backend before the model loads says, per stacked expert
//! tensor, which experts stay in RAM. Such a tensor keeps only its GPU experts on the device
//! (packed, in slot order) with a map from expert id to slot (−1: in RAM), and keeps the whole
//! tensor in RAM for the worker pool. In a MoE call the top-k kernel writes each pair's slot
//! beside its expert id; the GPU's expert products skip pairs whose slot is −1 (their rows
//! are 0). Beside them, on a second stream forked after the routing, the pairs, their weights
//! and the layer's input go to pinned host memory, a host function (run by the driver when the
//! stream gets there) has the worker pool compute the RAM experts' weighted sum, and a copy
//! brings it back; the main stream joins the side stream before the sum is added with the
//! rest. One hand-off each way per layer, nothing waited for on the host — so a decode step
//! with RAM experts is still recorded once as a CUDA graph (host nodes included) and replayed.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use engine::backend::experts_sum;
use engine::{Exec, QTensor};

use crate::backend::{Cuda, CudaAct, CudaMat};
use crate::driver::{DevBuf, Event, HostBuf};
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
    /// The whole tensor, in RAM.
    pub(crate) tensor: QTensor,
    /// Per expert its slot on the GPU, or −1.
    pub(crate) slot: Vec<i32>,
    /// The same on the device (read by `topk`).
    pub(crate) slot_dev: DevBuf,
}

/// The pinned staging of the hand-offs, the fork/join events, and the device buffer a batch
/// streams a whole expert tensor into (one forward at a time).
#[derive(Debug, Default)]
pub(crate) struct Staging {
    host: Option<Arc<HostBuf>>,
    events: Option<(Event, Event)>,
    device: Option<Arc<DevBuf>>,
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

    fn run(&self) -> std::result::Result<(), String> {
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
        Ok(())
    }

    /// The error of a run, if one failed.
    pub(crate) fn error(&self) -> Option<String> {
        lock(&self.err).clone()
    }
}

/// The host function the side stream calls: runs the job, keeps an error or a panic for the
/// forward to report (nothing may unwind into the driver).
unsafe extern "C" fn run_host_job(data: *mut c_void) {
    // SAFETY: `data` is an `Arc<HostJob>`'s pointer, kept alive by its owners for as long as
    // a stream or graph can call this (see HostJob).
    let job = unsafe { &*(data as *const HostJob) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
    let err = match r {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => "moe experts in RAM: a worker panicked".to_string(),
    };
    *lock(&job.err) = Some(err);
}

impl Cuda {
    /// Use `p` for the tensors loaded from now on.
    pub fn set_placement(&self, p: Placement) {
        if p.n_in_ram() > 0 {
            // A driver without cuCtxSetFlags (before CUDA 12.1) keeps its default: slower, not
            // wrong.
            let _ = self.gpu.prefer_yield();
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
        Ok((
            Arc::new(buf),
            HostExperts {
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
            self.gpu
                .host_fn_side(run_host_job, Arc::as_ptr(&job) as *mut c_void)?;
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
    /// their slots, its RAM experts from the file, into the staging buffer, in id order — runs
    /// of neighbouring experts one copy each (the planner's uniform placement makes two runs
    /// a tensor). The copies are ordered on the stream before the product that reads them and
    /// after the one that read the previous tensor.
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
        let buf = {
            let mut st = lock(&self.staging_h);
            if st.device.as_ref().is_none_or(|d| d.bytes() < total) {
                // An earlier product may still read the old buffer.
                self.gpu.sync()?;
                st.device = None;
                st.device = Some(Arc::new(self.gpu.alloc(total)?));
            }
            st.device.clone().expect("allocated above")
        };
        let mut e = 0;
        while e < w.experts {
            let ram = h.slot[e] < 0;
            let mut end = e + 1;
            while end < w.experts && (h.slot[end] < 0) == ram {
                end += 1;
            }
            let (dst, bytes) = (buf.ptr() + (e * eb) as u64, (end - e) * eb);
            // SAFETY: the staging holds `total` ≥ end·eb bytes; the packed buffer holds the
            // slots of GPU experts e..end (consecutive: slots follow ids); the file's bytes are
            // checked above.
            unsafe {
                match ram {
                    true => self.gpu.htod(dst, &data[e * eb..end * eb])?,
                    false => {
                        let src = w.buf.ptr() + (h.slot[e] as usize * eb) as u64;
                        self.gpu.dtod(dst, src, bytes)?
                    }
                }
            }
            e = end;
        }
        Ok(CudaMat {
            buf,
            host: None,
            ..w.clone()
        })
    }

    /// Make the main stream wait for the RAM side queued by [`Cuda::queue_ram_experts`].
    pub(crate) fn join_ram(&self) -> Result<()> {
        let st = lock(&self.staging_h);
        let (_, join) = st.events.as_ref().expect("queued before");
        self.gpu.join(join)
    }
}
