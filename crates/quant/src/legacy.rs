//! The legacy 32-value blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Layouts are ggml's `ggml-common.h`. Element `j < 16` of a 4/5-bit block sits in the low
//! nibble of `qs[j]`, element `j + 16` in the high nibble; Q5's fifth bits are bit `j` of the
//! little-endian `qh`. Dequantizers mirror ggml's `dequantize_row_*` and do gguf-py's f32
//! operations in its order (`d * (q - 8)`, `d * q + m`). Quantizers mirror ggml's
//! `quantize_row_*_ref`, which gguf-py's `quantize_blocks` reproduce bit for bit too.

use crate::block::{arr, arr_i8, as_u8, f16_at, put, Block, Quantize};
use gguf::GgmlType;
use half::f16;
use std::mem::size_of;

/// 4-bit codes, one scale: `x = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Codes: element `j` low nibble of `qs[j]`, element `j + 16` high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// 4-bit codes, scale and offset: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Codes, as in [`BlockQ4_0`].
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// 5-bit codes, one scale: `x = d * (q - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits: bit `j` of this little-endian u32 is bit 4 of element `j`.
    pub qh: [u8; 4],
    /// Low four bits, as in [`BlockQ4_0`].
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// 5-bit codes, scale and offset: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low four bits, as in [`BlockQ4_0`].
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// 8-bit codes, one scale: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Codes.
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// 8-bit codes with their scaled sum (the activation format of Q4_1/Q5_1 dot products):
/// `x = d * q`, `s = d * sum(q)`. ggml's layout, 36 bytes (gguf-py's table says 40, an
/// older `float d, s` layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`.
    pub s: f16,
    /// Codes.
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

/// The value with the largest magnitude (the first one on ties), as ggml's `*_ref` and
/// gguf-py's `argmax(abs)` pick it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Smallest and largest value (ggml starts from ±FLT_MAX).
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1/d`, or 0 for a zero scale.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Packs 32 codes of up to 5 bits: low nibbles into `qs`, bit 4 into the `qh` word.
fn pack_nibbles(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= (((q[j] >> 4) & 1) as u32) << j;
        qh |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
    }
    (qh.to_le_bytes(), qs)
}

/// Unpacks 32 codes: nibbles of `qs` plus, if `qh` is given, bit 4 from it.
fn unpack_nibbles(qs: &[u8; 16], qh: Option<[u8; 4]>) -> [u8; 32] {
    let qh = qh.map_or(0, u32::from_le_bytes);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Symmetric codes `trunc(x / d + offset + 0.5)` capped at `max`, as `quantize_row_q4_0_ref`
/// and `quantize_row_q5_0_ref` (`offset` 8 or 16): returns the f32 scale and the codes.
fn quantize_symmetric(x: &[f32], offset: f32, max: u8) -> (f32, [u8; 32]) {
    let d = signed_absmax(x) / -offset;
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        // C's `(int8_t)` truncation; `as` saturates instead of UB on NaN or overflow.
        *q = ((v * id + (offset + 0.5)) as i8 as u8).min(max);
    }
    (d, q)
}

/// Asymmetric codes `trunc((x - min) / d + 0.5)` capped at `max`, as
/// `quantize_row_q4_1_ref` / `quantize_row_q5_1_ref`: returns `(d, min, codes)`.
fn quantize_asymmetric(x: &[f32], max: u8) -> (f32, f32, [u8; 32]) {
    let (min, hi) = min_max(x);
    let d = (hi - min) / max as f32;
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as u8).min(max);
    }
    (d, min, q)
}

/// `round(x / d)` with `d = amax / 127`, as `quantize_row_q8_0_ref`.
fn quantize_q8(x: &[f32]) -> (f32, [i8; 32]) {
    let amax = x
        .iter()
        .fold(0f32, |a, v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    let mut q = [0i8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8; // roundf: half away from zero
    }
    (d, q)
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
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
        let d = self.d.to_f32();
        for (y, q) in y.iter_mut().zip(unpack_nibbles(&self.qs, None)) {
            *y = d * (q as i32 - 8) as f32;
        }
    }
}

impl Quantize for BlockQ4_0 {
    fn quantize(x: &[f32]) -> Self {
        let (d, q) = quantize_symmetric(x, 8.0, 15);
        Self {
            d: f16::from_f32(d),
            qs: pack_nibbles(&q).1,
        }
    }
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs: arr(b, 4),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.m.to_le_bytes());
        put(out, 4, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (y, q) in y.iter_mut().zip(unpack_nibbles(&self.qs, None)) {
            *y = d * q as f32 + m;
        }
    }
}

impl Quantize for BlockQ4_1 {
    fn quantize(x: &[f32]) -> Self {
        let (d, m, q) = quantize_asymmetric(x, 15);
        Self {
            d: f16::from_f32(d),
            m: f16::from_f32(m),
            qs: pack_nibbles(&q).1,
        }
    }
}

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            qh: arr(b, 2),
            qs: arr(b, 6),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.qh);
        put(out, 6, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, q) in y.iter_mut().zip(unpack_nibbles(&self.qs, Some(self.qh))) {
            *y = d * (q as i32 - 16) as f32;
        }
    }
}

impl Quantize for BlockQ5_0 {
    fn quantize(x: &[f32]) -> Self {
        let (d, q) = quantize_symmetric(x, 16.0, 31);
        let (qh, qs) = pack_nibbles(&q);
        Self {
            d: f16::from_f32(d),
            qh,
            qs,
        }
    }
}

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qh: arr(b, 4),
            qs: arr(b, 8),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.m.to_le_bytes());
        put(out, 4, &self.qh);
        put(out, 8, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (y, q) in y.iter_mut().zip(unpack_nibbles(&self.qs, Some(self.qh))) {
            *y = d * q as f32 + m;
        }
    }
}

impl Quantize for BlockQ5_1 {
    fn quantize(x: &[f32]) -> Self {
        let (d, m, q) = quantize_asymmetric(x, 31);
        let (qh, qs) = pack_nibbles(&q);
        Self {
            d: f16::from_f32(d),
            m: f16::from_f32(m),
            qh,
            qs,
        }
    }
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            qs: arr_i8(b, 2),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &as_u8(&self.qs));
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

impl Quantize for BlockQ8_0 {
    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        Self {
            d: f16::from_f32(d),
            qs,
        }
    }
}

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            s: f16_at(b, 2),
            qs: arr_i8(b, 4),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.s.to_le_bytes());
        put(out, 4, &as_u8(&self.qs));
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

impl Quantize for BlockQ8_1 {
    /// `quantize_row_q8_1_ref`: Q8_0's codes plus `s = sum(q) * d` (f32 `d`, before f16).
    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        Self {
            d: f16::from_f32(d),
            s: f16::from_f32(sum as f32 * d),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn deq<B: Block>(bytes: &[u8]) -> Vec<f32> {
        let mut y = vec![0f32; 32];
        B::read(bytes).dequantize(&mut y);
        y
    }

    #[test]
    fn q4_0_known_values() {
        // d = 0.5; qs[0] = 0x1F: element 0 is code 15 (7 * 0.5), element 16 code 1 (-7 * 0.5).
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&h(0.5));
        b[2] = 0x1F;
        let y = deq::<BlockQ4_0>(&b);
        assert_eq!((y[0], y[16], y[1], y[17]), (3.5, -3.5, -4.0, -4.0));
    }

    #[test]
    fn q4_1_and_q5_1_known_values() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&h(2.0));
        b[2..4].copy_from_slice(&h(-1.0));
        b[4] = 0xA3;
        let y = deq::<BlockQ4_1>(&b);
        assert_eq!((y[0], y[16], y[1]), (5.0, 19.0, -1.0));

        let mut b = vec![0u8; 24];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.25));
        b[4..8].copy_from_slice(&((1u32 << 0) | (1 << 17)).to_le_bytes());
        b[8] = 0x02;
        b[9] = 0xF0;
        let y = deq::<BlockQ5_1>(&b);
        assert_eq!((y[0], y[16], y[17], y[1]), (18.25, 0.25, 31.25, 0.25));
    }

    #[test]
    fn q5_0_known_values() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&h(-0.25));
        b[2..6].copy_from_slice(&(1u32 << 31).to_le_bytes());
        b[6 + 15] = 0xF0;
        let y = deq::<BlockQ5_0>(&b);
        // element 31: code 15 | 16 = 31 -> 15 * -0.25; element 0: code 0 -> -16 * -0.25.
        assert_eq!((y[31], y[0], y[15]), (-3.75, 4.0, 4.0));
    }

    #[test]
    fn q8_known_values() {
        let mut b = vec![0u8; 36];
        b[..2].copy_from_slice(&h(0.125));
        b[2] = (-128i8) as u8;
        b[33] = 127;
        let y = deq::<BlockQ8_0>(&b[..34]);
        assert_eq!((y[0], y[31], y[1]), (-16.0, 15.875, 0.0));
        b[2..4].copy_from_slice(&h(99.0)); // Q8_1's s does not enter the values
        b[4] = 8;
        let y = deq::<BlockQ8_1>(&b);
        assert_eq!((y[0], y[1]), (1.0, 0.0));
    }

    #[test]
    fn quantizers_hit_exact_grids() {
        // Values already on a grid come back exactly.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        let mut y = vec![0f32; 32];
        BlockQ5_1::quantize(&x).dequantize(&mut y);
        assert_eq!(x, y);
        let x: Vec<f32> = (0..32).map(|i| ((i % 16) as f32 - 8.0) * 0.25).collect();
        BlockQ4_0::quantize(&x).dequantize(&mut y);
        assert_eq!(x, y);
        let q = BlockQ8_1::quantize(&x);
        let sum: i32 = q.qs.iter().map(|&v| v as i32).sum();
        assert_eq!(
            q.s.to_f32(),
            f16::from_f32(sum as f32 * (2.0 / 127.0)).to_f32()
        );
        assert_eq!(BlockQ4_1::quantize(&[0.0; 32]), BlockQ4_1::read(&[0u8; 20]));
    }
}
