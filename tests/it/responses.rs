//! `POST /v1/responses` with the fake CLI: the response object, the streaming event
//! sequence, a failure after the stream began, the health gate, `previous_response_id`
//! (continues the kept process; never another API key's; expires) and bad inputs; and
//! `POST /v1/messages/count_tokens` (Anthropic's shape, the estimate header, no CLI).

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, post, sse_events, Opts, TestServer};

fn body(input: Value, stream: bool) -> Value {
    json!({"model": "sonnet", "input": input, "stream": stream})
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Number of CLI invocations the fake logged so far.
fn spawns(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("CWD:"))
        .count()
}

/// The pid that got the user line whose content is `text` (the fake CLI's log).
fn pid_of(s: &TestServer, text: &str) -> Option<u32> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("PID_STDIN:"))
        .filter_map(|rest| {
            let (pid, line) = rest.split_once(':')?;
            let v: Value = serde_json::from_str(line).ok()?;
            (v["type"] == "user" && v["message"]["content"] == text).then(|| pid.parse().ok())?
        })
        .next_back()
}

fn output_text(v: &Value) -> &str {
    v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test]
async fn a_text_answer_is_a_response_object_with_usage() {
    let s = TestServer::start(Opts::default()).await;
    let (status, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "hi", "instructions": "be brief",
                "max_output_tokens": 64, "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v = json_of(&text);
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "sonnet");
    assert_eq!(v["instructions"], "be brief");
    assert_eq!(v["max_output_tokens"], 64);
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["error"], Value::Null);
    let item = &v["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["status"], "completed");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(output_text(&v), "Hello from the fake CLI.");
    let u = &v["usage"];
    assert!(u["input_tokens"].as_u64().unwrap() > 0, "{u}");
    assert!(u["output_tokens"].as_u64().unwrap() > 0, "{u}");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
    );
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    let metrics = s.state.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(r#"endpoint="responses""#) && l.contains(r#"status="200""#)),
        "{metrics}"
    );
}

/// The event names and data of a streamed response, checking the sequence numbers.
fn events(text: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = sse_events(text)
        .into_iter()
        .filter(|(name, _)| name.is_some())
        .map(|(name, data)| (name.unwrap(), json_of(&data)))
        .collect();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "{data}");
        assert_eq!(data["sequence_number"], i, "{text}");
    }
    events
}

#[tokio::test]
async fn a_stream_has_the_responses_event_sequence() {
    let s = TestServer::start(Opts::default()).await;
    let (status, headers, text) = post(&s, "/v1/responses", &body(json!("hi"), true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(
        deltas >= 2,
        "the fake CLI streams several deltas: {names:?}"
    );
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, want);
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    let id = created["id"].as_str().unwrap();
    let item_id = events[2].1["item"]["id"].as_str().unwrap();
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| {
            assert_eq!(d["item_id"], item_id);
            d["delta"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed, "Hello from the fake CLI.");
    let done = &events[deltas + 4].1;
    assert_eq!(done["text"], streamed.as_str());
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["id"], id);
    assert_eq!(completed["status"], "completed");
    assert_eq!(output_text(completed), streamed);
    assert!(completed["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_failure_after_the_stream_began_ends_with_error_and_response_failed() {
    let s = TestServer::start(Opts::default()).await;
    let (status, _, text) = post(
        &s,
        "/v1/responses",
        &body(json!("[[scenario:interrupted]]"), true),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert!(names.contains(&"response.output_text.delta"), "{names:?}");
    assert_eq!(
        names[names.len() - 2..],
        ["error", "response.failed"],
        "{names:?}"
    );
    assert!(!names.contains(&"response.completed"));
    let error = &events[names.len() - 2].1;
    assert!(
        error["code"].is_string() && error["message"].is_string(),
        "{error}"
    );
    let failed = &events.last().unwrap().1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], error["code"]);
    assert!(!text.contains("Request interrupted by user"), "{text}");
}

#[tokio::test]
async fn the_closed_gate_answers_401_in_openai_shape_without_spawning() {
    let s = TestServer::start(Opts::default()).await;
    s.state.health.mark_failed(
        ccgate::health::Source::Probe,
        "auth_failure",
        "Not logged in · Please run /login",
    );
    let before = spawns(&s);
    for stream in [false, true] {
        let (status, _, text) = post(&s, "/v1/responses", &body(json!("hi"), stream)).await;
        assert_eq!(status, 401, "{text}");
        let v = json_of(&text);
        assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        assert_eq!(v["error"]["code"], "claude_cli_not_authenticated");
    }
    assert_eq!(spawns(&s), before, "the gate spawned a CLI");
    // Counting tokens needs no CLI: it answers while the gate is closed.
    let (status, headers, text) = post(
        &s,
        "/v1/messages/count_tokens",
        &json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-ccgate-token-count"], "estimate");
}

#[tokio::test]
async fn bad_inputs_are_400s_in_openai_shape() {
    let s = TestServer::start(Opts::default()).await;
    let cases = [
        (json!({"model": "sonnet"}), "input"),
        (json!({"model": "sonnet", "input": []}), "input"),
        (
            json!({"model": "sonnet", "input": "hi", "tools": [{"type": "function", "name": "bad name", "parameters": {}}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "sonnet", "input": "hi", "tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "sonnet", "input": "hi", "tools": [{"type": "web_search_preview", "search_context_size": "high"}]}),
            "tools[0].search_context_size",
        ),
        (
            json!({"model": "sonnet", "input": "hi", "text": {"format": {"type": "xml"}}}),
            "text.format",
        ),
        (
            json!({"model": "sonnet", "input": "hi", "reasoning": {"effort": "none"}}),
            "reasoning.effort",
        ),
        (
            json!({"model": "sonnet", "input": [{"type": "function_call_output", "call_id": "c", "output": "r"}]}),
            "input",
        ),
        (
            json!({"model": "sonnet", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]}),
            "input[0].content[0].image_url",
        ),
        (json!({"model": "", "input": "hi"}), "model"),
    ];
    for (b, param) in cases {
        let (status, _, text) = post(&s, "/v1/responses", &b).await;
        assert_eq!(status, 400, "{b}: {text}");
        let v = json_of(&text);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{b}: {v}");
    }
    let (status, _, text) = post(&s, "/v1/responses", &json!("not an object")).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(json_of(&text)["error"]["type"], "invalid_request_error");
    assert_eq!(spawns(&s), 0);
}

async fn echo_server(idle: f64) -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        api_keys: vec!["key-a".into(), "key-b".into()],
        tweak: Box::new(move |c| c.cli.conversation_idle_timeout = idle),
        ..Opts::default()
    })
    .await
}

async fn respond(s: &TestServer, key: &str, b: &Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/responses"))
        .bearer_auth(key)
        .json(b)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn previous_response_id_continues_the_kept_process() {
    let s = echo_server(300.0).await;
    let (st, r1) = respond(&s, "key-a", &json!({"model": "sonnet", "input": "first"})).await;
    assert_eq!(st, 200, "{r1}");
    assert_eq!(output_text(&r1), "echo: first");
    let p1 = pid_of(&s, "first").unwrap();
    assert_eq!(s.state.backend.kept_pids(), [p1]);
    // Streaming, named by the previous id only: the kept process gets just the new line.
    let (st, _, text) = {
        let r = client()
            .post(s.url("/v1/responses"))
            .bearer_auth("key-a")
            .json(
                &json!({"model": "sonnet", "input": "second", "stream": true,
                          "previous_response_id": r1["id"]}),
            )
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), (), r.text().await.unwrap())
    };
    assert_eq!(st, 200, "{text}");
    let r2 = events(&text).last().unwrap().1["response"].clone();
    assert_eq!(output_text(&r2), "echo: second");
    assert_eq!(r2["previous_response_id"], r1["id"]);
    assert_eq!(
        pid_of(&s, "second"),
        Some(p1),
        "continued in the same process"
    );
    let (st, r3) = respond(
        &s,
        "key-a",
        &json!({"model": "sonnet", "input": [{"role": "user", "content": "third"}],
                "previous_response_id": r2["id"]}),
    )
    .await;
    assert_eq!(st, 200, "{r3}");
    assert_eq!(output_text(&r3), "echo: third");
    assert_eq!(pid_of(&s, "third"), Some(p1));
    let stats = s.state.backend.stats().snapshot();
    assert_eq!(stats.spawned_total, 1, "{stats:?}");
    assert_eq!(stats.kept_hits_total, 2, "{stats:?}");
}

#[tokio::test]
async fn previous_response_id_is_not_found_for_another_key_after_store_false_or_expiry() {
    let s = echo_server(0.5).await;
    let (_, r1) = respond(
        &s,
        "key-a",
        &json!({"model": "sonnet", "input": "secret plan"}),
    )
    .await;
    let not_found = |v: &Value| {
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["code"], "previous_response_not_found", "{v}");
        assert_eq!(v["error"]["param"], "previous_response_id", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("full conversation"),
            "{v}"
        );
    };
    let follow =
        |id: &Value| json!({"model": "sonnet", "input": "more", "previous_response_id": id});
    let before = spawns(&s);
    let (st, v) = respond(&s, "key-b", &follow(&r1["id"])).await;
    assert_eq!(st, 400);
    not_found(&v);
    assert_eq!(spawns(&s), before, "nothing ran for key-b");
    // Unknown ids too.
    let (st, v) = respond(&s, "key-a", &follow(&json!("resp_0123"))).await;
    assert_eq!(st, 400);
    not_found(&v);
    // store: false answers, but keeps nothing to continue.
    let (st, r2) = respond(
        &s,
        "key-a",
        &json!({"model": "sonnet", "input": "x", "store": false}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(r2["store"], false);
    let (st, v) = respond(&s, "key-a", &follow(&r2["id"])).await;
    assert_eq!(st, 400);
    not_found(&v);
    // Expired after the idle timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (st, v) = respond(&s, "key-a", &follow(&r1["id"])).await;
    assert_eq!(st, 400, "{v}");
    not_found(&v);
    // Unauthenticated callers get the gateway's 401 in OpenAI's shape.
    let (st, _, text) = post(&s, "/v1/responses", &body(json!("hi"), false)).await;
    assert_eq!(st, 401);
    assert_eq!(json_of(&text)["error"]["type"], "authentication_error");
    let metrics = s.state.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(r#"endpoint="responses""#)
                && l.contains("previous_response_not_found")),
        "{metrics}"
    );
}

#[tokio::test]
async fn count_tokens_answers_an_estimate_in_anthropic_shape() {
    let s = TestServer::start(Opts::default()).await;
    let r = client()
        .post(s.url("/v1/messages/count_tokens"))
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-4-5", "system": "You are a scientist",
                      "messages": [{"role": "user", "content": "Hello, Claude"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ccgate-token-count"], "estimate");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"input_tokens": 14}));
    // Longer input counts more; an image counts its pixels.
    let png = {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend(200u32.to_be_bytes());
        b.extend(200u32.to_be_bytes());
        b.extend([8, 6, 0, 0, 0]);
        b
    };
    let b64 = base64_encode(&png);
    let (st, _, text) = post(
        &s,
        "/v1/messages/count_tokens",
        &json!({"model": "sonnet", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}}]}]}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let n = json_of(&text)["input_tokens"].as_u64().unwrap();
    assert_eq!(n, 3 + 3 + 4 + 54, "{text}");
    // Errors are Anthropic's.
    for (b, start) in [
        (json!({"model": "sonnet"}), "messages: Field required"),
        (json!({"model": "sonnet", "messages": []}), "messages:"),
        (
            json!({"model": "sonnet", "messages": [{"role": "tool", "content": "x"}]}),
            "messages.0.role",
        ),
        (
            json!({"model": "sonnet", "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}),
            "messages.0.content.0",
        ),
    ] {
        let (st, _, text) = post(&s, "/v1/messages/count_tokens", &b).await;
        assert_eq!(st, 400, "{b}: {text}");
        let v = json_of(&text);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(start),
            "{v}"
        );
    }
    assert_eq!(spawns(&s), 0, "counting spawns no CLI");
    let metrics = s.state.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(r#"endpoint="count_tokens""#) && l.contains("200")),
        "{metrics}"
    );
}

fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(c) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
