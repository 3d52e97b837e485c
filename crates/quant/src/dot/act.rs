//! Activation quantization as ggml's x86 CPU backend does it (`ggml-cpu/arch/x86/quants.c`,
//! `quantize_row_q8_0` / `quantize_row_q8_1`, the AVX/AVX2 branch): the multiplier is
//! `127/amax` and values round half to even, where the reference (`quantize_row_q8_0_ref`)
//! uses `1/(amax/127)` and rounds half away from zero. The codes differ now and then, and on
//! models with large activations that moves the logits measurably; llama.cpp on x86 — our
//! oracle — always takes this path, so the engine does too. Q8_K has no x86 variant (ggml
//! calls the reference): [`q8_k`] is the reference's arithmetic written so that it
//! vectorises (the scalar form was 7% of a MoE prefill).

use half::f16;

/// One row of f32 into Q8_0 blocks (`{f16 d, i8 qs[32]}`), ggml-x86 style.
pub fn q8_0_x86(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let (d, qs) = block(xb);
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, q) in ob[2..].iter_mut().zip(qs) {
            *o = q as u8;
        }
    }
}

/// One row of f32 into Q8_1 blocks (`{f16 d, f16 s = d·Σq, i8 qs[32]}`), ggml-x86 style.
pub fn q8_1_x86(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
        let (d, qs) = block(xb);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        ob[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
        for (o, q) in ob[4..].iter_mut().zip(qs) {
            *o = q as u8;
        }
    }
}

/// One row of f32 into Q8_K blocks (`{f32 d, i8 qs[256], i16 bsums[16]}`), bit for bit
/// `quantize_row_q8_K_ref` (`BlockQ8_K::quantize`): the same products and rounding, the
/// signed maximum found in a second pass.
pub fn q8_k(x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { q8_k_avx2(x, out) };
    }
    q8_k_body(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn q8_k_avx2(x: &[f32], out: &mut [u8]) {
    q8_k_body(x, out)
}

#[inline(always)]
fn q8_k_body(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        // `f32::max` skips NaN as the reference's `|v| > amax` does.
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        ob.fill(0);
        let Some(&max) = xb.iter().find(|v| v.abs() == amax).filter(|_| amax != 0.0) else {
            continue;
        };
        let iscale = -127.0 / max;
        let mut qs = [0i8; 256];
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = crate::k_quantize::nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        ob[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (o, &q) in ob[4..260].iter_mut().zip(&qs) {
            *o = q as u8;
        }
        for (k, o) in ob[260..].chunks_exact_mut(2).enumerate() {
            let s: i16 = qs[16 * k..16 * k + 16].iter().map(|&q| i16::from(q)).sum();
            o.copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// `d = amax/127` and the codes `round_half_even(x · 127/amax)`.
fn block(xb: &[f32]) -> (f32, [i8; 32]) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(xb) {
        // Saturating like `_mm256_packs_epi32/epi16`; |v·id| ≤ 127 up to rounding anyway
        // (NaN activations give id = NaN; clamp the code rather than trust the bits).
        let r = v * id;
        *q = if r.abs() < 4_194_304.0 {
            crate::k_quantize::nearest_int(r).clamp(-128, 127) as i8
        } else {
            r.clamp(-128.0, 127.0) as i8
        };
    }
    (d, qs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_equals_the_reference() {
        let mut x: Vec<f32> = (0..1024)
            .map(|i| ((i * 7919) % 613) as f32 / 97.0 - 3.1)
            .collect();
        x[300] = -9.5; // a negative maximum
        x[600] = 9.5; // and a tie of opposite sign later in another block
        x[700] = -9.5;
        x[768..].fill(0.0); // an all-zero block
        let mut want = vec![0u8; 4 * 292];
        crate::quantize(crate::GgmlType::Q8_K, &x, &mut want).unwrap();
        let mut got = vec![0xAAu8; 4 * 292];
        q8_k(&x, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn ties_round_to_even() {
        // amax 127 → id 1: 0.5 → 0, 1.5 → 2, −2.5 → −2.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = -2.5;
        let mut out = [0u8; 34];
        q8_0_x86(&x, &mut out);
        assert_eq!(&out[2..6], &[127, 0, 2, (-2i8) as u8]);
        let mut out1 = [0u8; 36];
        q8_1_x86(&x, &mut out1);
        assert_eq!(f16::from_le_bytes([out1[2], out1[3]]).to_f32(), 127.0);
    }

    #[test]
    fn zero_block() {
        let mut out = [1u8; 34];
        q8_0_x86(&[0.0; 32], &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }
}
