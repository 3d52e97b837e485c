//! Python's way of turning template values into text: `str()`, `repr()` and `json.dumps`.
//!
//! Chat templates are written against Hugging Face's jinja2 environment, where `{{ x }}` and
//! `x|string` call Python's `str()` (`True`, `None`, `{'a': 1}`, `1e-05`) and `x|tojson` is
//! `json.dumps(x, ensure_ascii=False)` with Python's separators (`", "`, `": "`). minijinja's
//! own spellings (`true`, `none`, compact JSON) would change the prompt, so the environment
//! (`env.rs`) routes output, `string` and `tojson` through these functions.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};
use std::fmt::Write as _;

/// Options of HF's `tojson` filter, which forwards them to `json.dumps`.
#[derive(Clone, Debug, Default)]
pub struct JsonOpts {
    /// `ensure_ascii`: escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// `indent`: the text of one indentation level; `None` writes everything on one line.
    pub indent: Option<String>,
    /// `separators`: (item, key) separators; `None` means Python's defaults.
    pub separators: Option<(String, String)>,
    /// `sort_keys`: objects written with their keys sorted.
    pub sort_keys: bool,
}

/// Python `str(value)`: strings as they are, everything else as `repr`.
pub fn py_str(value: &Value) -> String {
    match value.as_str() {
        Some(s) if value.kind() == ValueKind::String => s.to_string(),
        _ => {
            let mut out = String::new();
            write_repr(&mut out, value);
            out
        }
    }
}

/// Python `repr(value)` for the JSON-like values templates see; other objects (macros,
/// namespaces, loops) fall back to minijinja's display, which Python would not print anyway.
pub fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr` of a `str`: single quotes unless the text has `'` and no `"`.
/// Printability is approximated by "not a control character" (Python consults the Unicode
/// database; the two agree on everything chat messages normally hold).
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x100 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A number as Python prints it: integers in full, floats via [`py_float`].
fn py_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => py_float(f),
        Err(_) => value.to_string(),
    }
}

/// Python `repr(float)`: the shortest round-trip digits, positional when the decimal
/// exponent is in (-4, 16], else `d.ddde±XX` (CPython `float_repr_style = 'short'`).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` without a precision already gives the shortest round-trip digits.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let decpt = exp.parse::<i32>().unwrap_or(0) + 1;
    let sign = if f < 0.0 { "-" } else { "" };
    let n = digits.len() as i32;
    let body = if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        format!(
            "{first}{dot}e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.abs()
        )
    };
    format!("{sign}{body}")
}

/// `json.dumps(value, ...)` with Python's formatting rules.
pub fn py_json(value: &Value, opts: &JsonOpts) -> Result<String, Error> {
    let mut out = String::new();
    let (item_sep, key_sep) = match (&opts.separators, &opts.indent) {
        (Some((i, k)), _) => (i.clone(), k.clone()),
        // Python drops the space after ',' when indenting, to avoid trailing spaces.
        (None, Some(_)) => (",".to_string(), ": ".to_string()),
        (None, None) => (", ".to_string(), ": ".to_string()),
    };
    let w = JsonWriter {
        opts,
        item_sep,
        key_sep,
    };
    w.write(&mut out, value, 0)?;
    Ok(out)
}

struct JsonWriter<'a> {
    opts: &'a JsonOpts,
    item_sep: String,
    key_sep: String,
}

impl JsonWriter<'_> {
    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&json_number(value)),
            ValueKind::String => self.write_string(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, ('[', ']'), items.len(), depth, |out, i| {
                    self.write(out, &items[i], depth + 1)
                })?;
            }
            ValueKind::Map => self.write_map(out, value, depth)?,
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn write_map(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        let mut keys: Vec<Value> = value.try_iter()?.collect();
        if self.opts.sort_keys {
            keys.sort();
        }
        self.write_container(out, ('{', '}'), keys.len(), depth, |out, i| {
            // json.dumps turns scalar keys into strings ("1", "true", "null").
            let key = match keys[i].as_str() {
                Some(s) => s.to_string(),
                None => json_scalar_key(&keys[i])?,
            };
            self.write_string(out, &key);
            out.push_str(&self.key_sep);
            self.write(out, &value.get_item(&keys[i])?, depth + 1)
        })
    }

    /// Writes `open item sep item ... close`, with Python's newline + indent layout.
    fn write_container<F>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        mut item: F,
    ) -> Result<(), Error>
    where
        F: FnMut(&mut String, usize) -> Result<(), Error>,
    {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(ind) = &self.opts.indent {
                out.push('\n');
                out.push_str(&ind.repeat(depth + 1));
            }
            item(out, i)?;
        }
        if let Some(ind) = &self.opts.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python's encoder writes it (`py_encode_basestring[_ascii]`).
    fn write_string(&self, out: &mut String, s: &str) {
        out.push('"');
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.opts.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A JSON number: floats as `float.__repr__`, except json's spellings of nan and infinity.
fn json_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Ok(f) => py_float(f),
        Err(_) => value.to_string(),
    }
}

fn json_scalar_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number => Ok(json_number(key)),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        Value::from_serialize(serde_json::from_str::<serde_json::Value>(json).unwrap())
    }

    #[test]
    fn floats_print_like_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn repr_matches_python() {
        let x = v(r#"{"a": [1, 2.0, true, null, "it's"], "b": "q\"\n"}"#);
        assert_eq!(
            py_str(&x),
            r#"{'a': [1, 2.0, True, None, "it's"], 'b': 'q"\n'}"#
        );
        assert_eq!(py_str(&Value::from("plain")), "plain");
    }

    #[test]
    fn json_dumps_defaults_and_options() {
        let x = v(r#"{"z": "é<&>", "a": [1, 1.5, false, null], "e": {}}"#);
        let plain = py_json(&x, &JsonOpts::default()).unwrap();
        assert_eq!(
            plain,
            r#"{"z": "é<&>", "a": [1, 1.5, false, null], "e": {}}"#
        );
        let opts = JsonOpts {
            ensure_ascii: true,
            indent: Some("  ".into()),
            sort_keys: true,
            ..JsonOpts::default()
        };
        let pretty = py_json(&x, &opts).unwrap();
        let want = "{\n  \"a\": [\n    1,\n    1.5,\n    false,\n    null\n  ],\n  \"e\": {},\n  \"z\": \"\\u00e9<&>\"\n}";
        assert_eq!(pretty, want);
        let emoji = py_json(&Value::from("😀\u{1}"), &opts).unwrap();
        assert_eq!(emoji, r#""\ud83d\ude00\u0001""#);
    }
}
