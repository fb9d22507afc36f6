//! Held runs in every client shape with the REAL CLI against the mock Messages API: two
//! parallel calls answered as two OpenAI `tool` messages, as two Responses
//! `function_call_output` items, as Anthropic results split over two user messages, and a
//! call echoed with its input normalised, each continue the held run (one spawn, two
//! upstream calls, `ccgate_tool_runs_continued_total` 1, nothing left held); a text-only
//! follow-up ends the held run at once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, eventually, get_text, TestServer};
use crate::mock_api::MockApi;
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

const PARALLEL: &str = "tool_call:mcp__cg__get_weather,mcp__cg__get_time";

fn schema() -> Value {
    json!({"type": "object", "properties": {"q": {"type": "string"}}})
}

fn tools_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": schema()}},
        {"type": "function", "function": {"name": "get_time", "description": "The time",
        "parameters": schema()}}])
}

fn tools_responses() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather", "parameters": schema()},
        {"type": "function", "name": "get_time", "description": "The time", "parameters": schema()}])
}

fn tools_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather", "input_schema": schema()},
        {"name": "get_time", "description": "The time", "input_schema": schema()}])
}

async fn post(s: &TestServer, path: &str, body: &Value) -> Value {
    let r = client().post(s.url(path)).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn continued(s: &TestServer) -> String {
    let m = get_text(s, "/metrics").await;
    m.lines()
        .find(|l| l.starts_with("ccgate_tool_runs_continued_total "))
        .unwrap_or_default()
        .to_string()
}

/// One spawn, two upstream calls with both results in the second, one continuation counted,
/// nothing left held.
async fn assert_continued(s: &TestServer, mock: &MockApi, results: usize) {
    assert_eq!(
        s.state.backend.stats().snapshot().spawned_total,
        1,
        "no respawn"
    );
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "one round, two upstream calls");
    assert_eq!(reqs[1].tool_results().len(), results, "{:?}", reqs[1].body);
    assert_eq!(continued(s).await, "ccgate_tool_runs_continued_total 1");
    assert!(s.state.backend.held_pids().is_empty(), "nothing left held");
}

#[tokio::test]
async fn real_cli_openai_two_tool_messages_continue_the_held_run() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url(PARALLEL)), None, |_| {}).await;
    let user = json!({"role": "user", "content": "Weather and time?"});
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": [user]});
    let v = post(&s, "/v1/chat/completions", &body).await;
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{v}");
    let mut messages = vec![
        user,
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
    ];
    for (c, r) in calls.iter().zip(["sunny", "noon"]) {
        messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": r}));
    }
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": messages});
    let v = post(&s, "/v1/chat/completions", &body).await;
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.starts_with("seen: sunny | noon"), "{v}");
    assert_continued(&s, &mock, 2).await;
}

#[tokio::test]
async fn real_cli_responses_two_function_call_outputs_continue_the_held_run() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url(PARALLEL)), None, |_| {}).await;
    let user = json!({"role": "user", "content": "Weather and time?"});
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_responses(), "input": [user]});
    let v = post(&s, "/v1/responses", &body).await;
    let calls: Vec<Value> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "function_call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "{v}");
    let mut input = vec![user];
    for c in &calls {
        input.push(
            json!({"type": "function_call", "call_id": c["call_id"], "name": c["name"],
            "arguments": c["arguments"]}),
        );
    }
    for (c, r) in calls.iter().zip(["sunny", "noon"]) {
        input.push(json!({"type": "function_call_output", "call_id": c["call_id"], "output": r}));
    }
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_responses(), "input": input});
    let v = post(&s, "/v1/responses", &body).await;
    let text = v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("seen: sunny | noon"), "{v}");
    assert_continued(&s, &mock, 2).await;
}

#[tokio::test]
async fn real_cli_anthropic_results_split_over_two_user_messages_continue_the_held_run() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url(PARALLEL)), None, |_| {}).await;
    let user = json!({"role": "user", "content": "Weather and time?"});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200,
        "tools": tools_anthropic(), "messages": [user]});
    let v = post(&s, "/v1/messages", &body).await;
    let content = v["content"].as_array().unwrap().clone();
    let calls: Vec<&Value> = content.iter().filter(|b| b["type"] == "tool_use").collect();
    assert_eq!(calls.len(), 2, "{v}");
    let result = |b: &Value, r: &str| json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"], "content": r}]});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200,
        "tools": tools_anthropic(), "messages": [user,
        {"role": "assistant", "content": content},
        result(calls[0], "sunny"), result(calls[1], "noon")]});
    let v = post(&s, "/v1/messages", &body).await;
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("seen: sunny | noon"), "{v}");
    assert_continued(&s, &mock, 2).await;
}

#[tokio::test]
async fn real_cli_a_call_echoed_with_its_input_normalised_continues_the_held_run() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__get_weather")),
        None,
        |_| {},
    )
    .await;
    let user = json!({"role": "user", "content": "Weather?"});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200,
        "tools": tools_anthropic(), "messages": [user]});
    let v = post(&s, "/v1/messages", &body).await;
    let call = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .cloned()
        .unwrap_or_else(|| panic!("a call: {v}"));
    assert_eq!(call["input"], json!({"q": "x"}), "{v}");
    // Claude Code as a client: its Edit calls come back with `replace_all: false` added.
    let echoed = json!({"type": "tool_use", "id": call["id"], "name": "get_weather",
        "input": {"replace_all": false, "q": "x"}});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200,
        "tools": tools_anthropic(), "messages": [user,
        {"role": "assistant", "content": [echoed]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}]});
    let v = post(&s, "/v1/messages", &body).await;
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("seen: sunny"), "{v}");
    assert_continued(&s, &mock, 1).await;
}

#[tokio::test]
async fn real_cli_a_text_only_follow_up_ends_the_held_run_at_once() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__get_weather")),
        None,
        |_| {},
    )
    .await;
    let user = json!({"role": "user", "content": "Weather?"});
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": [user]});
    let v = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let held = s.state.backend.held_pids();
    assert_eq!(held.len(), 1);
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": [user,
        {"role": "assistant", "content": "Action: get_weather(q=x)"},
        {"role": "user", "content": "Observation: sunny"}]});
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let _ = r.text().await;
    assert!(
        eventually(Duration::from_secs(5), || !s
            .state
            .backend
            .held_pids()
            .contains(&held[0]))
        .await,
        "the held run ended with the follow-up"
    );
    assert_eq!(continued(&s).await, "ccgate_tool_runs_continued_total 0");
}

/// The end paths of parked processes, measured on the real CLI: a process waiting for its
/// next turn (kept) exits by itself soon after its stdin closes (well within the 2 s the
/// graceful end allows before it kills), and so does one waiting inside a client tool call
/// (held), which then reports the call as interrupted.
#[tokio::test]
async fn real_cli_exits_by_itself_soon_after_stdin_closes_when_kept_or_held() {
    use crate::support_tools::{is_result, is_tools_call, tool, HostOpts, ToolHost};
    use std::time::Instant;
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let tools = vec![tool(
        "get_weather",
        "Weather",
        json!({"q": {"type": "string"}}),
    )];
    // Kept: a turn answered, stdin open.
    let mut kept = ToolHost::spawn(
        HostOpts::new(&exe, tools.clone()).env("ANTHROPIC_BASE_URL", &mock.url("ok:hello")),
    )
    .await;
    kept.user(json!("hi")).await;
    kept.until(Duration::from_secs(30), is_result).await;
    let t0 = Instant::now();
    let code = kept.finish(Duration::from_secs(10)).await;
    let kept_exit = t0.elapsed();
    // Held: the CLI waits inside a tools/call.
    let mut held = ToolHost::spawn(HostOpts::new(&exe, tools).env(
        "ANTHROPIC_BASE_URL",
        &mock.url("tool_call:mcp__cg__get_weather"),
    ))
    .await;
    held.user(json!("weather?")).await;
    held.until(Duration::from_secs(30), is_tools_call).await;
    let t0 = Instant::now();
    let held_code = held.finish(Duration::from_secs(10)).await;
    let held_exit = t0.elapsed();
    println!("real CLI exit after stdin EOF: kept {kept_exit:?} (code {code:?}), held {held_exit:?} (code {held_code:?})");
    assert!(
        code.is_some() && kept_exit < Duration::from_secs(2),
        "kept: {kept_exit:?}"
    );
    assert!(held_code.is_some(), "held: exits by itself");
}
