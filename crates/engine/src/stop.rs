//! Stop strings for streamed generation: text is released as soon as it cannot be the start of
//! a stop string, and generation ends at the first complete match (the match itself is not
//! part of the output, as in the OpenAI API and llama-server).

/// Watches generated text for any of a set of stop strings.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: Option<usize>,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StopStep {
    /// Text that can be shown now (may be empty when it might start a stop string).
    Continue(String),
    /// A stop string matched: the text before it; generation ends.
    Stop(String),
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// Add newly generated text.
    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = first {
            self.matched = Some(i);
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopStep::Stop(out);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep::Continue(out)
    }

    /// The stop string that ended generation (the earliest in the text; of two starting
    /// there, the first given).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_prefix_then_stops() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("hello </"), StopStep::Continue("hello ".into()));
        assert_eq!(m.push("en"), StopStep::Continue(String::new()));
        assert_eq!(m.push("d> more"), StopStep::Stop(String::new()));
        assert_eq!(m.matched(), Some("</end>"));
    }

    #[test]
    fn releases_false_prefix() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST"), StopStep::Continue(String::new()));
        assert_eq!(m.push("ART"), StopStep::Continue("START".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn earliest_of_several_and_multibyte() {
        let mut m = StopMatcher::new(&["b".to_string(), "é!".to_string()]);
        assert_eq!(m.push("xé"), StopStep::Continue("x".into()));
        assert_eq!(m.push("!ab"), StopStep::Stop(String::new()));
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("anything"), StopStep::Continue("anything".into()));
    }
}
