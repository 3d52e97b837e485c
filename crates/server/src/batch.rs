//! Continuous batching (issue 12 req. 5): the generations running in the server's slots each
//! keep their own token loop (sampling, grammar, stop strings, streaming) on their own
//! thread, but their forward calls meet here and run as one step of the model
//! ([`engine::Model::forward_batch`]): every slot's next token and at most one prompt chunk
//! (`-ub` tokens) together, so a long prompt joins the running batch a chunk at a time
//! instead of stalling the streams for its whole prefill.
//!
//! No scheduler thread: the first caller that finds the batch ready runs it for everyone
//! (the others wait for their results). A batch is ready when every slot in its token loop
//! has asked, or when the oldest call has waited [`WINDOW`] (a slot busy elsewhere — writing
//! to a slow client, checkpointing — delays the others at most that long). A slot's
//! sequence state moves in with its call and back with the logits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engine::{Exec, Logits, Model, Row, State};

/// How long a call waits for the other slots' calls before its batch runs without them
/// (`LLM_SERVER_BATCH_WINDOW_US` overrides it, for measuring).
pub const WINDOW: Duration = Duration::from_millis(2);

fn window() -> Duration {
    static W: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *W.get_or_init(|| {
        std::env::var("LLM_SERVER_BATCH_WINDOW_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(WINDOW, Duration::from_micros)
    })
}

/// Where the slots' forward calls meet.
#[derive(Debug, Default)]
pub struct Batcher {
    inner: Mutex<Inner>,
    cv: Condvar,
    batches: AtomicU64,
    rows: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    pending: VecDeque<Call>,
    done: Vec<(u64, State, engine::Result<Vec<f32>>)>,
    /// A batch is running (its caller released the lock for it).
    running: bool,
    /// Slots in their token loops: a batch waits for a call from each.
    active: usize,
}

#[derive(Debug)]
struct Call {
    id: u64,
    tokens: Vec<u32>,
    state: State,
    which: Logits,
    since: Instant,
}

impl Call {
    /// Whether it can share a step: the last token's logits (not a prompt's every row,
    /// not embeddings' hidden states).
    fn batchable(&self) -> bool {
        self.which == Logits::Last
    }
}

/// A slot in its token loop, counted by the batcher until dropped.
#[derive(Debug)]
pub struct Active<'a>(&'a Batcher);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.active = g.active.saturating_sub(1);
        drop(g);
        // A batch waiting for this slot's call need not wait any longer.
        self.0.cv.notify_all();
    }
}

impl Batcher {
    /// A batcher with no slot active.
    pub fn new() -> Batcher {
        Batcher::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in `Inner` is left half-changed by a panic (runs happen outside the lock).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a slot as generating until the guard drops: batches wait for its calls.
    pub fn enter(&self) -> Active<'_> {
        self.lock().active += 1;
        Active(self)
    }

    /// Steps run and the rows they held (`/metrics`: the mean batch).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
        )
    }

    /// `model.forward(tokens, state, which)` as part of the next batch.
    pub fn forward(
        &self,
        model: &dyn Model,
        exec: Exec,
        tokens: &[u32],
        state: &mut State,
        which: Logits,
    ) -> engine::Result<Vec<f32>> {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.pending.push_back(Call {
            id,
            tokens: tokens.to_vec(),
            state: state.take(),
            which,
            since: Instant::now(),
        });
        self.cv.notify_all();
        loop {
            if let Some(i) = g.done.iter().position(|d| d.0 == id) {
                let (_, st, result) = g.done.swap_remove(i);
                *state = st;
                return result;
            }
            if g.running || g.pending.is_empty() {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if let Some(left) = g.wait_left() {
                g = self
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let mut batch = g.pick();
            g.running = true;
            drop(g);
            let results = run(model, exec, &mut batch);
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
            g = self.lock();
            g.running = false;
            for (c, r) in batch.into_iter().zip(results) {
                g.done.push((c.id, c.state, r));
            }
            self.cv.notify_all();
        }
    }
}

impl Inner {
    /// `None` when a batch should run now; else how long to wait for more calls.
    fn wait_left(&self) -> Option<Duration> {
        let oldest = self.pending.front()?;
        if self.pending.len() >= self.active.max(1) || !oldest.batchable() {
            return None;
        }
        window().checked_sub(oldest.since.elapsed())
    }

    /// The next batch: the oldest call alone if it cannot share a step, else every pending
    /// one-token call and the oldest prompt chunk (the rest wait for the next step).
    fn pick(&mut self) -> Vec<Call> {
        if self.pending.front().is_some_and(|c| !c.batchable()) {
            return self.pending.pop_front().into_iter().collect();
        }
        let (mut batch, mut rest, mut chunk) = (Vec::new(), VecDeque::new(), false);
        for c in self.pending.drain(..) {
            let take =
                c.batchable() && (c.tokens.len() == 1 || !std::mem::replace(&mut chunk, true));
            match take {
                true => batch.push(c),
                false => rest.push_back(c),
            }
        }
        self.pending = rest;
        batch
    }
}

/// One step over `batch`; each call's result. A failure fails every call of the step (the
/// first gets the engine's error, the others its text); a panic too, never the server.
fn run(model: &dyn Model, exec: Exec, batch: &mut [Call]) -> Vec<engine::Result<Vec<f32>>> {
    let n = batch.len();
    let mut rows: Vec<Row<'_>> = batch
        .iter_mut()
        .map(|c| Row {
            tokens: &c.tokens,
            state: &mut c.state,
            which: c.which,
        })
        .collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.forward_batch(&mut rows, exec)
    }));
    let failed = |message: String| engine::Error::Backend {
        backend: model.backend(),
        message,
    };
    match result {
        Ok(Ok(logits)) => logits.into_iter().map(Ok).collect(),
        Ok(Err(e)) => {
            let text = e.to_string();
            std::iter::once(Err(e))
                .chain((1..n).map(|_| Err(failed(text.clone()))))
                .collect()
        }
        Err(_) => (0..n)
            .map(|_| Err(failed("the forward pass panicked".into())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::demo;

    /// Four slots decoding at once meet in batches of more than one row, and each gets the
    /// tokens it gets alone (greedy, the demo model).
    #[test]
    fn slots_meet_in_batches_and_get_their_own_tokens() {
        let m = demo();
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|i| (1..6 + i).map(|t| t * 7 % 200 + 3).collect())
            .collect();
        let greedy = |logits: &[f32]| {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0) as u32
        };
        let decode = |b: Option<&Batcher>, prompt: &[u32]| -> Vec<u32> {
            let _active = b.map(Batcher::enter);
            let mut st = m.model.new_state(64).unwrap();
            let fwd = |t: &[u32], st: &mut State| match b {
                Some(b) => b.forward(&*m.model, m.exec, t, st, Logits::Last).unwrap(),
                None => m.model.forward(t, st, Logits::Last, m.exec).unwrap(),
            };
            let mut tok = greedy(&fwd(prompt, &mut st));
            let mut out = vec![tok];
            for _ in 0..12 {
                tok = greedy(&fwd(&[tok], &mut st));
                out.push(tok);
            }
            out
        };
        let alone: Vec<Vec<u32>> = prompts.iter().map(|p| decode(None, p)).collect();
        let b = Batcher::new();
        let together: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = prompts
                .iter()
                .map(|p| s.spawn(|| decode(Some(&b), p)))
                .collect();
            hs.into_iter().map(|h| h.join().expect("slot")).collect()
        });
        assert_eq!(alone, together);
        let (batches, rows) = b.stats();
        assert_eq!(rows, 4 * 13);
        assert!(
            batches < rows,
            "{batches} steps for {rows} rows: never batched"
        );
    }
}
