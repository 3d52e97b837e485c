//! The KV cache: the keys and values of every past position of an attention layer, stored in the
//! type chosen when the state is made (llama.cpp's `-ctk/-ctv`: `f16`, `q8_0`, `q4_0`), and
//! attention of new queries over it.
//!
//! A cache row is one position's `n_head_kv × head_dim` values in ggml's layout for its type
//! (q8_0/q4_0: blocks of 32 values, so a head is whole blocks when `head_dim` is a multiple
//! of 32). Quantized types follow llama.cpp's CPU flash-attention kernel
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`): rows are quantized as `set_rows`
//! does (the CPU `from_float`: q8_0 the x86 way, q4_0 with the reference quantizer), the query
//! is quantized to the key type's dot type (Q8_0) and scored with the integer block dot, and
//! values are dequantized to f32 and summed in f32. The f16 cache keeps the engine's plain f32
//! arithmetic (see [`crate::ops::attention`] for why).
//!
//! A quantized cache also stores its rows rotated, as llama.cpp does since its PR 21038
//! (`llama_kv_cache` `attn_rot_k/v`, `llm_graph_context::build_attn`): an orthonormal
//! Walsh–Hadamard transform per chunk of a head spreads outlier channels over the chunk, so a
//! block's scale no longer follows one large value. Keys and queries get the same rotation (Q·K
//! is unchanged up to rounding); values are rotated on the way in and the attention output is
//! rotated back (the transform is its own inverse). Chunks: for keys the largest power of two
//! ≥ 64 dividing `head_dim`, for values 64; none when `head_dim` is not a multiple of 64.

use std::fmt;
use std::str::FromStr;

use gguf::GgmlType;

use crate::error::{Error, Result};
use crate::ops::{AttnShape, Exec};

/// The element type of a K or V cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// IEEE half, llama.cpp's default.
    #[default]
    F16,
    /// 32 8-bit codes and an f16 scale per block (34 bytes per 32 values).
    Q8_0,
    /// 32 4-bit codes and an f16 scale per block (18 bytes per 32 values).
    Q4_0,
}

impl KvType {
    /// Every type, in the order the CLI lists them.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// llama.cpp's name (`-ctk` values).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The ggml type the rows are stored in.
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Values per block (1 for f16).
    pub fn block_size(self) -> usize {
        self.ggml().block_size() as usize
    }

    /// Bytes of one row of `width` values (`width` a multiple of [`KvType::block_size`]).
    pub fn row_bytes(self, width: usize) -> usize {
        width / self.block_size() * self.ggml().type_size() as usize
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = Error;

    fn from_str(s: &str) -> Result<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::UnknownCacheType {
                name: s.to_string(),
            })
    }
}

/// The cache types of a state's attention layers (default: f16 keys and values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// Key cache type (`-ctk`).
    pub k: KvType,
    /// Value cache type (`-ctv`).
    pub v: KvType,
}

/// One of a layer's two caches: `n_ctx` rows of `width` values in `ty`, position-major.
#[derive(Clone, Debug)]
pub struct KvCache {
    ty: KvType,
    width: usize,
    row_bytes: usize,
    /// Walsh–Hadamard chunk the rows are stored rotated by (0: not rotated).
    rot: usize,
    data: Vec<u8>,
}

impl KvCache {
    /// A zeroed key cache for `n_ctx` positions of `n_head_kv` heads of `head_dim`.
    pub fn keys(ty: KvType, n_head_kv: usize, head_dim: usize, n_ctx: usize) -> Result<KvCache> {
        let rot = KvCache::key_rotation(ty, head_dim);
        KvCache::new(ty, n_head_kv * head_dim, head_dim, n_ctx, rot)
    }

    /// A zeroed value cache for `n_ctx` positions of `n_head_kv` heads of `head_dim`.
    pub fn values(ty: KvType, n_head_kv: usize, head_dim: usize, n_ctx: usize) -> Result<KvCache> {
        let rot = KvCache::value_rotation(ty, head_dim);
        KvCache::new(ty, n_head_kv * head_dim, head_dim, n_ctx, rot)
    }

    /// The Walsh–Hadamard chunk keys of type `ty` are rotated by: the largest power of two
    /// ≥ 64 dividing `head_dim` for quantized types, none for f16 or other head sizes.
    pub fn key_rotation(ty: KvType, head_dim: usize) -> usize {
        let mut rot = 0;
        if ty != KvType::F16 && head_dim.is_multiple_of(64) {
            rot = 64;
            while head_dim.is_multiple_of(2 * rot) {
                rot *= 2;
            }
        }
        rot
    }

    /// The chunk values are rotated by: 64 for quantized types (llama.cpp found small chunks
    /// better for values, PR 21038's discussion), none for f16 or other head sizes.
    pub fn value_rotation(ty: KvType, head_dim: usize) -> usize {
        match ty != KvType::F16 && head_dim.is_multiple_of(64) {
            true => 64,
            false => 0,
        }
    }

    /// Quantized types need every head to be whole blocks, as llama.cpp does.
    pub fn check_head(ty: KvType, head_dim: usize) -> Result<()> {
        let block = ty.block_size();
        if block > 1 && (head_dim == 0 || !head_dim.is_multiple_of(block)) {
            return Err(Error::CacheBlock {
                ty: ty.name(),
                head_dim,
                block,
            });
        }
        Ok(())
    }

    fn new(ty: KvType, width: usize, head_dim: usize, n_ctx: usize, rot: usize) -> Result<KvCache> {
        KvCache::check_head(ty, head_dim)?;
        let row_bytes = ty.row_bytes(width);
        Ok(KvCache {
            ty,
            width,
            row_bytes,
            rot,
            data: vec![0u8; n_ctx * row_bytes],
        })
    }

    /// The element type.
    pub fn ty(&self) -> KvType {
        self.ty
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes per row (one position).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Rows the cache holds.
    pub fn n_ctx(&self) -> usize {
        self.data.len() / self.row_bytes.max(1)
    }

    /// The Walsh–Hadamard chunk rows are rotated by before they are stored (0: none).
    pub fn rotation(&self) -> usize {
        self.rot
    }

    /// Store `row` (`width` values, already rotated if the cache is) at position `pos`,
    /// converted as ggml's CPU `set_rows` converts it.
    pub fn store(&mut self, pos: usize, row: &[f32]) -> Result<()> {
        let dst = &mut self.data[pos * self.row_bytes..(pos + 1) * self.row_bytes];
        match self.ty {
            // ggml's CPU `from_float` for Q8_0 is the x86 `quantize_row_q8_0` (round half to
            // even, multiplier 127/amax), the same code that quantizes matmul activations.
            KvType::Q8_0 => {
                let mut q = Vec::with_capacity(dst.len());
                quant::quantize_activations(GgmlType::Q8_0, row, &mut q)?;
                dst.copy_from_slice(&q);
            }
            KvType::F16 | KvType::Q4_0 => quant::quantize(self.ty.ggml(), row, dst)?,
        }
        Ok(())
    }

    /// The raw bytes of position `pos`.
    pub fn row(&self, pos: usize) -> &[u8] {
        &self.data[pos * self.row_bytes..(pos + 1) * self.row_bytes]
    }

    /// Append the f32 values of positions `first..end` to `out`.
    pub fn dequant_rows(&self, first: usize, end: usize, out: &mut Vec<f32>) -> Result<()> {
        let start = out.len();
        out.resize(start + (end - first) * self.width, 0.0);
        let src = &self.data[first * self.row_bytes..end * self.row_bytes];
        quant::dequantize(self.ty.ggml(), src, &mut out[start..])?;
        Ok(())
    }
}

/// One forward call's use of a layer's cache: each new position is stored with
/// [`KvPass::push`], then the call's queries attend with [`KvPass::attend_all`] (`attn.rs`),
/// which reads the cache in its stored type.
#[derive(Debug)]
pub struct KvPass<'a> {
    k: &'a mut KvCache,
    v: &'a mut KvCache,
    /// Positions stored so far.
    len: usize,
    /// Scratch: a rotated row.
    rotated: Vec<f32>,
}

impl<'a> KvPass<'a> {
    /// Start a call whose first new position is `pos0` (positions `..pos0` are in the cache).
    pub fn new(k: &'a mut KvCache, v: &'a mut KvCache, pos0: usize) -> Result<KvPass<'a>> {
        Ok(KvPass {
            k,
            v,
            len: pos0,
            rotated: Vec::new(),
        })
    }

    /// Store the key and value rows of the next position.
    pub fn push(&mut self, k_row: &[f32], v_row: &[f32]) -> Result<()> {
        let pos = self.len;
        if pos >= self.k.n_ctx() {
            return Err(Error::ContextFull {
                needed: pos + 1,
                n_ctx: self.k.n_ctx(),
            });
        }
        for (cache, row) in [(&mut *self.k, k_row), (&mut *self.v, v_row)] {
            if cache.rot > 0 {
                self.rotated.clear();
                self.rotated.extend_from_slice(row);
                hadamard(&mut self.rotated, cache.rot);
                cache.store(pos, &self.rotated)?;
            } else {
                cache.store(pos, row)?;
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Attention for the last `n` pushed positions at once: query `t` of `q`
    /// (`n × n_head × head_dim`) sees the stored positions up to its own, `pos = len − n + t`,
    /// from `pos + 1 − window` when a sliding window is given.
    pub fn attend_all(
        &self,
        q: &[f32],
        window: Option<usize>,
        s: AttnShape,
        out: &mut [f32],
        exec: Exec,
    ) -> Result<()> {
        let n = q.len() / (s.n_head * s.head_dim).max(1);
        crate::attn::attend((self.k, self.v), q, self.len - n, window, s, out, exec)
    }
}

/// The orthonormal Walsh–Hadamard transform (Sylvester order, `H[i][j] = (−1)^popcount(i&j)/√n`)
/// of each chunk of `n` values, `n` a power of two: scaled first, then butterflies of width 1,
/// 2, 4, …, the operations of ggml's `ggml_compute_forward_fwht` in its order, so the result
/// is the same to the bit.
pub fn hadamard(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for chunk in x.chunks_exact_mut(n) {
        chunk.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for pair in chunk.chunks_exact_mut(2 * len) {
                let (a, b) = pair.split_at_mut(len);
                for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about ±1.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::uniform(n, seed)
            .into_iter()
            .map(|u| u * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn names_parse_and_sizes() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>().unwrap(), t);
        }
        assert!("q5_0".parse::<KvType>().is_err());
        // Bytes per row of 128 values: f16 256, q8_0 4 blocks × 34, q4_0 4 blocks × 18.
        let sizes: Vec<usize> = KvType::ALL.iter().map(|t| t.row_bytes(128)).collect();
        assert_eq!(sizes, [256, 136, 72]);
    }

    #[test]
    fn heads_must_be_whole_blocks() {
        assert!(KvCache::keys(KvType::F16, 2, 48, 4).is_ok());
        let err = KvCache::values(KvType::Q8_0, 2, 48, 4).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
        assert!(KvCache::keys(KvType::Q4_0, 2, 64, 4).is_ok());
    }

    #[test]
    fn rotation_chunks_follow_llama_cpp() {
        let rot = |c: Result<KvCache>| c.unwrap().rotation();
        assert_eq!(rot(KvCache::keys(KvType::Q8_0, 2, 256, 1)), 256);
        assert_eq!(rot(KvCache::keys(KvType::Q4_0, 2, 192, 1)), 64);
        assert_eq!(rot(KvCache::keys(KvType::Q8_0, 2, 96, 1)), 0);
        assert_eq!(rot(KvCache::keys(KvType::F16, 2, 256, 1)), 0);
        assert_eq!(rot(KvCache::values(KvType::Q8_0, 2, 256, 1)), 64);
        assert_eq!(rot(KvCache::values(KvType::F16, 2, 256, 1)), 0);
    }

    #[test]
    fn hadamard_is_orthonormal_and_its_own_inverse() {
        let x = values(128, 5);
        let mut y = x.clone();
        hadamard(&mut y, 64);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x[..64]) - norm(&y[..64])).abs() < 1e-4);
        // Row 1 of H is (+, −, +, −, …)/8.
        let row1: f32 = x[..64]
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { *v } else { -*v })
            .sum();
        assert!((y[1] - row1 / 8.0).abs() < 1e-5);
        hadamard(&mut y, 64);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn rows_round_trip_within_the_type_error() {
        let (w, n) = (128, 5);
        let x = values(w * n, 1);
        // Worst-case error per value relative to the block's max |x| (≤ 1 here).
        for (ty, tol) in [
            (KvType::F16, 1e-3),
            (KvType::Q8_0, 1.0 / 127.0),
            (KvType::Q4_0, 1.0 / 7.0),
        ] {
            let mut c = KvCache::keys(ty, w / 64, 64, n).unwrap();
            assert_eq!(c.bytes(), n * ty.row_bytes(w));
            for p in 0..n {
                c.store(p, &x[p * w..(p + 1) * w]).unwrap();
            }
            let mut y = Vec::new();
            c.dequant_rows(0, n, &mut y).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= tol, "{ty}: max error {err}");
            let mut one = Vec::new();
            c.dequant_rows(3, 4, &mut one).unwrap();
            assert_eq!(one, y[3 * w..4 * w]);
        }
    }

    /// Attention of query `t` over positions `..=t` (the last `window` of them), `t < n`,
    /// through a cache of types `cfg`.
    fn attend_all(cfg: CacheConfig, s: AttnShape, n: usize, window: usize) -> Vec<f32> {
        let kvw = s.n_head_kv * s.head_dim;
        let qw = s.n_head * s.head_dim;
        let (k, v, q) = (values(n * kvw, 2), values(n * kvw, 3), values(n * qw, 4));
        let mut kc = KvCache::keys(cfg.k, s.n_head_kv, s.head_dim, n).unwrap();
        let mut vc = KvCache::values(cfg.v, s.n_head_kv, s.head_dim, n).unwrap();
        let mut out = vec![0f32; n * qw];
        // Two calls, the second starting mid-sequence, as prefill then decode would.
        let split = n / 2;
        for (a, b) in [(0, split), (split, n)] {
            let mut pass = KvPass::new(&mut kc, &mut vc, a).unwrap();
            for t in a..b {
                pass.push(&k[t * kvw..(t + 1) * kvw], &v[t * kvw..(t + 1) * kvw])
                    .unwrap();
            }
            let (q, o) = (&q[a * qw..b * qw], &mut out[a * qw..b * qw]);
            pass.attend_all(q, Some(window), s, o, Exec::default())
                .unwrap();
        }
        out
    }

    #[test]
    fn quantized_caches_attend_close_to_f16() {
        let s = AttnShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let f16 = attend_all(CacheConfig::default(), s, 40, usize::MAX);
        for (cfg, tol) in [
            (
                CacheConfig {
                    k: KvType::Q8_0,
                    v: KvType::Q8_0,
                },
                0.02,
            ),
            (
                CacheConfig {
                    k: KvType::Q8_0,
                    v: KvType::F16,
                },
                0.02,
            ),
            (
                CacheConfig {
                    k: KvType::Q4_0,
                    v: KvType::Q4_0,
                },
                0.15,
            ),
        ] {
            let q = attend_all(cfg, s, 40, usize::MAX);
            let err = f16
                .iter()
                .zip(&q)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < tol, "{cfg:?}: max |Δ| {err}");
        }
        // A sliding window reads only its positions, whatever the type.
        let q8 = CacheConfig {
            k: KvType::Q8_0,
            v: KvType::Q8_0,
        };
        let (win, full) = (attend_all(q8, s, 40, 8), attend_all(q8, s, 40, usize::MAX));
        assert_eq!(win[..8 * 256], full[..8 * 256]);
        assert_ne!(win[39 * 256..], full[39 * 256..]);
    }

    #[test]
    fn a_full_cache_is_an_error() {
        let mut kc = KvCache::keys(KvType::Q8_0, 1, 32, 1).unwrap();
        let mut vc = KvCache::values(KvType::Q8_0, 1, 32, 1).unwrap();
        let mut pass = KvPass::new(&mut kc, &mut vc, 0).unwrap();
        pass.push(&[0.5; 32], &[0.5; 32]).unwrap();
        assert!(pass.push(&[0.5; 32], &[0.5; 32]).is_err());
    }
}
