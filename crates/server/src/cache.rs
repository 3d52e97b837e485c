//! The prompt cache (issue 12 req. 6): a request whose prompt begins like the previous
//! sequence resumes from it instead of prefilling everything again — what a chat client
//! re-sending a growing conversation, or a classifier sending one long instruction before
//! each item, gets from llama-server's slot cache.
//!
//! A sequence is kept for each of the server's slots (`-np`), with the tokens it has
//! processed; a request takes the one it can resume furthest in, or a new one (the least
//! recently used kept sequence going first when all are kept). A model with only attention layers can go back to any earlier position: its
//! KV rows before that position are untouched by what came after. DeltaNet's recurrent state
//! cannot be cut back, so for hybrid models the sequence is checkpointed
//! ([`engine::backend::Checkpoint`]: a host copy of every recurrent layer) at the end of each
//! prompt — with that position's logits, so the same prompt again needs no forward at all —
//! and at the end of each generation, and resumes from the longest checkpoint that is a prefix
//! of the new prompt. Checkpoints are bounded by `--cache-ram` (MiB; least recently used go
//! first); 0 turns the cache off.

use engine::backend::Checkpoint;
use engine::{CacheConfig, Model, State};

/// `--cache-ram`'s default, MiB (llama-server's default too).
pub const DEFAULT_CACHE_MIB: usize = 8192;

/// The cache (kept in the served model, taken and given back around each generation).
#[derive(Debug, Default)]
pub struct PromptCache {
    /// Bytes the checkpoints may hold (0: off).
    limit: usize,
    /// Sequences kept at most (the server's slots).
    keep: usize,
    slots: Vec<Slot>,
    clock: u64,
    stats: CacheStats,
}

/// What the cache did, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    /// Generations that resumed from a cached prefix.
    pub hits: u64,
    /// Generations that prefilled from the start.
    pub misses: u64,
    /// Prompt tokens not prefilled thanks to the cache.
    pub tokens_reused: u64,
    /// Bytes the checkpoints hold now.
    pub bytes: u64,
}

/// The kept sequence.
#[derive(Debug)]
struct Slot {
    state: State,
    n_ctx: usize,
    cache: CacheConfig,
    /// The tokens at positions `0..state.n_past`.
    tokens: Vec<u32>,
    points: Vec<Point>,
    /// When it was last given back or taken (the clock).
    used: u64,
}

/// A checkpoint with the logits of its last position when it ends a prompt.
#[derive(Debug)]
struct Point {
    cp: Checkpoint,
    /// The tokens before it.
    tokens: Vec<u32>,
    logits: Option<Vec<f32>>,
    used: u64,
}

impl Point {
    /// Whether it lies on the history `tokens` (its tokens a prefix of them): only then do
    /// the KV rows before it still hold what it saw.
    fn on(&self, tokens: &[u32]) -> bool {
        tokens.starts_with(&self.tokens)
    }

    fn bytes(&self) -> usize {
        self.cp.bytes() + 4 * self.logits.as_ref().map_or(0, Vec::len) + 4 * self.tokens.len()
    }
}

/// A state handed to one generation: where it stands, and what it remembers.
#[derive(Debug)]
pub struct Lease {
    /// The sequence, at position `reused`.
    pub state: State,
    /// Prompt tokens already in the state.
    pub reused: usize,
    /// The logits after the whole prompt, when the prompt was cached whole.
    pub logits: Option<Vec<f32>>,
    /// The tokens at positions `0..state.n_past`, as the generation feeds them.
    pub tokens: Vec<u32>,
    n_ctx: usize,
    cache: CacheConfig,
    points: Vec<Point>,
}

impl Lease {
    /// A new sequence, outside any cache.
    pub fn new(model: &dyn Model, n_ctx: usize, cache: CacheConfig) -> engine::Result<Lease> {
        Ok(Lease {
            state: model.new_state_with(n_ctx, cache)?,
            reused: 0,
            logits: None,
            tokens: Vec::new(),
            n_ctx,
            cache,
            points: Vec::new(),
        })
    }

    /// Record that `toks` went through the model.
    pub fn fed(&mut self, toks: &[u32]) {
        self.tokens.extend_from_slice(toks);
    }
}

impl PromptCache {
    /// A cache whose checkpoints may hold `mib` MiB (0: off).
    pub fn new(mib: usize) -> PromptCache {
        PromptCache {
            limit: mib << 20,
            keep: 1,
            ..PromptCache::default()
        }
    }

    /// The same cache keeping up to `n` sequences (one a slot).
    pub fn with_slots(mut self, n: usize) -> PromptCache {
        self.keep = n.max(1);
        self
    }

    /// Whether it is on.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// A state for `prompt` with `n_ctx` positions and `cache` types: the kept sequence that
    /// goes furthest put back to the longest cached prefix of `prompt` — the whole prompt when a checkpoint has
    /// the logits of its end, else short of its last token, which must run for logits — or a
    /// new one.
    pub fn take(
        &mut self,
        model: &dyn Model,
        prompt: &[u32],
        (n_ctx, cache): (usize, CacheConfig),
    ) -> engine::Result<Lease> {
        self.clock += 1;
        // The kept sequence that resumes furthest in (as far with the logits is better: no
        // forward at all).
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.n_ctx == n_ctx && s.cache == cache)
            .filter_map(|(i, s)| s.resume(prompt).map(|(at, p, l)| (i, at, p, l)))
            .max_by_key(|&(i, at, _, l)| (at, l, std::cmp::Reverse(i)));
        let Some((i, at, p, exact)) = best else {
            return self.miss(model, n_ctx, cache);
        };
        let mut slot = self.slots.swap_remove(i);
        let point = &mut slot.points[p];
        point.used = self.clock;
        let logits = point.logits.clone().filter(|_| exact);
        let cp = match point.cp.recurrent() {
            true => point.cp.clone(),
            false => point.cp.at(at).expect("attention only"),
        };
        if model.rewind(&mut slot.state, &cp).is_err() {
            drop(slot);
            return self.miss(model, n_ctx, cache);
        }
        slot.tokens.truncate(at);
        self.stats.hits += 1;
        self.stats.tokens_reused += at as u64;
        Ok(Lease {
            state: slot.state,
            reused: at,
            logits,
            tokens: slot.tokens,
            n_ctx,
            cache,
            points: slot.points,
        })
    }

    /// A new sequence; the least recently used kept ones go first while as many as the
    /// slots are kept, and those of another context size or cache type (device memory
    /// before the new one is made).
    fn miss(
        &mut self,
        model: &dyn Model,
        n_ctx: usize,
        cache: CacheConfig,
    ) -> engine::Result<Lease> {
        self.stats.misses += u64::from(self.enabled());
        self.slots.retain(|s| s.n_ctx == n_ctx && s.cache == cache);
        self.keep_at_most(self.keep.saturating_sub(1));
        Lease::new(model, n_ctx, cache)
    }

    /// Drop the least recently used kept sequences until at most `n` are left.
    fn keep_at_most(&mut self, n: usize) {
        while self.slots.len() > n {
            let lru = (0..self.slots.len()).min_by_key(|&i| self.slots[i].used);
            lru.map(|i| self.slots.swap_remove(i));
        }
        self.count_bytes();
    }

    /// `stats.bytes` of what the kept sequences hold.
    fn count_bytes(&mut self) {
        self.stats.bytes = self
            .slots
            .iter()
            .flat_map(|s| &s.points)
            .map(Point::bytes)
            .sum::<usize>() as u64;
    }

    /// Checkpoint `lease` where it stands (with `logits` when that is the end of a prompt),
    /// dropping the least recently used checkpoints past the limit.
    pub fn mark(&mut self, model: &dyn Model, lease: &mut Lease, logits: Option<&[f32]>) {
        if !self.enabled() {
            return;
        }
        let n = lease.state.n_past;
        if lease
            .points
            .iter()
            .any(|p| p.cp.n_past() == n && p.tokens == lease.tokens)
        {
            return;
        }
        let Ok(cp) = model.checkpoint(&lease.state) else {
            return; // a device that cannot copy its state back: no checkpoint, no harm
        };
        self.clock += 1;
        let point = Point {
            cp,
            tokens: lease.tokens.clone(),
            logits: logits.map(<[f32]>::to_vec),
            used: self.clock,
        };
        if point.bytes() > self.limit {
            return;
        }
        // Points of the history a rewind left are stale: the rows after the shared prefix were
        // overwritten.
        let tokens = &lease.tokens;
        lease.points.retain(|p| p.on(tokens));
        lease.points.push(point);
        while lease.points.iter().map(Point::bytes).sum::<usize>() > self.limit {
            let oldest = (0..lease.points.len())
                .min_by_key(|&i| lease.points[i].used)
                .expect("over the limit: not empty");
            lease.points.remove(oldest);
        }
    }

    /// Keep `lease`'s sequence for the next request.
    pub fn give_back(&mut self, mut lease: Lease) {
        if !self.enabled() {
            return;
        }
        let tokens = &lease.tokens;
        lease.points.retain(|p| p.on(tokens));
        self.clock += 1;
        self.slots.push(Slot {
            state: lease.state,
            n_ctx: lease.n_ctx,
            cache: lease.cache,
            tokens: lease.tokens,
            points: lease.points,
            used: self.clock,
        });
        // Past the slots (several generations ended while others ran), the least recently
        // used sequence goes; past the byte limit, the least recently used checkpoints.
        self.keep_at_most(self.keep);
        while self.stats.bytes > self.limit as u64 {
            let oldest = self
                .slots
                .iter_mut()
                .flat_map(|s| s.points.iter_mut().map(|p| p.used))
                .min();
            let Some(oldest) = oldest else { break };
            for s in &mut self.slots {
                s.points.retain(|p| p.used != oldest);
            }
            self.count_bytes();
        }
    }
}

/// The cache behind its lock, whatever a panicked holder left (it keeps no invariant a panic
/// could break: at worst a sequence is missing, and the next request starts afresh).
pub(crate) fn lock(c: &std::sync::Mutex<PromptCache>) -> std::sync::MutexGuard<'_, PromptCache> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    /// Where this sequence can resume `prompt`: the position, the checkpoint to go back to,
    /// whether the logits there are known. The longest usable point is a prefix of the
    /// prompt and of the sequence as it stands (a later, different continuation overwrote
    /// the KV rows past their shared prefix), before the prompt's last token — or at its end
    /// with the logits there. Without logits, at least the prompt's last token must run.
    fn resume(&self, prompt: &[u32]) -> Option<(usize, usize, bool)> {
        let shared = common_prefix(&self.tokens, prompt);
        let before_last = shared.min(prompt.len().saturating_sub(1));
        let mut best: Option<(usize, usize, bool)> = None;
        for (i, p) in self.points.iter().enumerate() {
            let n = p.cp.n_past();
            let exact = n == prompt.len() && shared >= n && p.logits.is_some();
            let at = if exact {
                n
            } else if !p.cp.recurrent() {
                // Attention only: anywhere in the shared prefix.
                before_last
            } else if n <= before_last {
                n
            } else {
                continue;
            };
            let better = match best {
                None => at > 0,
                // Further on, or as far with the logits (no forward at all).
                Some((b, _, l)) => at > b || (at == b && !l && exact),
            };
            if better {
                best = Some((at, i, exact));
            }
        }
        best
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Box<dyn Model> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/demo-moe-f16.gguf"
        );
        let file = std::sync::Arc::new(gguf::GgufFile::open(path).expect("demo model"));
        engine::load(file).expect("demo model loads")
    }

    /// Prefill `toks` on the lease and checkpoint at the end.
    fn feed(c: &mut PromptCache, m: &dyn Model, l: &mut Lease, toks: &[u32]) -> Vec<f32> {
        let logits = m
            .forward(
                toks,
                &mut l.state,
                engine::Logits::Last,
                engine::Exec { threads: 1 },
            )
            .unwrap();
        l.fed(toks);
        c.mark(m, l, Some(&logits));
        logits
    }

    #[test]
    fn resumes_from_the_longest_checkpoint_that_is_a_prefix() {
        let m = demo();
        let cfg = (64, CacheConfig::default());
        let mut c = PromptCache::new(64);
        let mut l = c.take(m.as_ref(), &[1, 2, 3, 4], cfg).unwrap();
        assert_eq!(l.reused, 0);
        feed(&mut c, m.as_ref(), &mut l, &[1, 2]);
        let end = feed(&mut c, m.as_ref(), &mut l, &[3, 4]);
        c.give_back(l);
        // The same prompt: whole, with its logits.
        let l = c.take(m.as_ref(), &[1, 2, 3, 4], cfg).unwrap();
        assert_eq!((l.reused, l.logits.as_deref()), (4, Some(&end[..])));
        c.give_back(l);
        // A prompt that shares [1, 2, 3] only: DeltaNet state exists at 2 and 4, so 2.
        let l = c.take(m.as_ref(), &[1, 2, 3, 9], cfg).unwrap();
        assert_eq!(
            (l.reused, l.state.n_past, l.tokens.as_slice()),
            (2, 2, &[1, 2][..])
        );
        c.give_back(l);
        // The checkpoint at 4 was of a history the rewind left: dropped.
        let l = c.take(m.as_ref(), &[1, 2, 3, 4], cfg).unwrap();
        assert_eq!(l.reused, 2);
        c.give_back(l);
        // Nothing shared, or another context size: a new sequence.
        assert_eq!(c.take(m.as_ref(), &[7, 8], cfg).unwrap().reused, 0);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.tokens_reused), (3, 2, 8));
    }

    /// With several slots, a sequence is kept for each: two conversations taking turns
    /// both resume; a third evicts the least recently used.
    #[test]
    fn a_sequence_is_kept_for_each_slot() {
        let m = demo();
        let cfg = (64, CacheConfig::default());
        let mut c = PromptCache::new(64).with_slots(2);
        let (a, b, z) = ([1, 2, 3], [5, 6, 7], [9, 9, 9]);
        for p in [&a, &b] {
            let mut l = c.take(m.as_ref(), p, cfg).unwrap();
            feed(&mut c, m.as_ref(), &mut l, p);
            c.give_back(l);
        }
        for p in [&a, &b] {
            let l = c.take(m.as_ref(), p, cfg).unwrap();
            assert_eq!((l.reused, l.logits.is_some()), (3, true), "{p:?}");
            c.give_back(l);
        }
        let mut l = c.take(m.as_ref(), &z, cfg).unwrap();
        assert_eq!(l.reused, 0);
        feed(&mut c, m.as_ref(), &mut l, &z);
        c.give_back(l);
        // a was used least recently: gone; b and z stay.
        assert_eq!(c.take(m.as_ref(), &b, cfg).unwrap().reused, 3);
        assert_eq!(c.take(m.as_ref(), &z, cfg).unwrap().reused, 3);
        assert_eq!(c.take(m.as_ref(), &a, cfg).unwrap().reused, 0);
    }

    #[test]
    fn checkpoints_stay_within_the_limit_and_zero_turns_it_off() {
        let m = demo();
        let cfg = (64, CacheConfig::default());
        let mut c = PromptCache::new(1);
        let mut l = c.take(m.as_ref(), &[1], cfg).unwrap();
        let one = {
            feed(&mut c, m.as_ref(), &mut l, &[1]);
            l.points.iter().map(Point::bytes).sum::<usize>()
        };
        assert!(one > 0 && one < 1 << 20);
        for t in 2..40 {
            feed(&mut c, m.as_ref(), &mut l, &[t]);
        }
        c.give_back(l);
        let s = c.stats();
        assert!(s.bytes > 0 && s.bytes <= 1 << 20, "{s:?}");
        let mut off = PromptCache::new(0);
        let mut l = off.take(m.as_ref(), &[1, 2], cfg).unwrap();
        feed(&mut off, m.as_ref(), &mut l, &[1, 2]);
        assert!(l.points.is_empty());
        off.give_back(l);
        assert_eq!(off.take(m.as_ref(), &[1, 2], cfg).unwrap().reused, 0);
    }
}
