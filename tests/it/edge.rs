//! The edge (issue 17, findings 2 and 3): what a request must look like before anything
//! runs (JSON-only POSTs, allowed origins, loopback `Host` names, a body deadline), through
//! the router; and the connection bounds (head, body and idle timeouts, the connection cap,
//! h2c, oversized heads, shutdown), over real TCP with small timeouts.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ccgate::backend::Backend;
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

use crate::harness::{client, Opts, TestServer};
use crate::support::fake_settings;

fn state_with(tweak: impl FnOnce(&mut Config)) -> AppState {
    let mut config = Config::default();
    tweak(&mut config);
    AppState::new(
        config.compile().expect("valid"),
        Rules::embedded(),
        Backend::new(fake_settings("success")),
    )
}

async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = ccgate::http::router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn chat_body() -> String {
    json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// Finding 2a: a cross-site "simple" POST (form or text/plain content type, or none) is a
/// 415 in the endpoint's shape; `application/json` with parameters, in any case, passes.
#[tokio::test]
async fn posts_need_a_json_content_type() {
    let s = state_with(|_| {});
    for (path, ct) in [
        ("/v1/chat/completions", Some("text/plain")),
        (
            "/v1/chat/completions",
            Some("application/x-www-form-urlencoded"),
        ),
        ("/v1/messages", Some("multipart/form-data; boundary=x")),
        ("/v1/messages", None),
        ("/v1/chat/completions", Some("application/jsonp")),
    ] {
        let mut req = Request::post(path);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (st, _, v) = send(&s, req.body(Body::from(chat_body())).unwrap()).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} {ct:?}: {v}");
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        } else {
            assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
        }
    }
    // The content type passes; the (empty) body is then the usual 400.
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(Body::from("{}"))
        .unwrap();
    let (st, _, v) = send(&s, req).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

/// Finding 2a: the admin POSTs take `application/json`, or a request with an
/// `Authorization` / `x-api-key` header (which no page can send cross-site without a
/// preflight); a bare POST, as a form would send it, is a 415.
#[tokio::test]
async fn admin_posts_need_json_or_a_credential_header() {
    let s = state_with(|_| {});
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = Request::post("/admin/reload");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (st, _, v) = send(&s, req.body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}: {v}");
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
    }
    for (name, value) in [
        ("content-type", "application/json"),
        ("authorization", "Bearer anything"),
        ("x-api-key", "anything"),
    ] {
        let req = Request::post("/admin/reload")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let (st, _, v) = send(&s, req).await;
        assert_ne!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{name}: {v}");
        assert!(v.get("reload").is_some(), "{name}: {v}");
    }
}

/// Finding 2b: a request from a web origin CORS does not allow is a 403 before anything
/// runs; the gateway's own origin and the configured ones pass.
#[tokio::test]
async fn foreign_origins_are_refused() {
    let s = state_with(|_| {});
    let req = |path: &str, origin: &str| {
        Request::post(path)
            .header("host", "127.0.0.1:8000")
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    for origin in ["https://evil.example", "null", "http://127.0.0.1:8001"] {
        let (st, _, v) = send(&s, req("/v1/chat/completions", origin)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{origin}: {v}");
        assert_eq!(v["error"]["code"], "origin_not_allowed", "{v}");
        let (st, _, v) = send(&s, req("/v1/messages", origin)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{origin}: {v}");
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        let (st, _, _) = send(&s, req("/admin/reload", origin)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{origin}");
    }
    let get = Request::get("/admin/rules")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&s, get).await.0, StatusCode::FORBIDDEN);
    // Same origin: fine (the empty body is the usual 400).
    let (st, _, v) = send(&s, req("/v1/chat/completions", "http://127.0.0.1:8000")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let s = state_with(|c| c.cors_origins = vec!["https://app.example".into()]);
    let (st, h, v) = send(&s, req("/v1/chat/completions", "https://app.example")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let (st, _, _) = send(&s, req("/v1/chat/completions", "https://evil.example")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A refused origin's preflight is refused too.
    let preflight = Request::options("/v1/chat/completions")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&s, preflight).await.0, StatusCode::FORBIDDEN);

    let s = state_with(|c| c.cors_origins = vec!["*".into()]);
    let (st, _, _) = send(&s, req("/v1/chat/completions", "https://any.example")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

fn get_with_host(path: &str, host: &str) -> Request<Body> {
    Request::get(path)
        .header("host", host)
        .body(Body::empty())
        .unwrap()
}

/// Finding 2c: on a loopback bind only loopback names (and IP literals) are served, so a
/// rebinding name (`evil.example` resolving to 127.0.0.1) reads nothing; `allowed_hosts`
/// adds names, `*` turns the check off, and a non-loopback bind checks only once set.
#[tokio::test]
async fn loopback_binds_serve_only_loopback_host_names() {
    let s = state_with(|_| {});
    for host in [
        "127.0.0.1:8000",
        "localhost:8000",
        "LOCALHOST",
        "app.localhost:8000",
        "[::1]:8000",
    ] {
        assert_eq!(
            send(&s, get_with_host("/admin/rules", host)).await.0,
            StatusCode::OK,
            "{host}"
        );
    }
    for host in [
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
    ] {
        let (st, _, v) = send(&s, get_with_host("/admin/rules", host)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{host}: {v}");
        assert_eq!(v["error"]["code"], "host_not_allowed", "{v}");
        let (st, _, _) = send(&s, get_with_host("/health", host)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{host}");
    }
    let req = Request::post("/v1/messages")
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .body(Body::from(chat_body()))
        .unwrap();
    let (st, _, v) = send(&s, req).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(v["type"], "error", "Anthropic shape: {v}");

    let s =
        state_with(|c| c.allowed_hosts = vec!["gw.example.com".into(), "*.corp.example".into()]);
    for (host, want) in [
        ("gw.example.com:8000", StatusCode::OK),
        ("GW.example.com", StatusCode::OK),
        ("a.corp.example", StatusCode::OK),
        ("localhost", StatusCode::OK),
        ("evil.example", StatusCode::FORBIDDEN),
    ] {
        assert_eq!(
            send(&s, get_with_host("/health", host)).await.0,
            want,
            "{host}"
        );
    }
    let s = state_with(|c| c.allowed_hosts = vec!["*".into()]);
    assert_eq!(
        send(&s, get_with_host("/health", "evil.example")).await.0,
        StatusCode::OK
    );
    let s = state_with(|c| {
        c.listen = "0.0.0.0:8000".parse().unwrap();
        c.allow_unauthenticated = true;
    });
    assert_eq!(
        send(&s, get_with_host("/health", "gw.example.com")).await.0,
        StatusCode::OK
    );
}

#[test]
fn allowed_hosts_are_checked_at_start() {
    for bad in [
        "https://gw.example.com",
        "gw.example.com:8000",
        "",
        "*.",
        "a/b",
    ] {
        let c = Config {
            allowed_hosts: vec![bad.to_string()],
            ..Config::default()
        };
        let err = c.compile().expect_err(bad).to_string();
        assert!(err.contains("allowed_hosts"), "{bad}: {err}");
    }
    let mut c = Config::default();
    c.http.max_connections = 0;
    c.http.header_timeout = 0.0;
    let err = c.compile().expect_err("invalid").to_string();
    assert!(err.contains("http.max_connections"), "{err}");
    assert!(err.contains("http.header_timeout"), "{err}");
}

/// Finding 3: a body that stops arriving is a 408 in the endpoint's shape once
/// `http.body_timeout` is over, and the connection is not reused.
#[tokio::test]
async fn a_stalled_body_is_a_408() {
    let s = state_with(|c| c.http.body_timeout = 0.3);
    let stream = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"model\":"))
    })
    .chain(futures_util::stream::pending());
    let req = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let t = Instant::now();
    let (st, h, v) = tokio::time::timeout(Duration::from_secs(3), send(&s, req))
        .await
        .expect("a stalled body ends");
    assert_eq!(st, StatusCode::REQUEST_TIMEOUT, "{v}");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(h["connection"], "close");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

use futures_util::StreamExt as _;

fn fast(tweak: impl FnOnce(&mut Config) + Send + 'static) -> Opts {
    Opts {
        tweak: Box::new(move |c| {
            c.http.header_timeout = 0.5;
            c.http.body_timeout = 0.5;
            c.http.idle_timeout = 0.5;
            tweak(c);
        }),
        ..Opts::default()
    }
}

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes (or `limit`): the bytes and when it closed.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(t.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

/// Finding 3: slowloris. A head sent a byte at a time gets a 408 and the connection closes
/// within the header timeout (+ slack); one that sends nothing is closed too.
#[tokio::test]
async fn slow_request_heads_are_cut_at_the_header_timeout() {
    let s = TestServer::start(fast(|_| {})).await;
    let mut tcp = connect(&s).await;
    let (mut rd, mut wr) = tcp.split();
    let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let t = Instant::now();
    let writer = async {
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let reader = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
        out
    };
    let ((), out) = tokio::join!(writer, reader);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(tcp);

    let mut silent = connect(&s).await;
    let (out, closed) = read_until_closed(&mut silent, Duration::from_secs(3)).await;
    let closed = closed.expect("a silent connection is closed");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(closed < Duration::from_secs(2), "{closed:?}");
}

/// Finding 3: an unfinished body is a 408 in the endpoint's shape within the body timeout,
/// and the connection closes.
#[tokio::test]
async fn an_unfinished_body_is_a_408_over_tcp() {
    let s = TestServer::start(fast(|_| {})).await;
    let mut tcp = connect(&s).await;
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let (out, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("\"code\":\"request_timeout\""),
        "OpenAI shape: {text}"
    );
    assert!(
        closed.expect("closed") < Duration::from_secs(2),
        "{closed:?}"
    );
}

/// Finding 3: a keep-alive connection with no next request is closed after the idle
/// timeout; requests on it before that are served.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let s = TestServer::start(fast(|c| c.http.idle_timeout = 1.0)).await;
    let mut tcp = connect(&s).await;
    let req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for _ in 0..2 {
        tcp.write_all(req).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("{\"status\":\"ok\"}"), "{text}");
        // Within the idle timeout (and past the header timeout), the connection is reused.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (out, closed) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(out.is_empty());
    let closed = closed.expect("closed when idle");
    assert!(closed < Duration::from_millis(1500), "{closed:?}");
}

/// Finding 3: over `http.max_connections`, a new connection gets a 503 at once, and once
/// the idle ones have timed out `/health` works again.
#[tokio::test]
async fn the_connection_cap_refuses_quickly_and_recovers() {
    let s = TestServer::start(fast(|c| {
        c.http.max_connections = 8;
        c.http.header_timeout = 1.0;
    }))
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(&s).await);
    }
    // The server has accepted them all once one over the cap is refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let mut ninth = connect(&s).await;
    let (out, closed) = read_until_closed(&mut ninth, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(
        closed.is_some() && t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The held ones time out (header timeout 1 s); then the gateway serves again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
}

/// Finding 3: a half-sent request does not hold up shutdown beyond the header timeout
/// (before: the grace period, then the abort flush).
#[tokio::test]
async fn a_half_sent_request_does_not_delay_shutdown() {
    let s = TestServer::start(fast(|c| {
        c.http.header_timeout = 1.0;
        c.shutdown_timeout = 10.0;
    }))
    .await;
    let mut tcp = connect(&s).await;
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127")
        .await
        .unwrap();
    let mut idle = connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    s.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(1)).await;
    assert!(closed.is_some());
}

/// Finding 3: an HTTP/2 prior-knowledge preface (h2c) gets an HTTP/2 GOAWAY with
/// HTTP_1_1_REQUIRED instead of a silent close; `Upgrade: h2c` is ignored and the request
/// is served over HTTP/1.1; a head over `http.max_header_bytes` is hyper's 431.
#[tokio::test]
async fn h2c_and_oversized_heads_get_clear_answers() {
    let s = TestServer::start(fast(|c| c.http.max_header_bytes = 4096)).await;
    let mut tcp = connect(&s).await;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(closed.is_some());
    assert!(out.len() >= 9 + 17, "{out:?}");
    assert_eq!(out[3], 0x04, "a SETTINGS frame first: {out:?}");
    let goaway = &out[9..];
    assert_eq!(goaway[3], 0x07, "then GOAWAY: {out:?}");
    assert_eq!(&goaway[13..17], &[0, 0, 0, 0x0d], "HTTP_1_1_REQUIRED");

    let mut tcp = connect(&s).await;
    tcp.write_all(
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let mut tcp = connect(&s).await;
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    tcp.write_all(big.as_bytes()).await.unwrap();
    let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}
