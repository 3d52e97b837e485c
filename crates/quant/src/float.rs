//! F32, F16 and BF16: one value per "block", little-endian.
//!
//! BF16 mirrors ggml's `ggml_compute_fp32_to_bf16` / gguf-py's `BF16.quantize_blocks`
//! (NaN forced quiet, then round to nearest even); widening is a plain shift.

use crate::block::arr;
use half::f16;

/// Copies little-endian f32s.
pub(crate) fn dequantize_f32(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(4).zip(out.iter_mut()) {
        *y = f32::from_le_bytes(arr(b, 0));
    }
}

/// Widens little-endian f16s (exact for every value, subnormals included): eight at a time
/// with F16C where the CPU has it (the conversion of an f16 KV cache runs through here).
pub(crate) fn dequantize_f16(data: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: F16C and AVX are present (checked just above).
        let done = unsafe { crate::x86::widen_f16(data, out) };
        return dequantize_f16_scalar(&data[2 * done..], &mut out[done..]);
    }
    dequantize_f16_scalar(data, out)
}

fn dequantize_f16_scalar(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(2).zip(out.iter_mut()) {
        *y = f16::from_le_bytes(arr(b, 0)).to_f32();
    }
}

/// Widens little-endian bf16s: the bits become the top half of an f32.
pub(crate) fn dequantize_bf16(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.chunks_exact(2).zip(out.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes(arr(b, 0)));
    }
}

/// Writes little-endian f32s.
pub(crate) fn quantize_f32(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// Rounds to f16, nearest even (as numpy's `astype(np.float16)` and ggml's F16C path).
pub(crate) fn quantize_f16(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(2)) {
        b.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
    }
}

/// Rounds to bf16 as ggml does.
pub(crate) fn quantize_bf16(src: &[f32], out: &mut [u8]) {
    for (x, b) in src.iter().zip(out.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

/// bf16 bits to f32.
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bf16 bits, mirroring ggml-impl.h `ggml_compute_fp32_to_bf16`.
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        // NaN: keep the sign and top mantissa bits, force quiet.
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is exactly halfway between two bf16s: ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn floats_round_trip() {
        let x = [1.5f32, -0.0, 65504.0, 1e-7, -2.75];
        let mut b = [0u8; 20];
        let mut y = [0f32; 5];
        quantize_f32(&x, &mut b);
        dequantize_f32(&b, &mut y);
        assert_eq!(x, y);
        quantize_f16(&x, &mut b[..10]);
        dequantize_f16(&b[..10], &mut y);
        assert_eq!(y, [1.5, -0.0, 65504.0, f16::from_f32(1e-7).to_f32(), -2.75]);
        assert!(y[3] > 0.0, "f16 subnormal survives");
        quantize_bf16(&x, &mut b[..10]);
        dequantize_bf16(&b[..10], &mut y);
        assert_eq!([y[0], y[1], y[4]], [1.5, -0.0, -2.75]);
        assert_eq!(y[2], 65536.0, "65504 rounds up in bf16");
    }
}
