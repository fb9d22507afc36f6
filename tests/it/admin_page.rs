//! The operator page (`GET /admin/`) and the admin JSON it reads (`/admin/overview`,
//! `/admin/classify`): the page holds no data and needs no key, the data needs the key,
//! the page's headers lock it to its own assets, and the playground gives the same verdict
//! as `ccgate classify`. (A real browser drives the page in `tests/browser/`.)

use serde_json::{json, Value};

use crate::harness::{chat_body, client, Opts, TestServer};

async fn keyed_server() -> TestServer {
    TestServer::start(Opts {
        api_keys: vec!["k-admin".into()],
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
    // One answered request, then the overview with the key.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("k-admin")
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
    // Without the key: 401, and no verdict.
    let r = client()
        .post(s.url("/admin/classify"))
        .json(&json!({"facts": {"exit_code": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.shutdown().await;
}

#[tokio::test]
async fn a_cross_site_page_cannot_post_to_the_playground() {
    let s = TestServer::start(Opts::default()).await; // no keys: open on loopback
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
