//! OpenAI response bodies: whole replies, and the SSE chunks of a streamed one, spelled as
//! OpenAI sends them (`data: {json}\n\n` lines ending with `data: [DONE]`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::generate::{Finish, Outcome};
use crate::think::{split_whole, Part, ThinkSplit};
use crate::tools::{split_calls, ParamTypes, Piece, ToolSplit};

/// Identifies this build in `system_fingerprint`.
pub const FINGERPRINT: &str = concat!("llm-server-", env!("CARGO_PKG_VERSION"));

/// The end of every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// Which endpoint a reply belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every object of one reply shares.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `Some(opened)`: `<think>` reasoning goes to `reasoning_content` (chat only).
    pub think: Option<bool>,
    /// `Some`: `<tool_call>` blocks in the answer become `tool_calls` (chat only).
    pub tools: Option<ParamTypes>,
}

impl Meta {
    /// A fresh id for a reply of `model` on `endpoint`.
    pub fn new(endpoint: Endpoint, model: &str) -> Meta {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Meta {
            id: format!("{prefix}-{:016x}{:08x}", random_u64(), random_u64() as u32),
            created: unix_now(),
            model: model.to_string(),
            endpoint,
            think: None,
            tools: None,
        }
    }

    /// The envelope of a reply or chunk, `choices` and `usage` left to the caller.
    fn envelope(&self, object: &str) -> serde_json::Map<String, Value> {
        let v = json!({"id": self.id, "object": object, "created": self.created,
                       "model": self.model, "system_fingerprint": FINGERPRINT});
        match v {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// OpenAI's `finish_reason`: `stop` for an end-of-generation token or a stop string.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length | Finish::Timeout => "length",
        Finish::Eos | Finish::StopString | Finish::Cancelled => "stop",
    }
}

/// The `usage` object.
pub fn usage(o: &Outcome) -> Value {
    json!({"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
           "total_tokens": o.prompt_tokens + o.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": o.cached_tokens}})
}

/// A whole (non-streamed) reply of one or more choices (`n`): (text, outcome, logprobs) each;
/// the usage counts the prompt once and every choice's tokens.
pub fn full_reply(meta: &Meta, choices: &[(&str, &Outcome, Option<&[Value]>)]) -> Value {
    let mut object = "chat.completion";
    let list: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, (text, o, lp))| {
            let (obj, c) = choice_json(meta, i, text, o, *lp);
            object = obj;
            c
        })
        .collect();
    let mut v = meta.envelope(object);
    v.insert("choices".into(), Value::Array(list));
    if let Some((_, first, _)) = choices.first() {
        let total = Outcome {
            completion_tokens: choices.iter().map(|c| c.1.completion_tokens).sum(),
            ..(*first).clone()
        };
        v.insert("usage".into(), usage(&total));
    }
    Value::Object(v)
}

/// One choice of a whole reply, and the reply's `object`.
fn choice_json(
    meta: &Meta,
    index: usize,
    text: &str,
    o: &Outcome,
    logprobs: Option<&[Value]>,
) -> (&'static str, Value) {
    let lp = logprobs.map_or(Value::Null, |l| logprobs_json(meta.endpoint, l, 0));
    let finish = finish_reason(o.finish);
    match meta.endpoint {
        Endpoint::Chat => {
            let mut message = json!({"role": "assistant", "content": text, "refusal": null});
            let mut answer = text.to_string();
            if let Some(opened) = meta.think {
                let (reasoning, a) = split_whole(text, opened);
                answer = a;
                if !reasoning.is_empty() {
                    message["reasoning_content"] = reasoning.into();
                }
            }
            let mut finish = finish;
            if let Some(types) = &meta.tools {
                let (rest, calls) = split_calls(&answer, types.clone());
                if !calls.is_empty() {
                    answer = rest.trim().to_string();
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| {
                            json!({"id": call_id(), "type": "function", "function":
                            {"name": c.name, "arguments": c.arguments.to_string()}})
                        })
                        .collect();
                    message["tool_calls"] = Value::Array(calls);
                    finish = "tool_calls";
                }
            }
            // With calls and no text, OpenAI's content is null.
            message["content"] = if answer.is_empty() && message.get("tool_calls").is_some() {
                Value::Null
            } else {
                answer.into()
            };
            (
                "chat.completion",
                json!({"index": index, "message": message, "logprobs": lp, "finish_reason": finish}),
            )
        }
        Endpoint::Completion => (
            "text_completion",
            json!({"text": text, "index": index, "logprobs": lp, "finish_reason": finish}),
        ),
    }
}

/// The `logprobs` object of a choice from chat items (queue::Event::Logprob): chat's
/// `{content: [items]}`, or legacy completions' `{tokens, token_logprobs, top_logprobs,
/// text_offset}` with offsets counted in characters from `offset`.
pub fn logprobs_json(endpoint: Endpoint, items: &[Value], offset: usize) -> Value {
    match endpoint {
        Endpoint::Chat => json!({"content": items, "refusal": null}),
        Endpoint::Completion => {
            let token = |i: &Value| i["token"].as_str().unwrap_or_default().to_string();
            let mut at = offset;
            let offsets: Vec<usize> = items
                .iter()
                .map(|i| {
                    let here = at;
                    at += token(i).chars().count();
                    here
                })
                .collect();
            let top: Vec<Value> = items
                .iter()
                .map(|i| {
                    let alts = i["top_logprobs"].as_array().into_iter().flatten();
                    Value::Object(alts.map(|a| (token(a), a["logprob"].clone())).collect())
                })
                .collect();
            json!({"tokens": items.iter().map(token).collect::<Vec<_>>(),
                   "token_logprobs": items.iter().map(|i| i["logprob"].clone()).collect::<Vec<_>>(),
                   "top_logprobs": top, "text_offset": offsets})
        }
    }
}

/// Writes one streamed reply as SSE chunks.
#[derive(Debug)]
pub struct SseEncoder {
    meta: Meta,
    include_usage: bool,
    split: Option<ThinkSplit>,
    tools: Option<ToolSplit>,
    /// Tool calls sent so far.
    calls: usize,
    /// Logprob items of tokens whose text has not gone out yet (sent with the next chunk).
    logprobs: Vec<Value>,
    /// The choice this encoder writes (`n` > 1: one encoder a choice).
    index: usize,
}

impl SseEncoder {
    /// The same, for choice `index`.
    pub fn for_choice(meta: Meta, include_usage: bool, index: usize) -> SseEncoder {
        SseEncoder {
            index,
            ..SseEncoder::new(meta, include_usage)
        }
    }

    /// An encoder; with `include_usage` every chunk carries `"usage": null` and a last chunk
    /// the counts, as OpenAI does.
    pub fn new(meta: Meta, include_usage: bool) -> SseEncoder {
        let chat = meta.endpoint == Endpoint::Chat;
        let split = meta.think.filter(|_| chat).map(ThinkSplit::new);
        let tools = meta.tools.clone().filter(|_| chat).map(ToolSplit::new);
        SseEncoder {
            meta,
            include_usage,
            split,
            tools,
            calls: 0,
            logprobs: Vec::new(),
            index: 0,
        }
    }

    /// What goes out before any token: a chat stream opens with the assistant role.
    pub fn start(&mut self) -> Option<String> {
        (self.meta.endpoint == Endpoint::Chat).then(|| {
            self.chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            )
        })
    }

    /// A token's logprob item (queue::Event::Logprob): it goes out with the next chunk.
    pub fn logprob(&mut self, item: Value) {
        self.logprobs.push(item);
    }

    /// A piece of generated text (reasoning as `reasoning_content` deltas, tool calls as
    /// `tool_calls` deltas; nothing while a tag may be forming).
    pub fn text(&mut self, text: &str) -> String {
        if self.meta.endpoint == Endpoint::Completion {
            return self.chunk(json!(text), None);
        }
        let parts = match &mut self.split {
            Some(split) => split.push(text),
            None => vec![Part::Text(text.to_string())],
        };
        self.parts(parts)
    }

    fn parts(&mut self, parts: Vec<Part>) -> String {
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Thinking(t) => {
                    out.push_str(&self.chunk(json!({"reasoning_content": t}), None))
                }
                Part::Text(t) => {
                    let pieces = match &mut self.tools {
                        Some(tools) => tools.push(&t),
                        None => vec![Piece::Text(t)],
                    };
                    out.push_str(&self.pieces(pieces));
                }
            }
        }
        out
    }

    fn pieces(&mut self, pieces: Vec<Piece>) -> String {
        let mut out = String::new();
        for p in pieces {
            let delta = match p {
                Piece::Text(t) => json!({"content": t}),
                Piece::Call(c) => {
                    let d = json!({"tool_calls": [{"index": self.calls, "id": call_id(),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments.to_string()}}]});
                    self.calls += 1;
                    d
                }
            };
            out.push_str(&self.chunk(delta, None));
        }
        out
    }

    /// The end of this choice: held text and the chunk with `finish_reason`.
    pub fn finish(&mut self, o: &Outcome) -> String {
        let rest = self
            .split
            .as_mut()
            .map(ThinkSplit::finish)
            .unwrap_or_default();
        let mut out = self.parts(rest);
        let held = self
            .tools
            .as_mut()
            .map(ToolSplit::finish)
            .unwrap_or_default();
        out.push_str(&self.pieces(held));
        let empty = match self.meta.endpoint {
            Endpoint::Chat => json!({}),
            Endpoint::Completion => json!(""),
        };
        let finish = match self.calls {
            0 => finish_reason(o.finish),
            _ => "tool_calls",
        };
        out.push_str(&self.chunk(empty, Some(finish)));
        out
    }

    /// The end of the stream: the usage chunk if asked for (`o`: the counts of all choices),
    /// then `[DONE]`.
    pub fn end(&self, o: &Outcome) -> String {
        let mut out = String::new();
        if self.include_usage {
            let mut v = self.meta.envelope(self.object());
            v.insert("choices".into(), json!([]));
            v.insert("usage".into(), usage(o));
            out.push_str(&sse_data(&Value::Object(v)));
        }
        out.push_str(SSE_DONE);
        out
    }

    /// A failure after the stream began: the error object as a data line (what OpenAI's
    /// clients raise from), then the end of the stream.
    pub fn error(&self, e: &ApiError) -> String {
        sse_data(&e.body())
    }

    fn object(&self) -> &'static str {
        match self.meta.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }

    /// One chunk: a chat `delta` or a completion `text`.
    fn chunk(&mut self, content: Value, finish: Option<&str>) -> String {
        let lp = match self.logprobs.is_empty() {
            true => Value::Null,
            false => logprobs_json(self.meta.endpoint, &std::mem::take(&mut self.logprobs), 0),
        };
        let index = self.index;
        let choice = match self.meta.endpoint {
            Endpoint::Chat => {
                json!({"index": index, "delta": content, "logprobs": lp, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"text": content, "index": index, "logprobs": lp, "finish_reason": finish})
            }
        };
        let mut v = self.meta.envelope(self.object());
        v.insert("choices".into(), json!([choice]));
        if self.include_usage {
            v.insert("usage".into(), Value::Null);
        }
        sse_data(&Value::Object(v))
    }
}

/// One SSE event carrying `v`.
pub fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// A fresh tool call id.
pub fn call_id() -> String {
    format!("call_{:016x}", random_u64())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random number for ids and unseeded requests: std's per-process random hash keys, mixed
/// with a counter (no RNG crate needed for this).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A whole single-choice stream's end: the choice's finish, then usage and `[DONE]`.
    fn done(enc: &mut SseEncoder, o: &Outcome) -> String {
        let mut out = enc.finish(o);
        out.push_str(&enc.end(o));
        out
    }

    fn outcome(finish: Finish) -> Outcome {
        Outcome {
            prompt_tokens: 7,
            cached_tokens: 0,
            completion_tokens: 3,
            finish,
            stop: None,
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
        }
    }

    fn meta(endpoint: Endpoint) -> Meta {
        Meta {
            id: "chatcmpl-1".into(),
            created: 42,
            model: "demo".into(),
            endpoint,
            think: None,
            tools: None,
        }
    }

    /// The JSON of each `data:` line of an SSE body.
    fn events(body: &str) -> Vec<Value> {
        assert!(body.ends_with(SSE_DONE), "{body:?}");
        body.strip_suffix(SSE_DONE)
            .unwrap_or_default()
            .split_terminator("\n\n")
            .map(|line| {
                let data = line.strip_prefix("data: ").expect("data line");
                serde_json::from_str(data).expect("json")
            })
            .collect()
    }

    #[test]
    fn chat_stream_chunks() {
        let mut enc = SseEncoder::new(meta(Endpoint::Chat), false);
        let start = enc.start().unwrap_or_default();
        let expected = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":42,\
             \"model\":\"demo\",\"system_fingerprint\":\"{FINGERPRINT}\",\"choices\":[{{\"index\":0,\
             \"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\
             \"finish_reason\":null}}]}}\n\n"
        );
        assert_eq!(start, expected);
        let body = [
            start,
            enc.text("Hel"),
            done(&mut enc, &outcome(Finish::Length)),
        ]
        .concat();
        let ev = events(&body);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(ev[2]["choices"][0]["delta"], json!({}));
        assert_eq!(ev[2]["choices"][0]["finish_reason"], "length");
        assert!(ev.iter().all(|e| e.get("usage").is_none()));
    }

    #[test]
    fn usage_chunk_when_asked() {
        let mut enc = SseEncoder::new(meta(Endpoint::Chat), true);
        let body = [enc.text("a"), done(&mut enc, &outcome(Finish::Eos))].concat();
        let ev = events(&body);
        assert_eq!(ev.len(), 3);
        assert!(ev[..2].iter().all(|e| e["usage"].is_null()));
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[2]["choices"], json!([]));
        assert_eq!(
            ev[2]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                   "prompt_tokens_details": {"cached_tokens": 0}})
        );
    }

    #[test]
    fn reasoning_goes_to_its_own_field() {
        let m = Meta {
            think: Some(true),
            ..meta(Endpoint::Chat)
        };
        let mut enc = SseEncoder::new(m.clone(), false);
        let body = [
            enc.text("plan</th"),
            enc.text("ink>\n\nHi"),
            done(&mut enc, &outcome(Finish::Eos)),
        ]
        .concat();
        let ev = events(&body);
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"reasoning_content": "plan"})
        );
        assert_eq!(ev[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        let full = full_reply(&m, &[("plan</think>\n\nHi", &outcome(Finish::Eos), None)]);
        let msg = &full["choices"][0]["message"];
        assert_eq!(
            (&msg["content"], &msg["reasoning_content"]),
            (&json!("Hi"), &json!("plan"))
        );
    }

    #[test]
    fn tool_calls_whole_and_streamed() {
        let tools = [json!({"type": "function", "function": {"name": "f",
            "parameters": {"properties": {"q": {"type": "string"}}}}})];
        let m = Meta {
            tools: Some(ParamTypes::from_tools(&tools)),
            ..meta(Endpoint::Chat)
        };
        let text =
            "<tool_call>\n<function=f>\n<parameter=q>\n42\n</parameter>\n</function>\n</tool_call>";
        let full = full_reply(&m, &[(text, &outcome(Finish::Eos), None)]);
        let choice = &full["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "f");
        assert_eq!(call["function"]["arguments"], r#"{"q":"42"}"#);
        assert!(call["id"].as_str().is_some_and(|i| i.starts_with("call_")));
        let mut enc = SseEncoder::new(m, false);
        let (a, b) = text.split_at(17);
        let body = [
            enc.text("Sure. "),
            enc.text(a),
            enc.text(b),
            done(&mut enc, &outcome(Finish::Eos)),
        ]
        .concat();
        let ev = events(&body);
        assert_eq!(ev[0]["choices"][0]["delta"], json!({"content": "Sure. "}));
        let d = &ev[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (&d["index"], &d["function"]["name"]),
            (&json!(0), &json!("f"))
        );
        assert_eq!(
            ev.last().expect("events")["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn completion_stream_and_reply() {
        let mut enc = SseEncoder::new(meta(Endpoint::Completion), false);
        assert!(enc.start().is_none());
        let ev = events(
            &[
                enc.text("once"),
                done(&mut enc, &outcome(Finish::StopString)),
            ]
            .concat(),
        );
        assert_eq!(ev[0]["object"], "text_completion");
        assert_eq!(ev[0]["choices"][0]["text"], "once");
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "stop");
        let full = full_reply(
            &meta(Endpoint::Completion),
            &[("once", &outcome(Finish::Length), None)],
        );
        assert_eq!(full["choices"][0]["text"], "once");
        assert_eq!(full["choices"][0]["finish_reason"], "length");
        assert_eq!(full["usage"]["total_tokens"], 10);
    }

    #[test]
    fn chat_reply_and_ids() {
        let full = full_reply(
            &meta(Endpoint::Chat),
            &[("hi", &outcome(Finish::Eos), None)],
        );
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(full["choices"][0]["message"]["content"], "hi");
        assert_eq!(full["choices"][0]["message"]["role"], "assistant");
        let (a, b) = (
            Meta::new(Endpoint::Chat, "m"),
            Meta::new(Endpoint::Chat, "m"),
        );
        assert!(a.id.starts_with("chatcmpl-") && a.id.len() == 33);
        assert_ne!(a.id, b.id);
        assert!(Meta::new(Endpoint::Completion, "m").id.starts_with("cmpl-"));
    }
}
