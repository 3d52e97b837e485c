//! The ggml tensor type table: ggml id, name, elements per block, bytes per block.
//!
//! This is the one table every backend reads (STYLE §8); `quant` adds the block layouts and
//! kernels on top of it. Ids and sizes follow ggml's `ggml.h` / `type_traits` (tag b11549).
//! Note: the `gguf` PyPI package lists Q8_1 as 40 bytes (an older `float d, s` layout); ggml
//! stores `half d, half s`, 36 bytes, and that is what we use.

use std::fmt;

/// A ggml tensor element type, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)] // ggml's own names, so tables and logs read the same
#[allow(missing_docs)] // each variant is the ggml type of the same name; TYPES documents them
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
}

/// One row of the type table.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    /// The type.
    pub ty: GgmlType,
    /// ggml's numeric id (`enum ggml_type`).
    pub id: u32,
    /// ggml's name, as llama.cpp prints it.
    pub name: &'static str,
    /// Elements per block (1 for plain scalar types).
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

const fn row(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
) -> TypeInfo {
    TypeInfo {
        ty,
        id,
        name,
        block_size,
        type_size,
    }
}

use GgmlType as T;

/// Every type this crate knows, in ggml id order.
pub const TYPES: &[TypeInfo] = &[
    row(T::F32, 0, "f32", 1, 4),
    row(T::F16, 1, "f16", 1, 2),
    row(T::Q4_0, 2, "q4_0", 32, 18),
    row(T::Q4_1, 3, "q4_1", 32, 20),
    row(T::Q5_0, 6, "q5_0", 32, 22),
    row(T::Q5_1, 7, "q5_1", 32, 24),
    row(T::Q8_0, 8, "q8_0", 32, 34),
    row(T::Q8_1, 9, "q8_1", 32, 36),
    row(T::Q2_K, 10, "q2_K", 256, 84),
    row(T::Q3_K, 11, "q3_K", 256, 110),
    row(T::Q4_K, 12, "q4_K", 256, 144),
    row(T::Q5_K, 13, "q5_K", 256, 176),
    row(T::Q6_K, 14, "q6_K", 256, 210),
    row(T::Q8_K, 15, "q8_K", 256, 292),
    row(T::IQ2_XXS, 16, "iq2_xxs", 256, 66),
    row(T::IQ2_XS, 17, "iq2_xs", 256, 74),
    row(T::IQ3_XXS, 18, "iq3_xxs", 256, 98),
    row(T::IQ1_S, 19, "iq1_s", 256, 50),
    row(T::IQ4_NL, 20, "iq4_nl", 32, 18),
    row(T::IQ3_S, 21, "iq3_s", 256, 110),
    row(T::IQ2_S, 22, "iq2_s", 256, 82),
    row(T::IQ4_XS, 23, "iq4_xs", 256, 136),
    row(T::I8, 24, "i8", 1, 1),
    row(T::I16, 25, "i16", 1, 2),
    row(T::I32, 26, "i32", 1, 4),
    row(T::I64, 27, "i64", 1, 8),
    row(T::F64, 28, "f64", 1, 8),
    row(T::IQ1_M, 29, "iq1_m", 256, 56),
    row(T::BF16, 30, "bf16", 1, 2),
    row(T::TQ1_0, 34, "tq1_0", 256, 54),
    row(T::TQ2_0, 35, "tq2_0", 256, 66),
    row(T::MXFP4, 39, "mxfp4", 32, 17),
    row(T::NVFP4, 40, "nvfp4", 64, 36),
];

impl GgmlType {
    /// The type with ggml id `id`, or `None` for an id this table does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|r| r.id == id).map(|r| r.ty)
    }

    /// The type named `name` (ggml's lower-case name, case-insensitive), e.g. `q4_K`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
            .map(|r| r.ty)
    }

    /// This type's row of the table.
    pub fn info(self) -> &'static TypeInfo {
        // Every variant has exactly one row; the test below checks it.
        &TYPES[TYPES.iter().position(|r| r.ty == self).unwrap_or(0)]
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        self.info().id
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.info().type_size
    }

    /// Bytes of `n_elements` elements, or `None` if `n_elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size();
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, r) in TYPES.iter().enumerate() {
            assert_eq!(GgmlType::from_id(r.id), Some(r.ty));
            assert_eq!(r.ty.info().id, r.id);
            assert_eq!(GgmlType::from_name(r.name), Some(r.ty));
            assert!(
                TYPES[i + 1..].iter().all(|o| o.id > r.id),
                "ids sorted and unique"
            );
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }
}
