//! The model's slots (`-np`): requests wait for a free one in arrival order (a fair async
//! semaphore), each runs on a blocking thread — its forward calls batched with the other
//! slots' ([`crate::batch`]) — and sends its text through a channel. A receiver that goes
//! away (the client disconnected) stops the generation at the next token and frees the slot.
//! Past the slots at most `limit` requests wait; more are refused (429 / 529 with
//! `Retry-After`). The handlers only see [`Queue::submit`].

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::generate::{generate_with_logprobs, Finish, Outcome, TokenLogprob};
use crate::metrics::Metrics;
use crate::model::ServedModel;
use crate::request::Job;

/// Text chunks buffered between the generation thread and the HTTP response: enough to never
/// stall decoding on a reading client, few enough to stop soon after a client vanishes.
const CHANNEL_DEPTH: usize = 64;

/// What a running generation reports.
#[derive(Debug)]
pub enum Event {
    /// Final text (never empty).
    Text(String),
    /// A generated token's log-probability (with `logprobs`), before its text: OpenAI's
    /// chat item `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
    Logprob(serde_json::Value),
    /// A choice ended normally (`n` of them, each after its text).
    Done(Outcome),
    /// The events that follow belong to choice `i` (sent before every choice but the first).
    Choice(usize),
    /// Generation failed after it was accepted.
    Failed(String),
}

/// Requests that may wait for the model at once unless `--max-queue` says otherwise.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// The model's slots and waiting line: at most `limit` requests wait for a slot; more are
/// refused (429/529).
#[derive(Clone, Debug)]
pub struct Queue {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue::with_limit(DEFAULT_MAX_WAITING)
    }
}

/// A place in the line, given back when dropped.
struct Place(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Queue {
    /// One slot, and a line where at most `limit` requests wait.
    pub fn with_limit(limit: usize) -> Queue {
        Queue::new(1, limit)
    }

    /// `slots` generations at once, and a line where at most `limit` requests wait.
    pub fn new(slots: usize, limit: usize) -> Queue {
        Queue {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            metrics: Arc::default(),
            waiting: Arc::default(),
            limit,
        }
    }

    /// Wait for a free slot, or refuse when the line is full.
    async fn turn(&self) -> Result<OwnedSemaphorePermit, crate::ApiError> {
        let ahead = self
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let place = Place(self.waiting.clone());
        if ahead >= self.limit {
            return Err(crate::ApiError::Overloaded { waiting: ahead });
        }
        let _waiting = Gauge::up(&self.metrics, Metrics::waiting);
        let turn = self.slots.clone().acquire_owned().await;
        drop(place);
        // The semaphore is never closed.
        turn.map_err(|e| crate::ApiError::Internal {
            message: format!("the slots: {e}"),
        })
    }

    /// Wait for a slot, then start `job` on a blocking thread; its events come on the
    /// returned channel (refused when the line is full). `label` names the request in the log line written when it ends.
    pub async fn submit(
        &self,
        model: Arc<ServedModel>,
        job: Job,
        label: String,
    ) -> Result<mpsc::Receiver<Event>, crate::ApiError> {
        let queued = Instant::now();
        let turn = self.turn().await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            // Held until this generation ends (a panic included: the guards drop on unwind).
            let _turn = turn;
            let _running = Gauge::up(&metrics, Metrics::running);
            run(&model, &job, &tx, &label, (&metrics, queued));
        });
        Ok(rx)
    }

    /// Wait for a slot like a generation, then run `f` on a blocking thread in it
    /// (embeddings, whose forward calls go through the batcher too).
    pub async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::ApiError> {
        let turn = self.turn().await?;
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let _running = Gauge::up(&metrics, Metrics::running);
            f()
        })
        .await
        .map_err(|e| crate::ApiError::Internal {
            message: format!("the model's thread failed: {e}"),
        })
    }

    /// The counters this queue feeds.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// A gauge raised for as long as it lives.
struct Gauge<'a> {
    m: &'a Metrics,
    f: fn(&Metrics, i64),
}

impl<'a> Gauge<'a> {
    fn up(m: &'a Metrics, f: fn(&Metrics, i64)) -> Gauge<'a> {
        f(m, 1);
        Gauge { m, f }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        (self.f)(self.m, -1);
    }
}

/// Every choice of `job` in turn (`n` of them, seeds counting up from the request's).
fn run(
    model: &ServedModel,
    job: &Job,
    tx: &mpsc::Sender<Event>,
    label: &str,
    (metrics, queued): (&Metrics, Instant),
) {
    let mut first = true;
    let deadline = model.timeout.map(|t| Instant::now() + t);
    for i in 0..job.n.max(1) {
        if i > 0 && tx.blocking_send(Event::Choice(i)).is_err() {
            return; // the client is gone
        }
        let mut params = job.params.clone();
        params.sampling.seed = params.sampling.seed.wrapping_add(i as u64);
        params.deadline = deadline;
        // Echo: the prompt's text first (its logprobs, when asked for, come from the
        // generation's prefill just after; they attach to the next text sent).
        if let Some(echo) = job.echo.as_ref().filter(|e| !e.is_empty()) {
            if !params.prompt_logprobs && tx.blocking_send(Event::Text(echo.clone())).is_err() {
                return;
            }
        }
        let echo_after = job
            .echo
            .as_ref()
            .filter(|e| params.prompt_logprobs && !e.is_empty());
        let mut seen = 0;
        let on_token = |lp: TokenLogprob| {
            let _ = tx.blocking_send(Event::Logprob(logprob_item(&model.tokenizer, &lp)));
            seen += 1;
            // With the prompt's logprobs, its text follows its last one.
            if let Some(echo) = echo_after.filter(|_| seen == job.prompt.len()) {
                let _ = tx.blocking_send(Event::Text(echo.clone()));
            }
        };
        let result = generate_with_logprobs(
            model.generator(),
            &job.prompt,
            &params,
            |text| {
                if first && !text.is_empty() {
                    first = false;
                    metrics.first_token(queued.elapsed());
                }
                let gone = if text.is_empty() {
                    tx.is_closed()
                } else {
                    tx.blocking_send(Event::Text(text.to_string())).is_err()
                };
                if gone {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            on_token,
        );
        let (event, failed) = match result {
            Ok(o) => {
                log(label, &o);
                metrics.finished(&o);
                (Event::Done(o), false)
            }
            Err(e) => {
                eprintln!("generation id={label} error={:?}", e.to_string());
                (Event::Failed(e.to_string()), true)
            }
        };
        // The client may be gone by now; nothing to tell it then.
        if tx.blocking_send(event).is_err() || failed {
            return;
        }
    }
}

/// A token's text as OpenAI gives it: the bytes, lossily as a string.
fn token_json(tok: &engine::Tokenizer, id: u32, logprob: f32) -> serde_json::Value {
    let bytes = tok.token_bytes(id);
    serde_json::json!({"token": String::from_utf8_lossy(bytes), "logprob": logprob,
                       "bytes": bytes})
}

/// OpenAI's chat logprobs item for a generated token.
fn logprob_item(tok: &engine::Tokenizer, lp: &TokenLogprob) -> serde_json::Value {
    let mut item = token_json(tok, lp.id, lp.logprob);
    item["top_logprobs"] = lp
        .top
        .iter()
        .map(|&(id, l)| token_json(tok, id, l))
        .collect();
    item
}

/// One line per generation on stderr, in logfmt (`key=value`, the request's id first), like
/// llama-server's timings: what a log collector can parse.
fn log(label: &str, o: &Outcome) {
    let finish = match o.finish {
        Finish::Eos => "eos",
        Finish::StopString => "stop",
        Finish::Length => "length",
        Finish::Cancelled => "cancelled",
        Finish::Timeout => "timeout",
    };
    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    eprintln!(
        "generation id={label} prompt_tokens={} prefill_s={:.3} prefill_tok_s={:.1} \
         generated_tokens={} decode_s={:.3} decode_tok_s={:.1} finish={finish}",
        o.prompt_tokens,
        o.prefill.as_secs_f64(),
        rate(o.prompt_tokens, o.prefill),
        o.completion_tokens,
        o.decode.as_secs_f64(),
        rate(o.completion_tokens, o.decode),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Params;
    use crate::model::demo;
    use engine::SamplerParams;

    fn job(max_tokens: usize) -> Job {
        let m = demo();
        Job {
            prompt: crate::generate::prompt_tokens(&m.tokenizer, "Once upon a time", true),
            params: Params {
                max_tokens,
                n_ctx: m.n_ctx,
                stop: Vec::new(),
                sampling: SamplerParams::greedy(),
                cache: Default::default(),
                logprobs: None,
                prompt_logprobs: false,
                think_budget: None,
                marks: Vec::new(),
                constraint: None,
                deadline: None,
            },
            stream: None,
            think: None,
            tools: None,
            n: 1,
            echo: None,
        }
    }

    async fn collect(mut rx: mpsc::Receiver<Event>) -> (String, Option<Outcome>) {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Logprob(_) | Event::Choice(_) => {}
                Event::Done(o) => return (text, Some(o)),
                Event::Failed(e) => panic!("{e}"),
            }
        }
        (text, None)
    }

    #[tokio::test]
    async fn requests_take_turns_and_agree() {
        let q = Queue::default();
        let a = q.submit(demo(), job(12), "a".into()).await.expect("queued");
        // The second waits for the first's turn to end, then runs the same greedy job.
        let b = tokio::spawn({
            let q = q.clone();
            async move { collect(q.submit(demo(), job(12), "b".into()).await.expect("queued")).await }
        });
        let (ta, oa) = collect(a).await;
        let (tb, ob) = b.await.expect("join");
        assert_eq!(ta, tb);
        let (oa, ob) = (oa.expect("done"), ob.expect("done"));
        assert_eq!(oa.completion_tokens, ob.completion_tokens);
        assert!(oa.completion_tokens <= 12 && !ta.is_empty());
    }

    #[tokio::test]
    async fn dropped_receiver_cancels() {
        let q = Queue::default();
        let mut rx = q
            .submit(demo(), job(200), "gone".into())
            .await
            .expect("queued");
        assert!(matches!(rx.recv().await, Some(Event::Text(_))));
        drop(rx);
        // The turn is free again soon: the next job runs to its end.
        let (_, o) = collect(
            q.submit(demo(), job(4), "next".into())
                .await
                .expect("queued"),
        )
        .await;
        assert!(o.is_some());
    }

    #[tokio::test]
    async fn a_full_line_refuses() {
        let q = Queue::with_limit(1);
        // One runs, one waits (the limit), the third is refused at once.
        let a = q.submit(demo(), job(100), "a".into()).await.expect("runs");
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { collect(q.submit(demo(), job(2), "b".into()).await.expect("waits")).await }
        });
        for _ in 0..200 {
            if q.waiting.load(std::sync::atomic::Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let refused = q.submit(demo(), job(2), "c".into()).await;
        assert!(matches!(
            refused,
            Err(crate::ApiError::Overloaded { waiting: 1 })
        ));
        drop(a);
        assert!(waiting.await.expect("join").1.is_some());
        // The line is free again.
        assert!(q.submit(demo(), job(1), "d".into()).await.is_ok());
    }
}
