//! Parked processes and accounts (fake CLI): a held continuation runs and is charged on the
//! account its process runs on, whatever the selection would pick now; one account's
//! unhealthy suspicion ends only that account's kept processes; with `accounts`, no
//! phantom `default` account.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, default_rules_with_probe, eventually, Opts, TestServer};
use ccgate::config::AccountConfig;

fn account(name: &str, env: &[(&str, String)]) -> AccountConfig {
    let mut all = vec![
        ("FAKE_CLAUDE_SCENARIO".to_string(), "success".to_string()),
        ("FAKE_CLAUDE_TEXT".to_string(), format!("from {name}")),
        (
            "FAKE_CLAUDE_TOOL_INPUT".to_string(),
            r#"{"city":"Paris"}"#.to_string(),
        ),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    AccountConfig {
        name: name.into(),
        env: all.into_iter().collect(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    }
}

async fn server(accounts: Vec<AccountConfig>) -> TestServer {
    TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(0.0, 1.0, 5.0)),
        tweak: Box::new(move |c| c.accounts = accounts),
        ..Opts::default()
    })
    .await
}

async fn post(s: &TestServer, body: &Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn metrics(s: &TestServer) -> String {
    crate::harness::get_text(s, "/metrics").await
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn with_accounts_there_is_no_phantom_default_account() {
    let s = server(vec![account("a", &[]), account("b", &[])]).await;
    let (status, v) = post(
        &s,
        &json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let m = metrics(&s).await;
    assert!(m.contains("account=\"a\""), "{m}");
    assert!(!m.contains("account=\"default\""), "{m}");
}

#[tokio::test]
async fn a_held_continuation_runs_and_is_charged_on_its_own_account() {
    let reset = (unix_now() + 3600).to_string();
    let limit = [("FAKE_CLAUDE_USAGE_RESET_AT", reset)];
    let s = server(vec![account("a", &limit), account("b", &limit)]).await;
    let user = json!({"role": "user", "content": "[[scenario:tool_call]] weather?"});
    let (status, v) = post(
        &s,
        &json!({"model": "sonnet", "tools": tools(), "messages": [user]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(s.state.backend.held_pids().len(), 1, "held on a");
    // Another conversation hits both accounts' usage limits: both cool down.
    let (status, v) = post(
        &s,
        &json!({"model": "sonnet", "messages": [{"role": "user", "content": "[[scenario:usage_limit]] hi"}]}),
    )
    .await;
    assert_ne!(status, 200, "{v}");
    let a = s.state.accounts.members()[0].health().clone();
    let b = s.state.accounts.members()[1].health().clone();
    assert!(
        eventually(Duration::from_secs(5), || a.cooldown().is_some()
            && b.cooldown().is_some())
        .await
    );
    let before = metrics(&s).await;
    // The results come back: the held process on `a` answers them (no selection, no
    // spawn), and the run counts for `a`.
    let (status, v) = post(
        &s,
        &json!({"model": "sonnet", "tools": tools(), "messages": [user,
            {"role": "assistant", "content": null, "tool_calls": [call.clone()]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tool said: sunny");
    let after = metrics(&s).await;
    let line = |m: &str, account: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("ccgate_account_cli_runs_total")
                    && l.contains(&format!("account=\"{account}\""))
                    && l.contains("outcome=\"success\"")
            })
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_ne!(line(&before, "a"), line(&after, "a"), "{after}");
    assert_eq!(line(&before, "b"), line(&after, "b"), "{after}");
}

#[tokio::test]
async fn one_accounts_unhealthy_suspicion_ends_only_its_own_kept_processes() {
    let s = server(vec![account("a", &[]), account("b", &[])]).await;
    // One conversation on each account, each kept for its next turn.
    for text in ["first on a", "then on b"] {
        let (status, v) = post(
            &s,
            &json!({"model": "sonnet", "messages": [{"role": "user", "content": text}]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    assert!(
        eventually(Duration::from_secs(5), || s.state.backend.kept_pids().len()
            == 2)
        .await,
        "both kept: {:?}",
        s.state.backend.kept_pids()
    );
    let kept = s.state.backend.kept_pids();
    // `b` is suspected (a request's unhealthy verdict on b).
    s.state.accounts.members()[1]
        .prober()
        .suspect_unhealthy("not_logged_in");
    assert!(
        eventually(Duration::from_secs(5), || s.state.backend.kept_pids()
            == kept[..1])
        .await,
        "only b's kept process ended: before {kept:?}, now {:?}",
        s.state.backend.kept_pids()
    );
}
