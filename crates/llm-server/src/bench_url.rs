//! `llm-server bench --url URL` (issue 13 req. 1): a benchmark client for any OpenAI-compatible
//! server (ours, llama-server, vLLM). Fixed, deterministic prompt suites built from shipped
//! text — short (~30 tokens in), medium (~500), long (~4,000), multi-turn (five turns, each
//! re-sending the growing conversation) — sent as streaming chat completions at each
//! concurrency level; per request the time to first token, prefill and decode tok/s, tokens
//! in and out and any error; GPU memory in use sampled through NVML when there is one. Results
//! are JSON lines, each carrying the whole configuration (server URL, flags, model file hash,
//! our commit, machine, date), then one summary line per suite and concurrency.
//!
//! The HTTP client is plain HTTP/1.1 over TCP (servers under test are local; no TLS): a POST
//! with a JSON body, the response read as Server-Sent Events over chunked, sized or
//! close-delimited bodies.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The shipped text the prompts are cut from (WikiText-2 test, CC BY-SA 3.0; data/README.md).
const TEXT: &str = include_str!("../data/bench-text.txt");

/// `bench --url` options (flattened into `bench`'s arguments).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct UrlArgs {
    /// Benchmark a running OpenAI-compatible server at this base URL (`http://HOST:PORT`)
    /// instead of a model in this process.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Suites to run: short, medium, long, multi-turn (a list).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short,medium,long,multi-turn"
    )]
    pub suite: Vec<String>,
    /// Concurrent streams (a list: each level is a separate run).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Requests (conversations, for multi-turn) per suite and level (default: 2 × the level).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// The `model` field sent (default: the first of the server's /v1/models).
    #[arg(long = "model-name")]
    pub model_name: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Write the JSON lines here (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// A name for this configuration, recorded with every line.
    #[arg(long = "config-name")]
    pub config_name: Option<String>,
    /// The server's command line, recorded with every line.
    #[arg(long = "server-flags")]
    pub server_flags: Option<String>,
    /// The model file the server runs, for its hash in the record.
    #[arg(long = "model-file")]
    pub model_file: Option<PathBuf>,
    /// Seconds a request may take before it counts as an error.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// A parsed `http://host:port[/prefix]`.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    prefix: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url {url:?}: expected http://HOST:PORT (TLS is not supported)");
    };
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .with_context(|| format!("--url {url:?}: bad port {p:?}"))?,
        ),
        None => (hostport.to_string(), 80),
    };
    if host.is_empty() {
        bail!("--url {url:?}: no host");
    }
    Ok(Target { host, port, prefix })
}

/// One HTTP/1.1 exchange; `on_line` gets each line of a 200 response's body as it arrives.
/// Returns the status and, for other statuses, the body.
async fn http(
    t: &Target,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", t.host, t.port))?;
    s.set_nodelay(true).ok();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: text/event-stream, \
         application/json\r\nConnection: close\r\n",
        t.prefix, t.host, t.port
    );
    if let Some(k) = key {
        req += &format!("Authorization: Bearer {k}\r\n");
    }
    if body.is_some() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await?;
    s.write_all(payload.as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {:?}", line.trim()))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        } else if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    // The body as lines, whatever its framing.
    let mut pending = Vec::new();
    let mut body_text = String::new();
    let mut emit = |bytes: &[u8], pending: &mut Vec<u8>, body_text: &mut String| {
        pending.extend_from_slice(bytes);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let l = String::from_utf8_lossy(&pending[..i])
                .trim_end_matches('\r')
                .to_string();
            pending.drain(..=i);
            if status == 200 {
                on_line(&l);
            } else {
                body_text.push_str(&l);
                body_text.push('\n');
            }
        }
    };
    if chunked {
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                break;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .with_context(|| format!("bad chunk size {:?}", line.trim()))?;
            if size == 0 {
                break;
            }
            let mut buf = vec![0u8; size + 2];
            r.read_exact(&mut buf).await?;
            emit(&buf[..size], &mut pending, &mut body_text);
        }
    } else if let Some(n) = length {
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await?;
        emit(&buf, &mut pending, &mut body_text);
    } else {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await?;
        emit(&buf, &mut pending, &mut body_text);
    }
    // The last line, when the body does not end with a line break (a one-line JSON error).
    let tail = String::from_utf8_lossy(&pending).trim_end().to_string();
    if !tail.is_empty() {
        match status {
            200 => on_line(&tail),
            _ => body_text.push_str(&tail),
        }
    }
    Ok((status, body_text))
}

/// One request's measurements.
#[derive(Debug, Default, Clone)]
struct Sample {
    ttft: Option<f64>,
    total: f64,
    decode_time: f64,
    tokens_in: Option<u64>,
    tokens_out: u64,
    text: String,
    error: Option<String>,
}

/// Send one streaming chat completion and time it.
async fn chat(t: &Target, a: &UrlArgs, model: &str, messages: &[Value]) -> Sample {
    let body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": a.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let t0 = Instant::now();
    let mut s = Sample::default();
    let (mut first, mut last, mut chunks) = (None, None, 0u64);
    let mut usage_out = None;
    let mut on_line = |l: &str| {
        let Some(data) = l.strip_prefix("data:").map(str::trim) else {
            return;
        };
        if data == "[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            s.tokens_in = u["prompt_tokens"].as_u64();
            usage_out = u["completion_tokens"].as_u64();
        }
        let d = &v["choices"][0]["delta"];
        let piece = [&d["content"], &d["reasoning_content"]]
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<String>();
        if !piece.is_empty() {
            let now = t0.elapsed().as_secs_f64();
            first.get_or_insert(now);
            last = Some(now);
            chunks += 1;
            s.text.push_str(&piece);
        }
    };
    let timeout = Duration::from_secs(a.timeout);
    let r = tokio::time::timeout(
        timeout,
        http(
            t,
            "POST",
            "/v1/chat/completions",
            Some(&body),
            a.api_key.as_deref(),
            &mut on_line,
        ),
    )
    .await;
    s.total = t0.elapsed().as_secs_f64();
    match r {
        Err(_) => s.error = Some(format!("no answer within {} s", a.timeout)),
        Ok(Err(e)) => s.error = Some(format!("{e:#}")),
        Ok(Ok((200, _))) => {}
        Ok(Ok((code, body))) => {
            let msg = serde_json::from_str::<Value>(body.trim())
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.trim().chars().take(200).collect());
            s.error = Some(format!("HTTP {code}: {msg}"));
        }
    }
    s.ttft = first;
    s.tokens_out = usage_out.unwrap_or(chunks);
    s.decode_time = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => 0.0,
    };
    if s.error.is_none() && first.is_none() {
        s.error = Some("the stream carried no tokens".into());
    }
    s
}

/// Where a finished request goes: (suite, concurrency, request, turn, its sample).
type Record = Arc<dyn Fn(&str, usize, usize, usize, &Sample) + Send + Sync>;

/// `n` characters of the shipped text from a point that depends on `seed` (at a word start).
fn excerpt(seed: usize, n: usize) -> String {
    let len = TEXT.len();
    let mut at = (seed * 7919 * 13) % (len - n.min(len - 1) - 1);
    while !TEXT.is_char_boundary(at) || (at > 0 && !TEXT.as_bytes()[at - 1].is_ascii_whitespace()) {
        at += 1;
    }
    let mut end = (at + n).min(len);
    while !TEXT.is_char_boundary(end) {
        end -= 1;
    }
    TEXT[at..end].to_string()
}

/// The first user message of request `i` of `suite` (about 4 characters a token).
fn prompt(suite: &str, i: usize) -> String {
    match suite {
        "short" => format!("Say in one sentence what this is about: {}", excerpt(i, 90)),
        "medium" => format!("Summarise the following text.\n\n{}", excerpt(i, 2000)),
        "long" => format!(
            "Read the following text, then list its main points.\n\n{}",
            excerpt(i, 16000)
        ),
        _ => format!(
            "Here is a passage. I will ask about it.\n\n{}\n\nWho or what is it about?",
            excerpt(i, 800)
        ),
    }
}

/// Follow-up questions of the multi-turn suite.
const FOLLOW_UPS: [&str; 4] = [
    "Give one more detail from the passage.",
    "What happened next, according to the text?",
    "Name a place or a date the passage mentions.",
    "Summarise our conversation in two sentences.",
];

/// Run `requests` requests of `suite` with `conc` at a time; each finished request is sent to
/// `record` (multi-turn: each turn).
async fn run_level(
    t: Arc<Target>,
    a: Arc<UrlArgs>,
    model: Arc<String>,
    suite: String,
    conc: usize,
    requests: usize,
    record: Record,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (t, a, model, suite, next, record) = (
            t.clone(),
            a.clone(),
            model.clone(),
            suite.clone(),
            next.clone(),
            record.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                let mut messages = vec![json!({"role": "user", "content": prompt(&suite, i)})];
                // Multi-turn: the first question, then each follow-up after the answer so far.
                let follow_ups = match suite.as_str() {
                    "multi-turn" => &FOLLOW_UPS[..],
                    _ => &[],
                };
                let mut turn = 0;
                loop {
                    let s = chat(&t, &a, &model, &messages).await;
                    record(&suite, conc, i, turn, &s);
                    let Some(next) = follow_ups.get(turn).filter(|_| s.error.is_none()) else {
                        break;
                    };
                    messages.push(json!({"role": "assistant", "content": s.text}));
                    messages.push(json!({"role": "user", "content": *next}));
                    turn += 1;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// GPU memory in use (MiB) on GPU 0 through NVML, loaded at run time; `None` without it.
mod nvml {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    #[repr(C)]
    struct Memory {
        total: u64,
        free: u64,
        used: u64,
    }

    type Init = unsafe extern "C" fn() -> c_int;
    type Handle = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
    type MemInfo = unsafe extern "C" fn(*mut c_void, *mut Memory) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_void, *mut c_char, c_uint) -> c_int;

    /// GPU 0 through the loaded library.
    pub struct Nvml {
        dev: *mut c_void,
        mem: MemInfo,
        /// The GPU's name.
        pub name: String,
    }

    // SAFETY: NVML is thread-safe; the handle is a process-wide device handle.
    unsafe impl Send for Nvml {}
    // SAFETY: as above.
    unsafe impl Sync for Nvml {}

    impl Nvml {
        /// Load `libnvidia-ml.so.1` and open GPU 0, or `None`.
        #[cfg(unix)]
        pub fn open() -> Option<Nvml> {
            // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the type
            // NVML's header gives it; calls pass valid out-pointers.
            unsafe {
                let lib = libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW);
                if lib.is_null() {
                    return None;
                }
                let sym = |n: &std::ffi::CStr| {
                    let p = libc::dlsym(lib, n.as_ptr());
                    (!p.is_null()).then_some(p)
                };
                let init: Init = std::mem::transmute(sym(c"nvmlInit_v2")?);
                let handle: Handle = std::mem::transmute(sym(c"nvmlDeviceGetHandleByIndex_v2")?);
                let mem: MemInfo = std::mem::transmute(sym(c"nvmlDeviceGetMemoryInfo")?);
                let name: Name = std::mem::transmute(sym(c"nvmlDeviceGetName")?);
                if init() != 0 {
                    return None;
                }
                let mut dev = std::ptr::null_mut();
                if handle(0, &mut dev) != 0 {
                    return None;
                }
                let mut buf = [0 as c_char; 96];
                let n = if name(dev, buf.as_mut_ptr(), 96) == 0 {
                    std::ffi::CStr::from_ptr(buf.as_ptr())
                        .to_string_lossy()
                        .into_owned()
                } else {
                    String::new()
                };
                Some(Nvml { dev, mem, name: n })
            }
        }

        #[cfg(not(unix))]
        pub fn open() -> Option<Nvml> {
            None
        }

        /// MiB in use on the GPU (all processes).
        pub fn used_mib(&self) -> Option<u64> {
            let mut m = Memory {
                total: 0,
                free: 0,
                used: 0,
            };
            // SAFETY: a valid device handle and out-pointer.
            (unsafe { (self.mem)(self.dev, &mut m) } == 0).then_some(m.used >> 20)
        }
    }
}

/// FNV-1a of a file's first 64 MiB and its length (a GGUF's header, metadata and first
/// tensors: enough to tell files apart, quick on 20 GB).
fn file_hash(p: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(p).with_context(|| format!("--model-file {}", p.display()))?;
    let len = f.metadata()?.len();
    let mut h = crate::fnv::Fnv::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut r = f.take(64 << 20);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.eat(&buf[..n]);
    }
    Ok(format!("fnv1a64-64MiB:{:016x}:{len}", h.get()))
}

/// The machine: host name, CPU model and cores.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    json!({
        "host": host,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// Our commit: `LLM_SERVER_COMMIT`, else `git rev-parse` where the binary runs, else unknown.
fn commit() -> String {
    if let Ok(c) = std::env::var("LLM_SERVER_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Median and (max − min) of `v`, or nulls.
fn stats(v: Vec<f64>) -> (Value, Value) {
    if v.is_empty() {
        return (Value::Null, Value::Null);
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    (json!(crate::kld::median(&v)), json!(hi - lo))
}

pub fn run(a: UrlArgs) -> anyhow::Result<()> {
    let url = a.url.clone().unwrap_or_default();
    let t = Arc::new(parse_url(&url)?);
    for s in &a.suite {
        if !["short", "medium", "long", "multi-turn"].contains(&s.as_str()) {
            bail!("--suite {s:?}: expected short, medium, long or multi-turn");
        }
    }
    if a.concurrency.contains(&0) {
        bail!("--concurrency: levels must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let model = match &a.model_name {
        Some(m) => m.clone(),
        None => rt.block_on(async {
            let (code, _) = (200u16, ());
            let mut body = String::new();
            let mut on = |l: &str| body.push_str(l);
            let (status, err) = http(&t, "GET", "/v1/models", None, a.api_key.as_deref(), &mut on)
                .await
                .with_context(|| format!("{url}: cannot reach the server"))?;
            if status != code {
                bail!("{url}/v1/models: HTTP {status}: {}", err.trim());
            }
            let v: Value = serde_json::from_str(&body)
                .with_context(|| format!("{url}/v1/models: not JSON"))?;
            v["data"][0]["id"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("{url}/v1/models: no model listed"))
        })?,
    };
    let gpu = nvml::Nvml::open();
    let config = json!({
        "name": a.config_name,
        "url": url,
        "model": model,
        "server_flags": a.server_flags,
        "model_file": a.model_file.as_ref().map(|p| p.display().to_string()),
        "model_hash": match &a.model_file { Some(p) => Some(file_hash(p)?), None => None },
        "max_tokens": a.max_tokens,
        "client": {"program": "llm-server bench --url", "version": env!("CARGO_PKG_VERSION"), "commit": commit()},
        "machine": machine(),
        "gpu": gpu.as_ref().map(|g| g.name.clone()),
        "date": unix_date(),
    });
    let out: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    }));
    let gpu = Arc::new(gpu);
    let a = Arc::new(a);
    let total: usize = a
        .suite
        .iter()
        .map(|s| {
            a.concurrency
                .iter()
                .map(|&c| a.requests.unwrap_or(2 * c) * if s == "multi-turn" { 5 } else { 1 })
                .sum::<usize>()
        })
        .sum();
    let done = Arc::new(AtomicUsize::new(0));
    let t_start = Instant::now();
    for suite in a.suite.clone() {
        for &conc in &a.concurrency {
            let requests = a.requests.unwrap_or(2 * conc);
            let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
            let peak = Arc::new(Mutex::new(None::<u64>));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let (gpu, peak, stop) = (gpu.clone(), peak.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(u) = gpu.as_ref().as_ref().and_then(|g| g.used_mib()) {
                            let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                            *p = Some(p.map_or(u, |x| x.max(u)));
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
            };
            let record: Record = {
                let (out, config, samples, done) =
                    (out.clone(), config.clone(), samples.clone(), done.clone());
                Arc::new(
                    move |suite: &str, conc: usize, i: usize, turn: usize, s: &Sample| {
                        let line = json!({
                            "kind": "request",
                            "config": config,
                            "suite": suite,
                            "concurrency": conc,
                            "request": i,
                            "turn": turn,
                            "ttft_s": s.ttft,
                            "prefill_tok_s": match (s.tokens_in, s.ttft) {
                                (Some(n), Some(t)) if t > 0.0 => Some(n as f64 / t),
                                _ => None,
                            },
                            "decode_tok_s": (s.tokens_out > 1 && s.decode_time > 0.0)
                                .then(|| (s.tokens_out - 1) as f64 / s.decode_time),
                            "tokens_in": s.tokens_in,
                            "tokens_out": s.tokens_out,
                            "total_s": s.total,
                            "error": s.error,
                        });
                        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(o, "{line}");
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(s.clone());
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(n, total, suite, conc);
                    },
                )
            };
            let wall = Instant::now();
            rt.block_on(run_level(
                t.clone(),
                a.clone(),
                Arc::new(model.clone()),
                suite.clone(),
                conc,
                requests,
                record,
            ));
            let wall = wall.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let _ = sampler.join();
            let s = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let ok: Vec<&Sample> = s.iter().filter(|x| x.error.is_none()).collect();
            let out_tokens: u64 = ok.iter().map(|x| x.tokens_out).sum();
            let (ttft, ttft_spread) = stats(ok.iter().filter_map(|x| x.ttft).collect());
            let (dec, dec_spread) = stats(
                ok.iter()
                    .filter(|x| x.tokens_out > 1 && x.decode_time > 0.0)
                    .map(|x| (x.tokens_out - 1) as f64 / x.decode_time)
                    .collect(),
            );
            let (pre, pre_spread) = stats(
                ok.iter()
                    .filter_map(|x| match (x.tokens_in, x.ttft) {
                        (Some(n), Some(t)) if t > 0.0 => Some(n as f64 / t),
                        _ => None,
                    })
                    .collect(),
            );
            let summary = json!({
                "kind": "summary",
                "config": config,
                "suite": suite,
                "concurrency": conc,
                "requests": s.len(),
                "errors": s.len() - ok.len(),
                "wall_s": wall,
                "aggregate_decode_tok_s": out_tokens as f64 / wall.max(1e-9),
                "ttft_s": {"median": ttft, "spread": ttft_spread},
                "decode_tok_s": {"median": dec, "spread": dec_spread},
                "prefill_tok_s": {"median": pre, "spread": pre_spread},
                "gpu_mem_peak_mib": *peak.lock().unwrap_or_else(|e| e.into_inner()),
            });
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            writeln!(o, "{summary}")?;
            o.flush()?;
        }
    }
    eprintln!(
        "\rbench: {total} requests in {:.1} s{}",
        t_start.elapsed().as_secs_f64(),
        a.output
            .as_ref()
            .map_or(String::new(), |p| format!(" → {}", p.display()))
    );
    Ok(())
}

/// `[#####.....] 12/40 medium ×4` on stderr.
fn progress(n: usize, total: usize, suite: &str, conc: usize) {
    let w = 30;
    let filled = (n * w).checked_div(total).unwrap_or(w).min(w);
    eprint!(
        "\r[{}{}] {n}/{total} {suite} ×{conc}   ",
        "#".repeat(filled),
        ".".repeat(w - filled)
    );
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC, from the system clock; the chat templates' strftime).
fn unix_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    engine::chat::strftime("%FT%TZ", secs as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let t = parse_url("http://localhost:9/api/").unwrap();
        assert_eq!((t.port, t.prefix.as_str()), (9, "/api"));
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("http://:80").is_err());
        assert!(parse_url("http://h:x").is_err());
    }

    #[test]
    fn prompts_are_deterministic_and_sized() {
        assert_eq!(prompt("medium", 3), prompt("medium", 3));
        assert_ne!(prompt("medium", 3), prompt("medium", 4));
        let n = |s: &str| prompt(s, 1).len();
        assert!(n("short") < 200 && (1900..2200).contains(&n("medium")));
        assert!((15_000..16_200).contains(&n("long")));
    }

    #[test]
    fn dates_are_civil() {
        let d = unix_date();
        assert!(d.starts_with("20") && d.len() == 20, "{d}");
        assert_eq!((&d[4..5], &d[10..11], &d[19..]), ("-", "T", "Z"), "{d}");
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (json!(2.0), json!(2.0)));
    }
}
