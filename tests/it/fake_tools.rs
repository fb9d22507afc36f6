//! The fake CLI's client-tool protocol (sdk MCP server on the control channel), driven
//! directly like a host would, and checked against the real CLI's recorded sequences
//! (`tests/fixtures/real/tool_call_single.jsonl`, `tool_call_parallel.jsonl`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::fake_cli_path;
use crate::support_tools::{
    fixture, is_result, is_tools_call, mcp_method, shapes, tool, write_session, HostOpts, ToolHost,
};

const WAIT: Duration = Duration::from_secs(10);
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

fn weather() -> Value {
    tool(
        "get_weather",
        "Weather for a city",
        json!({"city": {"type": "string"}}),
    )
}

fn time_tool() -> Value {
    tool("get_time", "Time", json!({"tz": {"type": "string"}}))
}

fn fake(tools: Vec<Value>) -> HostOpts<'static> {
    HostOpts::new(&fake_cli_path(), tools)
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The tool_use blocks of the `assistant` lines, in order.
fn tool_uses(out: &[Value]) -> Vec<Value> {
    out.iter()
        .filter(|l| l["type"] == "assistant")
        .flat_map(|l| {
            l["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|b| b["type"] == "tool_use")
        .collect()
}

/// The tool_result blocks of the `user` lines, in order.
fn tool_results(out: &[Value]) -> Vec<Value> {
    out.iter()
        .filter(|l| l["type"] == "user")
        .flat_map(|l| {
            l["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|b| b["type"] == "tool_result")
        .collect()
}

#[tokio::test]
async fn single_call_follows_the_real_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("fake.log");
    let mut h = ToolHost::spawn(
        fake(vec![weather()])
            .env("FAKE_CLAUDE_LOG", log.to_str().unwrap())
            .env("FAKE_CLAUDE_TOOL_TEXT", "Let me check.")
            .env("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#),
    )
    .await;
    // The user line goes in at once: the fake (like the real CLI) queues it until the
    // MCP handshake is done.
    h.user(json!("weather in Paris? [[scenario:tool_call]]"))
        .await;
    let call = h.until(WAIT, is_tools_call).await;
    let params = &call["request"]["message"]["params"];
    assert_eq!(params["name"], "get_weather");
    assert_eq!(params["arguments"], json!({"city": "Paris"}));
    let uses = tool_uses(&h.out);
    assert_eq!(uses.len(), 1, "{}", h.transcript());
    assert_eq!(uses[0]["name"], "mcp__cg__get_weather");
    assert_eq!(uses[0]["input"], json!({"city": "Paris"}));
    assert_eq!(params["_meta"]["claudecode/toolUseId"], uses[0]["id"]);
    assert!(uses[0]["id"].as_str().unwrap().starts_with("toolu_"));
    h.answer_call(
        &call,
        json!({"content": [{"type": "text", "text": "sunny 21C"}]}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    assert_eq!(h.finish(WAIT).await, Some(0));

    assert_eq!(result["subtype"], "success");
    assert_eq!(result["num_turns"], 2);
    assert_eq!(result["result"], "tool said: sunny 21C");
    assert_eq!(
        result["usage"]["input_tokens"], 24,
        "summed over both model calls"
    );
    let results = tool_results(&h.out);
    assert_eq!(
        results,
        vec![json!({"tool_use_id": uses[0]["id"], "type": "tool_result",
                    "content": [{"type": "text", "text": "sunny 21C"}]})]
    );
    let real = fixture("tool_call_single.jsonl");
    assert_eq!(
        shapes(&h.out),
        shapes(&real),
        "fake vs real\n{}",
        h.transcript()
    );
    // the same top-level keys on the tool lines as the real CLI
    for kind in ["assistant", "user"] {
        let keys = |lines: &[Value]| -> Vec<Vec<String>> {
            lines
                .iter()
                .filter(|l| l["type"] == kind)
                // (the CLI adds the API's request-id header as `request_id`; the fake has no API)
                .map(|l| {
                    l.as_object()
                        .unwrap()
                        .keys()
                        .filter(|k| *k != "request_id")
                        .cloned()
                        .collect()
                })
                .collect()
        };
        assert_eq!(keys(&h.out), keys(&real), "{kind} line keys");
    }
    let log = log_lines(&log);
    assert!(
        log.contains(&"MCP_TOOLS:get_weather".to_string()),
        "{log:?}"
    );
    let replies: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("CONTROL_RESPONSE:"))
        .collect();
    assert_eq!(
        replies.len(),
        4,
        "initialize, initialized, tools/list, tools/call: {log:?}"
    );
    assert!(replies[3].contains("sunny 21C"));
}

#[tokio::test]
async fn parallel_calls_come_one_at_a_time_like_the_real_cli() {
    let mut h = ToolHost::spawn(
        fake(vec![weather(), time_tool()])
            .env("FAKE_CLAUDE_TOOL_INPUT", r#"{"city":"Paris"}"#)
            .env("FAKE_CLAUDE_TOOL_INPUT2", r#"{"tz":"CET"}"#),
    )
    .await;
    h.user(json!("both [[scenario:parallel_tool_calls]]")).await;
    let first = h.until(WAIT, is_tools_call).await;
    assert_eq!(first["request"]["message"]["params"]["name"], "get_weather");
    // Held: the rest of the message streams, but no second call while the first waits.
    let stop = h
        .until(WAIT, |l| l["event"]["type"] == "message_stop")
        .await;
    assert_eq!(stop["type"], "stream_event");
    assert!(
        h.next(Duration::from_millis(500)).await.is_none(),
        "{}",
        h.transcript()
    );
    let uses = tool_uses(&h.out);
    assert_eq!(uses.len(), 2, "both calls known before any answer");
    assert_eq!(uses[1]["name"], "mcp__cg__get_time");
    h.answer_call(
        &first,
        json!({"content": [{"type": "text", "text": "no such city"}], "isError": true}),
    )
    .await;
    let second = h.until(WAIT, is_tools_call).await;
    assert_eq!(second["request"]["message"]["params"]["name"], "get_time");
    assert_eq!(
        second["request"]["message"]["params"]["_meta"]["claudecode/toolUseId"],
        uses[1]["id"]
    );
    assert_eq!(
        second["request"]["message"]["id"],
        first["request"]["message"]["id"].as_i64().unwrap() + 1
    );
    h.answer_call(
        &second,
        json!({"content": [{"type": "text", "text": "noon"},
                           {"type": "image", "data": PNG, "mimeType": "image/png"}]}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    assert_eq!(h.finish(WAIT).await, Some(0));
    assert_eq!(result["num_turns"], 3);
    assert_eq!(
        result["result"],
        "tool failed: no such city; tool said: noon"
    );
    let results = tool_results(&h.out);
    assert_eq!(
        results[0],
        json!({"type": "tool_result", "content": "no such city", "is_error": true,
               "tool_use_id": uses[0]["id"]})
    );
    assert_eq!(
        results[1]["content"],
        json!([{"type": "text", "text": "noon"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}])
    );
    assert_eq!(
        shapes(&h.out),
        shapes(&fixture("tool_call_parallel.jsonl")),
        "fake vs real\n{}",
        h.transcript()
    );
}

#[tokio::test]
async fn a_held_call_sends_the_real_heartbeat_shape() {
    // The line the real CLI printed after 30 s of holding (r_hb in /work/tools-facts.md).
    let real: Value = serde_json::from_str(r#"{"type":"tool_progress","tool_use_id":"toolu_010AbCdEfGhIjKlMnOpQrSt-heartbeat-0","tool_name":"mcp__cg__q1","parent_tool_use_id":"toolu_010AbCdEfGhIjKlMnOpQrSt","elapsed_time_seconds":30,"heartbeat":true,"session_id":"c0b4649a-018f-42a6-9ebd-049a3443bc81","uuid":"ca108e1d-1d49-479b-839f-d6d15e2b5325"}"#).unwrap();
    let mut h = ToolHost::spawn(fake(vec![weather()]).env("FAKE_CLAUDE_HEARTBEAT", "1")).await;
    h.user(json!("[[scenario:tool_call]]")).await;
    let call = h.until(WAIT, is_tools_call).await;
    let id = call["request"]["message"]["params"]["_meta"]["claudecode/toolUseId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b0 = h.until(WAIT, |l| l["type"] == "tool_progress").await;
    let b1 = h.until(WAIT, |l| l["type"] == "tool_progress").await;
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&b0), keys(&real));
    assert_eq!(b0["tool_use_id"], format!("{id}-heartbeat-0"));
    assert_eq!(b1["tool_use_id"], format!("{id}-heartbeat-1"));
    assert_eq!(b0["parent_tool_use_id"], id.as_str());
    assert_eq!(b0["tool_name"], "mcp__cg__get_weather");
    assert_eq!(
        (
            b0["elapsed_time_seconds"].clone(),
            b1["elapsed_time_seconds"].clone()
        ),
        (json!(1), json!(2))
    );
    assert_eq!(b0["heartbeat"], true);
    h.answer_call(
        &call,
        json!({"content": [{"type": "text", "text": "late"}]}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    assert_eq!(result["result"], "tool said: late");
    // no heartbeat after the reply
    assert!(
        h.next(Duration::from_millis(1500)).await.is_none(),
        "{}",
        h.transcript()
    );
    assert_eq!(h.finish(WAIT).await, Some(0));
}

#[tokio::test]
async fn a_tool_missing_from_allowed_tools_is_denied_without_a_call() {
    let mut opts = fake(vec![weather()]);
    opts.args
        .retain(|a| a != "--allowedTools" && !a.starts_with("mcp__cg__"));
    let mut h = ToolHost::spawn(opts).await;
    h.user(json!("[[scenario:tool_call]]")).await;
    let result = h.until(WAIT, is_result).await;
    assert!(!h.out.iter().any(is_tools_call), "{}", h.transcript());
    let denied = h
        .out
        .iter()
        .find(|l| l["subtype"] == "permission_denied")
        .unwrap_or_else(|| panic!("no permission_denied\n{}", h.transcript()));
    assert_eq!(denied["tool_name"], "mcp__cg__get_weather");
    let r = tool_results(&h.out);
    assert_eq!(r[0]["is_error"], true);
    assert!(result["result"]
        .as_str()
        .unwrap()
        .starts_with("tool failed: Claude requested permissions"));
    assert_eq!(h.finish(WAIT).await, Some(0));
}

#[tokio::test]
async fn a_kept_process_runs_a_second_tool_round_and_jsonrpc_errors_fail_the_call() {
    let mut h = ToolHost::spawn(fake(vec![weather()])).await;
    h.user(json!("[[scenario:tool_call]]")).await;
    let c1 = h.until(WAIT, is_tools_call).await;
    h.reply(
        &c1,
        json!({"jsonrpc": "2.0", "id": c1["request"]["message"]["id"],
               "error": {"code": -32000, "message": "backend exploded"}}),
    )
    .await;
    let r1 = h.until(WAIT, is_result).await;
    assert_eq!(r1["result"], "tool failed: backend exploded");
    assert_eq!(
        tool_results(&h.out)[0],
        json!({"type": "tool_result", "content": "backend exploded", "is_error": true,
               "tool_use_id": c1["request"]["message"]["params"]["_meta"]["claudecode/toolUseId"]})
    );
    h.user(json!("again [[scenario:tool_call]]")).await;
    let c2 = h.until(WAIT, is_tools_call).await;
    let id = |c: &Value| c["request"]["message"]["params"]["_meta"]["claudecode/toolUseId"].clone();
    assert_ne!(id(&c1), id(&c2));
    assert_eq!(c2["request"]["message"]["id"], 3);
    h.answer_call(
        &c2,
        json!({"content": [{"type": "text", "text": "ok now"}]}),
    )
    .await;
    let r2 = h.until(WAIT, is_result).await;
    assert_eq!(r2["result"], "tool said: ok now");
    // a plain turn in the same process still works
    h.user(json!("hello")).await;
    let r3 = h.until(WAIT, is_result).await;
    assert_eq!(r3["num_turns"], 1);
    assert_eq!(h.finish(WAIT).await, Some(0));
    // the handshake ran once
    let lists = h
        .out
        .iter()
        .filter(|l| mcp_method(l) == Some("tools/list"))
        .count();
    assert_eq!(lists, 1);
}

#[tokio::test]
async fn stdin_eof_while_a_call_is_held_gives_the_interrupted_result() {
    let mut h = ToolHost::spawn(fake(vec![weather()])).await;
    h.user(json!("[[scenario:tool_call]]")).await;
    h.until(WAIT, is_tools_call).await;
    h.close_stdin();
    let result = h.until(WAIT, is_result).await;
    let r = tool_results(&h.out);
    assert_eq!(r[0]["is_error"], true);
    assert!(r[0]["content"]
        .as_str()
        .unwrap()
        .starts_with("The tool call was interrupted before a result was received."));
    assert!(result["result"]
        .as_str()
        .unwrap()
        .starts_with("tool failed: The tool call was interrupted"));
    assert_eq!(h.finish(WAIT).await, Some(0));
}

#[tokio::test]
async fn the_handshake_waits_for_each_reply_and_answers_initialize_after_the_mcp_one() {
    let mut h = ToolHost::spawn(fake(vec![weather(), time_tool()])).await;
    // Nothing answered yet: the fake asks initialize and waits.
    let init = h.next(WAIT).await.expect("mcp initialize");
    assert_eq!(mcp_method(&init), Some("initialize"));
    assert_eq!(
        init["request"]["message"]["params"]["protocolVersion"],
        "2025-11-25"
    );
    assert!(
        h.next(Duration::from_millis(300)).await.is_none(),
        "waits for the reply"
    );
    h.answer_handshake(&init).await;
    let r = h.next(WAIT).await.unwrap();
    assert_eq!(r["type"], "control_response");
    assert_eq!(r["response"]["request_id"], "init_1");
    let n = h.next(WAIT).await.unwrap();
    assert_eq!(mcp_method(&n), Some("notifications/initialized"));
    assert!(n["request"]["message"].get("id").is_none());
    h.answer_handshake(&n).await;
    let l = h.next(WAIT).await.unwrap();
    assert_eq!(mcp_method(&l), Some("tools/list"));
    h.answer_handshake(&l).await;
    h.user(json!("plain")).await;
    let init_line = h.until(WAIT, |l| l["subtype"] == "init").await;
    // (the real CLI sorts this list; the fake keeps the host's order)
    let mut listed: Vec<String> = serde_json::from_value(init_line["tools"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, ["mcp__cg__get_time", "mcp__cg__get_weather"]);
    assert_eq!(
        init_line["mcp_servers"],
        json!([{"name": "cg", "status": "connected", "source": "sdk"}])
    );
    h.until(WAIT, is_result).await;
    assert_eq!(h.finish(WAIT).await, Some(0));
}

#[tokio::test]
async fn a_resumed_session_ending_in_tool_results_is_rerun_without_a_stdin_line() {
    let prepare = |config: &std::path::Path, cwd: &std::path::Path| {
        let id = write_session(
            config,
            cwd,
            &[
                (
                    "user",
                    json!({"role": "user", "content": [{"type": "text", "text": "weather?"}]}),
                ),
                (
                    "assistant",
                    json!({"id": "msg_h1", "type": "message", "role": "assistant", "model": "m",
                    "content": [{"type": "tool_use", "id": "toolu_h1", "name": "mcp__cg__get_weather", "input": {"city": "Paris"}}],
                    "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}),
                ),
                (
                    "user",
                    json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_h1",
                    "content": [{"type": "text", "text": "sunny 21C"}]}]}),
                ),
            ],
        );
        std::fs::write(cwd.join("session-id"), id).unwrap();
    };
    let mut opts = fake(vec![weather()]).env("CLAUDE_CODE_RESUME_INTERRUPTED_TURN", "1");
    opts.prepare = Some(&prepare);
    // The session id is only known once prepare ran inside spawn: a tiny wrapper passes
    // `--resume <id> --fork-session` (as ccgate does) from the file prepare wrote.
    let wrapper = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        wrapper.path(),
        format!(
            "#!/bin/sh\nexec {} \"$@\" --resume \"$(cat session-id)\" --fork-session\n",
            fake_cli_path().display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(wrapper.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let wrapper = wrapper.into_temp_path();
    opts.exe = wrapper.to_path_buf();
    let mut h = ToolHost::spawn(opts).await;
    let result = h.until(WAIT, is_result).await;
    assert_eq!(result["result"], "tool said: sunny 21C");
    assert_eq!(result["num_turns"], 1);
    let kinds: Vec<&str> = h.out.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "command_lifecycle").count(),
        1
    );
    h.until(WAIT, |l| {
        l["type"] == "command_lifecycle" && l["state"] == "completed"
    })
    .await;
    // the process then takes stdin turns as usual
    h.user(json!("and now?")).await;
    let r2 = h.until(WAIT, is_result).await;
    assert_eq!(r2["result"], "Hello from the fake CLI.");
    assert_eq!(h.finish(WAIT).await, Some(0));
}
