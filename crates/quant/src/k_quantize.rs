//! Reference quantizers for the K-quants, mirroring ggml's `quantize_row_q{2,3,4,5,6,8}_K_ref`
//! (what `llama-quantize` runs when no importance matrix is given) and their helpers
//! `make_qx_quants`, `make_q3_quants` and `make_qkx2_quants` from `ggml-quants.c`.
//!
//! The f32 arithmetic keeps ggml's operation order so results match it closely, but nothing
//! here is promised bit-exact against ggml (libm and compiler differences); the tests bound
//! the round-trip error instead.

use crate::block::Quantize;
use crate::k_quants::{
    pack_q3_scales, pack_scale_min_k4, q3_scales, scale_min_k4, BlockQ2_K, BlockQ3_K, BlockQ4_K,
    BlockQ5_K, BlockQ6_K, BlockQ8_K,
};
use half::f16;

/// Below this a group of values counts as all zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round half to even, as ggml's `nearest_int` does, for `|x| < 2^22` (every caller's range).
///
/// Adding `1.5·2^23` leaves no fraction bits, so the FPU's default round-to-nearest-even
/// does the rounding — one add, where `f32::round_ties_even` is a libm `rintf` call on
/// x86-64's baseline target (no SSE4.1 `roundss`), which showed up at 6% of a prefill.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    debug_assert!(
        x.is_nan() || x.abs() < 4_194_304.0,
        "nearest_int({x}) out of range"
    );
    ((x + MAGIC).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// The value with the largest magnitude (first on ties) and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qx_quants` with `rmse_type = 1`: symmetric codes in `0..2 nmax` (stored
/// biased by `nmax`) and the weighted least-squares scale, trying 18 scales around
/// `max / nmax`. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], w: &[f32], codes: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&x, &w) in x.iter().zip(w) {
            let l = quant(iscale, x) as f32;
            sumlx += w * x * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (quant(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: codes in `-nmax..nmax`, then up to five passes
/// that move single codes while the `x²`-weighted fit improves. Codes come back biased by
/// `nmax`; returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], codes: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (c, &v) in codes.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *c = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (c, &v) in codes.iter_mut().zip(x) {
            let w = v * v;
            let l = *c as f32;
            let mut slx = sumlx - w * v * l;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l * l;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *c as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *c = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for c in codes.iter_mut() {
        *c += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The search grid of [`make_qkx2_quants`]: `nstep + 1` inverse scales
/// `(rmin + rdelta * is + nmax) / (max - min)`.
#[derive(Clone, Copy)]
struct Search {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric codes in `0..=nmax` with a scale and a min (`x ≈
/// scale * q - min`), fitted by weighted least squares over a grid of trial scales.
/// Returns `(scale, min)`; `min >= 0` is subtracted.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    codes: &mut [u8],
    s: Search,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let err = |scale: f32, min: f32, codes: &[u8]| {
        let mut e = 0f32;
        for ((&v, &w), &l) in x.iter().zip(weights).zip(codes) {
            let diff = scale * l as f32 + min - v;
            e += w * if s.use_mad { diff.abs() } else { diff * diff };
        }
        e
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    }
    if s.nstep < 1 {
        return (scale, -min);
    }
    let mut best_error = err(scale, min, codes);
    let mut aux = [0u8; 32];
    let aux = &mut aux[..x.len()];
    for is in 0..=s.nstep {
        let iscale = (s.rmin + s.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((a, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *a = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = err(this_scale, this_min, aux);
            if cur_error < best_error {
                codes.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 256 two-bit codes as Q2_K/Q3_K store them.
fn pack_2bit(l: &[u8; 256]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for j in (0..256).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

/// Quantizes the sixteen sub-block scales (or mins) of Q2_K to 4 bits: `(codes, d)`.
fn quantize_4bit_scales(v: &[f32; 16], max: f32) -> ([u8; 16], f32) {
    if max <= 0.0 {
        return ([0; 16], 0.0);
    }
    let iscale = 15.0 / max;
    (
        v.map(|s| nearest_int(iscale * s).clamp(0, 15) as u8),
        max / 15.0,
    )
}

impl Quantize for BlockQ2_K {
    /// `quantize_row_q2_K_ref`.
    fn quantize(x: &[f32]) -> Self {
        let search = Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut l = [0u8; 256];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let w: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
            (scales[j], mins[j]) = make_qkx2_quants(3, xs, &w, &mut l[16 * j..16 * j + 16], search);
        }
        let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
        let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
        let (ls, d) = quantize_4bit_scales(&scales, max_scale);
        let (lm, dmin) = quantize_4bit_scales(&mins, max_min);
        let (d, dmin) = (f16::from_f32(d), f16::from_f32(dmin));
        let scales: [u8; 16] = std::array::from_fn(|j| ls[j] | (lm[j] << 4));
        for (j, &sc) in scales.iter().enumerate() {
            let dl = d.to_f32() * (sc & 0xF) as f32;
            if dl == 0.0 {
                continue;
            }
            let ml = dmin.to_f32() * (sc >> 4) as f32;
            for i in 16 * j..16 * j + 16 {
                l[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
            }
        }
        Self {
            scales,
            qs: pack_2bit(&l),
            d,
            dmin,
        }
    }
}

impl Quantize for BlockQ3_K {
    /// `quantize_row_q3_K_ref`.
    fn quantize(x: &[f32]) -> Self {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        }
        let (max_scale, _) = signed_absmax(&scales);
        let mut block = Self {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: f16::ZERO,
        };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let ls = scales.map(|s| (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8);
            block.scales = pack_q3_scales(&ls);
            block.d = f16::from_f32(1.0 / iscale);
        }
        for (j, &sc) in q3_scales(&block.scales).iter().enumerate() {
            let d = block.d.to_f32() * sc as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // The high bit of element j goes to bit j / 32 of hmask[j % 32].
        let mut low = [0u8; 256];
        for (j, &q) in l.iter().enumerate() {
            let q = q as u8;
            if q > 3 {
                block.hmask[j % 32] |= 1 << (j / 32);
            }
            low[j] = q & 3;
        }
        block.qs = pack_2bit(&low);
        block
    }
}

/// Shared `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref`: 8 sub-blocks of 32 with 6-bit
/// scales and mins. Returns `(d, dmin, packed scales, codes in 0..=nmax)`.
fn quantize_k4(x: &[f32], nmax: i32, search: Search) -> (f16, f16, [u8; 12], [u8; 256]) {
    let mut l = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &w, &mut l[32 * j..32 * j + 32], search);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls = scales.map(|s| nearest_int(inv_scale * s).clamp(0, 63) as u8);
    let lm = mins.map(|m| nearest_int(inv_min * m).clamp(0, 63) as u8);
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, dmin) = (
        f16::from_f32(max_scale / 63.0),
        f16::from_f32(max_min / 63.0),
    );
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

impl Quantize for BlockQ4_K {
    /// `quantize_row_q4_K_ref`.
    fn quantize(x: &[f32]) -> Self {
        let search = Search {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (d, dmin, scales, l) = quantize_k4(x, 15, search);
        let mut qs = [0u8; 128];
        for j in (0..256).step_by(64) {
            for i in 0..32 {
                qs[j / 2 + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
        Self {
            d,
            dmin,
            scales,
            qs,
        }
    }
}

impl Quantize for BlockQ5_K {
    /// `quantize_row_q5_K_ref`.
    fn quantize(x: &[f32]) -> Self {
        let search = Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (d, dmin, scales, l) = quantize_k4(x, 31, search);
        let (mut qs, mut qh) = ([0u8; 128], [0u8; 32]);
        for n in (0..256).step_by(64) {
            for j in 0..32 {
                let (l1, l2) = (l[n + j], l[n + j + 32]);
                qh[j] |= ((l1 >> 4) << (n / 32)) | ((l2 >> 4) << (n / 32 + 1));
                qs[n / 2 + j] = (l1 & 0xF) | ((l2 & 0xF) << 4);
            }
        }
        Self {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }
}

impl Quantize for BlockQ6_K {
    /// `quantize_row_q6_K_ref`.
    fn quantize(x: &[f32]) -> Self {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let w: [f32; 16] = std::array::from_fn(|i| xs[i] * xs[i]);
            scales[j] = make_qx_quants(32, xs, &w, &mut l[16 * j..16 * j + 16]);
        }
        let (max_scale, max_abs_scale) = signed_absmax(&scales);
        let mut block = Self {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: f16::ZERO,
        };
        if max_abs_scale < GROUP_MAX_EPS {
            return block;
        }
        let iscale = -128.0 / max_scale;
        block.d = f16::from_f32(1.0 / iscale);
        block.scales = scales.map(|s| nearest_int(iscale * s).clamp(-128, 127) as i8);
        for j in 0..16 {
            let d = block.d.to_f32() * block.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for j in (0..256).step_by(128) {
            for i in 0..32 {
                let q = [0, 32, 64, 96].map(|o| l[j + i + o] as u8);
                block.ql[j / 2 + i] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
                block.ql[j / 2 + i + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
                block.qh[j / 4 + i] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        block
    }
}

impl Quantize for BlockQ8_K {
    /// `quantize_row_q8_K_ref`: `d = max / -127`, codes capped at 127, 16-value sums.
    fn quantize(x: &[f32]) -> Self {
        let (max, amax) = signed_absmax(x);
        if amax == 0.0 {
            return Self {
                d: 0.0,
                qs: [0; 256],
                bsums: [0; 16],
            };
        }
        let iscale = -127.0 / max;
        let qs: [i8; 256] =
            std::array::from_fn(|j| nearest_int(iscale * x[j]).clamp(-128, 127) as i8);
        let bsums =
            std::array::from_fn(|k| qs[16 * k..16 * k + 16].iter().map(|&q| q as i16).sum());
        Self {
            d: 1.0 / iscale,
            qs,
            bsums,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, -1.5, 2.49].map(nearest_int),
            [0, 2, 2, 0, -2, 2]
        );
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        use crate::GgmlType as T;
        let zero = [0f32; 256];
        for ty in [T::Q2_K, T::Q3_K, T::Q4_K, T::Q5_K, T::Q6_K, T::Q8_K] {
            let mut b = vec![0xAAu8; ty.type_size() as usize];
            let mut y = [1f32; 256];
            crate::quantize(ty, &zero, &mut b).expect("one block");
            crate::dequantize(ty, &b, &mut y).expect("one block");
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    #[test]
    fn q8_k_bsums_are_sums() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let b = BlockQ8_K::quantize(&x);
        for k in 0..16 {
            let s: i32 = b.qs[16 * k..16 * k + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(s, b.bsums[k] as i32);
        }
        assert_eq!(b.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }
}
