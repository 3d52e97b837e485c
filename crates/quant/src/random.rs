//! [`random_blocks`]: valid random blocks of any supported type, fast enough (several GB/s
//! per core for block types) to synthesize multi-gigabyte test models.
//!
//! Codes and sub-block scales are raw random bytes; the per-block scales are computed so
//! the dequantized values have the requested RMS. The RMS a block type gives at `d = 1` is
//! measured once per call on a small sample (so no per-format formula can drift from the
//! dequantizer), then `d = rms / that`. Offsets (`m`, `dmin`) are tied to `d` so values
//! centre near zero. Q8_1's `s` and Q8_K's `bsums` are filled in consistently.

use crate::dispatch::{check_lengths, kernels};
use crate::error::{Error, Op};
use crate::float::f32_to_bf16;
use crate::mxfp4::e8m0_to_f32_half;
use gguf::GgmlType;
use half::f16;

/// SplitMix64: tiny, fast, and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// The scale fields every block of one call gets, precomputed once.
struct Scales {
    /// `d` as f16 bytes.
    d16: [u8; 2],
    /// The offset (`m` or `dmin`) as f16 bytes.
    min16: [u8; 2],
    /// `d` as f32 (Q8_1's `s`, Q8_K's `d`).
    d: f32,
    /// MXFP4: the lower of the two exponents bracketing `d`, and the chance of the upper.
    e_lo: u8,
    p_hi: f32,
}

impl Scales {
    fn new(ty: GgmlType, d: f32) -> Scales {
        use GgmlType as T;
        // Offset per unit of d that centres the values (mean code times mean sub-scale ratio).
        let ratio = match ty {
            T::Q4_1 => -7.5,
            T::Q5_1 => -15.5,
            T::Q2_K => 1.5,
            T::Q4_K => 7.5,
            T::Q5_K => 15.5,
            _ => 0.0,
        };
        let d16 = f16::from_f32(d.min(f16::MAX.to_f32()));
        let min16 = f16::from_f32((d * ratio).clamp(f16::MIN.to_f32(), f16::MAX.to_f32()));
        // MXFP4 scales are powers of two: mix 2^k and 2^(k+1) so the mean square is d².
        let k = d.log2().floor().clamp(-127.0, 125.0);
        let e_lo = (k + 128.0) as u8;
        let ratio2 = (d / e8m0_to_f32_half(e_lo)).powi(2);
        Scales {
            d16: d16.to_le_bytes(),
            min16: min16.to_le_bytes(),
            d,
            e_lo,
            p_hi: ((ratio2 - 1.0) / 3.0).clamp(0.0, 1.0),
        }
    }
}

/// Overwrites the scale fields of one block of `ty` whose other bytes are random.
fn patch(ty: GgmlType, b: &mut [u8], s: &Scales, rng: &mut Rng) {
    use GgmlType as T;
    let put = |b: &mut [u8], at: usize, v: [u8; 2]| b[at..at + 2].copy_from_slice(&v);
    match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::IQ4_XS => put(b, 0, s.d16),
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => {
            put(b, 0, s.d16);
            put(b, 2, s.min16);
        }
        T::Q8_1 => {
            let sum: i32 = b[4..36].iter().map(|&q| q as i8 as i32).sum();
            put(b, 0, s.d16);
            put(
                b,
                2,
                f16::from_f32(sum as f32 * f16::from_le_bytes(s.d16).to_f32()).to_le_bytes(),
            );
        }
        T::Q2_K => {
            put(b, 80, s.d16);
            put(b, 82, s.min16);
        }
        T::Q3_K => put(b, 108, s.d16),
        T::Q6_K => put(b, 208, s.d16),
        T::Q8_K => {
            b[..4].copy_from_slice(&s.d.to_le_bytes());
            for k in 0..16 {
                let sum: i16 = b[4 + 16 * k..20 + 16 * k]
                    .iter()
                    .map(|&q| q as i8 as i16)
                    .sum();
                put(b, 260 + 2 * k, sum.to_le_bytes());
            }
        }
        T::MXFP4 => b[0] = s.e_lo + (rng.unit() < s.p_hi) as u8,
        _ => {}
    }
}

/// Fills `out` with uniform random floats of RMS `rms` (F32, F16, BF16).
fn random_floats(ty: GgmlType, out: &mut [u8], rng: &mut Rng, rms: f32) {
    let mut a = rms * 3f32.sqrt(); // uniform on [-a, a] has RMS a / sqrt(3)
    if ty == GgmlType::F16 {
        a = a.min(f16::MAX.to_f32());
    }
    // Maps 16 or 32 random bits to [-a, a).
    let (a16, a32) = (2.0 * a / 65536.0, 2.0 * a / (1u64 << 32) as f32);
    let x16 = |bits: u64| (bits & 0xFFFF) as f32 * a16 - a;
    match ty {
        GgmlType::F32 => {
            for v in out.chunks_exact_mut(4) {
                let x = (rng.next() >> 32) as f32 * a32 - a;
                v.copy_from_slice(&x.to_le_bytes());
            }
        }
        _ => {
            for chunk in out.chunks_mut(8) {
                let r = rng.next();
                for (i, v) in chunk.chunks_exact_mut(2).enumerate() {
                    let x = x16(r >> (16 * i));
                    let h = if ty == GgmlType::BF16 {
                        f32_to_bf16(x)
                    } else {
                        f16::from_f32(x).to_bits()
                    };
                    v.copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }
}

/// RMS of the values blocks of `ty` take at `d = 1`, on a fixed sample of 8192 values.
fn unit_rms(ty: GgmlType) -> f32 {
    let Some((dequant, _)) = kernels(ty) else {
        return 1.0;
    };
    let n = 8192usize;
    let mut bytes = vec![0u8; n / ty.block_size() as usize * ty.type_size() as usize];
    let mut rng = Rng(0x5EED_CA11_B8A7_10E5);
    rng.fill(&mut bytes);
    let s = Scales::new(ty, 1.0);
    for b in bytes.chunks_exact_mut(ty.type_size() as usize) {
        patch(ty, b, &s, &mut rng);
    }
    let mut y = vec![0f32; n];
    dequant(&bytes, &mut y);
    let sum2: f64 = y.iter().map(|&v| v as f64 * v as f64).sum();
    (sum2 / n as f64).sqrt() as f32
}

/// Fills `out` with valid random blocks of `ty` whose dequantized values have roughly the
/// RMS `rms`: finite scales, no NaN or Inf, deterministic from `seed`.
///
/// `out.len()` must be a whole number of blocks. Block types get random codes and
/// sub-block scales with one computed scale per call (MXFP4 mixes the two powers of two
/// around it); F32/F16/BF16 get uniform values. An RMS of 0 gives all-zero blocks, and an
/// RMS too large for an f16 scale is capped at the largest one.
pub fn random_blocks(ty: GgmlType, out: &mut [u8], seed: u64, rms: f32) -> Result<(), Error> {
    if kernels(ty).is_none() {
        return Err(Error::Unsupported { ty, op: Op::Random });
    }
    if !(rms.is_finite() && rms >= 0.0) {
        return Err(Error::BadRms { rms });
    }
    let type_size = ty.type_size();
    if !(out.len() as u64).is_multiple_of(type_size) {
        return Err(Error::PartialBytes {
            ty,
            n_bytes: out.len(),
            type_size,
        });
    }
    check_lengths(
        ty,
        (out.len() as u64 / type_size * ty.block_size()) as usize,
        out.len(),
    )?;
    let mut rng = Rng(seed ^ 0xD1B5_4A32_D192_ED03);
    if rms == 0.0 {
        out.fill(0);
        return Ok(());
    }
    if ty.block_size() == 1 {
        random_floats(ty, out, &mut rng, rms);
        return Ok(());
    }
    rng.fill(out);
    let scales = Scales::new(ty, rms / unit_rms(ty));
    for b in out.chunks_exact_mut(type_size as usize) {
        patch(ty, b, &scales, &mut rng);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dequantize_to_vec, SUPPORTED};

    fn rms(y: &[f32]) -> f32 {
        (y.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / y.len() as f64).sqrt() as f32
    }

    #[test]
    fn random_blocks_are_finite_with_the_requested_rms() {
        for &ty in SUPPORTED {
            for (seed, want) in [(1u64, 0.02f32), (2, 1.0), (3, 300.0)] {
                let n_blocks = (65536 / ty.block_size()) as usize;
                let mut out = vec![0u8; n_blocks * ty.type_size() as usize];
                random_blocks(ty, &mut out, seed, want).expect("supported");
                let y = dequantize_to_vec(ty, &out).expect("whole blocks");
                assert!(y.iter().all(|v| v.is_finite()), "{ty}: non-finite value");
                let got = rms(&y);
                // MXFP4's power-of-two scales only match the RMS on average over blocks.
                let tol = if ty == GgmlType::MXFP4 { 0.2 } else { 0.1 };
                assert!(
                    (got / want - 1.0).abs() < tol,
                    "{ty}: rms {got}, wanted {want}"
                );
            }
        }
    }

    #[test]
    fn random_blocks_are_deterministic_and_consistent() {
        let mut a = vec![0u8; 36 * 100];
        let mut b = a.clone();
        random_blocks(GgmlType::Q8_1, &mut a, 7, 1.0).expect("ok");
        random_blocks(GgmlType::Q8_1, &mut b, 7, 1.0).expect("ok");
        assert_eq!(a, b);
        random_blocks(GgmlType::Q8_1, &mut b, 8, 1.0).expect("ok");
        assert_ne!(a, b);
        for blk in a.chunks_exact(36) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let sum: i32 = blk[4..].iter().map(|&q| q as i8 as i32).sum();
            assert_eq!(
                f16::from_le_bytes([blk[2], blk[3]]),
                f16::from_f32(sum as f32 * d)
            );
        }
        let mut k = vec![0u8; 292 * 10];
        random_blocks(GgmlType::Q8_K, &mut k, 9, 1.0).expect("ok");
        for blk in k.chunks_exact(292) {
            let sum: i32 = blk[4..20].iter().map(|&q| q as i8 as i32).sum();
            assert_eq!(i16::from_le_bytes([blk[260], blk[261]]) as i32, sum);
        }
    }

    #[test]
    fn random_blocks_errors() {
        let mut out = vec![0u8; 100];
        assert!(matches!(
            random_blocks(GgmlType::Q4_0, &mut out, 0, 1.0),
            Err(Error::PartialBytes { .. })
        ));
        assert!(matches!(
            random_blocks(GgmlType::Q4_0, &mut out[..90], 0, f32::NAN),
            Err(Error::BadRms { .. })
        ));
        assert!(matches!(
            random_blocks(GgmlType::Q4_0, &mut out[..90], 0, -1.0),
            Err(Error::BadRms { .. })
        ));
        let err = Error::Unsupported {
            ty: GgmlType::IQ2_XS,
            op: Op::Random,
        };
        assert_eq!(
            random_blocks(GgmlType::IQ2_XS, &mut out[..74], 0, 1.0),
            Err(err)
        );
        random_blocks(GgmlType::Q4_0, &mut out[..90], 0, 0.0).expect("zero rms");
        assert!(out[..90].iter().all(|&b| b == 0));
        random_blocks(GgmlType::F16, &mut out[..6], 0, 1e9).expect("huge rms");
        let y = dequantize_to_vec(GgmlType::F16, &out[..6]).expect("ok");
        assert!(y.iter().all(|v| v.is_finite()));
        random_blocks(GgmlType::Q4_0, &mut out[..18], 0, 1e9).expect("huge rms");
        let y = dequantize_to_vec(GgmlType::Q4_0, &out[..18]).expect("ok");
        assert!(y.iter().all(|v| v.is_finite()));
    }

    /// `cargo test -p quant --release -- --ignored --nocapture random_blocks_speed`
    #[test]
    #[ignore = "timing, run by hand in release"]
    fn random_blocks_speed() {
        let mut out = vec![0u8; 1 << 28];
        for &ty in SUPPORTED {
            let n = out.len() / ty.type_size() as usize * ty.type_size() as usize;
            let t = std::time::Instant::now();
            random_blocks(ty, &mut out[..n], 1, 0.02).expect("ok");
            let gbs = n as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("{ty:>7}: {gbs:.2} GB/s");
        }
    }
}
