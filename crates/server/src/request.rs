//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their validation into
//! a [`Job`]: the prompt's tokens and the generation parameters. Unknown fields are ignored, as
//! OpenAI and llama-server do; known ones with a wrong type or value are a 400 naming the field.
//! Besides OpenAI's sampling fields, llama-server's `top_k`, `min_p`, `typical_p`,
//! `repeat_penalty`, `repeat_last_n` and `ignore_eos` are understood.

use engine::{ChatError, ChatRequest, SamplerError, SamplerParams};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::error::ApiError;
use crate::extract::{fields, FromJson};
use crate::generate::{prompt_tokens, Params};
use crate::model::{ReasoningFormat, ServedModel};
use crate::think::ThinkSplit;
use crate::tools::ParamTypes;

/// Most choices one request may ask for.
const MAX_N: i64 = 16;

/// A validated request, ready for the queue.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Generation parameters.
    pub params: Params,
    /// `Some` when the reply is streamed (SSE).
    pub stream: Option<StreamOptions>,
    /// `Some(opened)` when `<think>` reasoning is taken out of the answer (`opened`: the
    /// prompt already opened the tag).
    pub think: Option<bool>,
    /// `Some` when `<tool_call>` blocks in the answer are returned as calls.
    pub tools: Option<ParamTypes>,
    /// Choices to generate (`n`), one after the other, seeds `seed`, `seed + 1`, ….
    pub n: usize,
    /// Legacy `echo`: the prompt's text, sent before each choice's completion.
    pub echo: Option<String>,
}

impl Job {
    /// A whole (not streamed) job of one choice for `prompt` on `m`, with the request's
    /// length, stop strings and sampling; no logprobs, reasoning or tool parsing.
    pub(crate) fn new(
        m: &ServedModel,
        prompt: Vec<u32>,
        max_tokens: usize,
        stop: Vec<String>,
        sampling: SamplerParams,
    ) -> Job {
        Job {
            prompt,
            params: Params {
                max_tokens,
                n_ctx: m.n_ctx,
                cache: m.cache,
                logprobs: None,
                prompt_logprobs: false,
                think_budget: None,
                marks: Vec::new(),
                constraint: None,
                deadline: None,
                stop,
                sampling,
            },
            stream: None,
            think: None,
            tools: None,
            n: 1,
            echo: None,
        }
    }
}

/// A sampler settings error as the API's 400, naming the parameter.
pub(crate) fn sampler_error(e: SamplerError) -> ApiError {
    match e {
        SamplerError::OutOfRange { name, .. } => ApiError::invalid(name, e.to_string()),
        SamplerError::BadBias { .. } => ApiError::invalid("logit_bias", e.to_string()),
    }
}

/// OpenAI's `stream_options`.
#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling, length and streaming fields common to both endpoints.
#[derive(Deserialize, Debug, Default)]
struct GenFields {
    model: Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    typical_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    seed: Option<Number>,
    logit_bias: Option<Map<String, Value>>,
    stop: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug)]
pub struct ChatCompletionRequest {
    gen: GenFields,
    chat: ChatFields,
}

#[derive(Deserialize, Debug)]
struct ChatFields {
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    chat_template_kwargs: Option<Map<String, Value>>,
    response_format: Option<Value>,
}

/// `POST /v1/completions` (legacy text completion).
#[derive(Debug)]
pub struct CompletionRequest {
    gen: GenFields,
    text: CompletionFields,
}

#[derive(Deserialize, Debug)]
struct CompletionFields {
    prompt: Value,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<i64>,
}

impl FromJson for ChatCompletionRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        Ok(ChatCompletionRequest {
            gen: fields(body)?,
            chat: fields(body)?,
        })
    }
}

impl FromJson for CompletionRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        Ok(CompletionRequest {
            gen: fields(body)?,
            text: fields(body)?,
        })
    }
}

/// The JSON Schema `response_format` asks for (OpenAI's shapes): none for `text`, any object
/// for `json_object`, `json_schema.schema` for `json_schema` (any JSON value without one).
fn response_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let bad = |m: &str| Err(ApiError::invalid("response_format", m));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "object"}))),
        Some("json_schema") => match format.get("json_schema") {
            Some(Value::Object(js)) => match js.get("schema") {
                None | Some(Value::Null) => Ok(Some(serde_json::json!({}))),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(s.clone())),
                Some(_) => bad("response_format.json_schema.schema must be a JSON Schema object"),
            },
            _ => bad("response_format of type json_schema needs a json_schema object"),
        },
        _ => bad("response_format.type must be 'text', 'json_object' or 'json_schema'"),
    }
}

impl ChatCompletionRequest {
    /// Check everything, render the messages with the chat template and tokenize.
    pub fn into_job(self, m: &ServedModel) -> Result<Job, ApiError> {
        self.gen.check_unsupported()?;
        let schema = response_schema(self.chat.response_format.as_ref())?;
        // A forced call: `required` (one or more of any tool) or a named function.
        let (parse_calls, force) = match &self.chat.tool_choice {
            None | Some(Value::Null) => (true, None),
            Some(Value::String(c)) if c == "auto" => (true, None),
            Some(Value::String(c)) if c == "none" => (false, None),
            Some(Value::String(c)) if c == "required" => (true, Some(None)),
            Some(Value::Object(o)) => match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => (true, Some(Some(name.to_string()))),
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "a named tool_choice needs function.name",
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice must be 'none', 'auto', 'required' or a named function",
                ))
            }
        };
        if force.is_some() && schema.is_some() {
            return Err(ApiError::unsupported(
                "response_format",
                "response_format together with a forced tool_choice",
            ));
        }
        let constrained = schema.is_some() || force.is_some();
        let mut messages = check_messages(self.chat.messages)?;
        arguments_as_objects(&mut messages);
        let types = self
            .chat
            .tools
            .as_deref()
            .filter(|t| parse_calls && !t.is_empty())
            .map(ParamTypes::from_tools);
        let tools = self.chat.tools.map(Value::Array);
        let kwargs = self.chat.chat_template_kwargs;
        let enable_thinking = match kwargs.as_ref().and_then(|k| k.get("enable_thinking")) {
            // Structured output constrains the whole answer: no reasoning before it.
            None | Some(Value::Null) if constrained => Some(false),
            None | Some(Value::Null) => None,
            Some(Value::Bool(true)) if constrained => {
                return Err(ApiError::unsupported(
                    match schema {
                        Some(_) => "response_format",
                        None => "tool_choice",
                    },
                    "constrained output (response_format, a forced tool_choice) with \
                         chat_template_kwargs.enable_thinking: true (reasoning before it)",
                ))
            }
            Some(Value::Bool(on)) => Some(*on),
            Some(_) => {
                return Err(ApiError::invalid(
                    "chat_template_kwargs.enable_thinking",
                    "chat_template_kwargs.enable_thinking must be a boolean",
                ))
            }
        };
        let req = ChatRequest {
            messages: &messages,
            tools: tools.as_ref(),
            add_generation_prompt: true,
            enable_thinking,
            extra: kwargs.as_ref(),
        };
        let text = m.template.render(&req).map_err(template_error)?;
        let prompt = prompt_tokens(&m.tokenizer, &text, true);
        let marks = m.marks(&req, &prompt);
        let logprobs = self.gen.chat_logprobs()?;
        let mut job = self.gen.into_job(m, prompt)?;
        job.params.logprobs = logprobs;
        job.params.marks = marks;
        if let Some(schema) = schema {
            let constraint = m.grammars()?.json(schema).map_err(|e| {
                ApiError::invalid("response_format", format!("response_format: {e}"))
            })?;
            job.params.constraint = Some(constraint);
        }
        if let Some(named) = &force {
            let constraint = m.forced_calls(tools.as_ref(), named.as_deref())?;
            job.params.constraint = Some(constraint);
        }
        if m.reasoning == ReasoningFormat::Deepseek {
            job.think = Some(ThinkSplit::prompt_opens(&text));
        }
        job.tools = types;
        Ok(job)
    }
}

impl CompletionRequest {
    /// Check everything and tokenize the prompt.
    pub fn into_job(self, m: &ServedModel) -> Result<Job, ApiError> {
        self.gen.check_unsupported()?;
        if self.text.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported(
                "suffix",
                "suffix (fill in the middle)",
            ));
        }
        if self.text.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::unsupported("best_of", "best_of other than 1"));
        }
        let prompt = completion_prompt(&self.text.prompt, m)?;
        let logprobs = self.gen.completion_logprobs()?;
        let echo = self.text.echo == Some(true);
        // The prompt's text as the reply repeats it: as given, or the ids' text.
        let echo_text = match &self.text.prompt {
            Value::String(s) => s.clone(),
            Value::Array(l) if l.len() == 1 && l[0].is_string() => {
                l[0].as_str().unwrap_or_default().to_string()
            }
            _ => prompt
                .iter()
                .map(|&t| String::from_utf8_lossy(m.tokenizer.token_bytes(t)).into_owned())
                .collect(),
        };
        let mut job = self.gen.into_job(m, prompt)?;
        job.params.logprobs = logprobs;
        job.params.prompt_logprobs = echo && logprobs.is_some();
        job.echo = echo.then_some(echo_text);
        Ok(job)
    }
}

impl GenFields {
    /// Fields whose other values this server cannot honour.
    fn check_unsupported(&self) -> Result<(), ApiError> {
        match self.n {
            None => {}
            Some(n) if n < 1 => return Err(ApiError::invalid("n", "n must be at least 1")),
            Some(n) if n > MAX_N => {
                return Err(ApiError::invalid("n", format!("n must be at most {MAX_N}")))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Chat's `logprobs` (a boolean) and `top_logprobs` (0–20, with `logprobs`).
    fn chat_logprobs(&self) -> Result<Option<usize>, ApiError> {
        let on = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(ApiError::invalid("logprobs", "logprobs must be a boolean")),
        };
        let top = match &self.top_logprobs {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(n @ 0..=20) if on => n as usize,
                Some(0..=20) => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    ))
                }
                _ => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "top_logprobs must be an integer from 0 to 20",
                    ))
                }
            },
        };
        Ok(on.then_some(top))
    }

    /// Legacy completions' `logprobs`: how many alternatives (0–5) besides the chosen token.
    fn completion_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n @ 0..=5) => Ok(Some(n as usize)),
                _ => Err(ApiError::invalid(
                    "logprobs",
                    "logprobs must be an integer from 0 to 5",
                )),
            },
        }
    }

    /// The generation parameters for a prompt of `prompt.len()` tokens.
    fn into_job(self, m: &ServedModel, prompt: Vec<u32>) -> Result<Job, ApiError> {
        m.check_model(self.model.as_deref())?;
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let max_tokens = self.max_tokens(m.n_ctx, prompt.len())?;
        let sampling = self.sampling(m)?;
        let stop = stop_strings(self.stop)?;
        let stream = match self.stream {
            Some(true) => Some(self.stream_options.unwrap_or_default()),
            _ => None,
        };
        Ok(Job {
            stream,
            n: usize::try_from(self.n.unwrap_or(1)).unwrap_or(1),
            ..Job::new(m, prompt, max_tokens, stop, sampling)
        })
    }

    /// `max_completion_tokens` (newer name) or `max_tokens`, checked against the context;
    /// without either, up to the end of the context (llama-server's `n_predict = -1`).
    fn max_tokens(&self, n_ctx: usize, n_prompt: usize) -> Result<usize, ApiError> {
        let (param, asked) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => ("max_completion_tokens", Some(n)),
            (None, n) => ("max_tokens", n),
        };
        let asked = match asked {
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be at least 1"),
                ))
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let completion = asked.unwrap_or(0);
        if n_prompt >= n_ctx || n_prompt.saturating_add(completion) > n_ctx {
            return Err(ApiError::ContextLength {
                n_ctx,
                prompt: n_prompt,
                completion,
            });
        }
        Ok(asked.unwrap_or(n_ctx - n_prompt))
    }

    /// Sampler settings: llama-server's defaults where a field is absent.
    fn sampling(&self, m: &ServedModel) -> Result<SamplerParams, ApiError> {
        let d = SamplerParams::default();
        let repeat_last_n = match self.repeat_last_n {
            None => d.repeat_last_n,
            Some(-1) => m.n_ctx,
            Some(n) => usize::try_from(n).map_err(|_| {
                ApiError::invalid("repeat_last_n", "repeat_last_n must be -1 or at least 0")
            })?,
        };
        let mut logit_bias = logit_bias(self.logit_bias.as_ref(), m.model.n_vocab())?;
        if self.ignore_eos == Some(true) {
            logit_bias.extend(m.eog_tokens().into_iter().map(|t| (t, f32::NEG_INFINITY)));
        }
        let p = SamplerParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            // llama-server: top_k <= 0 turns it off.
            top_k: self
                .top_k
                .map_or(d.top_k, |k| usize::try_from(k).unwrap_or(0)),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            typical_p: self.typical_p.unwrap_or(d.typical_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n,
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias,
            seed: seed(self.seed.as_ref())?,
        };
        // The sampler accepts top_p = 0 as "keep the top token"; OpenAI asks for (0, 1].
        if p.top_p <= 0.0 {
            return Err(ApiError::invalid("top_p", "top_p must be greater than 0"));
        }
        p.validate().map_err(sampler_error)?;
        Ok(p)
    }
}

/// The request's seed, or a fresh random one (llama-server's default seed is random too).
fn seed(n: Option<&Number>) -> Result<u64, ApiError> {
    let Some(n) = n else {
        return Ok(crate::response::random_u64());
    };
    // A negative seed keeps its bits: any integer is a valid seed.
    n.as_u64()
        .or_else(|| n.as_i64().map(|i| i as u64))
        .ok_or_else(|| ApiError::invalid("seed", "seed must be an integer"))
}

/// OpenAI's `{"token id": bias}`; llama-server's `false` bans the token.
fn logit_bias(
    map: Option<&Map<String, Value>>,
    n_vocab: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let mut out = Vec::new();
    for (key, value) in map.into_iter().flatten() {
        let param = format!("logit_bias.{key}");
        let id = key
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < n_vocab)
            .ok_or_else(|| {
                ApiError::invalid(
                    &param,
                    format!("logit_bias keys must be token ids below {n_vocab}, got '{key}'"),
                )
            })?;
        let bias = match value {
            Value::Number(b) => b.as_f64().unwrap_or(f64::NAN) as f32,
            Value::Bool(false) => f32::NEG_INFINITY,
            _ => f32::NAN,
        };
        if bias.is_nan() {
            return Err(ApiError::invalid(
                param,
                "logit_bias values must be numbers",
            ));
        }
        out.push((id, bias));
    }
    Ok(out)
}

/// `stop`: a string, a list of strings, or null.
fn stop_strings(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("stop", "stop must be a string or an array of strings");
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(list)) => list
            .into_iter()
            .map(|s| match s {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Checks roles and content shapes (templates would fail obscurely or silently drop what they
/// don't know); `developer` becomes `system`, as OpenAI maps it for models without that role.
/// Earlier calls' `arguments` as objects, not JSON text: templates iterate them (`|items`), as
/// llama-server hands them over.
pub(crate) fn arguments_as_objects(messages: &mut Value) {
    let calls = messages
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|m| m.get_mut("tool_calls").and_then(Value::as_array_mut))
        .flatten();
    for call in calls {
        let f = match call.get_mut("function") {
            Some(f) => f,
            None => call,
        };
        if let Some(Value::String(s)) = f.get("arguments") {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
                f["arguments"] = v;
            }
        }
    }
}

fn check_messages(messages: Vec<Value>) -> Result<Value, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, mut message) in messages.into_iter().enumerate() {
        let Some(obj) = message.as_object_mut() else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                "a message must be an object",
            ));
        };
        let bad_role = |why: String| ApiError::invalid(format!("messages[{i}].role"), why);
        let role = match obj.get("role").map(Value::as_str) {
            Some(Some(r @ ("system" | "user" | "assistant" | "tool"))) => r.to_string(),
            Some(Some("developer")) => "system".to_string(),
            Some(Some(other)) => {
                let known = "system, developer, user, assistant or tool";
                return Err(bad_role(format!(
                    "unknown role '{other}': expected {known}"
                )));
            }
            Some(None) => return Err(bad_role("role must be a string".into())),
            None => return Err(bad_role("missing role".into())),
        };
        check_content(obj.get("content"), &role, i)?;
        obj.insert("role".into(), Value::String(role));
        out.push(message);
    }
    Ok(Value::Array(out))
}

fn check_content(content: Option<&Value>, role: &str, i: usize) -> Result<(), ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        // An assistant turn that only calls tools has no content.
        None | Some(Value::Null) if role == "assistant" => Ok(()),
        None | Some(Value::Null) => Err(ApiError::invalid(
            param,
            format!("a {role} message needs content"),
        )),
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let param = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") if part.get("text").is_some_and(Value::is_string) => {}
                    Some("text") => {
                        return Err(ApiError::invalid(
                            param,
                            "a text part needs a string `text`",
                        ))
                    }
                    Some(kind @ ("image_url" | "input_audio" | "file")) => {
                        return Err(ApiError::unsupported(param, format!("{kind} content")))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            param,
                            "a content part needs a known `type`",
                        ))
                    }
                }
            }
            Ok(())
        }
        Some(_) => Err(ApiError::invalid(
            param,
            "content must be a string or an array of parts",
        )),
    }
}

/// A template error: the request's fault (a role order the template refuses) or the file's.
pub(crate) fn template_error(e: ChatError) -> ApiError {
    match e {
        ChatError::Raised { message, .. } => ApiError::invalid("messages", message),
        ChatError::Render { .. } | ChatError::BadMessage { .. } | ChatError::MessagesNotArray => {
            ApiError::invalid("messages", e.to_string())
        }
        ChatError::Syntax { .. } | ChatError::TokenId { .. } => ApiError::Internal {
            message: e.to_string(),
        },
    }
}

/// `prompt`: a string, a list of one string, or a list of token ids (as llama-server takes).
fn completion_prompt(prompt: &Value, m: &ServedModel) -> Result<Vec<u32>, ApiError> {
    let n_vocab = m.model.n_vocab() as u64;
    match prompt {
        Value::String(s) => Ok(prompt_tokens(&m.tokenizer, s, true)),
        Value::Array(list) => match list.as_slice() {
            [Value::String(s)] => Ok(prompt_tokens(&m.tokenizer, s, true)),
            [Value::String(_), ..] => Err(ApiError::unsupported(
                "prompt",
                "several prompts in one request",
            )),
            ids => ids
                .iter()
                .map(|v| v.as_u64().filter(|&t| t < n_vocab).map(|t| t as u32))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    ApiError::invalid(
                        "prompt",
                        format!("a token-id prompt needs integers below {n_vocab}"),
                    )
                }),
        },
        _ => Err(ApiError::invalid(
            "prompt",
            "prompt must be a string, a list of one string or a list of token ids",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::demo;
    use serde_json::json;

    fn chat(body: Value) -> Result<Job, ApiError> {
        ChatCompletionRequest::from_json(&body)?.into_job(&demo())
    }

    fn param_of(e: ApiError) -> String {
        e.body()["error"]["param"]
            .as_str()
            .unwrap_or("null")
            .to_string()
    }

    fn user(text: &str) -> Value {
        json!([{"role": "user", "content": text}])
    }

    #[test]
    fn defaults_and_fields() {
        let job = chat(json!({"model": "demo", "messages": user("hi")})).unwrap();
        assert!(job.stream.is_none());
        assert_eq!(job.params.max_tokens, 256 - job.prompt.len());
        assert_eq!(job.params.sampling.temperature, 0.8);
        let job = chat(
            json!({"messages": user("hi"), "temperature": 0, "top_k": -1, "seed": -1,
            "max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "stream": true,
            "stream_options": {"include_usage": true}, "logit_bias": {"17": -100, "3": false},
            "developer_extension": [1, 2]}),
        )
        .unwrap();
        let p = &job.params;
        assert_eq!(
            (p.max_tokens, p.sampling.top_k, p.sampling.seed),
            (5, 0, u64::MAX)
        );
        assert_eq!(p.stop, vec!["x".to_string()]);
        assert_eq!(
            p.sampling.logit_bias,
            vec![(17, -100.0), (3, f32::NEG_INFINITY)]
        );
        assert_eq!(
            job.stream,
            Some(StreamOptions {
                include_usage: true
            })
        );
    }

    #[test]
    fn rendered_with_the_template() {
        let job = chat(
            json!({"messages": [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "chat_template_kwargs": {"enable_thinking": false}}),
        )
        .unwrap();
        let text = demo().tokenizer.decode(&job.prompt);
        assert!(text.starts_with("<|im_start|>system\nBe brief."), "{text}");
        assert!(text.contains("<|im_start|>user\nhi<|im_end|>"), "{text}");
        assert!(text.ends_with("<think>\n\n</think>\n\n"), "{text}");
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let cases = [
            (
                json!({"messages": user("hi"), "temperature": -1}),
                "temperature",
            ),
            (
                json!({"messages": user("hi"), "temperature": "hot"}),
                "temperature",
            ),
            (json!({"messages": user("hi"), "top_p": 0}), "top_p"),
            (json!({"messages": user("hi"), "top_p": 1.5}), "top_p"),
            (json!({"messages": user("hi"), "n": 17}), "n"),
            (
                json!({"messages": user("hi"), "max_tokens": 0}),
                "max_tokens",
            ),
            (json!({"messages": user("hi"), "stop": 3}), "stop"),
            (json!({"messages": user("hi"), "seed": 1.5}), "seed"),
            (
                json!({"messages": user("hi"), "logit_bias": {"999999": 1}}),
                "logit_bias.999999",
            ),
            (json!({"messages": user("hi"), "logprobs": 3}), "logprobs"),
            (
                json!({"messages": user("hi"), "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                json!({"messages": user("hi"), "top_logprobs": 2}),
                "top_logprobs",
            ),
            (json!({"messages": user("hi"), "stream": "yes"}), "stream"),
            (json!({"messages": user("hi"), "model": 3}), "model"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({}), "messages"),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(param_of(e), param, "{body}");
        }
    }

    #[test]
    fn context_overflow_is_reported_with_its_code() {
        let e = chat(json!({"messages": user("hi"), "max_tokens": 1000})).unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::ContextLength {
                    n_ctx: 256,
                    completion: 1000,
                    ..
                }
            ),
            "{e:?}"
        );
        let long = "word ".repeat(400);
        let e = chat(json!({"messages": user(&long)})).unwrap_err();
        assert!(
            matches!(e, ApiError::ContextLength { completion: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn completion_prompts() {
        let m = demo();
        let job = |body: Value| CompletionRequest::from_json(&body)?.into_job(&m);
        let a = job(json!({"prompt": "Once upon a time"})).unwrap();
        let b = job(json!({"prompt": ["Once upon a time"]})).unwrap();
        assert_eq!(a.prompt, b.prompt);
        assert_eq!(
            job(json!({"prompt": [1, 2, 3]})).unwrap().prompt,
            vec![1, 2, 3]
        );
        for (body, param) in [
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [1, -2]}), "prompt"),
            (json!({"prompt": {"a": 1}}), "prompt"),
            (json!({"max_tokens": 3}), "prompt"),
        ] {
            assert_eq!(
                param_of(job(body.clone()).expect_err(&body.to_string())),
                param,
                "{body}"
            );
        }
    }
}
