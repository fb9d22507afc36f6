//! `POST /v1/messages`: an Anthropic Messages request → [`TurnRequest`], and the answer →
//! a `message` object or the real SSE event sequence (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`,
//! `message_delta`, `message_stop`).

use axum::response::sse::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::conversation::{Conversation, Message, Role};
use crate::engine::TurnRequest;
use crate::http::content::{Allow, Content};
use crate::http::errors::ApiError;
use crate::http::handler::{Api, Framer};
use crate::protocol::{Success, Usage};
use crate::rules::Flavour;

/// The Messages API.
pub struct Messages;

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    model: String,
    messages: Vec<MessageParam>,
    max_tokens: u64,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    output_config: Option<Value>,
    #[serde(default)]
    output_format: Option<Value>,
    #[serde(default)]
    mcp_servers: Option<Value>,
    #[serde(default)]
    container: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct MessageParam {
    role: String,
    content: Content,
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed).
pub fn parse_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let req: MessagesRequest = crate::http::extract::parse_json_bytes(body)?;
    Messages::translate(&req)
}

/// Fields that promise what the CLI cannot do: refused with a 400 naming the field, rather
/// than accepted and silently ignored.
fn refuse_unsupported(req: &MessagesRequest) -> Result<(), ApiError> {
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid_param(
            "tools: tool use is not supported by this gateway",
            "tools",
        ));
    }
    // Without tools, `auto` and `none` mean no call; `any` and `tool` demand one.
    if let Some(kind) = req
        .tool_choice
        .as_ref()
        .filter(|c| !c.is_null())
        .map(|c| c.get("type").and_then(Value::as_str).unwrap_or(""))
    {
        if !matches!(kind, "auto" | "none") {
            return Err(ApiError::invalid_param(
                "tool_choice: requires a tool call, but tool use is not supported by this gateway",
                "tool_choice",
            ));
        }
    }
    let format = req
        .output_config
        .as_ref()
        .and_then(|c| c.get("format"))
        .filter(|f| !f.is_null());
    if format.is_some() {
        return Err(ApiError::invalid_param(
            "output_config.format: structured output is not supported by this gateway yet",
            "output_config.format",
        ));
    }
    if present(&req.output_format) {
        return Err(ApiError::invalid_param(
            "output_format: structured output is not supported by this gateway yet",
            "output_format",
        ));
    }
    for (field, value) in [
        ("mcp_servers", &req.mcp_servers),
        ("container", &req.container),
    ] {
        if present(value) {
            return Err(ApiError::invalid_param(
                format!("{field}: not supported by this gateway"),
                field,
            ));
        }
    }
    Ok(())
}

fn stop_reason(s: &Success) -> &str {
    match s.stop_reason.as_deref() {
        Some("max_turns") => "max_tokens",
        Some(r @ ("end_turn" | "max_tokens" | "stop_sequence" | "tool_use" | "refusal")) => r,
        _ => "end_turn",
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    })
}

impl Api for Messages {
    type Request = MessagesRequest;
    type Framer = MessageFramer;
    const FLAVOUR: Flavour = Flavour::Anthropic;
    const ENDPOINT: &'static str = "messages";

    fn model(req: &MessagesRequest) -> &str {
        &req.model
    }

    fn wants_stream(req: &MessagesRequest) -> bool {
        req.stream.unwrap_or(false)
    }

    fn translate(req: &MessagesRequest) -> Result<TurnRequest, ApiError> {
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
        refuse_unsupported(req)?;
        crate::engine::check_model(&req.model)
            .map_err(|e| ApiError::invalid_param(format!("model: {e}"), "model"))?;
        let stop = req.stop_sequences.clone().unwrap_or_default();
        crate::engine::check_stops(&stop).map_err(|e| {
            ApiError::invalid_param(format!("stop_sequences: {e}"), "stop_sequences")
        })?;
        if stop.iter().any(|s| s.trim().is_empty()) {
            return Err(ApiError::invalid_param(
                "stop_sequences: each sequence must contain non-whitespace",
                "stop_sequences",
            ));
        }
        let system = match &req.system {
            None => None,
            Some(c) => Some(c.text("system")?),
        }
        .filter(|s| !s.is_empty());
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            let (role, allow) = match m.role.as_str() {
                "user" => (Role::User, Allow::User),
                "assistant" => (Role::Assistant, Allow::Assistant),
                // System instructions at their place (the current SDK types have them; the
                // real CLI sends one itself).
                "system" => (Role::System, Allow::Text),
                other => {
                    return Err(ApiError::invalid_param(
                        format!(
                            "messages.{i}.role: `{other}` is not one of user, assistant, system"
                        ),
                        &format!("messages[{i}].role"),
                    ))
                }
            };
            let blocks = m.content.blocks(&format!("messages[{i}].content"), allow)?;
            messages.push(Message::new(role, blocks));
        }
        crate::http::handler::turn_request(Conversation { system, messages }, &req.model, stop)
    }

    fn answer_id() -> String {
        format!("msg_{}", uuid::Uuid::new_v4().simple())
    }

    fn complete_body(req: &MessagesRequest, id: &str, s: &Success) -> Value {
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [{"type": "text", "text": s.text}],
            "stop_reason": stop_reason(s),
            "stop_sequence": s.stop_sequence,
            "usage": usage_json(&s.usage),
        })
    }

    fn framer(req: MessagesRequest, id: String, prompt_usage: Option<&Usage>) -> MessageFramer {
        MessageFramer {
            id,
            model: req.model,
            prompt_usage: prompt_usage.cloned(),
        }
    }
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The Messages API's streaming events.
pub struct MessageFramer {
    id: String,
    model: String,
    prompt_usage: Option<Usage>,
}

impl Framer for MessageFramer {
    fn opening(&mut self) -> Vec<Event> {
        // As the real API does, message_start counts the prompt (clients that track
        // context size read it there); the CLI's own message_start has arrived by now.
        let start_usage = self.prompt_usage.as_ref().map_or_else(
            || json!({"input_tokens": 0, "output_tokens": 0}),
            usage_json,
        );
        vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
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
        ]
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        vec![event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": text}}),
        )]
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        vec![
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(s), "stop_sequence": s.stop_sequence},
                       "usage": usage_json(&s.usage)}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn fail(&mut self, body: Value) -> Vec<Event> {
        vec![event("error", body)]
    }
}
