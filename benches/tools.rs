//! Client-tool benchmark: ccgate (in-process) → the REAL `claude` CLI → the loopback mock
//! Messages API (`tests/it/mock_api.rs`, scenario `tool_call`). Each round is one tool
//! loop through `POST /v1/messages`, streamed: a cold request whose answer is a tool call,
//! then the client's continuation with the result. Twice: with held runs (the default:
//! the continuation answers the CLI's waiting `tools/call`) and without (`cli.max_held_runs:
//! 0`: the continuation is a fresh CLI resuming the history). It prints the median time to
//! the first streamed content of the cold request and of the continuation, their ratio
//! (target with held runs: ≤ 0.5), and the upstream calls per round (target: 2).
//!
//! Run: `cargo bench --bench tools`. The CLI is taken from `CCGATE_REAL_CLAUDE`; without it
//! the benchmark says so and exits 0. Knob: `TOOLS_BENCH_ROUNDS` (default 5).

#[path = "../tests/it/mock_api.rs"]
#[allow(dead_code)]
mod mock_api;
#[path = "common/real_server.rs"]
mod real_server;

use std::time::{Duration, Instant};

use real_server::start_server;
use serde_json::{json, Value};

/// One streamed request: (time to the first content event, the SSE body).
async fn stream(client: &reqwest::Client, base: &str, messages: &[Value]) -> (Duration, String) {
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200, "stream": true,
        "tools": [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
        "messages": messages});
    let t0 = Instant::now();
    let mut r = client
        .post(format!("{base}/v1/messages"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "request failed");
    let (mut all, mut first) = (String::new(), None);
    while let Some(c) = r.chunk().await.expect("chunk") {
        all.push_str(&String::from_utf8_lossy(&c));
        if first.is_none() && all.contains("content_block_start") {
            first = Some(t0.elapsed());
        }
    }
    (first.unwrap_or_else(|| t0.elapsed()), all)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let Some(cli) = std::env::var_os("CCGATE_REAL_CLAUDE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
    else {
        println!("tools bench: CCGATE_REAL_CLAUDE is not set; nothing measured");
        return;
    };
    let rounds: usize = std::env::var("TOOLS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        println!("tools bench: {rounds} tool rounds per mode, real CLI {}", cli.display());
        for (label, held) in [("held runs (max_held_runs: 4)", 4), ("fresh continuations (max_held_runs: 0)", 0)] {
            let mock = mock_api::MockApi::start().await;
            let s = start_server(&cli, &mock.url("tool_call:mcp__cg__get_weather"), |c| {
                c.max_held_runs = held;
                c.keep_conversations = 0;
            })
            .await;
            let (mut cold, mut cont) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                let user = json!({"role": "user", "content": format!("weather, round {i}?")});
                let (t, body) = stream(&client, &s.base, std::slice::from_ref(&user)).await;
                cold.push(t);
                let start = body
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find(|v| v["content_block"]["type"] == "tool_use")
                    .expect("a tool call");
                let id = start["content_block"]["id"].clone();
                let messages = [
                    user,
                    json!({"role": "assistant", "content": [{"type": "tool_use", "id": id,
                        "name": "get_weather", "input": {"q": "x"}}]}),
                    json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id,
                        "content": "sunny"}]}),
                ];
                let (t, _) = stream(&client, &s.base, &messages).await;
                cont.push(t);
            }
            // The probe's requests aside: only those of the rounds' conversations.
            let calls = mock
                .message_requests()
                .iter()
                .filter(|r| r.body["messages"].to_string().contains("weather, round "))
                .count() as f64
                / rounds as f64;
            let (c, k) = (median(cold), median(cont));
            println!(
                "{label}: cold first content {:>7.1} ms, continuation {:>7.1} ms, ratio {:.2}, upstream calls per round {calls:.1}",
                c.as_secs_f64() * 1000.0,
                k.as_secs_f64() * 1000.0,
                k.as_secs_f64() / c.as_secs_f64(),
            );
            let _ = s.stop.send(());
            let _ = s.task.await;
        }
    });
}
