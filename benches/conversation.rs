//! Conversation benchmark: ccgate (in-process) → the REAL `claude` CLI → the loopback mock
//! Messages API (`tests/it/mock_api.rs`). One 6-turn conversation with long user turns,
//! each request carrying the whole history (as chat UIs and agents send it), streamed
//! through `POST /v1/chat/completions`, twice: with kept conversation processes
//! (`cli.keep_conversations: 2`, the default) and without them (`0`: every turn a fresh
//! CLI resuming a synthesized session). For each it prints, per turn, the time to the
//! first text delta and how much of the previous upstream request this one repeats (the
//! common prefix of their content blocks, `cache_control` aside, in bytes of the previous
//! request: what the API's prompt cache can reuse), and the upstream calls made.
//!
//! Run: `cargo bench --bench conversation`. The CLI is taken from `CCGATE_REAL_CLAUDE`;
//! without it the benchmark says so and exits 0. Knob: `CONVERSATION_BENCH_ROUNDS`
//! (conversations per mode, default 3; turn medians are over all of them).

#[path = "../tests/it/mock_api.rs"]
#[allow(dead_code)]
mod mock_api;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/real_server.rs"]
mod real_server;
use real_server::start_server;

const TURNS: usize = 6;

fn cli_path() -> Option<PathBuf> {
    std::env::var_os("CCGATE_REAL_CLAUDE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// One streamed turn: (time to the first text delta, the answer).
async fn turn(client: &reqwest::Client, base: &str, messages: &[Value]) -> (Duration, String) {
    let body = json!({"model": "claude-sonnet-4-5", "stream": true, "messages": messages});
    let t0 = Instant::now();
    let mut r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "request failed");
    let (mut all, mut first) = (String::new(), None);
    while let Some(c) = r.chunk().await.expect("chunk") {
        all.push_str(&String::from_utf8_lossy(&c));
        if first.is_none() && all.contains("\"content\":\"") && all.matches("data:").count() > 1 {
            first = Some(t0.elapsed());
        }
    }
    let mut answer = String::new();
    for line in all.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            answer.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    (first.unwrap_or_else(|| t0.elapsed()), answer)
}

/// A request's content blocks, one shape for strings and block lists, `cache_control`
/// (which moves to the newest block) aside, as serialized (role, block) strings.
fn blocks(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        let content = match &m["content"] {
            Value::String(t) => vec![json!({"type": "text", "text": t})],
            Value::Array(b) => b.clone(),
            _ => Vec::new(),
        };
        for mut b in content {
            if let Some(o) = b.as_object_mut() {
                o.remove("cache_control");
            }
            out.push(format!("{}:{b}", m["role"].as_str().unwrap_or("")));
        }
    }
    out
}

/// How much of `prev` (bytes of its blocks) `next` repeats as a common block prefix.
fn repeated(prev: &Value, next: &Value) -> f64 {
    let (p, n) = (blocks(prev), blocks(next));
    let total: usize = p.iter().map(String::len).sum();
    let common: usize = p
        .iter()
        .zip(&n)
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len())
        .sum();
    if total == 0 {
        0.0
    } else {
        common as f64 / total as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(cli) = cli_path() else {
        println!("conversation bench SKIPPED: real Claude CLI not found (set CCGATE_REAL_CLAUDE)");
        return;
    };
    let rounds: usize = std::env::var("CONVERSATION_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let long_turn = "Here is more context for the question. ".repeat(60);
    println!(
        "conversation bench: {}, {TURNS} turns of ~{} chars per user turn, {rounds} conversations per mode",
        cli.display(),
        long_turn.len()
    );
    for (mode, keep) in [
        ("kept processes (keep_conversations: 2)", 2),
        ("fresh runs (keep_conversations: 0)", 0),
    ] {
        let mock = mock_api::MockApi::start().await;
        let s = start_server(&cli, &mock.url("ok"), |c| c.keep_conversations = keep).await;
        let client = reqwest::Client::new();
        let mut ttft: Vec<Vec<f64>> = vec![Vec::new(); TURNS];
        let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); TURNS];
        let mut calls = 0;
        for round in 0..rounds {
            let before = mock.message_requests().len();
            let mut messages: Vec<Value> = Vec::new();
            for (t, times) in ttft.iter_mut().enumerate() {
                messages.push(json!({"role": "user",
                    "content": format!("Conversation {round}, question {t}. {long_turn}")}));
                let (first, answer) = turn(&client, &s.base, &messages).await;
                times.push(first.as_secs_f64());
                messages.push(json!({"role": "assistant", "content": answer}));
            }
            // This conversation's requests (the health probe also calls the mock).
            let tag = format!("Conversation {round}, question 0.");
            let mine: Vec<_> = mock.message_requests()[before..]
                .iter()
                .filter(|r| r.body.to_string().contains(&tag))
                .cloned()
                .collect();
            calls += mine.len();
            for t in 1..mine.len().min(TURNS) {
                ratio[t].push(repeated(&mine[t - 1].body, &mine[t].body));
            }
        }
        println!();
        println!(
            "{mode}: {calls} upstream calls for {} turns",
            rounds * TURNS
        );
        println!("| turn | first token (median) | repeats of the previous request (median) |");
        println!("|---|---|---|");
        for (t, (times, ratios)) in ttft.iter().zip(&ratio).enumerate() {
            let r = if t == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", median(ratios.clone()))
            };
            println!("| {} | {:.3} s | {r} |", t + 1, median(times.clone()));
        }
        let first = median(ttft[0].clone());
        let later = median(ttft[1..].iter().flatten().copied().collect());
        let min_ratio = ratio[1..].iter().flatten().copied().fold(1.0_f64, f64::min);
        println!(
            "turns 2-{TURNS} first token median {later:.3} s = {:.2}x turn 1 ({first:.3} s); lowest prefix repeated: {min_ratio:.3}",
            later / first
        );
        let _ = s.stop.send(());
        let _ = s.task.await;
    }
}
