//! Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`. A request
//! becomes the same kind of [`Job`] as an OpenAI chat request (its messages turned into the
//! chat template's message list: system blocks, text, tool calls and tool results), the reply
//! a `message` object or the SSE event sequence (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`), with
//! the model's `<think>` reasoning as `thinking` blocks when the request enables thinking.
//! Errors take Anthropic's shape `{"type": "error", "error": {"type", "message"}}`.
//!
//! `thinking.budget_tokens` is kept: after that many reasoning tokens the server puts in the
//! closing tag itself. Not yet: `tool_choice` `any`/`tool` (needs constrained decoding),
//! images and documents (a 400 says so).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{ChatRequest, SamplerParams};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::{fields, ApiJson, FromJson};
use crate::generate::{prompt_tokens, Finish, Outcome, ThinkBudget};
use crate::model::ServedModel;
use crate::queue::Event;
use crate::request::{sampler_error, template_error, Job, StreamOptions};
use crate::response::random_u64;
use crate::routes::{collect, ended_early, event_stream, prepare, AppState};
use crate::think::{split_whole, Part, ThinkSplit};
use crate::tools::{split_calls, ParamTypes, Piece, ToolSplit};

/// A fresh `tool_use` id.
fn tool_use_id() -> String {
    format!("toolu_{:016x}{:08x}", random_u64(), random_u64() as u32)
}

/// An [`ApiError`] answered in Anthropic's shape.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        AnthropicError(e)
    }
}

/// Anthropic's error `type` for a status.
fn error_type(e: &ApiError) -> &'static str {
    match e {
        ApiError::Unauthorized => "authentication_error",
        ApiError::NotFound { .. } | ApiError::ModelNotFound { .. } => "not_found_error",
        ApiError::TooLarge { .. } => "request_too_large",
        ApiError::Internal { .. } => "api_error",
        ApiError::Overloaded { .. } => "overloaded_error",
        _ => "invalid_request_error",
    }
}

/// The error object.
pub fn error_body(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e), "message": e.to_string()}})
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        if matches!(self.0, ApiError::Overloaded { .. }) {
            // Anthropic's own status for an overloaded API.
            let status = axum::http::StatusCode::from_u16(529)
                .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
            let mut res = (status, Json(error_body(&self.0))).into_response();
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                crate::error::RETRY_AFTER_SECS.into(),
            );
            return res;
        }
        (self.0.status(), Json(error_body(&self.0))).into_response()
    }
}

/// The fields of a Messages request (`count_tokens` takes the same, `max_tokens` optional).
#[derive(Deserialize, Debug)]
struct Fields {
    model: String,
    max_tokens: Option<i64>,
    messages: Vec<Value>,
    system: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    stream: Option<bool>,
}

/// `POST /v1/messages` (and `/count_tokens`).
#[derive(Debug)]
pub struct MessagesRequest(Fields);

impl FromJson for MessagesRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        Ok(MessagesRequest(fields(body)?))
    }
}

/// The rendered prompt of a request and whether it leaves the model inside `<think>`.
struct Prompt {
    tokens: Vec<u32>,
    opened_think: bool,
    thinking: bool,
    /// `thinking.budget_tokens`.
    budget: Option<usize>,
    /// Parameter types of the tools, when calls are parsed out of the answer.
    tools: Option<ParamTypes>,
    /// Where the prompt cache should be able to resume ([`ServedModel::marks`]).
    marks: Vec<usize>,
    /// A forced tool call's grammar (`tool_choice` `any` or `tool`).
    constraint: Option<crate::grammar::Constraint>,
}

impl MessagesRequest {
    fn prompt(&self, m: &ServedModel) -> Result<Prompt, ApiError> {
        let f = &self.0;
        m.check_model(Some(&f.model))?;
        let mut messages = Vec::new();
        if let Some(system) = &f.system {
            let text = blocks_text(system, "system")?;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        if f.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages: at least one message is required",
            ));
        }
        for (i, msg) in f.messages.iter().enumerate() {
            convert_message(msg, i, &mut messages)?;
        }
        let tools = match &f.tools {
            Some(list) => Some(Value::Array(
                list.iter()
                    .enumerate()
                    .map(|(i, t)| convert_tool(t, i))
                    .collect::<Result<_, _>>()?,
            )),
            None => None,
        };
        let (parse_calls, force) = check_tool_choice(f.tool_choice.as_ref())?;
        let (thinking, budget) = thinking_enabled(f.thinking.as_ref())?;
        if thinking && force.is_some() {
            // Anthropic's own rule: a forced tool call leaves no room for thinking first.
            return Err(ApiError::invalid(
                "tool_choice",
                "Thinking may not be enabled when tool_choice forces tool use.",
            ));
        }
        let messages = Value::Array(messages);
        let req = ChatRequest {
            messages: &messages,
            tools: tools.as_ref(),
            add_generation_prompt: true,
            enable_thinking: Some(thinking),
            extra: None,
        };
        let text = m.template.render(&req).map_err(template_error)?;
        let types = match (&tools, parse_calls) {
            (Some(Value::Array(t)), true) if !t.is_empty() => Some(ParamTypes::from_tools(t)),
            _ => None,
        };
        let tokens = prompt_tokens(&m.tokenizer, &text, true);
        let constraint = match &force {
            None => None,
            Some(named) => Some(m.forced_calls(tools.as_ref(), named.as_deref())?),
        };
        Ok(Prompt {
            constraint,
            marks: m.marks(&req, &tokens),
            tokens,
            opened_think: ThinkSplit::prompt_opens(&text),
            thinking,
            budget,
            tools: types,
        })
    }

    fn into_job(self, m: &ServedModel) -> Result<(Job, Prompt), ApiError> {
        let prompt = self.prompt(m)?;
        let f = self.0;
        let max_tokens = match f.max_tokens {
            None => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "max_tokens: Field required",
                ))
            }
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "max_tokens: must be at least 1",
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let n_prompt = prompt.tokens.len();
        if n_prompt == 0 {
            return Err(ApiError::invalid("messages", "the prompt is empty"));
        }
        if n_prompt >= m.n_ctx || n_prompt.saturating_add(max_tokens) > m.n_ctx {
            return Err(ApiError::ContextLength {
                n_ctx: m.n_ctx,
                prompt: n_prompt,
                completion: max_tokens,
            });
        }
        let d = SamplerParams::default();
        if let Some(t) = f.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(ApiError::invalid(
                    "temperature",
                    "temperature: must be between 0 and 1",
                ));
            }
        }
        if f.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ApiError::invalid("top_p", "top_p: must be in (0, 1]"));
        }
        let sampling = SamplerParams {
            // Anthropic's default temperature is 1.
            temperature: f.temperature.unwrap_or(1.0),
            top_p: f.top_p.unwrap_or(d.top_p),
            top_k: match f.top_k {
                None => d.top_k,
                Some(k) if k < 0 => {
                    return Err(ApiError::invalid("top_k", "top_k: must be at least 0"))
                }
                Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
            },
            seed: random_u64(),
            ..d
        };
        sampling.validate().map_err(sampler_error)?;
        let stop = f.stop_sequences.unwrap_or_default();
        let mut job = Job {
            stream: f.stream.unwrap_or(false).then(StreamOptions::default),
            think: prompt.thinking.then_some(prompt.opened_think),
            tools: prompt.tools.clone(),
            ..Job::new(m, prompt.tokens.clone(), max_tokens, stop, sampling)
        };
        job.params.marks = prompt.marks.clone();
        job.params.constraint = prompt.constraint.clone();
        // The reasoning the prompt opened ends after `budget_tokens` tokens.
        if let (Some(tokens), true) = (prompt.budget, prompt.opened_think) {
            job.params.think_budget = Some(ThinkBudget {
                tokens,
                close: m.tokenizer.encode("</think>\n\n", false, true),
            });
        }
        Ok((job, prompt))
    }
}

/// The text of a string or a list of text blocks (`system`, `tool_result.content`).
fn blocks_text(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                ApiError::invalid(&p, format!("{p}.text: must be a string"))
                            })?
                            .to_string(),
                    ),
                    Some(t @ ("image" | "document")) => return Err(unsupported_block(&p, t)),
                    _ => return Err(ApiError::invalid(&p, format!("{p}: expected a text block"))),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::invalid(
            param,
            format!("{param}: must be a string or a list of text blocks"),
        )),
    }
}

fn unsupported_block(param: &str, kind: &str) -> ApiError {
    ApiError::unsupported(
        param,
        format!("{kind} content (this model reads text only)"),
    )
}

/// One Anthropic message → the template's messages: a user turn's `tool_result` blocks
/// become `tool` messages, an assistant turn's `tool_use` blocks its `tool_calls`, its
/// `thinking` blocks its `reasoning_content`.
fn convert_message(msg: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let p = format!("messages[{i}]");
    let role = match msg.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("{p}.role"),
                format!("{p}.role: unexpected role '{other}' (user or assistant)"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                format!("{p}.role"),
                format!("{p}.role: Field required"),
            ))
        }
    };
    let content = msg.get("content").ok_or_else(|| {
        ApiError::invalid(
            format!("{p}.content"),
            format!("{p}.content: Field required"),
        )
    })?;
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(ApiError::invalid(
                format!("{p}.content"),
                format!("{p}.content: must be a string or a list of content blocks"),
            ))
        }
    };
    let (mut text, mut reasoning, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{p}.content[{j}]");
        let field = |name: &str| {
            b.get(name)
                .ok_or_else(|| ApiError::invalid(&bp, format!("{bp}.{name}: Field required")))
        };
        let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, role) {
            ("text", _) => text.push(
                field("text")?
                    .as_str()
                    .ok_or_else(|| ApiError::invalid(&bp, format!("{bp}.text: must be a string")))?
                    .to_string(),
            ),
            ("image" | "document", _) => return Err(unsupported_block(&bp, kind)),
            ("thinking", "assistant") => {
                reasoning.push(field("thinking")?.as_str().unwrap_or_default().to_string())
            }
            ("redacted_thinking", "assistant") => {}
            ("tool_use", "assistant") => {
                let name = field("name")?.as_str().unwrap_or_default();
                let input = field("input")?;
                if !input.is_object() {
                    return Err(ApiError::invalid(
                        &bp,
                        format!("{bp}.input: must be an object"),
                    ));
                }
                calls.push(
                    json!({"id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}),
                );
            }
            ("tool_result", "user") => {
                let id = field("tool_use_id")?.clone();
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => blocks_text(c, &format!("{bp}.content"))?,
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            _ => {
                return Err(ApiError::invalid(
                    &bp,
                    format!("{bp}: a block of type '{kind}' cannot be in a {role} message"),
                ))
            }
        }
    }
    if !text.is_empty() || !calls.is_empty() || !reasoning.is_empty() {
        let mut m = Map::new();
        m.insert("role".into(), role.into());
        m.insert("content".into(), text.join("\n").into());
        if !reasoning.is_empty() {
            m.insert("reasoning_content".into(), reasoning.join("\n").into());
        }
        if !calls.is_empty() {
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(m));
    }
    Ok(())
}

/// `{name, description, input_schema}` → the OpenAI function form the templates read.
fn convert_tool(t: &Value, i: usize) -> Result<Value, ApiError> {
    let p = format!("tools[{i}]");
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(format!("{p}.name"), format!("{p}.name: Field required"))
        })?;
    let schema = t
        .get("input_schema")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    if !schema.is_object() {
        return Err(ApiError::invalid(
            format!("{p}.input_schema"),
            format!("{p}.input_schema: must be an object"),
        ));
    }
    let mut f = json!({"name": name, "parameters": schema});
    if let Some(d) = t.get("description") {
        f["description"] = d.clone();
    }
    Ok(json!({"type": "function", "function": f}))
}

/// Whether calls are parsed out of the answer (`auto`, the default) or not (`none`).
fn check_tool_choice(c: Option<&Value>) -> Result<(bool, Option<Option<String>>), ApiError> {
    let Some(c) = c else { return Ok((true, None)) };
    match c.get("type").and_then(Value::as_str) {
        Some("auto") => Ok((true, None)),
        Some("none") => Ok((false, None)),
        Some("any") => Ok((true, Some(None))),
        Some("tool") => match c.get("name").and_then(Value::as_str) {
            Some(n) => Ok((true, Some(Some(n.to_string())))),
            None => Err(ApiError::invalid(
                "tool_choice.name",
                "tool_choice.name: Field required",
            )),
        },
        _ => Err(ApiError::invalid(
            "tool_choice.type",
            "tool_choice.type: expected 'auto', 'any', 'tool' or 'none'",
        )),
    }
}

/// `thinking`: `{"type": "enabled", "budget_tokens": n ≥ 1024}` or `{"type": "disabled"}`:
/// whether to think, and the budget.
fn thinking_enabled(t: Option<&Value>) -> Result<(bool, Option<usize>), ApiError> {
    let Some(t) = t else { return Ok((false, None)) };
    match t.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok((false, None)),
        // The model decides how much to think.
        Some("adaptive") => Ok((true, None)),
        Some("enabled") => match t.get("budget_tokens").and_then(Value::as_i64) {
            Some(b) if b >= 1024 => Ok((true, Some(usize::try_from(b).unwrap_or(usize::MAX)))),
            _ => Err(ApiError::invalid(
                "thinking.budget_tokens",
                "thinking.budget_tokens: an integer of at least 1024 is required",
            )),
        },
        _ => Err(ApiError::invalid(
            "thinking.type",
            "thinking.type: expected 'enabled', 'adaptive' or 'disabled'",
        )),
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(s): State<AppState>,
    body: Result<ApiJson<MessagesRequest>, ApiError>,
) -> Result<Response, AnthropicError> {
    let ApiJson(req) = body?;
    let model = s.model.clone();
    let (job, prompt) = prepare(move || req.into_job(&model)).await?;
    let id = format!("msg_{:016x}{:08x}", random_u64(), random_u64() as u32);
    let head = MessageHead {
        id: id.clone(),
        model: s.model.id.clone(),
        input_tokens: prompt.tokens.len(),
        opened_think: prompt.opened_think,
        thinking: prompt.thinking,
        tools: prompt.tools.clone(),
    };
    let stream = job.stream.is_some();
    let events = s.queue.submit(s.model.clone(), job, id).await?;
    if stream {
        return Ok(sse(head, events));
    }
    let c = collect(events).await?;
    Ok(Json(head.whole(&c.text, &c.outcome)).into_response())
}

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(
    State(s): State<AppState>,
    body: Result<ApiJson<MessagesRequest>, ApiError>,
) -> Result<Json<Value>, AnthropicError> {
    let ApiJson(req) = body?;
    let model = s.model.clone();
    let n = tokio::task::spawn_blocking(move || req.prompt(&model).map(|p| p.tokens.len()))
        .await
        .map_err(|e| ApiError::Internal {
            message: format!("counting failed: {e}"),
        })??;
    Ok(Json(json!({"input_tokens": n})))
}

/// What every part of one reply shares.
#[derive(Clone, Debug)]
struct MessageHead {
    id: String,
    model: String,
    input_tokens: usize,
    opened_think: bool,
    /// Reasoning goes to `thinking` blocks (else it stays in the text).
    thinking: bool,
    /// Calls in the answer become `tool_use` blocks.
    tools: Option<ParamTypes>,
}

/// A reply's usage. `input_tokens` counts the whole prompt, as `count_tokens` and
/// `message_start` do (Anthropic's own counts leave out cache reads; here the prompt cache is
/// automatic and free, so the total stays where clients look for it), and
/// `cache_read_input_tokens` how many of them the prompt cache held.
fn usage(o: &Outcome) -> Value {
    json!({"input_tokens": o.prompt_tokens, "output_tokens": o.completion_tokens,
           "cache_read_input_tokens": o.cached_tokens, "cache_creation_input_tokens": 0})
}

/// Anthropic's `stop_reason` and `stop_sequence` (`tool_use` when the answer called tools).
fn stop_reason(o: &Outcome, called: bool) -> (&'static str, Value) {
    if called {
        return ("tool_use", Value::Null);
    }
    match o.finish {
        Finish::Length | Finish::Timeout => ("max_tokens", Value::Null),
        Finish::StopString => (
            "stop_sequence",
            o.stop.clone().map_or(Value::Null, Value::String),
        ),
        Finish::Eos | Finish::Cancelled => ("end_turn", Value::Null),
    }
}

impl MessageHead {
    fn whole(&self, text: &str, o: &Outcome) -> Value {
        let mut content = Vec::new();
        let mut answer = if self.thinking {
            let (reasoning, answer) = split_whole(text, self.opened_think);
            if !reasoning.is_empty() {
                content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
            }
            answer
        } else {
            text.to_string()
        };
        let calls = match &self.tools {
            Some(types) => {
                let (rest, calls) = split_calls(&answer, types.clone());
                if !calls.is_empty() {
                    answer = rest.trim().to_string();
                }
                calls
            }
            None => Vec::new(),
        };
        // The answer's block, also when it is empty and nothing else was written (every
        // message has a block; the stream opens blocks the same way).
        if !answer.is_empty() || (content.is_empty() && calls.is_empty()) {
            content.push(json!({"type": "text", "text": answer}));
        }
        for c in &calls {
            content.push(
                json!({"type": "tool_use", "id": tool_use_id(), "name": c.name,
                                "input": c.arguments}),
            );
        }
        let (reason, seq) = stop_reason(o, !calls.is_empty());
        json!({"id": self.id, "type": "message", "role": "assistant", "model": self.model,
               "content": content, "stop_reason": reason, "stop_sequence": seq,
               "usage": usage(o)})
    }
}

/// One SSE event.
fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The stream's state: which content block is open.
struct Blocks {
    head: MessageHead,
    split: Option<ThinkSplit>,
    tools: Option<ToolSplit>,
    called: bool,
    /// The open block's index and kind ("thinking" or "text").
    open: Option<(usize, &'static str)>,
    next: usize,
}

impl Blocks {
    fn parts(&mut self, text: &str) -> Vec<Part> {
        match &mut self.split {
            Some(s) => s.push(text),
            None => vec![Part::Text(text.to_string())],
        }
    }

    /// Events for `parts`: a new block whenever the kind changes; each tool call a block.
    fn write(&mut self, parts: Vec<Part>, out: &mut String) {
        for p in parts {
            match p {
                Part::Thinking(t) => self.delta(
                    "thinking",
                    json!({"type": "thinking_delta", "thinking": t}),
                    out,
                ),
                Part::Text(t) => {
                    let pieces = match &mut self.tools {
                        Some(tools) => tools.push(&t),
                        None => vec![Piece::Text(t)],
                    };
                    self.pieces(pieces, out);
                }
            }
        }
    }

    fn pieces(&mut self, pieces: Vec<Piece>, out: &mut String) {
        for p in pieces {
            match p {
                Piece::Text(t) => self.delta("text", json!({"type": "text_delta", "text": t}), out),
                Piece::Call(c) => {
                    self.close(out);
                    let index = self.next;
                    self.next += 1;
                    self.called = true;
                    let block = json!({"type": "tool_use", "id": tool_use_id(), "name": c.name,
                                       "input": {}});
                    out.push_str(&event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index, "content_block": block}),
                    ));
                    out.push_str(&event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta",
                                         "partial_json": c.arguments.to_string()}}),
                    ));
                    out.push_str(&event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    ));
                }
            }
        }
    }

    /// A delta of a thinking or text block, opening one when the open block is another.
    fn delta(&mut self, kind: &'static str, delta: Value, out: &mut String) {
        if self.open.map(|(_, k)| k) != Some(kind) {
            self.close(out);
            let block = match kind {
                "thinking" => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            let index = self.next;
            self.next += 1;
            out.push_str(&event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": block}),
            ));
            self.open = Some((index, kind));
        }
        let index = self.open.map_or(0, |(i, _)| i);
        out.push_str(&event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    fn close(&mut self, out: &mut String) {
        if let Some((index, kind)) = self.open.take() {
            if kind == "thinking" {
                out.push_str(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": ""}}),
                ));
            }
            out.push_str(&event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn start(&self) -> String {
        let h = &self.head;
        let message = json!({"id": h.id, "type": "message", "role": "assistant", "model": h.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": h.input_tokens, "output_tokens": 0}});
        let mut out = event(
            "message_start",
            json!({"type": "message_start", "message": message}),
        );
        out.push_str(&event("ping", json!({"type": "ping"})));
        out
    }

    fn done(&mut self, o: &Outcome) -> String {
        let mut out = String::new();
        let rest = match &mut self.split {
            Some(s) => s.finish(),
            None => Vec::new(),
        };
        self.write(rest, &mut out);
        let held = self
            .tools
            .as_mut()
            .map(ToolSplit::finish)
            .unwrap_or_default();
        self.pieces(held, &mut out);
        if self.next == 0 {
            // Every message has a block: an empty answer is an empty text block.
            out.push_str(&event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            ));
            self.open = Some((0, "text"));
            self.next = 1;
        }
        self.close(&mut out);
        let (reason, seq) = stop_reason(o, self.called);
        out.push_str(&event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
                   "usage": usage(o)}),
        ));
        out.push_str(&event("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// The event stream. Dropping it (the client went away) drops the receiver, which stops the
/// generation.
fn sse(head: MessageHead, events: mpsc::Receiver<Event>) -> Response {
    let split = head.thinking.then(|| ThinkSplit::new(head.opened_think));
    let tools = head.tools.clone().map(ToolSplit::new);
    let blocks = Blocks {
        head,
        split,
        tools,
        called: false,
        open: None,
        next: 0,
    };
    let first = blocks.start();
    let chunks = stream::unfold(Some((blocks, events, Some(first))), |st| async move {
        let (mut blocks, mut events, first) = st?;
        if let Some(chunk) = first {
            return Some((chunk, Some((blocks, events, None))));
        }
        let (chunk, more) = match events.recv().await {
            Some(Event::Text(t)) => {
                let parts = blocks.parts(&t);
                let mut out = String::new();
                blocks.write(parts, &mut out);
                (out, true)
            }
            Some(Event::Logprob(_) | Event::Choice(_)) => (String::new(), true),
            Some(Event::Done(o)) => (blocks.done(&o), false),
            Some(Event::Failed(message)) => (
                event("error", error_body(&ApiError::Internal { message })),
                false,
            ),
            None => (event("error", error_body(&ended_early())), false),
        };
        Some((chunk, more.then_some((blocks, events, None))))
    });
    event_stream(chunks)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::model::demo;
    use crate::queue::Queue;
    use crate::routes::router;

    async fn post(uri: &str, body: &str, key: Option<&str>) -> (StatusCode, String) {
        let app = router(AppState {
            model: demo(),
            queue: Queue::default(),
            api_key: key.map(Arc::from),
        });
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let res = app.oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn errors_take_anthropic_shape() {
        for (body, status) in [
            ("{nope", StatusCode::BAD_REQUEST),
            (
                r#"{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"model": "demo", "max_tokens": 3, "messages": [{"role": "tool", "content": "hi"}]}"#,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (st, text) = post("/v1/messages", body, None).await;
            assert_eq!(st, status, "{body}: {text}");
            let v: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(v["type"], "error", "{text}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{text}");
        }
        let body = r#"{"model": "demo", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}"#;
        let (st, text) = post("/v1/messages", body, Some("k")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["error"]["type"], "authentication_error");
    }

    #[test]
    fn tool_use_whole_and_streamed() {
        let tools = [json!({"type": "function", "function": {"name": "get",
            "parameters": {"properties": {"n": {"type": "integer"}}}}})];
        let head = MessageHead {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 3,
            opened_think: false,
            thinking: false,
            tools: Some(ParamTypes::from_tools(&tools)),
        };
        let text = "Checking.<tool_call>\n<function=get>\n<parameter=n>\n7\n</parameter>\n</function>\n</tool_call>";
        let o = Outcome {
            prompt_tokens: 3,
            cached_tokens: 0,
            completion_tokens: 20,
            finish: Finish::Eos,
            stop: None,
            prefill: Default::default(),
            decode: Default::default(),
        };
        let whole = head.whole(text, &o);
        assert_eq!(whole["stop_reason"], "tool_use");
        assert_eq!(
            whole["content"][0],
            json!({"type": "text", "text": "Checking."})
        );
        let tu = &whole["content"][1];
        assert_eq!(
            (&tu["type"], &tu["name"], &tu["input"]),
            (&json!("tool_use"), &json!("get"), &json!({"n": 7}))
        );
        let mut b = Blocks {
            tools: head.tools.clone().map(ToolSplit::new),
            head,
            split: None,
            called: false,
            open: None,
            next: 0,
        };
        let mut out = String::new();
        for piece in [&text[..20], &text[20..]] {
            let parts = b.parts(piece);
            b.write(parts, &mut out);
        }
        out.push_str(&b.done(&o));
        let datas: Vec<Value> = out
            .split_terminator("\n\n")
            .map(|e| serde_json::from_str(e.split_once("data: ").expect("data").1).expect("json"))
            .collect();
        let starts: Vec<&Value> = datas
            .iter()
            .filter(|d| d["type"] == "content_block_start")
            .map(|d| &d["content_block"]["type"])
            .collect();
        assert_eq!(starts, [&json!("text"), &json!("tool_use")]);
        let partial = datas
            .iter()
            .find_map(|d| d["delta"]["partial_json"].as_str())
            .expect("input_json_delta");
        assert_eq!(
            serde_json::from_str::<Value>(partial).expect("json"),
            json!({"n": 7})
        );
        let delta = datas
            .iter()
            .find(|d| d["type"] == "message_delta")
            .expect("message_delta");
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn whole_and_streamed_messages() {
        let body = r#"{"model": "demo", "max_tokens": 5, "temperature": 0, "stream": STREAM,
                       "system": [{"type": "text", "text": "Be brief."}],
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}"#;
        let (st, text) = post("/v1/messages", &body.replace("STREAM", "false"), None).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        let whole: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(whole["type"], "message");
        let (st, text) = post("/v1/messages", &body.replace("STREAM", "true"), None).await;
        assert_eq!(st, StatusCode::OK);
        let events: Vec<(&str, Value)> = text
            .split_terminator("\n\n")
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("event and data");
                let name = name.strip_prefix("event: ").expect("event line");
                let data = data.strip_prefix("data: ").expect("data line");
                (name, serde_json::from_str(data).expect("data json"))
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(names[..2], ["message_start", "ping"]);
        assert_eq!(
            names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], *name);
        }
        let streamed: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(whole["content"][0]["text"], streamed.as_str());
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], whole["stop_reason"]);
        assert_eq!(
            delta["usage"]["output_tokens"],
            whole["usage"]["output_tokens"]
        );
        let (st, text) = post(
            "/v1/messages/count_tokens",
            &body.replace("STREAM", "false"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{text}");
        let n: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(n["input_tokens"], whole["usage"]["input_tokens"]);
    }
}
