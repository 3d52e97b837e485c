//! The KV cache flags every command that runs a model shares (`-ctk/-ctv`, llama.cpp's names),
//! and the rewriting of llama.cpp's multi-letter single-dash flags into ones clap can parse.

use std::ffi::OsString;

use engine::{CacheConfig, KvType};

/// `--cache-type-k/-ctk` and `--cache-type-v/-ctv`; flatten into a command's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// KV cache type for keys: f16, q8_0 or q4_0.
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f16", value_parser = kv_type)]
    pub cache_type_k: KvType,
    /// KV cache type for values: f16, q8_0 or q4_0.
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f16", value_parser = kv_type)]
    pub cache_type_v: KvType,
}

impl CacheArgs {
    /// The engine's cache choice.
    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            k: self.cache_type_k,
            v: self.cache_type_v,
        }
    }
}

/// llama.cpp's `-b/--batch-size` and `-ub/--ubatch-size` for the commands that take prompts
/// (`serve`, `run`): a prompt goes through the model `min(b, ub)` tokens a forward call.
#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// Logical batch (llama.cpp's `-b`): prompt tokens a forward call at most.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    pub batch: usize,
    /// Physical batch (llama.cpp's `-ub`): prompt tokens a forward call.
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: usize,
}

impl BatchArgs {
    /// Tokens a prompt's forward call takes.
    pub fn ubatch(&self) -> usize {
        self.batch.min(self.ubatch).max(1)
    }
}

fn kv_type(s: &str) -> Result<KvType, String> {
    s.parse().map_err(|e: engine::Error| e.to_string())
}

/// llama.cpp spells some long flags with one dash (`-ctk q8_0`); clap reads `-ctk` as the short
/// flags `-c -t -k`. Each such flag, alone or as `-ctk=q8_0`, becomes its `--long` form.
const SINGLE_DASH: &[(&str, &str)] = &[
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
    ("-ngl", "--n-gpu-layers"),
    ("-ub", "--ubatch-size"),
    ("-ot", "--override-tensor"),
    ("-ncmoe", "--n-cpu-moe"),
    ("-fitt", "--fit-target"),
    ("-fitc", "--fit-ctx"),
    ("-fa", "--flash-attn"),
    ("-cram", "--cache-ram"),
    ("-np", "--parallel"),
];

/// `args` with [`SINGLE_DASH`] flags rewritten.
pub fn expand_single_dash(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|a| {
            let Some(s) = a.to_str() else { return a };
            for (short, long) in SINGLE_DASH {
                if s == *short {
                    return OsString::from(long);
                }
                if let Some(value) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                    return OsString::from(format!("{long}={value}"));
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_flags_become_long() {
        let args = ["x", "run", "-ctk", "q8_0", "-ctv=q4_0", "-c", "64"].map(OsString::from);
        let out = expand_single_dash(args);
        let out: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "x",
                "run",
                "--cache-type-k",
                "q8_0",
                "--cache-type-v=q4_0",
                "-c",
                "64"
            ]
        );
    }
}
