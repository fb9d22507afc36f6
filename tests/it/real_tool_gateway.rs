//! Client tools through ccgate with the REAL CLI against the mock Messages API: the whole
//! loop (the model's call → the client → its result → the model's answer) on both APIs,
//! streaming and not, single and parallel calls; exactly two upstream calls per round
//! through the held run; the fresh fallback when no run is held.

use serde_json::{json, Value};

use crate::harness::{client, sse_events, TestServer};
use crate::mock_api::MockApi;
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

fn tools_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}])
}

fn tools_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
        {"name": "get_time", "description": "The time",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}])
}

async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, String) {
    let r = client().post(s.url(path)).json(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn spawned(s: &TestServer) -> u64 {
    s.state.backend.stats().snapshot().spawned_total
}

#[tokio::test]
async fn real_cli_openai_tool_round_continues_the_held_run_in_two_upstream_calls() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__get_weather")),
        None,
        |_| {},
    )
    .await;
    let user = json!({"role": "user", "content": "Weather in Paris?"});
    let body = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": [user]});
    let (status, text) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");
    let first = mock.message_requests();
    assert_eq!(first.len(), 1);
    // Only the client's tools (behind the CLI's prefix; the CLI adds its own placeholder).
    let names = first[0].tool_names();
    assert!(
        names.contains(&"mcp__cg__get_weather".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"mcp__cg__get_time".to_string()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("mcp__cg__") || n == "DeferredToolPlaceholder"),
        "no CLI tool is offered: {names:?}"
    );
    // The model's own id reaches the client.
    let model_id = call["id"].as_str().unwrap().to_string();
    assert!(model_id.starts_with("toolu_"), "{model_id}");
    assert_eq!(s.state.backend.held_pids().len(), 1);

    let cont = json!({"model": "claude-sonnet-4-6", "tools": tools_openai(), "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": model_id, "content": "sunny 21C"},
    ]});
    let (status, text) = post(&s, "/v1/chat/completions", &cont).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    // (The mock echoes every text of the results, the CLI's own reminders after ours.)
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.starts_with("seen: sunny 21C"), "{v}");
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "exactly two upstream calls for the round");
    let results = reqs[1].tool_results();
    assert_eq!(results.len(), 1, "{:?}", reqs[1].body);
    assert_eq!(
        results[0]["tool_use_id"],
        model_id.as_str(),
        "a real tool_result"
    );
    assert_eq!(
        spawned(&s),
        1,
        "the held process answered; nothing respawned"
    );
}

#[tokio::test]
async fn real_cli_anthropic_streaming_parallel_calls_round_trip() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__get_weather,mcp__cg__get_time:Checking.")),
        None,
        |_| {},
    )
    .await;
    let user = json!({"role": "user", "content": "Weather and time?"});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 200, "stream": true,
        "tools": tools_anthropic(), "messages": [user]});
    let (status, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{text}");
    let events: Vec<Value> = sse_events(&text)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str(d).ok())
        .collect();
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .collect();
    assert_eq!(starts.len(), 3, "{text}");
    assert_eq!(starts[0]["content_block"]["type"], "text");
    assert_eq!(starts[1]["content_block"]["name"], "get_weather");
    assert_eq!(starts[2]["content_block"]["name"], "get_time");
    assert_eq!(starts[2]["index"], 2);
    let stop = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
    let mut content = vec![json!({"type": "text", "text": "Checking."})];
    let mut results = Vec::new();
    for (b, r) in starts[1..].iter().zip(["sunny", "noon"]) {
        let id = b["content_block"]["id"].clone();
        content.push(json!({"type": "tool_use", "id": id, "name": b["content_block"]["name"], "input": {"q": "x"}}));
        results.push(json!({"type": "tool_result", "tool_use_id": id, "content": r}));
    }
    let cont = json!({"model": "claude-sonnet-4-6", "max_tokens": 200, "stream": true,
        "tools": tools_anthropic(), "messages": [
        user, {"role": "assistant", "content": content}, {"role": "user", "content": results},
    ]});
    let (status, text) = post(&s, "/v1/messages", &cont).await;
    assert_eq!(status, 200, "{text}");
    let answer: String = sse_events(&text)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(answer.starts_with("seen: sunny | noon"), "{text}");
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "one round, two upstream calls");
    assert_eq!(
        reqs[1].tool_results().len(),
        2,
        "both results in one user turn"
    );
    assert_eq!(spawned(&s), 1);
}

#[tokio::test]
async fn real_cli_continuation_without_a_held_run_resumes_the_history_with_real_results() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__get_weather")),
        None,
        |c| c.cli.max_held_runs = 0,
    )
    .await;
    let user = json!({"role": "user", "content": "Weather?"});
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 100,
        "tools": tools_anthropic(), "messages": [user]});
    let (status, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let call = v["content"][0].clone();
    assert_eq!(call["type"], "tool_use", "{v}");
    assert!(
        s.state.backend.held_pids().is_empty(),
        "nothing may be held"
    );
    let cont = json!({"model": "claude-sonnet-4-6", "max_tokens": 100,
        "tools": tools_anthropic(), "messages": [
        user, {"role": "assistant", "content": [call.clone()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]},
    ]});
    let (status, text) = post(&s, "/v1/messages", &cont).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("seen: sunny"),
        "{v}"
    );
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "the fresh run made one call: {reqs:?}");
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m["role"].as_str())
        .filter(|r| *r != "system")
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user"],
        "real turns, nothing inserted: {msgs:?}"
    );
    assert_eq!(msgs.last().unwrap()["content"][0]["type"], "tool_result");
    assert_eq!(spawned(&s), 2);
}

/// Claude Code itself as a client: the real CLI, pointed at ccgate with
/// `ANTHROPIC_BASE_URL`, offers its default tools through ccgate; the model (the mock,
/// behind ccgate's own real CLI) calls the client's `Read`; the client CLI runs it and
/// sends the result back; the held run goes on and the answer reaches the client.
#[tokio::test]
async fn real_cli_as_a_client_completes_a_round_trip_with_its_own_read_tool() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe.clone(), Some(mock.url("read_file")), None, |c| {
        c.cli.total_timeout = 60.0;
    })
    .await;
    let client_dir = tempfile::tempdir().unwrap();
    let work = client_dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let note = work.join("note.txt");
    std::fs::write(&note, "the secret word is marmalade\n").unwrap();
    let prompt = format!("What does the file say? READ:{}", note.display());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(&exe)
            .args([
                "-p",
                &prompt,
                "--allowedTools",
                "Read",
                "--output-format",
                "text",
            ])
            .current_dir(&work)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", client_dir.path())
            .env("CLAUDE_CONFIG_DIR", client_dir.path().join(".claude"))
            .env("ANTHROPIC_BASE_URL", s.url(""))
            .env("ANTHROPIC_API_KEY", "client-key")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client CLI finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client CLI failed: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("seen:") && stdout.contains("marmalade"),
        "the Read result came back through ccgate: {stdout}\n{stderr}"
    );
    // ccgate's backend offered the client's default tools and answered the held call.
    let reqs = mock.message_requests();
    let with_tools: Vec<_> = reqs
        .iter()
        .filter(|r| r.tool_names().iter().any(|n| n == "mcp__cg__Read"))
        .collect();
    assert!(
        with_tools.len() >= 2,
        "the call and its continuation: {}",
        reqs.len()
    );
    let names = with_tools[0].tool_names();
    assert!(
        names.iter().any(|n| n == "mcp__cg__Bash"),
        "its default tools: {names:?}"
    );
    let results = with_tools.last().unwrap().tool_results();
    assert!(
        serde_json::Value::from(results.clone())
            .to_string()
            .contains("marmalade"),
        "{results:?}"
    );
    let m = crate::harness::get_text(&s, "/metrics").await;
    assert!(m.contains("ccgate_tool_runs_continued_total 1"), "{m}");
}
