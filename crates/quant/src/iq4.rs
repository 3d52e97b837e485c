//! The non-linear 4-bit formats IQ4_NL (32-value blocks) and IQ4_XS (256-value super-blocks
//! with 6-bit sub-block scales): each code indexes [`KVALUES_IQ4NL`].
//!
//! Dequantizers mirror ggml's `dequantize_row_iq4_{nl,xs}` and gguf-py's `IQ4_NL` / `IQ4_XS`
//! (`dl = d * (ls - 32)`, then `dl * kvalue`). The quantizer mirrors ggml's
//! `quantize_row_iq4_nl_impl` as `quantize_iq4_{nl,xs}` call it without an importance
//! matrix (`ntry = 7`, weights `x²`): what `llama-quantize` writes.

use crate::block::{arr, f16_at, put, Block, Quantize};
use crate::k_quantize::nearest_int;
use gguf::GgmlType;
use half::f16;
use std::mem::size_of;

/// The sixteen IQ4 levels (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 non-linear 4-bit codes with one scale: `x = d * KVALUES_IQ4NL[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockIQ4_NL {
    /// Scale.
    pub d: f16,
    /// Codes: element `j` low nibble of `qs[j]`, element `j + 16` high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockIQ4_NL>() == 18);

/// 256 non-linear 4-bit codes in 8 sub-blocks of 32 with 6-bit scales:
/// `x = d * (ls - 32) * KVALUES_IQ4NL[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockIQ4_XS {
    /// Super-block scale.
    pub d: f16,
    /// Top two bits of sub-block scale `ib` at bits `2 ib..2 ib + 2`.
    pub scales_h: u16,
    /// Low four bits of sub-block scale `ib`: nibble `ib % 2` of `scales_l[ib / 2]`.
    pub scales_l: [u8; 4],
    /// Codes: sub-block `ib` is laid out as an IQ4_NL block in `qs[16 ib..16 ib + 16]`.
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockIQ4_XS>() == 136);

/// Below this a group of values counts as all zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Index of the level nearest `x`; exact midpoints go up (ggml's `best_index_int8`).
fn best_index(x: f32) -> u8 {
    let x2 = x + x;
    let mut idx = 0;
    for j in 1..16 {
        if x2 >= (KVALUES_IQ4NL[j - 1] as i32 + KVALUES_IQ4NL[j] as i32) as f32 {
            idx = j;
        } else {
            break;
        }
    }
    idx as u8
}

/// Dequantizes 32 codes packed as an IQ4_NL block with scale `d`.
fn dequantize32(d: f32, qs: &[u8], y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
    }
}

/// Codes of 32 values at inverse scale `id`, packed as an IQ4_NL block.
fn quantize32(id: f32, x: &[f32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = best_index(id * x[j]) | (best_index(id * x[j + 16]) << 4);
    }
}

/// The best scale for one 32-value sub-block: a first guess from the largest value, then a
/// search over 15 nearby scales for the best `x²`-weighted least-squares fit.
fn best_scale(x: &[f32]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let fit = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for &v in x {
            let q = KVALUES_IQ4NL[best_index(id * v) as usize] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let (sumqx, sumq2) = fit(1.0 / (-max / KVALUES_IQ4NL[0] as f32));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -7..=7 {
        let (sumqx, sumq2) = fit((itry + KVALUES_IQ4NL[0] as i32) as f32 / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

impl Block for BlockIQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            qs: arr(b, 2),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        dequantize32(self.d.to_f32(), &self.qs, y);
    }
}

impl Quantize for BlockIQ4_NL {
    fn quantize(x: &[f32]) -> Self {
        let d = best_scale(x);
        let mut qs = [0u8; 16];
        quantize32(if d != 0.0 { 1.0 / d } else { 0.0 }, x, &mut qs);
        Self {
            d: f16::from_f32(d),
            qs,
        }
    }
}

impl BlockIQ4_XS {
    /// Sub-block `ib`'s scale code, `0..64` (32 means zero).
    pub fn scale_code(&self, ib: usize) -> u8 {
        let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((self.scales_h >> (2 * ib)) & 3) as u8;
        low | (high << 4)
    }
}

impl Block for BlockIQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    fn read(b: &[u8]) -> Self {
        let scales_h = u16::from_le_bytes(arr(b, 2));
        Self {
            d: f16_at(b, 0),
            scales_h,
            scales_l: arr(b, 4),
            qs: arr(b, 8),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.scales_h.to_le_bytes());
        put(out, 4, &self.scales_l);
        put(out, 8, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for ib in 0..8 {
            let dl = d * (self.scale_code(ib) as i32 - 32) as f32;
            dequantize32(
                dl,
                &self.qs[16 * ib..16 * ib + 16],
                &mut y[32 * ib..32 * ib + 32],
            );
        }
    }
}

impl Quantize for BlockIQ4_XS {
    fn quantize(x: &[f32]) -> Self {
        let scales: [f32; 8] = std::array::from_fn(|ib| best_scale(&x[32 * ib..32 * ib + 32]));
        let (mut max_scale, mut amax_scale) = (0f32, 0f32);
        for &s in &scales {
            if s.abs() > amax_scale {
                amax_scale = s.abs();
                max_scale = s;
            }
        }
        let d = -max_scale / 32.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut block = Self {
            d: f16::from_f32(d),
            scales_h: 0,
            scales_l: [0; 4],
            qs: [0; 128],
        };
        for (ib, &s) in scales.iter().enumerate() {
            let l = nearest_int(id * s).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            quantize32(
                idl,
                &x[32 * ib..32 * ib + 32],
                &mut block.qs[16 * ib..16 * ib + 16],
            );
            let l = (l + 32) as u8;
            block.scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
            block.scales_h |= ((l >> 4) as u16) << (2 * ib);
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_nearest_level() {
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(0.0), 8);
        assert_eq!(best_index(-4.5), 8, "midpoint of -10 and 1 goes up");
        assert_eq!(best_index(-4.6), 7);
        assert_eq!(best_index(112.0), 15);
        assert_eq!(best_index(f32::NAN), 0);
    }

    #[test]
    fn known_values() {
        let mut b = vec![0u8; 136];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0x8F; // element 16 code 8 (level 1), element 0 code 15 (level 113)
        let mut y = vec![0f32; 256];
        BlockIQ4_NL::read(&b[..18]).dequantize(&mut y[..32]);
        assert_eq!((y[0], y[16], y[1]), (56.5, 0.5, -63.5));

        // IQ4_XS: sub-block 3 gets scale code 35 (low 3 in nibble 1 of scales_l[1], high 2).
        b[2..4].copy_from_slice(&(2u16 << 6).to_le_bytes());
        b[4..8].copy_from_slice(&[0, 0x30, 0, 0]);
        b[8 + 48] = 0xF0; // sub-block 3, element 96 + 16: code 15
        BlockIQ4_XS::read(&b).dequantize(&mut y);
        assert_eq!(BlockIQ4_XS::read(&b).scale_code(3), 35);
        assert_eq!((y[96 + 16], y[96]), (0.5 * 3.0 * 113.0, 0.5 * 3.0 * -127.0));
        assert_eq!(y[0], 0.5 * -32.0 * -127.0);
    }

    #[test]
    fn quantize_hits_exact_levels() {
        let x: Vec<f32> = (0..256)
            .map(|i| KVALUES_IQ4NL[(i * 7) % 16] as f32 * 0.25)
            .collect();
        let mut y = vec![0f32; 256];
        BlockIQ4_NL::quantize(&x[..32]).dequantize(&mut y[..32]);
        assert_eq!(x[..32], y[..32]);
        BlockIQ4_XS::quantize(&x).dequantize(&mut y);
        let err: f32 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1.0, "max error {err}");
    }
}
