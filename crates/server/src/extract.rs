//! The JSON body extractor: axum's own `Json` answers bad bodies in plain text, so requests go
//! through this one, which answers every failure (too large, not JSON, wrong field types) as an
//! [`ApiError`] in OpenAI's shape and names the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Largest request body accepted (long prompts with tool definitions fit many times over).
pub const BODY_LIMIT: usize = 16 << 20;

/// A request body type built from a parsed JSON object.
pub trait FromJson: Sized {
    /// Build from the body, which is known to be a JSON object.
    fn from_json(body: &Value) -> Result<Self, ApiError>;
}

/// Extracts a [`FromJson`] body; rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: FromJson> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Refuse by the declared length before reading, so a client that sent
        // `Expect: 100-continue` never uploads the body.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
            return Err(ApiError::TooLarge { limit: BODY_LIMIT });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit: BODY_LIMIT },
                _ => ApiError::BadJson {
                    reason: rejection.body_text(),
                },
            }
        })?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson {
            reason: e.to_string(),
        })?;
        if !body.is_object() {
            return Err(ApiError::BadJson {
                reason: "the body must be a JSON object".into(),
            });
        }
        T::from_json(&body).map(ApiJson)
    }
}

/// Deserialize the fields of `T` from `body`, naming the failing field as the error's `param`.
pub fn fields<'a, T: Deserialize<'a>>(body: &'a Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let inner = e.inner().to_string();
        let mut param = e.path().to_string();
        if param == "." {
            // A missing field is reported at the root; its name is in the message.
            param = inner.split('`').nth(1).unwrap_or_default().to_string();
        }
        ApiError::invalid(param.clone(), format!("invalid '{param}': {inner}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    struct Probe {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        list: Option<Vec<f32>>,
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = fields::<Probe>(&json!({"name": "x", "list": [1, "a"]})).unwrap_err();
        let ApiError::InvalidParam { param, message } = e else {
            panic!("{e:?}")
        };
        assert_eq!(param, "list[1]");
        assert!(message.contains("invalid type: string \"a\""), "{message}");
        let e = fields::<Probe>(&json!({"list": null})).unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidParam { ref param, .. } if param == "name"),
            "{e:?}"
        );
        assert!(fields::<Probe>(&json!({"name": "x", "extra": 1})).is_ok());
    }
}
