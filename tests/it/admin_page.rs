//! The operator page (`GET /admin/`) and the admin JSON it reads (`/admin/overview`,
//! `/admin/classify`): the page holds no data and needs no key, the data needs the key,
//! the page's headers lock it to its own assets, and the playground gives the same verdict
//! as `ccgate classify`. (A real browser drives the page in `tests/browser/`.)

use serde_json::{json, Value};

use crate::harness::{chat_body, client, get_json, Opts, TestServer};

/// `k-admin` (role admin) and `k-client` (a client key) in a keys file.
async fn keyed_server() -> TestServer {
    let digest = |k: &str| ccgate::rules::sha256_hex(k.as_bytes());
    TestServer::start(Opts {
        keys_yaml: Some(format!(
            "keys:\n  - name: ops\n    sha256: \"{}\"\n    role: admin\n  - name: app\n    sha256: \"{}\"\n",
            digest("k-admin"),
            digest("k-client")
        )),
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_key_and_hold_no_data() {
    let s = keyed_server().await;
    let r = client().get(s.url("/admin/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"login-form\""));
    assert!(html.contains("type=\"password\""));
    // No data in the page itself: no account, kind or rules digest.
    assert!(!html.contains("auth_failure") && !html.contains("default"));
    // Its script and style, with their types; nothing from another origin.
    for (path, ty) in [
        ("/admin/assets/app.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty);
        // Nothing from elsewhere: the only absolute URL is the SVG namespace name.
        let body = r
            .text()
            .await
            .unwrap()
            .replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    // `/admin` leads to the page.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.url("/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/admin/");
    s.shutdown().await;
}

#[tokio::test]
async fn overview_needs_the_key_and_shows_health_processes_accounts_and_rules() {
    let s = keyed_server().await;
    let r = client().get(s.url("/admin/overview")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v.get("accounts").is_none() && v.get("rules").is_none());
    // A client key: 403, and no data either.
    for path in [
        "/admin/overview",
        "/admin/failures",
        "/admin/usage",
        "/admin/keys",
    ] {
        let r = client()
            .get(s.url(path))
            .bearer_auth("k-client")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "admin_key_required", "{path}: {v}");
    }
    // One answered request, then the overview with the key.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("k-client")
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(s.url("/admin/overview"))
        .bearer_auth("k-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["gateway"]["ready"], true);
    assert_eq!(v["gateway"]["cli_health"]["ok"], true);
    assert_eq!(v["accounts"][0]["name"], "default");
    assert_eq!(v["processes"]["max_concurrent"], 4);
    assert!(v["processes"]["spawned_total"].as_u64().unwrap() >= 1);
    let kinds = v["rules"]["kinds"].as_array().unwrap();
    assert!(kinds
        .iter()
        .any(|k| k["name"] == "auth_failure" && k["status"] == 401));
    assert_eq!(kinds.last().unwrap()["fallback"], true);
    assert_eq!(v["rules"]["sha256"].as_str().unwrap().len(), 64);
    // This gateway has a ledger and keys: the page shows those sections.
    assert_eq!(
        v["sections"],
        json!({"usage": true, "failures": true, "keys": true})
    );
    s.shutdown().await;
}

async fn classify(s: &TestServer, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/admin/classify"))
        .bearer_auth("k-admin")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn the_classify_playground_gives_each_apis_verdict_for_facts_and_captures() {
    let s = keyed_server().await;
    // Quick fields: an API error status and type.
    let (status, v) = classify(
        &s,
        json!({"facts": {"result_seen": true, "result_is_error": true,
                         "api_error_status": 529, "api_error_type": "overloaded_error",
                         "result_text": "API Error: 529 Overloaded"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["openai"]["kind"], "overloaded");
    assert_eq!(v["anthropic"]["kind"], "overloaded");
    assert_eq!(v["anthropic"]["status"], 529);
    assert_eq!(v["anthropic"]["body"]["error"]["type"], "overloaded_error");
    assert!(v["openai"]["body"]["error"].is_object());
    // A capture, exactly as `ccgate classify` reads it: not logged in.
    let capture = concat!(
        r#"{"type":"assistant","message":{"id":"m","model":"<synthetic>","role":"assistant","type":"message","content":[{"type":"text","text":"Not logged in · Please run /login"}]},"session_id":"s","error":"authentication_failed","is_api_error_message":true}"#,
        "\n",
        r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login","session_id":"s","terminal_reason":"api_error"}"#,
        "\n#exit: 1\n"
    );
    let (status, v) = classify(&s, json!({"input": capture})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["openai"]["kind"], "auth_failure");
    assert_eq!(v["openai"]["status"], 401);
    assert_eq!(v["openai"]["unhealthy"], true);
    // stderr and an exit code alone: the CLI missing a dependency is the fallback here.
    let (status, v) = classify(
        &s,
        json!({"facts": {"stderr_tail": "segfault somewhere", "exit_code": 139}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["openai"]["kind"].is_string());
    // Bad inputs: 400 with a message, never a 500.
    for bad in [
        json!({}),
        json!({"input": "x", "facts": {}}),
        json!({"input": "#exit: many\n"}),
        json!({"facts": {"no_such_field": 1}}),
        json!({"facts": {"exit_code": "one"}}),
    ] {
        let (status, v) = classify(&s, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // Without the key: 401; with a client key: 403; no verdict either way.
    for (key, want) in [(None, 401), (Some("k-client"), 403)] {
        let mut req = client().post(s.url("/admin/classify"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req
            .json(&json!({"facts": {"exit_code": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{key:?}");
        let v: Value = r.json().await.unwrap();
        assert!(v.get("openai").is_none(), "{v}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_cross_site_page_cannot_post_to_the_playground() {
    // No keys: the admin endpoints are open on loopback, so only the edge protects them.
    let s = TestServer::start(Opts::default()).await;
    // Another origin: refused before anything runs.
    let r = client()
        .post(s.url("/admin/classify"))
        .header("origin", "https://evil.example")
        .json(&json!({"facts": {"exit_code": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A "simple" cross-site form post (no preflight): not JSON, refused.
    let r = client()
        .post(s.url("/admin/classify"))
        .header("content-type", "text/plain")
        .body(r#"{"facts":{"exit_code":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // The page's own same-origin POST works.
    let origin = s.url("");
    let r = client()
        .post(s.url("/admin/classify"))
        .header("origin", origin.trim_end_matches('/'))
        .json(&json!({"facts": {"exit_code": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

#[tokio::test]
async fn failures_come_per_kind_and_latest_first_from_the_ledger() {
    let s = keyed_server().await;
    // Two answered requests, then one failure the CLI reports (529 overloaded).
    for _ in 0..2 {
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .bearer_auth("k-client")
            .json(&chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    s.set_scenario("overloaded");
    let r = client()
        .post(s.url("/v1/messages"))
        .bearer_auth("k-client")
        .json(&crate::harness::messages_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let failed_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let get = |q: &'static str| {
        let url = s.url(q);
        async move {
            let r = client()
                .get(url)
                .bearer_auth("k-admin")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = get("/admin/failures?bucket=hour&from=1h").await;
    assert_eq!(status, 200, "{v}");
    let by_kind = v["by_kind"].as_array().unwrap();
    assert_eq!(by_kind.len(), 1, "{v}");
    assert_eq!(by_kind[0]["kind"], "overloaded");
    assert_eq!(by_kind[0]["count"], 1);
    let latest = &v["latest"][0];
    assert_eq!(latest["request_id"], failed_id.as_str());
    assert_eq!(latest["key"], "app");
    assert_eq!(latest["status"], 529);
    assert_eq!(latest["api"], "messages");
    // The answered ones are not failures; usage counts all three.
    let (_, u) = get("/admin/usage?group_by=key&from=1h").await;
    assert_eq!(u["rows"][0]["requests"], 3, "{u}");
    assert_eq!(u["rows"][0]["errors"], 1, "{u}");
    // A burst of alike refusals (bad requests, no tokens): every one is counted, in at
    // most one row per second each keeping its first request id.
    for _ in 0..20 {
        let r = client()
            .post(s.url("/v1/messages"))
            .bearer_auth("k-client")
            .json(&serde_json::json!({"model": "sonnet"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    let (_, v) = get("/admin/failures?bucket=hour&from=1h&limit=200").await;
    let burst: Vec<u64> = v["latest"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == 400)
        .map(|f| f["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(burst.iter().sum::<u64>(), 20, "{v}");
    let counted: u64 = v["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] != "overloaded")
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 20, "{v}");
    let (_, u) = get("/admin/usage?group_by=key&from=1h").await;
    assert_eq!(
        (
            u["rows"][0]["requests"].as_u64(),
            u["rows"][0]["errors"].as_u64()
        ),
        (Some(23), Some(21)),
        "{u}"
    );
    // Bad queries: 400 with a message.
    for q in [
        "/admin/failures?bucket=week",
        "/admin/failures?limit=100000",
        "/admin/failures?from=yesterday-ish",
    ] {
        let (status, v) = get(q).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"]["message"].is_string(), "{q}: {v}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn plan_windows_an_answer_reported_show_in_the_status_and_the_overview() {
    let s = TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_WINDOWS", "0.42,0.1,in_use".into())],
        ..Opts::default()
    })
    .await;
    // Before any answer: no window data.
    let v = get_json(&s, "/v1/auth/status").await;
    assert!(v["accounts"][0]["windows"].is_null(), "{v}");
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/v1/auth/status", "/admin/overview"] {
        let v = get_json(&s, path).await;
        let w = &v["accounts"][0]["windows"];
        assert_eq!(w["five_hour"]["utilization"], 42.0, "{path}: {w}");
        assert_eq!(w["seven_day"]["utilization"], 10.0, "{path}: {w}");
        let reset = w["five_hour"]["resets_at_unix"].as_u64().unwrap();
        let now = ccgate::clock::unix_now();
        assert!(reset > now && reset <= now + 3600, "{path}: {w}");
        assert!(w["five_hour"]["resets_at"]
            .as_str()
            .unwrap()
            .starts_with("20"));
        assert_eq!(w["extra_usage_in_use"], true, "{path}: {w}");
    }
    s.shutdown().await;
}
