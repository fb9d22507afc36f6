//! Pure HTTP behaviour through the router itself (`tower::ServiceExt::oneshot`), no TCP
//! and no CLI run: error shapes, refused fields, gateway-side kinds in the metrics.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ccgate::backend::Backend;
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::support::fake_settings;

fn state() -> AppState {
    AppState::new(
        Config::default().compile().expect("valid"),
        Rules::embedded(),
        Backend::new(fake_settings("success")),
    )
}

/// Sends one request through a fresh router over `state`: (status, JSON body).
async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = ccgate::http::router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// The field an error names: OpenAI's `param`, or the dotted path Anthropic messages
/// start with.
fn named_field(path: &str, body: &Value) -> String {
    if path == "/v1/messages" {
        let m = body["error"]["message"].as_str().unwrap_or_default();
        m.split(':').next().unwrap_or_default().to_string()
    } else {
        body["error"]["param"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

#[tokio::test]
async fn a_bad_path_segment_gets_our_json_error_in_the_requests_flavour() {
    let s = state();
    let (st, v) = send(
        &s,
        Request::get("/v1/models/%FF").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("path"),
        "{v}"
    );
    let req = Request::get("/v1/models/%FF")
        .header("anthropic-version", "2023-06-01")
        .body(Body::empty())
        .unwrap();
    let (st, v) = send(&s, req).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["type"], "error", "{v}");
}

#[tokio::test]
async fn fields_promising_what_ccgate_cannot_do_are_refused_naming_the_field() {
    let s = state();
    let chat = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let msgs = |extra: Value| {
        let mut b = json!({"model": "m", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"tool_choice": "required"})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"audio": {"voice": "alloy", "format": "mp3"}})),
            "audio",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"prediction": {"type": "content", "content": "x"}})),
            "prediction",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"web_search_options": {"search_context_size": "low"}})),
            "web_search_options.search_context_size",
        ),
        (
            "/v1/messages",
            msgs(json!({"tool_choice": {"type": "any"}})),
            "tool_choice",
        ),
        (
            "/v1/messages",
            msgs(json!({"tool_choice": {"type": "tool", "name": "f"}})),
            "tool_choice",
        ),
        (
            "/v1/messages",
            msgs(json!({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]})),
            "mcp_servers",
        ),
        (
            "/v1/messages",
            msgs(json!({"container": "container_1"})),
            "container",
        ),
        (
            "/v1/messages",
            msgs(json!({"output_config": {"format": {"type": "xml"}}})),
            "output_config.format",
        ),
        (
            "/v1/messages",
            msgs(json!({"output_format": {"type": "json_schema"}})),
            "output_format",
        ),
    ];
    for (path, body, field) in cases {
        let (st, v) = send(&s, post(path, &body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(named_field(path, &v), field, "{body}: {v}");
    }
    // Choices that demand no call are fine without tools, and nothing was refused late:
    // no CLI ran for any of the refused requests.
    assert_eq!(s.backend.stats().snapshot().spawned_total, 0);
}

#[tokio::test]
async fn gateway_side_errors_are_counted_under_their_own_kinds() {
    let config = Config {
        request_body_limit: 1024,
        ..Config::default()
    };
    let s = AppState::new(
        config.compile().expect("valid"),
        Rules::embedded(),
        Backend::new(fake_settings("success")),
    );
    let (st, _) = send(&s, post("/v1/chat/completions", &json!({"model": "m"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let big = json!({"model": "m", "max_tokens": 1,
                     "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let (st, _) = send(&s, post("/v1/messages", &big)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, _) = send(&s, post("/v1/completions", &json!({}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let metrics = s.metrics.render();
    for line in [
        r#"ccgate_requests_total{endpoint="chat_completions",status="400",kind="bad_request"} 1"#,
        r#"ccgate_requests_total{endpoint="messages",status="413",kind="body_too_large"} 1"#,
        r#"ccgate_requests_total{endpoint="unknown",status="404",kind="unknown_endpoint"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(!metrics.contains(r#"kind="invalid_request""#), "{metrics}");
}

#[tokio::test]
async fn bad_requests_get_api_shaped_errors() {
    let s = state();
    let raw = |path: &'static str, body: &'static str| {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        send(&s, req)
    };
    for (path, body) in [
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", ""),
        ("/v1/chat/completions", r#"{"model":"x"}"#),
        ("/v1/chat/completions", r#"{"model":"x","messages":[]}"#),
        ("/v1/chat/completions", r#"{"model":"x","messages":"hi"}"#),
        (
            "/v1/chat/completions",
            r#"{"model":"x","n":2,"messages":[{"role":"user","content":"a"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x","messages":[{"role":"tool","content":"a"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x","response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"bogus"}}},"messages":[{"role":"user","content":"a"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x","logprobs":true,"messages":[{"role":"user","content":"a"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x","modalities":["text","audio"],"messages":[{"role":"user","content":"a"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x","functions":[{"name":"f"}],"messages":[{"role":"user","content":"a"}]}"#,
        ),
        ("/v1/messages", "[1,2"),
        (
            "/v1/messages",
            r#"{"model":"x","messages":[{"role":"user","content":"a"}]}"#,
        ),
        (
            "/v1/messages",
            r#"{"model":"x","max_tokens":5,"messages":[]}"#,
        ),
        (
            "/v1/messages",
            r#"{"model":"x","max_tokens":"5","messages":[{"role":"user","content":"a"}]}"#,
        ),
    ] {
        let (st, v) = raw(path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        } else {
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].as_str().unwrap().len() > 5);
        }
    }
    // Nothing was run for any of them.
    assert_eq!(s.backend.stats().snapshot().spawned_total, 0);
}

#[tokio::test]
async fn models_and_health() {
    let s = state();
    let get = |path: &str, anthropic: bool| {
        let mut req = Request::get(path);
        if anthropic {
            req = req.header("anthropic-version", "2023-06-01");
        }
        send(&s, req.body(Body::empty()).unwrap())
    };
    let (_, v) = get("/v1/models", false).await;
    assert_eq!(v["object"], "list");
    assert!(!v["data"].as_array().unwrap().is_empty());
    assert_eq!(v["first_id"], v["data"][0]["id"]);
    let (st, _) = get("/health", false).await;
    assert_eq!(st, StatusCode::OK);

    // Retrieve one: both SDKs' `models.retrieve`.
    let (_, one) = get("/v1/models/sonnet", false).await;
    assert_eq!(one["id"], "sonnet");
    assert_eq!(one["object"], "model");
    assert_eq!(one["type"], "model");
    // Unknown: 404 in the OpenAI shape, or Anthropic's when the client says it is one.
    let (st, v) = get("/v1/models/gpt-4o", false).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    let (st, v) = get("/v1/models/gpt-4o", true).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
}
