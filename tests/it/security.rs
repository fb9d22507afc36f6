//! API keys (both headers, constant-time compare), open probe routes, CORS off by default,
//! and `/metrics` as valid Prometheus/OpenMetrics text.

use serde_json::Value;

use crate::harness::{chat_body, client, messages_body, Opts, TestServer};

async fn keyed_server() -> TestServer {
    TestServer::start(Opts {
        api_keys: vec!["k-one".into(), "k-two".into()],
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn api_keys_guard_v1_and_admin_routes() {
    let s = keyed_server().await;
    // Missing key: 401 in each endpoint's shape.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = client()
        .post(s.url("/v1/messages"))
        .json(&messages_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    // Wrong key, in either header, and a prefix of a right key.
    for (h, val) in [
        ("authorization", "Bearer nope"),
        ("x-api-key", "nope"),
        ("x-api-key", "k-on"),
        ("authorization", "Basic k-one"),
    ] {
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .header(h, val)
            .json(&chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{h}: {val}");
    }
    // Right key in each header.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .header("authorization", "Bearer k-one")
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(s.url("/v1/messages"))
        .header("x-api-key", "k-two")
        .json(&messages_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("GET", "/v1/auth/status"),
        ("GET", "/admin/rules"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/probe"),
    ] {
        let req = if method == "GET" {
            client().get(s.url(path))
        } else {
            client().post(s.url(path))
        };
        assert_eq!(
            req.send().await.unwrap().status(),
            401,
            "{path} without key"
        );
        let req = if method == "GET" {
            client().get(s.url(path))
        } else {
            client().post(s.url(path))
        };
        // `api_keys` are client keys: /admin/* needs a keys-file key with role admin.
        let want = if path.starts_with("/admin/") {
            403
        } else {
            200
        };
        assert_eq!(
            req.header("x-api-key", "k-one")
                .send()
                .await
                .unwrap()
                .status(),
            want,
            "{path} with key"
        );
    }
    // Probe routes stay open.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            client().get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let s = TestServer::start(Opts::default()).await;
    let r = client()
        .get(s.url("/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let s = TestServer::start(Opts {
        tweak: Box::new(|c| c.cors_origins = vec!["https://app.example".into()]),
        ..Opts::default()
    })
    .await;
    let r = client()
        .get(s.url("/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn metrics_parse_and_count_requests() {
    let s = TestServer::start(Opts::default()).await;
    client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    client()
        .post(s.url("/v1/messages"))
        .json(&messages_body("[[scenario:rate_limit]]", false))
        .send()
        .await
        .unwrap();
    client()
        .post(s.url("/admin/probe"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    client()
        .post(s.url("/admin/reload"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{text}"));
    for family in [
        "ccgate_requests",
        "ccgate_request_duration_seconds",
        "ccgate_cli_first_line_seconds",
        "ccgate_cli_in_flight",
        "ccgate_probes",
        "ccgate_probe_last_duration_seconds",
        "ccgate_rules_last_reload_successful",
        "ccgate_rules_last_reload_success_timestamp_seconds",
        "ccgate_rules_reloads",
    ] {
        assert!(
            parsed.families.contains_key(family),
            "missing {family}:\n{text}"
        );
    }
    assert!(
        text.contains(
            r#"ccgate_requests_total{endpoint="chat_completions",status="200",kind="ok"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"ccgate_requests_total{endpoint="messages",status="429",kind="rate_limit"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"ccgate_probes_total{outcome="ok"} 1"#),
        "{text}"
    );
    // Series that alerts watch exist at 0 before their first event.
    for series in [
        r#"ccgate_probes_total{outcome="unhealthy"} 0"#,
        r#"ccgate_rules_reloads_total{result="failure"} 0"#,
        r#"ccgate_rules_reloads_total{result="success"} 0"#,
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
}

#[tokio::test]
async fn unknown_endpoints_are_counted() {
    let s = TestServer::start(Opts::default()).await;
    let r = client()
        .post(s.url("/v1/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(s.url("/v1/v1/messages")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{text}"));
    assert!(
        text.contains(
            r#"ccgate_requests_total{endpoint="unknown",status="404",kind="unknown_endpoint"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"ccgate_request_duration_seconds_count{endpoint="unknown"} 2"#),
        "{text}"
    );
}
