//! Several accounts with the fake CLI: each account's own environment (its scenario and
//! answer text), per-account health and status, cooldowns ending with a probe at the
//! reset, failover before the first byte (never after), stickiness, the all-out 401 and
//! 429, and no secret in any operator answer.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    chat_body, client, default_rules_with_probe, eventually, get_json, post, sse_events, Opts,
    TestServer,
};
use ccgate::config::{AccountConfig, Config, Overrides};

const SECRET: &str = "sk-ant-api03-SECRETvalue0123456789";

fn account(name: &str, env: &[(&str, String)]) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    }
}

/// Account `name` whose fake CLI plays `scenario` and answers `from <name>`.
fn fake_account(name: &str, scenario: &str, extra: &[(&str, String)]) -> AccountConfig {
    let mut env = vec![
        ("FAKE_CLAUDE_SCENARIO", scenario.to_string()),
        ("FAKE_CLAUDE_TEXT", format!("from {name}")),
    ];
    env.extend(extra.iter().cloned());
    account(name, &env)
}

async fn server(accounts: Vec<AccountConfig>, probe_interval: f64) -> TestServer {
    TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(probe_interval, 1.0, 5.0)),
        tweak: Box::new(move |c| c.accounts = accounts),
        ..Opts::default()
    })
    .await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Request runs so far (the fake CLI logs each stdin line; probes ask "Reply with OK.").
fn runs(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("STDIN:") && !l.contains("Reply with OK."))
        .count()
}

async fn status(s: &TestServer) -> Value {
    get_json(s, "/v1/auth/status").await
}

async fn text_of(s: &TestServer, body: &Value) -> (u16, String) {
    let (st, _, b) = post(s, "/v1/chat/completions", body).await;
    (st, b)
}

#[tokio::test]
async fn a_logged_out_account_is_skipped_and_the_status_names_each_account() {
    let a = fake_account(
        "a",
        "not_logged_in",
        &[("ANTHROPIC_API_KEY", SECRET.to_string())],
    );
    let b = fake_account("b", "success", &[]);
    let s = server(vec![a, b], 600.0).await;
    let accounts = s.state.accounts.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            !accounts.members()[0].health().is_ok()
                && accounts.members()[1]
                    .health()
                    .snapshot()
                    .last_ok_at
                    .is_some()
        })
        .await
    );
    for _ in 0..3 {
        let (st, body) = text_of(&s, &chat_body("Hi", false)).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("from b"), "{body}");
    }
    let v = status(&s).await;
    assert_eq!(v["cli_health"]["ok"], true, "{v}");
    assert_eq!(v["accounts"][0]["name"], "a");
    assert_eq!(v["accounts"][0]["ok"], false);
    assert_eq!(v["accounts"][0]["error_kind"], "auth_failure");
    assert_eq!(
        v["accounts"][0]["error_message"],
        "Not logged in · Please run /login"
    );
    assert!(v["accounts"][0]["last_probed_at"].is_string());
    assert_eq!(v["accounts"][1]["name"], "b");
    assert_eq!(v["accounts"][1]["ok"], true);
    assert!(v["accounts"][1]["last_ok_at"].is_string());
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // No secret in any operator answer, log line or metric label.
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ccgate_account_health_ok{account=\"a\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ccgate_account_health_ok{account=\"b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ccgate_account_requests_total{account=\"b\",endpoint=\"chat_completions\",status=\"200\",kind=\"ok\"} 3"),
        "{metrics}"
    );
    for path in ["/v1/auth/status", "/admin/rules", "/metrics", "/ready"] {
        let body = client()
            .get(s.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains("SECRETvalue"), "{path}: {body}");
    }
    let probed = client()
        .post(s.url("/admin/probe"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!probed.contains("SECRETvalue"), "{probed}");
    assert!(!format!("{:?}", s.state.settings).contains("SECRETvalue"));
    assert!(!format!("{:?}", s.state.accounts).contains("SECRETvalue"));
}

#[tokio::test]
async fn the_gate_answers_401_only_when_no_account_can_serve() {
    let s = server(
        vec![
            fake_account("a", "not_logged_in", &[]),
            fake_account("b", "not_logged_in", &[]),
        ],
        600.0,
    )
    .await;
    let health = s.state.health.clone();
    assert!(eventually(Duration::from_secs(10), || !health.is_ok()).await);
    let before = runs(&s);
    let (st, body) = text_of(&s, &chat_body("Hi", false)).await;
    assert_eq!(st, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "claude_cli_not_authenticated");
    assert_eq!(runs(&s), before, "the gate spawned a CLI");
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v = status(&s).await;
    assert_eq!(v["cli_health"]["ok"], false);
    assert_eq!(v["cli_health"]["error_kind"], "auth_failure");
    assert_eq!(v["accounts"][0]["ok"], false);
    assert_eq!(v["accounts"][1]["ok"], false);
}

#[tokio::test]
async fn a_usage_limit_fails_over_before_the_first_byte_and_cools_down_until_a_probe_at_the_reset()
{
    let reset = unix_now() + 3;
    let a = fake_account(
        "a",
        "usage_limit",
        &[("FAKE_CLAUDE_USAGE_RESET_AT", reset.to_string())],
    );
    let b = fake_account("b", "success", &[]);
    // Periodic probe off: only the cooldown's end probes.
    let s = server(vec![a, b], 0.0).await;
    // The first request goes to `a` (first in order), fails before any byte, and is
    // answered by `b`, streaming.
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", true)).await;
    assert_eq!(st, 200, "{body}");
    let text: String = sse_events(&body)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "from b", "{body}");
    assert_eq!(runs(&s), 2, "one run on a, one retry on b");
    let v = status(&s).await;
    let a_status = &v["accounts"][0];
    assert_eq!(a_status["ok"], false, "{v}");
    assert_eq!(a_status["healthy"], true, "{v}");
    assert_eq!(a_status["cooldown"]["kind"], "usage_limit");
    assert!(a_status["cooldown_until"].is_string(), "{v}");
    assert_eq!(v["cli_health"]["ok"], true);
    // While `a` cools down, `b` serves without trying `a`.
    let (st, body) = text_of(&s, &chat_body("Hi", false)).await;
    assert_eq!((st, body.contains("from b")), (200, true), "{body}");
    assert_eq!(runs(&s), 3);
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ccgate_account_failovers_total{account=\"a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ccgate_account_cooldowns_total{account=\"a\"} 1"),
        "{metrics}"
    );
    // Right after the reset the probe runs and takes `a` back.
    let a_health = s.state.accounts.members()[0].health().clone();
    assert!(
        eventually(Duration::from_secs(8), || a_health.cooldown().is_none()).await,
        "no probe at the reset"
    );
    assert!(unix_now() >= reset);
    let v = status(&s).await;
    assert_eq!(v["accounts"][0]["ok"], true, "{v}");
    assert_eq!(v["accounts"][0]["last_probe"]["outcome"], "ok", "{v}");
    let (st, body) = text_of(&s, &chat_body("Hi", false)).await;
    assert_eq!((st, body.contains("from a")), (200, true), "{body}");
}

#[tokio::test]
async fn every_account_cooling_down_answers_429_counting_down_to_the_earliest_reset() {
    let now = unix_now();
    let a = fake_account(
        "a",
        "usage_limit",
        &[("FAKE_CLAUDE_USAGE_RESET_AT", (now + 30).to_string())],
    );
    let b = fake_account(
        "b",
        "usage_limit",
        &[("FAKE_CLAUDE_USAGE_RESET_AT", (now + 20).to_string())],
    );
    let s = server(vec![a, b], 0.0).await;
    // a fails, b is tried once and fails too: the answer is b's usage limit.
    let (st, headers, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(runs(&s), 2, "exactly one retry");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((15..=20).contains(&retry), "retry-after {retry}");
    // Now both are out: answered at once, counting down to the earliest reset (b's).
    let (st, headers, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(runs(&s), 2, "no CLI run while every account cools down");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((15..=20).contains(&retry), "retry-after {retry}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["reason"], "usage_limit");
}

#[tokio::test]
async fn an_account_failure_after_the_first_byte_is_never_retried() {
    let s = server(
        vec![
            fake_account("a", "text_then_auth_failure", &[]),
            fake_account("b", "success", &[]),
        ],
        0.0,
    )
    .await;
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", true)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("Hello"), "{body}");
    assert!(
        !body.contains("from b"),
        "retried after the first byte: {body}"
    );
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(runs(&s), 1, "retried after the first byte");
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ccgate_account_failovers_total{account=\"a\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_conversation_stays_on_its_account() {
    let s = server(
        vec![
            fake_account("a", "success", &[]),
            fake_account("b", "success", &[]),
        ],
        0.0,
    )
    .await;
    let (_, first) = text_of(&s, &chat_body("Hi", false)).await;
    assert!(first.contains("from a"), "{first}");
    // The conversation continues: weighted LRU alone would pick b; it stays on a.
    let follow = json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "from a"},
        {"role": "user", "content": "and?"}]});
    for _ in 0..2 {
        let (st, body) = text_of(&s, &follow).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("from a"), "{body}");
    }
    // A new conversation goes to the account whose turn it is.
    let (_, other) = text_of(&s, &chat_body("Hello there", false)).await;
    assert!(other.contains("from b"), "{other}");
}

#[tokio::test]
async fn models_restrict_an_account_and_weights_share_the_load() {
    let mut a = fake_account("a", "success", &[]);
    a.models = Some(vec!["opus".into()]);
    a.weight = 1;
    let mut b = fake_account("b", "success", &[]);
    b.weight = 2;
    let s = server(vec![a, b], 0.0).await;
    let mut seen = Vec::new();
    for i in 0..6 {
        let body =
            json!({"model": "opus", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let (_, text) = text_of(&s, &body).await;
        seen.push(if text.contains("from a") { 'a' } else { 'b' });
    }
    let a_count = seen.iter().filter(|c| **c == 'a').count();
    assert_eq!(a_count, 2, "weights 1:2 over 6 new conversations: {seen:?}");
    for _ in 0..2 {
        let (_, body) = text_of(&s, &chat_body("Hi", false)).await;
        assert!(body.contains("from b"), "sonnet is b's only: {body}");
    }
}

#[test]
fn accounts_come_from_ccgate_accounts_as_json_and_are_checked() {
    let env = vec![(
        "CCGATE_ACCOUNTS".to_string(),
        r#"[{"name":"team-1","env":{"CLAUDE_CONFIG_DIR":"/var/lib/ccgate/team-1"},"weight":3},
            {"name":"key","env":{"ANTHROPIC_API_KEY":"sk-x"},"models":["Sonnet"]}]"#
            .to_string(),
    )];
    let loaded = Config::load(None, &Overrides::default(), &env).expect("loads");
    let settings = loaded.config.compile().expect("valid");
    assert_eq!(settings.accounts.len(), 2);
    assert_eq!(settings.accounts[0].name, "team-1");
    assert_eq!(settings.accounts[0].weight, 3);
    assert_eq!(
        settings.accounts[0].env,
        vec![("CLAUDE_CONFIG_DIR".into(), "/var/lib/ccgate/team-1".into())]
    );
    assert_eq!(
        settings.accounts[1].models,
        Some(vec!["sonnet".to_string()])
    );
    assert!(!format!("{settings:?}").contains("sk-x"));

    let bad = vec![(
        "CCGATE_ACCOUNTS".to_string(),
        r#"[{"name":"a b","env":{"K":"sk-secret"}},{"name":"x","weight":0},{"name":"x"}]"#
            .to_string(),
    )];
    let err = Config::load(None, &Overrides::default(), &bad)
        .expect("the shape loads")
        .config
        .compile()
        .unwrap_err()
        .to_string();
    assert!(err.contains("accounts[0].name \"a b\""), "{err}");
    assert!(err.contains("weight must be 1-1000"), "{err}");
    assert!(err.contains("\"x\" is used twice"), "{err}");
    assert!(!err.contains("sk-secret"), "{err}");
    let not_json = vec![("CCGATE_ACCOUNTS".to_string(), "a,b".to_string())];
    assert!(Config::load(None, &Overrides::default(), &not_json).is_err());
}
