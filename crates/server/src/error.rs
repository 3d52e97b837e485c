//! Every failure a client can see, answered in OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses for it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not a JSON object.
    #[error("could not parse the JSON body of the request: {reason}")]
    BadJson {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// A parameter has the wrong type or an unusable value.
    #[error("{message}")]
    InvalidParam {
        /// The parameter, as a path into the body (`messages[1].role`, `temperature`).
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// A feature of the API this server does not offer (yet).
    #[error("{feature} is not supported by this server")]
    Unsupported {
        /// The parameter.
        param: String,
        /// What was asked for.
        feature: String,
    },
    /// Prompt plus requested completion exceed the context.
    #[error(
        "This model's maximum context length is {n_ctx} tokens. However, you requested \
         {} tokens ({prompt} in the messages, {completion} in the completion). Please reduce \
         the length of the messages or completion.",
        prompt + completion
    )]
    ContextLength {
        /// The server's context size (`-c`).
        n_ctx: usize,
        /// Prompt tokens.
        prompt: usize,
        /// Completion tokens asked for.
        completion: usize,
    },
    /// The request names a model this server does not serve.
    #[error("The model `{model}` does not exist (this server serves `{served}`)")]
    ModelNotFound {
        /// The name asked for.
        model: String,
        /// The name served (`--alias`).
        served: String,
    },
    /// The waiting line is full: come back later (`Retry-After`).
    #[error("The server is busy: {waiting} requests are waiting for the model; retry shortly")]
    Overloaded {
        /// Requests waiting when this one came.
        waiting: usize,
    },
    /// No or a wrong API key.
    #[error("Incorrect or missing API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// No such route.
    #[error("Invalid URL ({method} {path})")]
    NotFound {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The route exists, the method does not.
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The body is over the limit.
    #[error("The request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Something failed on our side (the model, the template file).
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl ApiError {
    /// A parameter error (400).
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::InvalidParam {
            param: param.into(),
            message: message.into(),
        }
    }

    /// An unsupported feature (400).
    pub fn unsupported(param: impl Into<String>, feature: impl Into<String>) -> ApiError {
        ApiError::Unsupported {
            param: param.into(),
            feature: feature.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson { .. }
            | ApiError::InvalidParam { .. }
            | ApiError::Unsupported { .. }
            | ApiError::ContextLength { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The body: OpenAI's `error` object.
    pub fn body(&self) -> serde_json::Value {
        let (kind, param, code) = match self {
            ApiError::InvalidParam { param, .. } => ("invalid_request_error", Some(param), None),
            ApiError::Unsupported { param, .. } => (
                "invalid_request_error",
                Some(param),
                Some("unsupported_parameter"),
            ),
            ApiError::ContextLength { .. } => (
                "invalid_request_error",
                None,
                Some("context_length_exceeded"),
            ),
            ApiError::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::ModelNotFound { .. } => {
                ("invalid_request_error", None, Some("model_not_found"))
            }
            ApiError::TooLarge { .. } => ("invalid_request_error", None, Some("request_too_large")),
            ApiError::Internal { .. } => ("server_error", None, None),
            ApiError::Overloaded { .. } => ("requests", None, Some("rate_limit_exceeded")),
            ApiError::BadJson { .. }
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed { .. } => ("invalid_request_error", None, None),
        };
        // OpenAI names `messages` as the culprit of an overlong prompt.
        let param = param.map(String::as_str).or(match self {
            ApiError::ContextLength { .. } => Some("messages"),
            ApiError::ModelNotFound { .. } => Some("model"),
            _ => None,
        });
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

/// Seconds a refused client is asked to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), Json(self.body())).into_response();
        if matches!(self, ApiError::Overloaded { .. }) {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_status() {
        let e = ApiError::invalid("temperature", "temperature must be at least 0");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": {"message": "temperature must be at least 0",
                             "type": "invalid_request_error", "param": "temperature", "code": null}})
        );
        let e = ApiError::ContextLength {
            n_ctx: 64,
            prompt: 60,
            completion: 10,
        };
        let body = e.body();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "messages");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("maximum context length is 64 tokens"));
        assert!(message.contains("70 tokens (60 in the messages, 10 in the completion)"));
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::TooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
