//! Random but sane tensor contents for synthetic models.
//!
//! Values are drawn per row from a counter-based generator (seed, tensor, row), so a file is the
//! same whatever the thread count. Scales follow the usual initialisations: matmul weights with
//! variance 1/fan_in, norms near 1, `ssm_a` = −A with A in [1, 16] and `ssm_dt.bias` the inverse
//! softplus of a log-uniform dt in [0.001, 0.1] (the ranges of transformers' Qwen3.5 DeltaNet
//! init). Routed experts are written as random quant blocks directly (`quant::random_blocks`):
//! they are 92% of a 35B file and quantizing 32 G random floats would take minutes.
//!
//! Router skew: with `--router-skew S > 0`, every token embedding gets a common component along
//! a unit vector `u`, and router row e gets `β_e·u` with `β_e = −S·ln(1 + rank_e)/κ`, where κ is
//! the expected `u·x` after the RMS norm. The router logits then carry a bias of about
//! `−S·ln(1 + rank)`, so expert popularity falls off like `(1 + rank)^−S` (Zipf), with a
//! different random ranking in every layer.

use anyhow::{anyhow, Context};
use gguf::GgmlType;

use super::qwen35moe::Planned;

/// How a tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Token embeddings: unit variance, plus the skew direction when skew is on.
    Embedding,
    /// RMSNorm weights: 1 ± 0.1.
    Norm,
    /// Matmul weights: uniform with variance 1/ne0.
    Matmul,
    /// DeltaNet short-convolution taps: variance 1/kernel.
    Conv,
    /// `ssm_dt.bias`: inverse softplus of a log-uniform dt.
    DtBias,
    /// `ssm_a` = −A, A uniform in [1, 16].
    SsmA,
    /// Router: matmul weights plus the skew bias along `u`.
    Router,
    /// 3-D routed-expert tensors: random quant blocks.
    Experts,
}

/// Fills tensors for one synthetic file.
#[derive(Debug)]
pub struct Filler {
    pub seed: u64,
    pub skew: f32,
    pub n_embd: u64,
    pub threads: usize,
}

/// Norm of the common embedding component, relative to √n_embd.
const SKEW_COMPONENT: f32 = 0.5;

impl Filler {
    /// The bytes of tensor `t` stored as `ty`.
    pub fn tensor_bytes(&self, t: &Planned, ty: GgmlType) -> anyhow::Result<Vec<u8>> {
        let ne0 = t.dims[0];
        let n = t.n_elements();
        let size = ty
            .bytes_for(n)
            .ok_or_else(|| anyhow!("{}: {n} elements don't fit {ty} blocks", t.name))?;
        let mut out = vec![0u8; usize::try_from(size)?];
        let row_bytes = usize::try_from(
            ty.bytes_for(ne0)
                .ok_or_else(|| anyhow!("{}: bad row", t.name))?,
        )?;
        // Work is cut into units seeded by their index, so the file doesn't depend on the thread
        // count: a row, or for random expert blocks a whole expert (one `random_blocks` call
        // per expert keeps its per-call set-up negligible).
        let random = t.init == Init::Experts && ty != GgmlType::F32 && quant::can_quantize(ty);
        let n_rows = out.len() / row_bytes;
        let unit_rows = if random {
            n_rows / t.dims.last().map_or(1, |&e| e.max(1) as usize)
        } else {
            1
        };
        let unit_bytes = unit_rows.max(1) * row_bytes;
        let tseed = mix(self.seed ^ hash(&t.name));
        let units_per = (out.len() / unit_bytes)
            .div_ceil(self.threads.max(1))
            .max(1);
        std::thread::scope(|s| {
            let jobs: Vec<_> = out
                .chunks_mut(units_per * unit_bytes)
                .enumerate()
                .map(|(i, chunk)| {
                    let first = (i * units_per) as u64;
                    s.spawn(move || {
                        for (j, unit) in chunk.chunks_mut(unit_bytes).enumerate() {
                            let seed = mix(tseed ^ (first + j as u64));
                            if random {
                                quant::random_blocks(ty, unit, seed, 1.0 / (ne0 as f32).sqrt())?;
                            } else {
                                self.fill_row(t, ty, first + j as u64, seed, unit)?;
                            }
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().map_err(|_| anyhow!("fill thread panicked"))?)
        })
        .with_context(|| format!("filling {}", t.name))?;
        Ok(out)
    }

    /// Row `r` of `t` as `ty`: f32 values, then quantized.
    fn fill_row(
        &self,
        t: &Planned,
        ty: GgmlType,
        r: u64,
        seed: u64,
        out: &mut [u8],
    ) -> anyhow::Result<()> {
        let mut buf = vec![0f32; t.dims[0] as usize];
        self.row_values(t, r, &mut Rng::new(seed), &mut buf);
        quant::quantize(ty, &buf, out)?;
        Ok(())
    }

    /// The f32 values of row `r` of `t`.
    fn row_values(&self, t: &Planned, r: u64, rng: &mut Rng, buf: &mut [f32]) {
        let n = buf.len() as f32;
        let uniform_var = |rng: &mut Rng, var: f32| (3.0 * var).sqrt() * rng.symmetric();
        match t.init {
            Init::Embedding => {
                // c = 0.5·√n·u, a component of norm 0.5·√n (a fifth of the row's energy).
                let c = if self.skew > 0.0 {
                    SKEW_COMPONENT * n.sqrt()
                } else {
                    0.0
                };
                for (i, v) in buf.iter_mut().enumerate() {
                    *v = uniform_var(rng, 1.0) + c * self.direction(i);
                }
            }
            Init::Norm => buf
                .iter_mut()
                .for_each(|v| *v = 1.0 + 0.1 * rng.symmetric()),
            Init::Matmul | Init::Experts => {
                buf.iter_mut().for_each(|v| *v = uniform_var(rng, 1.0 / n))
            }
            Init::Conv => {
                let k = t.dims[0] as f32;
                buf.iter_mut().for_each(|v| *v = uniform_var(rng, 1.0 / k));
            }
            Init::DtBias => buf.iter_mut().for_each(|v| {
                let dt = (0.001f32.ln() + rng.unit() * (0.1f32.ln() - 0.001f32.ln())).exp();
                *v = dt + (-(-dt).exp_m1()).ln(); // softplus⁻¹(dt) = dt + ln(1 − e^−dt)
            }),
            Init::SsmA => buf.iter_mut().for_each(|v| *v = -(1.0 + 15.0 * rng.unit())),
            Init::Router => {
                let beta = self.router_bias(t, r);
                for (i, v) in buf.iter_mut().enumerate() {
                    *v = uniform_var(rng, 1.0 / n) + beta * self.direction(i);
                }
            }
        }
    }

    /// Component i of the unit skew direction `u`: random signs over √n_embd.
    fn direction(&self, i: usize) -> f32 {
        let sign = if mix(self.seed ^ 0x5eed_d1ec ^ i as u64) & 1 == 0 {
            1.0
        } else {
            -1.0
        };
        sign / (self.n_embd as f32).sqrt()
    }

    /// `β_e` for router row (expert) `e` (see the file comment).
    fn router_bias(&self, t: &Planned, e: u64) -> f32 {
        if self.skew <= 0.0 {
            return 0.0;
        }
        let n_expert = t.dims[1];
        // A random ranking per layer: rank = position of e in a seeded shuffle, done by sorting
        // experts by a hash — cheap enough for a few hundred experts.
        let layer_seed = mix(self.seed ^ t.layer.unwrap_or(0).wrapping_mul(0x9e37));
        let key = |x: u64| mix(layer_seed ^ x);
        let rank = (0..n_expert).filter(|&o| key(o) < key(e)).count() as f32;
        let n = self.n_embd as f32;
        let m = SKEW_COMPONENT * n.sqrt(); // |c|
        let kappa = m / (1.0 + m * m / n).sqrt();
        -self.skew * (1.0 + rank).ln() / kappa
    }
}

/// SplitMix64's finaliser: a good 64-bit mix for seeding.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce5_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name, so each tensor has its own stream.
fn hash(s: &str) -> u64 {
    crate::fnv::Fnv::of(s.as_bytes())
}

/// SplitMix64 stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [−1, 1).
    fn symmetric(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn dt_bias_and_a_are_sane() {
        let f = Filler {
            seed: 3,
            skew: 0.0,
            n_embd: 256,
            threads: 1,
        };
        let t = Planned {
            name: "x".into(),
            dims: vec![32],
            init: Init::DtBias,
            layer: Some(0),
        };
        let mut buf = vec![0f32; 32];
        f.row_values(&t, 0, &mut Rng::new(1), &mut buf);
        // softplus(bias) must give back dt in [0.001, 0.1].
        for b in &buf {
            let dt = (1.0 + b.exp()).ln();
            assert!((0.000_99..0.100_1).contains(&dt), "{b} -> {dt}");
        }
        let t = Planned {
            init: Init::SsmA,
            ..t
        };
        f.row_values(&t, 0, &mut Rng::new(1), &mut buf);
        assert!(buf.iter().all(|a| (-16.0..=-1.0).contains(a)));
    }

    #[test]
    fn skew_orders_router_bias() {
        let f = Filler {
            seed: 3,
            skew: 1.0,
            n_embd: 256,
            threads: 1,
        };
        let t = Planned {
            name: "r".into(),
            dims: vec![256, 16],
            init: Init::Router,
            layer: Some(2),
        };
        let mut b: Vec<f32> = (0..16).map(|e| f.router_bias(&t, e)).collect();
        b.sort_by(|x, y| y.total_cmp(x));
        assert_eq!(b[0], 0.0); // rank 0: ln(1) = 0
        assert!(
            b.windows(2).all(|w| w[0] > w[1]),
            "distinct ranks give distinct biases"
        );
    }
}
