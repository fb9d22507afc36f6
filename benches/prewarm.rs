//! Pre-warmed pool benchmark: ccgate (in-process) → the REAL `claude` CLI → the loopback
//! mock Messages API (in-process, `tests/it/mock_api.rs`). Measures time to the first SSE
//! text delta (TTFT) and total latency of `POST /v1/messages` (stream), cold
//! (`cli.prewarm: 0`) vs pre-warmed (`cli.prewarm: 4`), at concurrency 1 and 4, in one run,
//! and the resident memory and CPU of an idle pre-warmed process. Two request shapes: a
//! plain one (`prewarm_model`, no system prompt) and an agent's first turn (`POST
//! /v1/chat/completions`, stream: a system prompt, two tools, another model than
//! `prewarm_model`, effort and a JSON Schema), which a pre-warmed process takes with its
//! settings given over the control channel.
//!
//! Run: `bench/prewarm.sh` (or `cargo bench --bench prewarm`). The CLI is taken from
//! `CCGATE_REAL_CLAUDE`, else `/work/cache/claude-code/node_modules/.bin/claude`; without
//! one the benchmark says so and exits 0. Knobs: `PREWARM_BENCH_N` (requests per cell,
//! default 24), `PREWARM_BENCH_SIZE` (pool size, default 4).

#[path = "../tests/it/mock_api.rs"]
#[allow(dead_code)]
mod mock_api;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ccgate::backend::Backend;
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;

const MODEL: &str = "claude-sonnet-4-5";
/// The agent's model: not `prewarm_model`, so a pre-warmed process gets it by `set_model`.
const AGENT_MODEL: &str = "claude-haiku-4-5";
const SCHEMA_ANSWER: &str = r#"{"city":"Paris"}"#;

/// The request a cell sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Plain,
    Agent,
}
const MAX_CONCURRENT: usize = 4;

fn cli_path() -> Option<PathBuf> {
    let p = std::env::var_os("CCGATE_REAL_CLAUDE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/cache/claude-code/node_modules/.bin/claude"));
    p.is_file().then_some(p)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    base: String,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_server(cli: &std::path::Path, api_url: &str, prewarm: usize) -> Server {
    let home = tempfile::tempdir().expect("home");
    let work = tempfile::tempdir().expect("workdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        // No file: the embedded rules (probe every 600 s: one probe at start only).
        rules: home.path().join("no-rules.yaml"),
        watch_rules: false,
        ..Config::default()
    };
    let c = &mut config.cli;
    c.command = cli.to_path_buf();
    c.workdir = Some(work.path().to_path_buf());
    c.max_concurrent = MAX_CONCURRENT;
    c.prewarm = prewarm;
    // One process per request, as the direct path runs it (continuing conversations in
    // kept processes is what benches/conversation.rs measures).
    c.keep_conversations = 0;
    c.prewarm_model = Some(MODEL.into());
    c.start_timeout = 20.0;
    c.inactivity_timeout = 20.0;
    c.total_timeout = 60.0;
    let home_path = home.path().display().to_string();
    for (k, v) in [
        ("HOME", home_path.clone()),
        ("CLAUDE_CONFIG_DIR", format!("{home_path}/.claude")),
        ("ANTHROPIC_BASE_URL", api_url.to_string()),
        ("ANTHROPIC_API_KEY", "test-key".into()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("API_TIMEOUT_MS", "20000".into()),
    ] {
        c.env.insert(k.into(), v);
    }
    let settings = config.compile().expect("bench config is valid");
    let backend = Backend::new(settings.cli_settings(work.path().to_path_buf()));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = AppState::new(settings, Rules::embedded(), backend);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ccgate::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        base,
        state,
        stop,
        task,
        _dirs: vec![home, work],
    }
}

/// An agent's first turn: system prompt, two tools, another model, effort, a schema.
fn agent_body(i: usize) -> serde_json::Value {
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {
            "name": name,
            "description": format!("{name} something"),
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }})
    };
    serde_json::json!({
        "model": AGENT_MODEL,
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are a travel agent. Answer with the city."},
            {"role": "user", "content": format!("Which city? #{i}")}
        ],
        "tools": [tool("lookup"), tool("search")],
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
        }},
    })
}

/// Whether an OpenAI stream so far holds a non-empty content delta.
fn has_content(all: &str) -> bool {
    all.match_indices("\"content\":\"")
        .any(|(i, m)| !all[i + m.len()..].starts_with('"'))
}

/// (time to first text delta, total) of one streaming request.
async fn one_request(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    i: usize,
) -> (Duration, Duration) {
    let (path, body) = match shape {
        Shape::Plain => (
            "/v1/messages",
            serde_json::json!({
                "model": MODEL,
                "max_tokens": 64,
                "stream": true,
                "messages": [{"role": "user", "content": format!("Say hello #{i}")}],
            }),
        ),
        Shape::Agent => ("/v1/chat/completions", agent_body(i)),
    };
    let t0 = Instant::now();
    let mut r = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "request failed");
    let mut all = String::new();
    let mut first = None;
    while let Some(c) = r.chunk().await.expect("chunk") {
        all.push_str(&String::from_utf8_lossy(&c));
        let started = match shape {
            Shape::Plain => all.contains("text_delta"),
            Shape::Agent => has_content(&all),
        };
        if first.is_none() && started {
            first = Some(t0.elapsed());
        }
    }
    let done = match shape {
        Shape::Plain => all.contains("message_stop"),
        Shape::Agent => all.contains("[DONE]") && all.contains("Paris"),
    };
    assert!(done, "incomplete stream: {all}");
    (first.unwrap_or_else(|| t0.elapsed()), t0.elapsed())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Cell {
    mode: &'static str,
    shape: Shape,
    conc: usize,
    think: Duration,
    n: usize,
    ttft_p50: f64,
    ttft_p95: f64,
    total_p50: f64,
    total_p95: f64,
    hits: u64,
    misses: u64,
}

async fn run_cell(
    s: &Server,
    (mode, shape): (&'static str, Shape),
    conc: usize,
    n: usize,
    think: Duration,
) -> Cell {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let before = s.state.backend.stats().snapshot();
    let per_worker = n.div_ceil(conc);
    let mut workers = Vec::new();
    for w in 0..conc {
        let client = client.clone();
        let base = s.base.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..per_worker {
                out.push(one_request(&client, &base, shape, w * 1000 + k).await);
                tokio::time::sleep(think).await;
            }
            out
        }));
    }
    let mut ttft = Vec::new();
    let mut total = Vec::new();
    for w in workers {
        for (a, b) in w.await.expect("worker") {
            ttft.push(a.as_secs_f64());
            total.push(b.as_secs_f64());
        }
    }
    ttft.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    let after = s.state.backend.stats().snapshot();
    Cell {
        mode,
        shape,
        conc,
        think,
        n: ttft.len(),
        ttft_p50: pct(&ttft, 0.5),
        ttft_p95: pct(&ttft, 0.95),
        total_p50: pct(&total, 0.5),
        total_p95: pct(&total, 0.95),
        hits: after.pool_hits_total - before.pool_hits_total,
        misses: after.pool_misses_total - before.pool_misses_total,
    }
}

/// The sum of `of(pid, stat fields after the command)` over the processes of group `pgid`.
fn sum_over_group(pgid: u32, of: impl Fn(u32, &[&str]) -> u64) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut sum = 0;
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        // after ')': state(0) ppid(1) pgrp(2) … utime(11) stime(12)
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(pgid) {
            sum += of(pid, &f);
        }
    }
    sum
}

/// Resident memory (kB) of a whole process group.
fn group_rss_kb(pgid: u32) -> u64 {
    sum_over_group(pgid, |pid, _| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    })
}

/// CPU time (user + system, in clock ticks) of a whole process group.
fn group_cpu_ticks(pgid: u32) -> u64 {
    sum_over_group(pgid, |_, f| {
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        tick(11) + tick(12)
    })
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn wait_pool(s: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.state.backend.pool_pids().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let Some(cli) = cli_path() else {
        println!("prewarm bench SKIPPED: real Claude CLI not found (set CCGATE_REAL_CLAUDE)");
        return;
    };
    let n = env_usize("PREWARM_BENCH_N", 24);
    let size = env_usize("PREWARM_BENCH_SIZE", MAX_CONCURRENT).min(MAX_CONCURRENT);
    let mock = mock_api::MockApi::start().await;
    // Plain requests get text; the agent's (which offer StructuredOutput) the schema's
    // answer.
    let api = mock.url(&format!("schema:{SCHEMA_ANSWER}"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "prewarm bench: {} ({}), {n} requests per cell, pool size {size}, max_concurrent {MAX_CONCURRENT}, {cores} cores",
        cli.display(),
        String::from_utf8_lossy(
            &std::process::Command::new(&cli)
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim()
    );

    let mut cells = Vec::new();
    let mut rss = Vec::new();
    let mut idle_cpu = Vec::new();
    for (mode, prewarm) in [("cold", 0), ("pre-warmed", size)] {
        let s = start_server(&cli, &api, prewarm).await;
        // Warm the page cache and the first probe; let the pool fill and settle.
        let client = reqwest::Client::new();
        let _ = one_request(&client, &s.base, Shape::Plain, 0).await;
        wait_pool(&s, prewarm).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if prewarm > 0 {
            let pids = s.state.backend.pool_pids();
            for &pid in &pids {
                rss.push(group_rss_kb(pid));
            }
            // Idle CPU: the groups' CPU time over a quiet window.
            let window = Duration::from_secs(10);
            let before: Vec<u64> = pids.iter().map(|&p| group_cpu_ticks(p)).collect();
            tokio::time::sleep(window).await;
            let hz = clock_ticks_per_second();
            for (&pid, b) in pids.iter().zip(before) {
                if s.state.backend.pool_pids().contains(&pid) {
                    let ticks = group_cpu_ticks(pid).saturating_sub(b);
                    idle_cpu.push(100.0 * ticks as f64 / hz / window.as_secs_f64());
                }
            }
        }
        for (shape, conc, think) in [
            (Shape::Plain, 1, Duration::ZERO),
            (Shape::Plain, 1, Duration::from_secs(1)),
            (Shape::Plain, MAX_CONCURRENT, Duration::ZERO),
            (Shape::Agent, 1, Duration::from_secs(1)),
        ] {
            wait_pool(&s, prewarm).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cells.push(run_cell(&s, (mode, shape), conc, n, think).await);
        }
        let _ = s.stop.send(());
        let _ = s.task.await;
    }

    println!();
    println!("| request | mode | concurrency | pause between requests | requests | TTFT p50 | TTFT p95 | total p50 | total p95 | pool hits / misses |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for c in &cells {
        println!(
            "| {:?} | {} | {} | {:.0} s | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {} / {} |",
            c.shape,
            c.mode,
            c.conc,
            c.think.as_secs_f64(),
            c.n,
            c.ttft_p50,
            c.ttft_p95,
            c.total_p50,
            c.total_p95,
            c.hits,
            c.misses
        );
    }
    let keys: Vec<(Shape, usize, Duration)> =
        cells.iter().map(|c| (c.shape, c.conc, c.think)).collect();
    for (shape, conc, think) in keys.into_iter().take(cells.len() / 2) {
        let find = |m: &str| {
            cells
                .iter()
                .find(|c| c.mode == m && c.shape == shape && c.conc == conc && c.think == think)
        };
        if let (Some(cold), Some(warm)) = (find("cold"), find("pre-warmed")) {
            println!(
                "\n{shape:?}, concurrency {conc}, pause {:.0} s: pre-warmed TTFT p50 {:.3} s vs cold {:.3} s ({:.2}x), total p50 {:.3} s lower",
                think.as_secs_f64(),
                warm.ttft_p50,
                cold.ttft_p50,
                warm.ttft_p50 / cold.ttft_p50,
                cold.total_p50 - warm.total_p50
            );
        }
    }
    if !idle_cpu.is_empty() {
        let mean = idle_cpu.iter().sum::<f64>() / idle_cpu.len() as f64;
        println!(
            "\nidle pre-warmed process CPU (whole process group, over 10 s idle): mean {mean:.2} % of a core over {} processes ({idle_cpu:.2?})",
            idle_cpu.len()
        );
    }
    if !rss.is_empty() {
        let mean = rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0;
        println!(
            "\nidle pre-warmed process RSS (whole process group, after ≥2 s idle): mean {mean:.0} MiB over {} processes ({:?} kB)",
            rss.len(),
            rss
        );
    }
}
