//! Loopback mock of the Anthropic Messages API, used to drive the REAL `claude`
//! binary fully offline (spec `cli.md` §5, §13).
//!
//! The behaviour is chosen per request by a path prefix: point the CLI at
//! `ANTHROPIC_BASE_URL={base_url}/s/<scenario>` (see [`MockApi::url`]) and it
//! calls `POST /s/<scenario>/v1/messages?beta=true`. Scenarios:
//!
//! | scenario          | reply                                                              |
//! |-------------------|--------------------------------------------------------------------|
//! | `ok[:text]`       | SSE text answer (JSON when `stream` is false); text percent-decoded |
//! | `slow[:text]`     | same, deltas 300 ms apart                                          |
//! | `maxtok[:text]`   | like `ok`, but cut off: `stop_reason: max_tokens`                  |
//! | `auth401` `perm403` `notfound404` `bad400` `rate429` `server500` `overload529` | JSON API error (`rate429` adds `retry-after: 1`) |
//! | `revoked403` | 403 `permission_error` "OAuth token has been revoked…" (the CLI's `token_revoked`) |
//! | `terms400` | 400 "We've updated our Consumer Terms…" with `error.details.error_code` [`TERMS_ERROR_CODE`] |
//! | `hang`            | never sends response headers                                       |
//! | `stall`           | `message_start` + one delta, then nothing                          |
//! | `garbage`         | 200 with non-SSE junk                                              |
//! | `midstream_error` | two deltas then an SSE `error` event (a non-streaming retry succeeds) |
//! | `read_file` | a request offering the tool `mcp__cg__Read` whose user text names `READ:<path>`: a call of that tool with `{"file_path": <path>}`; a request whose last user message holds `tool_result` blocks gets [`Answer::EchoResults`]; anything else the default text (a client CLI's side requests) |
//! | `tool_call:<names>[:<text>]` | a model tool call: optional text, then one `tool_use` per comma-separated name (two names = parallel calls), input `{"q":"x"}`, `stop_reason: tool_use`; a request whose last user message holds `tool_result` blocks gets [`Answer::EchoResults`] instead |
//! | `script:<name>`   | the answers registered with [`MockApi::script`], one per request in order (the last repeats) |
//! | `schema[:json]`   | when the request offers the `StructuredOutput` tool (`--json-schema`) and no tool result came back yet: a call of it with the JSON as input (`input_json_delta` fragments); otherwise text |
//! | `web_search[:query]` | the real API's server-side search, emulated: a request offering the `web_search_20250305` server tool (the CLI's WebSearch asks so) gets `server_tool_use` + `web_search_tool_result` (two results, [`WEB_RESULTS`]) + text, `usage.server_tool_use.web_search_requests: 1`; a request offering the CLI's `WebSearch` tool gets a call of it with `{"query": <query>}` (default `rust`); a request with tool results [`Answer::EchoResults`] (`web_search:twice`: a second call after the first result) |
//! | `web_fetch:<url>` | a request offering the CLI's `WebFetch` tool gets a call of it with `{"url": <url>, "prompt": "Summarize"}`; a request with tool results [`Answer::EchoResults`]; any other the default text (the CLI's summarizing side query) |
//! | `thinking[:text]` | a thinking block (`thinking_delta`s, `signature_delta` `sig_mock`) before the text; 5 of the 9 output tokens are thinking |
//!
//! Tool calls come in SSE (as the CLI asks) and JSON, with ids `toolu_01…`
//! ([`tool_use_id`]). [`RecordedRequest::tool_results`] gives the `tool_result` blocks a
//! request carried, so a test can assert that a client's result reached the model as a
//! real tool result.
//! | `unified:<5h>,<7d>[,<overage status>[,in_use]]` | like `ok`, with the unified rate-limit headers of an allowed subscription request (utilizations 0-1; the 5-hour window resets in an hour, the 7-day one in three days) |
//! | `usage429:<epoch s>` | until then a subscription usage limit: 429 with the unified rate-limit headers (`anthropic-ratelimit-unified-status: rejected`, reset = the epoch); from then on like `ok` |
//!
//! Every request (any path, any method) is recorded; anything other than
//! `POST /s/<scenario>/v1/messages` gets a 404 JSON error.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// The results of the `web_search` scenario's emulated search: (title, url).
pub const WEB_RESULTS: [(&str, &str); 2] = [
    ("Rust Programming Language", "https://www.rust-lang.org/"),
    ("The Rust Book", "https://doc.rust-lang.org/book/"),
];

/// Text answered by `ok` / `slow` when the scenario carries no `:text` suffix.
pub const DEFAULT_TEXT: &str = "Hello from the mock API.";

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string, e.g. `/s/ok/v1/messages`.
    pub path: String,
    /// Raw query string, e.g. `beta=true`.
    pub query: Option<String>,
    /// Header names lowercased (as `http` stores them).
    pub headers: BTreeMap<String, String>,
    /// Parsed JSON body; `Value::Null` if empty, `Value::String` if not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The `tool_result` blocks of the last user message of the body.
    pub fn tool_results(&self) -> Vec<Value> {
        last_user_tool_results(&self.body)
    }

    /// The tool names offered in the body's `tools`.
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One scripted answer of a `script:<name>` scenario ([`MockApi::script`]).
#[derive(Debug, Clone)]
pub enum Answer {
    /// A text answer (`end_turn`).
    Text(String),
    /// Optional text, then one `tool_use` block per `(name, input)`; `stop_reason: tool_use`.
    Tools {
        text: Option<String>,
        calls: Vec<(String, Value)>,
    },
    /// A text answer reporting the `tool_result` blocks of the last user message:
    /// `seen: <r1> | <r2>`, each `<text>` or `error: <text>` (text blocks joined by a
    /// space, ` [image]` per image block); `seen: none` without any.
    EchoResults,
}

/// The id of tool call `i` in answer `n`: `toolu_01` + 22 characters, like the API's.
pub fn tool_use_id(n: u64, i: usize) -> String {
    format!("toolu_01{:0>22}", format!("Mock{n}x{i}"))
}

/// Registered scripts: answers and the index of the next one.
type Scripts = Arc<Mutex<BTreeMap<String, (Vec<Answer>, usize)>>>;

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    shutdown: watch::Receiver<bool>,
    counter: Arc<AtomicU64>,
    scripts: Scripts,
}

/// A running mock server; stops when dropped.
pub struct MockApi {
    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub base_url: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    scripts: Scripts,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl MockApi {
    /// Binds `127.0.0.1:0` and serves in a background tokio task.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock API: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock API: local_addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let scripts = Arc::new(Mutex::new(BTreeMap::new()));
        let shared = Shared {
            requests: requests.clone(),
            shutdown: shutdown_rx,
            counter: Arc::new(AtomicU64::new(0)),
            scripts: scripts.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("mock API server error: {e}");
            }
        });
        MockApi {
            base_url: format!("http://{addr}"),
            requests,
            scripts,
            shutdown,
            server,
        }
    }

    /// Registers the answers of scenario `script:<name>` (replacing earlier ones): each
    /// request takes the next answer, the last one repeats. Panics on an empty list.
    pub fn script(&self, name: &str, answers: Vec<Answer>) {
        assert!(!answers.is_empty(), "mock API: empty script {name:?}");
        self.scripts
            .lock()
            .expect("mock API: scripts lock")
            .insert(name.to_owned(), (answers, 0));
    }

    /// The `ANTHROPIC_BASE_URL` to use for `scenario`: `{base_url}/s/{scenario}`.
    pub fn url(&self, scenario: &str) -> String {
        format!("{}/s/{scenario}", self.base_url)
    }

    /// Snapshot of every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .expect("mock API: requests lock")
            .clone()
    }

    /// Only the `POST …/v1/messages` calls.
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/v1/messages"))
            .collect()
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        // Wake `hang` / `stall` handlers so their connections close, then stop accepting.
        let _ = self.shutdown.send(true);
        self.server.abort();
    }
}

async fn handle(State(st): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let path = parts.uri.path().to_owned();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    st.requests
        .lock()
        .expect("mock API: requests lock")
        .push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body: body.clone(),
        });
    let n = st.counter.fetch_add(1, Ordering::SeqCst) + 1;

    let scenario = path
        .strip_prefix("/s/")
        .and_then(|rest| rest.strip_suffix("/v1/messages"))
        .filter(|s| !s.contains('/'));
    let Some(scenario) = scenario.filter(|_| parts.method == Method::POST) else {
        return error(
            n,
            404,
            "not_found_error",
            &format!("mock: no route for {path}"),
        );
    };
    let scenario = percent_decode(scenario);
    let (name, text) = match scenario.split_once(':') {
        Some((name, text)) => (name, text),
        None => (scenario.as_str(), DEFAULT_TEXT),
    };
    let model = body["model"].as_str().unwrap_or("claude-mock").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let ms = |v| Duration::from_millis(v);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let usage_reset = (name == "usage429").then(|| text.parse::<u64>().unwrap_or(0));
    let (name, text) = match usage_reset {
        Some(reset) if now < reset => return usage_limit(n, reset),
        Some(_) => ("ok", DEFAULT_TEXT),
        None => (name, text),
    };
    // ---- an answer with the unified rate-limit headers of a subscription
    if name == "unified" {
        let headers = unified_headers(text, now);
        let mut resp = if stream {
            sse(
                n,
                st.shutdown,
                sse_frames(n, &model, DEFAULT_TEXT, "end_turn"),
                ms(0),
                End::Close,
            )
        } else {
            message_json(n, &model, DEFAULT_TEXT, "end_turn")
        };
        for (k, v) in headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(k, v);
            }
        }
        return resp;
    }
    // ---- structured output and thinking scenarios
    if let Some(blocks) = structured_or_thinking(name, text, &body) {
        let stop = if matches!(blocks.first(), Some(MockBlock::Tool(..))) {
            "tool_use"
        } else {
            "end_turn"
        };
        if !stream {
            return message_json_blocks(n, &model, &blocks, stop);
        }
        return sse(
            n,
            st.shutdown,
            sse_frames_blocks(n, &model, &blocks, stop),
            ms(0),
            End::Close,
        );
    }
    match name {
        "auth401" => error(n, 401, "authentication_error", "invalid x-api-key"),
        "perm403" => error(
            n,
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        "notfound404" => error(n, 404, "not_found_error", &format!("model: {model}")),
        "bad400" => error(
            n,
            400,
            "invalid_request_error",
            "messages: text content blocks must be non-empty",
        ),
        "rate429" => error(
            n,
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        "server500" => error(n, 500, "api_error", "Internal server error"),
        "revoked403" => error(
            n,
            403,
            "permission_error",
            "OAuth token has been revoked. Please obtain a new token.",
        ),
        "terms400" => coded_error(
            n,
            400,
            "invalid_request_error",
            "We've updated our Consumer Terms and Privacy Policy. Please review and accept them at https://claude.ai/settings/data-privacy-controls to continue.",
            TERMS_ERROR_CODE,
        ),
        "overload529" => error(n, 529, "overloaded_error", "Overloaded"),
        "hang" => {
            wait_shutdown(st.shutdown).await;
            error(n, 503, "api_error", "mock shutting down")
        }
        "garbage" => with_request_id(
            Response::builder()
                .header("content-type", "text/plain")
                .body(Body::from(
                    "this is not SSE\n<html>oops</html>\n\0\u{1}junk\n",
                )),
            n,
        ),
        "maxtok" if !stream => message_json(n, &model, text, "max_tokens"),
        "ok" | "slow" | "stall" | "midstream_error" if !stream => {
            message_json(n, &model, text, "end_turn")
        }
        "read_file" => {
            let asked = body.to_string();
            let path = asked.split("READ:").nth(1).map(|rest| {
                rest.chars()
                    .take_while(|c| !c.is_whitespace() && *c != '\\' && *c != '"')
                    .collect::<String>()
            });
            let offered = body["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "mcp__cg__Read"));
            let answer = if !last_user_tool_results(&body).is_empty() {
                Answer::EchoResults
            } else {
                match path.filter(|_| offered) {
                    Some(p) => Answer::Tools {
                        text: None,
                        calls: vec![("mcp__cg__Read".into(), json!({"file_path": p}))],
                    },
                    None => Answer::Text(DEFAULT_TEXT.into()),
                }
            };
            answer_response(n, st.shutdown, &model, &body, &answer, stream)
        }
        "web_search" | "web_fetch" => {
            let offers = |pred: &dyn Fn(&Value) -> bool| {
                body["tools"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(pred))
            };
            if name == "web_search"
                && offers(&|t| t["type"].as_str().is_some_and(|k| k.starts_with("web_search_")))
            {
                let asked = body.to_string();
                let query = asked
                    .split("query: ")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("rust")
                    .to_owned();
                return web_search_answer(n, st.shutdown, &model, &query, stream);
            }
            let tool = if name == "web_search" { "WebSearch" } else { "WebFetch" };
            // `web_search:twice`: a second search after the first one's results.
            let results = body["messages"].to_string().matches("\"tool_result\"").count();
            let again = name == "web_search" && text == "twice" && results == 1;
            let answer = if !last_user_tool_results(&body).is_empty() && !again {
                Answer::EchoResults
            } else if offers(&|t| t["name"] == tool) {
                let query = if text == DEFAULT_TEXT { "rust" } else { text };
                let input = if name == "web_search" {
                    json!({"query": query})
                } else {
                    json!({"url": text, "prompt": "Summarize"})
                };
                Answer::Tools {
                    text: None,
                    calls: vec![(tool.to_owned(), input)],
                }
            } else {
                Answer::Text(DEFAULT_TEXT.into())
            };
            answer_response(n, st.shutdown, &model, &body, &answer, stream)
        }
        "tool_call" | "script" => {
            let answer = if name == "script" {
                let mut scripts = st.scripts.lock().expect("mock API: scripts lock");
                match scripts.get_mut(text) {
                    Some((answers, next)) => {
                        let a = answers[(*next).min(answers.len() - 1)].clone();
                        *next += 1;
                        a
                    }
                    None => {
                        return error(
                            n,
                            404,
                            "not_found_error",
                            &format!("mock: no script {text:?}"),
                        )
                    }
                }
            } else if !last_user_tool_results(&body).is_empty() {
                Answer::EchoResults
            } else {
                let (names, said) = match text.split_once(':') {
                    Some((names, said)) => (names, Some(said.to_owned())),
                    None => (text, None),
                };
                Answer::Tools {
                    text: said,
                    calls: names
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| (s.to_owned(), json!({"q": "x"})))
                        .collect(),
                }
            };
            answer_response(n, st.shutdown, &model, &body, &answer, stream)
        }
        "maxtok" => sse(
            n,
            st.shutdown,
            sse_frames(n, &model, text, "max_tokens"),
            ms(0),
            End::Close,
        ),
        "ok" => sse(
            n,
            st.shutdown,
            sse_frames(n, &model, text, "end_turn"),
            ms(0),
            End::Close,
        ),
        "slow" => sse(
            n,
            st.shutdown,
            sse_frames(n, &model, text, "end_turn"),
            ms(300),
            End::Close,
        ),
        "stall" => {
            let frames = sse_frames(n, &model, text, "end_turn")
                .into_iter()
                .take(4)
                .collect();
            sse(n, st.shutdown, frames, ms(0), End::Stall)
        }
        "midstream_error" => {
            let mut frames: Vec<Bytes> = sse_frames(n, &model, text, "end_turn")
                .into_iter()
                .take(5)
                .collect();
            frames.push(frame(
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            sse(n, st.shutdown, frames, ms(50), End::Close)
        }
        other => error(
            n,
            404,
            "not_found_error",
            &format!("mock: unknown scenario {other:?}"),
        ),
    }
}

/// What to do after the last SSE frame.
enum End {
    Close,
    Stall,
}

fn sse(
    n: u64,
    mut shutdown: watch::Receiver<bool>,
    frames: Vec<Bytes>,
    gap: Duration,
    end: End,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        for (i, f) in frames.into_iter().enumerate() {
            // Only space out the text deltas (frames after message_start/block_start/ping).
            if i > 3 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if let End::Stall = end {
            let _ = shutdown.wait_for(|v| *v).await;
        }
        drop(tx);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    with_request_id(
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Body::from_stream(body)),
        n,
    )
}

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The full SSE sequence: message_start, content_block_start, ping, deltas…, stop events.
fn sse_frames(n: u64, model: &str, text: &str, stop_reason: &str) -> Vec<Bytes> {
    let chunks: Vec<&str> = text.split_inclusive(' ').collect();
    let mut v = vec![
        frame(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ),
        frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        frame("ping", &json!({"type": "ping"})),
    ];
    for c in &chunks {
        v.push(frame(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}}),
        ));
    }
    v.push(frame(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    v.push(frame(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": chunks.len()}}),
    ));
    v.push(frame("message_stop", &json!({"type": "message_stop"})));
    v
}

/// A content block of the structured-output / thinking scenarios.
enum MockBlock {
    Text(String),
    /// A thinking block: its text (sent in two deltas) and signature.
    Thinking(String, String),
    /// A tool call: name, input JSON.
    Tool(String, Value),
}

/// The blocks `schema` / `thinking` answer `body` with (None: another scenario).
fn structured_or_thinking(name: &str, text: &str, body: &Value) -> Option<Vec<MockBlock>> {
    match name {
        "schema" => {
            let offered = body["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "StructuredOutput"));
            let answered = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_array())
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
            if offered && !answered {
                let input = if text == DEFAULT_TEXT {
                    json!({"answer": DEFAULT_TEXT})
                } else {
                    serde_json::from_str(text).expect("mock: schema:<json> takes JSON")
                };
                Some(vec![MockBlock::Tool("StructuredOutput".into(), input)])
            } else {
                Some(vec![MockBlock::Text(text.to_string())])
            }
        }
        "thinking" => Some(vec![
            MockBlock::Thinking("Let me think. 2+2 is 4.".into(), "sig_mock".into()),
            MockBlock::Text(text.to_string()),
        ]),
        _ => None,
    }
}

fn sse_frames_blocks(n: u64, model: &str, blocks: &[MockBlock], stop_reason: &str) -> Vec<Bytes> {
    let mut v = vec![frame(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )];
    let delta = |i: usize, d: Value| {
        frame(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i, "delta": d}),
        )
    };
    // The thinking share of the output tokens, as the API reports it.
    let usage = if blocks.iter().any(|b| matches!(b, MockBlock::Thinking(..))) {
        json!({"output_tokens": 9, "output_tokens_details": {"thinking_tokens": 5}})
    } else {
        json!({"output_tokens": 9})
    };
    for (i, b) in blocks.iter().enumerate() {
        let start = match b {
            MockBlock::Text(_) => json!({"type": "text", "text": ""}),
            MockBlock::Thinking(..) => json!({"type": "thinking", "thinking": "", "signature": ""}),
            MockBlock::Tool(name, _) => {
                json!({"type": "tool_use", "id": format!("toolu_mock_{n}_{i}"), "name": name, "input": {}})
            }
        };
        v.push(frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start}),
        ));
        match b {
            MockBlock::Text(t) => v.push(delta(i, json!({"type": "text_delta", "text": t}))),
            MockBlock::Thinking(t, sig) => {
                let (a, z) = t.split_at(t.len() / 2);
                for part in [a, z] {
                    v.push(delta(
                        i,
                        json!({"type": "thinking_delta", "thinking": part}),
                    ));
                }
                v.push(delta(
                    i,
                    json!({"type": "signature_delta", "signature": sig}),
                ));
            }
            MockBlock::Tool(_, input) => {
                let text = input.to_string();
                let (a, z) = text.split_at(text.len() / 2);
                for part in [a, z] {
                    v.push(delta(
                        i,
                        json!({"type": "input_json_delta", "partial_json": part}),
                    ));
                }
            }
        }
        v.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    v.push(frame(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": usage}),
    ));
    v.push(frame("message_stop", &json!({"type": "message_stop"})));
    v
}

fn message_json_blocks(n: u64, model: &str, blocks: &[MockBlock], stop_reason: &str) -> Response {
    let content: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            MockBlock::Text(t) => json!({"type": "text", "text": t}),
            MockBlock::Thinking(t, sig) => json!({"type": "thinking", "thinking": t, "signature": sig}),
            MockBlock::Tool(name, input) => {
                json!({"type": "tool_use", "id": format!("toolu_mock_{n}_{i}"), "name": name, "input": input})
            }
        })
        .collect();
    let msg = json!({
        "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 9}});
    with_request_id(
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(msg.to_string())),
        n,
    )
}

fn message_json(n: u64, model: &str, text: &str, stop_reason: &str) -> Response {
    let msg = json!({
        "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": text.split_inclusive(' ').count()}});
    with_request_id(
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(msg.to_string())),
        n,
    )
}

/// A subscription's usage limit as the API answers it: 429 with the unified headers.
fn usage_limit(n: u64, reset: u64) -> Response {
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "This request would exceed your account's rate limit. Please try again later."},
        "request_id": format!("req_mock_{n}")});
    let reset = reset.to_string();
    let mut b = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("content-type", "application/json");
    for (k, v) in [
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", reset.as_str()),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour",
        ),
        ("anthropic-ratelimit-unified-5h-status", "rejected"),
        ("anthropic-ratelimit-unified-5h-reset", reset.as_str()),
        ("anthropic-ratelimit-unified-5h-utilization", "1.0"),
    ] {
        b = b.header(k, v);
    }
    with_request_id(b.body(Body::from(body.to_string())), n)
}

/// The unified rate-limit headers of an allowed subscription request. `spec` is
/// `<5h utilization>,<7d utilization>[,<overage status>[,in_use]]` (utilization 0-1); the
/// 5-hour window resets in an hour, the 7-day one in three days.
fn unified_headers(spec: &str, now: u64) -> Vec<(&'static str, String)> {
    let mut parts = spec.split(',');
    let five = parts.next().unwrap_or("0").to_string();
    let seven = parts.next().unwrap_or("0").to_string();
    let overage = parts.next().unwrap_or("allowed").to_string();
    let in_use = parts.next() == Some("in_use");
    let (r5, r7) = ((now + 3600).to_string(), (now + 3 * 86_400).to_string());
    let mut h = vec![
        ("anthropic-ratelimit-unified-status", "allowed".to_string()),
        ("anthropic-ratelimit-unified-reset", r5.clone()),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour".to_string(),
        ),
        (
            "anthropic-ratelimit-unified-5h-status",
            "allowed".to_string(),
        ),
        ("anthropic-ratelimit-unified-5h-reset", r5),
        ("anthropic-ratelimit-unified-5h-utilization", five),
        (
            "anthropic-ratelimit-unified-7d-status",
            "allowed".to_string(),
        ),
        ("anthropic-ratelimit-unified-7d-reset", r7.clone()),
        ("anthropic-ratelimit-unified-7d-utilization", seven),
        ("anthropic-ratelimit-unified-overage-status", overage),
        ("anthropic-ratelimit-unified-overage-reset", r7),
    ];
    if in_use {
        h.push((
            "anthropic-ratelimit-unified-overage-in-use",
            "true".to_string(),
        ));
    }
    h
}

fn error(n: u64, status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": format!("req_mock_{n}")});
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).expect("mock API: valid status"))
        .header("content-type", "application/json");
    if status == 429 {
        b = b.header("retry-after", "1");
    }
    with_request_id(b.body(Body::from(body.to_string())), n)
}

/// The `error.details.error_code` of `terms400`: the mock's own invention (the API's real
/// code for unanswered Consumer Terms is not known), to follow a code through the CLI.
pub const TERMS_ERROR_CODE: &str = "mock_consumer_terms_required";

/// An API error whose `error.details.error_code` is `code` (the CLI reports it as
/// `api_error_code`).
fn coded_error(n: u64, status: u16, kind: &str, message: &str, code: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message, "details": {"error_code": code}}, "request_id": format!("req_mock_{n}")});
    let b = Response::builder()
        .status(StatusCode::from_u16(status).expect("mock API: valid status"))
        .header("content-type", "application/json");
    with_request_id(b.body(Body::from(body.to_string())), n)
}

fn with_request_id(r: Result<Response, axum::http::Error>, n: u64) -> Response {
    let mut r = r.expect("mock API: valid response");
    let id = HeaderValue::from_str(&format!("req_mock_{n}")).expect("mock API: header value");
    r.headers_mut().insert("request-id", id);
    r
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The `tool_result` blocks of the last user message of a request body.
fn last_user_tool_results(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array())
        .map(|c| {
            c.iter()
                .filter(|b| b["type"] == "tool_result")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The [`Answer::EchoResults`] text for a request body.
fn echo_results(body: &Value) -> String {
    let parts: Vec<String> = last_user_tool_results(body)
        .iter()
        .map(|r| {
            let text = match &r["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .map(|b| match b["type"].as_str() {
                        Some("text") => b["text"].as_str().unwrap_or("").to_owned(),
                        Some("image") => "[image]".to_owned(),
                        _ => String::new(),
                    })
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            if r["is_error"] == true {
                format!("error: {text}")
            } else {
                text
            }
        })
        .collect();
    if parts.is_empty() {
        "seen: none".to_owned()
    } else {
        format!("seen: {}", parts.join(" | "))
    }
}

/// The content blocks and stop reason of an answer.
fn answer_blocks(n: u64, body: &Value, answer: &Answer) -> (Vec<Value>, &'static str) {
    match answer {
        Answer::Text(t) => (vec![json!({"type": "text", "text": t})], "end_turn"),
        Answer::EchoResults => (
            vec![json!({"type": "text", "text": echo_results(body)})],
            "end_turn",
        ),
        Answer::Tools { text, calls } => {
            let mut v: Vec<Value> = text
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            for (i, (name, input)) in calls.iter().enumerate() {
                v.push(json!({"type": "tool_use", "id": tool_use_id(n, i), "name": name, "input": input}));
            }
            let stop = if calls.is_empty() {
                "end_turn"
            } else {
                "tool_use"
            };
            (v, stop)
        }
    }
}

/// An [`Answer`] as SSE (`stream`) or as one JSON message.
fn answer_response(
    n: u64,
    shutdown: watch::Receiver<bool>,
    model: &str,
    body: &Value,
    answer: &Answer,
    stream: bool,
) -> Response {
    let (blocks, stop) = answer_blocks(n, body, answer);
    if !stream {
        let msg = json!({
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 5}});
        return with_request_id(
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(msg.to_string())),
            n,
        );
    }
    let mut frames = vec![frame(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )];
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] == "tool_use" {
            frames.push(frame(
                "content_block_start",
                &json!({"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}),
            ));
            let input = b["input"].to_string();
            let cut = input.find(':').map_or(input.len(), |c| c + 1);
            for part in [&input[..cut], &input[cut..]] {
                if !part.is_empty() {
                    frames.push(frame(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": i,
                                "delta": {"type": "input_json_delta", "partial_json": part}}),
                    ));
                }
            }
        } else {
            frames.push(frame(
                "content_block_start",
                &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
            ));
            frames.push(frame(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": b["text"]}}),
            ));
        }
        frames.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    frames.push(frame(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": 5}}),
    ));
    frames.push(frame("message_stop", &json!({"type": "message_stop"})));
    sse(n, shutdown, frames, Duration::ZERO, End::Close)
}

/// The API's server-side web search, emulated: `server_tool_use`, its
/// `web_search_tool_result` ([`WEB_RESULTS`]) and a text, as SSE or JSON.
fn web_search_answer(
    n: u64,
    shutdown: watch::Receiver<bool>,
    model: &str,
    query: &str,
    stream: bool,
) -> Response {
    let id = format!("srvtoolu_01mock{n}");
    let results: Vec<Value> = WEB_RESULTS
        .iter()
        .map(|(title, url)| {
            json!({"type": "web_search_result", "title": title, "url": url,
                   "encrypted_content": "mock", "page_age": null})
        })
        .collect();
    let result = json!({"type": "web_search_tool_result", "tool_use_id": id, "content": results});
    let summary = format!("Rust is a language ({query}).");
    let usage = json!({"input_tokens": 12, "output_tokens": 9,
        "server_tool_use": {"web_search_requests": 1}});
    if !stream {
        let msg = json!({
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [
                {"type": "server_tool_use", "id": id, "name": "web_search", "input": {"query": query}},
                result, {"type": "text", "text": summary}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage});
        return with_request_id(
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(msg.to_string())),
            n,
        );
    }
    let block = |i: usize, b: Value| {
        frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": b}),
        )
    };
    let stop = |i: usize| {
        frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        )
    };
    let delta = |i: usize, d: Value| {
        frame(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i, "delta": d}),
        )
    };
    let frames = vec![
        frame(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        block(
            0,
            json!({"type": "server_tool_use", "id": id, "name": "web_search", "input": {}}),
        ),
        delta(
            0,
            json!({"type": "input_json_delta", "partial_json": json!({"query": query}).to_string()}),
        ),
        stop(0),
        block(1, result),
        stop(1),
        block(2, json!({"type": "text", "text": ""})),
        delta(2, json!({"type": "text_delta", "text": summary})),
        stop(2),
        frame(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": usage}),
        ),
        frame("message_stop", &json!({"type": "message_stop"})),
    ];
    sse(n, shutdown, frames, Duration::ZERO, End::Close)
}

/// Minimal `%XX` decoding for the `ok:<text>` scenario suffix.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    //! Self-tests of the mock over plain HTTP (no CLI needed).
    use super::*;

    async fn post(url: String, stream: bool) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{url}/v1/messages?beta=true"))
            .header("x-api-key", "test-key")
            .json(&json!({"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .expect("mock API request")
    }

    /// Concatenates the `text_delta`s of an SSE body.
    fn sse_text(body: &str) -> String {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn ok_streams_and_records() {
        let mock = MockApi::start().await;
        let r = post(mock.url("ok"), true).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let body = r.text().await.expect("body");
        assert_eq!(sse_text(&body), DEFAULT_TEXT);
        assert!(body.contains("event: message_stop"), "{body}");
        let reqs = mock.message_requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/s/ok/v1/messages");
        assert_eq!(reqs[0].query.as_deref(), Some("beta=true"));
        assert_eq!(reqs[0].headers["x-api-key"], "test-key");
        assert_eq!(reqs[0].body["model"], "m1");
    }

    #[tokio::test]
    async fn custom_text_and_non_streaming() {
        let mock = MockApi::start().await;
        let body = post(mock.url("ok:Hi%20there"), true)
            .await
            .text()
            .await
            .expect("body");
        assert_eq!(sse_text(&body), "Hi there");
        let v: Value = post(mock.url("midstream_error"), false)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(v["content"][0]["text"], DEFAULT_TEXT);
        assert_eq!(v["model"], "m1");
    }

    #[tokio::test]
    async fn errors_and_unknown_paths() {
        let mock = MockApi::start().await;
        let r = post(mock.url("rate429"), true).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            post(mock.url("overload529"), true).await.status().as_u16(),
            529
        );
        let r = reqwest::get(format!("{}/s/ok/v1/models", mock.base_url))
            .await
            .expect("get");
        assert_eq!(r.status(), 404);
        assert_eq!(mock.requests().len(), 3);
        assert_eq!(mock.message_requests().len(), 2);
    }

    #[tokio::test]
    async fn midstream_error_sends_error_event() {
        let mock = MockApi::start().await;
        let body = post(mock.url("midstream_error"), true)
            .await
            .text()
            .await
            .expect("body");
        assert!(body.contains("event: error"), "{body}");
        assert!(!body.contains("message_stop"), "{body}");
    }

    #[tokio::test]
    async fn hang_and_stall_never_finish() {
        let mock = MockApi::start().await;
        let t = Duration::from_millis(300);
        assert!(tokio::time::timeout(t, post(mock.url("hang"), true))
            .await
            .is_err());
        let mut r = post(mock.url("stall"), true).await;
        let mut got = String::new();
        let read = tokio::time::timeout(t, async {
            while let Some(c) = r.chunk().await.expect("chunk") {
                got.push_str(&String::from_utf8_lossy(&c));
            }
        })
        .await;
        assert!(read.is_err(), "stall must not end the stream: {got}");
        assert!(got.contains("text_delta"), "{got}");
    }

    async fn post_body(url: String, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{url}/v1/messages?beta=true"))
            .json(&body)
            .send()
            .await
            .expect("mock API request")
    }

    /// SSE `data:` payloads of a body.
    fn sse_events(body: &str) -> Vec<Value> {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("SSE data is JSON"))
            .collect()
    }

    #[tokio::test]
    async fn tool_call_answers_in_sse_and_json_then_echoes_results() {
        let mock = MockApi::start().await;
        let ask = json!({"model": "m1", "stream": true,
                         "messages": [{"role": "user", "content": "weather?"}]});
        let body = post_body(
            mock.url("tool_call:mcp__cg__a,mcp__cg__b:Checking."),
            ask.clone(),
        )
        .await
        .text()
        .await
        .expect("body");
        let ev = sse_events(&body);
        let starts: Vec<&Value> = ev
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .map(|e| &e["content_block"])
            .collect();
        assert_eq!(starts[0]["type"], "text");
        assert_eq!(starts[1]["name"], "mcp__cg__a");
        assert_eq!(starts[2]["name"], "mcp__cg__b");
        assert_eq!(starts[1]["input"], json!({}));
        let id = starts[1]["id"].as_str().expect("id");
        assert!(id.starts_with("toolu_01") && id.len() == 30, "{id}");
        assert_ne!(starts[1]["id"], starts[2]["id"]);
        let json_parts: String = ev
            .iter()
            .filter(|e| e["delta"]["type"] == "input_json_delta" && e["index"] == 1)
            .map(|e| {
                e["delta"]["partial_json"]
                    .as_str()
                    .expect("partial")
                    .to_owned()
            })
            .collect();
        assert_eq!(json_parts, r#"{"q":"x"}"#);
        let stop = ev
            .iter()
            .find(|e| e["type"] == "message_delta")
            .expect("delta");
        assert_eq!(stop["delta"]["stop_reason"], "tool_use");

        let mut plain = ask.clone();
        plain["stream"] = json!(false);
        let v: Value = post_body(mock.url("tool_call:mcp__cg__a"), plain)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert_eq!(v["content"][0]["input"], json!({"q": "x"}));

        let cont = json!({"model": "m1", "stream": false, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [v["content"][0].clone()]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": v["content"][0]["id"], "content": "no city", "is_error": true},
                {"type": "tool_result", "tool_use_id": "toolu_x",
                 "content": [{"type": "text", "text": "noon"}, {"type": "image", "source": {}}]}]}]});
        let v: Value = post_body(mock.url("tool_call:mcp__cg__a"), cont)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(
            v["content"][0]["text"],
            "seen: error: no city | noon [image]"
        );
        let reqs = mock.message_requests();
        assert_eq!(reqs.len(), 3);
        assert!(reqs[0].tool_results().is_empty());
        assert_eq!(reqs[2].tool_results().len(), 2);
        assert_eq!(reqs[2].tool_results()[0]["is_error"], true);
    }

    #[tokio::test]
    async fn scripts_answer_in_order_and_repeat_the_last() {
        let mock = MockApi::start().await;
        mock.script(
            "s1",
            vec![
                Answer::Tools {
                    text: None,
                    calls: vec![("mcp__cg__t".into(), json!({"city": "Paris"}))],
                },
                Answer::Text("done".into()),
            ],
        );
        let ask = json!({"model": "m1", "stream": false, "tools": [{"name": "mcp__cg__t"}],
                         "messages": [{"role": "user", "content": "x"}]});
        let a: Value = post_body(mock.url("script:s1"), ask.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(a["content"][0]["input"], json!({"city": "Paris"}));
        for _ in 0..2 {
            let b: Value = post_body(mock.url("script:s1"), ask.clone())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(b["content"][0]["text"], "done");
        }
        assert_eq!(mock.message_requests()[0].tool_names(), ["mcp__cg__t"]);
        assert_eq!(post_body(mock.url("script:nope"), ask).await.status(), 404);
    }
}
