//! Dot products of quantized weight rows with quantized activations, the CPU matmul core.
//!
//! As in ggml, a matmul quantizes its activation row once, to the weight type's
//! [`vec_dot_type`] (Q8_0, Q8_1 or Q8_K blocks; F16/BF16 for half-float weights), and then
//! takes one integer dot product per weight row ([`vec_dot`]). The arithmetic mirrors ggml's
//! scalar `ggml_vec_dot_*_generic` functions bit for bit (`scalar.rs`).
//!
//! SIMD kernels live in `crate::x86`. The CPU is probed once into a table of kernels per path
//! ([`Kernels`]); [`vec_dot`] uses the best path, [`with_path`] forces one (tests, logs). Every
//! path returns the scalar path's result bit for bit for the block types (the integer sums
//! are exact and the f32 steps keep ggml's order and grouping); for F32/F16/BF16 rows the f64
//! accumulation order differs, which can change the last bit of the f32 result.

use crate::error::{Error, Op};
use crate::{dispatch::check_lengths, quantize};
use gguf::GgmlType;
use std::cell::Cell;
use std::sync::OnceLock;

mod act;
pub(crate) mod scalar;
#[cfg(test)]
mod tests;

/// A dot kernel: a weight row and its activation row, whole blocks whose lengths
/// [`vec_dot`] checked. Unsafe to call only because SIMD kernels need their CPU features;
/// a [`Kernels`] table reachable from outside `crate::dot` holds only supported ones.
pub(crate) type DotFn = unsafe fn(&[u8], &[u8]) -> f32;

/// Every weight type with a dot product, in table order.
pub const DOT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// Table slots, one per entry of [`DOT_TYPES`].
pub(crate) const N_DOT: usize = 16;

/// The slot of `ty` in a kernel table.
pub(crate) const fn slot(ty: GgmlType) -> Option<usize> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => 0,
        T::F16 => 1,
        T::BF16 => 2,
        T::Q4_0 => 3,
        T::Q4_1 => 4,
        T::Q5_0 => 5,
        T::Q5_1 => 6,
        T::Q8_0 => 7,
        T::Q2_K => 8,
        T::Q3_K => 9,
        T::Q4_K => 10,
        T::Q5_K => 11,
        T::Q6_K => 12,
        T::IQ4_NL => 13,
        T::IQ4_XS => 14,
        T::MXFP4 => 15,
        _ => return None,
    })
}

/// The activation block type a weight type's dot product uses (ggml's `vec_dot_type`,
/// ggml-cpu.c `type_traits_cpu`). Types ggml gives none (integers, Q8_K, F64) map to F32.
pub fn vec_dot_type(weight: GgmlType) -> GgmlType {
    use GgmlType as T;
    match weight {
        T::F16 => T::F16,
        T::BF16 => T::BF16,
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::MXFP4 | T::NVFP4 => T::Q8_0,
        T::Q4_1 | T::Q5_1 | T::Q8_1 => T::Q8_1,
        T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K | T::IQ4_XS => T::Q8_K,
        T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S | T::IQ1_S | T::IQ1_M => T::Q8_K,
        T::TQ1_0 | T::TQ2_0 => T::Q8_K,
        _ => T::F32,
    }
}

/// One kernel path: a name and one dot kernel per weight type.
#[derive(Debug)]
pub struct Kernels {
    pub(crate) name: &'static str,
    pub(crate) dots: [DotFn; N_DOT],
}

/// The scalar reference path, every type's `ggml_vec_dot_*_generic`.
pub(crate) const SCALAR: Kernels = Kernels {
    name: "scalar",
    dots: [
        scalar::f32,
        scalar::f16,
        scalar::bf16,
        scalar::q4_0,
        scalar::q4_1,
        scalar::q5_0,
        scalar::q5_1,
        scalar::q8_0,
        scalar::q2_k,
        scalar::q3_k,
        scalar::q4_k,
        scalar::q5_k,
        scalar::q6_k,
        scalar::iq4_nl,
        scalar::iq4_xs,
        scalar::mxfp4,
    ],
};

impl Kernels {
    /// `base` with the kernels in `overrides` swapped in (used to build SIMD tables that
    /// fall back to scalar for the types they do not cover).
    pub(crate) const fn with(
        base: &Kernels,
        name: &'static str,
        overrides: &[(GgmlType, DotFn)],
    ) -> Kernels {
        let mut dots = base.dots;
        let mut i = 0;
        while i < overrides.len() {
            if let Some(s) = slot(overrides[i].0) {
                dots[s] = overrides[i].1;
            }
            i += 1;
        }
        Kernels { name, dots }
    }

    /// Every path this CPU can run, scalar first and the default (fastest measured) last.
    pub fn available() -> &'static [&'static Kernels] {
        static PATHS: OnceLock<Vec<&'static Kernels>> = OnceLock::new();
        PATHS.get_or_init(|| {
            static SCALAR_PATH: Kernels = SCALAR;
            let mut paths = vec![&SCALAR_PATH];
            #[cfg(target_arch = "x86_64")]
            paths.extend(crate::x86::detect());
            paths
        })
    }

    /// The path [`vec_dot`] uses: the one [`with_path`] forced on this thread, else the
    /// fastest this CPU has.
    pub fn current() -> &'static Kernels {
        FORCED.with(Cell::get).unwrap_or_else(|| {
            let all = Kernels::available();
            all[all.len() - 1]
        })
    }

    /// The path called `name`, if this CPU can run it.
    pub fn get(name: &str) -> Option<&'static Kernels> {
        Kernels::available()
            .iter()
            .copied()
            .find(|k| k.name == name)
    }

    /// The path's name: "scalar", "avx2", "avx512" or "avx512vnni".
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// [`vec_dot`] through this path.
    pub fn vec_dot(
        &self,
        weight: GgmlType,
        n: usize,
        w_row: &[u8],
        act_row: &[u8],
    ) -> Result<f32, Error> {
        let s = slot(weight).ok_or(Error::Unsupported {
            ty: weight,
            op: Op::VecDot,
        })?;
        check_lengths(weight, n, w_row.len())?;
        check_lengths(vec_dot_type(weight), n, act_row.len())?;
        // SAFETY: `self` is SCALAR or a table `crate::x86::detect` returned after checking
        // that the CPU has its features; lengths are whole matching blocks (checked above).
        Ok(unsafe { (self.dots[s])(w_row, act_row) })
    }
}

thread_local! {
    /// The path [`with_path`] forced on this thread.
    static FORCED: Cell<Option<&'static Kernels>> = const { Cell::new(None) };
}

/// Names of the kernel paths this CPU has, scalar first and the one [`vec_dot`] picks last.
pub fn kernel_paths() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| Kernels::available().iter().map(|k| k.name).collect())
}

/// Runs `f` with every [`vec_dot`] on this thread going through the path called `path`
/// (one of [`kernel_paths`]); errors if this CPU lacks it.
pub fn with_path<R>(path: &str, f: impl FnOnce() -> R) -> Result<R, Error> {
    let k = Kernels::get(path).ok_or_else(|| Error::NoKernelPath {
        path: path.to_string(),
    })?;
    /// Restores the previous path even if `f` panics.
    struct Restore(Option<&'static Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(k))));
    Ok(f())
}

/// Quantizes one row of activations to `vec_dot_type(weight)` blocks into `out` (resized).
///
/// Q8_0 and Q8_1 as ggml's x86 backend quantizes them (see `act.rs`: llama.cpp on x86, our
/// oracle, does); Q8_K with ggml's reference (`quantize_row_q8_K_ref`, which x86 uses too);
/// round-to-nearest-even for F16/BF16. `x.len()` must be a whole number of blocks of the
/// activation type.
pub fn quantize_activations(weight: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<(), Error> {
    if slot(weight).is_none() {
        return Err(Error::Unsupported {
            ty: weight,
            op: Op::VecDot,
        });
    }
    let act = vec_dot_type(weight);
    let bytes = act.bytes_for(x.len() as u64).ok_or(Error::PartialBlock {
        ty: act,
        n_elements: x.len(),
        block_size: act.block_size(),
    })?;
    out.resize(bytes as usize, 0);
    match act {
        GgmlType::Q8_0 => act::q8_0_x86(x, out),
        GgmlType::Q8_1 => act::q8_1_x86(x, out),
        GgmlType::Q8_K => act::q8_k(x, out),
        _ => return quantize(act, x, out),
    }
    Ok(())
}

/// Dot of one weight row (raw blocks of `weight`, `n` elements) with one activation row
/// from [`quantize_activations`], through [`Kernels::current`].
///
/// SIMD paths assume activation codes in `-127..=127`, which [`quantize_activations`]
/// always produces; a hand-made row holding -128 may differ from the scalar result.
pub fn vec_dot(weight: GgmlType, n: usize, w_row: &[u8], act_row: &[u8]) -> Result<f32, Error> {
    Kernels::current().vec_dot(weight, n, w_row, act_row)
}
