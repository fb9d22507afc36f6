//! Web search and web fetch served by the CLI's own WebSearch / WebFetch: ccgate → the
//! REAL `claude` binary → the loopback mock Messages API, which emulates the search the
//! real API runs on its side (`web_search` scenario). The operator switches and the
//! refusals by name need no CLI (the fake one; nothing is spawned). Skipped loudly without
//! `CCGATE_REAL_CLAUDE` (fails under CI instead).

use serde_json::{json, Value};

use crate::harness::{get_text, post, sse_events, Opts, TestServer};
use crate::mock_api::{MockApi, WEB_RESULTS};
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn search_tool(extra: Value) -> Value {
    let mut t = json!({"type": "web_search_20250305", "name": "web_search"});
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    t
}

fn messages_with(tools: Value, stream: bool) -> Value {
    json!({"model": "sonnet", "max_tokens": 512, "stream": stream, "tools": tools,
           "messages": [{"role": "user", "content": "What is Rust? Search the web."}]})
}

/// The value of the metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix}"))
}

/// The mock's main-loop requests (those offering the CLI's WebSearch / WebFetch).
fn main_requests(mock: &MockApi, tool: &str) -> Vec<Vec<String>> {
    mock.message_requests()
        .iter()
        .map(|r| r.tool_names())
        .filter(|names| names.iter().any(|n| n == tool))
        .collect()
}

#[tokio::test]
async fn real_cli_web_search_on_the_messages_api() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("web_search")), None, |_| {}).await;

    let (st, _, body) = post(
        &s,
        "/v1/messages",
        &messages_with(json!([search_tool(json!({"max_uses": 3}))]), false),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    let content = v["content"].as_array().expect("content");
    let kinds: Vec<&str> = content.iter().filter_map(|b| b["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["server_tool_use", "web_search_tool_result", "text"],
        "{body}"
    );
    assert_eq!(content[0]["name"], "web_search");
    assert_eq!(content[0]["input"], json!({"query": "rust"}));
    let id = content[0]["id"].as_str().unwrap();
    assert!(id.starts_with("srvtoolu_"), "{id}");
    assert_eq!(content[1]["tool_use_id"], id);
    let urls: Vec<&str> = content[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, WEB_RESULTS.map(|(_, u)| u));
    // The results reached the model as the CLI's WebSearch tool result (the mock echoes
    // it), and the answer's links to the sources are its citations.
    let text = content[2]["text"].as_str().unwrap();
    assert!(text.contains("Web search results for query"), "{text}");
    let cited: Vec<&str> = content[2]["citations"]
        .as_array()
        .unwrap_or_else(|| panic!("no citations: {body}"))
        .iter()
        .map(|c| c["url"].as_str().unwrap())
        .collect();
    assert!(cited.contains(&WEB_RESULTS[0].1), "{cited:?}");
    assert_eq!(
        content[2]["citations"][0]["type"],
        "web_search_result_location"
    );
    assert_eq!(v["usage"]["server_tool_use"]["web_search_requests"], 1);
    assert_eq!(v["stop_reason"], "end_turn");

    // The CLI was given WebSearch and none other of its tools; its search went to the API
    // as the server tool, as the real API runs it.
    let main = main_requests(&mock, "WebSearch");
    assert!(!main.is_empty());
    for names in &main {
        for own in [
            "Bash", "Read", "Write", "Edit", "WebFetch", "Task", "Glob", "Grep",
        ] {
            assert!(!names.iter().any(|n| n == own), "{own} offered: {names:?}");
        }
    }
    let side: Vec<Value> = mock
        .message_requests()
        .into_iter()
        .filter_map(|r| {
            r.body["tools"]
                .as_array()?
                .iter()
                .find(|t| t["type"] == "web_search_20250305")
                .cloned()
        })
        .collect();
    assert_eq!(side.len(), 1, "one search side query");

    // Streamed: the blocks in order, the search between the text blocks' events.
    let (st, _, body) = post(
        &s,
        "/v1/messages",
        &messages_with(json!([search_tool(json!({}))]), true),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let events: Vec<Value> = sse_events(&body)
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .collect();
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .filter_map(|e| e["content_block"]["type"].as_str())
        .collect();
    assert_eq!(
        started,
        ["server_tool_use", "web_search_tool_result", "text"],
        "{body}"
    );
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(delta["usage"]["server_tool_use"]["web_search_requests"], 1);

    let m = get_text(&s, "/metrics").await;
    assert_eq!(metric(&m, "ccgate_web_runs_total{tool=\"search\"}"), 2.0);
    assert_eq!(metric(&m, "ccgate_web_calls_total{tool=\"search\"}"), 2.0);
}

#[tokio::test]
async fn real_cli_web_search_on_the_openai_apis_and_max_uses() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("web_search")), None, |_| {}).await;

    // Responses, as Codex CLI sends its tool.
    let (st, _, body) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "What is Rust?",
                "tools": [{"type": "web_search", "external_web_access": false}]}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    let output = v["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "web_search_call", "{body}");
    assert_eq!(output[0]["status"], "completed");
    assert_eq!(output[0]["action"]["query"], "rust");
    assert_eq!(
        output[0]["action"]["sources"][0]["url"], WEB_RESULTS[0].1,
        "{body}"
    );
    let message = output.iter().find(|i| i["type"] == "message").unwrap();
    let text = message["content"][0]["text"].as_str().unwrap();
    let notes = message["content"][0]["annotations"].as_array().unwrap();
    assert!(!notes.is_empty(), "{body}");
    let first = &notes[0];
    assert_eq!(first["type"], "url_citation");
    let (a, b) = (
        first["start_index"].as_u64().unwrap() as usize,
        first["end_index"].as_u64().unwrap() as usize,
    );
    let cited: String = text.chars().skip(a).take(b - a).collect();
    assert!(cited.contains(first["url"].as_str().unwrap()), "{cited}");

    // Chat Completions.
    let (st, _, body) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "sonnet", "web_search_options": {},
                "messages": [{"role": "user", "content": "What is Rust?"}]}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    let notes = v["choices"][0]["message"]["annotations"]
        .as_array()
        .unwrap();
    assert_eq!(notes[0]["type"], "url_citation", "{body}");
    assert!(notes[0]["url_citation"]["url"].as_str().is_some());

    // max_uses: 1 lets the CLI make one WebSearch call; its second is refused by the CLI
    // and never reaches the API.
    let mock2 = MockApi::start().await;
    let (s2, _home2) = real_server_with(
        real_claude().unwrap(),
        Some(mock2.url("web_search:twice")),
        None,
        |_| {},
    )
    .await;
    let (st, _, body) = post(
        &s2,
        "/v1/messages",
        &messages_with(json!([search_tool(json!({"max_uses": 1}))]), false),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    let results: Vec<&Value> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "web_search_tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{body}");
    assert!(results[0]["content"].is_array());
    assert_eq!(
        results[1]["content"]["error_code"], "max_uses_exceeded",
        "{body}"
    );
    let side = mock2
        .message_requests()
        .iter()
        .filter(|r| r.body.to_string().contains("web_search_20250305"))
        .count();
    assert_eq!(side, 1, "the second call must not search");
    assert_eq!(v["usage"]["server_tool_use"]["web_search_requests"], 1);
}

/// `%`-escapes what would break the mock's scenario path.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn real_cli_web_fetch_never_reaches_a_loopback_address() {
    let Some(exe) = real_claude() else { return };
    // The page the model asks for: a loopback listener that counts connections.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/secret",
        target.local_addr().unwrap().port()
    );
    let mock = MockApi::start().await;
    let scenario = format!("web_fetch:{}", escape(&url));
    let (s, _home) = real_server_with(exe, Some(mock.url(&scenario)), None, |c| {
        c.web.fetch = true;
        // Offline the CLI's domain check (api.anthropic.com) cannot answer; without it
        // the CLI goes straight to the fetch, which is what the proxy must stop.
        c.cli.args = vec![
            "--settings".into(),
            r#"{"skipWebFetchPreflight":true}"#.into(),
        ];
    })
    .await;
    let (st, _, body) = post(
        &s,
        "/v1/messages",
        &messages_with(
            json!([{"type": "web_fetch_20250910", "name": "web_fetch"}]),
            false,
        ),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    let content = v["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "server_tool_use", "{body}");
    assert_eq!(content[0]["name"], "web_fetch");
    assert_eq!(content[0]["input"]["url"], url);
    assert_eq!(content[1]["type"], "web_fetch_tool_result");
    assert_eq!(
        content[1]["content"]["type"], "web_fetch_tool_error",
        "{body}"
    );
    // The model was told the egress proxy blocked it.
    let text = content.last().unwrap()["text"].as_str().unwrap();
    assert!(text.contains("EGRESS_BLOCKED"), "{text}");
    let m = get_text(&s, "/metrics").await;
    assert!(metric(&m, "ccgate_web_fetch_refused_total") >= 1.0, "{m}");
    assert_eq!(metric(&m, "ccgate_web_fetch_tunnels_total"), 0.0);
    // Nothing connected to the loopback page: a connection would be queued by now (the
    // proxy refuses before it would connect, and the CLI has finished).
    let reached = tokio::time::timeout(std::time::Duration::from_millis(1), target.accept()).await;
    assert!(reached.is_err(), "the loopback address was reached");
    // The CLI was given WebFetch and no other of its tools.
    for names in main_requests(&mock, "WebFetch") {
        assert!(
            !names.iter().any(|n| n == "WebSearch" || n == "Bash"),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn web_tools_off_or_unkeepable_promises_are_refused_by_name() {
    // The default configuration: search on, fetch off.
    let s = TestServer::start(Opts::default()).await;
    let cases = [
        (
            messages_with(
                json!([{"type": "web_fetch_20250910", "name": "web_fetch"}]),
                false,
            ),
            "web.fetch",
            "tools",
        ),
        (
            messages_with(
                json!([search_tool(json!({"allowed_domains": ["example.com"]}))]),
                false,
            ),
            "not supported",
            "tools[0].allowed_domains",
        ),
        (
            messages_with(
                json!([search_tool(
                    json!({"user_location": {"type": "approximate"}})
                )]),
                false,
            ),
            "not supported",
            "tools[0].user_location",
        ),
        (
            messages_with(json!([search_tool(json!({"max_uses": 0}))]), false),
            "max_uses",
            "tools[0].max_uses",
        ),
    ];
    for (body, says, param) in &cases {
        let (st, _, text) = post(&s, "/v1/messages", body).await;
        assert_eq!(st, 400, "{text}");
        // Anthropic's messages start with the field's dotted path.
        let message = json_of(&text)["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let dotted = param.replace('[', ".").replace(']', "");
        assert!(message.contains(says), "{param}: {text}");
        assert!(message.starts_with(&format!("{dotted}: ")), "{text}");
    }
    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "x",
                "tools": [{"type": "web_search", "filters": {"allowed_domains": ["a.com"]}}]}),
    )
    .await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("tools[0].filters"), "{text}");
    let (st, _, text) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "sonnet", "web_search_options": {"user_location": {"type": "approximate"}},
                "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("web_search_options.user_location"), "{text}");

    // web.search: false refuses every API's web search, naming the setting.
    let off = TestServer::start(Opts {
        tweak: Box::new(|c| c.web.search = false),
        ..Opts::default()
    })
    .await;
    for (path, body) in [
        (
            "/v1/messages",
            messages_with(json!([search_tool(json!({}))]), false),
        ),
        (
            "/v1/responses",
            json!({"model": "sonnet", "input": "x", "tools": [{"type": "web_search_preview"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "sonnet", "web_search_options": {},
                   "messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        let (st, _, text) = post(&off, path, &body).await;
        assert_eq!(st, 400, "{path}: {text}");
        assert!(text.contains("web.search: false"), "{path}: {text}");
    }
    let m = get_text(&off, "/metrics").await;
    assert_eq!(metric(&m, "ccgate_web_runs_total{tool=\"search\"}"), 0.0);
}

/// A fake operator's proxy: keeps each request head, answers `200` and closes (no TLS
/// behind it: what the CLI then gets is a failed connection).
async fn fake_operator_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://ops:s3cret@{addr}"), heads)
}

#[tokio::test]
async fn real_cli_web_fetch_and_its_api_traffic_go_through_the_operators_proxy() {
    let Some(exe) = real_claude() else { return };
    let (proxy_url, heads) = fake_operator_proxy().await;
    // Basic base64("ops:s3cret").
    let auth = "proxy-authorization: Basic b3BzOnMzY3JldA==";

    // 1. A public page: checked here, then tunnelled through the operator's proxy with
    //    its credentials. A loopback page is refused before the operator's proxy sees it.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let loopback = format!(
        "https://127.0.0.1:{}/secret",
        target.local_addr().unwrap().port()
    );
    let fetch = json!([{"type": "web_fetch_20250910", "name": "web_fetch"}]);
    for (url, public) in [("https://1.1.1.1/page", true), (loopback.as_str(), false)] {
        let mock = MockApi::start().await;
        let scenario = format!("web_fetch:{}", escape(url));
        let upstream = proxy_url.clone();
        let (s, _home) = real_server_with(exe.clone(), Some(mock.url(&scenario)), None, |c| {
            c.web.fetch = true;
            c.web.upstream_proxy = Some(upstream);
            c.cli.args = vec![
                "--settings".into(),
                r#"{"skipWebFetchPreflight":true}"#.into(),
            ];
        })
        .await;
        let before = heads.lock().unwrap().len();
        let (st, _, body) = post(&s, "/v1/messages", &messages_with(fetch.clone(), false)).await;
        assert_eq!(st, 200, "{body}");
        let v = json_of(&body);
        assert_eq!(v["content"][1]["type"], "web_fetch_tool_result", "{body}");
        // The mock (a plain-http API on loopback) was reached directly.
        assert!(!main_requests(&mock, "WebFetch").is_empty());
        let new: Vec<String> = heads.lock().unwrap()[before..].to_vec();
        let m = get_text(&s, "/metrics").await;
        if public {
            assert!(
                new.iter()
                    .any(|h| h.starts_with("CONNECT 1.1.1.1:443 ") && h.contains(auth)),
                "{new:?}"
            );
            assert!(metric(&m, "ccgate_web_fetch_tunnels_total") >= 1.0, "{m}");
        } else {
            // (The CLI's own calls to api.anthropic.com may pass it, as they should.)
            assert!(
                !new.iter().any(|h| h.contains("127.0.0.1")),
                "the operator's proxy saw {new:?}"
            );
            assert!(metric(&m, "ccgate_web_fetch_refused_total") >= 1.0, "{m}");
            let text = v["content"].as_array().unwrap().last().unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(text.contains("EGRESS_BLOCKED"), "{text}");
        }
    }
    let reached = tokio::time::timeout(std::time::Duration::from_millis(1), target.accept()).await;
    assert!(reached.is_err(), "the loopback page was reached");

    // 2. An https API: the fetching run's API traffic goes through the egress proxy on to
    //    the operator's proxy, by name (it does not resolve here). Nothing answers TLS
    //    behind the fake proxy, so the run fails; what matters is where it went.
    let before = heads.lock().unwrap().len();
    let upstream = proxy_url.clone();
    let (s, _home) = real_server_with(exe, None, None, |c| {
        c.web.fetch = true;
        c.web.upstream_proxy = Some(upstream);
        c.cli.env.insert(
            "ANTHROPIC_BASE_URL".into(),
            "https://api.ccgate-test.invalid".into(),
        );
        c.cli
            .env
            .insert("ANTHROPIC_API_KEY".into(), "test-key".into());
    })
    .await;
    let (st, _, body) = post(&s, "/v1/messages", &messages_with(fetch, false)).await;
    assert_ne!(st, 200, "{body}");
    let new: Vec<String> = heads.lock().unwrap()[before..].to_vec();
    assert!(
        new.iter()
            .any(|h| h.starts_with("CONNECT api.ccgate-test.invalid:443 ") && h.contains(auth)),
        "{new:?}"
    );
}
