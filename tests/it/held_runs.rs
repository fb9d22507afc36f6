//! Held tool runs in every client shape (fake CLI): results spread over several messages
//! (OpenAI `tool` messages, Responses `function_call_output` items, Anthropic results split
//! over user messages) and calls echoed with their input normalised continue the held run;
//! a follow-up without the results ends it at once; held runs give way to waiting requests,
//! are capped per key, leave when their process dies, and never switch off the watchdogs
//! before they are held.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{eventually, get_text, Opts, TestServer};

async fn server(
    env: Vec<(&'static str, String)>,
    tweak: impl FnOnce(&mut ccgate::config::Config) + Send + 'static,
) -> TestServer {
    let mut all = vec![("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#.to_string())];
    all.extend(env);
    TestServer::start(Opts {
        api_keys: vec!["key-a".into(), "key-b".into()],
        env: all,
        tweak: Box::new(tweak),
        ..Opts::default()
    })
    .await
}

fn openai_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {}}}}])
}

fn responses_tools() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "get_time",
        "parameters": {"type": "object", "properties": {}}}])
}

fn anthropic_tools() -> Value {
    json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}])
}

async fn post(s: &TestServer, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .post(s.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("an answer within 20 s");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn spawns(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("=== fake-claude pid"))
        .count()
}

async fn metric(s: &TestServer, name: &str) -> f64 {
    let m = get_text(s, "/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

/// Asserts the continuation reused the held process and nothing is left held.
async fn assert_continued(s: &TestServer) {
    assert_eq!(spawns(s), 1, "the held run continued, no respawn");
    assert_eq!(metric(s, "ccgate_tool_runs_continued_total").await, 1.0);
    assert!(s.state.backend.held_pids().is_empty(), "no held run left");
    assert_eq!(metric(s, "ccgate_tool_runs_held").await, 0.0);
}

#[tokio::test]
async fn openai_chat_two_parallel_tool_messages_continue_the_held_run() {
    let s = server(vec![], |_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:parallel_tool_calls]] both?"});
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{v}");
    let mut messages = vec![
        user,
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
    ];
    for (c, r) in calls.iter().zip(["one", "two"]) {
        messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": r}));
    }
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": messages});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("one") && text.contains("two"), "{v}");
    assert_continued(&s).await;
}

#[tokio::test]
async fn responses_two_function_call_outputs_continue_the_held_run() {
    let s = server(vec![], |_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:parallel_tool_calls]] both?"});
    let body = json!({"model": "sonnet", "tools": responses_tools(), "input": [user]});
    let (status, v) = post(&s, "key-a", "/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    let calls: Vec<Value> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "function_call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "{v}");
    // The whole history as a stateless client sends it: the calls, then one output each.
    let mut input = vec![user];
    for c in &calls {
        input.push(
            json!({"type": "function_call", "call_id": c["call_id"], "name": c["name"],
            "arguments": c["arguments"]}),
        );
    }
    for (c, r) in calls.iter().zip(["one", "two"]) {
        input.push(json!({"type": "function_call_output", "call_id": c["call_id"], "output": r}));
    }
    let body = json!({"model": "sonnet", "tools": responses_tools(), "input": input});
    let (status, v) = post(&s, "key-a", "/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("one") && text.contains("two"), "{v}");
    assert_continued(&s).await;
}

#[tokio::test]
async fn anthropic_results_split_over_two_user_messages_continue_the_held_run() {
    let s = server(vec![], |_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:parallel_tool_calls]] both?"});
    let body = json!({"model": "sonnet", "max_tokens": 100, "tools": anthropic_tools(),
        "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    let content = v["content"].as_array().unwrap().clone();
    assert_eq!(content.len(), 2, "{v}");
    let result = |b: &Value, r: &str| json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"], "content": r}]});
    let body = json!({"model": "sonnet", "max_tokens": 100, "tools": anthropic_tools(),
        "messages": [user, {"role": "assistant", "content": content},
            result(&content[0], "one"), result(&content[1], "two")]});
    let (status, v) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("one") && text.contains("two"), "{v}");
    assert_continued(&s).await;
}

#[tokio::test]
async fn a_call_echoed_with_its_input_normalised_continues_the_held_run() {
    let s = server(
        vec![(
            "FAKE_CLAUDE_TOOL_INPUT",
            r#"{"city":"Paris","units":"C"}"#.to_string(),
        )],
        |_| {},
    )
    .await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "max_tokens": 100, "tools": anthropic_tools(),
        "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    let call = v["content"][0].clone();
    assert_eq!(call["type"], "tool_use", "{v}");
    // Claude Code as a client: keys reordered and a defaulted field added.
    let echoed = json!({"type": "tool_use", "id": call["id"], "name": call["name"],
        "input": {"units": "C", "city": "Paris", "replace_all": false}});
    let body = json!({"model": "sonnet", "max_tokens": 100, "tools": anthropic_tools(),
        "messages": [user, {"role": "assistant", "content": [echoed]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}]});
    let (status, v) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"], "tool said: sunny", "{v}");
    assert_continued(&s).await;
}

#[tokio::test]
async fn a_text_only_follow_up_ends_the_held_run_at_once() {
    let s = server(vec![], |_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.state.backend.held_pids().len(), 1);
    let held = s.state.backend.held_pids()[0];
    // smolagents' way: the call as text, the result as a text observation.
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user,
        {"role": "assistant", "content": "Action: get_weather(city=Paris)"},
        {"role": "user", "content": "Observation: sunny"}]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        eventually(Duration::from_secs(5), || !s
            .state
            .backend
            .held_pids()
            .contains(&held))
        .await,
        "the held run ended with the follow-up, not at tool_hold_timeout"
    );
    assert_eq!(s.state.backend.stats().snapshot().held_abandoned_total, 1);
    assert_eq!(metric(&s, "ccgate_tool_runs_continued_total").await, 0.0);
}

#[tokio::test]
async fn three_parallel_requests_after_three_abandoned_tool_calls_run_together() {
    let s = server(vec![("FAKE_CLAUDE_DELAY", "0.2".into())], |c| {
        c.cli.max_concurrent = 4;
        c.cli.keep_conversations = 0;
    })
    .await;
    for n in 0..3 {
        let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [
            {"role": "user", "content": format!("[[scenario:tool_call]] abandoned {n}")}]});
        let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(
        s.state.backend.held_pids().len(),
        3,
        "max_concurrent - 1 held"
    );
    let plain = |n: usize| {
        let s = &s;
        async move {
            let body = json!({"model": "sonnet", "messages": [
                {"role": "user", "content": format!("plain {n}")}]});
            post(s, "key-b", "/v1/chat/completions", &body).await
        }
    };
    let (a, b, c) = tokio::join!(plain(0), plain(1), plain(2));
    for (status, v) in [a, b, c] {
        assert_eq!(status, 200, "{v}");
    }
    // Two of them found no free slot and each ended a held run instead of waiting for
    // tool_hold_timeout (600 s here).
    assert_eq!(metric(&s, "ccgate_tool_runs_evicted_total").await, 2.0);
    assert_eq!(s.state.backend.held_pids().len(), 1);
}

#[tokio::test]
async fn one_keys_flood_of_tool_calls_leaves_another_keys_held_run_in_place() {
    let s = server(vec![], |c| {
        c.cli.max_concurrent = 8;
        c.cli.max_held_runs = 4;
    })
    .await;
    let call = |key: &'static str, n: usize| {
        let s = &s;
        async move {
            let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [
                {"role": "user", "content": format!("[[scenario:tool_call]] {key} {n}")}]});
            let (status, v) = post(s, key, "/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{v}");
        }
    };
    call("key-b", 0).await;
    let b_pid = s.state.backend.held_pids()[0];
    for n in 0..10 {
        call("key-a", n).await;
    }
    let held = s.state.backend.held_pids();
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(
        held.contains(&b_pid),
        "key-b's held run is still there: {held:?}"
    );
}

#[tokio::test]
async fn the_per_key_cap_ends_the_keys_own_oldest_held_run() {
    let s = server(vec![], |c| {
        c.cli.max_concurrent = 8;
        c.cli.max_held_runs = 4;
        c.cli.max_held_runs_per_key = Some(1);
    })
    .await;
    for (key, n) in [("key-a", 0), ("key-b", 0), ("key-a", 1)] {
        let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [
            {"role": "user", "content": format!("[[scenario:tool_call]] {key} {n}")}]});
        let (status, v) = post(&s, key, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{v}");
    }
    let tenants = s.state.backend.held_tenants();
    assert_eq!(tenants.len(), 2, "one per key: {tenants:?}");
    assert_ne!(tenants[0], tenants[1]);
}

#[tokio::test]
async fn a_held_run_whose_process_died_leaves_and_is_not_counted_as_continued() {
    let s = server(vec![], |_| {}).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let pid = s.state.backend.held_pids()[0];
    assert_eq!(metric(&s, "ccgate_tool_runs_held").await, 1.0);
    // The whole process group (the CLI and its heartbeat), as a crash or the OOM killer.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the held CLI");
    assert!(
        eventually(Duration::from_secs(5), || s
            .state
            .backend
            .held_pids()
            .is_empty())
        .await,
        "the dead run left the held runs"
    );
    assert_eq!(metric(&s, "ccgate_tool_runs_held").await, 0.0, "the gauge");
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user,
        {"role": "assistant", "content": null, "tool_calls": [call.clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: sunny");
    assert_eq!(spawns(&s), 2, "a fresh run answered");
    assert_eq!(metric(&s, "ccgate_tool_runs_continued_total").await, 0.0);
}

#[tokio::test]
async fn a_pending_call_before_the_run_is_held_leaves_the_watchdogs_on() {
    let s = server(vec![("FAKE_CLAUDE_STALL_AFTER_CALL", "1".into())], |c| {
        c.cli.inactivity_timeout = 1.0;
        c.cli.total_timeout = 3.0;
    })
    .await;
    let started = Instant::now();
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [
        {"role": "user", "content": "[[scenario:parallel_tool_calls]] both?"}]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_ne!(status, 200, "the stalled stream is a timeout: {v}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered by a watchdog"
    );
    assert!(s.state.backend.held_pids().is_empty());
}

#[tokio::test]
async fn tool_results_without_tools_and_without_kept_processes_are_answered_at_once() {
    let s = server(vec![], |c| {
        c.cli.keep_conversations = 0;
        c.cli.inactivity_timeout = 60.0;
    })
    .await;
    let started = Instant::now();
    let body = json!({"model": "sonnet", "max_tokens": 100, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x1", "content": "sunny"}]}]});
    let (status, v) = post(&s, "key-a", "/v1/messages", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"], "tool said: sunny", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not after inactivity_timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn one_keys_flood_of_conversations_leaves_another_keys_kept_process_in_place() {
    let s = server(vec![], |c| {
        c.cli.max_concurrent = 8;
        c.cli.keep_conversations = 3;
    })
    .await;
    let ask = |key: &'static str, n: usize| {
        let s = &s;
        async move {
            let body = json!({"model": "sonnet", "messages": [
                {"role": "user", "content": format!("hello from {key} {n}")}]});
            let (status, v) = post(s, key, "/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{v}");
        }
    };
    ask("key-b", 0).await;
    assert!(
        eventually(Duration::from_secs(5), || s.state.backend.kept_pids().len()
            == 1)
        .await
    );
    let b_pid = s.state.backend.kept_pids()[0];
    for n in 0..8 {
        ask("key-a", n).await;
    }
    let kept = s.state.backend.kept_pids();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(
        kept.contains(&b_pid),
        "key-b's kept process is still there: {kept:?}"
    );
}

/// Processes that ended by themselves after their stdin closed (the fake logs it; a
/// SIGKILLed one cannot).
fn graceful_exits(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("STDIN_EOF_EXIT"))
        .count()
}

#[tokio::test]
async fn an_evicted_kept_process_and_an_unkept_tool_run_end_by_closing_stdin_not_sigkill() {
    let s = server(vec![], |c| {
        c.cli.max_concurrent = 1;
        c.cli.keep_conversations = 1;
    })
    .await;
    let ask = |text: &'static str| {
        let s = &s;
        async move {
            let body = json!({"model": "sonnet", "messages": [{"role": "user", "content": text}]});
            let (status, v) = post(s, "key-a", "/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{v}");
        }
    };
    ask("first conversation").await;
    assert_eq!(s.state.backend.kept_pids().len(), 1);
    // The only slot is the kept process's: the next conversation ends it first.
    ask("second conversation").await;
    assert!(
        eventually(Duration::from_secs(5), || graceful_exits(&s) == 1).await,
        "the evicted kept process exited by itself: {}",
        std::fs::read_to_string(&s.log_file).unwrap_or_default()
    );

    // Without kept processes a tool run's final answer is not kept: it ends the same way.
    let s = server(vec![], |c| c.cli.keep_conversations = 0).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let body = json!({"model": "sonnet", "tools": openai_tools(), "messages": [user,
        {"role": "assistant", "content": null, "tool_calls": [call.clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]});
    let (status, v) = post(&s, "key-a", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        eventually(Duration::from_secs(5), || graceful_exits(&s) == 1).await,
        "the un-kept tool run exited by itself"
    );
}
