//! The turn engine's decisions, end to end with the fake CLI: what a stream that fails
//! after its 200 is counted as, where system instructions go, and the gate after a
//! reload that changed which kinds are unhealthy.

use serde_json::json;

use crate::harness::{default_rules_with_probe, post, post_empty_json, Opts, TestServer};

fn fake_log(s: &TestServer) -> String {
    std::fs::read_to_string(&s.log_file).unwrap_or_default()
}

#[tokio::test]
async fn a_stream_failing_after_its_200_is_counted_as_the_200_the_client_got() {
    let s = TestServer::start(Opts {
        scenario: "interrupted",
        ..Opts::default()
    })
    .await;
    let (st, _, body) = post(
        &s,
        "/v1/chat/completions",
        &crate::harness::chat_body("Hi", true),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"error\""),
        "the stream ends with an error: {body}"
    );
    let metrics = s.state.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"ccgate_requests_total{endpoint="chat_completions""#))
        .unwrap_or_else(|| panic!("no request counted in\n{metrics}"));
    assert!(line.contains(r#"status="200""#), "{line}");
    assert!(!line.contains(r#"kind="ok""#), "marked as failed: {line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn anthropic_system_messages_join_the_system_prompt_after_the_top_level_one() {
    let s = TestServer::start(Opts::default()).await;
    // Anthropic `role: "system"` entries are system instructions, after the top-level one.
    let body = json!({"model": "sonnet", "max_tokens": 8, "system": "Top.",
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": "Hi"}]});
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 200, "{text}");
    let log = fake_log(&s);
    assert!(
        log.contains("SYSTEM_PROMPT_FILE_CONTENT:Top.\n\nBe terse."),
        "{log}"
    );
}

#[tokio::test]
async fn an_empty_openai_system_message_is_no_system_prompt() {
    let s = TestServer::start(Opts::default()).await;
    // An empty OpenAI system message is no system prompt: no file, the pool's flags.
    let body = json!({"model": "sonnet", "messages": [{"role": "system", "content": ""},
                                                      {"role": "user", "content": "Hi"}]});
    let (st, _, text) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{text}");
    let log = fake_log(&s);
    assert!(!log.contains("ARG:--system-prompt-file"), "{log}");
    assert!(log.contains("ARG:--system-prompt\nARG:\n"), "{log}");
}

#[tokio::test]
async fn after_a_reload_the_gate_never_answers_with_another_kinds_template() {
    let s = TestServer::start(Opts::default()).await;
    s.set_scenario("not_logged_in");
    let (st, _, _) = post(
        &s,
        "/v1/chat/completions",
        &crate::harness::chat_body("Hi", false),
    )
    .await;
    assert_eq!(st, 401);
    // The request's verdict wakes the probe, which (logged out too) closes the gate.
    assert!(
        crate::harness::eventually(std::time::Duration::from_secs(1), || !s
            .state
            .health
            .is_ok())
        .await,
        "the gate is closed"
    );
    // New rules: not being logged in no longer closes the gate; billing does.
    let rules = default_rules_with_probe(0.0, 0.0, 5.0)
        .replacen(
            "    status: 401\n    unhealthy: true\n",
            "    status: 401\n",
            1,
        )
        .replacen(
            "  - name: billing\n",
            "  - name: billing\n    unhealthy: true\n",
            1,
        );
    assert!(rules.contains("name: billing\n    unhealthy: true"));
    std::fs::write(&s.rules_path, rules).unwrap();
    let v = post_empty_json(&s, "/admin/reload").await;
    assert_eq!(v["reload"]["ok"], true, "{v}");
    s.set_scenario("success");
    let (st, _, body) = post(
        &s,
        "/v1/chat/completions",
        &crate::harness::chat_body("Hi", false),
    )
    .await;
    assert_eq!(st, 200, "answered from billing's template instead: {body}");
}
