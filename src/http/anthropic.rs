//! `POST /v1/messages`: Anthropic Messages request → [`Turn`], and the CLI's answer → a
//! `message` object or the real SSE event sequence (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop`).

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
use crate::http::{join_text_blocks, RequestId, TextBlock};
use crate::rules::Flavour;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: u64,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: MessageContent,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Blocks(Vec<TextBlock>),
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed).
pub fn parse_request(body: &[u8]) -> Result<Turn, ApiError> {
    let req: MessagesRequest = crate::http::body::parse_json_bytes(body)?;
    to_turn(&req)
}

fn to_turn(req: &MessagesRequest) -> Result<Turn, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages: at least one message is required",
            "messages",
        ));
    }
    if req.max_tokens == 0 {
        return Err(ApiError::invalid_param(
            "max_tokens: must be at least 1",
            "max_tokens",
        ));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid_param(
            "tools: tool use is not supported by this gateway",
            "tools",
        ));
    }
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid_param("model: must not be empty", "model"));
    }
    let stop = req.stop_sequences.clone().unwrap_or_default();
    if stop.iter().any(|s| s.trim().is_empty()) {
        return Err(ApiError::invalid_param(
            "stop_sequences: each sequence must contain non-whitespace",
            "stop_sequences",
        ));
    }
    let system = match &req.system {
        None => None,
        Some(System::Text(t)) => Some(t.clone()),
        Some(System::Blocks(b)) => Some(join_text_blocks(b, "system")?),
    }
    .filter(|s| !s.is_empty());
    let mut turns = Vec::new();
    let mut attachments = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid_param(
                    format!("messages.{i}.role: `{other}` is not one of user, assistant"),
                    &format!("messages[{i}].role"),
                ))
            }
        };
        let text = match &m.content {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Blocks(b) => crate::http::join_content(
                b,
                &format!("messages[{i}].content"),
                (role == "user").then_some(&mut attachments),
            )?,
        };
        turns.push((role, text));
    }
    Ok(Turn {
        stop,
        prompt: crate::http::transcript(&turns)?,
        attachments,
        system,
        model: req.model.clone(),
    })
}

fn stop_reason(s: &Success) -> &str {
    match s.stop_reason.as_deref() {
        Some("max_turns") => "max_tokens",
        Some(r @ ("end_turn" | "max_tokens" | "stop_sequence" | "tool_use" | "refusal")) => r,
        _ => "end_turn",
    }
}

fn usage(s: &Success) -> Value {
    json!({
        "input_tokens": s.usage.input_tokens,
        "output_tokens": s.usage.output_tokens,
        "cache_creation_input_tokens": s.usage.cache_creation_input_tokens,
        "cache_read_input_tokens": s.usage.cache_read_input_tokens,
    })
}

pub async fn messages(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    body: RawBody,
) -> Response {
    let mut cx = RequestCx::new(state, request_id, Flavour::Anthropic, "messages");
    let req: MessagesRequest = match parse_json(body, &cx) {
        Ok(r) => r,
        Err(e) => return cx.error_response(e),
    };
    cx.model = Some(req.model.clone());
    let turn = match to_turn(&req) {
        Ok(t) => t,
        Err(e) => return cx.error_response(e),
    };
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    if req.stream.unwrap_or(false) {
        let cx = Arc::new(cx);
        return match cx.clone().begin_stream(&turn).await {
            Ok(live) => stream_response(live, id, req.model),
            Err(e) => cx.error_response(e),
        };
    }
    match cx.complete(&turn).await {
        Ok(s) => {
            cx.record_ok();
            cx.record_finished();
            Json(json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": [{"type": "text", "text": s.text}],
                "stop_reason": stop_reason(&s),
                "stop_sequence": s.stop_sequence,
                "usage": usage(&s),
            }))
            .into_response()
        }
        Err(e) => cx.error_response(e),
    }
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn stream_response(live: crate::http::pipeline::LiveStream, id: String, model: String) -> Response {
    // As the real API does, message_start counts the prompt (clients that track context
    // size read it there); the CLI's own message_start has already arrived by now.
    let start_usage = live.prompt_usage().map_or_else(
        || json!({"input_tokens": 0, "output_tokens": 0}),
        |u| {
            json!({
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cache_creation_input_tokens": u.cache_creation_input_tokens,
                "cache_read_input_tokens": u.cache_read_input_tokens,
            })
        },
    );
    let opening = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": start_usage,
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    sse_response(live, opening, |piece| match piece {
        Piece::Delta(t) => vec![event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": t}}),
        )],
        Piece::Finish(s) => vec![
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(&s), "stop_sequence": s.stop_sequence},
                       "usage": usage(&s)}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
        Piece::Fail(body) => vec![event("error", body)],
    })
}
