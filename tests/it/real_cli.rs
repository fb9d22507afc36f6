//! The REAL `claude` CLI against the loopback [`MockApi`], fully offline.
//!
//! Runs the exact flags ccgate uses
//! ([`ccgate_flags`](crate::support_real::ccgate_flags)) and checks the observed
//! stream-json shape per scenario against `cli.md` §5 (where reality differed
//! from the spec, the assertions follow reality; see the notes on each test).
//! Skipped (loudly) without `CCGATE_REAL_CLAUDE`; failing instead under `CI`.
//! `CCGATE_UPDATE_FIXTURES=1` rewrites `tests/fixtures/real/*.jsonl`.

use std::time::Duration;

use serde_json::Value;

use crate::mock_api::{MockApi, DEFAULT_TEXT};
use crate::support_real::{real_claude, CliOutput, RealCli};

/// Starts a mock and runs the CLI against `/s/<scenario>`; `None` = skipped.
async fn run(scenario: &str, env: &[(&str, &str)]) -> Option<(MockApi, CliOutput)> {
    let exe = real_claude()?;
    let mock = MockApi::start().await;
    let mut cli = RealCli::new(&exe).base_url(&mock.url(scenario));
    for (k, v) in env {
        cli = cli.env(k, v);
    }
    let out = cli.run().await;
    eprintln!("[real_cli] {scenario} {env:?}: {}", out.summary());
    Some((mock, out))
}

/// Asserts the common shape of an API-error turn and returns the result line.
fn assert_api_error<'a>(
    out: &'a CliOutput,
    assistant_error: &str,
    status: Option<u16>,
    text_prefix: &str,
) -> &'a Value {
    let d = out.describe();
    assert_eq!(out.exit_code, Some(1), "{d}");
    assert!(out.stderr.is_empty(), "stderr must be empty\n{d}");
    let a = out
        .synthetic_assistant()
        .unwrap_or_else(|| panic!("no synthetic assistant\n{d}"));
    assert_eq!(a["message"]["model"], "<synthetic>", "{d}");
    assert_eq!(a["error"], assistant_error, "{d}");
    let r = out.result();
    assert_eq!(r["is_error"], true, "{d}");
    assert_eq!(r["subtype"], "success", "{d}");
    assert_eq!(r["terminal_reason"], "api_error", "{d}");
    assert_eq!(
        r["api_error_status"],
        status.map_or(Value::Null, Value::from),
        "{d}"
    );
    let text = r["result"]
        .as_str()
        .unwrap_or_else(|| panic!("result text\n{d}"));
    assert!(
        text.starts_with(text_prefix),
        "result {text:?} should start with {text_prefix:?}\n{d}"
    );
    assert_eq!(
        a["message"]["content"][0]["text"], r["result"],
        "assistant text = result text\n{d}"
    );
    r
}

/// [`assert_api_error`] for an HTTP error reply: also no deltas were streamed.
fn assert_http_error<'a>(
    out: &'a CliOutput,
    assistant_error: &str,
    status: u16,
    api_error_type: &str,
    text_prefix: &str,
) -> &'a Value {
    let r = assert_api_error(out, assistant_error, Some(status), text_prefix);
    assert_eq!(r["api_error_type"], api_error_type, "{}", out.describe());
    assert!(
        out.text_delta_indices().is_empty(),
        "no deltas on an error turn\n{}",
        out.describe()
    );
    r
}

/// Asserts a successful turn streamed `text` as deltas before the result.
fn assert_success(out: &CliOutput, text: &str) {
    let d = out.describe();
    assert_eq!(out.exit_code, Some(0), "{d}");
    let r = out.result();
    assert_eq!(r["is_error"], false, "{d}");
    assert_eq!(r["subtype"], "success", "{d}");
    assert_eq!(r["result"], text, "{d}");
    let deltas = out.text_delta_indices();
    assert!(!deltas.is_empty(), "no text_delta stream_events\n{d}");
    assert!(
        deltas.iter().all(|&i| Some(i) < out.result_index()),
        "deltas after result\n{d}"
    );
    assert_eq!(out.stream_text(), text, "{d}");
}

#[tokio::test]
async fn real_cli_ok_streams_and_sends_expected_request() {
    let Some((mock, out)) = run("ok", &[]).await else {
        return;
    };
    assert_success(&out, DEFAULT_TEXT);
    out.save_fixture("success");
    // Reality (2.1.332): besides the Messages call the CLI sends a connectivity
    // probe `HEAD {BASE}/api/hello` (spec §6 says "no side calls"); our 404 is harmless.
    for r in mock
        .requests()
        .iter()
        .filter(|r| !r.path.ends_with("/v1/messages"))
    {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("HEAD", "/s/ok/api/hello"),
            "unexpected side call: {r:?}"
        );
    }
    let reqs = mock.message_requests();
    assert_eq!(
        reqs.len(),
        1,
        "exactly one API call: {:#?}",
        mock.requests()
    );
    let req = &reqs[0];
    assert_eq!(req.path, "/s/ok/v1/messages");
    assert_eq!(req.query.as_deref(), Some("beta=true"));
    assert_eq!(
        req.headers.get("x-api-key").map(String::as_str),
        Some("test-key")
    );
    assert!(
        req.body["model"].as_str().is_some_and(|m| !m.is_empty()),
        "model: {}",
        req.body
    );
    assert_eq!(req.body["stream"], true);
    let tools = req
        .body
        .get("tools")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(
        tools, 0,
        "--tools \"\" sends no tools: {}",
        req.body["tools"]
    );
    assert_eq!(req.body["max_tokens"], 128000, "default model's max_tokens");
    assert_eq!(
        req.headers.get("anthropic-version").map(String::as_str),
        Some("2023-06-01")
    );
    let ua = req.headers.get("user-agent").map_or("", String::as_str);
    assert!(
        ua.starts_with("claude-cli/") && ua.contains("sdk-cli"),
        "user-agent {ua:?}"
    );
    let beta = req.headers.get("anthropic-beta").map_or("", String::as_str);
    assert!(
        beta.contains("claude-code-20250219"),
        "anthropic-beta {beta:?}"
    );
    assert!(
        req.headers.contains_key("x-claude-code-session-id"),
        "{:?}",
        req.headers
    );
    // Reality (2.1.332): `messages` = [user "Hello", then a `role:"system"` message
    // carrying the "# Environment" block (cwd, platform, …)], not just the user turn.
    let msgs = req.body["messages"].as_array().expect("messages array");
    let users: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(users.len(), 1, "one user message: {msgs:#?}");
    assert!(
        users[0]["content"].to_string().contains("Hello"),
        "user text: {}",
        users[0]
    );
}

#[tokio::test]
async fn real_cli_custom_text_and_slow_stream() {
    let Some((_mock, out)) = run("slow:Tick%20tock%20goes%20the%20clock", &[]).await else {
        return;
    };
    assert_success(&out, "Tick tock goes the clock");
    assert_eq!(out.text_delta_indices().len(), 5);
    assert!(
        out.elapsed >= Duration::from_millis(1200),
        "4 gaps of 300 ms: {:?}",
        out.elapsed
    );
}

#[tokio::test]
async fn real_cli_not_logged_in() {
    let Some(exe) = real_claude() else { return };
    let out = RealCli::new(&exe)
        .env_remove("ANTHROPIC_API_KEY")
        .run()
        .await;
    eprintln!("[real_cli] not_logged_in: {}", out.summary());
    let r = assert_api_error(
        &out,
        "authentication_failed",
        None,
        "Not logged in · Please run /login",
    );
    assert_eq!(r["result"], "Not logged in · Please run /login");
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    assert_eq!(out.lines[0]["apiKeySource"], "none");
    out.save_fixture("not_logged_in");
}

/// One HTTP-error scenario, run with `CLAUDE_CODE_MAX_RETRIES=1` so that we also
/// see whether the CLI retries it (one `system/api_retry` line) or not.
struct HttpCase {
    scenario: &'static str,
    status: u16,
    api_error_type: &'static str,
    assistant_error: &'static str,
    /// `api_retry.error` when retried, `None` when the CLI does not retry.
    retry_error: Option<&'static str>,
    /// `POST /v1/messages` calls the mock sees (hidden re-sends included).
    requests: usize,
    /// Exact result text; `{gw}` stands for the mock's `host:port`.
    text: &'static str,
    fixture: Option<&'static str>,
}

async fn http_case(c: HttpCase) {
    let Some((mock, out)) = run(c.scenario, &[("CLAUDE_CODE_MAX_RETRIES", "1")]).await else {
        return;
    };
    let text = c
        .text
        .replace("{gw}", mock.base_url.trim_start_matches("http://"));
    let r = assert_http_error(&out, c.assistant_error, c.status, c.api_error_type, &text);
    assert_eq!(r["result"], text, "{}", out.describe());
    let retries = out.api_retries();
    match c.retry_error {
        Some(e) => {
            assert_eq!(retries.len(), 1, "{}", out.describe());
            assert_eq!(retries[0]["error_status"], c.status, "{}", out.describe());
            assert_eq!(retries[0]["error"], e, "{}", out.describe());
        }
        None => assert!(retries.is_empty(), "{}", out.describe()),
    }
    assert_eq!(
        mock.message_requests().len(),
        c.requests,
        "{:#?}",
        mock.message_requests()
    );
    if let Some(name) = c.fixture {
        out.save_fixture(name);
    }
}

#[tokio::test]
async fn real_cli_auth401() {
    http_case(HttpCase {
        scenario: "auth401",
        requests: 2,
        status: 401,
        api_error_type: "authentication_error",
        assistant_error: "authentication_failed",
        retry_error: Some("authentication_failed"),
        text: "Invalid API key · Fix external API key",
        fixture: Some("auth401"),
    })
    .await;
}

#[tokio::test]
async fn real_cli_perm403() {
    http_case(HttpCase {
        scenario: "perm403",
        requests: 1,
        status: 403,
        api_error_type: "permission_error",
        assistant_error: "authentication_failed",
        retry_error: None,
        text: "Failed to authenticate. API Error: 403 Your API key does not have permission to use the specified resource.",
        fixture: None,
    })
    .await;
}

/// Not in the spec: on 404 the CLI silently re-sends once WITHOUT streaming
/// (`stream:false`, `max_tokens:64000`, the non-streaming fallback), no `api_retry`.
#[tokio::test]
async fn real_cli_notfound404() {
    http_case(HttpCase {
        scenario: "notfound404",
        requests: 2,
        status: 404,
        api_error_type: "not_found_error",
        assistant_error: "model_not_found",
        retry_error: None,
        text: "There's an issue with the selected model (claude-opus-5-5). It may not exist or you may not have access to it. Run --model to pick a different model.",
        fixture: None,
    })
    .await;
}

/// Not in the spec: on 400 the CLI silently re-sends twice (no `api_retry` lines),
/// dropping betas each time (`thinking-token-count-…`, then `thinking-display-updates-…`
/// together with `thinking.display`) before giving up.
#[tokio::test]
async fn real_cli_bad400() {
    http_case(HttpCase {
        scenario: "bad400",
        requests: 3,
        status: 400,
        api_error_type: "invalid_request_error",
        assistant_error: "unknown",
        retry_error: None,
        text: "API Error: 400 messages: text content blocks must be non-empty",
        fixture: None,
    })
    .await;
}

#[tokio::test]
async fn real_cli_rate429() {
    http_case(HttpCase {
        scenario: "rate429",
        requests: 2,
        status: 429,
        api_error_type: "rate_limit_error",
        assistant_error: "rate_limit",
        retry_error: Some("rate_limit"),
        text: "API Error: Request rejected (429) · Number of request tokens has exceeded your per-minute rate limit",
        fixture: Some("rate429"),
    })
    .await;
}

#[tokio::test]
async fn real_cli_server500() {
    http_case(HttpCase {
        scenario: "server500",
        requests: 2,
        status: 500,
        api_error_type: "api_error",
        assistant_error: "server_error",
        retry_error: Some("server_error"),
        text: "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway ({gw}).",
        fixture: None,
    })
    .await;
}

/// Spec §5 lists "API Error: Repeated 529 Overloaded errors. …" (seen with
/// MAX_RETRIES=2): that text needs 3 consecutive 529s. After 2 it reads like this.
#[tokio::test]
async fn real_cli_overload529() {
    http_case(HttpCase {
        scenario: "overload529",
        requests: 2,
        status: 529,
        api_error_type: "overloaded_error",
        assistant_error: "server_error",
        retry_error: Some("overloaded"),
        text: "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway ({gw}).",
        fixture: Some("overload529"),
    })
    .await;
}

#[tokio::test]
async fn real_cli_connection_refused() {
    let Some(exe) = real_claude() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to close");
        l.local_addr().expect("addr").port()
    };
    let out = RealCli::new(&exe)
        .base_url(&format!("http://127.0.0.1:{port}"))
        .run()
        .await;
    eprintln!("[real_cli] connection_refused: {}", out.summary());
    let r = assert_api_error(&out, "server_error", None, "API Error: Connection refused");
    assert_eq!(r["api_error"], "connection_failed");
}

#[tokio::test]
async fn real_cli_hang_times_out() {
    let Some((_m, out)) = run("hang", &[("API_TIMEOUT_MS", "2000")]).await else {
        return;
    };
    assert_api_error(&out, "server_error", None, "Request timed out");
    assert!(out.elapsed < Duration::from_secs(30), "{:?}", out.elapsed);
}

#[tokio::test]
async fn real_cli_midstream_error_falls_back_to_non_streaming() {
    let Some((mock, out)) = run("midstream_error", &[]).await else {
        return;
    };
    let d = out.describe();
    assert_eq!(out.exit_code, Some(0), "{d}");
    let r = out.result();
    assert_eq!(
        (&r["is_error"], &r["result"]),
        (&false.into(), &DEFAULT_TEXT.into()),
        "{d}"
    );
    // The deltas streamed so far ("Hello ", "from ") are retracted by `abandoned_blocks`.
    assert_eq!(out.stream_text(), "Hello from ", "{d}");
    assert!(
        out.lines
            .iter()
            .any(|l| l["abandoned_blocks"]["from_block_index"] == 0),
        "{d}"
    );
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[0].body["stream"], true);
    assert_ne!(reqs[1].body["stream"], true, "the retry is non-streaming");
    assert_eq!(
        reqs[1].body["max_tokens"], 64000,
        "spec §5: the fallback uses max_tokens 64000"
    );
}

#[tokio::test]
async fn real_cli_midstream_error_without_fallback() {
    let env = [("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1")];
    let Some((mock, out)) = run("midstream_error", &env).await else {
        return;
    };
    let r = assert_api_error(&out, "unknown", Some(529), "API Error: Overloaded");
    assert_eq!(r["api_error_type"], "overloaded_error");
    assert_eq!(out.stream_text(), "Hello from ", "{}", out.describe());
    assert!(
        out.lines.iter().any(|l| l["abandoned_blocks"].is_object()),
        "{}",
        out.describe()
    );
    assert_eq!(mock.message_requests().len(), 1);
    out.save_fixture("midstream_error_no_fallback");
}

#[tokio::test]
async fn real_cli_garbage_with_fallback() {
    let Some((mock, out)) = run("garbage", &[]).await else {
        return;
    };
    // Not in the spec: the non-streaming retry also gets junk, and the text says so.
    let r = assert_api_error(
        &out,
        "unknown",
        None,
        "API Error: API returned an empty or malformed response (HTTP 200)",
    );
    assert!(
        r["result"]
            .as_str()
            .is_some_and(|t| t.contains("StreamNoEventsError")),
        "{}",
        out.describe()
    );
    assert_eq!(mock.message_requests().len(), 2);
}

#[tokio::test]
async fn real_cli_garbage_without_fallback() {
    let env = [("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1")];
    let Some((_m, out)) = run("garbage", &env).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "unknown",
        None,
        "API Error: Stream ended without receiving any events",
    );
    assert_eq!(r["api_error"], Value::Null);
}

/// The CLI has no short stream watchdog (idle timeout >= 300 s): after one delta it
/// just goes silent. We only check the silence here (3 s), then kill it.
#[tokio::test]
async fn real_cli_stall_goes_silent() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let out = RealCli::new(&exe)
        .base_url(&mock.url("stall"))
        // Long enough for a cold CLI on a loaded 2-core runner to print its first words.
        .timeout(Duration::from_secs(8))
        .run()
        .await;
    eprintln!("[real_cli] stall: {}", out.summary());
    assert!(out.timed_out, "{}", out.describe());
    assert_eq!(out.result_index(), None, "{}", out.describe());
    assert_eq!(out.stream_text(), "Hello ", "{}", out.describe());
}

/// Two user lines on one process (ccgate's warm-process mode): two turns, two
/// results, each with its own `system/init`; `--model` reaches the request.
#[tokio::test]
async fn real_cli_two_turns_and_model_flag() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let second = r#"{"type":"user","message":{"role":"user","content":"Again"}}"#;
    let out = RealCli::new(&exe)
        .base_url(&mock.url("ok"))
        .args(&["--model", "claude-sonnet-4-6"])
        .stdin_lines(&[crate::support_real::HELLO_LINE, second])
        .run()
        .await;
    eprintln!("[real_cli] two_turns: {}", out.summary());
    let d = out.describe();
    assert_eq!(out.exit_code, Some(0), "{d}");
    let results = out.of_type("result");
    assert_eq!(results.len(), 2, "{d}");
    assert!(
        results
            .iter()
            .all(|r| r["is_error"] == false && r["result"] == DEFAULT_TEXT),
        "{d}"
    );
    let inits = out.lines.iter().filter(|l| l["subtype"] == "init").count();
    assert_eq!(inits, 2, "one system/init per turn\n{d}");
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    for r in &reqs {
        assert_eq!(r.body["model"], "claude-sonnet-4-6");
        assert_eq!(r.body["max_tokens"], 32000, "spec §6: sonnet-4-6 → 32000");
    }
    let second_users = reqs[1].body["messages"].to_string();
    assert!(
        second_users.contains("Hello") && second_users.contains("Again"),
        "history re-sent: {second_users}"
    );
}

/// Reality the spec does not describe: when an answer hits the output token limit the CLI
/// sends up to 3 "resume" user turns of its own, then gives up with a synthetic
/// `max_output_tokens` error and an `is_error` result (exit 1).
#[tokio::test]
async fn real_cli_output_token_limit_resumes_three_times_then_fails() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let out = RealCli::new(&exe)
        .base_url(&mock.url("maxtok:Cut off mid"))
        .env("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "20")
        .stdin_lines(&[crate::support_real::HELLO_LINE])
        .run()
        .await;
    let d = out.describe();
    assert_eq!(out.exit_code, Some(1), "{d}");
    let synthetic = out.synthetic_assistant().expect("synthetic error message");
    assert_eq!(synthetic["error"], "max_output_tokens", "{d}");
    assert_eq!(out.result()["api_error"], "max_output_tokens", "{d}");
    assert_eq!(out.result()["is_error"], true, "{d}");
    let resumes = out
        .of_type("user")
        .iter()
        .filter(|u| u.to_string().contains("Output token limit hit"))
        .count();
    assert_eq!(resumes, 3, "{d}");
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert!(reqs.iter().all(|r| r.body["max_tokens"] == 20));
}
