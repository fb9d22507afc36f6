//! `POST /v1/messages`: an Anthropic Messages request → [`TurnRequest`], and the answer →
//! a `message` object or the real SSE event sequence (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`,
//! `message_delta`, `message_stop`).

use axum::response::sse::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{Effort, RunOptions, Thinking};
use crate::conversation::{Conversation, Message, Role};
use crate::engine::TurnRequest;
use crate::http::content::{Allow, Content};
use crate::http::errors::ApiError;
use crate::http::handler::{Api, Framer};
use crate::protocol::{Success, Usage};
use crate::rules::Flavour;
use crate::turn::ThinkingStep;

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
    thinking: Option<Value>,
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

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::invalid_param(format!("{field}: {message}"), field)
}

/// A structured-output format (`output_config.format`, `output_format`):
/// `{"type": "json_schema", "schema": {…}}` → the schema's text for `--json-schema`.
fn json_schema_format(format: &Value, field: &str) -> Result<String, ApiError> {
    let Some(obj) = format.as_object() else {
        return Err(bad(field, "must be an object"));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("json_schema") => {}
        _ => {
            return Err(bad(
                field,
                "only `{\"type\": \"json_schema\", \"schema\": …}` is supported",
            ))
        }
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "schema"))
    {
        return Err(bad(field, format!("unknown key `{k}`")));
    }
    let schema = obj
        .get("schema")
        .ok_or_else(|| bad(field, "`schema` is required"))?;
    crate::engine::check_schema(schema).map_err(|e| bad(&format!("{field}.schema"), e))
}

/// `output_config.effort` → `--effort` (the CLI's levels are the API's).
fn effort(v: &Value) -> Result<Effort, ApiError> {
    const FIELD: &str = "output_config.effort";
    match v.as_str() {
        Some("low") => Ok(Effort::Low),
        Some("medium") => Ok(Effort::Medium),
        Some("high") => Ok(Effort::High),
        Some("xhigh") => Ok(Effort::Xhigh),
        Some("max") => Ok(Effort::Max),
        _ => Err(bad(FIELD, "must be one of low, medium, high, xhigh, max")),
    }
}

/// `thinking` → the CLI's thinking flags, and whether the client gets thinking blocks.
fn thinking(
    v: &Value,
    max_tokens: u64,
) -> Result<(Option<Thinking>, Option<&'static str>, bool), ApiError> {
    const FIELD: &str = "thinking";
    let Some(obj) = v.as_object() else {
        return Err(bad(FIELD, "must be an object"));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let allowed: &[&str] = match kind {
        "enabled" => &["type", "budget_tokens", "display"],
        "adaptive" => &["type", "display"],
        "disabled" => &["type"],
        _ => {
            return Err(bad(
                "thinking.type",
                "must be one of enabled, adaptive, disabled",
            ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(FIELD, format!("unknown key `{k}` for type `{kind}`")));
    }
    let display = match obj.get("display").filter(|d| !d.is_null()) {
        None => None,
        Some(d) => match d.as_str() {
            Some("summarized") => Some("summarized"),
            Some("omitted") => Some("omitted"),
            _ => return Err(bad("thinking.display", "must be summarized or omitted")),
        },
    };
    let mode = match kind {
        "disabled" => Thinking::Disabled,
        "adaptive" => Thinking::Adaptive,
        _ => {
            let n = obj
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("thinking.budget_tokens", "an integer is required"))?;
            if n < 1024 {
                return Err(bad("thinking.budget_tokens", "must be at least 1024"));
            }
            if n >= max_tokens {
                return Err(bad(
                    "thinking.budget_tokens",
                    "must be less than max_tokens",
                ));
            }
            Thinking::Budget(u32::try_from(n).unwrap_or(u32::MAX))
        }
    };
    Ok((Some(mode), display, mode != Thinking::Disabled))
}

/// Structured output, effort and thinking: the process flags and whether the client is
/// shown thinking. Unknown keys and values are refused, never ignored.
fn run_options(req: &MessagesRequest) -> Result<(RunOptions, bool), ApiError> {
    let mut options = RunOptions::default();
    let mut show = false;
    if let Some(config) = req.output_config.as_ref().filter(|c| !c.is_null()) {
        let Some(obj) = config.as_object() else {
            return Err(bad("output_config", "must be an object"));
        };
        for (key, v) in obj.iter().filter(|(_, v)| !v.is_null()) {
            match key.as_str() {
                "format" => {
                    options.json_schema = Some(json_schema_format(v, "output_config.format")?)
                }
                "effort" => options.effort = Some(effort(v)?),
                other => {
                    return Err(bad(
                        "output_config",
                        format!("`{other}` is not supported by this gateway"),
                    ))
                }
            }
        }
    }
    if let Some(format) = req.output_format.as_ref().filter(|f| !f.is_null()) {
        if options.json_schema.is_some() {
            return Err(bad(
                "output_format",
                "give either output_format or output_config.format, not both",
            ));
        }
        options.json_schema = Some(json_schema_format(format, "output_format")?);
    }
    if let Some(t) = req.thinking.as_ref().filter(|t| !t.is_null()) {
        let (mode, display, shown) = thinking(t, req.max_tokens)?;
        options.thinking = mode;
        options.thinking_display = display;
        show = shown;
    }
    Ok((options, show))
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
        let (options, show_thinking) = run_options(req)?;
        let mut turn = crate::http::handler::turn_request(
            Conversation { system, messages },
            &req.model,
            stop,
        )?;
        turn.options = options;
        turn.show_thinking = show_thinking;
        Ok(turn)
    }

    fn answer_id() -> String {
        format!("msg_{}", uuid::Uuid::new_v4().simple())
    }

    fn complete_body(req: &MessagesRequest, id: &str, s: &Success) -> Value {
        // The thinking blocks (only on answers that show them) before the text.
        let mut content: Vec<Value> = s
            .thinking
            .iter()
            .map(|t| json!({"type": "thinking", "thinking": t.thinking, "signature": t.signature}))
            .collect();
        content.push(json!({"type": "text", "text": s.text}));
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": stop_reason(s),
            "stop_sequence": s.stop_sequence,
            "usage": usage_json(&s.usage),
        })
    }

    fn framer(req: MessagesRequest, id: String, prompt_usage: Option<&Usage>) -> MessageFramer {
        // Thinking blocks come before the text block: with thinking shown, blocks open as
        // their content arrives.
        let lazy = run_options(&req).is_ok_and(|(_, show)| show);
        MessageFramer {
            id,
            model: req.model,
            prompt_usage: prompt_usage.cloned(),
            lazy,
            open: None,
            next: 0,
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
    /// Open content blocks as their content arrives (thinking shown); otherwise the text
    /// block opens with the message.
    lazy: bool,
    /// The open content block (its index is `next - 1`).
    open: Option<BlockOpen>,
    /// The index of the next content block.
    next: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockOpen {
    Text,
    Thinking,
}

impl MessageFramer {
    /// Closes the open block and opens one of `kind` at the next index.
    fn open_block(&mut self, kind: BlockOpen) -> Vec<Event> {
        let mut out = self.close_block();
        let block = match kind {
            BlockOpen::Text => json!({"type": "text", "text": ""}),
            BlockOpen::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
        };
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next, "content_block": block}),
        ));
        self.open = Some(kind);
        self.next += 1;
        out
    }

    fn close_block(&mut self) -> Vec<Event> {
        match self.open.take() {
            Some(_) => vec![event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next - 1}),
            )],
            None => Vec::new(),
        }
    }

    fn delta(&self, delta: Value) -> Event {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.next.saturating_sub(1), "delta": delta}),
        )
    }
}

impl Framer for MessageFramer {
    fn opening(&mut self) -> Vec<Event> {
        // As the real API does, message_start counts the prompt (clients that track
        // context size read it there); the CLI's own message_start has arrived by now.
        let start_usage = self.prompt_usage.as_ref().map_or_else(
            || json!({"input_tokens": 0, "output_tokens": 0}),
            usage_json,
        );
        let mut out = vec![event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": start_usage,
            }}),
        )];
        if !self.lazy {
            out.extend(self.open_block(BlockOpen::Text));
        }
        out.push(event("ping", json!({"type": "ping"})));
        out
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        let mut out = Vec::new();
        if self.open != Some(BlockOpen::Text) {
            out = self.open_block(BlockOpen::Text);
        }
        out.push(self.delta(json!({"type": "text_delta", "text": text})));
        out
    }

    fn thinking(&mut self, step: ThinkingStep) -> Vec<Event> {
        let mut out = Vec::new();
        match step {
            ThinkingStep::Start => out = self.open_block(BlockOpen::Thinking),
            ThinkingStep::Text(t) => {
                if self.open != Some(BlockOpen::Thinking) {
                    out = self.open_block(BlockOpen::Thinking);
                }
                out.push(self.delta(json!({"type": "thinking_delta", "thinking": t})));
            }
            // A signature belongs to the open thinking block.
            ThinkingStep::Signature(sig) if self.open == Some(BlockOpen::Thinking) => {
                out.push(self.delta(json!({"type": "signature_delta", "signature": sig})));
            }
            ThinkingStep::Signature(_) => {}
        }
        out
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        let mut out = Vec::new();
        if self.open != Some(BlockOpen::Text) {
            // Every answer has its text block, even an empty one.
            out = self.open_block(BlockOpen::Text);
        }
        out.extend(self.close_block());
        out.extend([
            event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(s), "stop_sequence": s.stop_sequence},
                       "usage": usage_json(&s.usage)}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ]);
        out
    }

    fn fail(&mut self, body: Value) -> Vec<Event> {
        vec![event("error", body)]
    }
}
