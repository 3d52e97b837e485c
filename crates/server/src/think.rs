//! Reasoning apart from the answer. Qwen3-style models write `<think>…</think>` before the
//! answer, and their chat templates may open the tag in the prompt already. [`ThinkSplit`]
//! takes the generated text piece by piece, as it streams, and says which part is reasoning
//! and which answer, holding back what may be the start of a tag split across pieces.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A piece of generated text, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Reasoning (inside `<think>…</think>`).
    Thinking(String),
    /// The answer.
    Text(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not yet known whether the text opens with `<think>`.
    Start,
    Thinking,
    /// After `</think>`: the blank lines before the answer are dropped.
    AfterThinking,
    Answer,
}

/// Splits a generation into reasoning and answer. Blank space at either end of the reasoning
/// is dropped (the templates put newlines around it), so a reasoning of only newlines is none.
#[derive(Debug)]
pub struct ThinkSplit {
    state: State,
    held: String,
    /// No reasoning released yet: leading blank space is dropped.
    fresh: bool,
}

impl ThinkSplit {
    /// A splitter for a generation whose prompt ends inside an open `<think>` (`opened`) or
    /// not (then reasoning counts only if the text starts with `<think>`).
    pub fn new(opened: bool) -> ThinkSplit {
        ThinkSplit {
            state: if opened {
                State::Thinking
            } else {
                State::Start
            },
            held: String::new(),
            fresh: true,
        }
    }

    /// Whether a rendered prompt leaves the model inside `<think>`.
    pub fn prompt_opens(prompt: &str) -> bool {
        prompt.trim_end().ends_with(OPEN)
    }

    /// The parts `text` completes (none while a tag may still be forming).
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(t) {
                        return out; // maybe the tag, not complete yet
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => {
                    if let Some(at) = self.held.find(CLOSE) {
                        let rest = self.held.split_off(at);
                        let reasoning = std::mem::take(&mut self.held);
                        self.think(&mut out, reasoning.trim_end());
                        self.held = rest[CLOSE.len()..].to_string();
                        self.state = State::AfterThinking;
                        continue;
                    }
                    // Hold back what may start the closing tag, and blank space that may
                    // turn out to end the reasoning.
                    let tag = partial_tag(&self.held, CLOSE);
                    let body_end = self.held[..self.held.len() - tag].trim_end().len();
                    let tail = self.held.split_off(body_end);
                    let body = std::mem::replace(&mut self.held, tail);
                    self.think(&mut out, &body);
                    return out;
                }
                State::AfterThinking => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    push_part(&mut out, Part::Text(std::mem::take(&mut self.held)));
                    return out;
                }
            }
        }
    }

    /// Reasoning text out, leading blank space dropped until some is released.
    fn think(&mut self, out: &mut Vec<Part>, text: &str) {
        let text = if self.fresh { text.trim_start() } else { text };
        if !text.is_empty() {
            self.fresh = false;
            out.push(Part::Thinking(text.to_string()));
        }
    }

    /// What is still held when generation ends (an unfinished tag is text of its kind).
    pub fn finish(&mut self) -> Vec<Part> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => {
                let t = held.trim_end().to_string();
                self.think(&mut out, &t);
            }
            State::AfterThinking => {}
            State::Start | State::Answer => push_part(&mut out, Part::Text(held)),
        }
        out
    }
}

/// The length of the longest end of `text` that is a proper start of `tag` (what to hold
/// back: the tag may be completing in the next piece).
pub(crate) fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| tag.is_char_boundary(n) && text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

fn push_part(out: &mut Vec<Part>, p: Part) {
    let empty = match &p {
        Part::Thinking(t) | Part::Text(t) => t.is_empty(),
    };
    if !empty {
        out.push(p);
    }
}

/// A whole generation split into (reasoning, answer).
pub fn split_whole(text: &str, opened: bool) -> (String, String) {
    let mut s = ThinkSplit::new(opened);
    let (mut thinking, mut answer) = (String::new(), String::new());
    for p in s.push(text).into_iter().chain(s.finish()) {
        match p {
            Part::Thinking(t) => thinking.push_str(&t),
            Part::Text(t) => answer.push_str(&t),
        }
    }
    (thinking, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` one by one; the parts merged by kind, in order.
    fn run(pieces: &[&str], opened: bool) -> Vec<Part> {
        let mut s = ThinkSplit::new(opened);
        let mut out: Vec<Part> = Vec::new();
        let all = pieces
            .iter()
            .flat_map(|p| s.push(p))
            .collect::<Vec<_>>()
            .into_iter()
            .chain(s.finish());
        for p in all {
            match (out.last_mut(), p) {
                (Some(Part::Thinking(a)), Part::Thinking(b)) => a.push_str(&b),
                (Some(Part::Text(a)), Part::Text(b)) => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }

    fn th(s: &str) -> Part {
        Part::Thinking(s.into())
    }
    fn tx(s: &str) -> Part {
        Part::Text(s.into())
    }

    #[test]
    fn tags_split_anywhere() {
        let whole = "<think>\nplan a\n b \n</think>\n\nAnswer.";
        let want = vec![th("plan a\n b"), tx("Answer.")];
        // Every way of cutting the text in two, and one character at a time.
        for cut in 0..=whole.len() {
            assert_eq!(
                run(&[&whole[..cut], &whole[cut..]], false),
                want,
                "cut {cut}"
            );
        }
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&pieces, false), want);
    }

    #[test]
    fn opened_by_the_prompt_no_tag_and_unfinished() {
        assert_eq!(
            run(&["a b</th", "ink>\n\nc"], true),
            vec![th("a b"), tx("c")]
        );
        assert_eq!(
            run(&["Hello <think> x"], false),
            vec![tx("Hello <think> x")]
        );
        assert_eq!(run(&["<thi"], false), vec![tx("<thi")]);
        assert_eq!(
            run(&["still thinking </thi"], true),
            vec![th("still thinking </thi")]
        );
        assert_eq!(run(&["<think></think>", "\n\n", "x"], false), vec![tx("x")]);
        assert_eq!(
            split_whole("<think>r</think>a", false),
            ("r".into(), "a".into())
        );
        assert!(ThinkSplit::prompt_opens("<|im_start|>assistant\n<think>\n"));
        assert!(!ThinkSplit::prompt_opens("<|im_start|>assistant\n"));
    }
}
