//! Quant mixes: which ggml type each tensor gets, as `llama-quantize` would choose it
//! (spec §3, mirroring `llama_tensor_get_type_impl` and `tensor_allows_quantization` in
//! llama.cpp's `src/llama-quant.cpp`).

use gguf::GgmlType;

use super::qwen35moe::Planned;

/// A named quantization recipe (`--mix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output and for attn_v / attn_qkv /
    /// ffn_down in the "more bits" layers.
    #[value(name = "q4_k_m")]
    Q4KM,
    /// Every quantisable tensor Q8_0.
    #[value(name = "q8_0")]
    Q8_0,
    /// Every quantisable tensor F16.
    #[value(name = "f16")]
    F16,
    /// Everything F32.
    #[value(name = "f32")]
    F32,
}

impl Mix {
    /// `general.file_type` (llama.cpp `enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Mix::Q4KM => 15,
            Mix::Q8_0 => 7,
            Mix::F16 => 1,
            Mix::F32 => 0,
        }
    }

    /// The type of tensor `t` in a model of `n_layer` layers.
    pub fn type_for(self, t: &Planned, n_layer: u64) -> GgmlType {
        if !quantizable(t) {
            return GgmlType::F32;
        }
        let ty = match self {
            Mix::F32 => GgmlType::F32,
            Mix::F16 => GgmlType::F16,
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q4KM => q4_k_m(t, n_layer),
        };
        fallback(ty, t.dims[0])
    }
}

/// `tensor_allows_quantization`: ≥ 2 dims, a `weight`, and not a norm, router or conv.
fn quantizable(t: &Planned) -> bool {
    t.dims.len() >= 2
        && t.name.ends_with("weight")
        && !t.name.ends_with("_norm.weight")
        && !t.name.ends_with("ffn_gate_inp.weight")
        && !t.name.contains("ssm_conv1d")
}

/// The Q4_K_M rules that apply to qwen35moe tensors (spec §3).
fn q4_k_m(t: &Planned, n_layer: u64) -> GgmlType {
    let leaf = t.name.rsplit('.').nth(1).unwrap_or("");
    let layer = t.layer.unwrap_or(0);
    let bumped = use_more_bits(layer, n_layer);
    match leaf {
        "output" => GgmlType::Q6_K,
        // "attn_v-like": ATTENTION_V or ATTENTION_QKV (`category_is_attn_v`).
        "attn_v" | "attn_qkv" if bumped => GgmlType::Q6_K,
        "ffn_down_exps" | "ffn_down_shexp" | "ffn_down" if bumped => GgmlType::Q6_K,
        _ => GgmlType::Q4_K,
    }
}

/// llama.cpp's `use_more_bits(i, n)`: the first and last eighth of the layers, and every third
/// one in between.
fn use_more_bits(i: u64, n: u64) -> bool {
    // Past the first test, i ≥ n/8, so the subtraction cannot wrap.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// When a row isn't a whole number of 256-blocks, llama-quantize falls back to a 32-block type
/// of similar size (`llama_tensor_get_type`'s "fallback" branch).
fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if ne0.is_multiple_of(alt.block_size()) {
        alt
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::super::qwen35moe::Shape;
    use super::*;

    #[test]
    fn more_bits_layers_for_40() {
        let bumped: Vec<u64> = (0..40).filter(|&i| use_more_bits(i, 40)).collect();
        let want = [
            0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 35, 36, 37, 38, 39,
        ];
        assert_eq!(bumped, want);
    }

    #[test]
    fn q4_k_m_type_counts_match_spec() {
        // Spec §3.1: 371 Q4_K, 61 Q6_K, 301 F32; 21,155,768,832 bytes of tensor data.
        let s = Shape::qwen35_35b_a3b();
        let tensors = s.tensors();
        let count = |ty| {
            tensors
                .iter()
                .filter(|t| Mix::Q4KM.type_for(t, s.n_layer) == ty)
                .count()
        };
        assert_eq!(count(GgmlType::Q4_K), 371);
        assert_eq!(count(GgmlType::Q6_K), 61);
        assert_eq!(count(GgmlType::F32), 301);
        let bytes: u64 = tensors
            .iter()
            .map(|t| {
                Mix::Q4KM
                    .type_for(t, s.n_layer)
                    .bytes_for(t.n_elements())
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(bytes, 21_155_768_832);
    }

    #[test]
    fn fallback_for_short_rows() {
        assert_eq!(fallback(GgmlType::Q4_K, 2048), GgmlType::Q4_K);
        assert_eq!(fallback(GgmlType::Q4_K, 64), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6_K, 96), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q8_0, 48), GgmlType::F16);
    }
}
