//! Soak load generator (issue 7), driven by `bench/soak.sh`, against a ccgate process that
//! runs separately (so its RSS, fds and children can be read from `/proc/<pid>`) with the
//! fake CLI `tests/fake-claude`.
//!
//! `--clients` workers send, for `--secs` seconds, a weighted mix of:
//! successes (non-streaming and streaming, on `/v1/chat/completions` and `/v1/messages`),
//! slow streams (`[[scenario:slow]]`) abandoned by the client after the first text deltas,
//! and failures: `rate_limit` → 429, `crash` → 502, `overloaded` → 503 (OpenAI) / 529
//! (Anthropic), each streaming or not. Meanwhile the rules file is reloaded every
//! `--reload-secs`, alternating a semantically identical edit (a changed comment, saved by
//! rename-over) and `kill -HUP`; VmRSS, open fds and the number of descendant processes of
//! ccgate are sampled every `--sample-secs`.
//!
//! Every response is checked: status as expected for its category, `Content-Type`, body
//! parses as JSON (with the right shape and, for successes, the right text) or as a
//! well-formed SSE stream ending in `data: [DONE]` (OpenAI) or `message_stop` / `error`
//! (Anthropic). At the end, after a settle, it asserts: no unexpected status or malformed
//! body, no descendant process of ccgate left, fd count back to the baseline (± margin),
//! RSS of the last third of the samples within `--rss-growth-pct` of the first third (samples
//! after `--rss-warmup-secs` of load only), and
//! no failed reload. Prints a report; exits 1 if any assertion failed.
//!
//! Alongside them, `--hostile-clients` workers send hostile requests (see [`HOSTILE`]):
//! cross-site "simple" POSTs (`Content-Type: text/plain`, `Origin: https://evil.example`),
//! JSON POSTs from that origin, and bogus model names (one that reads like an auth failure
//! with the fake CLI's `model_not_found` scenario, a NUL, 100k characters, spaces), and
//! `--slowloris-conns` slowloris connections (headers or a body trickled one piece a second)
//! that the server must close (or answer 408) within `--slowloris-close-secs`. What each
//! must get is set by `--expect-cross-site`, `--expect-bogus-model` (bench/soak.sh has the
//! table); anything else counts as unexpected.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

/// The fake CLI's default reply.
const REPLY: &str = "Hello from the fake CLI.";

#[derive(Debug, Parser)]
#[command(about = "ccgate soak load generator (see bench/soak.sh)")]
struct Args {
    /// Base URL of the running gateway, e.g. http://127.0.0.1:8000
    #[arg(long)]
    url: String,
    /// Pid of the ccgate process (for /proc sampling and SIGHUP).
    #[arg(long)]
    pid: i32,
    /// The rules file ccgate watches (edited in place by rename-over).
    #[arg(long)]
    rules: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Duration of the load in seconds.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// Seconds between two rules reloads (alternating file edit and SIGHUP).
    #[arg(long, default_value_t = 5)]
    reload_secs: u64,
    /// Seconds between two RSS / fd / children samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Allowed growth of mean RSS, last third of the samples over the first third (%),
    /// counting only the samples after `--rss-warmup-secs`.
    #[arg(long, default_value_t = 20.0)]
    rss_growth_pct: f64,
    /// Seconds of load before the RSS trend's samples begin (at most half the run): the
    /// allocator's working set fills during the first minute (per-thread arenas, the
    /// connection and body buffers of the largest requests) and then stays flat.
    #[arg(long, default_value_t = 60)]
    rss_warmup_secs: u64,
    /// Allowed difference between the final and the baseline fd count.
    #[arg(long, default_value_t = 4)]
    fd_margin: usize,
    /// Workers sending hostile requests (cross-site POSTs, bogus model names).
    #[arg(long, default_value_t = 2)]
    hostile_clients: usize,
    /// Statuses a cross-site POST may get (comma-separated).
    #[arg(long, default_value = "403,415")]
    expect_cross_site: String,
    /// Statuses a bogus model name may get (comma-separated).
    #[arg(long, default_value = "400")]
    expect_bogus_model: String,
    /// Slowloris connections held open at once.
    #[arg(long, default_value_t = 4)]
    slowloris_conns: usize,
    /// Seconds within which the server must close a slowloris connection (or answer 408).
    #[arg(long, default_value_t = 60)]
    slowloris_close_secs: u64,
    /// Connections that request a large stream and stop reading (issue 27).
    #[arg(long, default_value_t = 2)]
    stalled_readers: usize,
    /// Seconds a stalled reader reads nothing (more than ccgate's http.write_timeout).
    #[arg(long, default_value_t = 10)]
    stalled_wait_secs: u64,
}

/// The hostile requests, by category label: what is sent. Which statuses count as
/// expected comes from the command line (bench/soak.sh's table).
const HOSTILE: &[(&str, &str)] = &[
    (
        "cross_site text/plain",
        "POST, Content-Type: text/plain (a JSON body), Origin: https://evil.example",
    ),
    (
        "cross_site origin",
        "POST, Content-Type: application/json, Origin: https://evil.example",
    ),
    (
        "bogus_model auth_text",
        "model \"Not logged in\", user text [[scenario:model_not_found]]",
    ),
    ("bogus_model nul", "model \"son\\u0000net\""),
    ("bogus_model 100k", "model of 100,000 characters"),
    ("bogus_model spaces", "model \"sonnet status=200 kind=ok\""),
    (
        "array_heavy",
        "~1 MiB of [0,0,…] in 16 tool schemas (OpenAI) / ~800 KB in a tool_use input (Anthropic): 200, kept as text",
    ),
];

/// The `array_heavy` body: ~400,000 small values in JSON ccgate passes on as text.
fn array_heavy(api: Api, n: u64) -> String {
    let zeros = format!("[{}]", vec!["0"; 400_000].join(","));
    match api {
        Api::OpenAi => {
            // 16 tools of ~60 KB each (a tool definition may have 64 KiB).
            let small = format!("[{}]", vec!["0"; 30_000].join(","));
            let tools: Vec<String> = (0..16)
                .map(|i| format!(r#"{{"type":"function","function":{{"name":"t{i}","parameters":{{"type":"object","properties":{{"x":{{"enum":{small}}}}}}}}}}}"#))
                .collect();
            format!(
                r#"{{"model":"sonnet","messages":[{{"role":"user","content":"soak array {n}"}}],"tools":[{}]}}"#,
                tools.join(",")
            )
        }
        Api::Anthropic => format!(
            r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"soak array {n}"}},{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"t","input":{{"x":{zeros}}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}}]}}]}}"#
        ),
    }
}

/// The request of the `i`-th hostile category, for `api`.
fn hostile_request(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    api: Api,
    n: u64,
) -> reqwest::RequestBuilder {
    let plan = Plan {
        kind: Kind::Success,
        api,
        stream: false,
    };
    let mut b = body(&plan, n);
    let url = format!("{base}{}", api.path());
    let evil = "https://evil.example";
    match HOSTILE[i].0 {
        "cross_site text/plain" => client
            .post(url)
            .header("content-type", "text/plain")
            .header("origin", evil)
            .body(b.to_string()),
        "cross_site origin" => client.post(url).header("origin", evil).json(&b),
        "array_heavy" => client
            .post(url)
            .header("content-type", "application/json")
            .body(array_heavy(api, n)),
        name => {
            b["model"] = match name {
                "bogus_model auth_text" => {
                    b["messages"][0]["content"] =
                        format!("soak hostile {n} [[scenario:model_not_found]]").into();
                    "Not logged in".into()
                }
                "bogus_model nul" => "son\u{0}net".into(),
                "bogus_model 100k" => "m".repeat(100_000).into(),
                _ => "sonnet status=200 kind=ok".into(),
            };
            client.post(url).json(&b)
        }
    }
}

fn statuses(list: &str) -> Vec<u16> {
    list.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// One slowloris connection: the request line and headers (or, with `body`, a whole head
/// and then the body) trickled one piece a second. Ok(0) when the server closed it, Ok(408)
/// when it answered that; Bad when it was still open after `limit`, or answered otherwise.
async fn slowloris(addr: &str, body: bool, limit: Duration, deadline: Instant) -> Option<Outcome> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Some(Outcome::Bad(format!("connect: {e}"))),
    };
    let head = if body {
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    } else {
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return Some(Outcome::Ok(0));
    }
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut i = 0u64;
    loop {
        if Instant::now() >= deadline {
            return None; // the soak ended first: not counted either way
        }
        if start.elapsed() >= limit {
            return Some(Outcome::Bad(format!(
                "still open after {} s",
                limit.as_secs()
            )));
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Outcome::Ok(0)),
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let status: u16 = text
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return Some(if status == 408 {
                    Outcome::Ok(408)
                } else {
                    Outcome::Bad(format!("answered {:?}", text.lines().next().unwrap_or("")))
                });
            }
            Err(_) => {
                i += 1;
                let piece = if body {
                    " ".to_string()
                } else {
                    format!("X-Slow-{i}: 1\r\n")
                };
                if s.write_all(piece.as_bytes()).await.is_err() {
                    return Some(Outcome::Ok(0));
                }
            }
        }
    }
}

/// One stalled reader: a streaming request for the fake CLI's `flood` scenario on a
/// connection with a 4 KiB receive buffer, nothing read for `wait`; then what the socket
/// still holds is drained. Ok(0) when the stream was cut (no `[DONE]`, the connection
/// closed), Bad when it ran to its end or stayed open.
async fn stalled_reader(addr: &str, n: u64, wait: Duration) -> Outcome {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return Outcome::Bad(format!("bad address {addr}"));
    };
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return Outcome::Bad(format!("socket: {e}")),
    };
    let _ = sock.set_recv_buffer_size(4096);
    let mut s = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Bad(format!("connect: {e}")),
    };
    let body = json!({"model": "sonnet", "stream": true, "messages": [
        {"role": "user", "content": format!("soak stalled {n} [[scenario:flood]]")}]})
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(head.as_bytes()).await {
        return Outcome::Bad(format!("write: {e}"));
    }
    tokio::time::sleep(wait).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    match drained {
        Err(_) => Outcome::Bad("still open 30 s after the stall".into()),
        Ok(()) if text.contains("[DONE]") => Outcome::Bad("the stream was not cut".into()),
        Ok(()) if !text.starts_with("HTTP/1.1 200") => {
            Outcome::Bad(format!("answered {:?}", text.lines().next().unwrap_or("")))
        }
        Ok(()) => Outcome::Ok(0),
    }
}

/// The two API flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::OpenAi => "/v1/chat/completions",
            Api::Anthropic => "/v1/messages",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }
}

/// What a request is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Success,
    Abandon,
    RateLimit,
    Crash,
    Overloaded,
}

impl Kind {
    fn scenario(self) -> Option<&'static str> {
        match self {
            Kind::Success => None,
            Kind::Abandon => Some("slow"),
            Kind::RateLimit => Some("rate_limit"),
            Kind::Crash => Some("crash"),
            Kind::Overloaded => Some("overloaded"),
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::Abandon => "abandoned_stream",
            Kind::RateLimit => "rate_limit",
            Kind::Crash => "crash",
            Kind::Overloaded => "overloaded",
        }
    }
    /// The status the gateway must answer with.
    fn expected_status(self, api: Api) -> u16 {
        match (self, api) {
            (Kind::Success | Kind::Abandon, _) => 200,
            (Kind::RateLimit, _) => 429,
            (Kind::Crash, _) => 502,
            (Kind::Overloaded, Api::OpenAi) => 503,
            (Kind::Overloaded, Api::Anthropic) => 529,
        }
    }
}

/// One request of the mix.
#[derive(Debug, Clone, Copy)]
struct Plan {
    kind: Kind,
    api: Api,
    stream: bool,
}

impl Plan {
    fn category(&self) -> String {
        format!(
            "{:<16} {:<9} {}",
            self.kind.label(),
            self.api.label(),
            if self.stream { "stream" } else { "json" }
        )
    }
}

/// Weighted mix (out of 20): 12 successes, 2 abandoned slow streams, 2 each failure kind.
fn pick(rng: &mut u64) -> Plan {
    let r = next(rng);
    let kind = match r % 20 {
        0..=11 => Kind::Success,
        12..=13 => Kind::Abandon,
        14..=15 => Kind::RateLimit,
        16..=17 => Kind::Crash,
        _ => Kind::Overloaded,
    };
    let api = if (r >> 8) & 1 == 0 {
        Api::OpenAi
    } else {
        Api::Anthropic
    };
    let stream = kind == Kind::Abandon || (r >> 9) & 1 == 0;
    Plan { kind, api, stream }
}

/// xorshift64*: deterministic per client, no extra dependency.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn body(plan: &Plan, n: u64) -> Value {
    let mut text = format!("soak request {n}: say hello.");
    if let Some(s) = plan.kind.scenario() {
        text.push_str(&format!(" [[scenario:{s}]]"));
    }
    match plan.api {
        Api::OpenAi => serde_json::json!({
            "model": "sonnet",
            "messages": [{"role": "user", "content": text}],
            "stream": plan.stream,
        }),
        Api::Anthropic => serde_json::json!({
            "model": "sonnet",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": text}],
            "stream": plan.stream,
        }),
    }
}

/// Splits an SSE body into (event name, data) pairs; `Err` on a line SSE does not allow
/// here (only `event:`, `data:`, `id:`, `retry:` and `:` comments are expected).
fn sse_events(body: &str) -> anyhow::Result<Vec<(Option<String>, String)>> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            } else if line.starts_with(':') || line.starts_with("id:") || line.starts_with("retry:")
            {
            } else {
                bail!("unexpected SSE line {line:?}");
            }
        }
        if !data.is_empty() || name.is_some() {
            out.push((name, data.join("\n")));
        }
    }
    Ok(out)
}

/// Checks a complete streamed body; returns the kind of ending for the report.
fn check_sse(plan: &Plan, body: &str) -> anyhow::Result<()> {
    let events = sse_events(body)?;
    let Some(last) = events.last() else {
        bail!("empty stream");
    };
    let mut text = String::new();
    let mut error_seen = false;
    match plan.api {
        Api::OpenAi => {
            if last.1 != "[DONE]" {
                bail!("stream does not end with data: [DONE]");
            }
            for (_, data) in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(data).context("SSE data is not JSON")?;
                if v.get("error").is_some() {
                    error_seen = true;
                } else if v["object"] != "chat.completion.chunk" {
                    bail!("unexpected chunk {data}");
                } else if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(t);
                }
            }
        }
        Api::Anthropic => {
            let end = last.0.as_deref().unwrap_or("");
            if end != "message_stop" && end != "error" {
                bail!("stream ends with event {end:?}, not message_stop or error");
            }
            for (name, data) in &events {
                let v: Value = serde_json::from_str(data).context("SSE data is not JSON")?;
                if v["type"].as_str() != name.as_deref() {
                    bail!("event name {name:?} differs from data type {}", v["type"]);
                }
                if name.as_deref() == Some("error") {
                    error_seen = true;
                } else if let Some(t) = v["delta"]["text"].as_str() {
                    text.push_str(t);
                }
            }
        }
    }
    if error_seen {
        bail!("stream with status 200 ended in an error event");
    }
    if text != REPLY {
        bail!("streamed text {text:?}, expected {REPLY:?}");
    }
    Ok(())
}

/// Checks a complete JSON body for its plan and status.
fn check_json(plan: &Plan, status: u16, body: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(body).context("body is not JSON")?;
    if status == 200 {
        let text = match plan.api {
            Api::OpenAi => v["choices"][0]["message"]["content"].as_str(),
            Api::Anthropic => v["content"][0]["text"].as_str(),
        };
        if text != Some(REPLY) {
            bail!("unexpected success body {body}");
        }
    } else {
        let ok = match plan.api {
            Api::OpenAi => v["error"]["message"].is_string(),
            Api::Anthropic => v["type"] == "error" && v["error"]["type"].is_string(),
        };
        if !ok {
            bail!(
                "error body not in the {} error shape: {body}",
                plan.api.label()
            );
        }
    }
    Ok(())
}

/// Outcome of one request, for the tallies.
enum Outcome {
    /// Expected status and well-formed body.
    Ok(u16),
    /// Unexpected status, malformed body, transport error.
    Bad(String),
}

async fn one_request(client: &reqwest::Client, base: &str, plan: &Plan, n: u64) -> Outcome {
    let res = client
        .post(format!("{base}{}", plan.api.path()))
        .json(&body(plan, n))
        .send()
        .await;
    let resp = match res {
        Ok(r) => r,
        Err(e) => return Outcome::Bad(format!("transport: {e}")),
    };
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let expected = plan.kind.expected_status(plan.api);
    if plan.kind == Kind::Abandon {
        // Read until the second text delta has arrived, then drop the response: the
        // connection closes mid-stream and ccgate must kill the CLI run.
        if status != 200 || !ctype.starts_with("text/event-stream") {
            return Outcome::Bad(format!("status {status} ({ctype}) for a slow stream"));
        }
        let mut stream = resp.bytes_stream();
        let mut seen = String::new();
        let want = if n % 2 == 0 { " from" } else { "Hello" };
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => return Outcome::Bad(format!("slow stream broke early: {e}")),
            }
            if seen.contains(want) {
                return Outcome::Ok(status);
            }
        }
        return Outcome::Bad(format!("slow stream ended before {want:?}: {seen}"));
    }
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::Bad(format!("status {status}: reading body: {e}")),
    };
    if status != expected {
        return Outcome::Bad(format!(
            "status {status}, expected {expected}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    let checked = if ctype.starts_with("text/event-stream") {
        if !plan.stream || status != 200 {
            Err(anyhow::anyhow!("SSE for a non-streaming request or error"))
        } else {
            check_sse(plan, &text)
        }
    } else if ctype.starts_with("application/json") {
        if plan.stream && status == 200 {
            Err(anyhow::anyhow!("JSON success for a streaming request"))
        } else {
            check_json(plan, status, &text)
        }
    } else {
        Err(anyhow::anyhow!("unexpected content-type {ctype:?}"))
    };
    match checked {
        Ok(()) => Outcome::Ok(status),
        Err(e) => Outcome::Bad(format!(
            "status {status}: {e:#}; body: {}",
            text.chars().take(300).collect::<String>()
        )),
    }
}

/// Tallies shared by the clients.
#[derive(Default)]
struct Tally {
    /// category → status → count (good responses)
    good: BTreeMap<String, BTreeMap<u16, u64>>,
    /// category → count of bad responses
    bad: BTreeMap<String, u64>,
    /// the first few problems, verbatim
    samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, category: String, n: u64, outcome: Outcome) {
        match outcome {
            Outcome::Ok(status) => {
                *self
                    .good
                    .entry(category)
                    .or_default()
                    .entry(status)
                    .or_default() += 1;
            }
            Outcome::Bad(why) => {
                if self.samples.len() < 20 {
                    self.samples.push(format!("{category} #{n}: {why}"));
                }
                *self.bad.entry(category).or_default() += 1;
            }
        }
    }

    /// Prints the table; returns (good, bad) totals.
    fn print(&self) -> (u64, u64) {
        println!("  {:<40} {:>7} {:>5}  statuses", "category", "ok", "bad");
        let mut cats: Vec<&String> = self.good.keys().chain(self.bad.keys()).collect();
        cats.sort();
        cats.dedup();
        for cat in cats {
            let good = self.good.get(cat);
            let n: u64 = good.map(|m| m.values().sum()).unwrap_or(0);
            let statuses = good
                .map(|m| {
                    m.iter()
                        .map(|(s, c)| match s {
                            0 => format!("closed×{c}"),
                            s => format!("{s}×{c}"),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            println!(
                "  {cat:<40} {n:>7} {:>5}  {statuses}",
                self.bad.get(cat).copied().unwrap_or(0)
            );
        }
        for s in &self.samples {
            println!("  ! {s}");
        }
        (
            self.good.values().flat_map(|m| m.values()).sum(),
            self.bad.values().sum(),
        )
    }
}

/// Parent pid of every process, from /proc/*/stat.
fn ppids() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// All descendants (children, grandchildren …) of `root`.
fn descendants(root: i32) -> Vec<i32> {
    let map = ppids();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in map {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(c) = children.get(&p) {
            out.extend(c);
            todo.extend(c);
        }
    }
    out
}

/// Direct children of `root` (the CLI runs; their own children are `sleep`, `sed` …).
fn direct_children(root: i32) -> usize {
    ppids().values().filter(|p| **p == root).count()
}

fn describe(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    format!("{pid}: {}", cmd.trim())
}

fn rss_kb(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn fd_count(pid: i32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// One /proc sample of the ccgate process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss_kb: u64,
    fds: usize,
    children: usize,
}

fn sample(pid: i32, start: Instant) -> anyhow::Result<Sample> {
    Ok(Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kb: rss_kb(pid)?,
        fds: fd_count(pid)?,
        children: descendants(pid).len(),
    })
}

/// Polls `cond` every 100 ms for at most `limit`; returns whether it held.
async fn settle(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reload counters from /metrics: (result label, value) pairs.
async fn reload_counters(base: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let client = reqwest::Client::new();
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    drop(client);
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ccgate_rules_reloads_total{") {
            let (labels, value) = rest.split_once("} ").context("metrics line")?;
            out.push((labels.to_string(), value.trim().parse()?));
        }
    }
    Ok(out)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.url.trim_end_matches('/').to_string();
    let pid = args.pid;
    let mut failures: Vec<String> = Vec::new();

    // Ready: /ready answers 200 once the start probe succeeded; then no CLI may run.
    let probe_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = probe_client.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(probe_client);
    if !ready {
        bail!("ccgate at {base} did not become ready within 10 s");
    }
    settle(Duration::from_secs(5), || descendants(pid).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let baseline = sample(pid, t0)?;
    let reloads_before = reload_counters(&base).await?;
    println!(
        "soak: {} clients for {} s against {base} (ccgate pid {pid}); baseline: RSS {}, {} fds, {} children",
        args.clients,
        args.secs,
        mib(baseline.rss_kb),
        baseline.fds,
        baseline.children
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);

    let mut clients = Vec::new();
    for c in 0..args.clients {
        let (stop, tally, counter, base) =
            (stop.clone(), tally.clone(), counter.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            // One client (connection pool) per worker; dropped at the end of the task.
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64 + 1) * 0x1000_0001);
            // Bounded by time (deadline / stop) and, as a belt, by count.
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let plan = pick(&mut rng);
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let outcome = one_request(&client, &base, &plan, n).await;
                tally
                    .lock()
                    .expect("tally")
                    .add(plan.category(), n, outcome);
            }
        }));
    }

    // Hostile workers: each hostile category in turn, both APIs; a tally of their own.
    let hostile_tally = Arc::new(Mutex::new(Tally::default()));
    let (cross_ok, model_ok) = (
        statuses(&args.expect_cross_site),
        statuses(&args.expect_bogus_model),
    );
    for c in 0..args.hostile_clients {
        let (stop, tally, counter, base) = (
            stop.clone(),
            hostile_tally.clone(),
            counter.clone(),
            base.clone(),
        );
        let (cross_ok, model_ok) = (cross_ok.clone(), model_ok.clone());
        let array_ok = vec![200u16];
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            for round in 0..1_000_000usize {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let i = (round + c) % HOSTILE.len();
                let api = if (round / HOSTILE.len()) % 2 == 0 {
                    Api::OpenAi
                } else {
                    Api::Anthropic
                };
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let want = if HOSTILE[i].0.starts_with("cross_site") {
                    &cross_ok
                } else if HOSTILE[i].0 == "array_heavy" {
                    &array_ok
                } else {
                    &model_ok
                };
                let outcome = match hostile_request(&client, &base, i, api, n).send().await {
                    Ok(r) if want.contains(&r.status().as_u16()) => {
                        Outcome::Ok(r.status().as_u16())
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        Outcome::Bad(format!(
                            "status {status}, expected one of {want:?}: {}",
                            text.chars().take(200).collect::<String>()
                        ))
                    }
                    Err(e) => Outcome::Bad(format!("transport: {e}")),
                };
                let cat = format!("hostile {:<24} {}", HOSTILE[i].0, api.label());
                tally.lock().expect("tally").add(cat, n, outcome);
                // Hostile clients are a minority of the load.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let addr = base.trim_start_matches("http://").to_string();
    for c in 0..args.slowloris_conns {
        let (stop, tally, addr) = (stop.clone(), hostile_tally.clone(), addr.clone());
        let limit = Duration::from_secs(args.slowloris_close_secs.max(1));
        clients.push(tokio::spawn(async move {
            for round in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let body = (round + c as u64) % 2 == 1;
                let Some(outcome) = slowloris(&addr, body, limit, deadline).await else {
                    break;
                };
                let cat = format!(
                    "hostile slowloris {}",
                    if body { "body" } else { "headers" }
                );
                tally.lock().expect("tally").add(cat, round, outcome);
            }
        }));
    }

    // Stalled readers: a streamed answer of ~10 MB whose client reads nothing; the server
    // must close the connection after http.write_timeout (the soak sets 5 s).
    for c in 0..args.stalled_readers {
        let (stop, tally, addr) = (stop.clone(), hostile_tally.clone(), addr.clone());
        let wait = Duration::from_secs(args.stalled_wait_secs.max(1));
        clients.push(tokio::spawn(async move {
            for round in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() + wait >= deadline {
                    break;
                }
                let outcome = stalled_reader(&addr, c as u64 * 1_000_000 + round, wait).await;
                tally
                    .lock()
                    .expect("tally")
                    .add("hostile stalled_reader".into(), round, outcome);
            }
        }));
    }

    // Reloads: alternately a semantically identical edit (rename-over) and SIGHUP.
    let original_rules = std::fs::read_to_string(&args.rules)
        .with_context(|| format!("read {}", args.rules.display()))?;
    let reloader = {
        let (stop, rules_path, every) = (
            stop.clone(),
            args.rules.clone(),
            Duration::from_secs(args.reload_secs.max(1)),
        );
        tokio::spawn(async move {
            let (mut edits, mut hups) = (0u64, 0u64);
            for i in 0..100_000u64 {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                if i % 2 == 0 {
                    let text = format!("{original_rules}\n# soak edit {i}: no semantic change\n");
                    let tmp = rules_path.with_extension("yaml.soak-tmp");
                    if std::fs::write(&tmp, text).is_ok()
                        && std::fs::rename(&tmp, &rules_path).is_ok()
                    {
                        edits += 1;
                    }
                } else if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .is_ok()
                {
                    hups += 1;
                }
            }
            (edits, hups)
        })
    };

    // Samples every sample_secs during the load.
    let mut samples = vec![sample(pid, start)?];
    let (mut max_children, mut max_direct) = (0usize, 0usize);
    let every = Duration::from_secs(args.sample_secs.max(1));
    let mut next_sample = start + every;
    let mut next_peek = start;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if now >= next_peek {
            // Children more often than RSS: the peak is short-lived.
            max_children = max_children.max(descendants(pid).len());
            max_direct = max_direct.max(direct_children(pid));
            next_peek = now + Duration::from_secs(1);
        }
        if now >= next_sample && now < deadline {
            match sample(pid, start) {
                Ok(s) => samples.push(s),
                Err(e) => {
                    failures.push(format!("ccgate process gone? {e:#}"));
                    break;
                }
            }
            next_sample += every;
        }
    }
    samples.push(sample(pid, start)?);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        if tokio::time::timeout(Duration::from_secs(40), c)
            .await
            .is_err()
        {
            failures.push("a client did not finish within 40 s".into());
        }
    }
    let (edits, hups) = reloader.await.unwrap_or((0, 0));
    let load_secs = start.elapsed().as_secs_f64();

    // Settle: no CLI process may survive its request; connections close.
    let settle_start = Instant::now();
    let no_children = settle(Duration::from_secs(5), || descendants(pid).is_empty()).await;
    let children_settle = settle_start.elapsed().as_secs_f64();
    let leftovers = descendants(pid);
    let fds_back = settle(Duration::from_secs(5), || {
        fd_count(pid).is_ok_and(|n| n <= baseline.fds + args.fd_margin)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = sample(pid, t0)?;
    let reloads_after = reload_counters(&base).await?;

    // ------------------------------------------------------------------ report
    let t = tally.lock().expect("tally");
    let h = hostile_tally.lock().expect("tally");
    let total_good: u64 = t.good.values().flat_map(|m| m.values()).sum();
    let total_bad: u64 = t.bad.values().sum();
    let hostile_good: u64 = h.good.values().flat_map(|m| m.values()).sum();
    let hostile_bad: u64 = h.bad.values().sum();
    println!();
    println!(
        "requests: {} in {load_secs:.0} s ({:.1}/s), {total_bad} unexpected",
        total_good + total_bad,
        (total_good + total_bad) as f64 / load_secs
    );
    t.print();
    if total_bad > 0 {
        failures.push(format!(
            "{total_bad} unexpected status / malformed body / transport error(s)"
        ));
    }
    println!();
    println!(
        "hostile: {} requests / connections, {hostile_bad} unexpected (expected: cross-site {:?}, bogus model {:?}, slowloris closed or 408 within {} s)",
        hostile_good + hostile_bad,
        cross_ok,
        model_ok,
        args.slowloris_close_secs
    );
    h.print();
    if hostile_bad > 0 {
        failures.push(format!(
            "{hostile_bad} unexpected answer(s) to hostile clients"
        ));
    }
    if total_good == 0 {
        failures.push("no successful request at all".into());
    }

    let diff = |after: &[(String, f64)], label: &str| {
        let get = |v: &[(String, f64)]| {
            v.iter()
                .filter(|(l, _)| l.contains(label))
                .map(|(_, x)| *x)
                .sum::<f64>()
        };
        get(after) - get(&reloads_before)
    };
    let reload_total: f64 = reloads_after.iter().map(|(_, v)| v).sum::<f64>()
        - reloads_before.iter().map(|(_, v)| v).sum::<f64>();
    // A reload that found the same rules is "unchanged"; both count as good.
    let reload_ok =
        diff(&reloads_after, "result=\"success\"") + diff(&reloads_after, "result=\"unchanged\"");
    let sent = (edits + hups) as f64;
    println!();
    println!(
        "reloads: {edits} file edits + {hups} SIGHUPs sent; ccgate counted {reload_total} reloads, {reload_ok} good"
    );
    println!("  /metrics after: {reloads_after:?}");
    if reload_total - reload_ok > 0.0 {
        failures.push(format!(
            "{} reload(s) did not succeed",
            reload_total - reload_ok
        ));
    }
    if reload_ok < sent {
        failures.push(format!(
            "fewer good reloads ({reload_ok}) than edits + SIGHUPs sent ({sent})"
        ));
    }
    // An edit may be seen as two events (temp file write, rename); far more means
    // reloads are triggered by something else (see bench/README.md, "reload storm").
    if reload_total > 3.0 * sent + 2.0 {
        failures.push(format!(
            "reload storm: {reload_total} reloads for {sent} edits + SIGHUPs"
        ));
    }

    println!();
    println!("process (pid {pid}):");
    println!(
        "  descendants: peak {max_children} during load, of which direct children (CLI runs, cli.max_concurrent 8, plus runs being reaped) {max_direct}; {} after settle{}",
        leftovers.len(),
        if no_children {
            format!(" (reached 0 in {children_settle:.1} s)")
        } else {
            String::new()
        }
    );
    if !no_children {
        for p in &leftovers {
            println!("    leaked: {}", describe(*p));
        }
        failures.push(format!("{} leaked descendant process(es)", leftovers.len()));
    }
    println!(
        "  fds: baseline {}, peak during load {}, end {} (margin ±{})",
        baseline.fds,
        samples.iter().map(|s| s.fds).max().unwrap_or(0),
        end.fds,
        args.fd_margin
    );
    if !fds_back || end.fds > baseline.fds + args.fd_margin {
        failures.push(format!(
            "fd count {} not back to baseline {} ± {}",
            end.fds, baseline.fds, args.fd_margin
        ));
    }
    // The first sample (t = 0) is taken before the load, and RSS rises during the first
    // minute of it while the allocator's working set fills (bench/README.md, "Soak"): the
    // trend compares samples after the warm-up only, so it shows growth that goes on.
    let warmup = args.rss_warmup_secs.min(args.secs / 2) as f64;
    let rss: Vec<u64> = samples
        .iter()
        .skip(1)
        .filter(|s| s.at >= warmup)
        .map(|s| s.rss_kb)
        .collect();
    let rss = if rss.is_empty() {
        vec![baseline.rss_kb]
    } else {
        rss
    };
    let third = (rss.len() / 3).max(1);
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let first = mean(&rss[..third]);
    let last = mean(&rss[rss.len() - third..]);
    let growth = (last / first - 1.0) * 100.0;
    let loaded: Vec<u64> = samples.iter().skip(1).map(|s| s.rss_kb).collect();
    let peak = loaded.iter().copied().max().unwrap_or(0);
    let mut sorted = if loaded.is_empty() {
        rss.clone()
    } else {
        loaded
    };
    sorted.sort_unstable();
    println!(
        "  RSS: idle before load {}, under load median {} / peak {}, idle after load {}",
        mib(baseline.rss_kb),
        mib(sorted[sorted.len() / 2]),
        mib(peak),
        mib(end.rss_kb)
    );
    println!(
        "  RSS under load after the {warmup:.0} s warm-up, mean of first third {} vs last third {}: {growth:+.1}% (limit +{}%)",
        mib(first as u64),
        mib(last as u64),
        args.rss_growth_pct
    );
    println!(
        "  samples (s: RSS, fds, children): {}",
        samples
            .iter()
            .map(|s| format!("{:.0}: {}, {}, {}", s.at, mib(s.rss_kb), s.fds, s.children))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    if growth > args.rss_growth_pct {
        failures.push(format!(
            "RSS grew {growth:.1}% from the first to the last third after the warm-up"
        ));
    }

    println!();
    if failures.is_empty() {
        println!("SOAK PASSED");
        Ok(())
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        println!("SOAK FAILED");
        std::process::exit(1)
    }
}
