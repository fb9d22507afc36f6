//! `POST /v1/chat/completions`: OpenAI chat request → [`Turn`], and the CLI's answer →
//! `chat.completion` or SSE `chat.completion.chunk`s ending in `data: [DONE]`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::Success;
use crate::http::body::{parse_json, RawBody};
use crate::http::errors::ApiError;
use crate::http::pipeline::{sse_response, Piece, RequestCx, Turn};
use crate::http::{unix_now, RequestId};
use crate::rules::Flavour;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    functions: Option<Vec<Value>>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default)]
    stop: Option<Stop>,
}

/// OpenAI's `stop`: one string or a list (up to 4).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<crate::http::TextBlock>),
}

/// A message's text; attachments (user messages only) go to `attachments`.
fn content_text(
    content: &Option<Content>,
    index: usize,
    attachments: Option<&mut Vec<Value>>,
) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            crate::http::join_content(parts, &format!("messages[{index}].content"), attachments)
        }
    }
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed).
pub fn parse_request(body: &[u8]) -> Result<Turn, ApiError> {
    let req: ChatRequest = crate::http::body::parse_json_bytes(body)?;
    to_turn(&req)
}

fn to_turn(req: &ChatRequest) -> Result<Turn, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "`messages` must contain at least one message",
            "messages",
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("only `n: 1` is supported", "n"));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid_param(
            "function calling (`tools`) is not supported by this gateway",
            "tools",
        ));
    }
    if req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::invalid_param(
            "function calling (`functions`) is not supported by this gateway",
            "functions",
        ));
    }
    // Parameters that promise an output shape the CLI cannot guarantee are refused rather
    // than silently ignored: a client relying on them would break later, obscurely.
    // (Sampling knobs like `temperature` or `max_tokens` are accepted and ignored.)
    if let Some(format) = &req.response_format {
        let kind = format.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::invalid_param(
                "only `response_format: {\"type\": \"text\"}` is supported by this gateway",
                "response_format",
            ));
        }
    }
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid_param(
            "`logprobs` is not supported by this gateway",
            "logprobs",
        ));
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
    {
        return Err(ApiError::invalid_param(
            "only the `text` modality is supported by this gateway",
            "modalities",
        ));
    }
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "`model` must not be empty",
            "model",
        ));
    }
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid_param(
            "`stop` takes at most 4 sequences",
            "stop",
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "`stop` sequences must not be empty",
            "stop",
        ));
    }
    let mut system = Vec::new();
    let mut turns = Vec::new();
    let mut attachments = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let text = content_text(
            &m.content,
            i,
            (m.role == "user").then_some(&mut attachments),
        )?;
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => turns.push((m.role.as_str(), text)),
            other => {
                return Err(ApiError::invalid_param(
                    format!("message role `{other}` is not supported"),
                    &format!("messages[{i}].role"),
                ))
            }
        }
    }
    let prompt = crate::http::transcript(&turns)?;
    Ok(Turn {
        prompt,
        stop,
        attachments,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        model: req.model.clone(),
    })
}

fn finish_reason(s: &Success) -> &'static str {
    match s.stop_reason.as_deref() {
        Some("max_tokens") | Some("max_turns") => "length",
        _ => "stop",
    }
}

fn usage(s: &Success) -> Value {
    let prompt = s.usage.input_tokens
        + s.usage.cache_creation_input_tokens
        + s.usage.cache_read_input_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": s.usage.output_tokens,
        "total_tokens": prompt + s.usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": s.usage.cache_read_input_tokens},
    })
}

pub async fn chat_completions(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    body: RawBody,
) -> Response {
    let mut cx = RequestCx::new(state, request_id, Flavour::Openai, "chat_completions");
    let req: ChatRequest = match parse_json(body, &cx) {
        Ok(r) => r,
        Err(e) => return cx.error_response(e),
    };
    cx.model = Some(req.model.clone());
    let turn = match to_turn(&req) {
        Ok(t) => t,
        Err(e) => return cx.error_response(e),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if req.stream.unwrap_or(false) {
        let include_usage = req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let cx = Arc::new(cx);
        return match cx.clone().begin_stream(&turn).await {
            Ok(live) => stream_response(live, id, created, req.model, include_usage),
            Err(e) => cx.error_response(e),
        };
    }
    match cx.complete(&turn).await {
        Ok(s) => {
            cx.record_ok();
            cx.record_finished();
            Json(json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": s.text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish_reason(&s),
                }],
                "usage": usage(&s),
                "system_fingerprint": null,
            }))
            .into_response()
        }
        Err(e) => cx.error_response(e),
    }
}

fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Event {
    let v = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    Event::default().data(v.to_string())
}

fn stream_response(
    live: crate::http::pipeline::LiveStream,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Response {
    let first = chunk(
        &id,
        created,
        &model,
        json!({"role": "assistant", "content": ""}),
        None,
    );
    sse_response(live, vec![first], move |piece| match piece {
        Piece::Delta(t) => vec![chunk(&id, created, &model, json!({"content": t}), None)],
        Piece::Finish(s) => {
            let mut v = vec![chunk(
                &id,
                created,
                &model,
                json!({}),
                Some(finish_reason(&s)),
            )];
            if include_usage {
                let u = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage(&s),
                });
                v.push(Event::default().data(u.to_string()));
            }
            v.push(Event::default().data("[DONE]"));
            v
        }
        // The openai SDK raises on a `data:` chunk carrying `error`.
        Piece::Fail(body) => vec![Event::default().data(body.to_string())],
    })
}
