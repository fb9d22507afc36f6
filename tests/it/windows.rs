//! Plan windows with the fake CLI: the scheduled `get_usage` read (no model call) in
//! `GET /admin/accounts` and the `ccgate_account_window_*` gauges, headroom-first
//! selection, a key's `window_share`, and the extra-usage guard.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{chat_body, eventually, get_json, get_text, post, Opts, TestServer};
use ccgate::config::{AccountConfig, ExtraUsage};

fn account(name: &str, env: &[(&str, &str)], extra_usage: ExtraUsage) -> AccountConfig {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("FAKE_CLAUDE_TEXT".into(), format!("from {name}")));
    AccountConfig {
        name: name.into(),
        env: env.into_iter().collect(),
        models: None,
        weight: 1,
        extra_usage,
    }
}

async fn server(
    accounts: Vec<AccountConfig>,
    refresh: f64,
    keys_yaml: Option<String>,
) -> TestServer {
    TestServer::start(Opts {
        keys_yaml,
        tweak: Box::new(move |c| {
            c.accounts = accounts;
            c.cli.windows_refresh = refresh;
        }),
        ..Opts::default()
    })
    .await
}

fn log(s: &TestServer) -> String {
    std::fs::read_to_string(&s.log_file).unwrap_or_default()
}

/// User turns the fake CLI ran (model calls of the real one).
fn turns(s: &TestServer) -> usize {
    log(s)
        .lines()
        .filter(|l| l.starts_with("STDIN:") && l.contains("\"type\":\"user\""))
        .count()
}

fn account_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name} in {v}"))
}

#[tokio::test]
async fn get_usage_on_a_schedule_fills_the_windows_without_a_model_call_and_selection_prefers_headroom(
) {
    let s = server(
        vec![
            account(
                "busy",
                &[("FAKE_CLAUDE_USAGE", "80,20")],
                ExtraUsage::Refuse,
            ),
            account(
                "roomy",
                &[("FAKE_CLAUDE_USAGE", "30,10")],
                ExtraUsage::Refuse,
            ),
            account("token", &[], ExtraUsage::Refuse),
        ],
        1.0,
        None,
    )
    .await;
    // Every account read at least once (each read logs GET_USAGE).
    assert!(
        eventually(Duration::from_secs(60), || log(&s)
            .matches("GET_USAGE")
            .count()
            >= 3)
        .await,
        "{}",
        log(&s)
    );
    let mut v = Value::Null;
    for _ in 0..600 {
        v = get_json(&s, "/admin/accounts").await;
        if account_of(&v, "roomy")["windows"].is_object()
            && account_of(&v, "busy")["windows"].is_object()
            && account_of(&v, "token")["get_usage"].is_object()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = account_of(&v, "busy");
    assert_eq!(busy["windows"]["five_hour"]["utilization"], 80.0, "{v}");
    assert_eq!(busy["windows"]["seven_day"]["utilization"], 20.0, "{v}");
    assert_eq!(busy["windows"]["source"], "get_usage", "{v}");
    assert_eq!(busy["get_usage"]["rate_limits_available"], true, "{v}");
    assert_eq!(busy["get_usage"]["subscription_type"], "max", "{v}");
    assert_eq!(busy["headroom"], 0.2, "{v}");
    assert_eq!(account_of(&v, "roomy")["headroom"], 0.7, "{v}");
    assert_eq!(busy["extra_usage"], "refuse", "{v}");
    // An environment token: no windows through get_usage (the answers' events only).
    let token = account_of(&v, "token");
    assert_eq!(token["get_usage"]["rate_limits_available"], false, "{v}");
    assert!(token["windows"].is_null(), "{v}");
    // No model call was made for any of it.
    assert_eq!(turns(&s), 0, "{}", log(&s));
    // The gauges.
    let m = get_text(&s, "/metrics").await;
    assert!(
        m.contains("ccgate_account_window_utilization{account=\"busy\",window=\"five_hour\"} 0.8"),
        "{m}"
    );
    assert!(
        m.contains("ccgate_account_window_utilization{account=\"roomy\",window=\"seven_day\"} 0.1"),
        "{m}"
    );
    let reset_line = m
        .lines()
        .find(|l| {
            l.starts_with(
                "ccgate_account_window_resets_at_seconds{account=\"roomy\",window=\"five_hour\"}",
            )
        })
        .unwrap_or_else(|| panic!("{m}"));
    let reset: f64 = reset_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(reset > ccgate::clock::unix_now() as f64, "{reset_line}");
    // Headroom first: new conversations go to `roomy` (70 % left) and `token` (unknown
    // counts as equal), never to `busy` (20 % left).
    for i in 0..4 {
        let (st, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_body(&format!("new conversation {i}"), false),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(!body.contains("from busy"), "{body}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn admin_accounts_needs_an_admin_key() {
    let admin = "ccg-admin-key-for-accounts";
    let client = "ccg-client-key-for-accounts";
    let keys = format!(
        "keys:\n  - name: ops\n    sha256: {}\n    role: admin\n  - name: app\n    sha256: {}\n",
        ccgate::rules::sha256_hex(admin.as_bytes()),
        ccgate::rules::sha256_hex(client.as_bytes()),
    );
    let s = server(vec![], 0.0, Some(keys)).await;
    let get = |key: &'static str| {
        let url = s.url("/admin/accounts");
        async move {
            crate::harness::client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get(client).await.status(), 403);
    let r = get(admin).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["configured"], false, "{v}");
    assert!(v["windows_refresh_seconds"].is_null(), "{v}");
    assert_eq!(v["accounts"][0]["name"], "default", "{v}");
    assert!(v["accounts"][0]["get_usage"].is_null(), "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_refusing_account_billed_as_extra_usage_cools_down_until_its_window_resets() {
    let s = server(
        vec![
            account(
                "seat",
                &[("FAKE_CLAUDE_WINDOWS", "1.0,0.5,in_use")],
                ExtraUsage::Refuse,
            ),
            account(
                "paid",
                &[("FAKE_CLAUDE_WINDOWS", "1.0,0.5,in_use")],
                ExtraUsage::Allow,
            ),
        ],
        0.0,
        None,
    )
    .await;
    // Two answers: one per account (weighted LRU), each billed as extra usage.
    for i in 0..2 {
        let (st, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_body(&format!("q{i}"), false),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    let v = get_json(&s, "/v1/auth/status").await;
    let seat = account_of(&v, "seat");
    assert_eq!(seat["ok"], false, "{v}");
    assert_eq!(seat["cooldown"]["kind"], "usage_limit", "{v}");
    let why = seat["cooldown"]["message"].as_str().unwrap();
    assert!(why.contains("extra usage"), "{why}");
    let until = seat["cooldown"]["until"].as_str().unwrap().to_string();
    assert_eq!(
        Some(until.as_str()),
        seat["windows"]["five_hour"]["resets_at"].as_str(),
        "{v}"
    );
    // `allow` keeps spending.
    assert_eq!(account_of(&v, "paid")["ok"], true, "{v}");
    assert!(account_of(&v, "paid")["cooldown"].is_null(), "{v}");
    // Everything now runs on `paid`.
    for i in 0..3 {
        let (st, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_body(&format!("more {i}"), false),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("from paid"), "{body}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_only_account_billed_as_extra_usage_refuses_with_the_reason() {
    // No `accounts`: the implicit account follows the default, refuse.
    let s = TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_WINDOWS", "1.0,0.4,in_use".into())],
        ..Opts::default()
    })
    .await;
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(st, 200, "{body}");
    let (st, headers, body) = post(
        &s,
        "/v1/messages",
        &serde_json::json!({
            "model": "sonnet", "max_tokens": 10,
            "messages": [{"role": "user", "content": "again"}]
        }),
    )
    .await;
    assert_eq!(st, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra usage"),
        "{v}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "retry-after {retry}");
    // The refused request ran nothing.
    assert_eq!(turns(&s), 1, "{}", log(&s));
    let status = get_json(&s, "/v1/auth/status").await;
    assert!(
        status["accounts"][0]["cooldown"]["message"]
            .as_str()
            .unwrap()
            .contains("extra usage"),
        "{status}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_over_its_window_share_is_refused_until_the_window_resets() {
    let small = "ccg-window-share-small";
    let big = "ccg-window-share-big";
    let keys = format!(
        "keys:\n  - name: small\n    sha256: {}\n    limits:\n      window_share: 0.25\n  - name: big\n    sha256: {}\n    limits:\n      window_share: 0.9\n  - name: ops\n    role: admin\n    sha256: {}\n",
        ccgate::rules::sha256_hex(small.as_bytes()),
        ccgate::rules::sha256_hex(big.as_bytes()),
        ccgate::rules::sha256_hex(b"ccg-window-share-ops"),
    );
    // The account's 5-hour window is at 60 % after each answer.
    let s = server(
        vec![account(
            "seat",
            &[("FAKE_CLAUDE_WINDOWS", "0.6,0.1")],
            ExtraUsage::Refuse,
        )],
        0.0,
        Some(keys),
    )
    .await;
    let ask = |key: &'static str| {
        let url = s.url("/v1/chat/completions");
        async move {
            crate::harness::client()
                .post(url)
                .bearer_auth(key)
                .json(&chat_body("hi", false))
                .send()
                .await
                .unwrap()
        }
    };
    // Before any answer there is no window: admitted.
    assert_eq!(ask(small).await.status(), 200);
    // `small` used all the tokens seen in the window: 100 % × 60 % ≥ 25 %.
    let r = ask(small).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&retry), "retry-after {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "tokens", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("5-hour"),
        "{v}"
    );
    // `big` (90 %) is under its share.
    assert_eq!(ask(big).await.status(), 200);
    // Now `small` has half the window's tokens: 50 % × 60 % = 30 % ≥ 25 %: still out;
    // `big` has 30 % < 90 %: in.
    assert_eq!(ask(small).await.status(), 429);
    assert_eq!(ask(big).await.status(), 200);
    assert_eq!(turns(&s), 3, "{}", log(&s));
    // The operator sees each key's share against its limit (small: 1/3 of the tokens ×
    // 60 % = 20 %; big: 2/3 × 60 % = 40 %).
    let v = crate::harness::get_json_as(&s, "/admin/keys", "ccg-window-share-ops").await;
    let usage = |name: &str| {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))["usage"]
            .clone()
    };
    assert_eq!(usage("small")["window_share"], 0.2, "{v}");
    assert_eq!(
        usage("small")["window_share_by_account"]["seat"],
        0.2,
        "{v}"
    );
    assert_eq!(usage("big")["window_share"], 0.4, "{v}");
    assert_eq!(usage("ops")["window_share"], 0.0, "{v}");
    s.shutdown().await;
}
