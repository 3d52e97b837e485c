//! MXFP4 (OCP microscaling): 32 fp4 (e2m1) codes sharing one e8m0 power-of-two scale.
//!
//! ggml stores the e2m1 levels doubled ([`KVALUES_MXFP4`]) and halves the scale instead
//! ([`e8m0_to_f32_half`], ggml-impl.h `ggml_e8m0_to_fp32_half`, gguf-py
//! `MXFP4.e8m0_to_fp32_half`), so every exponent byte gives a finite scale. Dequantizing
//! mirrors `dequantize_row_mxfp4` (`d * kvalue`), quantizing `quantize_row_mxfp4_ref`.

use crate::block::{arr, put, Block, Quantize};
use gguf::GgmlType;
use std::mem::size_of;

/// The e2m1 levels, doubled (ggml's `kvalues_mxfp4`): code `8..16` is the negative of `0..8`.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// 32 fp4 codes with a shared exponent: `x = e8m0_to_f32_half(e) * KVALUES_MXFP4[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockMXFP4 {
    /// Shared exponent (e8m0).
    pub e: u8,
    /// Codes: element `j` low nibble of `qs[j]`, element `j + 16` high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockMXFP4>() == 17);

/// Half the value of e8m0 exponent `e`, i.e. `2^(e - 128)`; `e < 2` gives f32 subnormals.
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

impl Block for BlockMXFP4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    fn read(b: &[u8]) -> Self {
        Self {
            e: b[0],
            qs: arr(b, 1),
        }
    }
    fn write(&self, out: &mut [u8]) {
        out[0] = self.e;
        put(out, 1, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..16 {
            y[j] = d * KVALUES_MXFP4[(self.qs[j] & 0xF) as usize] as f32;
            y[j + 16] = d * KVALUES_MXFP4[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// The code whose level times `d` is nearest `x`, first on ties (`best_index_mxfp4`).
fn best_index(x: f32, d: f32) -> u8 {
    let (mut best, mut best_err) = (0, (KVALUES_MXFP4[0] as f32 * d - x).abs());
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

impl Quantize for BlockMXFP4 {
    /// `quantize_row_mxfp4_ref`: the exponent puts the largest magnitude in the top binade
    /// of the (doubled) levels, then each value takes its nearest level.
    fn quantize(x: &[f32]) -> Self {
        let mut amax = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        // ggml casts a possibly negative float to uint8_t; saturating keeps tiny blocks at 0.
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0) as u8
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = best_index(x[j], d) | (best_index(x[j + 16], d) << 4);
        }
        Self { e, qs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_values() {
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
    }

    #[test]
    fn known_values_and_round_trip() {
        let mut b = [0u8; 17];
        b[0] = 126; // d = 0.25
        b[1] = 0xD7; // element 0: code 7 (12), element 16: code 13 (-6)
        let mut y = [0f32; 32];
        BlockMXFP4::read(&b).dequantize(&mut y);
        assert_eq!((y[0], y[16], y[1]), (3.0, -1.5, 0.0));
        let x: Vec<f32> = (0..32)
            .map(|i| KVALUES_MXFP4[i % 16] as f32 * 0.25)
            .collect();
        let q = BlockMXFP4::quantize(&x);
        assert_eq!(q.e, 126);
        q.dequantize(&mut y);
        assert_eq!(x, y);
    }
}
