//! What agent clients send on their defaults (issue 22), against the fake CLI: the
//! `request-id` header, `service_tier`, the Responses echo of tools and reasoning, type
//! errors in each API's words, `end_turn` after structured output, `thinking.display:
//! "updates"`, `tool_reference` blocks, `$schema` declarations. `real_clients.rs` has the
//! same against the real CLI.

use serde_json::{json, Value};

use crate::harness::{chat_body, messages_body, post, sse_events, Opts, TestServer};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The argv of every fake CLI run so far.
fn argv(s: &TestServer) -> Vec<String> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ARG:"))
        .map(str::to_string)
        .collect()
}

fn flag_value(s: &TestServer, flag: &str) -> Option<String> {
    let args = argv(s);
    args.iter()
        .rposition(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn events(body: &str) -> Vec<Value> {
    sse_events(body)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| json_of(d))
        .collect()
}

#[tokio::test]
async fn anthropic_answers_carry_request_id_and_chat_completions_service_tier() {
    let s = TestServer::start(Opts::default()).await;
    let (status, headers, body) = post(&s, "/v1/messages", &messages_body("hi", false)).await;
    assert_eq!(status, 200, "{body}");
    let id = headers["request-id"].to_str().unwrap();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(headers["x-request-id"], id);
    // An error answer too (what the SDKs put in their exceptions).
    let (status, headers, _) = post(&s, "/v1/messages", &json!({"model": "sonnet"})).await;
    assert_eq!(status, 400);
    assert!(headers.contains_key("request-id"));

    let (status, headers, body) = post(&s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !headers.contains_key("request-id"),
        "OpenAI's is x-request-id"
    );
    assert_eq!(json_of(&body)["service_tier"], "default");
    let mut b = chat_body("hi", true);
    b["stream_options"] = json!({"include_usage": true});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{body}");
    let chunks = events(&body);
    assert!(chunks.len() > 2, "{body}");
    for c in &chunks {
        assert_eq!(c["service_tier"], "default", "{c}");
    }
}

#[tokio::test]
async fn a_response_echoes_the_requests_tools_and_reasoning() {
    let s = TestServer::start(Opts::default()).await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let b = json!({"model": "sonnet", "input": "hi", "tools": tools,
        "reasoning": {"effort": "low"}});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["tools"], tools);
    assert_eq!(v["reasoning"], json!({"effort": "low", "summary": null}));
    let mut b = b;
    b["stream"] = json!(true);
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    assert_eq!(ev[0]["response"]["tools"], tools);
    assert_eq!(ev.last().unwrap()["response"]["reasoning"]["effort"], "low");
    // Without them: no tools, null reasoning.
    let (_, _, body) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "hi"}),
    )
    .await;
    let v = json_of(&body);
    assert_eq!(v["tools"], json!([]));
    assert_eq!(v["reasoning"], json!({"effort": null, "summary": null}));
}

#[tokio::test]
async fn a_wrongly_typed_field_is_named_in_the_apis_words() {
    let s = TestServer::start(Opts::default()).await;
    let mut b = messages_body("hi", false);
    b["max_tokens"] = json!("256");
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400);
    let v = json_of(&body);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "max_tokens: Input should be an integer"
    );
    let b = json!({"model": "sonnet", "messages": "hi"});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 400);
    let v = json_of(&body);
    assert_eq!(
        v["error"]["message"],
        "Invalid type for 'messages': expected an array, but got a string instead."
    );
    assert_eq!(v["error"]["param"], "messages");
    let (status, _, body) = post(&s, "/v1/responses", &json!({"input": "hi"})).await;
    assert_eq!(status, 400);
    let v = json_of(&body);
    assert_eq!(
        v["error"]["message"],
        "Missing required parameter: 'model'."
    );
    assert_eq!(v["error"]["param"], "model");
}

#[tokio::test]
async fn anthropic_structured_output_ends_with_end_turn() {
    let s = TestServer::start(Opts::default()).await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let mut b = messages_body("a json answer", false);
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["stop_reason"], "end_turn", "{v}");
    assert_eq!(v["content"][0]["type"], "text");
    b["stream"] = json!(true);
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    let delta = events(&body)
        .into_iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{body}");
}

#[tokio::test]
async fn claude_code_thinking_updates_and_tool_references_are_accepted() {
    let s = TestServer::start(Opts::default()).await;
    let mut b = messages_body("hi", false);
    b["thinking"] = json!({"type": "adaptive", "display": "updates"});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(flag_value(&s, "--thinking").as_deref(), Some("adaptive"));
    assert!(
        !argv(&s).iter().any(|a| a == "--thinking-display"),
        "`updates` is the CLI's own default: no flag"
    );
    b["thinking"] = json!({"type": "adaptive", "display": "sometimes"});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400, "{body}");

    // After ToolSearch, Claude Code sends the found tool as a tool_reference.
    let tool = |name: &str| {
        json!({"name": name, "description": "d", "input_schema": {"type": "object",
            "properties": {"query": {"type": "string"}}}})
    };
    let history = |referenced: &str| {
        json!([
            {"role": "user", "content": "edit the notebook"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                "name": "ToolSearch", "input": {"query": "notebook"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "tool_reference", "tool_name": referenced}]},
                {"type": "text", "text": "go on"}]}
        ])
    };
    let b = json!({"model": "sonnet", "max_tokens": 256,
        "tools": [tool("ToolSearch"), tool("NotebookEdit")], "messages": history("NotebookEdit")});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 200, "{body}");
    let mut b = b;
    b["messages"] = history("Nowhere");
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400, "{body}");
    let v = json_of(&body);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages.2.content.0.content.0.tool_name:"),
        "{v}"
    );
    // count_tokens reads the same content.
    let mut b = b;
    b["messages"] = history("NotebookEdit");
    let (status, _, body) = post(&s, "/v1/messages/count_tokens", &b).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn draft_declarations_are_normalised_and_a_refused_schema_is_a_400() {
    let s = TestServer::start(Opts::default()).await;
    // zod 4's toJSONSchema output.
    let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "properties": {"answer": {"type": "string"}},
        "required": ["answer"], "additionalProperties": false});
    let mut b = chat_body("a json answer", false);
    b["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "a", "schema": schema}});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{body}");
    let sent = json_of(&flag_value(&s, "--json-schema").unwrap());
    assert!(sent.get("$schema").is_none(), "{sent}");
    assert_eq!(sent["properties"], schema["properties"]);
    // A schema the CLI refuses anyway: a 400 quoting its reason, not a retryable 502.
    let mut b = messages_body("a json answer", false);
    b["output_config"] = json!({"format": {"type": "json_schema",
        "schema": {"type": "object", "prefixItems": [{"type": "string"}]}}});
    let (status, headers, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400, "{body}");
    assert!(!headers.contains_key("x-should-retry") || headers["x-should-retry"] == "false");
    let v = json_of(&body);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("strict mode: unknown keyword: \"prefixItems\""),
        "{v}"
    );
}

async fn keyed_server() -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        api_keys: vec!["key-a".into(), "key-b".into()],
        tweak: Box::new(|c| c.cli.conversation_idle_timeout = 300.0),
        ..Opts::default()
    })
    .await
}

async fn respond(s: &TestServer, key: &str, b: &Value) -> (u16, Value) {
    let r = crate::harness::client()
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
async fn item_references_resolve_among_the_keys_stored_items() {
    let s = keyed_server().await;
    let (st, r1) = respond(&s, "key-a", &json!({"model": "sonnet", "input": "first"})).await;
    assert_eq!(st, 200, "{r1}");
    let msg_id = r1["output"][0]["id"].as_str().unwrap().to_string();
    // The Vercel AI SDK's second turn: the earlier answer by reference.
    let input = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"type": "item_reference", "id": msg_id},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]}
    ]);
    let (st, r2) = respond(&s, "key-a", &json!({"model": "sonnet", "input": input})).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["output"][0]["content"][0]["text"], "echo: second");
    let stats = s.state.backend.stats().snapshot();
    assert_eq!(
        (stats.spawned_total, stats.kept_hits_total),
        (1, 1),
        "the referenced answer is the kept conversation's: {stats:?}"
    );
    // Streamed answers are referable too.
    let mut b = json!({"model": "sonnet", "input": "third", "stream": true});
    let r = crate::harness::client()
        .post(s.url("/v1/responses"))
        .bearer_auth("key-a")
        .json(&b)
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let done = events(&body).last().unwrap().clone();
    let streamed_id = done["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    b = json!({"model": "sonnet", "input": [
        {"role": "user", "content": "third"},
        {"type": "item_reference", "id": streamed_id},
        {"role": "user", "content": "fourth"}]});
    let (st, r4) = respond(&s, "key-a", &b).await;
    assert_eq!(st, 200, "{r4}");

    // Another key, an unknown id, and an answer not stored: the previous_response_id 400.
    for (key, id) in [("key-b", msg_id.as_str()), ("key-a", "msg_unknown")] {
        let b = json!({"model": "sonnet", "input": [
            {"role": "user", "content": "first"},
            {"type": "item_reference", "id": id},
            {"role": "user", "content": "second"}]});
        let (st, v) = respond(&s, key, &b).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "previous_response_not_found", "{v}");
        assert_eq!(v["error"]["param"], "input[1].id", "{v}");
    }
    let (_, r5) = respond(
        &s,
        "key-a",
        &json!({"model": "sonnet", "input": "fifth", "store": false}),
    )
    .await;
    let b = json!({"model": "sonnet", "input": [
        {"role": "user", "content": "fifth"},
        {"type": "item_reference", "id": r5["output"][0]["id"]},
        {"role": "user", "content": "sixth"}]});
    let (st, v) = respond(&s, "key-a", &b).await;
    assert_eq!(st, 400, "{v}");
}

/// A server whose fake CLI calls the first listed tool with `input`.
async fn tool_server(input: &str) -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_TOOL_INPUT", input.to_string())],
        ..Opts::default()
    })
    .await
}

fn spawns(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("CWD:"))
        .count()
}

#[tokio::test]
async fn codex_namespace_tools_are_flattened_and_calls_carry_their_namespace() {
    let s = tool_server(r#"{"task":"x"}"#).await;
    let tools = json!([
        {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
            {"type": "function", "name": "spawn_agent", "description": "Spawn",
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
        {"type": "function", "name": "exec_command", "parameters": {"type": "object",
            "properties": {"cmd": {"type": "string"}}}}
    ]);
    let b = json!({"model": "sonnet", "tools": tools, "input": "[[scenario:tool_call]] go"});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call", "{v}");
    assert_eq!(call["name"], "spawn_agent");
    assert_eq!(call["namespace"], "multi_agent_v1");
    assert_eq!(v["tools"], tools, "echoed as sent");
    // Continue with the call's output (the whole history, as Codex sends it).
    let b = json!({"model": "sonnet", "tools": tools, "input": [
        {"role": "user", "content": "[[scenario:tool_call]] go"},
        call.clone(),
        {"type": "function_call_output", "call_id": call["call_id"], "output": "spawned"}]});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["output"][0]["content"][0]["text"],
        "tool said: spawned"
    );
    assert_eq!(spawns(&s), 1, "the held run continued");
    // A namespace of something else than functions, a hosted tool: 400s naming them.
    for (tools, param) in [
        (
            json!([{"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}]),
            "tools[0].tools[0].type",
        ),
        (json!([{"type": "file_search"}]), "tools[0].type"),
    ] {
        let b = json!({"model": "sonnet", "tools": tools, "input": "hi"});
        let (status, _, body) = post(&s, "/v1/responses", &b).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(json_of(&body)["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn codex_custom_tools_answer_with_custom_tool_calls_streamed_and_not() {
    let patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch";
    let s = tool_server(&json!({"input": patch}).to_string()).await;
    let tools = json!([{"type": "custom", "name": "apply_patch", "description": "Edit files",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch"}}]);
    let b = json!({"model": "sonnet", "tools": tools, "input": "[[scenario:tool_call]] patch"});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    let call = v["output"][0].clone();
    assert_eq!(call["type"], "custom_tool_call", "{v}");
    assert_eq!(call["name"], "apply_patch");
    assert_eq!(call["input"], patch);
    assert!(call["id"].as_str().unwrap().starts_with("ctc_"), "{call}");
    let b = json!({"model": "sonnet", "tools": tools, "previous_response_id": v["id"],
        "input": [{"type": "custom_tool_call_output", "call_id": call["call_id"],
                   "output": "Done!"}]});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["output"][0]["content"][0]["text"],
        "tool said: Done!"
    );
    assert_eq!(spawns(&s), 1, "the held run continued");

    // Streamed: the custom tool's events.
    let b = json!({"model": "sonnet", "tools": tools, "stream": true,
        "input": "[[scenario:tool_call]] again"});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let mut kinds: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.custom_tool_call_input.delta",
            "response.custom_tool_call_input.done",
            "response.output_item.done",
            "response.completed"
        ],
        "{body}"
    );
    assert_eq!(ev[2]["item"]["type"], "custom_tool_call");
    assert_eq!(ev[4]["input"], patch);
    let done = &ev.last().unwrap()["response"]["output"][0];
    assert_eq!(done["input"], patch);
    // A grammar of an unknown syntax is refused by name.
    let tools = json!([{"type": "custom", "name": "t",
        "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"}}]);
    let (status, _, body) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "tools": tools, "input": "hi"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_of(&body)["error"]["param"], "tools[0].format.syntax");
}

#[tokio::test]
async fn reasoning_summaries_and_encrypted_content_carry_the_thinking_across_turns() {
    let s = TestServer::start(Opts {
        scenario: "thinking",
        ..Opts::default()
    })
    .await;
    // Codex CLI's defaults.
    let b = json!({"model": "sonnet", "input": "2+2?", "store": false,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"]});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    let out = v["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "reasoning", "{v}");
    assert_eq!(
        out[0]["summary"],
        json!([{"type": "summary_text", "text": "Let me think. 2+2 is 4."}])
    );
    let encrypted = out[0]["encrypted_content"].as_str().unwrap();
    assert!(!encrypted.is_empty());
    assert_eq!(out[1]["type"], "message");

    // Streamed: the reasoning item's summary events, then the message.
    let mut b2 = b.clone();
    b2["stream"] = json!(true);
    let (status, _, body) = post(&s, "/v1/responses", &b2).await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let mut kinds: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    kinds.dedup();
    assert_eq!(
        &kinds[..8],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
        ],
        "{body}"
    );
    let done = &ev.last().unwrap()["response"]["output"];
    assert_eq!(done[0]["type"], "reasoning");
    assert_eq!(done[0]["encrypted_content"], encrypted);
    assert_eq!(done[1]["type"], "message");

    // The next turn returns the reasoning item: the model gets its thinking block back
    // (the kept conversation continues, or the session carries the signed block).
    let b3 = json!({"model": "sonnet", "store": false, "input": [
        {"role": "user", "content": "2+2?"}, out[0].clone(), out[1].clone(),
        {"role": "user", "content": "[[scenario:success]] and 3+3?"}],
        "include": ["reasoning.encrypted_content"]});
    let (status, _, body) = post(&s, "/v1/responses", &b3).await;
    assert_eq!(status, 200, "{body}");
    // summary none, no include: no reasoning items.
    let b4 = json!({"model": "sonnet", "input": "x", "reasoning": {"summary": "none"}});
    let (status, _, body) = post(&s, "/v1/responses", &b4).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["output"][0]["type"], "message");
}

/// The user lines the fake CLI got on stdin, as text.
fn stdin_texts(s: &TestServer) -> Vec<String> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("STDIN:"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "user")
        .map(|v| v["message"]["content"].to_string())
        .collect()
}

#[tokio::test]
async fn a_trailing_assistant_message_is_answered_on_openai_and_refused_as_prefill_on_anthropic() {
    let s = TestServer::start(Opts::default()).await;
    // LangGraph's structured-output call: the whole state, an assistant answer last.
    let b = json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "It is sunny."}]});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        stdin_texts(&s).last().unwrap().contains("Continue."),
        "{:?}",
        stdin_texts(&s)
    );
    let b = json!({"model": "sonnet", "input": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "It is sunny."}]});
    let (status, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(status, 200, "{body}");
    // An assistant turn with calls still needs their results.
    let b = json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "w", "arguments": "{}"}}]}]});
    let (status, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(status, 400, "{body}");
    // Anthropic: prefill is refused clearly, naming the message.
    let b = json!({"model": "sonnet", "max_tokens": 64, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "It is"}]});
    let (status, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(status, 400, "{body}");
    let v = json_of(&body);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages.1: a final assistant message (prefill)"),
        "{v}"
    );
}

async fn post_keyed(s: &TestServer, key: &str, path: &str, b: &Value) -> (u16, Value) {
    let r = crate::harness::client()
        .post(s.url(path))
        .bearer_auth(key)
        .header("anthropic-beta", "message-threads-2026-08-12")
        .json(b)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn anthropic_threads_create_then_continue_with_the_history() {
    let s = keyed_server().await;
    let b = json!({"model": "sonnet", "max_tokens": 64, "system": "be brief",
        "thread": {"type": "create"}, "messages": [{"role": "user", "content": "first"}]});
    let (st, v1) = post_keyed(&s, "key-a", "/v1/messages", &b).await;
    assert_eq!(st, 200, "{v1}");
    // thread().send(): only the new turn, no system.
    let b = json!({"model": "sonnet", "max_tokens": 64,
        "thread": {"type": "continue", "previous_message_id": v1["id"]},
        "messages": [{"role": "user", "content": "second"}]});
    let (st, v2) = post_keyed(&s, "key-a", "/v1/messages", &b).await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["content"][0]["text"], "echo: second");
    let stats = s.state.backend.stats().snapshot();
    assert_eq!(
        (stats.spawned_total, stats.kept_hits_total),
        (1, 1),
        "the whole thread (system prompt included) is the kept conversation: {stats:?}"
    );
    // Streamed continue, then a third turn from the streamed answer's id.
    let mut b = json!({"model": "sonnet", "max_tokens": 64, "stream": true,
        "thread": {"type": "continue", "previous_message_id": v2["id"]},
        "messages": [{"role": "user", "content": "third"}]});
    let r = crate::harness::client()
        .post(s.url("/v1/messages"))
        .bearer_auth("key-a")
        .json(&b)
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let id3 = events(&body)[0]["message"]["id"].clone();
    b["stream"] = json!(false);
    b["thread"]["previous_message_id"] = id3;
    b["messages"] = json!([{"role": "user", "content": "fourth"}]);
    let (st, v4) = post_keyed(&s, "key-a", "/v1/messages", &b).await;
    assert_eq!(st, 200, "{v4}");
    assert_eq!(s.state.backend.stats().snapshot().kept_hits_total, 3);

    // Unknown, another key's: thread_not_found, in the shape the SDKs recover from.
    for key in ["key-b", "key-a"] {
        let id = if key == "key-b" {
            v1["id"].clone()
        } else {
            json!("msg_nope")
        };
        let b = json!({"model": "sonnet", "max_tokens": 64,
            "thread": {"type": "continue", "previous_message_id": id},
            "messages": [{"role": "user", "content": "x"}]});
        let (st, v) = post_keyed(&s, key, "/v1/messages", &b).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["type"], "not_found_error", "{v}");
        assert_eq!(
            v["error"]["details"]["error_code"], "thread_not_found",
            "{v}"
        );
    }
    let b = json!({"model": "sonnet", "max_tokens": 64, "thread": {"type": "fork"},
        "messages": [{"role": "user", "content": "x"}]});
    let (st, v) = post_keyed(&s, "key-a", "/v1/messages", &b).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        v["error"]["details"]["error_code"], "thread_unsupported_request",
        "{v}"
    );
}

#[tokio::test]
async fn the_sdk_tool_runner_shape_continues_the_held_run_through_a_thread() {
    let s = TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#.into())],
        ..Opts::default()
    })
    .await;
    let tools = json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let b = json!({"model": "sonnet", "max_tokens": 256, "tools": tools,
        "thread": {"type": "create"},
        "messages": [{"role": "user", "content": "[[scenario:tool_call]] weather?"}]});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let call = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap()
        .clone();
    // The runner's next request: only the tool result, the thread's tools not repeated.
    let b = json!({"model": "sonnet", "max_tokens": 256,
        "thread": {"type": "continue", "previous_message_id": v["id"]},
        "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}]});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(json_of(&body)["content"][0]["text"], "tool said: sunny");
    assert_eq!(spawns(&s), 1, "the held run continued");
}
