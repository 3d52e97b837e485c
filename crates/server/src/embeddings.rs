//! `POST /v1/embeddings`: each input (a string, a list of strings, a list of token ids, or a
//! list of such lists) runs through the model once, its final hidden states (after the output
//! norm) pooled as the model says (`{arch}.pooling_type`: mean, first or last token; mean
//! when the file names none) and L2-normalised; `encoding_format` `float` or `base64` (the
//! little-endian f32 bytes, as OpenAI sends them); `dimensions` keeps the first N values
//! (normalised again).

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use engine::Logits;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{fields, ApiJson, FromJson};
use crate::generate::prompt_tokens;
use crate::model::{Pooling, ServedModel};
use crate::routes::AppState;

/// Most inputs one request may carry.
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize, Debug)]
struct Fields {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<Value>,
}

/// `POST /v1/embeddings`.
#[derive(Debug)]
pub struct EmbeddingsRequest(Fields);

impl FromJson for EmbeddingsRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        Ok(EmbeddingsRequest(fields(body)?))
    }
}

impl EmbeddingsRequest {
    /// Each input's tokens.
    fn inputs(&self, m: &ServedModel) -> Result<Vec<Vec<u32>>, ApiError> {
        let bad = || {
            ApiError::invalid(
                "input",
                "input must be a string, a list of strings, a list of token ids or a list of such lists",
            )
        };
        let ids = |list: &[Value]| -> Result<Vec<u32>, ApiError> {
            list.iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&id| (id as usize) < m.model.n_vocab())
                        .map(|id| id as u32)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "input",
                                "token ids must be integers below the vocabulary size",
                            )
                        })
                })
                .collect()
        };
        let text = |s: &str| prompt_tokens(&m.tokenizer, s, false);
        let inputs = match &self.0.input {
            Value::String(s) => vec![text(s)],
            Value::Array(list) if list.is_empty() => return Err(bad()),
            Value::Array(list) if list.iter().all(Value::is_string) => list
                .iter()
                .map(|s| text(s.as_str().unwrap_or_default()))
                .collect(),
            Value::Array(list) if list.iter().all(Value::is_number) => vec![ids(list)?],
            Value::Array(list) if list.iter().all(Value::is_array) => list
                .iter()
                .map(|l| ids(l.as_array().map_or(&[][..], Vec::as_slice)))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!("at most {MAX_INPUTS} inputs a request"),
            ));
        }
        for (i, t) in inputs.iter().enumerate() {
            if t.is_empty() {
                return Err(ApiError::invalid("input", format!("input {i} is empty")));
            }
            if t.len() > m.n_ctx {
                return Err(ApiError::ContextLength {
                    n_ctx: m.n_ctx,
                    prompt: t.len(),
                    completion: 0,
                });
            }
        }
        Ok(inputs)
    }
}

/// The embedding of one token sequence: pooled, cut to its first `dims` values when asked
/// (OpenAI's `dimensions`), L2-normalised.
fn embed(m: &ServedModel, tokens: &[u32], dims: Option<usize>) -> Result<Vec<f32>, ApiError> {
    let internal = |e: engine::Error| ApiError::Internal {
        message: format!("embedding failed: {e}"),
    };
    // A fresh state and one forward call (never a recorded decode step, which returns
    // logits).
    let mut state = m
        .model
        .new_state_with(tokens.len(), m.cache)
        .map_err(internal)?;
    let hidden = m
        .batcher
        .forward(&*m.model, m.exec, tokens, &mut state, Logits::Hidden)
        .map_err(internal)?;
    let n = tokens.len();
    let width = hidden.len() / n;
    let rows = |i: usize| &hidden[i * width..(i + 1) * width];
    let mut v: Vec<f64> = match m.pooling {
        Pooling::Mean => (0..width)
            .map(|c| (0..n).map(|r| rows(r)[c] as f64).sum::<f64>() / n as f64)
            .collect(),
        Pooling::Cls => rows(0).iter().map(|&x| x as f64).collect(),
        Pooling::Last => rows(n - 1).iter().map(|&x| x as f64).collect(),
    };
    if let Some(d) = dims {
        if d > v.len() {
            return Err(ApiError::invalid(
                "dimensions",
                format!("dimensions: at most {} for this model", v.len()),
            ));
        }
        v.truncate(d);
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(v.into_iter().map(|x| x as f32).collect())
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let m = s.model.clone();
    m.check_model(req.0.model.as_deref())?;
    let base64 = match req.0.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format",
                "encoding_format must be 'float' or 'base64'",
            ))
        }
    };
    // Shortened embeddings: the first `dimensions` values, normalised again (what OpenAI's
    // Matryoshka-trained models are made for; for other models an approximation).
    let dims = match &req.0.dimensions {
        None | Some(Value::Null) => None,
        Some(d) => match d.as_u64().filter(|&d| d >= 1) {
            Some(d) => Some(usize::try_from(d).unwrap_or(usize::MAX)),
            None => {
                return Err(ApiError::invalid(
                    "dimensions",
                    "dimensions must be a positive integer",
                ))
            }
        },
    };
    let inputs = {
        let m = m.clone();
        tokio::task::spawn_blocking(move || req.inputs(&m))
            .await
            .map_err(|e| ApiError::Internal {
                message: e.to_string(),
            })??
    };
    let n_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = s
        .queue
        .exclusive(move || {
            inputs
                .iter()
                .map(|t| embed(&m, t, dims))
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": s.model.id,
                    "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}),
    ))
}
