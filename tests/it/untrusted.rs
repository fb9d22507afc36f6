//! Text a client chose never decides a verdict for others (issue 17, findings 1, 6, 7):
//! the model name is validated, the CLI's echo of it is not classified, a request-path
//! `unhealthy` verdict closes the gate only when the probe confirms it, messages that rules
//! pass on are redacted, `/ready` says readiness only, and stop sequences are bounded.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    chat_body, client, default_rules_with_probe, eventually, get_json, messages_body, post,
    post_empty_json, Opts, TestServer,
};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn chat_with_model(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn messages_with_model(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

/// Both endpoints answer a plain request with 200.
async fn others_are_served(s: &TestServer) {
    let (st, _, body) = post(s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(st, 200, "another client's chat request: {body}");
    let (st, _, body) = post(s, "/v1/messages", &messages_body("hi", false)).await;
    assert_eq!(st, 200, "another client's messages request: {body}");
}

#[tokio::test]
async fn a_model_named_like_an_auth_failure_is_refused_and_the_gate_stays_open() {
    // The repro: model `Not logged in`, and a CLI that echoes an unknown model.
    let s = TestServer::start(Opts::default()).await;
    let nul = "son\u{0}net".to_string();
    let huge = "a".repeat(900 * 1024);
    for model in [
        "Not logged in",
        "API Error: 401",
        " ",
        "",
        nul.as_str(),
        huge.as_str(),
    ] {
        let shown: String = model.chars().take(20).collect();
        let (st, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_with_model(model, "[[scenario:model_not_found]]"),
        )
        .await;
        assert_eq!(st, 400, "openai {shown:?}: {body}");
        assert_eq!(json_of(&body)["error"]["param"], "model", "{body}");
        let (st, _, body) = post(
            &s,
            "/v1/messages",
            &messages_with_model(model, "[[scenario:model_not_found]]"),
        )
        .await;
        assert_eq!(st, 400, "anthropic {shown:?}: {body}");
        assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
        assert!(
            body.len() < 1024,
            "the body must not echo the model: {body}"
        );
    }
    assert!(s.state.health.is_ok());
    others_are_served(&s).await;
}

#[tokio::test]
async fn real_model_ids_and_aliases_are_accepted() {
    let s = TestServer::start(Opts::default()).await;
    for model in [
        "claude-sonnet-4-6",
        "sonnet",
        "opus[1m]",
        "claude-opus-4-1@20250805",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
    ] {
        let (st, _, body) = post(&s, "/v1/chat/completions", &chat_with_model(model, "hi")).await;
        assert_eq!(st, 200, "{model}: {body}");
        let (st, _, body) = post(&s, "/v1/messages", &messages_with_model(model, "hi")).await;
        assert_eq!(st, 200, "{model}: {body}");
    }
}

#[tokio::test]
async fn an_echoed_model_name_never_decides_the_kind() {
    // The default rules: `(429)` is a rate_limit regex, and the CLI echoes the model in
    // parentheses. Rules an operator might write: a marker without spaces on the kind
    // that closes the gate.
    let rules = default_rules_with_probe(0.0, 0.0, 5.0).replacen(
        "        - \"Not logged in\"\n",
        "        - \"Not logged in\"\n        - \"Invalid-API-key\"\n",
        1,
    );
    assert!(rules.contains("Invalid-API-key"));
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules),
        ..Opts::default()
    })
    .await;
    for model in ["429", "Invalid-API-key", "invalid-api-KEY"] {
        let (st, _, body) = post(
            &s,
            "/v1/chat/completions",
            &chat_with_model(model, "[[scenario:model_not_found]]"),
        )
        .await;
        assert_eq!(st, 404, "openai {model}: {body}");
        let v = json_of(&body);
        assert_eq!(v["error"]["code"], "model_not_found", "{body}");
        // The client still sees its model in the message.
        assert!(
            v["error"]["message"].as_str().unwrap().contains(model),
            "{body}"
        );
        let (st, _, body) = post(
            &s,
            "/v1/messages",
            &messages_with_model(model, "[[scenario:model_not_found]]"),
        )
        .await;
        assert_eq!(st, 404, "anthropic {model}: {body}");
        assert_eq!(json_of(&body)["error"]["type"], "not_found_error");
    }
    assert!(s.state.health.is_ok());
    assert!(s.state.health.snapshot().suspected.is_none());
    others_are_served(&s).await;
}

#[tokio::test]
async fn a_request_path_401_whose_probe_succeeds_leaves_the_gate_open() {
    // This request's CLI run fails as "not logged in", but the probe (the operator's prompt)
    // succeeds: the client gets its 401, nobody else is affected.
    let s = TestServer::start(Opts::default()).await;
    let (st, _, body) = post(
        &s,
        "/v1/chat/completions",
        &chat_body("[[scenario:not_logged_in]] hi", false),
    )
    .await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(
        json_of(&body)["error"]["code"],
        "claude_cli_not_authenticated"
    );
    // Not closed by the request itself.
    assert!(
        s.state.health.is_ok(),
        "a request's verdict closed the gate"
    );
    // The woken probe runs, succeeds and answers the suspicion.
    assert!(
        eventually(Duration::from_secs(3), || {
            let h = s.state.health.snapshot();
            h.suspected.is_none() && h.last_probe.is_some()
        })
        .await,
        "no probe answered the suspicion: {:?}",
        s.state.health.snapshot()
    );
    let h = s.state.health.snapshot();
    assert_eq!(
        h.last_probe.as_ref().map(|p| p.outcome),
        Some(ccgate::health::ProbeOutcome::Ok)
    );
    assert!(h.ok);
    others_are_served(&s).await;
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_request_path_401_closes_the_gate_once_the_probe_confirms_it() {
    let s = TestServer::start(Opts::default()).await;
    s.set_scenario("not_logged_in");
    let (st, _, body) = post(&s, "/v1/messages", &messages_body("hi", false)).await;
    assert_eq!(st, 401, "{body}");
    // The suspicion shows in /v1/auth/status until the probe has judged (or it already has).
    let st = get_json(&s, "/v1/auth/status").await;
    let h = &st["cli_health"];
    assert!(
        h["suspected"]["kind"] == "auth_failure" || h["ok"] == false,
        "{st}"
    );
    assert!(
        eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await,
        "the confirming probe did not close the gate within 1 s"
    );
    let h = s.state.health.snapshot();
    assert_eq!(h.source, Some(ccgate::health::Source::Probe));
    assert_eq!(h.error_kind.as_deref(), Some("auth_failure"));
    assert!(h.suspected.is_none(), "{h:?}");
}

#[tokio::test]
async fn failure_messages_carry_no_addresses_or_secrets() {
    let s = TestServer::start(Opts::default()).await;
    let leaks = [
        "gateway.internal",
        // Ports with their colon: a random request id may hold the digits.
        ":8443",
        "sk-ant",
        "FAKEfake",
        "tok_FAKE",
        "10.1.2.3",
        "127.0.0.1",
        ":8787",
    ];
    for stream in [false, true] {
        for (path, body) in [
            (
                "/v1/chat/completions",
                chat_body("[[scenario:leaky_error]]", stream),
            ),
            (
                "/v1/messages",
                messages_body("[[scenario:leaky_error]]", stream),
            ),
        ] {
            let (st, _, text) = post(&s, path, &body).await;
            assert_eq!(st, 502, "{path}: {text}");
            for leak in leaks {
                assert!(!text.contains(leak), "{path} leaked {leak}: {text}");
            }
            assert!(text.contains("[redacted]"), "{path}: {text}");
        }
    }

    // A secret in an auth failure the probe sees: not in the health state, not in the
    // gate's answers, and /ready tells readiness only.
    s.set_scenario("leaky_auth");
    let v = post_empty_json(&s, "/admin/probe").await;
    assert_eq!(v["cli_health"]["ok"], false, "{v}");
    let status = get_json(&s, "/v1/auth/status").await.to_string();
    assert!(status.contains("Invalid API key [redacted]"), "{status}");
    let (st, _, gated) = post(&s, "/v1/chat/completions", &chat_body("hi", false)).await;
    assert_eq!(st, 401, "{gated}");
    for text in [&status, &gated] {
        for leak in leaks {
            assert!(!text.contains(leak), "leaked {leak}: {text}");
        }
    }
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "not_ready", "reason": "auth_failure"})
    );
    s.set_scenario("success");
    let v = post_empty_json(&s, "/admin/probe").await;
    assert_eq!(v["cli_health"]["ok"], true, "{v}");
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready, json!({"status": "ready"}));
}

#[tokio::test]
async fn stop_sequences_are_bounded_in_count_and_length() {
    let s = TestServer::start(Opts::default()).await;
    let many: Vec<String> = (0..17).map(|i| format!("stop{i}")).collect();
    let long = "x".repeat(1025);
    let cases = [
        (json!(many), "stop_sequences"),
        (json!([long.clone()]), "stop_sequences"),
    ];
    for (stops, _) in &cases {
        let mut body = messages_body("hi", false);
        body["stop_sequences"] = stops.clone();
        let (st, _, text) = post(&s, "/v1/messages", &body).await;
        assert_eq!(st, 400, "{text}");
        assert!(
            json_of(&text)["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("stop_sequences:"),
            "{text}"
        );
    }
    let mut body = chat_body("hi", false);
    body["stop"] = json!([long]);
    let (st, _, text) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(st, 400, "{text}");
    assert_eq!(json_of(&text)["error"]["param"], "stop", "{text}");
    // At the limits: accepted.
    let mut body = messages_body("hi", false);
    body["stop_sequences"] = json!((0..16)
        .map(|i| format!("{i}{}", "y".repeat(1000)))
        .collect::<Vec<_>>());
    let (st, _, text) = post(&s, "/v1/messages", &body).await;
    assert_eq!(st, 200, "{text}");
}
