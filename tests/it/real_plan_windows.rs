//! Plan windows read by ccgate's schedule through the REAL `claude` binary's `get_usage`
//! control request against the loopback mock: no model call, a login with the profile
//! scope says its windows are available (the CLI then asks the claude.ai usage endpoint,
//! `api.anthropic.com/api/oauth/usage`, which is unreachable offline, so a fresh process
//! reports no numbers), an environment token says they are not; the answers'
//! `rate_limit_event` supply the numbers, and a later read without numbers keeps them.
//! Skipped loudly without `CCGATE_REAL_CLAUDE` (fails under CI instead).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{chat_body, get_json, post};
use crate::mock_api::MockApi;
use crate::real_accounts::{
    inherited_credentials, real_accounts_server_with, subscription_account,
};
use crate::support_real::real_claude;
use ccgate::config::AccountConfig;

/// A logged-in config directory whose token has the `user:profile` scope.
fn login_account(name: &str, url: String, home: &std::path::Path) -> AccountConfig {
    let dir = home.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let far = (ccgate::clock::unix_now() + 86_400 * 30) * 1000;
    std::fs::write(
        dir.join(".credentials.json"),
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
    AccountConfig {
        name: name.into(),
        env: [
            ("ANTHROPIC_BASE_URL".to_string(), url),
            ("CLAUDE_CONFIG_DIR".to_string(), dir.display().to_string()),
        ]
        .into(),
        models: None,
        weight: 1,
        extra_usage: ccgate::config::ExtraUsage::Allow,
    }
}

fn account_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name} in {v}"))
}

/// `/admin/accounts` once both accounts' `get_usage` read is newer than `after`.
async fn read_after(s: &crate::harness::TestServer, after: &str) -> Value {
    for _ in 0..1200 {
        let v = get_json(s, "/admin/accounts").await;
        let newer = |n: &str| {
            account_of(&v, n)["get_usage"]["read_at"]
                .as_str()
                .is_some_and(|t| t > after)
        };
        if newer("login") && newer("token") {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no get_usage read after {after}");
}

#[tokio::test]
async fn real_cli_get_usage_on_a_schedule_makes_no_model_call() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let url = mock.url("unified:0.42,0.1,allowed");
    let accounts = vec![
        login_account("login", url.clone(), home.path()),
        subscription_account("token", url, home.path()),
    ];
    let s = real_accounts_server_with(exe, accounts, 0.0, home.path(), 1.0).await;
    let v = read_after(&s, "").await;
    let login = account_of(&v, "login");
    assert_eq!(login["get_usage"]["rate_limits_available"], true, "{v}");
    assert_eq!(login["get_usage"]["subscription_type"], "max", "{v}");
    assert!(login["get_usage"]["error"].is_null(), "{v}");
    // Offline the usage endpoint is unreachable: no numbers from a fresh process.
    assert!(login["windows"].is_null(), "{v}");
    let token = account_of(&v, "token");
    assert_eq!(token["get_usage"]["rate_limits_available"], false, "{v}");
    assert!(token["windows"].is_null(), "{v}");
    assert_eq!(
        mock.message_requests().len(),
        0,
        "get_usage made a model call"
    );
    // An answer's rate_limit_event brings the numbers (the first pick: `login`).
    let (status, _, body) = post(&s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(status, 200, "{body}");
    let answered = get_json(&s, "/admin/accounts").await;
    let login = account_of(&answered, "login");
    assert_eq!(
        login["windows"]["five_hour"]["utilization"], 42.0,
        "{answered}"
    );
    assert_eq!(login["windows"]["source"], "answer", "{answered}");
    let calls = mock.message_requests().len();
    // A later read that reports no numbers keeps them, and costs no model call.
    let at = login["get_usage"]["read_at"].as_str().unwrap().to_string();
    let v = read_after(&s, &at).await;
    assert_eq!(
        account_of(&v, "login")["windows"]["five_hour"]["utilization"],
        42.0,
        "{v}"
    );
    assert_eq!(
        mock.message_requests().len(),
        calls,
        "get_usage made a model call"
    );
    let m = crate::harness::get_text(&s, "/metrics").await;
    assert!(
        m.contains(
            "ccgate_account_window_utilization{account=\"login\",window=\"five_hour\"} 0.42"
        ),
        "{m}"
    );
    s.shutdown().await;
}
