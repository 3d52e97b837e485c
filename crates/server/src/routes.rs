//! Every route in one [`router`], and thin handlers: extract, validate into a job, hand it to the
//! queue, answer whole or as an SSE stream. Rules for all routes are layers: the API key check,
//! the body limit, and the fallbacks that keep 404/405 in OpenAI's error shape.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::anthropic;
use crate::embeddings;
use crate::error::ApiError;
use crate::extract::{ApiJson, BODY_LIMIT};
use crate::generate::Outcome;
use crate::model::ServedModel;
use crate::queue::{Event, Queue};
use crate::request::{ChatCompletionRequest, CompletionRequest, Job};
use crate::response::{full_reply, Endpoint, Meta, SseEncoder};

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The model.
    pub model: Arc<ServedModel>,
    /// Its waiting line.
    pub queue: Queue,
    /// With `--api-key`: the key every `/v1` request must bear.
    pub api_key: Option<Arc<str>>,
}

impl AppState {
    /// State for serving `model`, with an optional API key.
    pub fn new(model: ServedModel, api_key: Option<String>) -> AppState {
        AppState {
            queue: Queue::new(model.slots, crate::queue::DEFAULT_MAX_WAITING),
            model: Arc::new(model),
            api_key: api_key.map(Arc::from),
        }
    }

    /// The same with at most `n` requests waiting for the model (`--max-queue`).
    pub fn with_max_queue(mut self, n: usize) -> AppState {
        self.queue = Queue::new(self.model.slots, n);
        self
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/props", get(props))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// How long a shutdown waits for requests in flight before cancelling them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `router(state)` on `listener` until SIGINT (Ctrl-C) or SIGTERM: then stop accepting,
/// let the requests in flight finish for up to `grace`, and cancel what is left (dropping a
/// stream stops its generation).
pub async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    state: AppState,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        eprintln!(
            "shutting down: no new connections; requests in flight get {:.0} s",
            grace.as_secs_f64()
        );
        let _ = tx.send(());
    });
    tokio::select! {
        r = server => r,
        _ = async {
            if rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            eprintln!("shutdown deadline passed: cancelling the requests still running");
            Ok(())
        }
    }
}

/// Serve with the default grace period ([`SHUTDOWN_GRACE`]).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_until_signal(listener, state, SHUTDOWN_GRACE).await
}

/// SIGINT or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prometheus' text format (no key needed, like `/health`).
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.queue.metrics().render()
            + &crate::metrics::render_cache(crate::cache::lock(&s.model.prompt_cache).stats())
            + &crate::metrics::render_batches(s.model.slots, s.model.batcher.stats()),
    )
        .into_response()
}

/// Every request counted by route and status, and logged (logfmt; a streamed reply's line
/// comes when its headers go out, its generation's line when it ends).
async fn count_requests(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let t0 = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    s.queue.metrics().request(&path, status);
    if path != "/health" && path != "/metrics" {
        eprintln!(
            "http method={method} path={path:?} status={status} ms={:.1}",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    res
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// OpenAI's list, with the context a request gets (`max_model_len`, as vLLM) and
/// llama-server's `meta`.
async fn models(State(s): State<AppState>) -> Json<Value> {
    let m = &s.model;
    Json(json!({"object": "list", "data": [{
        "id": m.id, "object": "model", "created": m.created, "owned_by": "llm-server",
        "max_model_len": m.n_ctx,
        "meta": {"n_ctx": m.n_ctx, "n_ctx_train": m.model.n_ctx_train(),
                 "n_vocab": m.model.n_vocab(), "architecture": m.model.arch()},
    }]}))
}

/// llama-server's `/props`: the served model, its context, template and defaults.
async fn props(State(s): State<AppState>) -> Json<Value> {
    let m = &s.model;
    let d = engine::SamplerParams::default();
    Json(json!({
        "model_alias": m.id,
        "architecture": m.model.arch(),
        "n_ctx": m.n_ctx,
        "n_ctx_train": m.model.n_ctx_train(),
        "n_vocab": m.model.n_vocab(),
        "total_slots": 1,
        "chat_template": m.template.source(),
        "reasoning_format": match m.reasoning {
            crate::model::ReasoningFormat::None => "none",
            crate::model::ReasoningFormat::Deepseek => "deepseek",
        },
        "default_generation_settings": {"n_ctx": m.n_ctx, "params": {
            "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p, "min_p": d.min_p,
            "typical_p": d.typical_p, "repeat_penalty": d.repeat_penalty,
            "repeat_last_n": d.repeat_last_n}},
        "build_info": crate::response::FINGERPRINT,
    }))
}

async fn chat_completions(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = s.model.clone();
    let job = prepare(move || req.into_job(&model)).await?;
    answer(&s, Endpoint::Chat, job).await
}

async fn completions(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = s.model.clone();
    let job = prepare(move || req.into_job(&model)).await?;
    answer(&s, Endpoint::Completion, job).await
}

/// Template rendering and tokenizing a long prompt take a while: keep them off the async
/// workers.
pub(crate) async fn prepare<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal {
            message: format!("request preparation failed: {e}"),
        })?
}

/// Queue the job and answer with its result, whole or streamed.
async fn answer(s: &AppState, endpoint: Endpoint, job: Job) -> Result<Response, ApiError> {
    let mut meta = Meta::new(endpoint, &s.model.id);
    meta.think = job.think;
    meta.tools = job.tools.clone();
    let (stream, n) = (job.stream, job.n.max(1));
    let job_logprobs = job.params.logprobs.is_some();
    let events = s
        .queue
        .submit(s.model.clone(), job, meta.id.clone())
        .await?;
    match stream {
        Some(opts) => {
            let encs = (0..n)
                .map(|i| SseEncoder::for_choice(meta.clone(), opts.include_usage, i))
                .collect();
            Ok(sse_response(encs, events))
        }
        None => {
            let all = collect_n(events, n).await?;
            let choices: Vec<(&str, &Outcome, Option<&[Value]>)> = all
                .iter()
                .map(|c| {
                    (
                        &c.text[..],
                        &c.outcome,
                        job_logprobs.then_some(&c.logprobs[..]),
                    )
                })
                .collect();
            Ok(Json(full_reply(&meta, &choices)).into_response())
        }
    }
}

/// A whole generation: its text, its tokens' logprob items (when asked for), its outcome.
pub(crate) struct Collected {
    pub(crate) text: String,
    pub(crate) logprobs: Vec<Value>,
    pub(crate) outcome: Outcome,
}

/// The one choice of a generation.
pub(crate) async fn collect(events: mpsc::Receiver<Event>) -> Result<Collected, ApiError> {
    let mut all = collect_n(events, 1).await?;
    all.pop().ok_or_else(ended_early)
}

/// The `n` choices of a generation, in order.
async fn collect_n(
    mut events: mpsc::Receiver<Event>,
    n: usize,
) -> Result<Vec<Collected>, ApiError> {
    let mut all = Vec::with_capacity(n);
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(l) => logprobs.push(l),
            Event::Choice(_) => {}
            Event::Done(outcome) => {
                all.push(Collected {
                    text: std::mem::take(&mut text),
                    logprobs: std::mem::take(&mut logprobs),
                    outcome,
                });
                if all.len() == n {
                    return Ok(all);
                }
            }
            Event::Failed(message) => return Err(ApiError::Internal { message }),
        }
    }
    Err(ended_early())
}

pub(crate) fn ended_early() -> ApiError {
    ApiError::Internal {
        message: "generation ended without a result".into(),
    }
}

/// The stream of `n` choices (one encoder each): every choice's opening chunk, one chunk per
/// text event of the choice running, its finish chunk when it ends, then the usage (all
/// choices' tokens) and `[DONE]`. Dropping it (hyper does when the client disconnects) drops
/// the receiver, which cancels the generation.
fn sse_response(mut encs: Vec<SseEncoder>, events: mpsc::Receiver<Event>) -> Response {
    let first: String = encs.iter_mut().filter_map(SseEncoder::start).collect();
    let first = (!first.is_empty()).then_some(first);
    struct St {
        encs: Vec<SseEncoder>,
        events: mpsc::Receiver<Event>,
        cur: usize,
        total: Option<Outcome>,
    }
    let st = St {
        encs,
        events,
        cur: 0,
        total: None,
    };
    let chunks = stream::unfold(Some((st, first)), |s| async move {
        let (mut st, first) = s?;
        if let Some(chunk) = first {
            return Some((chunk, Some((st, None))));
        }
        let cur = st.cur.min(st.encs.len() - 1);
        let (chunk, more) = match st.events.recv().await {
            Some(Event::Text(t)) => (st.encs[cur].text(&t), true),
            Some(Event::Logprob(l)) => {
                st.encs[cur].logprob(l);
                (String::new(), true)
            }
            Some(Event::Choice(i)) => {
                st.cur = i;
                (String::new(), true)
            }
            Some(Event::Done(o)) => {
                let mut out = st.encs[cur].finish(&o);
                let total = match st.total.take() {
                    None => o,
                    Some(t) => Outcome {
                        completion_tokens: t.completion_tokens + o.completion_tokens,
                        ..t
                    },
                };
                let last = cur + 1 == st.encs.len();
                if last {
                    out.push_str(&st.encs[cur].end(&total));
                } else {
                    st.total = Some(total);
                }
                (out, !last)
            }
            Some(Event::Failed(message)) => {
                (st.encs[cur].error(&ApiError::Internal { message }), false)
            }
            None => (st.encs[cur].error(&ended_early()), false),
        };
        Some((chunk, more.then_some((st, None))))
    });
    event_stream(chunks)
}

/// An SSE response of `chunks` (already formatted events).
pub(crate) fn event_stream(
    chunks: impl futures_util::Stream<Item = String> + Send + 'static,
) -> Response {
    let body = Body::from_stream(futures_util::StreamExt::map(chunks, Ok::<_, Infallible>));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// With `--api-key`, `/v1` routes need the key, as `Authorization: Bearer <key>` (OpenAI) or
/// `x-api-key: <key>` (Anthropic); `/health` stays open, as in llama-server. The Messages
/// routes answer a refusal in Anthropic's error shape.
async fn require_api_key(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, Response> {
    if let Some(key) = &s.api_key {
        let h = req.headers();
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let x_key = h
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if bearer != Some(&**key) && x_key != Some(&**key) {
            if req.uri().path().starts_with("/v1/messages") {
                return Err(anthropic::AnthropicError(ApiError::Unauthorized).into_response());
            }
            return Err(ApiError::Unauthorized.into_response());
        }
    }
    Ok(next.run(req).await)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::demo;
    use axum::http::{Request as HttpRequest, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(api_key: Option<&str>) -> Router {
        router(AppState {
            model: demo(),
            queue: Queue::default(),
            api_key: api_key.map(Arc::from),
        })
    }

    async fn call(app: Router, req: HttpRequest<Body>) -> (StatusCode, String) {
        let res = app.oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn post_json(uri: &str, body: &str) -> HttpRequest<Body> {
        HttpRequest::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    }

    fn error_of(body: &str) -> Value {
        let v: Value = serde_json::from_str(body).expect("json body");
        let keys: Vec<&str> = v["error"]
            .as_object()
            .expect("error")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["message", "type", "param", "code"], "{body}");
        v["error"].clone()
    }

    #[tokio::test]
    async fn health_models_and_unknown_routes() {
        let (st, body) = call(
            app(None),
            HttpRequest::get("/health")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
        let (st, body) = call(
            app(None),
            HttpRequest::get("/v1/models")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"][0]["id"], "demo");
        let (st, body) = call(app(None), post_json("/v1/nothing", "{}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(error_of(&body)["message"], "Invalid URL (POST /v1/nothing)");
        let (st, body) = call(
            app(None),
            HttpRequest::get("/v1/chat/completions")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        error_of(&body);
    }

    #[tokio::test]
    async fn bad_bodies_answer_in_openai_shape() {
        for body in ["{not json", "[1, 2]", "", r#"{"messages": 3}"#] {
            let (st, text) = call(app(None), post_json("/v1/chat/completions", body)).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error_of(&text)["type"], "invalid_request_error");
        }
        let big = HttpRequest::post("/v1/completions")
            .header(header::CONTENT_LENGTH, (BODY_LIMIT + 1).to_string())
            .body(Body::empty())
            .expect("req");
        let (st, text) = call(app(None), big).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_of(&text)["code"], "request_too_large");
        let big = post_json("/v1/completions", &" ".repeat(BODY_LIMIT + 1));
        let (st, _) = call(app(None), big).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn api_key_guards_v1_only() {
        let models = |auth: Option<&str>| {
            let mut req = HttpRequest::get("/v1/models");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.body(Body::empty()).expect("req")
        };
        let (st, body) = call(app(Some("k1")), models(None)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert_eq!(error_of(&body)["code"], "invalid_api_key");
        assert_eq!(
            call(app(Some("k1")), models(Some("Bearer k2"))).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(app(Some("k1")), models(Some("Bearer k1"))).await.0,
            StatusCode::OK
        );
        let health = HttpRequest::get("/health")
            .body(Body::empty())
            .expect("req");
        assert_eq!(call(app(Some("k1")), health).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn chat_whole_and_streamed_agree() {
        let req = r#"{"messages": [{"role": "user", "content": "Hello"}], "temperature": 0,
                      "max_tokens": 6, "stream": STREAM}"#;
        let (st, body) = call(
            app(None),
            post_json("/v1/chat/completions", &req.replace("STREAM", "false")),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let whole: Value = serde_json::from_str(&body).expect("json");
        let (st, body) = call(
            app(None),
            post_json("/v1/chat/completions", &req.replace("STREAM", "true")),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let chunks: Vec<Value> = body
            .split_terminator("\n\n")
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("chunk"))
            .collect();
        assert!(body.ends_with("data: [DONE]\n\n"));
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(whole["choices"][0]["message"]["content"], streamed.as_str());
        let last = chunks.last().expect("chunks");
        assert_eq!(
            last["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]
        );
        let usage = &whole["usage"];
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        );
    }
}
