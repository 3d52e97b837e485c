//! The K-quants: 256-value super-blocks with 16 or 8 sub-block scales (Q2_K..Q6_K), and
//! Q8_K, the activation format of their dot products.
//!
//! Layouts are ggml's `ggml-common.h`. Dequantizers mirror ggml's `dequantize_row_q*_K` and
//! do gguf-py's f32 operations in its order: sub-block scale first (`d * sc`, `dmin * m`),
//! then `dl * q - ml`. Reference quantizers live in `k_quantize.rs`.

use crate::block::{arr, arr_i8, as_u8, f16_at, put, Block};
use gguf::GgmlType;
use half::f16;
use std::mem::size_of;

/// 2-bit codes in 16 sub-blocks of 16, each with a 4-bit scale and 4-bit min:
/// `x = d * (sc & 15) * q - dmin * (sc >> 4)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ2_K {
    /// Sub-block scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    /// Codes: element `128 n + 32 j + l` is bits `2j..2j+2` of `qs[32 n + l]`.
    pub qs: [u8; 64],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2_K>() == 84);

/// 3-bit codes (2 low bits + a high-bit mask) in 16 sub-blocks of 16 with 6-bit signed scales:
/// `x = d * (sc - 32) * (q - 4 * !hbit)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ3_K {
    /// High bits: element `32 k + l` has bit `k` of `hmask[l]` (set means no `-4`).
    pub hmask: [u8; 32],
    /// Low two bits, laid out as in [`BlockQ2_K`].
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales: low nibbles in bytes 0..8, top two bits in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3_K>() == 110);

/// 4-bit codes in 8 sub-blocks of 32 with 6-bit scales and mins:
/// `x = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ4_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Eight 6-bit scales and mins, packed as ggml's `get_scale_min_k4` reads them.
    pub scales: [u8; 12],
    /// Codes: element `64 c + 32 h + l` is nibble `h` of `qs[32 c + l]`.
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ4_K>() == 144);

/// 5-bit codes in 8 sub-blocks of 32 with 6-bit scales and mins:
/// `x = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ5_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Scales and mins, as in [`BlockQ4_K`].
    pub scales: [u8; 12],
    /// Fifth bits: element `32 s + l` has bit `s` of `qh[l]`.
    pub qh: [u8; 32],
    /// Low four bits, as in [`BlockQ4_K`].
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ5_K>() == 176);

/// 6-bit codes in 16 sub-blocks of 16 with 8-bit signed scales: `x = d * sc * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ6_K {
    /// Low four bits: element `128 a + 64 h + m` is nibble `h` of `ql[64 a + m]`.
    pub ql: [u8; 128],
    /// High two bits: element `128 a + 32 j + l` is bits `2j..2j+2` of `qh[32 a + l]`.
    pub qh: [u8; 64],
    /// Sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6_K>() == 210);

/// 8-bit codes with an f32 scale and 16-value partial sums: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Codes.
    pub qs: [i8; 256],
    /// Sums of each 16 consecutive codes.
    pub bsums: [i16; 16],
}
const _: () = assert!(size_of::<BlockQ8_K>() == 292);

/// Scale and min of sub-block `j` of a Q4_K/Q5_K block (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and mins the way [`scale_min_k4`] reads them.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The sixteen signed 6-bit scales of a Q3_K block (already minus 32).
pub(crate) fn q3_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Packs sixteen 6-bit scales (0..64, i.e. plus 32) the way [`q3_scales`] reads them.
pub(crate) fn pack_q3_scales(l: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &l) in l.iter().enumerate() {
        if j < 8 {
            s[j] = l & 0xF;
        } else {
            s[j - 8] |= (l & 0xF) << 4;
        }
        s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    s
}

impl Block for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    fn read(b: &[u8]) -> Self {
        Self {
            scales: arr(b, 0),
            qs: arr(b, 16),
            d: f16_at(b, 80),
            dmin: f16_at(b, 82),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.scales);
        put(out, 16, &self.qs);
        put(out, 80, &self.d.to_le_bytes());
        put(out, 82, &self.dmin.to_le_bytes());
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        for (i, y) in y.iter_mut().enumerate().take(256) {
            let sc = self.scales[i / 16];
            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
            let q = (self.qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            *y = dl * q as f32 - ml;
        }
    }
}

impl Block for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    fn read(b: &[u8]) -> Self {
        Self {
            hmask: arr(b, 0),
            qs: arr(b, 32),
            scales: arr(b, 96),
            d: f16_at(b, 108),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.hmask);
        put(out, 32, &self.qs);
        put(out, 96, &self.scales);
        put(out, 108, &self.d.to_le_bytes());
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let scales = q3_scales(&self.scales);
        for (i, y) in y.iter_mut().enumerate().take(256) {
            let dl = d * scales[i / 16] as f32;
            let low = (self.qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
            let high = (self.hmask[i % 32] >> (i / 32)) & 1;
            *y = dl * (low as i32 - if high != 0 { 0 } else { 4 }) as f32;
        }
    }
}

/// Shared Q4_K/Q5_K dequantization: `code(i)` gives element `i`'s integer code.
fn dequantize_k4(d: f16, dmin: f16, scales: &[u8; 12], y: &mut [f32], code: impl Fn(usize) -> u8) {
    let (d, min) = (d.to_f32(), dmin.to_f32());
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        for (l, y) in y[32 * s..32 * s + 32].iter_mut().enumerate() {
            *y = d1 * code(32 * s + l) as f32 - m1;
        }
    }
}

impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: arr(b, 4),
            qs: arr(b, 16),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.dmin.to_le_bytes());
        put(out, 4, &self.scales);
        put(out, 16, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k4(self.d, self.dmin, &self.scales, y, |i| {
            (self.qs[(i / 64) * 32 + i % 32] >> (4 * ((i / 32) % 2))) & 0xF
        });
    }
}

impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    fn read(b: &[u8]) -> Self {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        Self {
            d,
            dmin,
            scales: arr(b, 4),
            qh: arr(b, 16),
            qs: arr(b, 48),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.dmin.to_le_bytes());
        put(out, 4, &self.scales);
        put(out, 16, &self.qh);
        put(out, 48, &self.qs);
    }
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k4(self.d, self.dmin, &self.scales, y, |i| {
            let low = (self.qs[(i / 64) * 32 + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
            low | (((self.qh[i % 32] >> (i / 32)) & 1) << 4)
        });
    }
}

impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    fn read(b: &[u8]) -> Self {
        Self {
            ql: arr(b, 0),
            qh: arr(b, 128),
            scales: arr_i8(b, 192),
            d: f16_at(b, 208),
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.ql);
        put(out, 128, &self.qh);
        put(out, 192, &as_u8(&self.scales));
        put(out, 208, &self.d.to_le_bytes());
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (i, y) in y.iter_mut().enumerate().take(256) {
            let (a, r) = (i / 128, i % 128);
            let low = (self.ql[64 * a + r % 64] >> (4 * (r / 64))) & 0xF;
            let high = (self.qh[32 * a + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            *y = d * self.scales[i / 16] as f32 * q as f32;
        }
    }
}

impl Block for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    fn read(b: &[u8]) -> Self {
        let mut bsums = [0i16; 16];
        for (k, s) in bsums.iter_mut().enumerate() {
            *s = i16::from_le_bytes(arr(b, 260 + 2 * k));
        }
        Self {
            d: f32::from_le_bytes(arr(b, 0)),
            qs: arr_i8(b, 4),
            bsums,
        }
    }
    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 4, &as_u8(&self.qs));
        for (k, s) in self.bsums.iter().enumerate() {
            put(out, 260 + 2 * k, &s.to_le_bytes());
        }
    }
    fn dequantize(&self, y: &mut [f32]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deq<B: Block>(bytes: &[u8]) -> Vec<f32> {
        let mut y = vec![0f32; 256];
        B::read(bytes).dequantize(&mut y);
        y
    }

    #[test]
    fn scale_packings_round_trip() {
        let ls = [1, 22, 63, 40, 0, 63, 17, 33];
        let lm = [63, 0, 5, 31, 62, 1, 48, 9];
        let s = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (ls[j], lm[j]));
        }
        let l: [u8; 16] = std::array::from_fn(|j| (j as u8 * 13 + 7) % 64);
        let sc = q3_scales(&pack_q3_scales(&l));
        assert!(sc.iter().zip(&l).all(|(&s, &l)| s as i32 == l as i32 - 32));
    }

    #[test]
    fn q2_k_known_values() {
        let mut b = vec![0u8; 84];
        b[1] = 0x23; // sub-block 1 (elements 16..32): scale 3, min 2
        b[16 + 16] = 0b11_00_10_01; // element 16: code 1, 48: 2, 80: 0, 112: 3
        b[80..82].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[82..84].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let y = deq::<BlockQ2_K>(&b);
        assert_eq!(y[16], 0.5 * 3.0 * 1.0 - 0.25 * 2.0);
        assert_eq!((y[0], y[48], y[17]), (0.0, 0.0, -0.5));
    }

    #[test]
    fn q3_k_known_values() {
        let mut b = vec![0u8; 110];
        b[0] = 0b10; // element 32 (bit 1 of hmask[0]) has its high bit: no -4
        b[32] = 0b0000_1100; // element 32: code 3; element 0: code 0
        let l: [u8; 16] = std::array::from_fn(|j| if j == 2 { 34 } else { 31 });
        b[96..108].copy_from_slice(&pack_q3_scales(&l));
        b[108..110].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        let y = deq::<BlockQ3_K>(&b);
        assert_eq!(y[32], 2.0 * 2.0 * 3.0);
        assert_eq!(y[0], -2.0 * -4.0);
    }

    #[test]
    fn q4_k_and_q5_k_known_values() {
        let ls = [0, 0, 0, 0, 0, 10, 0, 0];
        let lm = [0, 0, 0, 0, 0, 3, 0, 0];
        let mut b = vec![0u8; 176];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
        b[16 + 64 + 1] = 0x70; // element 161 (sub-block 5, chunk 2 high nibble): code 7
        let y = deq::<BlockQ4_K>(&b[..144]);
        assert_eq!((y[161], y[160], y[0]), (5.0 * 7.0 - 3.0, -3.0, 0.0));
        b[16 + 1] = 1 << 5; // Q5_K: element 161's fifth bit (sub-block 5 of qh[1])
        b[48 + 64 + 1] = 0x70;
        let y = deq::<BlockQ5_K>(&b);
        assert_eq!(y[161], 5.0 * 23.0 - 3.0);
    }

    #[test]
    fn q6_k_and_q8_k_known_values() {
        let mut b = vec![0u8; 210];
        b[64 + 5] = 0xF0; // ql[69]: element 128 + 64 + 5 = 197 low bits 15
        b[128 + 32 + 5] = 0b10_00_00_00; // qh[37]: element 128 + 96 + 5 = 229 high bits 2
        b[192 + 12] = (-3i8) as u8; // scale of elements 192..208
        b[192 + 14] = 2; // scale of elements 224..240
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let y = deq::<BlockQ6_K>(&b);
        assert_eq!(y[197], 0.5 * -3.0 * (15 - 32) as f32);
        assert_eq!(y[229], 0.5 * 2.0 * (32 - 32) as f32);
        assert_eq!(y[228], 0.5 * 2.0 * -32.0);

        let mut b = vec![0u8; 292];
        b[..4].copy_from_slice(&0.75f32.to_le_bytes());
        b[4 + 255] = (-4i8) as u8;
        let y = deq::<BlockQ8_K>(&b);
        assert_eq!((y[255], y[0]), (-3.0, 0.0));
    }
}
