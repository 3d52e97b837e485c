//! The minijinja environment, set up like Hugging Face's jinja2 one.
//!
//! Mirrors `_compile_jinja_template` in transformers' `chat_template_utils.py`:
//! `trim_blocks` and `lstrip_blocks` on, the loop-controls extension, HF's `tojson`
//! (`json.dumps`, `ensure_ascii=False`, no HTML escaping), `raise_exception` and
//! `strftime_now`. On top of that, Python's string methods come from minijinja-contrib's
//! pycompat, and values print the Python way (`True`, `None`, `{'a': 1}`; see `python.rs`),
//! both through `{{ ... }}` and the `string` filter.

use super::python::{py_json, py_str, JsonOpts};
use super::strftime::strftime;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Marks an error as the template's own `raise_exception(message)`, so it can be told
/// apart from a render failure after minijinja has propagated it.
#[derive(Debug)]
pub struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `clock` holds the time `strftime_now` reports, or [`SYSTEM_CLOCK`] for the real time.
pub const SYSTEM_CLOCK: i64 = i64::MIN;

/// Name under which the chat template is stored in the environment (shows in errors).
pub const TEMPLATE_NAME: &str = "chat_template";

/// A fresh environment with `source` compiled in as [`TEMPLATE_NAME`].
pub fn build(source: String, clock: Arc<AtomicI64>) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // jinja2 drops the template's final newline unless keep_trailing_newline is set.
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_filter("string", |v: &Value| Value::from(py_str(v)));
    // jinja2's type tests answer from Python's types; minijinja's differ on none, strings,
    // mappings and bools (Gemma 3 relies on `none is iterable` being false).
    env.add_test("iterable", |v: &Value| {
        !matches!(
            v.kind(),
            ValueKind::None | ValueKind::Bool | ValueKind::Number
        ) && (v.is_undefined() || v.try_iter().is_ok())
    });
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq
                | ValueKind::Map
                | ValueKind::String
                | ValueKind::Bytes
                | ValueKind::Undefined
        )
    });
    env.add_test("number", |v: &Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", move |format: &str| {
        let now = match clock.load(Ordering::Relaxed) {
            SYSTEM_CLOCK => system_now(),
            fixed => fixed,
        };
        strftime(format, now)
    });
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `{{ value }}` as jinja2 prints it: `str(value)`, with undefined as the empty string.
fn python_formatter(
    out: &mut minijinja::Output,
    _state: &State,
    value: &Value,
) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::Undefined => return Ok(()),
        ValueKind::String => {
            return out
                .write_str(value.as_str().unwrap_or_default())
                .map_err(fmt_err);
        }
        _ => py_str(value),
    };
    out.write_str(&text).map_err(fmt_err)
}

fn fmt_err(_: std::fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "formatting failed")
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// positional arguments in that order or by keyword.
fn tojson(
    value: &Value,
    ensure_ascii: Option<bool>,
    indent: Option<Value>,
    separators: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ensure_ascii = match ensure_ascii {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = indent.or(kwargs.get::<Option<Value>>("indent")?);
    let separators = separators.or(kwargs.get::<Option<Value>>("separators")?);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        ensure_ascii,
        indent: indent_text(indent)?,
        separators: separator_pair(separators)?,
        sort_keys,
    };
    // Plain text, not marked safe: HF's tojson returns a str and chat templates don't escape.
    py_json(value, &opts).map(Value::from)
}

/// `indent` as json.dumps takes it: a count of spaces or the indent text itself.
fn indent_text(indent: Option<Value>) -> Result<Option<String>, Error> {
    let Some(v) = indent.filter(|v| !v.is_none() && !v.is_undefined()) else {
        return Ok(None);
    };
    if let Some(s) = v.as_str() {
        return Ok(Some(s.to_string()));
    }
    match v.as_i64() {
        Some(n) => Ok(Some(" ".repeat(n.max(0) as usize))),
        None => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: indent must be int or str",
        )),
    }
}

fn separator_pair(separators: Option<Value>) -> Result<Option<(String, String)>, Error> {
    let Some(v) = separators.filter(|v| !v.is_none() && !v.is_undefined()) else {
        return Ok(None);
    };
    let parts: Vec<Value> = v.try_iter()?.collect();
    match parts.as_slice() {
        [a, b] if a.as_str().is_some() && b.as_str().is_some() => Ok(Some((
            a.as_str().unwrap_or_default().to_string(),
            b.as_str().unwrap_or_default().to_string(),
        ))),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be a pair of strings",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> Result<String, Error> {
        let env = build(src.to_string(), Arc::new(AtomicI64::new(1_768_480_496)))?;
        env.get_template(TEMPLATE_NAME)?.render(ctx)
    }

    #[test]
    fn prints_values_the_python_way() {
        let ctx = Value::from_serialize(serde_json::json!({"x": {"a": [true, null, 1.0]}}));
        let out = render("{{ x }}|{{ x.a[0] | string }}|{{ x.a[1] }}|{{ nope }}", ctx).unwrap();
        assert_eq!(out, "{'a': [True, None, 1.0]}|True|None|");
    }

    #[test]
    fn tojson_takes_hf_options() {
        let ctx = Value::from_serialize(serde_json::json!({"x": {"b": "<é>", "a": 1}}));
        let src = "{{ x|tojson }}\n{{ x|tojson(indent=2, sort_keys=true) }}\n{{ x|tojson(true) }}";
        let out = render(src, ctx).unwrap();
        assert_eq!(
            out,
            "{\"b\": \"<é>\", \"a\": 1}\n{\n  \"a\": 1,\n  \"b\": \"<é>\"\n}\n{\"b\": \"<\\u00e9>\", \"a\": 1}"
        );
    }

    #[test]
    fn raise_exception_carries_its_message() {
        let err = render("{{ raise_exception('no system role') }}", Value::UNDEFINED).unwrap_err();
        let raised = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<Raised>());
        assert_eq!(raised.map(|r| r.0.as_str()), Some("no system role"));
    }

    #[test]
    fn strftime_now_uses_the_clock() {
        assert_eq!(
            render("{{ strftime_now('%d %b %Y') }}", Value::UNDEFINED).unwrap(),
            "15 Jan 2026"
        );
    }

    #[test]
    fn type_tests_follow_python() {
        let ctx =
            Value::from_serialize(serde_json::json!({"n": null, "s": "x", "m": {}, "b": true}));
        let src =
            "{{ n is iterable }}{{ s is iterable }}{{ nope is iterable }}{{ 3 is iterable }}|\
                   {{ s is sequence }}{{ m is sequence }}{{ n is sequence }}|{{ b is number }}";
        let out = render(src, ctx).unwrap();
        assert_eq!(out, "FalseTrueTrueFalse|TrueTrueFalse|True");
    }

    #[test]
    fn trims_blocks_like_hf() {
        let src = "{% for i in [1, 2] %}\n  {% if i %}\n{{ i }}\n  {% endif %}\n{% endfor %}\n";
        assert_eq!(render(src, Value::UNDEFINED).unwrap(), "1\n2\n");
    }
}
