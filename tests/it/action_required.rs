//! The built-in kind `account_action_required` end to end with the fake CLI (its
//! `consumer_terms` scenario is 2.1.336's startup refusal): the account leaves selection
//! at the request's verdict, not only after the probe agrees; the client's 503 says a
//! person must act and carries the CLI's remedy URL; the operator gets a log line and
//! `ccgate_account_action_required_total`; a successful probe brings the account back.
//! The real CLI's captures are classified in `real_typed.rs` and `rules/tests/typed.yaml`.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    chat_body, default_rules_with_probe, eventually, get_json, get_text, post, post_empty_json,
    Opts, TestServer,
};
use ccgate::config::AccountConfig;

const REMEDY_URL: &str = "https://claude.ai/settings/data-privacy-controls";

/// Runs of the fake CLI so far that were requests: their user lines on stdin, not the
/// probe's ("Reply with the single word OK.", which the verdict's suspicion may wake at
/// any time under load).
fn request_runs(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.starts_with("STDIN:")
                && l.contains(r#""type":"user""#)
                && !l.contains("single word OK")
        })
        .count()
}

fn metric_line(metrics: &str, account: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("ccgate_account_action_required_total{")
                && l.contains(&format!("account=\"{account}\""))
        })
        .map(str::to_string)
}

#[tokio::test]
async fn the_implicit_account_closes_the_gate_with_the_remedy_until_a_probe_succeeds() {
    let s = TestServer::start(Opts::default()).await;
    s.set_scenario("consumer_terms");
    let (st, headers, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "account_action_required", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("A person must act on the gateway's Claude account"),
        "{message}"
    );
    assert!(message.contains(REMEDY_URL), "the CLI's remedy: {message}");
    // Out at once (probes are off here: nothing else could have closed it).
    let status = get_json(&s, "/v1/auth/status").await;
    assert_eq!(status["cli_health"]["ok"], false, "{status}");
    assert_eq!(
        status["cli_health"]["error_kind"], "account_action_required",
        "{status}"
    );
    // The next request is answered by the gate, without a CLI run, in the Anthropic shape.
    let runs = request_runs(&s);
    let (st, _, body) = post(
        &s,
        "/v1/messages",
        &crate::harness::messages_body("Hi", false),
    )
    .await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains(REMEDY_URL), "{body}");
    assert_eq!(request_runs(&s), runs, "the gate answered; no CLI ran");
    let metrics = get_text(&s, "/metrics").await;
    let line = metric_line(&metrics, "default").expect("the metric");
    assert!(
        line.contains("reason=\"consumer_terms_accept_on_web\"") && line.ends_with(" 1"),
        "{line}"
    );
    // The person accepted the terms: the next probe's success reopens it.
    s.set_scenario("success");
    let probe = post_empty_json(&s, "/admin/probe").await;
    assert_eq!(probe["cli_health"]["ok"], true, "{probe}");
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn with_several_accounts_the_request_fails_over_and_only_that_account_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let a_scenario = dir.path().join("a-scenario");
    std::fs::write(&a_scenario, "success").unwrap();
    let account = |name: &str, extra: Vec<(String, String)>| AccountConfig {
        name: name.into(),
        env: [
            ("FAKE_CLAUDE_TEXT".to_string(), format!("from {name}")),
            ("FAKE_CLAUDE_SCENARIO".to_string(), "success".to_string()),
        ]
        .into_iter()
        .chain(extra)
        .collect(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    };
    let accounts = vec![
        account(
            "a",
            vec![(
                "FAKE_CLAUDE_SCENARIO_FILE".into(),
                a_scenario.display().to_string(),
            )],
        ),
        account("b", vec![]),
    ];
    // Periodic probes far apart: only the start-up probe, and those a suspicion wakes.
    let s = TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(600.0, 600.0, 5.0)),
        tweak: Box::new(move |c| c.accounts = accounts),
        ..Opts::default()
    })
    .await;
    let members = s.state.accounts.clone();
    assert!(
        eventually(Duration::from_secs(10), || members
            .members()
            .iter()
            .all(|m| m.health().snapshot().last_ok_at.is_some()))
        .await,
        "both start healthy"
    );
    std::fs::write(&a_scenario, "consumer_terms").unwrap();
    // `a` is first in turn: its refusal comes before the first byte, so `b` answers.
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("from b"), "{body}");
    let status = get_json(&s, "/v1/auth/status").await;
    let a = &status["accounts"][0];
    assert_eq!(a["ok"], false, "{status}");
    assert_eq!(a["error_kind"], "account_action_required", "{status}");
    assert!(
        a["error_message"]
            .as_str()
            .unwrap_or("")
            .contains(REMEDY_URL),
        "{status}"
    );
    assert_eq!(status["cli_health"]["ok"], true, "b still serves: {status}");
    for _ in 0..3 {
        let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("from b"), "a left selection: {body}");
    }
    let metrics = get_text(&s, "/metrics").await;
    let line = metric_line(&metrics, "a").expect("the metric for a");
    assert!(
        line.contains("reason=\"consumer_terms_accept_on_web\"") && line.ends_with(" 1"),
        "counted once, when it left: {line}"
    );
    assert!(metric_line(&metrics, "b").is_none(), "{metrics}");
    // Fixed by a person: the probe's success brings `a` back.
    std::fs::write(&a_scenario, "success").unwrap();
    let members = s.state.accounts.clone();
    members.probe_all(ccgate::health::Source::Probe).await;
    assert!(members.members()[0].health().is_ok());
}

/// Matched by a text only (2.1.332's revoked token), the verdict answers the request but is
/// a suspicion: the account stays in until the probe (the operator's prompt) finds it too,
/// which then takes it out with the operator's log line and metric.
#[tokio::test]
async fn a_text_match_is_a_suspicion_until_the_probe_agrees() {
    let s = TestServer::start(Opts::default()).await;
    s.set_scenario("token_revoked");
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("Hi", false)).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "account_action_required", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("OAuth token revoked")),
        "{v}"
    );
    let status = get_json(&s, "/v1/auth/status").await;
    assert_eq!(
        status["cli_health"]["ok"], true,
        "a suspicion only: {status}"
    );
    assert_eq!(
        status["cli_health"]["suspected"]["kind"], "account_action_required",
        "{status}"
    );
    let metrics = get_text(&s, "/metrics").await;
    assert!(metric_line(&metrics, "default").is_none(), "{metrics}");
    // The probe (probes are off here: run by hand) agrees: out, counted with reason `text`.
    let probe = post_empty_json(&s, "/admin/probe").await;
    assert_eq!(probe["cli_health"]["ok"], false, "{probe}");
    assert_eq!(
        probe["cli_health"]["error_kind"], "account_action_required",
        "{probe}"
    );
    let metrics = get_text(&s, "/metrics").await;
    let line = metric_line(&metrics, "default").expect("the metric");
    assert!(
        line.contains("reason=\"text\"") && line.ends_with(" 1"),
        "{line}"
    );
}
