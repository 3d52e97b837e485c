//! The public entry points: length checks, then one `match` from type to kernels.

use crate::block::{dequantize_blocks as deq, quantize_blocks as q};
use crate::error::{Error, Op};
use crate::{float, iq4, k_quants as k, legacy as l, mxfp4};
use gguf::GgmlType;

/// Dequantize kernel: whole blocks in, `f32` out.
pub(crate) type DequantFn = fn(&[u8], &mut [f32]);
/// Quantize kernel: `f32` in, whole blocks out.
pub(crate) type QuantFn = fn(&[f32], &mut [u8]);

/// Every type this crate dequantizes, in ggml id order.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::BF16,
    GgmlType::MXFP4,
];

/// The kernels of `ty`: the one place a type is matched to code.
pub(crate) fn kernels(ty: GgmlType) -> Option<(DequantFn, QuantFn)> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => (float::dequantize_f32, float::quantize_f32),
        T::F16 => (float::dequantize_f16, float::quantize_f16),
        T::BF16 => (float::dequantize_bf16, float::quantize_bf16),
        T::Q4_0 => (deq::<l::BlockQ4_0>, q::<l::BlockQ4_0>),
        T::Q4_1 => (deq::<l::BlockQ4_1>, q::<l::BlockQ4_1>),
        T::Q5_0 => (deq::<l::BlockQ5_0>, q::<l::BlockQ5_0>),
        T::Q5_1 => (deq::<l::BlockQ5_1>, q::<l::BlockQ5_1>),
        T::Q8_0 => (deq::<l::BlockQ8_0>, q::<l::BlockQ8_0>),
        T::Q8_1 => (deq::<l::BlockQ8_1>, q::<l::BlockQ8_1>),
        T::Q2_K => (deq::<k::BlockQ2_K>, q::<k::BlockQ2_K>),
        T::Q3_K => (deq::<k::BlockQ3_K>, q::<k::BlockQ3_K>),
        T::Q4_K => (deq::<k::BlockQ4_K>, q::<k::BlockQ4_K>),
        T::Q5_K => (deq::<k::BlockQ5_K>, q::<k::BlockQ5_K>),
        T::Q6_K => (deq::<k::BlockQ6_K>, q::<k::BlockQ6_K>),
        T::Q8_K => (deq::<k::BlockQ8_K>, q::<k::BlockQ8_K>),
        T::IQ4_NL => (deq::<iq4::BlockIQ4_NL>, q::<iq4::BlockIQ4_NL>),
        T::IQ4_XS => (deq::<iq4::BlockIQ4_XS>, q::<iq4::BlockIQ4_XS>),
        T::MXFP4 => (deq::<mxfp4::BlockMXFP4>, q::<mxfp4::BlockMXFP4>),
        _ => return None,
    })
}

/// Whether [`dequantize`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Whether [`quantize`] handles `ty` (every type [`dequantize`] handles).
pub fn can_quantize(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Checks that `n_bytes` is exactly what `n_elements` values of `ty` take.
pub(crate) fn check_lengths(ty: GgmlType, n_elements: usize, n_bytes: usize) -> Result<(), Error> {
    let block_size = ty.block_size();
    let expected = ty.bytes_for(n_elements as u64).ok_or(Error::PartialBlock {
        ty,
        n_elements,
        block_size,
    })?;
    if expected != n_bytes as u64 {
        return Err(Error::ByteLength {
            ty,
            n_elements,
            expected,
            actual: n_bytes,
        });
    }
    Ok(())
}

/// Dequantizes `data`, whole blocks of `ty`, into `out`.
///
/// `data.len()` must be `ty.bytes_for(out.len())`; otherwise, or for a type without a
/// dequantizer, this returns an error and leaves `out` untouched.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), Error> {
    let (dequant, _) = kernels(ty).ok_or(Error::Unsupported {
        ty,
        op: Op::Dequantize,
    })?;
    check_lengths(ty, out.len(), data.len())?;
    dequant(data, out);
    Ok(())
}

/// Dequantizes `data`, whole blocks of `ty`, into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, Error> {
    let type_size = ty.type_size();
    if !(data.len() as u64).is_multiple_of(type_size) {
        return Err(Error::PartialBytes {
            ty,
            n_bytes: data.len(),
            type_size,
        });
    }
    let n = data.len() as u64 / type_size * ty.block_size();
    let mut out = vec![0f32; n as usize];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Quantizes `src` into `out` with ggml's reference quantizer for `ty`.
///
/// `src.len()` must be a multiple of the block size and `out.len()` must be
/// `ty.bytes_for(src.len())`. For F32/F16/BF16 this is a plain conversion (round to
/// nearest even, as ggml and numpy do).
pub fn quantize(ty: GgmlType, src: &[f32], out: &mut [u8]) -> Result<(), Error> {
    let (_, quant) = kernels(ty).ok_or(Error::Unsupported {
        ty,
        op: Op::Quantize,
    })?;
    check_lengths(ty, src.len(), out.len())?;
    quant(src, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Block;
    use std::mem::size_of;

    fn size_matches<B: Block>() {
        assert_eq!(size_of::<B>() as u64, B::TYPE.type_size(), "{}", B::TYPE);
    }

    #[test]
    fn block_structs_match_the_type_table() {
        size_matches::<l::BlockQ4_0>();
        size_matches::<l::BlockQ4_1>();
        size_matches::<l::BlockQ5_0>();
        size_matches::<l::BlockQ5_1>();
        size_matches::<l::BlockQ8_0>();
        size_matches::<l::BlockQ8_1>();
        size_matches::<k::BlockQ2_K>();
        size_matches::<k::BlockQ3_K>();
        size_matches::<k::BlockQ4_K>();
        size_matches::<k::BlockQ5_K>();
        size_matches::<k::BlockQ6_K>();
        size_matches::<k::BlockQ8_K>();
        size_matches::<iq4::BlockIQ4_NL>();
        size_matches::<iq4::BlockIQ4_XS>();
        size_matches::<mxfp4::BlockMXFP4>();
    }

    #[test]
    fn supported_list_matches_kernels() {
        for r in gguf::TYPES {
            assert_eq!(SUPPORTED.contains(&r.ty), can_dequantize(r.ty), "{}", r.ty);
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = vec![0f32; 64];
        let ty = GgmlType::Q4_0;
        assert_eq!(dequantize(ty, &[0u8; 36], &mut out), Ok(()));
        assert!(matches!(
            dequantize(ty, &[0u8; 35], &mut out),
            Err(Error::ByteLength {
                expected: 36,
                actual: 35,
                ..
            })
        ));
        assert!(matches!(
            dequantize(ty, &[0u8; 36], &mut out[..63]),
            Err(Error::PartialBlock {
                n_elements: 63,
                block_size: 32,
                ..
            })
        ));
        let mut bytes = vec![0u8; 36];
        assert!(matches!(
            quantize(ty, &out[..63], &mut bytes),
            Err(Error::PartialBlock { .. })
        ));
        assert!(matches!(
            quantize(ty, &out, &mut bytes[..30]),
            Err(Error::ByteLength { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q4_K, &[0u8; 145]),
            Err(Error::PartialBytes {
                n_bytes: 145,
                type_size: 144,
                ..
            })
        ));
        assert_eq!(
            dequantize_to_vec(GgmlType::Q4_K, &[0u8; 288]).map(|v| v.len()),
            Ok(512)
        );
    }

    #[test]
    fn unsupported_types_are_errors() {
        for ty in [
            GgmlType::IQ2_XXS,
            GgmlType::TQ1_0,
            GgmlType::I32,
            GgmlType::NVFP4,
        ] {
            assert!(!can_dequantize(ty) && !can_quantize(ty));
            let n = ty.block_size() as usize;
            let mut out = vec![0f32; n];
            let bytes = vec![0u8; ty.type_size() as usize];
            let err = Error::Unsupported {
                ty,
                op: Op::Dequantize,
            };
            assert_eq!(dequantize(ty, &bytes, &mut out), Err(err));
            let mut bytes = bytes;
            let err = Error::Unsupported {
                ty,
                op: Op::Quantize,
            };
            assert_eq!(quantize(ty, &out, &mut bytes), Err(err));
        }
    }
}
