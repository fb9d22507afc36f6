//! Several accounts driving the REAL `claude` binary against the loopback mock Messages
//! API: one account's key is rejected (401) while another answers; a subscription account
//! (`CLAUDE_CODE_OAUTH_TOKEN`) at its usage limit (the unified 429 with a reset a few
//! seconds ahead) fails over before the first byte, cools down and is probed back right
//! after the reset; with every account out, the 401 gate and the counting-down 429.
//! Skipped loudly without `CCGATE_REAL_CLAUDE` (fails under CI instead).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    chat_body, client, default_rules_with_probe, eventually, get_json, post, Opts, TestServer,
};
use crate::mock_api::MockApi;
use crate::support_real::real_claude;
use ccgate::config::AccountConfig;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An account with an API key against the mock scenario at `url`.
fn key_account(name: &str, url: String, home: &std::path::Path) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        env: [
            ("ANTHROPIC_BASE_URL".to_string(), url),
            ("ANTHROPIC_API_KEY".to_string(), format!("test-key-{name}")),
            (
                "CLAUDE_CONFIG_DIR".to_string(),
                home.join(name).display().to_string(),
            ),
        ]
        .into(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    }
}

/// A subscription account (OAuth token, no API key) against the mock scenario at `url`.
pub(crate) fn subscription_account(
    name: &str,
    url: String,
    home: &std::path::Path,
) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        env: [
            ("ANTHROPIC_BASE_URL".to_string(), url),
            (
                "CLAUDE_CODE_OAUTH_TOKEN".to_string(),
                "sk-ant-oat01-mock-subscription-token".to_string(),
            ),
            (
                "CLAUDE_CONFIG_DIR".to_string(),
                home.join(name).display().to_string(),
            ),
        ]
        .into(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    }
}

/// A gateway over the real CLI with `accounts`; no credentials outside them.
pub(crate) async fn real_accounts_server(
    exe: std::path::PathBuf,
    accounts: Vec<AccountConfig>,
    probe_interval: f64,
    home: &std::path::Path,
) -> TestServer {
    real_accounts_server_with(exe, accounts, probe_interval, home, 0.0).await
}

/// [`real_accounts_server`] with `cli.windows_refresh` set to `windows_refresh`.
pub(crate) async fn real_accounts_server_with(
    exe: std::path::PathBuf,
    accounts: Vec<AccountConfig>,
    probe_interval: f64,
    home: &std::path::Path,
    windows_refresh: f64,
) -> TestServer {
    let home = home.to_path_buf();
    TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(probe_interval, 2.0, 20.0)),
        tweak: Box::new(move |c| {
            c.cli.command = exe;
            c.cli.start_timeout = 10.0;
            c.cli.inactivity_timeout = 10.0;
            c.cli.total_timeout = 30.0;
            let env = &mut c.cli.env;
            env.insert("HOME".into(), home.display().to_string());
            env.insert("CLAUDE_CODE_MAX_RETRIES".into(), "0".into());
            env.insert("DISABLE_AUTOUPDATER".into(), "1".into());
            env.insert("API_TIMEOUT_MS".into(), "20000".into());
            c.accounts = accounts;
            c.cli.windows_refresh = windows_refresh;
        }),
        ..Opts::default()
    })
    .await
}

pub(crate) fn inherited_credentials() -> bool {
    let set = std::env::var_os("ANTHROPIC_API_KEY").is_some()
        || std::env::var_os("ANTHROPIC_AUTH_TOKEN").is_some()
        || std::env::var_os("CLAUDE_CODE_OAUTH_TOKEN").is_some();
    if set {
        eprintln!(
            "real_accounts: credentials set in the test environment; the CLI would inherit them"
        );
    }
    set
}

/// Requests to the mock whose path names `scenario`.
fn hits(mock: &MockApi, scenario: &str) -> usize {
    mock.message_requests()
        .iter()
        .filter(|r| r.path.contains(&format!("/s/{scenario}/")))
        .count()
}

#[tokio::test]
async fn real_cli_a_rejected_key_closes_only_its_account() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let accounts = vec![
        key_account("bad", mock.url("auth401"), home.path()),
        key_account("good", mock.url("ok:from%20good"), home.path()),
    ];
    let s = real_accounts_server(exe, accounts, 600.0, home.path()).await;
    let members = s.state.accounts.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            !members.members()[0].health().is_ok()
                && members.members()[1]
                    .health()
                    .snapshot()
                    .last_ok_at
                    .is_some()
        })
        .await,
        "{:?}",
        members.members()[0].health().snapshot()
    );
    for _ in 0..2 {
        let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("from good"), "{body}");
    }
    let v: Value = get_json(&s, "/v1/auth/status").await;
    assert_eq!(v["cli_health"]["ok"], true, "{v}");
    assert_eq!(v["accounts"][0]["name"], "bad");
    assert_eq!(v["accounts"][0]["ok"], false);
    assert_eq!(v["accounts"][0]["error_kind"], "auth_failure", "{v}");
    assert_eq!(v["accounts"][1]["ok"], true);
    assert!(!v.to_string().contains("test-key-"), "{v}");
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn real_cli_every_key_rejected_is_the_401_gate() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let accounts = vec![
        key_account("a", mock.url("auth401"), home.path()),
        key_account("b", mock.url("auth401"), home.path()),
    ];
    let s = real_accounts_server(exe, accounts, 600.0, home.path()).await;
    let health = s.state.health.clone();
    assert!(eventually(Duration::from_secs(30), || !health.is_ok()).await);
    let before = mock.message_requests().len();
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
    assert_eq!(st, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "claude_cli_not_authenticated");
    assert_eq!(mock.message_requests().len(), before, "the gate ran a CLI");
}

#[tokio::test]
async fn real_cli_usage_limit_fails_over_cools_down_and_is_probed_back_at_the_reset() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    // Far enough ahead that two cold CLI runs on a loaded 2-core runner finish before it.
    let reset = unix_now() + 20;
    let limited = format!("usage429:{reset}");
    let accounts = vec![
        subscription_account("seat", mock.url(&limited), home.path()),
        key_account("key", mock.url("ok:from%20key"), home.path()),
    ];
    // Periodic probe off: only the cooldown's end probes.
    let s = real_accounts_server(exe, accounts, 0.0, home.path()).await;
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("from key"), "{body}");
    assert!(hits(&mock, &limited) >= 1, "the seat was tried first");
    let v: Value = get_json(&s, "/v1/auth/status").await;
    let seat = &v["accounts"][0];
    assert_eq!(seat["ok"], false, "{v}");
    assert_eq!(seat["cooldown"]["kind"], "usage_limit", "{v}");
    // The reset the CLI reported (its rate_limit_event), not the kind's 3600 s.
    let until = s.state.accounts.members()[0]
        .health()
        .cooldown()
        .expect("cooling down")
        .until_unix;
    assert_eq!(until, reset, "{v}");
    // While it cools down, nothing reaches its upstream.
    let tried = hits(&mock, &limited);
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
    assert_eq!((st, body.contains("from key")), (200, true), "{body}");
    assert_eq!(hits(&mock, &limited), tried);
    // Right after the reset the probe runs on the seat and takes it back.
    let seat_health = s.state.accounts.members()[0].health().clone();
    assert!(
        eventually(Duration::from_secs(45), || seat_health.cooldown().is_none()).await,
        "no probe after the reset"
    );
    assert!(
        hits(&mock, &limited) > tried,
        "the probe reached the seat's upstream"
    );
    let v: Value = get_json(&s, "/v1/auth/status").await;
    assert_eq!(v["accounts"][0]["ok"], true, "{v}");
    assert_eq!(v["accounts"][0]["last_probe"]["outcome"], "ok", "{v}");
}

#[tokio::test]
async fn real_cli_every_account_at_its_limit_is_a_429_counting_down_to_the_earliest_reset() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let now = unix_now();
    let (a, b) = (
        format!("usage429:{}", now + 40),
        format!("usage429:{}", now + 30),
    );
    let accounts = vec![
        subscription_account("a", mock.url(&a), home.path()),
        subscription_account("b", mock.url(&b), home.path()),
    ];
    let s = real_accounts_server(exe, accounts, 0.0, home.path()).await;
    let (st, headers, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(
        (hits(&mock, &a) >= 1, hits(&mock, &b) >= 1),
        (true, true),
        "one retry on b"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // The earliest reset (b's) counted from now: a loaded runner may take seconds per run.
    let left = (now + 30).saturating_sub(unix_now());
    assert!(
        retry <= 30 && retry + 2 >= left && retry <= left + 2,
        "retry-after {retry}, {left} s left to b's reset"
    );
    let calls = mock.message_requests().len();
    let (st, headers, body) = post(&s, "/v1/chat/completions", &chat_body("Hello", false)).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(
        mock.message_requests().len(),
        calls,
        "no CLI run while all are out"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // The earliest reset (b's) counted from now: a loaded runner may take seconds per run.
    let left = (now + 30).saturating_sub(unix_now());
    assert!(
        retry <= 30 && retry + 2 >= left && retry <= left + 2,
        "retry-after {retry}, {left} s left to b's reset"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
}

#[tokio::test]
async fn real_cli_answers_report_the_plans_windows_in_the_status() {
    let Some(exe) = real_claude() else { return };
    if inherited_credentials() {
        return;
    }
    let mock = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    // The unified rate-limit headers of a subscription at 42 % of its 5-hour window and
    // 10 % of its 7-day window, billed as extra usage.
    let url = mock.url("unified:0.42,0.1,allowed,in_use");
    let s = real_accounts_server(
        exe,
        vec![subscription_account("seat", url, home.path())],
        0.0,
        home.path(),
    )
    .await;
    let (status, _, body) = post(&s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(status, 200, "{body}");
    let v = get_json(&s, "/v1/auth/status").await;
    let w = &v["accounts"][0]["windows"];
    assert_eq!(w["five_hour"]["utilization"], 42.0, "{v}");
    assert_eq!(w["seven_day"]["utilization"], 10.0, "{v}");
    assert!(
        w["five_hour"]["resets_at_unix"].as_u64().unwrap() > unix_now(),
        "{w}"
    );
    assert_eq!(w["extra_usage_in_use"], true, "{w}");
    // The extra-usage guard (`extra_usage: refuse`, the default): the account cools down
    // until its 5-hour window resets, and the next request is refused with the reason
    // without reaching the API.
    let seat = &v["accounts"][0];
    assert_eq!(
        seat["cooldown"]["until"], w["five_hour"]["resets_at"],
        "{v}"
    );
    let calls = mock.message_requests().len();
    let (status, headers, body) =
        post(&s, "/v1/chat/completions", &chat_body("again", false)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("extra usage"), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(
        mock.message_requests().len(),
        calls,
        "no model call while refused"
    );
    s.shutdown().await;
}
