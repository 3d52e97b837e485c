//! Prometheus metrics, `GET /metrics` in the text exposition format (version 0.0.4): requests
//! by route and status, tokens in and out with the time spent on them (so prefill and decode
//! rates), time to first token as a histogram, requests waiting and running, finish reasons,
//! and the process's resident memory. Counters are atomics; the few maps take a lock per
//! request, never per token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::generate::{Finish, Outcome};

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The routes requests are counted under (anything else is `other`).
const ROUTES: [&str; 9] = [
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/props",
];

/// Every counter of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    /// Of those, taken from the prompt cache (not prefilled).
    cached_tokens: AtomicU64,
    prompt_micros: AtomicU64,
    generated_tokens: AtomicU64,
    decode_micros: AtomicU64,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_micros: AtomicU64,
    waiting: AtomicU64,
    running: AtomicU64,
}

impl Metrics {
    /// A request to `path` answered with `status`.
    pub fn request(&self, path: &str, status: u16) {
        let route = ROUTES
            .iter()
            .find(|r| **r == path)
            .copied()
            .unwrap_or("other");
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, status)).or_default() += 1;
    }

    /// A generation ended.
    pub fn finished(&self, o: &Outcome) {
        self.prompt_tokens
            .fetch_add(o.prompt_tokens as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(o.cached_tokens as u64, Ordering::Relaxed);
        self.prompt_micros
            .fetch_add(micros(o.prefill), Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(o.completion_tokens as u64, Ordering::Relaxed);
        self.decode_micros
            .fetch_add(micros(o.decode), Ordering::Relaxed);
        let reason = match o.finish {
            Finish::Eos => "eos",
            Finish::StopString => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
            Finish::Timeout => "timeout",
        };
        let mut m = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// The first text of a request went out `t` after it was queued.
    pub fn first_token(&self, t: Duration) {
        let s = t.as_secs_f64();
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_micros.fetch_add(micros(t), Ordering::Relaxed);
    }

    /// A request starts waiting for the model (`+1`) or stops (`-1`, when it runs).
    pub fn waiting(&self, delta: i64) {
        add(&self.waiting, delta);
    }

    /// A generation starts (`+1`) or ends (`-1`).
    pub fn running(&self, delta: i64) {
        add(&self.running, delta);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        head(
            &mut out,
            "requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "llm_server_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let secs = |us: &AtomicU64| get(us) as f64 / 1e6;
        let rate = |n: &AtomicU64, us: &AtomicU64| get(n) as f64 / secs(us).max(1e-9);
        let prefilled = get(&self.prompt_tokens).saturating_sub(get(&self.cached_tokens));
        let single: [(&str, &str, &str, f64); 9] = [
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens of all requests.",
                get(&self.prompt_tokens) as f64,
            ),
            (
                "prompt_tokens_cached_total",
                "counter",
                "Prompt tokens the prompt cache held (not prefilled).",
                get(&self.cached_tokens) as f64,
            ),
            (
                "prompt_seconds_total",
                "counter",
                "Time spent on prompts (prefill).",
                secs(&self.prompt_micros),
            ),
            (
                "generated_tokens_total",
                "counter",
                "Tokens generated.",
                get(&self.generated_tokens) as f64,
            ),
            (
                "decode_seconds_total",
                "counter",
                "Time spent generating (decode).",
                secs(&self.decode_micros),
            ),
            (
                "prompt_tokens_per_second",
                "gauge",
                "Average prefill rate over all requests (tokens prefilled, not cached).",
                prefilled as f64 / secs(&self.prompt_micros).max(1e-9),
            ),
            (
                "generated_tokens_per_second",
                "gauge",
                "Average decode rate over all requests.",
                rate(&self.generated_tokens, &self.decode_micros),
            ),
            (
                "requests_waiting",
                "gauge",
                "Requests waiting for the model.",
                get(&self.waiting) as f64,
            ),
            (
                "requests_running",
                "gauge",
                "Generations running.",
                get(&self.running) as f64,
            ),
        ];
        for (name, kind, help, v) in single {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "llm_server_{name} {v}");
        }
        head(
            &mut out,
            "finished_total",
            "counter",
            "Generations by how they ended.",
        );
        for (reason, n) in self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "llm_server_finished_total{{reason=\"{reason}\"}} {n}");
        }
        let name = "time_to_first_token_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "From queueing to the first text sent.",
        );
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(out, "llm_server_{name}_bucket{{le=\"{le}\"}} {}", get(b));
        }
        let count = get(&self.ttft_count);
        let _ = writeln!(out, "llm_server_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "llm_server_{name}_sum {}", secs(&self.ttft_micros));
        let _ = writeln!(out, "llm_server_{name}_count {count}");
        if let Some(rss) = resident_bytes() {
            head(
                &mut out,
                "resident_memory_bytes",
                "gauge",
                "Resident memory of the process.",
            );
            let _ = writeln!(out, "llm_server_resident_memory_bytes {rss}");
        }
        out
    }
}

/// The prompt cache's counters in Prometheus' text format.
pub fn render_cache(c: crate::cache::CacheStats) -> String {
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "prompt_cache_hits_total",
            "counter",
            "Generations that resumed from a cached prefix.",
            c.hits,
        ),
        (
            "prompt_cache_misses_total",
            "counter",
            "Generations that prefilled their prompt from the start.",
            c.misses,
        ),
        (
            "prompt_cache_bytes",
            "gauge",
            "Bytes the prompt cache's checkpoints hold.",
            c.bytes,
        ),
    ] {
        head(&mut out, name, kind, help);
        let _ = writeln!(out, "llm_server_{name} {v}");
    }
    out
}

/// The slots and the batcher's steps in Prometheus' text format: `slots` and the
/// batcher's (steps, rows) ([`crate::batch::Batcher::stats`]).
pub fn render_batches(slots: usize, (steps, rows): (u64, u64)) -> String {
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "slots",
            "gauge",
            "Generations the server runs at once (-np).",
            slots as u64,
        ),
        (
            "batch_steps_total",
            "counter",
            "Model steps run for the slots (each batches every slot's next token).",
            steps,
        ),
        (
            "batch_rows_total",
            "counter",
            "Sequences in those steps, summed (rows / steps: the mean batch).",
            rows,
        ),
    ] {
        head(&mut out, name, kind, help);
        let _ = writeln!(out, "llm_server_{name} {v}");
    }
    out
}

/// A metric family's HELP and TYPE lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP llm_server_{name} {help}\n# TYPE llm_server_{name} {kind}"
    );
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn add(a: &AtomicU64, delta: i64) {
    if delta >= 0 {
        a.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        // Never below zero, whatever the order of updates.
        let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.request("/nope", 404);
        m.first_token(Duration::from_millis(30));
        m.finished(&Outcome {
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: 4,
            finish: Finish::Length,
            stop: None,
            prefill: Duration::from_millis(100),
            decode: Duration::from_millis(200),
        });
        m.waiting(1);
        m.waiting(-1);
        m.waiting(-1);
        let text = m.render();
        for want in [
            "llm_server_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2",
            "llm_server_requests_total{route=\"other\",status=\"404\"} 1",
            "llm_server_prompt_tokens_total 10",
            "llm_server_generated_tokens_total 4",
            "llm_server_prompt_tokens_per_second 100",
            "llm_server_generated_tokens_per_second 20",
            "llm_server_finished_total{reason=\"length\"} 1",
            "llm_server_time_to_first_token_seconds_bucket{le=\"0.025\"} 0",
            "llm_server_time_to_first_token_seconds_bucket{le=\"0.05\"} 1",
            "llm_server_time_to_first_token_seconds_count 1",
            "llm_server_requests_waiting 0",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }
}
