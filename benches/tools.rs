//! Client-tool benchmark: ccgate (in-process) → the REAL `claude` CLI → the loopback mock
//! Messages API (`tests/it/mock_api.rs`, scenario `tool_call`). Each round is one tool
//! loop through `POST /v1/messages`, streamed: a cold request whose answer is a tool call,
//! then the client's continuation with the result. Twice: with held runs (the default:
//! the continuation answers the CLI's waiting `tools/call`) and without (`cli.max_held_runs:
//! 0`: the continuation is a fresh CLI resuming the history). It prints the median time to
//! the first streamed content of the cold request and of the continuation, their ratio
//! (target with held runs: ≤ 0.5), and the upstream calls per round (target: 2).
//!
//! Then a scripted mix of client shapes, each answering a model's two parallel calls the
//! way that client does (OpenAI Chat: two `tool` messages; Responses: two
//! `function_call_output` items; Anthropic: one user message, or the results split over
//! two; Claude Code: the calls echoed with their input normalised; smolagents: a text
//! observation instead of results), printing the share of the rounds that sent their
//! results which continued the held run (target: all of them) and whether the text
//! observations' held runs were ended at once (none left held).
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

/// POST `body` to `path`, non-streaming: the JSON answer.
async fn post(client: &reqwest::Client, base: &str, path: &str, body: &Value) -> Value {
    let r = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "request failed");
    r.json().await.expect("JSON answer")
}

/// A counter's value from `/metrics`.
async fn counter(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let m = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The client shapes of the mix.
#[derive(Clone, Copy, Debug)]
enum Shape {
    OpenAiChat,
    Responses,
    AnthropicOneMessage,
    AnthropicSplit,
    NormalisedEcho,
    TextObservation,
}

const MODEL: &str = "claude-sonnet-4-6";

fn schema() -> Value {
    json!({"type": "object", "properties": {"q": {"type": "string"}}})
}

/// One tool round of `shape`: the model's two calls, then the client's follow-up. True if
/// the follow-up sent the results.
async fn shape_round(client: &reqwest::Client, base: &str, shape: Shape, i: usize) -> bool {
    let user = json!({"role": "user", "content": format!("weather and time, {shape:?} {i}?")});
    let names = ["get_weather", "get_time"];
    let results = ["sunny", "noon"];
    match shape {
        Shape::OpenAiChat => {
            let tools: Vec<Value> = names
                .iter()
                .map(|n| json!({"type": "function", "function": {"name": n, "parameters": schema()}}))
                .collect();
            let v = post(
                client,
                base,
                "/v1/chat/completions",
                &json!({"model": MODEL, "tools": tools, "messages": [user]}),
            )
            .await;
            let calls = v["choices"][0]["message"]["tool_calls"].clone();
            let mut messages = vec![
                user,
                json!({"role": "assistant", "content": null, "tool_calls": calls}),
            ];
            for (c, r) in calls.as_array().expect("calls").iter().zip(results) {
                messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": r}));
            }
            post(
                client,
                base,
                "/v1/chat/completions",
                &json!({"model": MODEL, "tools": tools, "messages": messages}),
            )
            .await;
            true
        }
        Shape::Responses => {
            let tools: Vec<Value> = names
                .iter()
                .map(|n| json!({"type": "function", "name": n, "parameters": schema()}))
                .collect();
            let v = post(
                client,
                base,
                "/v1/responses",
                &json!({"model": MODEL, "tools": tools, "input": [user]}),
            )
            .await;
            let calls: Vec<Value> = v["output"]
                .as_array()
                .expect("output")
                .iter()
                .filter(|o| o["type"] == "function_call")
                .cloned()
                .collect();
            let mut input = vec![user];
            for c in &calls {
                input.push(json!({"type": "function_call", "call_id": c["call_id"],
                    "name": c["name"], "arguments": c["arguments"]}));
            }
            for (c, r) in calls.iter().zip(results) {
                input.push(
                    json!({"type": "function_call_output", "call_id": c["call_id"], "output": r}),
                );
            }
            post(
                client,
                base,
                "/v1/responses",
                &json!({"model": MODEL, "tools": tools, "input": input}),
            )
            .await;
            true
        }
        Shape::AnthropicOneMessage
        | Shape::AnthropicSplit
        | Shape::NormalisedEcho
        | Shape::TextObservation => {
            let tools: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "input_schema": schema()}))
                .collect();
            let v = post(
                client,
                base,
                "/v1/messages",
                &json!({"model": MODEL, "max_tokens": 200, "tools": tools, "messages": [user]}),
            )
            .await;
            let mut content: Vec<Value> = v["content"].as_array().expect("content").clone();
            let calls: Vec<Value> = content
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .cloned()
                .collect();
            if let Shape::NormalisedEcho = shape {
                for b in content.iter_mut().filter(|b| b["type"] == "tool_use") {
                    b["input"]["replace_all"] = json!(false);
                }
            }
            let result = |c: &Value, r: &str| json!({"type": "tool_result", "tool_use_id": c["id"], "content": r});
            let mut messages = vec![user];
            let sent = match shape {
                Shape::TextObservation => {
                    messages.push(
                        json!({"role": "assistant", "content": "Action: get_weather, get_time"}),
                    );
                    messages.push(json!({"role": "user", "content": "Observation: sunny; noon"}));
                    false
                }
                Shape::AnthropicSplit => {
                    messages.push(json!({"role": "assistant", "content": content}));
                    for (c, r) in calls.iter().zip(results) {
                        messages.push(json!({"role": "user", "content": [result(c, r)]}));
                    }
                    true
                }
                _ => {
                    messages.push(json!({"role": "assistant", "content": content}));
                    let all: Vec<Value> = calls
                        .iter()
                        .zip(results)
                        .map(|(c, r)| result(c, r))
                        .collect();
                    messages.push(json!({"role": "user", "content": all}));
                    true
                }
            };
            post(
                client,
                base,
                "/v1/messages",
                &json!({"model": MODEL, "max_tokens": 200, "tools": tools, "messages": messages}),
            )
            .await;
            sent
        }
    }
}

/// The scripted mix: every shape `rounds` times, interleaved.
async fn client_shape_mix(client: &reqwest::Client, cli: &std::path::Path, rounds: usize) {
    let mock = mock_api::MockApi::start().await;
    let s = start_server(
        cli,
        &mock.url("tool_call:mcp__cg__get_weather,mcp__cg__get_time"),
        |c| {
            c.keep_conversations = 0;
        },
    )
    .await;
    let shapes = [
        Shape::OpenAiChat,
        Shape::Responses,
        Shape::AnthropicOneMessage,
        Shape::AnthropicSplit,
        Shape::NormalisedEcho,
        Shape::TextObservation,
    ];
    let mut sent = 0usize;
    let mut orphaned = 0.0;
    let started = Instant::now();
    for i in 0..rounds {
        for shape in shapes {
            let before = counter(client, &s.base, "ccgate_tool_runs_continued_total").await;
            let held_before = counter(client, &s.base, "ccgate_tool_runs_held").await;
            let with_results = shape_round(client, &s.base, shape, i).await;
            let after = counter(client, &s.base, "ccgate_tool_runs_continued_total").await;
            let held_after = counter(client, &s.base, "ccgate_tool_runs_held").await;
            sent += usize::from(with_results);
            if with_results && after <= before {
                println!("  {shape:?} round {i}: results sent, held run NOT continued");
            }
            if !with_results {
                // The follow-up's own answer is a new call (held); the round's first
                // held run should be gone: +1, not +2.
                orphaned += (held_after - held_before - 1.0).max(0.0);
            }
        }
    }
    let continued = counter(client, &s.base, "ccgate_tool_runs_continued_total").await;
    let held = orphaned;
    println!(
        "client-shape mix ({} shapes x {rounds} rounds, {:.1} s): {continued} of {sent} rounds that sent their results continued the held run ({:.0} %); held runs the text observations left behind: {held}",
        shapes.len(),
        started.elapsed().as_secs_f64(),
        100.0 * continued / sent.max(1) as f64,
    );
    let _ = s.stop.send(());
    let _ = s.task.await;
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
        client_shape_mix(&client, &cli, rounds).await;
    });
}
