//! Structured output, effort and thinking on both APIs, against the fake CLI (which
//! mimics the real CLI's `--json-schema` StructuredOutput call, prose answers, thinking
//! deltas; see `real_structured.rs` for the same against the real CLI).

use serde_json::{json, Value};

use crate::harness::{chat_body, messages_body, post, sse_events, Opts, TestServer};

const JSON_ANSWER: &str = r#"{"name":"Ada","age":36}"#;

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn server() -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_JSON", JSON_ANSWER.to_string())],
        ..Opts::default()
    })
    .await
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
           "required": ["name", "age"], "additionalProperties": false})
}

fn chat_schema(text: &str, stream: bool) -> Value {
    let mut b = chat_body(text, stream);
    b["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    b
}

fn messages_schema(text: &str, stream: bool) -> Value {
    let mut b = messages_body(text, stream);
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": person_schema()}});
    b
}

/// The argv of every fake CLI run so far (one entry per `ARG:` line).
fn argv(s: &TestServer) -> Vec<String> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ARG:"))
        .map(str::to_string)
        .collect()
}

/// The value after `flag` in the last run's argv.
fn flag_value(s: &TestServer, flag: &str) -> Option<String> {
    let args = argv(s);
    args.iter()
        .rposition(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn openai_stream_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(json_of)
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn openai_json_schema_answers_with_the_structured_output() {
    let s = server().await;
    let (status, _, body) = post(&s, "/v1/chat/completions", &chat_schema("a person", false)).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(json_of(content), json_of(JSON_ANSWER));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The schema reached the CLI as its flag, compact.
    assert_eq!(
        flag_value(&s, "--json-schema").map(|t| json_of(&t)),
        Some(person_schema())
    );
    // Streaming: the StructuredOutput call's JSON fragments are the text deltas.
    let (status, _, body) = post(&s, "/v1/chat/completions", &chat_schema("a person", true)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&openai_stream_text(&body)), json_of(JSON_ANSWER));
}

#[tokio::test]
async fn json_object_uses_a_permissive_object_schema() {
    let s = server().await;
    let mut b = chat_body("json please", false);
    b["response_format"] = json!({"type": "json_object"});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        flag_value(&s, "--json-schema").as_deref(),
        Some(r#"{"type":"object"}"#)
    );
    // Plain text asks for no schema.
    let mut b = chat_body("text please", false);
    b["response_format"] = json!({"type": "text"});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["choices"][0]["message"]["content"],
        "Hello from the fake CLI."
    );
}

#[tokio::test]
async fn anthropic_output_config_format_and_beta_output_format() {
    let s = server().await;
    let (status, _, body) = post(&s, "/v1/messages", &messages_schema("a person", false)).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["content"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        json_of(v["content"][0]["text"].as_str().unwrap()),
        json_of(JSON_ANSWER)
    );
    let mut b = messages_body("a person", true);
    b["output_format"] = json!({"type": "json_schema", "schema": person_schema()});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    let text: String = sse_events(&body)
        .iter()
        .map(|(_, d)| json_of(d))
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(json_of(&text), json_of(JSON_ANSWER));
    assert_eq!(
        flag_value(&s, "--json-schema").map(|t| json_of(&t)),
        Some(person_schema())
    );
}

#[tokio::test]
async fn a_prose_answer_is_never_a_200_on_either_api() {
    let s = server().await;
    for stream in [false, true] {
        let (status, headers, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_schema("[[scenario:prose]] a person", stream),
        )
        .await;
        assert_eq!(status, 502, "stream {stream}: {body}");
        assert_eq!(headers["x-should-retry"], "true");
        assert_eq!(json_of(&body)["error"]["code"], "structured_output_missing");
        assert!(
            !body.contains("Hello from the fake CLI"),
            "no prose leaks: {body}"
        );
        let (status, _, body) = post(
            &s,
            "/v1/messages",
            &messages_schema("[[scenario:prose]] a person", stream),
        )
        .await;
        assert_eq!(status, 502, "stream {stream}: {body}");
        assert_eq!(json_of(&body)["error"]["type"], "api_error");
    }
    // The same prose without a schema is an ordinary answer.
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_body("[[scenario:prose]] hi", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_rules_decide_the_prose_answer_status() {
    let rules = crate::harness::default_rules_with_probe(0.0, 0.0, 5.0);
    let from = "    status: 502\n    headers:\n      x-should-retry: \"true\"\n    match:\n      condition: [structured_output_missing]";
    assert!(rules.contains(from), "the embedded kind's shape changed");
    let rules = rules.replace(
        from,
        "    status: 422\n    match:\n      condition: [structured_output_missing]",
    );
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules),
        ..Opts::default()
    })
    .await;
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_schema("[[scenario:prose]] a person", false),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn schema_retries_exhausted_is_a_422_and_bad_schemas_are_400s() {
    let s = server().await;
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_schema("[[scenario:schema_invalid]] a person", false),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "structured_output_invalid");
    let bad_openai = [
        json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "a"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "bogus": 1}}),
        json!({"type": "yaml"}),
    ];
    for f in bad_openai {
        let mut b = chat_body("x", false);
        b["response_format"] = f.clone();
        let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
        assert_eq!(status, 400, "{f}: {body}");
        assert_eq!(
            json_of(&body)["error"]["type"],
            "invalid_request_error",
            "{body}"
        );
    }
    let huge = json!({"type": "object", "description": "x".repeat(70 * 1024)});
    let mut b = messages_body("x", false);
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": huge}});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most"), "{body}");
    for c in [
        json!({"format": {"type": "text"}}),
        json!({"format": {"type": "json_schema"}}),
        json!({"task_budget": 5}),
        json!({"effort": "extreme"}),
    ] {
        let mut b = messages_body("x", false);
        b["output_config"] = c.clone();
        let (status, _, body) = post(&s, "/v1/messages", &b).await;
        assert_eq!(status, 400, "{c}: {body}");
    }
    let before = argv(&s).iter().filter(|a| *a == "--json-schema").count();
    assert_eq!(before, 1, "refused requests started no CLI");
}

#[tokio::test]
async fn effort_maps_to_the_cli_flag_and_unknown_levels_are_refused() {
    let s = server().await;
    for (given, flag) in [
        ("minimal", "low"),
        ("low", "low"),
        ("high", "high"),
        ("xhigh", "xhigh"),
    ] {
        let mut b = chat_body("x", false);
        b["reasoning_effort"] = json!(given);
        let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
        assert_eq!(status, 200, "{given}: {body}");
        assert_eq!(flag_value(&s, "--effort").as_deref(), Some(flag), "{given}");
    }
    for given in ["none", "max", "turbo"] {
        let mut b = chat_body("x", false);
        b["reasoning_effort"] = json!(given);
        let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
        assert_eq!(status, 400, "{given}: {body}");
        assert_eq!(json_of(&body)["error"]["param"], "reasoning_effort");
    }
    for level in ["low", "medium", "high", "xhigh", "max"] {
        let mut b = messages_body("x", false);
        b["output_config"] = json!({"effort": level});
        let (status, _, body) = post(&s, "/v1/messages", &b).await;
        assert_eq!(status, 200, "{level}: {body}");
        assert_eq!(flag_value(&s, "--effort").as_deref(), Some(level));
    }
    // Without effort, no flag: the CLI's default.
    let runs = argv(&s).iter().filter(|a| *a == "--effort").count();
    let (status, _, _) = post(&s, "/v1/messages", &messages_body("x", false)).await;
    assert_eq!(status, 200);
    assert_eq!(argv(&s).iter().filter(|a| *a == "--effort").count(), runs);
}

#[tokio::test]
async fn thinking_config_maps_to_flags_and_bad_values_are_refused() {
    let s = server().await;
    let cases = [
        (
            json!({"type": "enabled", "budget_tokens": 2048}),
            "--max-thinking-tokens",
            "2048",
        ),
        (json!({"type": "disabled"}), "--thinking", "disabled"),
        (json!({"type": "adaptive"}), "--thinking", "adaptive"),
        (
            json!({"type": "adaptive", "display": "summarized"}),
            "--thinking-display",
            "summarized",
        ),
    ];
    for (t, flag, value) in cases {
        let mut b = messages_body("x", false);
        b["max_tokens"] = json!(4096);
        b["thinking"] = t.clone();
        let (status, _, body) = post(&s, "/v1/messages", &b).await;
        assert_eq!(status, 200, "{t}: {body}");
        assert_eq!(flag_value(&s, flag).as_deref(), Some(value), "{t}");
    }
    for t in [
        json!({"type": "enabled", "budget_tokens": 100}),
        json!({"type": "enabled", "budget_tokens": 8192}),
        json!({"type": "enabled"}),
        json!({"type": "sometimes"}),
        json!({"type": "disabled", "budget_tokens": 2048}),
        json!({"type": "adaptive", "display": "full"}),
    ] {
        let mut b = messages_body("x", false);
        b["max_tokens"] = json!(4096);
        b["thinking"] = t.clone();
        let (status, _, body) = post(&s, "/v1/messages", &b).await;
        assert_eq!(status, 400, "{t}: {body}");
        assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    }
}

fn thinking_request(stream: bool) -> Value {
    let mut b = messages_body("[[scenario:thinking]] 2+2?", stream);
    b["max_tokens"] = json!(4096);
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    b
}

#[tokio::test]
async fn anthropic_clients_that_enable_thinking_get_thinking_blocks_in_order() {
    let s = server().await;
    let (status, _, body) = post(&s, "/v1/messages", &thinking_request(false)).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(
        v["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think. 2+2 is 4.", "signature": "sig_fake_1"},
            {"type": "text", "text": "Hello from the fake CLI."}
        ])
    );
    let (status, _, body) = post(&s, "/v1/messages", &thinking_request(true)).await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = sse_events(&body).iter().map(|(_, d)| json_of(d)).collect();
    let shape: Vec<String> = events
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "content_block_start" => {
                    format!(
                        "start {} {}",
                        e["index"],
                        e["content_block"]["type"].as_str().unwrap()
                    )
                }
                "content_block_delta" => {
                    format!(
                        "delta {} {}",
                        e["index"],
                        e["delta"]["type"].as_str().unwrap()
                    )
                }
                "content_block_stop" => format!("stop {}", e["index"]),
                _ => kind,
            }
        })
        .collect();
    assert_eq!(
        shape,
        [
            "message_start",
            "ping",
            "start 0 thinking",
            "delta 0 thinking_delta",
            "delta 0 thinking_delta",
            "delta 0 signature_delta",
            "stop 0",
            "start 1 text",
            "delta 1 text_delta",
            "stop 1",
            "message_delta",
            "message_stop"
        ],
        "{body}"
    );
    let thinking: String = events
        .iter()
        .filter_map(|e| e["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Let me think. 2+2 is 4.");
    assert!(events
        .iter()
        .any(|e| e["delta"]["signature"] == "sig_fake_1"));
}

#[tokio::test]
async fn without_thinking_enabled_no_thinking_reaches_either_api() {
    let s = server().await;
    for stream in [false, true] {
        let (status, _, body) = post(
            &s,
            "/v1/messages",
            &messages_body("[[scenario:thinking]] 2+2?", stream),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("thinking"), "{body}");
        let (status, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_body("[[scenario:thinking]] 2+2?", stream),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains("reasoning_content") && !body.contains("Let me think"),
            "{body}"
        );
    }
    // Thinking disabled: none either.
    let mut b = thinking_request(false);
    b["thinking"] = json!({"type": "disabled"});
    let (_, _, body) = post(&s, "/v1/messages", &b).await;
    assert!(!body.contains("Let me think"), "{body}");
}

#[tokio::test]
async fn openai_reasoning_content_is_an_opt_in_config_key() {
    let s = TestServer::start(Opts {
        tweak: Box::new(|c| c.openai.reasoning_content = true),
        ..Opts::default()
    })
    .await;
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_body("[[scenario:thinking]] 2+2?", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = &json_of(&body)["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "Let me think. 2+2 is 4.");
    assert_eq!(m["content"], "Hello from the fake CLI.");
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_body("[[scenario:thinking]] 2+2?", true),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reasoning: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(json_of)
        .filter_map(|c| {
            c["choices"][0]["delta"]["reasoning_content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(reasoning, "Let me think. 2+2 is 4.");
    assert_eq!(openai_stream_text(&body), "Hello from the fake CLI.");
}

#[tokio::test]
async fn thinking_blocks_sent_back_go_into_the_synthesized_session() {
    let s = server().await;
    let mut b = messages_body("x", false);
    b["messages"] = json!([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Adding.", "signature": "sig_back"},
            {"type": "text", "text": "4"}]},
        {"role": "user", "content": "and 3+3?"}
    ]);
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    // The fake CLI logs the session file it resumed, line by line.
    let log = std::fs::read_to_string(&s.log_file).unwrap();
    let assistant = log
        .lines()
        .filter_map(|l| l.strip_prefix("RESUME_LINE:"))
        .map(json_of)
        .find(|l| l["type"] == "assistant")
        .unwrap_or_else(|| panic!("no assistant entry in {log}"));
    assert_eq!(
        assistant["message"]["content"],
        json!([{"type": "thinking", "thinking": "Adding.", "signature": "sig_back"},
               {"type": "text", "text": "4"}])
    );
}

#[tokio::test]
async fn a_kept_conversation_process_is_continued_only_with_the_same_schema() {
    let s = server().await;
    let spawns = |s: &TestServer| {
        std::fs::read_to_string(&s.log_file)
            .unwrap_or_default()
            .matches("=== fake-claude pid")
            .count()
    };
    let (status, _, body) = post(&s, "/v1/chat/completions", &chat_schema("a person", false)).await;
    assert_eq!(status, 200, "{body}");
    let answer = json_of(&body)["choices"][0]["message"]["content"].clone();
    assert_eq!(spawns(&s), 1);
    let follow_up = |schema: Value| {
        let mut b = chat_schema("x", false);
        b["messages"] = json!([
            {"role": "user", "content": "a person"},
            {"role": "assistant", "content": answer.clone()},
            {"role": "user", "content": "another"}
        ]);
        b["response_format"]["json_schema"]["schema"] = schema;
        b
    };
    // A different schema is a different process: a fresh run (with the history as a session).
    let (status, _, body) = post(
        &s,
        "/v1/chat/completions",
        &follow_up(json!({"type": "object", "properties": {"other": {"type": "string"}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        spawns(&s),
        2,
        "another schema must not reuse the kept process"
    );
    // The same schema continues in the kept process: no new spawn.
    let (status, _, body) = post(&s, "/v1/chat/completions", &follow_up(person_schema())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        spawns(&s),
        2,
        "the kept process answers the same conversation and schema"
    );
}
