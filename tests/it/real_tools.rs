//! Client tools on the REAL `claude` CLI against the loopback [`MockApi`], fully offline:
//! the in-process MCP server on the control channel (`--mcp-config` type `sdk`), held
//! `tools/call`s, and what the model receives. Re-verifies the facts ccgate's tool support
//! relies on (/work/tools-facts.md, `conversations-and-tools.md` §4):
//! the call carries the model's tool-use id, a held call waits, parallel calls come one at a
//! time, the result reaches the model as a real `tool_result`, one round is exactly two
//! upstream calls, and the fresh-process fallback (a resumed session ending in the results,
//! `CLAUDE_CODE_RESUME_INTERRUPTED_TURN=1`, no stdin line).
//! Skipped (loudly) without `CCGATE_REAL_CLAUDE`; failing instead under `CI`.
//! `CCGATE_UPDATE_FIXTURES=1` rewrites `tests/fixtures/real/tool_call_*.jsonl`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mock_api::{tool_use_id, Answer, MockApi};
use crate::support_real::real_claude;
use crate::support_tools::{
    fixture, is_result, is_tools_call, shapes, tool, write_session, HostOpts, ToolHost,
};

const WAIT: Duration = Duration::from_secs(30);
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

/// A mock with script `name` and a host running the real CLI against it; `None` = skipped.
async fn start(name: &str, answers: Vec<Answer>, tools: Vec<Value>) -> Option<(MockApi, ToolHost)> {
    let exe = real_claude()?;
    let mock = MockApi::start().await;
    mock.script(name, answers);
    let host = ToolHost::spawn(
        HostOpts::new(&exe, tools).env("ANTHROPIC_BASE_URL", &mock.url(&format!("script:{name}"))),
    )
    .await;
    Some((mock, host))
}

/// With `CCGATE_UPDATE_FIXTURES`: the transcript (`<case>.jsonl`) and the request bodies the
/// model received (`<case>.upstream.json`) in `tests/fixtures/real/`.
fn save_fixtures(case: &str, h: &ToolHost, mock: &MockApi) {
    if std::env::var_os("CCGATE_UPDATE_FIXTURES").is_none() {
        return;
    }
    h.save_fixture(case);
    let bodies: Vec<Value> = mock
        .message_requests()
        .into_iter()
        .map(|r| json!({"path": r.path, "body": r.body}))
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real")
        .join(format!("{case}.upstream.json"));
    let text = serde_json::to_string_pretty(&bodies).expect("serialize") + "\n";
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `id` is the mock's id of tool call `i` in one of its answers ([`tool_use_id`]).
fn assert_is_mock_id(id: &Value, i: usize) {
    let id = id
        .as_str()
        .unwrap_or_else(|| panic!("no tool-use id: {id}"));
    assert!(
        (1..10).any(|n| tool_use_id(n, i) == id),
        "{id} is not the mock's tool_use id #{i}"
    );
}

fn call_id(call: &Value) -> Value {
    call["request"]["message"]["params"]["_meta"]["claudecode/toolUseId"].clone()
}

#[tokio::test]
async fn a_held_call_continues_with_a_real_tool_result_in_two_upstream_calls() {
    let Some((mock, mut h)) = start(
        "single",
        vec![
            Answer::Tools {
                text: Some("Let me check.".into()),
                calls: vec![("mcp__cg__get_weather".into(), json!({"city": "Paris"}))],
            },
            Answer::EchoResults,
        ],
        vec![weather()],
    )
    .await
    else {
        return;
    };
    // Written at once: the CLI waits for the tools/list answer before the turn starts.
    h.user(json!("weather in Paris?")).await;
    let call = h.until(WAIT, is_tools_call).await;
    let params = &call["request"]["message"]["params"];
    assert_eq!(params["name"], "get_weather", "{}", h.transcript());
    assert_eq!(params["arguments"], json!({"city": "Paris"}));
    // the call names the model's tool-use id (the mock's), which is also the block on stdout
    assert_is_mock_id(&call_id(&call), 0);
    let block = h
        .out
        .iter()
        .filter(|l| l["type"] == "assistant")
        .flat_map(|l| {
            l["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|b| b["type"] == "tool_use")
        .expect("tool_use on stdout");
    assert_eq!(block["id"], call_id(&call));
    assert_eq!(block["name"], "mcp__cg__get_weather");

    // hold it: nothing else reaches the model meanwhile
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        if let Some(l) = h.next(Duration::from_millis(200)).await {
            assert_ne!(l["type"], "result", "{}", h.transcript());
        }
    }
    assert_eq!(mock.message_requests().len(), 1);
    h.answer_call(
        &call,
        json!({"content": [{"type": "text", "text": "sunny 21C"}]}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    h.finish(WAIT).await;
    assert_eq!(result["subtype"], "success", "{}", h.transcript());
    assert_eq!(result["result"], "seen: sunny 21C");
    assert_eq!(result["num_turns"], 2);

    let reqs = mock.message_requests();
    assert_eq!(
        reqs.len(),
        2,
        "one tool round = the call and the continuation"
    );
    let offered = &reqs[0].body["tools"];
    let t = offered
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "mcp__cg__get_weather")
        .unwrap_or_else(|| panic!("tool not offered: {offered}"));
    assert_eq!(t["description"], "Weather for a city");
    assert_eq!(
        t["input_schema"],
        weather()["inputSchema"],
        "schema verbatim"
    );
    assert!(reqs[0].body.get("tool_choice").is_none());
    assert_eq!(
        reqs[1].tool_results(),
        vec![json!({"tool_use_id": call_id(&call), "type": "tool_result",
                    "content": [{"type": "text", "text": "sunny 21C"}],
                    "cache_control": {"type": "ephemeral"}})]
    );
    // the assistant turn before it is the model's own message, text and tool_use together
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let a = msgs
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(
        a["content"],
        json!([{"type": "text", "text": "Let me check."}, block])
    );
    assert_eq!(shapes(&h.out), shapes(&fixture("tool_call_single.jsonl")));
    save_fixtures("tool_call_single", &h, &mock);
}

#[tokio::test]
async fn parallel_calls_are_asked_one_at_a_time_and_answered_in_one_user_turn() {
    let Some((mock, mut h)) = start(
        "parallel",
        vec![
            Answer::Tools {
                text: None,
                calls: vec![
                    ("mcp__cg__get_weather".into(), json!({"city": "Paris"})),
                    ("mcp__cg__get_time".into(), json!({"tz": "CET"})),
                ],
            },
            Answer::EchoResults,
        ],
        vec![weather(), time_tool()],
    )
    .await
    else {
        return;
    };
    h.user(json!("weather and time?")).await;
    let first = h.until(WAIT, is_tools_call).await;
    assert_is_mock_id(&call_id(&first), 0);
    // no second call while the first is held, though the whole message has arrived
    h.until(WAIT, |l| l["event"]["type"] == "message_stop")
        .await;
    while let Some(l) = h.next(Duration::from_millis(1500)).await {
        assert!(
            !is_tools_call(&l),
            "second call before the first answer\n{}",
            h.transcript()
        );
    }
    h.answer_call(
        &first,
        json!({"content": [{"type": "text", "text": "no such city"}], "isError": true}),
    )
    .await;
    let second = h.until(WAIT, is_tools_call).await;
    assert_is_mock_id(&call_id(&second), 1);
    assert_ne!(call_id(&first), call_id(&second));
    assert_eq!(second["request"]["message"]["params"]["name"], "get_time");
    h.answer_call(
        &second,
        json!({"content": [{"type": "text", "text": "noon"},
                           {"type": "image", "data": PNG, "mimeType": "image/png"}]}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    h.finish(WAIT).await;
    assert_eq!(
        result["result"],
        "seen: error: no such city | noon [image]",
        "{}",
        h.transcript()
    );
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2);
    let r = reqs[1].tool_results();
    assert_eq!(r.len(), 2, "both results in one user message");
    assert_eq!(
        r[0],
        json!({"type": "tool_result", "content": "no such city", "is_error": true,
               "tool_use_id": call_id(&first)})
    );
    assert_eq!(r[1]["tool_use_id"], call_id(&second));
    assert_eq!(
        r[1]["content"],
        json!([{"type": "text", "text": "noon"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}])
    );
    assert_eq!(shapes(&h.out), shapes(&fixture("tool_call_parallel.jsonl")));
    save_fixtures("tool_call_parallel", &h, &mock);
}

#[tokio::test]
async fn a_jsonrpc_error_reply_reaches_the_model_as_an_error_result() {
    let Some((mock, mut h)) = start(
        "rpcerr",
        vec![
            Answer::Tools {
                text: None,
                calls: vec![("mcp__cg__get_weather".into(), json!({"city": "Paris"}))],
            },
            Answer::EchoResults,
        ],
        vec![weather()],
    )
    .await
    else {
        return;
    };
    h.user(json!("weather?")).await;
    let call = h.until(WAIT, is_tools_call).await;
    h.reply(
        &call,
        json!({"jsonrpc": "2.0", "id": call["request"]["message"]["id"],
               "error": {"code": -32000, "message": "backend exploded"}}),
    )
    .await;
    let result = h.until(WAIT, is_result).await;
    h.finish(WAIT).await;
    assert_eq!(result["result"], "seen: error: backend exploded");
    let r = mock.message_requests()[1].tool_results();
    assert_eq!(r[0]["content"], "backend exploded");
    assert_eq!(r[0]["is_error"], true);
}

#[tokio::test]
async fn killing_a_held_run_costs_no_upstream_call_but_closing_stdin_does() {
    for close_stdin in [false, true] {
        let name = if close_stdin { "close" } else { "kill" };
        let Some((mock, mut h)) = start(
            name,
            vec![
                Answer::Tools {
                    text: None,
                    calls: vec![("mcp__cg__get_weather".into(), json!({"city": "Paris"}))],
                },
                Answer::EchoResults,
            ],
            vec![weather()],
        )
        .await
        else {
            return;
        };
        h.user(json!("weather?")).await;
        h.until(WAIT, is_tools_call).await;
        if close_stdin {
            // The CLI answers the call itself ("interrupted") and asks the model again.
            h.close_stdin();
            let result = h.until(WAIT, is_result).await;
            assert!(
                result["result"]
                    .as_str()
                    .unwrap()
                    .starts_with("seen: error: The tool call was interrupted"),
                "{}",
                h.transcript()
            );
            h.finish(WAIT).await;
            assert_eq!(mock.message_requests().len(), 2);
        } else {
            let code = h.terminate(WAIT).await;
            assert_eq!(code, Some(143), "{}", h.transcript());
            assert!(!h.out.iter().any(is_result));
            assert_eq!(mock.message_requests().len(), 1);
        }
    }
}

#[tokio::test]
async fn fallback_a_resumed_session_ending_in_the_results_reruns_the_turn() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let id = "toolu_01HistAbCdEfGhIjKlMnOpQr";
    let prepare = move |config: &std::path::Path, cwd: &std::path::Path| {
        let sid = write_session(
            config,
            cwd,
            &[
                (
                    "user",
                    json!({"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]}),
                ),
                (
                    "assistant",
                    json!({"id": "msg_hist1", "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-6",
                    "content": [{"type": "text", "text": "Let me check."},
                                {"type": "tool_use", "id": id, "name": "mcp__cg__get_weather", "input": {"city": "Paris"}}],
                    "stop_reason": "tool_use", "stop_sequence": null,
                    "usage": {"input_tokens": 1, "output_tokens": 1}}),
                ),
                (
                    "user",
                    json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id,
                    "content": [{"type": "text", "text": "sunny 21C"},
                                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}),
                ),
            ],
        );
        std::fs::write(cwd.join("sid"), sid).expect("write sid");
    };
    // --resume needs the id written by prepare: a wrapper reads it in the run's cwd.
    let wrapper = tempfile::NamedTempFile::new().expect("wrapper");
    std::fs::write(
        wrapper.path(),
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --resume \"$(cat sid)\" --fork-session\n",
            exe.display()
        ),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(wrapper.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let wrapper = wrapper.into_temp_path();
    let mut opts = HostOpts::new(&wrapper, vec![weather()])
        .env(
            "ANTHROPIC_BASE_URL",
            &mock.url("tool_call:mcp__cg__get_weather"),
        )
        .env("CLAUDE_CODE_RESUME_INTERRUPTED_TURN", "1");
    opts.prepare = Some(&prepare);
    let mut h = ToolHost::spawn(opts).await;
    // no stdin user line at all
    let result = h.until(WAIT, is_result).await;
    assert!(
        result["result"]
            .as_str()
            .unwrap_or("")
            .starts_with("seen: sunny 21C"),
        "{}",
        h.transcript()
    );
    assert_eq!(result["num_turns"], 1);
    h.finish(WAIT).await;
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 1, "exactly the continuation");
    let msgs: Vec<&Value> = reqs[0].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] != "system")
        .collect();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "no inserted turns");
    // one user message: the real tool_result (the CLI appends its <system-reminder> text
    // blocks inside it when the session's model takes no system-role messages), then the
    // CLI's resume text
    let last = msgs[2]["content"].as_array().unwrap();
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[0]["type"], "tool_result");
    assert_eq!(last[0]["tool_use_id"], id);
    let inner = last[0]["content"].as_array().unwrap();
    assert!(inner[0]["text"].as_str().unwrap().starts_with("sunny 21C"));
    assert!(
        inner
            .iter()
            .any(|b| b["type"] == "image" && b["source"]["data"] == PNG),
        "images survive: {inner:?}"
    );
    assert_eq!(last[1]["text"], "Continue from where you left off.");
    assert_eq!(msgs[1]["content"][1]["id"], id);
}
