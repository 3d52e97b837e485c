//! Hybrid placement (DESIGN §3): the experts of a MoE layer placed one by one, some on the GPU
//! and the rest in RAM, and a MoE call that runs both sides at once.
//!
//! A [`Placement`] given to the backend before the model loads says, per stacked expert
//! tensor, which experts stay in RAM. Such a tensor keeps only its GPU experts on the device
//! (packed, in slot order) with a map from expert id to slot (−1: in RAM), and keeps the whole
//! tensor in RAM for the worker pool. In a MoE call the top-k kernel writes each pair's slot
//! beside its expert id; the GPU's expert products skip pairs whose slot is −1 (their rows
//! are 0). The pairs in RAM, their weights and the layer's input go to pinned host memory in
//! one copy, the host waits for that copy only (the GPU goes on with its experts), the pool
//! computes the RAM experts' weighted sum, and one copy brings it back to be added with the
//! rest. One hand-off each way per layer.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Pinned buffers and the event of the hand-offs (one forward at a time uses them).
#[derive(Debug, Default)]
pub(crate) struct Staging {
    host: Option<HostBuf>,
    event: Option<Event>,
}

/// What a MoE call started on the RAM side: the copies are queued, the event follows them.
pub(crate) struct Started {
    n: usize,
    k: usize,
    width: usize,
}

impl Cuda {
    /// Use `p` for the tensors loaded from now on.
    pub fn set_placement(&self, p: Placement) {
        *lock(&self.placement) = p;
    }

    /// Experts of `t` that stay in RAM under the placement, if any do.
    pub(crate) fn in_ram(&self, t: &QTensor) -> Option<Vec<bool>> {
        let p = lock(&self.placement);
        let v = p.in_ram.get(&t.name)?;
        v.iter().any(|&b| b).then(|| v.clone())
    }

    /// Upload the GPU experts of `t` (its bytes `data` in type `ty`, `m` rows of `row_bytes`
    /// an expert) packed in slot order; the map and the tensor stay for the RAM side.
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

    /// Queue the copies of a MoE call's routing (`ids`, `weights`: n × k) and input `x`
    /// (n × width) to pinned memory, and the event after them.
    pub(crate) fn start_ram_experts(
        &self,
        ids: u64,
        weights: &CudaAct,
        x: &CudaAct,
    ) -> Result<Started> {
        let (n, k, width) = (x.rows, weights.width, x.width);
        let bytes = Self::staging_bytes(n, k, width);
        let mut st = lock(&self.staging_h);
        if st.host.as_ref().is_none_or(|h| h.bytes() < bytes) {
            // Nothing queued reads the old buffer past here: a layer's copy back is queued
            // before the next layer's copies out, and this waits for all of them.
            self.gpu.sync()?;
            st.host = Some(self.gpu.alloc_host(bytes)?);
        }
        if st.event.is_none() {
            st.event = Some(self.gpu.event()?);
        }
        let h = st.host.as_mut().expect("allocated above").as_mut_slice();
        let (ids_h, rest) = h.split_at_mut(4 * n * k);
        let (w_h, rest) = rest.split_at_mut(4 * n * k);
        let (x_h, _) = rest.split_at_mut(4 * n * width);
        // SAFETY: the device buffers hold n·k ids and weights and n × width inputs; the pinned
        // buffer outlives the copies (it is only replaced after a full sync).
        unsafe {
            self.gpu.dtoh(ids_h, ids)?;
            self.gpu.dtoh(w_h, weights.ptr())?;
            self.gpu.dtoh(x_h, x.ptr())?;
        }
        st.event.as_ref().expect("created above").record()?;
        Ok(Started { n, k, width })
    }

    /// Wait for the copies of `s`, compute the RAM experts' weighted sum on the worker pool
    /// and queue its copy to the device.
    pub(crate) fn finish_ram_experts(
        &self,
        s: Started,
        w: [&CudaMat; 3],
        exec: Exec,
    ) -> Result<CudaAct> {
        let hosts: Vec<&HostExperts> = w.iter().filter_map(|m| m.host.as_deref()).collect();
        let [hg, hu, hd] = hosts[..] else {
            return Err(Error::Size(
                "moe: gate, up and down experts placed differently".into(),
            ));
        };
        if hg.slot != hu.slot || hg.slot != hd.slot {
            return Err(Error::Size(
                "moe: gate, up and down experts placed differently".into(),
            ));
        }
        let out = self.act(s.n, s.width)?;
        let mut st = lock(&self.staging_h);
        st.event.as_ref().expect("started").wait()?;
        let h = st.host.as_mut().expect("started").as_mut_slice();
        let (ids_h, rest) = h.split_at_mut(4 * s.n * s.k);
        let (w_h, rest) = rest.split_at_mut(4 * s.n * s.k);
        let (x_h, rest) = rest.split_at_mut(4 * s.n * s.width);
        let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let pairs: Vec<(usize, usize, f32)> = ids_h
            .chunks_exact(4)
            .zip(w_h.chunks_exact(4))
            .enumerate()
            .map(|(p, (i, wt))| (p / s.k, le(i) as usize, f32::from_bits(le(wt))))
            .filter(|&(_, e, _)| hg.slot.get(e).is_some_and(|&sl| sl < 0))
            .collect();
        let x: Vec<f32> = x_h.chunks_exact(4).map(|b| f32::from_bits(le(b))).collect();
        let y = experts_sum([&hg.tensor, &hu.tensor, &hd.tensor], &x, pairs, exec)
            .map_err(|e| Error::Size(format!("moe experts in RAM: {e}")))?;
        let (y_h, _) = rest.split_at_mut(4 * s.n * s.width);
        for (d, v) in y_h.chunks_exact_mut(4).zip(&y) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        // SAFETY: `out` holds n × width floats; the pinned buffer stays until a full sync.
        unsafe { self.gpu.htod(out.ptr(), y_h)? };
        Ok(out)
    }

    /// Pinned bytes a call of n tokens, k experts each, rows of `width` needs: ids, weights,
    /// the input and the sum.
    fn staging_bytes(n: usize, k: usize, width: usize) -> usize {
        8 * n * k + 8 * n * width
    }
}
