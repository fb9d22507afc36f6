//! Plan windows on the REAL `claude` binary against the loopback mock Messages API: what a
//! subscription login reports through the `get_usage` control request and the stream's
//! `rate_limit_event` when the API's answers carry the unified rate-limit headers
//! (`anthropic-ratelimit-unified-5h-utilization` …). The facts ccgate's plan windows are
//! to be built on (issue 23): the stream reports both windows with every answer, for an
//! environment token and a logged-in directory alike; `get_usage` reports them only for a
//! login whose token has the `user:profile` scope, and only from the last answer's
//! headers. Skipped loudly without `CCGATE_REAL_CLAUDE` (fails under CI instead).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::mock_api::MockApi;
use crate::support_real::{ccgate_flags, real_claude, HELLO_LINE};

/// Runs one turn, then asks `get_usage`; returns every stdout line (JSON) in order.
async fn turn_then_get_usage(env: &[(&str, String)], config_dir: &std::path::Path) -> Vec<Value> {
    let exe = real_claude().expect("checked by the caller");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(ccgate_flags())
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env("CLAUDE_CONFIG_DIR", config_dir)
        .env("HOME", config_dir)
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("DISABLE_TELEMETRY", "1")
        .current_dir(config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the real CLI");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(format!("{HELLO_LINE}\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = async {
        let mut asked = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            let kind = v["type"].as_str().unwrap_or("").to_string();
            let answered_usage =
                kind == "control_response" && v["response"]["request_id"] == "usage-1";
            out.push(v);
            if kind == "result" && !asked {
                asked = true;
                stdin
                    .write_all(
                        b"{\"type\":\"control_request\",\"request_id\":\"usage-1\",\"request\":{\"subtype\":\"get_usage\",\"skip_behaviors\":true}}\n",
                    )
                    .await
                    .unwrap();
            }
            if answered_usage {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(40), read).await;
    drop(stdin);
    let _ = child.kill().await;
    out
}

#[tokio::test]
async fn what_a_subscription_reports_of_its_windows() {
    if real_claude().is_none() {
        return;
    }
    let mock = MockApi::start().await;
    let url = mock.url("unified:0.42,0.1,allowed,in_use");
    // 1. An OAuth token in the environment (`claude setup-token`).
    let dir = tempfile::tempdir().unwrap();
    let env_token = turn_then_get_usage(
        &[
            ("ANTHROPIC_BASE_URL", url.clone()),
            (
                "CLAUDE_CODE_OAUTH_TOKEN",
                "sk-ant-oat01-mock-subscription-token".into(),
            ),
        ],
        dir.path(),
    )
    .await;
    // 2. A logged-in config directory whose token has the profile scope.
    let dir2 = tempfile::tempdir().unwrap();
    let far = (ccgate::clock::unix_now() + 86_400 * 30) * 1000;
    std::fs::write(
        dir2.path().join(".credentials.json"),
        serde_json::json!({"claudeAiOauth": {
            "accessToken": "sk-ant-oat01-mock-access",
            "refreshToken": "sk-ant-ort01-mock-refresh",
            "expiresAt": far,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max"
        }})
        .to_string(),
    )
    .unwrap();
    let logged_in = turn_then_get_usage(&[("ANTHROPIC_BASE_URL", url.clone())], dir2.path()).await;
    let find = |lines: &[Value], t: &str| -> Value {
        lines
            .iter()
            .find(|l| l["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} line in {lines:?}"))
    };
    for lines in [&env_token, &logged_in] {
        // Every answer's unified headers reach the stream as a `rate_limit_event` with both
        // windows (utilization 0-1, resets in Unix seconds) and the extra-usage state.
        let info = find(lines, "rate_limit_event")["rate_limit_info"].clone();
        assert_eq!(info["status"], "allowed", "{info}");
        let w = &info["unifiedWindows"];
        assert_eq!(w["five_hour"]["utilization"], 0.42, "{info}");
        assert_eq!(w["seven_day"]["utilization"], 0.1, "{info}");
        assert!(w["five_hour"]["resetsAt"].as_u64().unwrap() > ccgate::clock::unix_now());
        assert_eq!(info["overageInUse"], true, "{info}");
        assert_eq!(info["overageStatus"], "allowed", "{info}");
        assert_eq!(find(lines, "result")["subtype"], "success");
    }
    // `get_usage`: an environment token has no profile scope, so no windows at all …
    let usage = find(&env_token, "control_response")["response"]["response"].clone();
    assert_eq!(usage["rate_limits_available"], false, "{usage}");
    assert!(usage["rate_limits"].is_null(), "{usage}");
    // … a logged-in directory whose token has it gets the windows the last answer's
    // headers reported (percent, RFC 3339), without any model call of its own.
    let usage = find(&logged_in, "control_response")["response"]["response"].clone();
    assert_eq!(usage["rate_limits_available"], true, "{usage}");
    assert_eq!(usage["subscription_type"], "max", "{usage}");
    assert_eq!(
        usage["rate_limits"]["five_hour"]["utilization"], 42,
        "{usage}"
    );
    assert_eq!(
        usage["rate_limits"]["seven_day"]["utilization"], 10,
        "{usage}"
    );
    assert!(
        usage["rate_limits"]["five_hour"]["resets_at"].is_string(),
        "{usage}"
    );
    // One model call per run: the windows cost nothing more.
    assert_eq!(mock.message_requests().len(), 2);
}
