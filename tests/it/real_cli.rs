//! The REAL `claude` CLI against the loopback [`MockApi`], fully offline.
//!
//! Runs the exact flags ccgate uses ([`CCGATE_FLAGS`]) and checks the observed
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
    assert!(
        out.text_delta_indices().is_empty(),
        "no deltas on an error turn\n{d}"
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

#[tokio::test]
async fn real_cli_auth401() {
    let Some((_m, out)) = run("auth401", &[("CLAUDE_CODE_MAX_RETRIES", "1")]).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "authentication_failed",
        Some(401),
        "Invalid API key · Fix external API key",
    );
    assert_eq!(r["api_error_type"], "authentication_error");
    out.save_fixture("auth401");
}

#[tokio::test]
async fn real_cli_perm403() {
    let Some((_m, out)) = run("perm403", &[]).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "authentication_failed",
        Some(403),
        "Failed to authenticate. API Error: 403",
    );
    assert_eq!(r["api_error_type"], "permission_error");
}

#[tokio::test]
async fn real_cli_notfound404() {
    let Some((_m, out)) = run("notfound404", &[]).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "model_not_found",
        Some(404),
        "There's an issue with the selected model",
    );
    assert_eq!(r["api_error_type"], "not_found_error");
}

#[tokio::test]
async fn real_cli_bad400() {
    let Some((_m, out)) = run("bad400", &[]).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "unknown",
        Some(400),
        "API Error: 400 messages: text content blocks must be non-empty",
    );
    assert_eq!(r["api_error_type"], "invalid_request_error");
}

#[tokio::test]
async fn real_cli_rate429() {
    let Some((_m, out)) = run("rate429", &[("CLAUDE_CODE_MAX_RETRIES", "1")]).await else {
        return;
    };
    let r = assert_api_error(
        &out,
        "rate_limit",
        Some(429),
        "API Error: Request rejected (429)",
    );
    assert_eq!(r["api_error_type"], "rate_limit_error");
    out.save_fixture("rate429");
}

#[tokio::test]
async fn real_cli_server500() {
    let Some((_m, out)) = run("server500", &[]).await else {
        return;
    };
    let r = assert_api_error(&out, "server_error", Some(500), "API Error: 500");
    assert_eq!(r["api_error_type"], "api_error");
}

#[tokio::test]
async fn real_cli_overload529() {
    let Some((mock, out)) = run("overload529", &[("CLAUDE_CODE_MAX_RETRIES", "1")]).await else {
        return;
    };
    // Spec §5 says "API Error: Repeated 529 Overloaded errors. …": that text only appears
    // after 3 consecutive 529s (MAX_RETRIES>=2). With 1 retry (2 attempts) it is this:
    let r = assert_api_error(
        &out,
        "server_error",
        Some(529),
        "API Error: 529 Overloaded. This is a server-side issue",
    );
    let gateway = format!(
        "check your inference gateway ({}).",
        mock.base_url.trim_start_matches("http://")
    );
    assert!(
        r["result"].as_str().is_some_and(|t| t.ends_with(&gateway)),
        "{}",
        out.describe()
    );
    assert_eq!(out.api_retries().len(), 1);
    assert_eq!(out.api_retries()[0]["error_status"], 529);
    assert_eq!(r["api_error_type"], "overloaded_error");
    out.save_fixture("overload529");
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
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
}

#[tokio::test]
async fn real_cli_midstream_error_falls_back_to_non_streaming() {
    let Some((mock, out)) = run("midstream_error", &[]).await else {
        return;
    };
    assert_eq!(out.exit_code, Some(0), "{}", out.describe());
    assert_eq!(out.result()["result"], DEFAULT_TEXT, "{}", out.describe());
    let reqs = mock.message_requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_ne!(reqs[1].body["stream"], true, "the retry is non-streaming");
}

#[tokio::test]
async fn real_cli_midstream_error_without_fallback() {
    let env = [("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1")];
    let Some((_m, out)) = run("midstream_error", &env).await else {
        return;
    };
    assert_eq!(out.exit_code, Some(1), "{}", out.describe());
}

#[tokio::test]
async fn real_cli_garbage() {
    let env = [("CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK", "1")];
    let Some((_m, out)) = run("garbage", &env).await else {
        return;
    };
    assert_eq!(out.exit_code, Some(1), "{}", out.describe());
}
