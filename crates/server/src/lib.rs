//! The OpenAI-compatible HTTP server (`llm-server serve`), on axum and tokio.
//!
//! - [`routes`]: [`router`] with every route (`/health`, `/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions`), the API-key layer and the handlers.
//! - [`request`]: OpenAI request bodies validated into a [`Job`]; [`extract`] is the JSON
//!   extractor that answers bad bodies as [`ApiError`]s (OpenAI's error shape).
//! - [`response`]: reply bodies and SSE chunks.
//! - [`queue`]: requests wait for one of the `-np` slots; a generation is cancelled when its
//!   client goes away.
//! - [`batch`]: continuous batching — the slots' forward calls meet in one model step.
//! - [`generate`](mod@generate): the token loop (prefill, sample, stop strings, UTF-8), shared with
//!   `llm-server run`.
//! - [`cache`]: the prompt cache — the kept sequence and its DeltaNet checkpoints.
//! - [`grammar`]: structured output and forced tool calls (llguidance token masks).
//! - [`anthropic`], [`embeddings`]: the Messages API and `/v1/embeddings`; [`think`] and
//!   [`tools`] take reasoning and tool calls out of answers; [`metrics`] is `/metrics`.
//!
//! ```no_run
//! # async fn demo(model: server::ServedModel) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server::serve(listener, server::AppState::new(model, None)).await
//! # }
//! ```
#![deny(missing_docs)]

pub use error::ApiError;
pub use generate::{
    generate, prompt_tokens, Finish, GenerateError, Generator, Outcome, Params, ThinkBudget,
};
pub use model::{Pooling, ReasoningFormat, ServedModel};
pub use request::Job;
pub use routes::{router, serve, serve_until_signal, AppState};

pub mod anthropic;
pub mod batch;
pub mod cache;
pub mod embeddings;
mod error;
pub mod extract;
pub mod generate;
pub mod grammar;
pub mod metrics;
mod model;
pub mod queue;
pub mod request;
pub mod response;
pub mod routes;
pub mod think;
pub mod tools;
