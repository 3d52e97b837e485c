//! Choosing the next token from logits.
//!
//! The chain runs in llama.cpp's default order (`common/sampling.cpp`): logit bias →
//! repetition / presence / frequency penalties → top-k → typical-p → top-p → min-p →
//! temperature → draw. Temperature 0 is greedy: the arg-max after bias and penalties. Draws use
//! our own seeded generator, so a seed reproduces a run of ours (not llama.cpp's mt19937
//! stream).

use std::collections::VecDeque;

/// Sampling settings, with the OpenAI / llama-server meanings and "off" defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens below `min_p × p_max` (0: off).
    pub min_p: f32,
    /// Locally typical sampling mass (1: off).
    pub typical_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of any recent token.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of recent tokens.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens (−inf bans one).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the draw.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> SamplerParams {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding.
    pub fn greedy() -> SamplerParams {
        SamplerParams {
            temperature: 0.0,
            ..SamplerParams::default()
        }
    }

    /// Check every value is in its range; the error names the parameter.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let check = |name: &'static str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(SamplerError::OutOfRange {
                    name,
                    value: v,
                    min: lo,
                    max: hi,
                })
            }
        };
        check("temperature", self.temperature, 0.0, 100.0)?;
        check("top_p", self.top_p, 0.0, 1.0)?;
        check("min_p", self.min_p, 0.0, 1.0)?;
        check("typical_p", self.typical_p, 0.0, 1.0)?;
        check("repeat_penalty", self.repeat_penalty, 0.0, 100.0)?;
        check("presence_penalty", self.presence_penalty, -100.0, 100.0)?;
        check("frequency_penalty", self.frequency_penalty, -100.0, 100.0)?;
        for &(id, b) in &self.logit_bias {
            if b.is_nan() {
                return Err(SamplerError::BadBias { id });
            }
        }
        Ok(())
    }
}

/// A sampling parameter out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// A value outside what the parameter allows.
    #[error("{name} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: f32,
        /// Lowest allowed.
        min: f32,
        /// Highest allowed.
        max: f32,
    },
    /// A logit bias that is not a number.
    #[error("logit_bias for token {id} is not a number")]
    BadBias {
        /// The token.
        id: u32,
    },
}

/// A sampler for one sequence: its settings, its generator and the recent tokens.
#[derive(Debug)]
pub struct Sampler {
    params: SamplerParams,
    rng: u64,
    recent: VecDeque<u32>,
}

impl Sampler {
    /// A sampler with checked settings.
    pub fn new(params: SamplerParams) -> Result<Sampler, SamplerError> {
        params.validate()?;
        let rng = params.seed ^ 0x853c_49e6_748f_ea9b;
        Ok(Sampler {
            params,
            rng,
            recent: VecDeque::new(),
        })
    }

    /// Remember a token of the sequence (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// The next token for these logits (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut l = logits.to_vec();
        for &(id, b) in &self.params.logit_bias {
            if let Some(v) = l.get_mut(id as usize) {
                *v += b;
            }
        }
        self.penalize(&mut l);
        if self.params.temperature <= 0.0 {
            return argmax(&l);
        }
        let mut cands: Vec<(u32, f32)> =
            l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        cands.retain(|c| c.1 > f32::NEG_INFINITY);
        if cands.is_empty() {
            return argmax(logits);
        }
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        let p = &self.params;
        if p.top_k > 0 {
            cands.truncate(p.top_k);
        }
        if p.typical_p < 1.0 {
            typical(&mut cands, p.typical_p);
        }
        if p.top_p < 1.0 {
            let probs = softmax(&cands, 1.0);
            let mut cum = 0.0;
            let keep = probs.iter().position(|&q| {
                cum += q;
                cum >= p.top_p
            });
            cands.truncate(keep.map_or(cands.len(), |i| i + 1));
        }
        if p.min_p > 0.0 {
            let probs = softmax(&cands, 1.0);
            let floor = p.min_p * probs[0];
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            cands.truncate(keep);
        }
        let probs = softmax(&cands, p.temperature);
        let r = self.next_unit();
        let mut cum = 0.0;
        for (c, q) in cands.iter().zip(&probs) {
            cum += q;
            if r < cum {
                return c.0;
            }
        }
        cands[cands.len() - 1].0
    }

    /// llama.cpp `llama_sampler_penalties_apply`: repeat penalty on sign, then frequency and
    /// presence.
    fn penalize(&self, l: &mut [f32]) {
        let p = &self.params;
        if self.recent.is_empty()
            || (p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0)
        {
            return;
        }
        let mut counts = std::collections::HashMap::new();
        for &t in &self.recent {
            *counts.entry(t).or_insert(0u32) += 1;
        }
        for (&t, &c) in &counts {
            let Some(v) = l.get_mut(t as usize) else {
                continue;
            };
            if *v <= 0.0 {
                *v *= p.repeat_penalty;
            } else {
                *v /= p.repeat_penalty;
            }
            *v -= c as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Uniform in [0, 1) from SplitMix64.
    fn next_unit(&mut self) -> f32 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce5_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Probabilities of the candidates at temperature `t`.
fn softmax(c: &[(u32, f32)], t: f32) -> Vec<f32> {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = c.iter().map(|x| ((x.1 - max) / t).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Locally typical sampling (llama.cpp `llama_sampler_typical_apply`): keep the tokens whose
/// surprise is closest to the entropy until their mass reaches `p`.
fn typical(c: &mut Vec<(u32, f32)>, p: f32) {
    let probs = softmax(c, 1.0);
    let entropy: f32 = probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| -q * q.ln())
        .sum();
    let mut order: Vec<usize> = (0..c.len()).collect();
    let dev = |i: usize| (-probs[i].ln() - entropy).abs();
    order.sort_by(|&a, &b| dev(a).total_cmp(&dev(b)));
    let mut cum = 0.0;
    let mut keep = order.len();
    for (n, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum > p {
            keep = n + 1;
            break;
        }
    }
    let kept: Vec<(u32, f32)> = order[..keep].iter().map(|&i| c[i]).collect();
    *c = kept;
    c.sort_by(|a, b| b.1.total_cmp(&a.1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 0.5]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerParams::greedy()).unwrap();
        assert_eq!(s.sample(&logits()), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(
            a.iter().any(|&t| t != a[0]),
            "temperature 1 draws more than one token"
        );
    }

    #[test]
    fn top_k_one_and_bias() {
        let p = SamplerParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample(&logits()), 1);
        let p = SamplerParams {
            logit_bias: vec![(1, f32::NEG_INFINITY)],
            ..SamplerParams::greedy()
        };
        assert_eq!(Sampler::new(p).unwrap().sample(&logits()), 2);
    }

    #[test]
    fn penalties_push_repeats_down() {
        let p = SamplerParams {
            repeat_penalty: 10.0,
            ..SamplerParams::greedy()
        };
        let mut s = Sampler::new(p).unwrap();
        s.accept(1);
        assert_eq!(s.sample(&logits()), 2);
        let p = SamplerParams {
            presence_penalty: 5.0,
            ..SamplerParams::greedy()
        };
        let mut s = Sampler::new(p).unwrap();
        s.accept(1);
        assert_eq!(s.sample(&logits()), 2);
    }

    #[test]
    fn min_p_and_top_p_keep_only_the_head() {
        for p in [
            SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.01,
                min_p: 0.0,
                ..Default::default()
            },
            SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.9,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(p).unwrap();
            assert!((0..20).all(|_| s.sample(&logits()) == 1));
        }
    }

    #[test]
    fn bad_params_are_errors() {
        let p = SamplerParams {
            top_p: 1.5,
            ..Default::default()
        };
        assert!(matches!(
            Sampler::new(p),
            Err(SamplerError::OutOfRange { name: "top_p", .. })
        ));
        let p = SamplerParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert!(Sampler::new(p).is_err());
    }
}
