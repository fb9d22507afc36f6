//! Client tools through the gateway with the fake CLI (which speaks the real CLI's sdk MCP
//! control protocol): a tool call ends the answer and holds the run; the client's results
//! continue that very process; without a held run the continuation runs fresh from the
//! history; tool_choice, parallel_tool_calls and bad definitions.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, eventually, sse_events, Opts, TestServer};

async fn server(tweak: impl FnOnce(&mut ccgate::config::Config) + Send + 'static) -> TestServer {
    TestServer::start(Opts {
        api_keys: vec!["key-a".into(), "key-b".into()],
        env: vec![("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#.into())],
        tweak: Box::new(tweak),
        ..Opts::default()
    })
    .await
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {}}}}])
}

fn weather_tool_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}])
}

async fn post(s: &TestServer, key: &str, path: &str, body: &Value) -> (u16, String) {
    let r = client()
        .post(s.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_json(s: &TestServer, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = post(s, key, path, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// How many CLI processes the fake CLI's log has seen start.
fn spawns(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("=== fake-claude pid"))
        .count()
}

fn log(s: &TestServer) -> String {
    std::fs::read_to_string(&s.log_file).unwrap_or_default()
}

#[tokio::test]
async fn openai_tool_call_holds_the_run_and_the_results_continue_the_same_process() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather in Paris?"});
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [user]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(
        call["function"]["name"], "get_weather",
        "the client's name, no prefix"
    );
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let id = call["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("toolu_"), "the model's tool-use id: {id}");
    assert!(choice["message"]["content"].is_null(), "{v}");
    assert_eq!(
        s.state.backend.held_pids().len(),
        1,
        "the run waits inside the call"
    );
    let offered = log(&s);
    assert!(
        offered.contains("ARG:--allowedTools=mcp__cg__get_weather,mcp__cg__get_time")
            && offered.contains("ARG:--strict-mcp-config")
            && offered.contains("ARG:--tools"),
        "only the client's tools, pre-approved: {offered}"
    );

    // The continuation: the same history plus the tool result.
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "sunny 21C"},
    ]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tool said: sunny 21C"
    );
    assert_eq!(
        spawns(&s),
        1,
        "no respawn: the held process answered: {}",
        log(&s)
    );
    assert!(s.state.backend.held_pids().is_empty());
    let m = crate::harness::get_text(&s, "/metrics").await;
    assert!(m.contains("ccgate_tool_runs_continued_total 1"), "{m}");
}

#[tokio::test]
async fn anthropic_streaming_tool_call_and_streamed_continuation() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "max_tokens": 100, "stream": true,
        "tools": weather_tool_anthropic(), "messages": [user]});
    let (status, text) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&text);
    let mut names: Vec<&str> = events.iter().filter_map(|(e, _)| e.as_deref()).collect();
    names.dedup();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    let start: Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "get_weather");
    assert_eq!(start["index"], 0);
    let id = start["content_block"]["id"].as_str().unwrap().to_string();
    let deltas: Vec<Value> = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(deltas
        .iter()
        .all(|d| d["delta"]["type"] == "input_json_delta" && d["index"] == 0));
    let args: String = deltas
        .iter()
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let events: Vec<_> = events
        .into_iter()
        .filter(|(e, _)| e.as_deref() != Some("content_block_delta"))
        .collect();
    let md: Value = serde_json::from_str(&events[4].1).unwrap();
    assert_eq!(md["delta"]["stop_reason"], "tool_use");

    let body = json!({"model": "sonnet", "max_tokens": 100, "stream": true,
        "tools": weather_tool_anthropic(), "messages": [
        user,
        {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "rain", "is_error": true}]},
    ]});
    let (status, text) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{text}");
    let answer: String = sse_events(&text)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(answer, "tool failed: rain", "{text}");
    assert_eq!(spawns(&s), 1, "{}", log(&s));
}

#[tokio::test]
async fn parallel_calls_reach_the_client_together_and_both_results_continue() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:parallel_tool_calls]] both?"});
    let body = json!({"model": "sonnet", "max_tokens": 100,
        "tools": weather_tool_anthropic(), "messages": [user]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stop_reason"], "tool_use");
    let content = v["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{v}");
    assert!(content.iter().all(|b| b["type"] == "tool_use"));
    let results: Vec<Value> = content
        .iter()
        .zip(["one", "two"])
        .map(|(b, r)| json!({"type": "tool_result", "tool_use_id": b["id"], "content": r}))
        .collect();
    let body = json!({"model": "sonnet", "max_tokens": 100,
        "tools": weather_tool_anthropic(), "messages": [
        user, {"role": "assistant", "content": content}, {"role": "user", "content": results},
    ]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("one") && text.contains("two"), "{v}");
    assert_eq!(spawns(&s), 1, "{}", log(&s));
}

#[tokio::test]
async fn without_a_held_run_the_results_run_fresh_from_the_history_and_keys_do_not_mix() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [user]});
    let (_, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let id = call["id"].as_str().unwrap().to_string();
    let cont = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "sunny"},
    ]});
    // Another API key sending the same conversation never reaches key-a's held run.
    let (status, v) = post_json(&s, "key-b", "/v1/chat/completions", &cont).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: sunny");
    assert_eq!(spawns(&s), 2, "key-b ran fresh: {}", log(&s));
    assert_eq!(
        s.state.backend.held_pids().len(),
        1,
        "key-a's run is still held"
    );
    assert!(
        log(&s).contains("ARG:--resume"),
        "the fresh run resumed the history as a session: {}",
        log(&s)
    );
    // key-a's continuation still finds its own run.
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &cont).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(spawns(&s), 2, "{}", log(&s));
}

#[tokio::test]
async fn held_runs_expire_and_a_late_continuation_runs_fresh() {
    let s = server(|c| c.cli.tool_hold_timeout = 0.5).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [user]});
    let (_, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let pid = s.state.backend.held_pids()[0];
    assert!(
        eventually(Duration::from_secs(5), || {
            s.state.backend.held_pids().is_empty()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await,
        "an expired held run's process is ended"
    );
    let id = call["id"].as_str().unwrap().to_string();
    let cont = json!({"model": "sonnet", "tools": weather_tool_openai(), "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "late"},
    ]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &cont).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: late");
    assert_eq!(spawns(&s), 2);
}

#[tokio::test]
async fn openai_streaming_tool_call_deltas() {
    let s = server(|_| {}).await;
    let body = json!({"model": "sonnet", "stream": true, "tools": weather_tool_openai(),
        "messages": [{"role": "user", "content": "[[scenario:tool_call]] w?"}]});
    let (status, text) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let chunks: Vec<Value> = sse_events(&text)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str(d).ok())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(calls.len() >= 2, "{text}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("toolu_"));
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(calls[1..]
        .iter()
        .all(|c| c.get("id").is_none() && c["index"] == 0));
    let last = chunks
        .iter()
        .rev()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn tool_choice_is_honoured_or_answered_by_the_rule() {
    let s = server(|_| {}).await;
    // `required`, but the model answers in text: the rule's 502, never a silent 200.
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(), "tool_choice": "required",
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "tool_choice_unmet");
    assert!(
        log(&s).contains("You must call at least one of the tools"),
        "the model was asked"
    );
    // A named tool the model did call passes.
    let body = json!({"model": "sonnet", "max_tokens": 50, "tools": weather_tool_anthropic(),
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "[[scenario:tool_call]] w"}]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["name"], "get_weather");
    // `none`: a call the model makes anyway is refused to it; the client sees text only.
    let body = json!({"model": "sonnet", "max_tokens": 50, "tools": weather_tool_anthropic(),
        "tool_choice": {"type": "none"},
        "messages": [{"role": "user", "content": "[[scenario:tool_call]] w"}]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stop_reason"], "end_turn", "{v}");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("tool failed: Tool use is turned off"),
        "{v}"
    );
}

#[tokio::test]
async fn parallel_tool_calls_false_shows_one_call_and_refuses_the_rest_to_the_model() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:parallel_tool_calls]] both"});
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(),
        "parallel_tool_calls": false, "messages": [user]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    let id = calls[0]["id"].as_str().unwrap().to_string();
    let cont = json!({"model": "sonnet", "tools": weather_tool_openai(),
        "parallel_tool_calls": false, "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": id, "content": "first"},
    ]});
    let (status, v) = post_json(&s, "key-a", "/v1/chat/completions", &cont).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("first") && text.contains("one tool call per answer"),
        "{v}"
    );
    assert_eq!(spawns(&s), 1);
}

#[tokio::test]
async fn bad_tool_definitions_and_unpaired_results_are_400s_in_each_shape() {
    let s = server(|_| {}).await;
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "m", "tools": [{"type": "function", "function": {"name": "bad name"}}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].function.name",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "string"}}}], "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].function.parameters",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "tools": weather_tool_openai(),
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
                "messages": [{"role": "user", "content": "x"}]}),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "tools": weather_tool_openai(), "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_unknown", "content": "r"}]}),
            "messages",
        ),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "tools": [{"type": "code_execution_20250825", "name": "code_execution"}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].type",
        ),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search", "blocked_domains": ["a.com"]}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].blocked_domains",
        ),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "tools": [{"name": "a".repeat(120), "input_schema": {"type": "object"}}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].name",
        ),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "tools": weather_tool_anthropic(), "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
                {"role": "user", "content": "no result"}]}),
            "messages",
        ),
    ];
    for (path, body, param) in cases {
        let (status, v) = post_json(&s, "key-a", path, &body).await;
        assert_eq!(status, 400, "{path} {body}: {v}");
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        } else {
            assert_eq!(v["error"]["param"], param, "{v}");
        }
        let _ = param;
    }
    assert_eq!(spawns(&s), 0, "nothing ran");
}

#[tokio::test]
async fn responses_function_call_round_trip_with_previous_response_id_continues_the_held_run() {
    let s = server(|_| {}).await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let body =
        json!({"model": "sonnet", "tools": tools, "input": "[[scenario:tool_call]] weather?"});
    let (status, v) = post_json(&s, "key-a", "/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 1, "only the call: {v}");
    assert_eq!(out[0]["type"], "function_call");
    assert_eq!(out[0]["name"], "get_weather");
    let call_id = out[0]["call_id"].as_str().unwrap().to_string();
    let args: Value = serde_json::from_str(out[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    // The Agents SDK's way: previous_response_id plus the function_call_output item.
    let body = json!({"model": "sonnet", "tools": tools, "previous_response_id": v["id"],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]});
    let (status, v) = post_json(&s, "key-a", "/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"][0]["content"][0]["text"], "tool said: sunny",
        "{v}"
    );
    assert_eq!(spawns(&s), 1, "the held run continued: {}", log(&s));

    // Streaming: the function call's events.
    let body = json!({"model": "sonnet", "tools": tools, "stream": true,
        "input": "[[scenario:tool_call]] again?"});
    let (status, text) = post(&s, "key-a", "/v1/responses", &body).await;
    assert_eq!(status, 200, "{text}");
    let events: Vec<Value> = sse_events(&text)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str(d).ok())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let mut deduped = kinds.clone();
    deduped.dedup();
    assert_eq!(
        deduped,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ],
        "{text}"
    );
    let seq: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence_number"].as_u64())
        .collect();
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(done["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let completed = events.last().unwrap();
    assert_eq!(completed["response"]["output"][0]["type"], "function_call");
}

/// The kinds and indexes of a Messages stream's events (`start 0 thinking`, `delta 1
/// input_json_delta`, `stop 1`, …), consecutive repeats merged.
fn stream_shape(text: &str) -> Vec<String> {
    let mut shape: Vec<String> = sse_events(text)
        .iter()
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap())
        .map(|e| match e["type"].as_str().unwrap_or("") {
            "content_block_start" => format!(
                "start {} {}",
                e["index"],
                e["content_block"]["type"].as_str().unwrap()
            ),
            "content_block_delta" => format!(
                "delta {} {}",
                e["index"],
                e["delta"]["type"].as_str().unwrap()
            ),
            "content_block_stop" => format!("stop {}", e["index"]),
            other => other.to_string(),
        })
        .collect();
    shape.dedup();
    shape
}

#[tokio::test]
async fn thinking_before_a_tool_call_is_its_own_block_and_the_held_run_continues() {
    let s = TestServer::start(Opts {
        api_keys: vec!["key-a".into()],
        env: vec![
            ("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#.into()),
            ("FAKE_CLAUDE_TOOL_THINKING", "1".into()),
        ],
        ..Opts::default()
    })
    .await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "max_tokens": 4096, "stream": true,
        "thinking": {"type": "adaptive"},
        "tools": weather_tool_anthropic(), "messages": [user]});
    let (status, text) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        stream_shape(&text),
        [
            "message_start",
            "ping",
            "start 0 thinking",
            "delta 0 thinking_delta",
            "delta 0 signature_delta",
            "stop 0",
            "start 1 tool_use",
            "delta 1 input_json_delta",
            "stop 1",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    let id = sse_events(&text)
        .iter()
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap())
        .find(|e| e["content_block"]["type"] == "tool_use")
        .unwrap()["content_block"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The client sends its thinking back with the call: the same held run goes on.
    let body = json!({"model": "sonnet", "max_tokens": 4096,
        "thinking": {"type": "adaptive"},
        "tools": weather_tool_anthropic(), "messages": [
        user,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "A tool can tell.", "signature": "sig_fake_t"},
            {"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sun"}]},
    ]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"], "tool said: sun", "{v}");
    assert_eq!(spawns(&s), 1, "{}", log(&s));

    // Not streamed: the thinking block, then the call.
    let body = json!({"model": "sonnet", "max_tokens": 4096,
        "thinking": {"type": "adaptive"},
        "tools": weather_tool_anthropic(), "messages": [user]});
    let (status, v) = post_json(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let content = v["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{v}");
    assert_eq!(content[0]["type"], "thinking");
    assert_eq!(content[0]["thinking"], "A tool can tell.");
    assert_eq!(content[0]["signature"], "sig_fake_t");
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(content[1]["input"], json!({"city": "Paris"}));
}

#[tokio::test]
async fn a_tool_call_reaches_the_client_of_a_structured_output_request() {
    let s = server(|_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let format = json!({"type": "json_schema", "json_schema": {"name": "w",
        "schema": {"type": "object", "properties": {"sky": {"type": "string"}}}}});
    for stream in [false, true] {
        let body = json!({"model": "sonnet", "stream": stream, "tools": weather_tool_openai(),
            "response_format": format, "messages": [user]});
        let (status, text) = post(&s, "key-a", "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{text}");
        if stream {
            let chunks: Vec<Value> = sse_events(&text)
                .iter()
                .filter_map(|(_, d)| serde_json::from_str(d).ok())
                .collect();
            let finish: Vec<&Value> = chunks
                .iter()
                .map(|c| &c["choices"][0]["finish_reason"])
                .filter(|f| !f.is_null())
                .collect();
            assert_eq!(finish, [&json!("tool_calls")], "{text}");
            let name = chunks.iter().find_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str()
            });
            assert_eq!(name, Some("get_weather"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
            let call = &v["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["function"]["name"], "get_weather", "{v}");
        }
    }
    // Both flags reached the CLI.
    let log = log(&s);
    assert!(log.contains("ARG:--json-schema"), "{log}");
    assert!(log.contains("ARG:--mcp-config"), "{log}");
}

#[tokio::test]
async fn shutdown_ends_held_runs_at_once() {
    let s = server(|c| c.shutdown_timeout = 20.0).await;
    let body = json!({"model": "sonnet", "tools": weather_tool_openai(),
        "messages": [{"role": "user", "content": "[[scenario:tool_call]] w?"}]});
    let (status, _) = post_json(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let pid = s.state.backend.held_pids()[0];
    let t = std::time::Instant::now();
    s.shutdown().await;
    // A held run has no request in flight: it neither waits out the grace period nor
    // survives `serve`.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists())
        .await,
        "the held CLI process is gone"
    );
}
