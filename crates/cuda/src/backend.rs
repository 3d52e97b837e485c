//! The CUDA backend: `engine::Backend` on one GPU. Weights are uploaded in their file types;
//! activations live in the [`Pool`]; a sequence's KV cache and DeltaNet state are device
//! buffers sized up front. A forward call writes its tokens and first position into a small
//! device buffer that every kernel reads them from, so the second decode step of a sequence
//! is recorded as a CUDA graph and every later one replays it (one launch, no host sync
//! inside the step); prefill runs the same ops launched one by one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use engine::backend::{
    AttnBlock, AttnParams, Backend, DeltaNet, Experts, Glu, Graph as ModelGraph, Request, Seq,
};
use engine::kv::{CacheConfig, KvCache, KvType};
use engine::ops::Rope;
use engine::QTensor;
use gguf::GgmlType;

use crate::driver::{DevBuf, Gpu, Graph, HostBuf};
use crate::error::Error;
use crate::kernels::{lock, Kernels};
use crate::ops::matmul::Q8Act;
use crate::pool::{Block, Pool};

/// Most tokens one forward call takes (the step buffer's size, fixed so a recorded graph's
/// reads of it stay valid).
pub const MAX_STEP_TOKENS: usize = 1 << 16;

/// Weight types whose one-token products take integer dot products on 8-bit activations
/// (`mmvq`); the others multiply in f32 (`mmv1`).
pub const Q8_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Weight types the kernels read as they are in the file (`quant.cuh`); others are converted
/// to f16 at load.
pub const NATIVE_TYPES: [GgmlType; 16] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// Uploaded tensors: (address, length) of their bytes in the map → buffer and tensor.
type Uploads = HashMap<(usize, usize), (Arc<DevBuf>, QTensor)>;

/// The CUDA backend.
#[derive(Debug)]
pub struct Cuda {
    pub(crate) gpu: Arc<Gpu>,
    pub(crate) k: Kernels,
    pub(crate) pool: Arc<Pool>,
    /// `[pos0, token_0, …]` as i32/u32, read by the kernels.
    pub(crate) step: DevBuf,
    staging: Mutex<HostBuf>,
    out: Mutex<Option<HostBuf>>,
    /// Uploaded tensors by the address of their bytes in the file's map (a tied output matrix
    /// is the embedding table, uploaded once), each with its tensor, which keeps the map alive
    /// (so no later file can be mapped at the same address).
    uploaded: Mutex<Uploads>,
    /// One forward at a time: they share the stream, the step buffer and the pool.
    busy: Mutex<()>,
    graphs: bool,
    poison: bool,
    /// `mmv`'s variant: warps a row, granules in flight a lane (`LLM_SERVER_MMV=split,unroll`).
    pub(crate) mmv_variant: (u32, u32),
    /// `mmv1`'s variant: rows a warp (0: use `mmv` for one token too), granules in flight a
    /// row (`LLM_SERVER_MMV1=rows,unroll`).
    pub(crate) mmv1_variant: (u32, u32),
    /// `mmvq`: on (1) or off (0), units in flight a lane (`LLM_SERVER_MMVQ=on,unroll`).
    pub(crate) mmvq_variant: (u32, u32),
    /// Attention's norms, RoPE, rotations and gate in two fused kernels around the attention
    /// (`LLM_SERVER_ATTN_FUSED=0`: one op each).
    pub(crate) attn_fused: bool,
    /// Rows a lane group of `mmvq` (`LLM_SERVER_MMVQ_ROWS`: 1 or 2).
    pub(crate) mmvq_rows: u32,
    /// Prefill attention on the tensor cores (`attn_mma`; `LLM_SERVER_ATTN_MMA=0`: the SIMT
    /// kernel).
    pub(crate) attn_mma: bool,
    /// Lanes a DeltaNet state row in a decode step's `delta_rule` (`LLM_SERVER_DELTA_LPR`:
    /// 2, 4 or 8).
    pub(crate) delta_lpr: u32,
    /// The residual add and norm with the row in registers (`add_norm_r`), and the MoE's sum
    /// folded into it (`moe_combine_norm`) (`LLM_SERVER_NORM_FUSED=0`: `add_norm` and
    /// `moe_combine`).
    pub(crate) norm_fused: bool,
    /// A decode step's attention blocks per SM (`LLM_SERVER_ATTN_SPLITS`, 1–8): the positions
    /// split over up to 256 blocks a KV head group; splits past the context exit at once.
    /// 2 (132 splits on an H200 for 2 KV heads) beat 4 and 8 at 16,384 positions (BENCHMARKS.md
    /// 2026-12-02, third session).
    pub(crate) attn_splits: u32,
    weight_bytes: std::sync::atomic::AtomicUsize,
    /// Which experts stay in RAM ([`crate::Placement`]), for the tensors loaded next.
    pub(crate) placement: Mutex<crate::Placement>,
    /// Some expert tensor has experts in RAM.
    hybrid: std::sync::atomic::AtomicBool,
    /// Hybrid decode steps recorded as graphs (`LLM_SERVER_HYBRID_GRAPHS=0`: eagerly, for
    /// measuring).
    hybrid_graphs: bool,
    /// Prefill batches stream RAM experts to the GPU (`LLM_SERVER_HYBRID_STREAM=0`: the pool
    /// computes them).
    pub(crate) hybrid_stream: bool,
    /// Whether a batch streams is chosen per layer from the measured rates (`stream_pays`);
    /// `LLM_SERVER_HYBRID_STREAM=1` streams every batch of more than 64 pairs (the rule
    /// before).
    pub(crate) hybrid_choose: bool,
    /// The rates that choice weighs, measured at the first batch that asks.
    pub(crate) rates: std::sync::OnceLock<crate::hybrid::Rates>,
    /// RAM experts computed (`LLM_SERVER_HYBRID_CPU=0`: the hand-offs alone, for timing).
    pub(crate) hybrid_cpu: bool,
    /// How the RAM side is handed over ([`crate::hybrid::Handoff`]).
    pub(crate) handoff: crate::hybrid::Handoff,
    /// The polled hand-off's thread, started with the first placement that has RAM experts.
    pub(crate) listener: std::sync::OnceLock<crate::hybrid::Listener>,
    /// Decode's router product and top-k in one launch (`route1`; `LLM_SERVER_ROUTE_FUSED=0`:
    /// the product, then `topk`).
    pub(crate) route_fused: bool,
    /// `route1`'s count of finished blocks (0 between launches).
    pub(crate) route_done: DevBuf,
    /// The pinned staging and events of the RAM experts' hand-offs.
    pub(crate) staging_h: Mutex<crate::hybrid::Staging>,
    /// RAM-expert jobs queued by the current forward (kept until it has finished).
    pub(crate) pending_jobs: Mutex<Vec<Arc<crate::hybrid::HostJob>>>,
}

/// A weight matrix on the GPU.
#[derive(Debug, Clone)]
pub struct CudaMat {
    pub(crate) buf: Arc<DevBuf>,
    pub(crate) name: String,
    pub(crate) ty: GgmlType,
    /// Values a row.
    pub(crate) k: usize,
    /// Rows (of one expert, for stacked experts).
    pub(crate) m: usize,
    /// Experts (1 for a plain matrix).
    pub(crate) experts: usize,
    pub(crate) row_bytes: usize,
    /// Stacked experts under hybrid placement: the RAM side and the slot map (`buf` then holds
    /// only the GPU's experts, in slot order).
    pub(crate) host: Option<Arc<crate::hybrid::HostExperts>>,
}

/// An f32 vector on the GPU.
#[derive(Debug)]
pub struct CudaVec {
    pub(crate) buf: DevBuf,
    pub(crate) len: usize,
}

/// A column map on the GPU.
#[derive(Debug)]
pub struct CudaIndex {
    pub(crate) buf: DevBuf,
    pub(crate) len: usize,
}

/// Activations on the GPU: `rows × width` f32 at `off` bytes into a pool block; `q8`, the
/// same values in 8 bits when the kernel that wrote them made that too (a norm before
/// one-token products). Every op that changes the values in place drops `q8`.
#[derive(Debug, Clone)]
pub struct CudaAct {
    pub(crate) block: Arc<Block>,
    pub(crate) off: u64,
    pub(crate) rows: usize,
    pub(crate) width: usize,
    pub(crate) q8: Option<Arc<Q8Act>>,
}

impl CudaAct {
    pub(crate) fn ptr(&self) -> u64 {
        self.block.ptr() + self.off
    }

    pub(crate) fn len(&self) -> usize {
        self.rows * self.width
    }

    /// Rows `first..first + rows` of `self` (same memory; no 8-bit form).
    pub(crate) fn view(&self, first: usize, rows: usize) -> CudaAct {
        assert!(first + rows <= self.rows, "view past the end");
        CudaAct {
            block: self.block.clone(),
            off: self.off + 4 * (first * self.width) as u64,
            rows,
            width: self.width,
            q8: None,
        }
    }
}

/// A layer's memory of a sequence on the GPU.
#[derive(Debug)]
pub enum CudaLayer {
    /// KV cache: `n_ctx` rows of `n_head_kv · head_dim` values in their types.
    Kv {
        /// Keys.
        k: DevBuf,
        /// Values.
        v: DevBuf,
        /// Key type.
        kt: KvType,
        /// Value type.
        vt: KvType,
        /// Walsh–Hadamard chunks (0: none), as `engine::kv`.
        rot_k: usize,
        /// Value rotation.
        rot_v: usize,
    },
    /// DeltaNet convolution taps and state, f32.
    Recurrent {
        /// `[conv_dim][d_conv − 1]`.
        conv: DevBuf,
        /// `[n_v_head][d_v][d_k]`.
        ssm: DevBuf,
    },
}

/// A sequence's recorded decode step.
#[derive(Debug, Default)]
pub struct CudaSeq {
    graph: Option<Graph>,
    /// The recorded step's output (kept so its block stays this graph's).
    out: Option<CudaAct>,
    /// Decode steps run so far (the first runs eagerly and fills the pool).
    decode_steps: usize,
    /// The RAM-expert jobs the graph's host nodes run (hybrid placement).
    host_jobs: Vec<Arc<crate::hybrid::HostJob>>,
}

/// A forward call's context: the token count; tokens and positions are on the device.
#[derive(Debug)]
pub struct CudaStep {
    pub(crate) n: usize,
    /// The worker pool's threads (RAM-resident experts).
    pub(crate) exec: engine::Exec,
}

/// A kernel variant from `var` (`a,b`: `a` one of `firsts`, `b` 1–8), else `default`.
fn variant(var: &str, firsts: &[u32], default: (u32, u32)) -> (u32, u32) {
    let parsed = std::env::var(var).ok().and_then(|v| {
        let (a, b) = v.split_once(',')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    });
    match parsed {
        Some((a, b)) if firsts.contains(&a) && (1..=8).contains(&b) => (a, b),
        _ => default,
    }
}

impl From<Error> for engine::Error {
    fn from(e: Error) -> engine::Error {
        engine::Error::Backend {
            backend: "cuda".into(),
            message: e.to_string(),
        }
    }
}

type R<T> = engine::Result<T>;

impl Cuda {
    /// Open GPU `ordinal` as a backend.
    pub fn open(ordinal: usize) -> crate::Result<Arc<Cuda>> {
        let gpu = Gpu::open(ordinal)?;
        let step = gpu.alloc(4 * (MAX_STEP_TOKENS + 1))?;
        let staging = gpu.alloc_host(4 * (MAX_STEP_TOKENS + 1))?;
        let route_done = gpu.alloc(4)?;
        route_done.upload(&[0; 4])?;
        Ok(Arc::new(Cuda {
            k: Kernels::new(gpu.clone()),
            pool: Pool::new(gpu.clone()),
            step,
            staging: Mutex::new(staging),
            out: Mutex::new(None),
            uploaded: Mutex::default(),
            busy: Mutex::new(()),
            graphs: std::env::var("LLM_SERVER_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            poison: std::env::var_os("LLM_SERVER_CUDA_POISON").is_some_and(|v| v != "0"),
            mmv_variant: variant("LLM_SERVER_MMV", &[1, 2, 4], (1, 4)),
            mmv1_variant: variant("LLM_SERVER_MMV1", &[0, 1, 2, 4], (2, 2)),
            mmvq_variant: variant("LLM_SERVER_MMVQ", &[0, 1], (1, 1)),
            mmvq_rows: std::env::var("LLM_SERVER_MMVQ_ROWS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| [1, 2].contains(v))
                .unwrap_or(1),
            attn_fused: std::env::var("LLM_SERVER_ATTN_FUSED").map_or(true, |v| v != "0"),
            attn_mma: std::env::var("LLM_SERVER_ATTN_MMA").map_or(true, |v| v != "0"),
            delta_lpr: std::env::var("LLM_SERVER_DELTA_LPR")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| [2, 4, 8].contains(v))
                .unwrap_or(4),
            norm_fused: std::env::var("LLM_SERVER_NORM_FUSED").map_or(true, |v| v != "0"),
            attn_splits: std::env::var("LLM_SERVER_ATTN_SPLITS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| (1..=8).contains(v))
                .unwrap_or(2),
            weight_bytes: Default::default(),
            placement: Mutex::default(),
            hybrid: Default::default(),
            hybrid_graphs: std::env::var("LLM_SERVER_HYBRID_GRAPHS").map_or(true, |v| v != "0"),
            hybrid_stream: std::env::var("LLM_SERVER_HYBRID_STREAM").map_or(true, |v| v != "0"),
            hybrid_choose: std::env::var("LLM_SERVER_HYBRID_STREAM").map_or(true, |v| v != "1"),
            rates: Default::default(),
            hybrid_cpu: std::env::var("LLM_SERVER_HYBRID_CPU").map_or(true, |v| v != "0"),
            handoff: crate::hybrid::Handoff::from_env(gpu.memops64),
            listener: Default::default(),
            route_fused: std::env::var("LLM_SERVER_ROUTE_FUSED").map_or(true, |v| v != "0"),
            route_done,
            staging_h: Mutex::default(),
            pending_jobs: Mutex::default(),
            gpu,
        }))
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of weights uploaded.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Device memory bandwidth in bytes/s: a device-to-device copy of `bytes` (read plus
    /// written), best of five after a warm-up.
    pub fn copy_bandwidth(&self, bytes: usize) -> crate::Result<f64> {
        let (a, b) = (self.gpu.alloc(bytes)?, self.gpu.alloc(bytes)?);
        let (e0, e1) = (self.gpu.event()?, self.gpu.event()?);
        let mut best = f32::MAX;
        for i in 0..6 {
            e0.record()?;
            // SAFETY: both buffers hold `bytes`.
            unsafe { self.gpu.dtod(b.ptr(), a.ptr(), bytes)? };
            e1.record()?;
            let ms = e1.since(&e0)?;
            if i > 0 {
                best = best.min(ms);
            }
        }
        Ok(2.0 * bytes as f64 / (best as f64 * 1e-3))
    }

    /// Bytes the activation pool holds.
    pub fn pool_bytes(&self) -> usize {
        self.pool.held()
    }

    /// A fresh activation of `rows × width` (filled with NaN when `LLM_SERVER_CUDA_POISON`
    /// is set, so a test sees any value a kernel failed to write).
    pub(crate) fn act(&self, rows: usize, width: usize) -> crate::Result<CudaAct> {
        let a = CudaAct {
            block: Arc::new(self.pool.get(4 * rows * width)?),
            off: 0,
            rows,
            width,
            q8: None,
        };
        if self.poison {
            // SAFETY: the block holds rows × width floats.
            unsafe { self.gpu.memset(a.ptr(), 0xff, 4 * a.len())? };
        }
        Ok(a)
    }

    /// Start a forward step by hand (tests and kernel benchmarks): the tokens and first
    /// position go to the device as `forward` sends them.
    pub fn step(&self, tokens: &[u32], pos0: usize) -> crate::Result<CudaStep> {
        self.gpu.bind()?;
        self.write_step(tokens, pos0)?;
        Ok(CudaStep {
            n: tokens.len(),
            exec: engine::Exec::default(),
        })
    }

    /// An activation holding `data` (`rows × width`).
    pub fn upload_act(&self, rows: usize, width: usize, data: &[f32]) -> crate::Result<CudaAct> {
        if data.len() != rows * width {
            return Err(Error::Size(format!(
                "{} values for {rows} × {width}",
                data.len()
            )));
        }
        let a = self.act(rows, width)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: the block holds the values; synced before `bytes` goes.
        unsafe { self.gpu.htod(a.ptr(), &bytes)? };
        self.gpu.sync()?;
        Ok(a)
    }

    /// The values of an activation (waits for the stream).
    pub fn download_act(&self, a: &CudaAct) -> crate::Result<Vec<f32>> {
        self.download(a)
    }

    /// Scratch of `bytes` from the pool.
    pub(crate) fn scratch(&self, bytes: usize) -> crate::Result<Block> {
        self.pool.get(bytes)
    }

    /// Upload `bytes` (the data of `t`, or a conversion of it) once per tensor.
    fn upload(&self, t: &QTensor, bytes: &[u8]) -> crate::Result<Arc<DevBuf>> {
        let key = (t.data().as_ptr() as usize, t.data().len());
        if let Some((b, _)) = lock(&self.uploaded).get(&key) {
            return Ok(b.clone());
        }
        let buf = self.gpu.alloc(bytes.len())?;
        buf.upload(bytes)?;
        self.count_weights(bytes.len());
        let buf = Arc::new(buf);
        lock(&self.uploaded).insert(key, (buf.clone(), t.clone()));
        Ok(buf)
    }

    /// Add `bytes` to the weights on the device.
    pub(crate) fn count_weights(&self, bytes: usize) {
        self.weight_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn zeroed(&self, bytes: usize) -> crate::Result<DevBuf> {
        let b = self.gpu.alloc(bytes)?;
        // SAFETY: the whole buffer just allocated.
        unsafe { self.gpu.memset(b.ptr(), 0, bytes)? };
        self.gpu.sync()?;
        Ok(b)
    }

    /// Write the step's position and tokens to the device.
    fn write_step(&self, tokens: &[u32], pos0: usize) -> crate::Result<()> {
        let n = tokens.len();
        if n > MAX_STEP_TOKENS {
            return Err(Error::Size(format!(
                "{n} tokens in one call; the CUDA backend takes up to {MAX_STEP_TOKENS}"
            )));
        }
        let mut st = lock(&self.staging);
        let bytes = st.as_mut_slice();
        bytes[..4].copy_from_slice(&(pos0 as i32).to_le_bytes());
        for (i, t) in tokens.iter().enumerate() {
            bytes[4 + 4 * i..8 + 4 * i].copy_from_slice(&t.to_le_bytes());
        }
        // SAFETY: the step buffer holds MAX_STEP_TOKENS + 1 words; the staging buffer is
        // pinned and not written again before the stream passes this copy (the forward that
        // follows ends with a sync).
        unsafe { self.gpu.htod(self.step.ptr(), &bytes[..4 * (n + 1)]) }
    }

    /// Copy `out` to the host (waits for the stream).
    fn download(&self, out: &CudaAct) -> crate::Result<Vec<f32>> {
        let bytes = 4 * out.len();
        let mut slot = lock(&self.out);
        if slot.as_ref().is_none_or(|h| h.bytes() < bytes) {
            *slot = None;
            *slot = Some(self.gpu.alloc_host(bytes.next_power_of_two())?);
        }
        let host = slot.as_mut().map(|h| h.as_mut_slice()).unwrap_or_default();
        // SAFETY: `out` holds `bytes`; the host buffer at least as many; synced below.
        unsafe { self.gpu.dtoh(&mut host[..bytes], out.ptr())? };
        self.gpu.sync()?;
        Ok(host[..bytes]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Run `graph` for a decode step of `seq`: replayed if recorded, recorded on the second
    /// step, eager before.
    fn decode(
        &self,
        seq: &mut Seq<Cuda>,
        step: &CudaStep,
        graph: &mut ModelGraph<'_, Cuda>,
    ) -> R<CudaAct> {
        let extra = &mut seq.extra;
        if let (Some(g), Some(out)) = (&extra.graph, &extra.out) {
            self.gpu.launch_graph(g)?;
            return Ok(out.clone());
        }
        if extra.decode_steps == 0 {
            extra.decode_steps += 1;
            return graph(step, &mut seq.layers);
        }
        self.gpu.begin_capture()?;
        let out = graph(step, &mut seq.layers);
        let captured = self.gpu.end_capture();
        let out = out?;
        let g = captured?;
        self.gpu.launch_graph(&g)?;
        let extra = &mut seq.extra;
        extra.graph = Some(g);
        extra.out = Some(out.clone());
        // The graph's host nodes run these jobs at every replay.
        extra.host_jobs = std::mem::take(&mut *lock(&self.pending_jobs));
        Ok(out)
    }
}

impl Backend for Cuda {
    type Mat = CudaMat;
    type Vector = CudaVec;
    type Index = CudaIndex;
    type Act = CudaAct;
    type Layer = CudaLayer;
    type SeqExtra = CudaSeq;
    type Step = CudaStep;

    fn name(&self) -> String {
        self.gpu.describe()
    }

    fn mat(&self, t: QTensor) -> R<CudaMat> {
        let k = t.row_len();
        if !k.is_multiple_of(8) {
            return Err(Error::Size(format!(
                "{}: rows of {k} values (a multiple of 8 is needed)",
                t.name
            ))
            .into());
        }
        let experts = if t.dims.len() >= 3 {
            t.dims[2] as usize
        } else {
            1
        };
        let m = t.n_rows() / experts.max(1);
        let converted;
        let (ty, data) = if NATIVE_TYPES.contains(&t.ty) {
            (t.ty, t.data())
        } else {
            // Other types (the IQ2/IQ3 family, …): f16 on the GPU, converted once here.
            let vals = t.to_f32()?;
            converted = vals
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect::<Vec<u8>>();
            (GgmlType::F16, &converted[..])
        };
        let row_bytes = ty.bytes_for(k as u64).unwrap_or(0) as usize;
        let (buf, host) = match self.in_ram(&t) {
            Some(in_ram) => {
                let (buf, h) = self.upload_experts(&t, data, &in_ram, m * row_bytes)?;
                self.hybrid
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                (buf, Some(Arc::new(h)))
            }
            None => (self.upload(&t, data)?, None),
        };
        Ok(CudaMat {
            buf,
            name: t.name.clone(),
            ty,
            k,
            m,
            experts,
            row_bytes,
            host,
        })
    }

    fn vector(&self, v: Vec<f32>) -> R<CudaVec> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let buf = self.gpu.alloc(bytes.len())?;
        buf.upload(&bytes)?;
        Ok(CudaVec { buf, len: v.len() })
    }

    fn index(&self, cols: Vec<u32>) -> R<CudaIndex> {
        let bytes: Vec<u8> = cols.iter().flat_map(|x| x.to_le_bytes()).collect();
        let buf = self.gpu.alloc(bytes.len())?;
        buf.upload(&bytes)?;
        Ok(CudaIndex {
            buf,
            len: cols.len(),
        })
    }

    fn kv_layer(
        &self,
        n_head_kv: usize,
        head_dim: usize,
        n_ctx: usize,
        cache: CacheConfig,
    ) -> R<CudaLayer> {
        KvCache::check_head(cache.k, head_dim)?;
        KvCache::check_head(cache.v, head_dim)?;
        let width = n_head_kv * head_dim;
        Ok(CudaLayer::Kv {
            k: self.zeroed(n_ctx * cache.k.row_bytes(width))?,
            v: self.zeroed(n_ctx * cache.v.row_bytes(width))?,
            kt: cache.k,
            vt: cache.v,
            rot_k: KvCache::key_rotation(cache.k, head_dim),
            rot_v: KvCache::value_rotation(cache.v, head_dim),
        })
    }

    fn recurrent_layer(&self, conv: usize, ssm: usize) -> R<CudaLayer> {
        Ok(CudaLayer::Recurrent {
            conv: self.zeroed(4 * conv)?,
            ssm: self.zeroed(4 * ssm)?,
        })
    }

    fn save_layer(&self, l: &CudaLayer) -> R<Option<Vec<u8>>> {
        let CudaLayer::Recurrent { conv, ssm } = l else {
            return Ok(None);
        };
        let mut out = vec![0u8; conv.bytes() + ssm.bytes()];
        let (c, s) = out.split_at_mut(conv.bytes());
        conv.download(c)?;
        ssm.download(s)?;
        Ok(Some(out))
    }

    fn load_layer(&self, l: &mut CudaLayer, saved: &[u8]) -> R<()> {
        let CudaLayer::Recurrent { conv, ssm } = l else {
            return Err(
                crate::ops::size_err("a recurrent state saved for a KV layer".into()).into(),
            );
        };
        if saved.len() != conv.bytes() + ssm.bytes() {
            return Err(crate::ops::size_err(format!(
                "a saved recurrent state of {} bytes for a layer of {}",
                saved.len(),
                conv.bytes() + ssm.bytes()
            ))
            .into());
        }
        let (c, s) = saved.split_at(conv.bytes());
        conv.upload(c)?;
        ssm.upload(s)?;
        Ok(())
    }

    fn kv_bytes(&self, l: &CudaLayer) -> usize {
        match l {
            CudaLayer::Kv { k, v, .. } => k.bytes() + v.bytes(),
            CudaLayer::Recurrent { .. } => 0,
        }
    }

    fn forward(
        &self,
        req: Request<'_>,
        seq: &mut Seq<Cuda>,
        graph: &mut ModelGraph<'_, Cuda>,
    ) -> R<Vec<f32>> {
        let _busy = lock(&self.busy);
        self.gpu.bind()?;
        self.write_step(req.tokens, req.pos0)?;
        let step = CudaStep {
            n: req.tokens.len(),
            exec: req.exec,
        };
        let eager = self.hybrid.load(std::sync::atomic::Ordering::Relaxed) && !self.hybrid_graphs;
        lock(&self.pending_jobs).clear();
        let out = if step.n == 1 && self.graphs && !eager && !self.gpu.profiling() {
            self.decode(seq, &step, graph)
        } else {
            graph(&step, &mut seq.layers)
        };
        let logits = out.and_then(|o| Ok(self.download(&o)?));
        // The RAM experts' host functions report here (they cannot unwind into the driver).
        let pending = std::mem::take(&mut *lock(&self.pending_jobs));
        let failed = pending
            .iter()
            .chain(&seq.extra.host_jobs)
            .find_map(|j| j.error());
        if let Some(e) = failed {
            self.gpu.sync()?;
            return Err(Error::Size(e).into());
        }
        logits
    }

    fn embed(&self, s: &CudaStep, table: &CudaMat) -> R<CudaAct> {
        Ok(self.get_rows(s, table)?)
    }

    fn scale(&self, _: &CudaStep, x: &mut CudaAct, c: f32) -> R<()> {
        x.q8 = None;
        Ok(self.scale_(x, c)?)
    }

    fn rms_norm(&self, _: &CudaStep, x: &CudaAct, w: &CudaVec, eps: f32) -> R<CudaAct> {
        let y = self.act(x.rows, x.width)?;
        self.rms_norm_(x, w, eps, &y)?;
        Ok(y)
    }

    fn rms_norm_inplace(&self, _: &CudaStep, x: &mut CudaAct, w: &CudaVec, eps: f32) -> R<()> {
        x.q8 = None;
        Ok(self.rms_norm_(x, w, eps, x)?)
    }

    fn add(&self, _: &CudaStep, h: &mut CudaAct, a: &CudaAct) -> R<()> {
        h.q8 = None;
        Ok(self.add_(h, a)?)
    }

    fn add_norm(
        &self,
        _: &CudaStep,
        h: &mut CudaAct,
        a: &CudaAct,
        w: &CudaVec,
        eps: f32,
    ) -> R<CudaAct> {
        h.q8 = None;
        Ok(self.add_norm_(h, a, w, eps)?)
    }

    fn add_bias(&self, _: &CudaStep, x: &mut CudaAct, b: &CudaVec) -> R<()> {
        x.q8 = None;
        Ok(self.add_bias_(x, b)?)
    }

    fn matmul(&self, s: &CudaStep, w: &CudaMat, x: &CudaAct) -> R<CudaAct> {
        let [out] = self.matmuls(s, [w], x)?;
        Ok(out)
    }

    fn matmuls<const N: usize>(
        &self,
        _: &CudaStep,
        w: [&CudaMat; N],
        x: &CudaAct,
    ) -> R<[CudaAct; N]> {
        let mut outs = Vec::with_capacity(N);
        for m in &w {
            outs.push(self.act(x.rows, m.m * m.experts)?);
        }
        let pairs: Vec<(&CudaMat, &CudaAct)> = w.iter().copied().zip(outs.iter()).collect();
        self.matmuls_(&pairs, x, None)?;
        outs.try_into()
            .map_err(|_| Error::Size("matmuls: output count".into()).into())
    }

    fn gather_cols(&self, _: &CudaStep, x: &CudaAct, cols: &CudaIndex) -> R<CudaAct> {
        Ok(self.gather_cols_(x, cols)?)
    }

    fn rope(&self, _: &CudaStep, x: &mut CudaAct, head_dim: usize, rope: Rope) -> R<()> {
        x.q8 = None;
        Ok(self.rope_(x, head_dim, rope)?)
    }

    fn attention(
        &self,
        s: &CudaStep,
        layer: &mut CudaLayer,
        qkv: [&CudaAct; 3],
        p: AttnParams,
    ) -> R<CudaAct> {
        Ok(self.attention_(s, layer, qkv, p)?)
    }

    fn attention_block(
        &self,
        s: &CudaStep,
        layer: &mut CudaLayer,
        [qg, k, v]: [CudaAct; 3],
        b: AttnBlock<'_, Cuda>,
    ) -> R<CudaAct> {
        if !self.attn_fused {
            return engine::backend::attention_block_ops(self, s, layer, [qg, k, v], b);
        }
        Ok(self.attention_block_(layer, [&qg, &k, &v], &b)?)
    }

    fn sigmoid_mul(&self, _: &CudaStep, x: &mut CudaAct, g: &CudaAct) -> R<()> {
        x.q8 = None;
        Ok(self.binary("sigmoid_mul", x, g)?)
    }

    fn glu(&self, _: &CudaStep, mut gate: CudaAct, up: &CudaAct, kind: Glu) -> R<CudaAct> {
        gate.q8 = None;
        let name = match kind {
            Glu::Silu => "glu_silu",
            Glu::Gelu => "glu_gelu",
        };
        self.binary(name, &gate, up)?;
        Ok(gate)
    }

    fn glu_matmul(
        &self,
        s: &CudaStep,
        gate: CudaAct,
        up: &CudaAct,
        kind: Glu,
        w: &CudaMat,
    ) -> R<CudaAct> {
        let y = self.act(gate.rows, w.m * w.experts)?;
        match kind {
            Glu::Silu => self.matmuls_(&[(w, &y)], &gate, Some(up))?,
            Glu::Gelu => {
                let g = self.glu(s, gate, up, kind)?;
                self.matmul_(w, &g, &y)?;
            }
        }
        Ok(y)
    }

    fn moe(&self, s: &CudaStep, m: &Experts<Cuda>, x: &CudaAct) -> R<CudaAct> {
        Ok(self.moe_(s, m, x, None)?)
    }

    fn moe_add_norm(
        &self,
        s: &CudaStep,
        m: &Experts<Cuda>,
        x: &CudaAct,
        (h, w, eps): (&mut CudaAct, &CudaVec, f32),
    ) -> R<CudaAct> {
        h.q8 = None;
        Ok(self.moe_(s, m, x, Some((h, w, eps)))?)
    }

    fn deltanet(
        &self,
        s: &CudaStep,
        layer: &mut CudaLayer,
        p: &DeltaNet<'_, Cuda>,
        mix: &CudaAct,
        beta_alpha: [&CudaAct; 2],
    ) -> R<CudaAct> {
        Ok(self.deltanet_(s, layer, p, mix, beta_alpha)?)
    }

    fn norm_gate(
        &self,
        _: &CudaStep,
        o: &CudaAct,
        w: &CudaVec,
        z: &CudaAct,
        eps: f32,
    ) -> R<CudaAct> {
        Ok(self.norm_gate_(o, w, z, eps)?)
    }

    fn keep_rows(&self, _: &CudaStep, x: CudaAct, first: usize) -> R<CudaAct> {
        let first = first.min(x.rows);
        Ok(CudaAct {
            off: x.off + 4 * (first * x.width) as u64,
            rows: x.rows - first,
            q8: None,
            ..x
        })
    }

    fn softcap(&self, _: &CudaStep, x: &mut CudaAct, c: f32) -> R<()> {
        x.q8 = None;
        Ok(self.softcap_(x, c)?)
    }
}
