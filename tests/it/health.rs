//! The health contract: the gate answers 401 without spawning while the CLI is not logged
//! in, the fast re-probe restores it, inconclusive probes never close it, request-path
//! verdicts wake the probe (which closes it if it agrees), and a reload re-times the probe.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    chat_body, client, default_rules_with_probe, eventually, get_json, messages_body,
    post_empty_json, Opts, TestServer,
};

/// Number of CLI invocations the fake logged so far.
fn spawns(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("CWD:"))
        .count()
}

async fn auth_status(s: &TestServer) -> Value {
    get_json(s, "/v1/auth/status").await
}

#[tokio::test]
async fn not_logged_in_gives_401_per_flavour_and_closes_the_gate() {
    let s = TestServer::start(Opts::default()).await;
    s.set_scenario("not_logged_in");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["code"], "claude_cli_not_authenticated");
    assert_eq!(v["error"]["error_kind"], "auth_failure");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("claude /login"));

    // The request-path verdict wakes one probe at once; the gate closes when it agrees
    // (the CLI is logged out for it too).
    assert!(
        eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await,
        "no confirming probe within 1 s"
    );
    assert_eq!(
        s.state.health.snapshot().source,
        Some(ccgate::health::Source::Probe)
    );
    let st = auth_status(&s).await;
    assert_eq!(st["cli_health"]["ok"], false, "{st}");
    assert_eq!(st["cli_health"]["error_kind"], "auth_failure");
    assert_eq!(
        st["cli_health"]["error_message"],
        "Not logged in · Please run /login"
    );
    assert!(st["cli_health"]["last_probed_at"].is_string());
    assert!(st["cli_health"]["last_ok_at"].is_null());
    assert!(st["cli_health"]["suspected"].is_null(), "{st}");
    // Gate closed: answered without spawning, on both endpoints, streaming or not.
    let before = spawns(&s);
    assert!(before >= 1, "the fake CLI logs each spawn");
    for stream in [false, true] {
        let r = client()
            .post(s.url("/v1/messages"))
            .json(&messages_body("hi", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .json(&chat_body("hi", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Periodic probes are disabled in these rules (interval 0, unhealthy 0).
    assert_eq!(spawns(&s), before, "gate must not spawn the CLI");

    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": "not_ready", "reason": "auth_failure"})
    );
}

#[tokio::test]
async fn fast_reprobe_restores_health_after_login() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(0.0, 0.3, 5.0)),
        ..Opts::default()
    })
    .await;
    s.set_scenario("not_logged_in");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The confirming probe runs at once and closes the gate.
    assert!(eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await);
    assert_eq!(
        s.state.health.snapshot().source,
        Some(ccgate::health::Source::Probe)
    );
    // The CLI logs back in: the unhealthy interval (0.3 s) re-probe restores ok.
    s.set_scenario("success");
    assert!(
        eventually(Duration::from_secs(2), || s.state.health.is_ok()).await,
        "health not restored within the unhealthy interval"
    );
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let st = auth_status(&s).await;
    assert!(st["cli_health"]["last_ok_at"].is_string());
    assert!(st["cli_health"]["error_kind"].is_null());
}

#[tokio::test]
async fn probe_timeouts_and_overload_are_inconclusive() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(0.0, 0.0, 0.5)),
        ..Opts::default()
    })
    .await;
    for scenario in ["hang", "overloaded", "network_error", "crash"] {
        s.set_scenario(scenario);
        let r = client()
            .post(s.url("/admin/probe"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["cli_health"]["ok"], true, "{scenario}: {v}");
        assert_eq!(
            v["cli_health"]["last_probe"]["outcome"], "inconclusive",
            "{scenario}: {v}"
        );
        s.set_scenario("success");
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .json(&chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scenario} closed the gate");
    }
    s.set_scenario("not_logged_in");
    let v: Value = post_empty_json(&s, "/admin/probe").await;
    assert_eq!(v["cli_health"]["ok"], false);
    assert_eq!(v["cli_health"]["last_probe"]["outcome"], "unhealthy");
    assert_eq!(v["cli_health"]["source"], "probe");
}

#[tokio::test]
async fn numbers_in_stderr_never_mean_401() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noisy-claude");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho 'upstream took 4013ms; request req_011CT429xyz failed' >&2\nexit 1\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let s = TestServer::start(Opts {
        tweak: Box::new(move |c| {
            c.cli.command = script;
            // The script reads stdin to its end: no turn may keep it open.
            c.cli.keep_conversations = 0;
        }),
        ..Opts::default()
    })
    .await;
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_ne!(status, 401, "{body}");
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("4013ms"), "stderr leaked: {body}");
    assert!(s.state.health.is_ok());
    drop(dir);
}

#[tokio::test]
async fn first_probe_runs_at_start_and_reload_retimes_it() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(default_rules_with_probe(3600.0, 0.0, 5.0)),
        ..Opts::default()
    })
    .await;
    // The server answers at once; the first probe runs right after start.
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(3), || s
            .state
            .health
            .snapshot()
            .last_probe
            .is_some())
        .await
    );
    let first = s.state.health.snapshot().last_probe.unwrap().at;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.state.health.snapshot().last_probe.unwrap().at,
        first,
        "interval 3600 s must not probe again"
    );
    std::fs::write(&s.rules_path, default_rules_with_probe(0.2, 0.0, 5.0)).unwrap();
    let r = client()
        .post(s.url("/admin/reload"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st = auth_status(&s).await;
    assert_eq!(st["probe"]["interval_seconds"], 0.2);
    let mut seen = std::collections::HashSet::new();
    assert!(
        eventually(Duration::from_secs(3), || {
            seen.insert(s.state.health.snapshot().last_probe.unwrap().at);
            seen.len() >= 3
        })
        .await,
        "reload to a 0.2 s interval did not re-time the probe"
    );
}

fn probes_total(s: &TestServer) -> u64 {
    s.state
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("ccgate_probes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_reload_while_the_gate_is_closed_probes_at_once() {
    // Periodic probe off, re-probe while unhealthy only after an hour.
    let unhealthy_auth = default_rules_with_probe(0.0, 3600.0, 5.0);
    let s = TestServer::start(Opts {
        rules_yaml: Some(unhealthy_auth.clone()),
        ..Opts::default()
    })
    .await;
    s.set_scenario("not_logged_in");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await,
        "no confirming probe"
    );
    assert_eq!(
        s.state.health.snapshot().source,
        Some(ccgate::health::Source::Probe)
    );
    let probes = probes_total(&s);
    // New rules in which `auth_failure` no longer closes the gate.
    let auth_not_unhealthy = unhealthy_auth.replacen(
        "status: 401\n    unhealthy: true",
        "status: 401\n    unhealthy: false",
        1,
    );
    assert_ne!(auth_not_unhealthy, unhealthy_auth, "the rules changed");
    std::fs::write(&s.rules_path, &auth_not_unhealthy).unwrap();
    let v: Value = post_empty_json(&s, "/admin/reload").await;
    // `ok`, not `changed`: a SIGHUP from another test may have swapped the file in first.
    assert_eq!(v["reload"]["ok"], true, "{v}");
    assert!(
        eventually(Duration::from_secs(2), || probes_total(&s) > probes).await,
        "the gate is closed, but the reload did not re-probe (next probe in an hour)"
    );
    // The probe saw the same failure and judged it with the new rules.
    let last = s.state.health.snapshot().last_probe.unwrap();
    assert_eq!(last.kind.as_deref(), Some("auth_failure"));
    assert_eq!(last.outcome, ccgate::health::ProbeOutcome::Inconclusive);
    // Logged in again meanwhile: the next reload re-opens the gate at once.
    s.set_scenario("success");
    std::fs::write(&s.rules_path, &unhealthy_auth).unwrap();
    let v: Value = post_empty_json(&s, "/admin/reload").await;
    // `ok`, not `changed`: a SIGHUP from another test may have swapped the file in first.
    assert_eq!(v["reload"]["ok"], true, "{v}");
    assert!(
        eventually(Duration::from_secs(2), || s.state.health.is_ok()).await,
        "the re-probe after the reload did not re-open the gate"
    );
}

/// A closed gate answers before the body is parsed (`http::gate`): malformed JSON or a bad
/// model get the gate's verdict in the endpoint's shape, with the request's own id (escaped
/// in the JSON); the edge checks and the body limit still come first; once the gate opens,
/// the same bodies get their validation errors again.
#[tokio::test]
async fn a_closed_gate_answers_before_the_body_is_parsed_and_an_open_one_validates_it() {
    let s = TestServer::start(Opts {
        tweak: Box::new(|c| c.request_body_limit = 4096),
        ..Opts::default()
    })
    .await;
    s.set_scenario("not_logged_in");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await);
    let spawned = spawns(&s);
    let last_probed_at = s.state.health.snapshot().last_probed_at.unwrap();
    let send = |path: &'static str, body: String, id: Option<&'static str>| {
        let mut req = client()
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("x-should-retry")
                .map(|v| v.to_str().unwrap().to_string());
            let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            (status, retry, id, v)
        }
    };
    let bodies = [
        "{not json".to_string(),
        r#"{"model":"Not logged in","messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        r#"{"model":"sonnet","messages":[]}"#.to_string(),
        chat_body("hi", true).to_string(),
    ];
    for body in &bodies {
        for id in [None, Some(r#"my"id\1"#)] {
            let (st, retry, rid, v) = send("/v1/chat/completions", body.clone(), id).await;
            assert_eq!((st, retry.as_deref()), (401, Some("false")), "{v}");
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
            assert_eq!(v["error"]["code"], "claude_cli_not_authenticated", "{v}");
            assert_eq!(v["error"]["error_kind"], "auth_failure", "{v}");
            assert_eq!(
                v["error"]["error_message"],
                "Not logged in · Please run /login"
            );
            assert_eq!(v["error"]["last_probed_at"], last_probed_at.as_str());
            assert_eq!(v["error"]["request_id"], rid.as_str(), "{v}");
            if let Some(id) = id {
                assert_eq!(rid, id);
            }
            let (st, _, rid, v) = send("/v1/messages", body.clone(), id).await;
            assert_eq!(st, 401, "{v}");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
            assert_eq!(v["request_id"], rid.as_str(), "{v}");
        }
    }
    // Checked before the gate: the content type and the body limit.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(chat_body("hi", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (st, _, _, v) = send("/v1/messages", "x".repeat(5000), None).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(spawns(&s), spawned, "a closed gate spawns nothing");
    let metrics = s.state.metrics.render();
    assert!(
        metrics.contains(
            r#"ccgate_requests_total{endpoint="chat_completions",status="401",kind="auth_failure"}"#
        ),
        "{metrics}"
    );

    // A new probe verdict re-renders the answer (its time is in the body).
    s.state.health.mark_failed(
        ccgate::health::Source::Probe,
        "auth_failure",
        "Invalid API key",
    );
    let (st, _, _, v) = send("/v1/chat/completions", bodies[0].clone(), None).await;
    assert_eq!(st, 401);
    assert_eq!(v["error"]["error_message"], "Invalid API key", "{v}");

    // The gate opens: the same bodies get their validation errors.
    s.set_scenario("success");
    s.state.health.mark_ok(ccgate::health::Source::Probe);
    let (st, _, _, v) = send("/v1/chat/completions", bodies[0].clone(), None).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (st, _, _, v) = send("/v1/messages", bodies[1].clone(), None).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (st, _, _, v) = send("/v1/chat/completions", bodies[2].clone(), None).await;
    assert_eq!(st, 400, "{v}");
    let (st, _, _, _) = send(
        "/v1/chat/completions",
        chat_body("hi", false).to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200);
}

/// A gate template that names `{{model}}` is rendered per request (after the body is
/// parsed), so each request's answer names its own model.
#[tokio::test]
async fn a_gate_template_with_the_model_is_rendered_per_request() {
    let rules = crate::harness::default_rules_with_probe(0.0, 0.0, 5.0).replacen(
        "code: claude_cli_not_authenticated",
        "code: \"claude_cli_not_authenticated for {{model}}\"",
        1,
    );
    assert!(rules.contains("for {{model}}"));
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules),
        ..Opts::default()
    })
    .await;
    s.set_scenario("not_logged_in");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(eventually(Duration::from_secs(1), || !s.state.health.is_ok()).await);
    for model in ["sonnet", "opus"] {
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["code"],
            format!("claude_cli_not_authenticated for {model}"),
            "{v}"
        );
    }
}
