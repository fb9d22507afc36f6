//! What agent clients send on their defaults (issue 22) through the REAL `claude` binary
//! against the loopback mock Messages API: `end_turn` after structured output, `$schema`
//! declarations (zod 4's draft 2020-12) and a schema the CLI refuses, `thinking.display:
//! "updates"`, `tool_reference` blocks. Skipped loudly without `CCGATE_REAL_CLAUDE`.

use serde_json::{json, Value};

use crate::harness::{chat_body, messages_body, post, sse_events};
use crate::mock_api::MockApi;
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn url_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c.to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect()
}

const ANSWER: &str = r#"{"answer":"42"}"#;

#[tokio::test]
async fn real_cli_structured_output_ends_with_end_turn_and_draft_2020_12_is_normalised() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let url = mock.url(&format!("schema:{}", url_escape(ANSWER)));
    let (s, _home) = real_server_with(exe, Some(url), None, |_| {}).await;
    // zod 4's output, as LangChain JS sends it: the CLI alone exits 1 on it.
    let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "properties": {"answer": {"type": "string"}},
        "required": ["answer"], "additionalProperties": false});
    let mut b = messages_body("the answer", false);
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
    let (st, headers, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    assert!(headers.contains_key("request-id"));
    let v = json_of(&body);
    assert_eq!(v["stop_reason"], "end_turn", "{v}");
    assert_eq!(
        json_of(v["content"][0]["text"].as_str().unwrap()),
        json_of(ANSWER)
    );
    let up = mock.message_requests()[0].body.clone();
    let tool = up["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "StructuredOutput")
        .unwrap_or_else(|| panic!("no StructuredOutput tool: {}", up["tools"]));
    assert!(tool["input_schema"].get("$schema").is_none(), "{tool}");
    assert_eq!(tool["input_schema"]["properties"], schema["properties"]);

    // Streamed: the message_delta says end_turn too.
    b["stream"] = json!(true);
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let delta = sse_events(&body)
        .iter()
        .map(|(_, d)| json_of(d))
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{body}");

    // A schema the CLI still refuses (strict mode): a 400 quoting its reason, and no
    // upstream call.
    let before = mock.message_requests().len();
    let mut b = chat_body("the answer", false);
    b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "t",
        "schema": {"type": "object", "prefixItems": [{"type": "string"}]}}});
    let (st, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(st, 400, "{body}");
    let v = json_of(&body);
    assert_eq!(v["error"]["code"], "invalid_json_schema", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("strict mode: unknown keyword: \"prefixItems\""),
        "{message}"
    );
    assert_eq!(mock.message_requests().len(), before);
}

#[tokio::test]
async fn real_cli_claude_code_thinking_updates_and_tool_references() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("ok")), None, |_| {}).await;
    let mut b = messages_body("hi", false);
    b["thinking"] = json!({"type": "adaptive", "display": "updates"});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    assert_eq!(
        up["thinking"],
        json!({"type": "adaptive", "display": "updates"}),
        "what the client asked reaches the model"
    );

    let tool = |name: &str| {
        json!({"name": name, "description": "d", "input_schema": {"type": "object",
            "properties": {"query": {"type": "string"}}}})
    };
    let b = json!({"model": "sonnet", "max_tokens": 256,
    "tools": [tool("ToolSearch"), tool("NotebookEdit")],
    "messages": [
        {"role": "user", "content": "edit the notebook"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A",
            "name": "ToolSearch", "input": {"query": "notebook"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": [
                {"type": "tool_reference", "tool_name": "NotebookEdit"}]}]}
    ]});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    let text = up["messages"].to_string();
    assert!(text.contains("Tool loaded: NotebookEdit"), "{text}");
}

#[tokio::test]
async fn real_cli_item_reference_puts_the_earlier_answer_in_the_models_context() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) =
        real_server_with(exe, Some(mock.url("ok:Paris%20it%20is")), None, |_| {}).await;
    let (st, _, body) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "where?"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let r1 = json_of(&body);
    let b = json!({"model": "sonnet", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "where?"}]},
        {"type": "item_reference", "id": r1["output"][0]["id"]},
        {"role": "user", "content": [{"type": "input_text", "text": "and then?"}]}]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    let messages = up["messages"].to_string();
    assert!(messages.contains("Paris it is"), "{messages}");
    assert!(messages.contains("and then?"), "{messages}");
    let (st, _, body) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": [{"type": "item_reference", "id": "msg_nope"},
            {"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
}

#[tokio::test]
async fn real_cli_codex_custom_and_namespace_tools_round_trip() {
    use crate::mock_api::Answer;
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch";
    mock.script(
        "codex",
        vec![
            Answer::Tools {
                text: None,
                calls: vec![("mcp__cg__apply_patch".into(), json!({"input": patch}))],
            },
            Answer::EchoResults,
            Answer::Tools {
                text: None,
                calls: vec![("mcp__cg__spawn_agent".into(), json!({"task": "t"}))],
            },
            Answer::EchoResults,
        ],
    );
    let (s, _home) = real_server_with(exe, Some(mock.url("script:codex")), None, |_| {}).await;
    let tools = json!([
        {"type": "custom", "name": "apply_patch", "description": "Edit files",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"*** Begin Patch\" hunk+"}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
            {"type": "function", "name": "spawn_agent", "description": "Spawn",
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]}
    ]);
    let b = json!({"model": "sonnet", "tools": tools, "store": false, "stream": true,
        "input": [{"role": "user", "content": "patch it"}]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let done: Vec<Value> = sse_events(&body).iter().map(|(_, d)| json_of(d)).collect();
    let call = done.last().unwrap()["response"]["output"][0].clone();
    assert_eq!(call["type"], "custom_tool_call", "{body}");
    assert_eq!(call["input"], patch);
    // Upstream, the custom tool was offered with its grammar in the description.
    let up = mock.message_requests()[0].body.clone();
    let offered = up["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "mcp__cg__apply_patch")
        .cloned()
        .unwrap_or_else(|| panic!("{}", up["tools"]));
    assert!(
        offered["description"]
            .as_str()
            .unwrap()
            .contains("lark grammar"),
        "{offered}"
    );
    // Codex's next request: the whole history, the call's output last.
    let b = json!({"model": "sonnet", "tools": tools, "store": false, "input": [
        {"role": "user", "content": "patch it"},
        call.clone(),
        {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "Done!"}]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert!(
        v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("seen: Done!"),
        "{v}"
    );
    assert_eq!(
        s.state.backend.stats().snapshot().spawned_total,
        1,
        "held run continued"
    );
    let b = json!({"model": "sonnet", "tools": tools, "input": "spawn one"});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["output"][0]["type"], "function_call", "{v}");
    assert_eq!(v["output"][0]["namespace"], "multi_agent_v1", "{v}");
    assert_eq!(v["output"][0]["name"], "spawn_agent", "{v}");
}

#[tokio::test]
async fn real_cli_reasoning_items_bring_the_signed_thinking_back_next_turn() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("thinking")), None, |_| {}).await;
    let b = json!({"model": "sonnet", "input": "2+2?", "store": false, "stream": true,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let last = json_of(&sse_events(&body).last().unwrap().1);
    let out = last["response"]["output"].as_array().unwrap().clone();
    assert_eq!(out[0]["type"], "reasoning", "{last}");
    assert!(
        !out[0]["summary"][0]["text"].as_str().unwrap().is_empty(),
        "{last}"
    );
    let message = out.iter().find(|i| i["type"] == "message").unwrap().clone();
    // Codex's next turn: the whole history, the reasoning item returned as it came.
    let b = json!({"model": "sonnet", "store": false, "input": [
        {"role": "user", "content": "2+2?"}, out[0].clone(), message,
        {"role": "user", "content": "and 3+3?"}],
        "include": ["reasoning.encrypted_content"]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    let messages = up["messages"].as_array().unwrap();
    let assistant = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap_or_else(|| panic!("{up}"));
    // The signed block is accepted and written into the session; for a completed turn the
    // CLI (like the API) leaves earlier turns' thinking out upstream: the turn's text stays.
    assert_eq!(
        assistant["content"].as_array().unwrap().last().unwrap()["type"],
        "text",
        "{assistant}"
    );
    // A reasoning item that is not ccgate's is accepted and dropped, as before.
    let b = json!({"model": "sonnet", "input": [
        {"role": "user", "content": "2+2?"},
        {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAA"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"}]});
    let (st, _, body) = post(&s, "/v1/responses", &b).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn real_cli_answers_after_a_trailing_assistant_message_on_openai() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("ok")), None, |_| {}).await;
    let b = json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "It is sunny."}]});
    let (st, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    let messages = up["messages"].to_string();
    assert!(messages.contains("It is sunny."), "{messages}");
    assert!(messages.contains("Continue."), "{messages}");
}

#[tokio::test]
async fn real_cli_thread_continue_gives_the_model_the_whole_thread() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) =
        real_server_with(exe, Some(mock.url("ok:Noted%20the%20code")), None, |_| {}).await;
    let b = json!({"model": "sonnet", "max_tokens": 64, "system": "Remember codes.",
        "thread": {"type": "create"},
        "messages": [{"role": "user", "content": "The code is 4711."}]});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let id = json_of(&body)["id"].clone();
    let b = json!({"model": "sonnet", "max_tokens": 64,
        "thread": {"type": "continue", "previous_message_id": id},
        "messages": [{"role": "user", "content": "What was the code?"}]});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let up = mock.message_requests().last().unwrap().body.clone();
    let messages = up["messages"].to_string();
    assert!(messages.contains("The code is 4711."), "{messages}");
    assert!(messages.contains("Noted the code"), "{messages}");
    assert!(messages.contains("What was the code?"), "{messages}");
    assert!(
        up["system"].to_string().contains("Remember codes."),
        "{}",
        up["system"]
    );
}

/// Claude Code itself as a client: the real CLI with `ANTHROPIC_BASE_URL` at ccgate (which
/// runs the real CLI against the mock), `-p` with stream-json output on its default tools
/// (ToolSearch, Edit … offered, deferred tools, `context_management`, its system message),
/// then `-c` continuing that session. No request of either run is refused.
#[tokio::test]
async fn real_cli_claude_code_as_a_client_p_then_c_is_never_refused() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe.clone(), Some(mock.url("ok")), None, |_| {}).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let (config, home, cwd) = (
        tmp.path().join("config"),
        tmp.path().join("home"),
        tmp.path().join("work"),
    );
    for d in [&config, &home, &cwd] {
        std::fs::create_dir(d).expect("dir");
    }
    let run = |extra: &'static [&'static str], prompt: &'static str| {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["-p", "--output-format", "stream-json", "--verbose"])
            .args(extra)
            .arg(prompt)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", &config)
            .env("ANTHROPIC_BASE_URL", s.url(""))
            .env("ANTHROPIC_API_KEY", "client-key")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
                .await
                .expect("the client CLI ends (hang guard)")
                .expect("run the client CLI");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    for (extra, prompt) in [(&[][..], "Say hello"), (&["-c"][..], "And again")] {
        let out = run(extra, prompt).await;
        let result: Value = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "result")
            .unwrap_or_else(|| panic!("no result: {out}"));
        assert_eq!(result["is_error"], false, "{prompt}: {out}");
        assert_eq!(result["result"], crate::mock_api::DEFAULT_TEXT, "{out}");
    }
    let metrics = crate::harness::get_text(&s, "/metrics").await;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ccgate_requests_total{") && !l.contains("status=\"200\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "ccgate refused: {refused:?}");
    // The second run carried the first turn (the `-c` history reached the model).
    let last = mock.message_requests().last().unwrap().body.to_string();
    assert!(
        last.contains("Say hello") && last.contains("And again"),
        "{last}"
    );
}
