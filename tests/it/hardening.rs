//! Hardening (issue 27): files written off the runtime and private, slow readers cut,
//! streams that answer at once, bounded count_tokens, and the smaller findings.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, post, Opts, TestServer};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A conversation with an earlier exchange: it is presented as a synthesized session file.
fn with_history() -> Value {
    json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "And now?"}]})
}

#[tokio::test]
async fn an_unwritable_config_dir_is_tmp_unwritable_without_the_path() {
    // A config dir whose `projects/` is a regular file: the session file cannot be created,
    // as when CLAUDE_CONFIG_DIR is full or read-only.
    let base = tempfile::tempdir().unwrap();
    let config = base.path().join("secret-config-dir");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("projects"), "x").unwrap();
    let shown = config.display().to_string();
    let s = TestServer::start(Opts {
        env: vec![("CLAUDE_CONFIG_DIR", shown)],
        ..Opts::default()
    })
    .await;
    let (st, _, text) = post(&s, "/v1/chat/completions", &with_history()).await;
    assert_eq!(st, 503, "{text}");
    let v = json_of(&text);
    assert_eq!(v["error"]["code"], "gateway_tmp_unwritable", "{v}");
    assert!(!text.contains("secret-config-dir"), "{text}");
    // Without history no session file is needed: the same gateway answers.
    let plain = json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]});
    let (st, _, text) = post(&s, "/v1/chat/completions", &plain).await;
    assert_eq!(st, 200, "{text}");
}

#[tokio::test]
async fn session_files_leave_no_project_directory() {
    let s = TestServer::start(Opts::default()).await;
    for _ in 0..2 {
        let (st, _, text) = post(&s, "/v1/chat/completions", &with_history()).await;
        assert_eq!(st, 200, "{text}");
    }
    let projects = s.claude_config_dir.join("projects");
    let left = || -> Vec<_> {
        std::fs::read_dir(&projects)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let gone = eventually(Duration::from_secs(5), || left().is_empty()).await;
    assert!(gone, "{:?}", left());
}

/// Sends `n` pipelined raw HTTP/1.1 POSTs on a connection whose receive buffer is small,
/// and returns the connection without reading anything.
async fn stalled_posts(
    s: &TestServer,
    path: &str,
    body: &Value,
    n: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut tcp = sock.connect(addr).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    for _ in 0..n {
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(body.as_bytes()).await.unwrap();
    }
    tcp
}

#[tokio::test]
async fn a_stalled_streaming_reader_is_cut_after_the_write_timeout() {
    let s = TestServer::start(Opts {
        // Streamed 80 times: 9.6 MB, more than the sockets' buffers (a few MB) hold.
        env: vec![
            ("FAKE_CLAUDE_TEXT", vec!["x".repeat(10_000); 12].join(" ")),
            ("FAKE_CLAUDE_REPEAT", "80".into()),
        ],
        tweak: Box::new(|c| {
            c.http.write_timeout = 1.0;
            // A finished run would be kept: in_flight then says nothing about cancelling.
            c.cli.keep_conversations = 0;
        }),
        ..Opts::default()
    })
    .await;
    let body = json!({"model": "sonnet", "stream": true,
        "messages": [{"role": "user", "content": "Say a lot."}]});
    // Pipelined: hyper answers them one after another, until the socket stays full.
    const SENT: usize = 1;
    let mut tcp = stalled_posts(&s, "/v1/chat/completions", &body, SENT).await;
    // The cut comes a second after the socket fills; how soon it fills depends on the
    // machine's load, so wait for the counts (a generous hang guard), not a fixed time.
    // On a loaded machine the run's own stall timeout (its output not taken while the
    // socket is full) may end it first: either way it ends, and the connection is cut
    // (checked below: only the write timeout closes it).
    let ended = eventually(Duration::from_secs(60), || {
        let stats = s.state.backend.stats().snapshot();
        stats.in_flight == 0 && stats.cancelled_total + stats.timeouts_total == 1
    })
    .await;
    let stats = s.state.backend.stats().snapshot();
    assert!(ended, "the run was ended: {stats:?}");
    // What the socket still holds ends before the stream's end: the connection was closed.
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got),
    )
    .await;
    assert!(read.is_ok(), "the server closed the connection");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(200)]
    );
    let done = got.matches("[DONE]").count();
    assert!(done < SENT, "the streams were cut before their end: {done}");
}

#[tokio::test]
async fn a_stream_waiting_for_its_first_content_answers_at_the_keepalive_interval() {
    let s = TestServer::start(Opts {
        tweak: Box::new(|c| {
            c.sse_keepalive = 0.3;
            c.cli.max_concurrent = 1;
            c.cli.keep_conversations = 0;
            c.cli.max_held_runs = 0;
        }),
        ..Opts::default()
    })
    .await;
    // The only slot is busy for about 2 s: the stream waits in the queue.
    let busy = json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "[[scenario:slow]] take your time"}]});
    let s2 = s.base.clone();
    let first = tokio::spawn(async move {
        crate::harness::client()
            .post(format!("{s2}/v1/chat/completions"))
            .json(&busy)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let resp = crate::harness::client()
        .post(s.url("/v1/chat/completions"))
        .json(&crate::harness::chat_body("hi", true))
        .send()
        .await
        .unwrap();
    let headers_after = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        headers_after < Duration::from_millis(1_000),
        "headers after {headers_after:?}, not after the queue wait"
    );
    let text = resp.text().await.unwrap();
    assert!(text.starts_with(": keep-alive"), "{text}");
    assert!(text.contains("Hello") && text.contains("[DONE]"), "{text}");
    assert!(!first.await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failure_after_the_stream_began_is_the_apis_error_event() {
    let s = TestServer::start(Opts {
        scenario: "hang",
        tweak: Box::new(|c| {
            c.sse_keepalive = 0.3;
            c.cli.start_timeout = 1.5;
            c.cli.inactivity_timeout = 1.5;
        }),
        ..Opts::default()
    })
    .await;
    let (st, _, text) = post(
        &s,
        "/v1/messages",
        &crate::harness::messages_body("hi", true),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let events = crate::harness::sse_events(&text);
    assert_eq!(events[0].0.as_deref(), Some("ping"), "{text}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{text}");
    assert_eq!(json_of(data)["error"]["type"], "timeout_error", "{text}");
    let (st, _, text) = post(
        &s,
        "/v1/chat/completions",
        &crate::harness::chat_body("hi", true),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    assert!(text.starts_with(": keep-alive"), "{text}");
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    assert_eq!(json_of(last)["error"]["code"], "timeout", "{text}");
}

#[tokio::test]
async fn a_failure_before_the_keepalive_interval_keeps_its_status() {
    let s = TestServer::start(Opts {
        scenario: "rate_limit",
        tweak: Box::new(|c| c.sse_keepalive = 5.0),
        ..Opts::default()
    })
    .await;
    let (st, _, text) = post(
        &s,
        "/v1/messages",
        &crate::harness::messages_body("hi", true),
    )
    .await;
    assert_eq!(st, 429, "{text}");
}

#[tokio::test]
async fn anthropic_tool_errors_name_the_field_once() {
    let s = TestServer::start(Opts::default()).await;
    let body = json!({"model": "sonnet", "max_tokens": 10,
        "tools": [{"name": "t", "input_schema": {"type": "string"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 400, "{text}");
    let message = json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("tools.0.input_schema: the input schema must be"),
        "{message}"
    );
    assert_eq!(message.matches("input_schema").count(), 1, "{message}");
}

#[tokio::test]
async fn anthropic_tool_use_input_must_be_an_object() {
    let s = TestServer::start(Opts::default()).await;
    let body = json!({"model": "sonnet", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": [1, 2]}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]});
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 400, "{text}");
    let message = json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        message,
        "messages.1.content.0.input: Input should be a valid dictionary"
    );
}

#[tokio::test]
async fn responses_metadata_is_at_most_16_string_pairs() {
    let s = TestServer::start(Opts::default()).await;
    let mut metadata = serde_json::Map::new();
    for i in 0..17 {
        metadata.insert(format!("k{i}"), json!("v"));
    }
    let body = json!({"model": "sonnet", "input": "hi", "metadata": metadata});
    let (st, _, text) = post(&s, "/v1/responses", &body).await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("at most 16"), "{text}");
    let body = json!({"model": "sonnet", "input": "hi", "metadata": {"a": [0, 0]}});
    let (st, _, text) = post(&s, "/v1/responses", &body).await;
    assert_eq!(st, 400, "{text}");
    let body = json!({"model": "sonnet", "input": "hi", "metadata": {"a": "b"}});
    let (st, _, text) = post(&s, "/v1/responses", &body).await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(json_of(&text)["metadata"], json!({"a": "b"}));
}

#[test]
fn a_fifo_as_the_rules_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let r = ccgate::reload::load_rules_file(&path, ccgate::reload::IfMissing::Fail);
        let _ = tx.send(r.err().map(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("loading a FIFO returned instead of blocking");
    let e = got.expect("a FIFO is an error");
    assert!(e.contains("not a regular file"), "{e}");
}

async fn post_raw(s: &TestServer, path: &str, raw: String) -> (u16, String) {
    let r = crate::harness::client()
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn head(text: &str) -> &str {
    &text[..text.len().min(300)]
}

#[tokio::test]
async fn megabyte_arrays_in_tool_inputs_and_schemas_are_served_as_text() {
    // Tool inputs and schemas are passed on, never read as trees: no budget applies.
    let s = TestServer::start(Opts::default()).await;
    let zeros = format!("[{}]", vec!["0"; 400_000].join(","));
    let history = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"t","input":{{"x":{zeros}}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}}]}}]}}"#
    );
    let (st, text) = post_raw(&s, "/v1/messages", history).await;
    assert_eq!(st, 200, "{}", head(&text));
    // Sixteen tools whose schemas hold 30,000 values each (~60 KB, under the 64 KiB a
    // tool definition may have): ~1 MiB of arrays in tools.
    let small = format!("[{}]", vec!["0"; 30_000].join(","));
    let schema = format!(r#"{{"type":"object","properties":{{"x":{{"enum":{small}}}}}}}"#);
    let chat_tools: Vec<String> = (0..16)
        .map(|i| {
            format!(r#"{{"type":"function","function":{{"name":"t{i}","parameters":{schema}}}}}"#)
        })
        .collect();
    let chat = format!(
        r#"{{"model":"sonnet","messages":[{{"role":"user","content":"hi"}}],"tools":[{}]}}"#,
        chat_tools.join(",")
    );
    let (st, text) = post_raw(&s, "/v1/chat/completions", chat).await;
    assert_eq!(st, 200, "{}", head(&text));
    let tools: Vec<String> = (0..16)
        .map(|i| format!(r#"{{"name":"t{i}","input_schema":{schema}}}"#))
        .collect();
    let messages = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}],"tools":[{}]}}"#,
        tools.join(",")
    );
    let (st, text) = post_raw(&s, "/v1/messages", messages).await;
    assert_eq!(st, 200, "{}", head(&text));
    // Chat Completions' tool-call arguments (a string of JSON) as well.
    let args = serde_json::to_string(&format!(r#"{{"x":{zeros}}}"#)).unwrap();
    let calls = format!(
        r#"{{"model":"sonnet","messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"t","arguments":{args}}}}}]}},{{"role":"tool","tool_call_id":"call_1","content":"ok"}}]}}"#
    );
    let (st, text) = post_raw(&s, "/v1/chat/completions", calls).await;
    assert_eq!(st, 200, "{}", head(&text));
    // Nesting deeper than a tree may hold is still refused.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}],"tools":[{{"name":"t","input_schema":{{"type":"object","x":{deep}}}}}]}}"#
    );
    let (st, text) = post_raw(&s, "/v1/messages", body).await;
    assert_eq!(st, 400, "{}", head(&text));
    assert!(text.contains("nested more than 128"), "{}", head(&text));
}

#[tokio::test]
async fn responses_input_items_cost_only_what_ccgate_reads_of_them() {
    // ~1 MiB of [0,0,…] (400,000 values, over the budget of 32,768) where ccgate does not
    // read it: skipped as it is parsed, so served (bench/memory.py `arrays-items`).
    let s = TestServer::start(Opts::default()).await;
    let zeros = format!("[{}]", vec!["0"; 400_000].join(","));
    // Three arrays in one body: a third of that each (the body limit is 1 MiB).
    let third = format!("[{}]", vec!["0"; 130_000].join(","));
    for input in [
        // Beside a message's fields (an item's id, status, a later API's field …).
        format!(r#"[{{"type":"message","role":"user","content":"hi","x":{zeros}}}]"#),
        // Beside a content part's fields (an output_text's annotations or logprobs).
        format!(
            r#"[{{"type":"message","role":"user","content":"hi"}},{{"type":"message","role":"assistant","content":[{{"type":"output_text","text":"ok","annotations":[],"logprobs":{third}}}]}},{{"type":"message","role":"user","content":[{{"type":"input_text","text":"more","x":{third}}}]}}]"#
        ),
        // A tool call's arguments (a string of JSON, passed on as text) and its output.
        format!(
            r#"[{{"type":"message","role":"user","content":"hi"}},{{"type":"function_call","call_id":"call_1","name":"t","arguments":{args},"x":{third}}},{{"type":"function_call_output","call_id":"call_1","output":[{{"type":"input_text","text":"ok","x":{third}}}]}}]"#,
            args = serde_json::to_string(&format!(r#"{{"x":{third}}}"#)).unwrap()
        ),
    ] {
        let raw = format!(r#"{{"model":"sonnet","store":false,"input":{input}}}"#);
        let (st, text) = post_raw(&s, "/v1/responses", raw).await;
        assert_eq!(st, 200, "{}", head(&text));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "completed", "{}", head(&text));
    }
}

/// A 400 for holding more tree values than the budget.
async fn assert_over_budget(s: &TestServer, path: &str, raw: String) {
    let (st, text) = post_raw(s, path, raw).await;
    assert_eq!(st, 400, "{}", head(&text));
    assert!(
        text.contains("more than 32768 JSON values"),
        "{}",
        head(&text)
    );
}

#[tokio::test]
async fn what_stays_a_tree_is_charged_responses_input_items_too() {
    let s = TestServer::start(Opts::default()).await;
    let zeros = format!("[{}]", vec!["0"; 400_000].join(","));
    // What ccgate reads of a Responses input item is a tree: its values count (a content
    // list of 400,000 values, or an array where a role is read).
    for item in [
        format!(r#"{{"type":"message","role":"user","content":{zeros}}}"#),
        format!(r#"{{"type":"message","role":{zeros},"content":"hi"}}"#),
        format!(r#"{{"type":"function_call_output","call_id":"c","output":{zeros}}}"#),
        format!(
            r#"{{"type":"message","role":"user","content":[{{"type":"input_text","text":{zeros}}}]}}"#
        ),
    ] {
        let raw = format!(r#"{{"model":"sonnet","input":[{item}]}}"#);
        assert_over_budget(&s, "/v1/responses", raw).await;
    }
    // Content parts cost 3 values each (the part, its type and text), the item 4: 10,900
    // parts are 32,704 values (served), 11,000 are 33,004 (refused).
    for (parts, status) in [(10_900, 200), (11_000, 400)] {
        let parts = vec![r#"{"type":"input_text","text":"a"}"#; parts].join(",");
        let raw = format!(
            r#"{{"model":"sonnet","store":false,"input":[{{"type":"message","role":"user","content":[{parts}]}}]}}"#
        );
        let (st, text) = post_raw(&s, "/v1/responses", raw).await;
        assert_eq!(st, status, "{}", head(&text));
    }
    // Responses echoes its tools in every `response` object, a tree: their schemas count.
    let small = format!("[{}]", vec!["0"; 30_000].join(","));
    let tools: Vec<String> = (0..2)
        .map(|i| format!(r#"{{"type":"function","name":"t{i}","parameters":{{"type":"object","x":{small}}}}}"#))
        .collect();
    let raw = format!(
        r#"{{"model":"sonnet","input":"hi","tools":[{}]}}"#,
        tools.join(",")
    );
    assert_over_budget(&s, "/v1/responses", raw).await;
    // As do option objects, and a tool definition's other fields.
    let raw = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}],"tools":[{{"name":"t","input_schema":{{"type":"object"}},"x":{zeros}}}]}}"#
    );
    assert_over_budget(&s, "/v1/messages", raw).await;
    // The same values as one string cost what their bytes cost: accepted.
    let body = json!({"model": "sonnet", "max_tokens": 10, "messages": [
        {"role": "user", "content": zeros}]});
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 200, "{}", head(&text));
}

#[tokio::test]
async fn a_long_agent_history_is_not_refused() {
    // Hundreds of tool rounds, each input holding some structure (an edit's lines), more
    // JSON values together than the budget: none of them is a tree that counts.
    const ROUNDS: usize = 400;
    let s = TestServer::start(Opts::default()).await;
    let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    let mut messages = vec![json!({"role": "user", "content": "fix the build"})];
    for i in 0..ROUNDS {
        let id = format!("toolu_{i}");
        messages.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": format!("step {i}")},
            {"type": "tool_use", "id": id, "name": "edit",
             "input": {"path": format!("src/f{i}.rs"), "lines": lines, "range": [i, i + 100]}}]}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": [
                {"type": "text", "text": format!("edited {i}")}]}]}));
    }
    let tools = json!([{"name": "edit", "input_schema": {"type": "object",
        "properties": {"path": {"type": "string"}, "lines": {"type": "array"}}}}]);
    let body = json!({"model": "sonnet", "max_tokens": 10, "messages": messages, "tools": tools});
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 200, "{}", head(&text));

    // The same agent on Chat Completions.
    let mut messages = vec![json!({"role": "user", "content": "fix the build"})];
    for i in 0..ROUNDS {
        let id = format!("call_{i}");
        let args = json!({"path": format!("src/f{i}.rs"), "lines": lines}).to_string();
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "edit", "arguments": args}}]}));
        messages
            .push(json!({"role": "tool", "tool_call_id": id, "content": format!("edited {i}")}));
    }
    let tools = json!([{"type": "function", "function": {"name": "edit", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}}}}]);
    let body = json!({"model": "sonnet", "messages": messages, "tools": tools});
    let (st, _, text) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{}", head(&text));

    // And on Responses (Codex CLI's shape: reasoning, function_call, output per round),
    // whose items are charged: a few values each.
    let mut input = vec![json!({"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "fix the build"}]})];
    for i in 0..ROUNDS {
        let id = format!("call_{i}");
        input.push(json!({"type": "reasoning", "id": format!("rs_{i}"), "summary": []}));
        input.push(
            json!({"type": "function_call", "call_id": id, "name": "edit",
            "arguments": json!({"path": format!("src/f{i}.rs"), "lines": lines}).to_string()}),
        );
        input.push(json!({"type": "function_call_output", "call_id": id,
            "output": format!("edited {i}")}));
    }
    let tools = json!([{"type": "function", "name": "edit", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}}}]);
    let body = json!({"model": "sonnet", "input": input, "tools": tools, "store": false});
    let (st, _, text) = post(&s, "/v1/responses", &body).await;
    assert_eq!(st, 200, "{}", head(&text));
}

/// A body of `n` tiny text parts in one user message (Chat Completions and Messages alike).
fn tiny_parts(n: usize) -> String {
    let parts = vec![r#"{"type":"text","text":"x"}"#; n].join(",");
    format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":[{parts}]}}]}}"#
    )
}

#[tokio::test]
async fn content_parts_of_every_api_are_charged_to_the_budget() {
    let s = TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        ..Opts::default()
    })
    .await;
    // A text part costs 3 values (the part, its type and text key), as a Responses part
    // does: 10,922 parts are 32,766 values (served, every part reaching the CLI), 10,923
    // are 32,769 (a 400 in the API's own shape, naming the budget).
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let (st, text) = post_raw(&s, path, tiny_parts(10_922)).await;
        assert_eq!(st, 200, "{path}: {}", head(&text));
        let v = json_of(&text);
        let answer = match path {
            "/v1/messages" => v["content"][0]["text"].as_str().unwrap().to_string(),
            _ => v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        let echoed = answer
            .strip_prefix("echo: ")
            .unwrap_or_else(|| panic!("{answer:.100}"));
        assert_eq!(
            echoed.split('\n').filter(|l| *l == "x").count(),
            10_922,
            "{path}"
        );
    }
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        let (st, text) = post_raw(&s, path, tiny_parts(10_923)).await;
        assert_eq!(st, 400, "{path}: {}", head(&text));
        let v = json_of(&text);
        let message = match path {
            "/v1/chat/completions" => {
                assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
            _ => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
        };
        assert!(
            message.contains("more than 32768 JSON values") && message.contains("content parts"),
            "{path}: {message}"
        );
    }
    // Parts nested in a tool result count as well.
    let parts = vec![r#"{"type":"text","text":"x"}"#; 10_923].join(",");
    let raw = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"t","input":{{}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":[{parts}]}}]}}]}}"#
    );
    assert_over_budget(&s, "/v1/messages", raw).await;
}

#[tokio::test]
async fn ordinary_multi_part_content_is_unaffected_by_the_part_budget() {
    let s = TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        ..Opts::default()
    })
    .await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let chat = json!({"model": "sonnet", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Look at"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}},
        {"type": "text", "text": "and"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}},
    ]}]});
    let (st, _, text) = post(&s, "/v1/chat/completions", &chat).await;
    assert_eq!(st, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(
        v["choices"][0]["message"]["content"], "echo: Look at\n[image 1]\nand\n[document 1]",
        "{v}"
    );
    let messages = json!({"model": "sonnet", "max_tokens": 10, "messages": [
        {"role": "user", "content": "Run it"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Running"},
            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "ok"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]},
            {"type": "text", "text": "What"},
            {"type": "text", "text": "now?"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}]}]});
    let (st, _, text) = post(&s, "/v1/messages", &messages).await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(json_of(&text)["type"], "message", "{text}");
}

/// A raised `request_body_limit` raises the budget with the body's size (one value per 32
/// bytes beyond 1 MiB): a long history of real-sized parts in a 4 MiB body is served,
/// while the same 4 MiB of tiny parts is still the 400, naming its budget.
#[tokio::test]
async fn a_larger_body_limit_scales_the_budget_with_the_body() {
    let s = TestServer::start(Opts {
        tweak: Box::new(|c| c.request_body_limit = 8 << 20),
        ..Opts::default()
    })
    .await;
    // 22,000 parts of ~196 bytes: 66,000 values in ~4.3 MB (budget ~134,000).
    let long = "y".repeat(170);
    let parts = vec![format!(r#"{{"type":"text","text":"{long}"}}"#); 22_000].join(",");
    let body = format!(
        r#"{{"model":"sonnet","max_tokens":10,"messages":[{{"role":"user","content":[{parts}]}}]}}"#
    );
    assert!(body.len() > 4 << 20, "{}", body.len());
    // Counted, not run: the budget is what is checked (count_tokens reads the same parts).
    let (st, text) = post_raw(&s, "/v1/messages/count_tokens", body).await;
    assert_eq!(st, 200, "{}", head(&text));
    // ~4 MiB of tiny parts: ~160,000 parts, ~480,000 values.
    let (st, text) = post_raw(&s, "/v1/messages/count_tokens", tiny_parts(160_000)).await;
    assert_eq!(st, 400, "{}", head(&text));
    let message = json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("JSON values in structured fields"),
        "{message}"
    );
    assert!(
        !message.contains("32768"),
        "the body's own budget is named: {message}"
    );
    s.shutdown().await;
}
