//! The token loop shared by `llm-server run` and the HTTP server: prefill the prompt, then
//! sample, release text as whole UTF-8 characters and watch the stop strings, one token at a
//! time. Text goes to a callback as soon as it is final, so the terminal and SSE stream alike.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::cache::lock;
use engine::{
    Exec, Logits, Model, Sampler, SamplerError, SamplerParams, StopMatcher, StopStep, Tokenizer,
};

/// What generation needs of a loaded model.
#[derive(Clone, Copy)]
pub struct Generator<'a> {
    /// The network.
    pub model: &'a dyn Model,
    /// Its tokenizer (token bytes, end-of-generation ids).
    pub tokenizer: &'a Tokenizer,
    /// Threads for the forward passes.
    pub exec: Exec,
    /// Prompt tokens a forward call takes (llama.cpp's `-ub`): a long prompt goes through in
    /// pieces, so the activations a call needs stay what the memory plan counted.
    pub ubatch: usize,
    /// The prompt cache to resume from and keep the sequence in (`None`: every prompt from
    /// the start).
    pub cache: Option<&'a std::sync::Mutex<crate::cache::PromptCache>>,
    /// Where the server's slots batch their forward calls (`None`: straight to the model).
    pub batcher: Option<&'a crate::batch::Batcher>,
}

impl Generator<'_> {
    /// The model's forward, through the batcher when there is one.
    fn forward(
        &self,
        tokens: &[u32],
        state: &mut engine::State,
        which: Logits,
    ) -> engine::Result<Vec<f32>> {
        match self.batcher {
            Some(b) => b.forward(self.model, self.exec, tokens, state, which),
            None => self.model.forward(tokens, state, which, self.exec),
        }
    }
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("arch", &self.model.arch())
            .field("exec", &self.exec)
            .finish_non_exhaustive()
    }
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct Params {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Context size: prompt and generated tokens must fit.
    pub n_ctx: usize,
    /// Generation ends at the first of these texts, which is not part of the output.
    pub stop: Vec<String>,
    /// The sampler's settings.
    pub sampling: SamplerParams,
    /// KV cache types (`-ctk/-ctv`).
    pub cache: engine::CacheConfig,
    /// `Some(n)`: report each generated token's log-probability and its `n` most likely
    /// alternatives (from the model's distribution, before sampling's changes).
    pub logprobs: Option<usize>,
    /// With `logprobs`: report the prompt's tokens too (legacy `echo`; the first has none),
    /// which needs the prompt's logits at every position.
    pub prompt_logprobs: bool,
    /// The prompt opened the model's reasoning: after this many generated tokens without its
    /// closing tokens, they are put in (Anthropic's `thinking.budget_tokens`).
    pub think_budget: Option<ThinkBudget>,
    /// Positions in the prompt, ascending, where the prefill stops for the prompt cache to
    /// checkpoint (chat routes: where the system messages end — a prefix many requests share
    /// — and where the conversation before the generation prompt ends, since the next turn's
    /// prompt continues from there, not from the generation prompt).
    pub marks: Vec<usize>,
    /// Structured output: tokens the grammar does not allow are never sampled.
    pub constraint: Option<crate::grammar::Constraint>,
    /// Generation stops at this instant (`serve --timeout`), like at `max_tokens`.
    pub deadline: Option<Instant>,
}

/// A cap on the tokens of an open reasoning block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinkBudget {
    /// Reasoning tokens allowed.
    pub tokens: usize,
    /// The tokens that close the block (`</think>` and the line break after it).
    pub close: Vec<u32>,
}

/// A generated token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its natural log-probability.
    pub logprob: f32,
    /// The `n` most likely tokens there, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `id`'s log-probability under softmax(`logits`), and the `n` largest.
    pub fn of(logits: &[f32], id: u32, n: usize) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = (logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>())
        .ln() as f32;
        let lp = |l: f32| l - max - log_sum;
        // The n largest by a single pass (n is at most 20).
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
        for (i, &l) in logits.iter().enumerate() {
            if top.len() == n && top.last().is_none_or(|&(_, m)| l <= m) {
                continue;
            }
            let at = top.partition_point(|&(_, m)| m >= l);
            top.insert(at, (i as u32, l));
            top.truncate(n);
        }
        TokenLogprob {
            id,
            logprob: lp(logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)),
            top: top.into_iter().map(|(i, l)| (i, lp(l))).collect(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string matched.
    StopString,
    /// `max_tokens` were generated.
    Length,
    /// The callback asked to stop (the HTTP client went away).
    Cancelled,
    /// The request's time ran out (`serve --timeout`); reported as `length`.
    Timeout,
}

/// What a finished generation did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, the ones the prompt cache already held (not prefilled).
    pub cached_tokens: usize,
    /// Tokens sampled (the end-of-generation token not counted).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// The stop string that ended it (with [`Finish::StopString`]).
    pub stop: Option<String>,
    /// Time of the prompt's forward pass.
    pub prefill: Duration,
    /// Time from the first sample to the end.
    pub decode: Duration,
}

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Nothing to condition on.
    #[error("the prompt tokenizes to nothing")]
    EmptyPrompt,
    /// Prompt plus generated tokens do not fit the context.
    #[error("prompt ({prompt} tokens) + {max_tokens} to generate exceed the context of {n_ctx}")]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens asked for.
        max_tokens: usize,
        /// The context size.
        n_ctx: usize,
    },
    /// A sampling parameter out of range.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The forward pass failed.
    #[error("forward pass: {0}")]
    Engine(#[from] engine::Error),
    /// The grammar engine failed (structured output).
    #[error("structured output: {0}")]
    Grammar(String),
}

/// Token ids of a prompt. A prompt (usually a rendered chat template) that already starts with
/// the BOS text must not get a second BOS from the tokenizer (llama.cpp drops the duplicate the
/// same way). `parse_special` turns control-token texts such as `<|im_start|>` into their ids.
pub fn prompt_tokens(tokenizer: &Tokenizer, prompt: &str, parse_special: bool) -> Vec<u32> {
    let bos_in_text = tokenizer
        .bos()
        .and_then(|b| tokenizer.token_text(b))
        .is_some_and(|t| prompt.starts_with(t));
    tokenizer.encode(prompt, !bos_in_text, parse_special)
}

/// The prompt through the model in pieces of `g.ubatch` tokens: every row's logits
/// (`Logits::All`) or the last one's.
fn prefill(
    g: &Generator,
    prompt: &[u32],
    state: &mut engine::State,
    which: Logits,
) -> Result<Vec<f32>, GenerateError> {
    let mut out = Vec::new();
    for piece in prompt.chunks(g.ubatch.max(1)) {
        let l = g.forward(piece, state, which)?;
        match which {
            Logits::All => out.extend_from_slice(&l),
            _ => out = l,
        }
    }
    Ok(out)
}

/// Run `prompt` and generate up to `params.max_tokens` tokens, handing final text to `on_text`
/// (possibly empty, once per token, so a caller can cancel between tokens by returning
/// `Break`). Text held back for a possible stop string or a split character is handed over at
/// the end unless generation was cancelled.
pub fn generate(
    g: Generator,
    prompt: &[u32],
    params: &Params,
    on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Outcome, GenerateError> {
    generate_with_logprobs(g, prompt, params, on_text, |_| {})
}

/// [`generate`], handing each generated token's [`TokenLogprob`] to `on_token` (before its
/// text) when `params.logprobs` asks for them.
pub fn generate_with_logprobs(
    g: Generator,
    prompt: &[u32],
    params: &Params,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    mut on_token: impl FnMut(TokenLogprob),
) -> Result<Outcome, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() + params.max_tokens > params.n_ctx {
        return Err(GenerateError::ContextExceeded {
            prompt: prompt.len(),
            max_tokens: params.max_tokens,
            n_ctx: params.n_ctx,
        });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    prompt.iter().for_each(|&t| sampler.accept(t));
    // Echoing the prompt's log-probabilities needs every prompt position's logits: no reuse.
    let whole = !(params.logprobs.is_some() && params.prompt_logprobs);
    let cache = g.cache.filter(|_| whole);
    let mut lease = match cache {
        Some(c) => lock(c).take(g.model, prompt, (params.n_ctx, params.cache))?,
        None => crate::cache::Lease::new(g.model, params.n_ctx, params.cache)?,
    };
    let reused = lease.reused;
    // From here to the end this slot's forward calls come quickly: batches wait for them.
    let _active = g.batcher.map(crate::batch::Batcher::enter);
    let t0 = Instant::now();
    let mut logits = match (
        params.logprobs.filter(|_| params.prompt_logprobs),
        lease.logits.take(),
    ) {
        (Some(n), _) => {
            let all = prefill(&g, prompt, &mut lease.state, Logits::All)?;
            let v = all.len() / prompt.len();
            on_token(TokenLogprob {
                id: prompt[0],
                logprob: f32::NAN, // nothing before the first token
                top: Vec::new(),
            });
            for (i, &t) in prompt.iter().enumerate().skip(1) {
                on_token(TokenLogprob::of(&all[(i - 1) * v..i * v], t, n));
            }
            all[(prompt.len() - 1) * v..].to_vec()
        }
        (None, Some(cached)) => cached,
        (None, None) => {
            // Split at the marks whether or not a cache keeps them: the same pieces, the same
            // numbers.
            let mut at = reused;
            for &t in params
                .marks
                .iter()
                .filter(|&&t| t > reused && t < prompt.len())
            {
                prefill(&g, &prompt[at..t], &mut lease.state, Logits::Last)?;
                lease.fed(&prompt[at..t]);
                if let Some(c) = cache {
                    lock(c).mark(g.model, &mut lease, None);
                }
                at = t;
            }
            prefill(&g, &prompt[at..], &mut lease.state, Logits::Last)?
        }
    };
    lease.fed(&prompt[lease.tokens.len().min(prompt.len())..]);
    if let Some(c) = cache {
        lock(c).mark(g.model, &mut lease, Some(&logits));
    }
    let prefill = t0.elapsed();
    let (mut stops, mut pending) = (StopMatcher::new(&params.stop), Vec::new());
    let t1 = Instant::now();
    let (mut generated, mut finish) = (0, Finish::Length);
    // The reasoning budget: tokens still open, and the closing tokens once it is spent.
    let mut thinking = params.think_budget.as_ref().map(|b| (b.tokens, Vec::new()));
    let mut forced = std::collections::VecDeque::new();
    let mut constraint = params.constraint.clone();
    let mut masked = Vec::new();
    while generated < params.max_tokens {
        if params.deadline.is_some_and(|d| Instant::now() >= d) {
            finish = Finish::Timeout;
            break;
        }
        let tok = match (forced.pop_front(), &mut constraint) {
            (Some(t), _) => t,
            (None, None) => sampler.sample(&logits),
            (None, Some(c)) => {
                masked.clone_from(&logits);
                c.mask(&mut masked).map_err(GenerateError::Grammar)?;
                sampler.sample(&masked)
            }
        };
        if g.tokenizer.is_eog(tok) {
            finish = Finish::Eos;
            break;
        }
        if let (Some((left, recent)), Some(b)) = (&mut thinking, &params.think_budget) {
            recent.push(tok);
            if recent.len() > 2 * b.close.len() + 8 {
                recent.drain(..recent.len() - b.close.len());
            }
            if recent.ends_with(&b.close) {
                thinking = None; // closed (by the model or by us)
            } else if *left <= 1 && forced.is_empty() {
                *left = 0;
                forced.extend(b.close.iter().copied());
            } else {
                *left = left.saturating_sub(1);
            }
        }
        if let Some(c) = &mut constraint {
            c.accept(tok).map_err(GenerateError::Grammar)?;
        }
        if let Some(n) = params.logprobs {
            on_token(TokenLogprob::of(&logits, tok, n));
        }
        sampler.accept(tok);
        generated += 1;
        pending.extend_from_slice(g.tokenizer.token_bytes(tok));
        let text = take_utf8_prefix(&mut pending);
        match stops.push(&text) {
            StopStep::Continue(t) => {
                if on_text(&t).is_break() {
                    finish = Finish::Cancelled;
                    break;
                }
            }
            StopStep::Stop(t) => {
                // Ending anyway: whether the caller still listens does not matter.
                let _ = on_text(&t);
                pending.clear();
                finish = Finish::StopString;
                break;
            }
        }
        // The last token's logits would never be sampled.
        if generated < params.max_tokens {
            logits = g.forward(&[tok], &mut lease.state, Logits::Last)?;
            lease.fed(&[tok]);
        }
    }
    if let Some(c) = cache {
        let mut c = lock(c);
        c.mark(g.model, &mut lease, None);
        c.give_back(lease);
    }
    if finish != Finish::Cancelled {
        let mut rest = stops.finish();
        rest.push_str(&String::from_utf8_lossy(&pending));
        if !rest.is_empty() {
            let _ = on_text(&rest);
        }
    }
    Ok(Outcome {
        prompt_tokens: prompt.len(),
        cached_tokens: reused,
        completion_tokens: generated,
        finish,
        stop: stops.matched().map(str::to_string),
        prefill,
        decode: t1.elapsed(),
    })
}

/// Take the longest complete UTF-8 prefix of `pending`, keeping a split character's bytes
/// for the next token; bytes that can never be UTF-8 come out as U+FFFD.
fn take_utf8_prefix(pending: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        // An error with no length is an incomplete sequence at the end: wait for more bytes.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => pending.len(),
    };
    let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
    pending.drain(..valid);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::demo;

    /// Greedy text and outcome on the demo model; the callback breaks after `cancel_at` calls.
    fn greedy(max_tokens: usize, stop: &[&str], cancel_at: usize) -> (String, Outcome) {
        let m = demo();
        let prompt = prompt_tokens(&m.tokenizer, "Once upon a time", true);
        let params = Params {
            max_tokens,
            n_ctx: m.n_ctx,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            sampling: SamplerParams::greedy(),
            cache: Default::default(),
            logprobs: None,
            prompt_logprobs: false,
            think_budget: None,
            marks: Vec::new(),
            constraint: None,
            deadline: None,
        };
        let (mut text, mut calls) = (String::new(), 0);
        let o = generate(m.generator(), &prompt, &params, |t| {
            text.push_str(t);
            calls += 1;
            if calls >= cancel_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        (text, o.expect("generate"))
    }

    #[test]
    fn length_stop_string_and_cancel() {
        let (full, o) = greedy(24, &[], usize::MAX);
        assert_eq!(
            (o.finish, o.completion_tokens),
            (Finish::Length, 24),
            "{full:?}"
        );
        let stop = full.get(6..9).expect("long enough");
        let (text, o) = greedy(24, &[stop], usize::MAX);
        assert_eq!(text, full[..full.find(stop).unwrap_or(0)]);
        assert_eq!(o.finish, Finish::StopString);
        assert!(o.completion_tokens < 24);
        let (_, o) = greedy(24, &[], 3);
        assert_eq!((o.finish, o.completion_tokens), (Finish::Cancelled, 3));
    }

    /// A reasoning budget puts the closing tokens in after that many tokens, once; a block the
    /// model closes itself is left alone.
    #[test]
    fn think_budget_closes_the_block() {
        let m = demo();
        let prompt = prompt_tokens(&m.tokenizer, "Once upon a time", true);
        let run = |budget: Option<ThinkBudget>| {
            let params = Params {
                max_tokens: 20,
                n_ctx: m.n_ctx,
                stop: Vec::new(),
                sampling: SamplerParams::greedy(),
                cache: Default::default(),
                logprobs: Some(0),
                prompt_logprobs: false,
                think_budget: budget,
                marks: Vec::new(),
                constraint: None,
                deadline: None,
            };
            let mut ids = Vec::new();
            generate_with_logprobs(
                m.generator(),
                &prompt,
                &params,
                |_| ControlFlow::Continue(()),
                |t| ids.push(t.id),
            )
            .expect("generate");
            ids
        };
        let free = run(None);
        // Closing tokens this text never produces by itself.
        let close = m.tokenizer.encode(" QQQ ZZZ", false, true);
        assert!(!free.windows(close.len()).any(|w| w == close));
        let capped = run(Some(ThinkBudget {
            tokens: 5,
            close: close.clone(),
        }));
        assert_eq!(
            &capped[..5],
            &free[..5],
            "the first 5 tokens are the model's"
        );
        assert_eq!(
            &capped[5..5 + close.len()],
            &close[..],
            "then the closing tokens"
        );
        assert_eq!(capped.len(), 20);
        assert_eq!(
            capped.windows(close.len()).filter(|w| *w == close).count(),
            1,
            "once"
        );
        // The model's own 3rd..5th tokens as the closing sequence: closed by the model, so
        // nothing is put in.
        let own = free[2..5].to_vec();
        let closed = run(Some(ThinkBudget {
            tokens: 10,
            close: own,
        }));
        assert_eq!(closed, free);
    }

    #[test]
    fn refuses_what_cannot_run() {
        let m = demo();
        let params = Params {
            max_tokens: m.n_ctx,
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
        };
        let run = |prompt: &[u32]| {
            generate(
                m.generator(),
                prompt,
                &params,
                |_| ControlFlow::Continue(()),
            )
        };
        assert!(matches!(run(&[]), Err(GenerateError::EmptyPrompt)));
        assert!(matches!(
            run(&[1]),
            Err(GenerateError::ContextExceeded { prompt: 1, .. })
        ));
    }

    #[test]
    fn split_utf8_waits_for_the_rest() {
        let mut pending = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8_prefix(&mut pending), "");
        pending.push("é".as_bytes()[1]);
        assert_eq!(take_utf8_prefix(&mut pending), "é");
        assert!(pending.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut pending = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8_prefix(&mut pending), "a\u{fffd}b");
        assert!(pending.is_empty());
    }
}
