//! `POST /v1/messages`: an Anthropic Messages request → [`TurnRequest`], and the answer →
//! a `message` object or the real SSE event sequence (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`,
//! `message_delta`, `message_stop`).

use axum::response::sse::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{Effort, RunOptions, Thinking};
use crate::conversation::{
    Conversation, Message, RawJson, Role, ToolChoice, ToolError, ToolSet, ToolSpec,
};
use crate::engine::TurnRequest;
use crate::http::bounded::ToolDef;
use crate::http::content::{Allow, Content};
use crate::http::errors::ApiError;
use crate::http::handler::{Api, Framer};
use crate::http::state::AppState;
use crate::http::threads::ThreadCtx;
use crate::protocol::{Success, Usage, WebCall, WebKind};
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
    tools: Option<Vec<ToolDef>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    tool_choice: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    output_config: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    output_format: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    thinking: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    mcp_servers: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    container: Option<Value>,
    /// The Threads beta ([`crate::http::threads`]).
    #[serde(default)]
    thread: Option<Value>,
    #[serde(skip)]
    ctx: ThreadCtx,
}

#[derive(Debug, Deserialize)]
struct MessageParam {
    role: String,
    content: Content,
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed).
pub fn parse_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let req: MessagesRequest = crate::http::extract::parse_json_in(body, Flavour::Anthropic)?;
    Messages::translate(&req)
}

/// Fields that promise what the CLI cannot do: refused with a 400 naming the field, rather
/// than accepted and silently ignored.
fn refuse_unsupported(req: &MessagesRequest) -> Result<(), ApiError> {
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
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

/// The request's `tools` and `tool_choice` as the neutral tool set (None: no tools).
fn tool_set(req: &MessagesRequest) -> Result<Option<ToolSet>, ApiError> {
    let choice = req.tool_choice.as_ref().filter(|c| !c.is_null());
    let parallel = !choice
        .and_then(|c| c.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let choice = match choice {
        None => None,
        Some(c) => Some(match c.get("type").and_then(Value::as_str) {
            Some("auto") => ToolChoice::Auto,
            Some("none") => ToolChoice::None,
            Some("any") => ToolChoice::Required,
            Some("tool") => match c.get("name").and_then(Value::as_str) {
                Some(name) => ToolChoice::Named(name.to_string()),
                None => {
                    return Err(ApiError::invalid_param(
                        "tool_choice.name: required for `tool`",
                        "tool_choice.name",
                    ))
                }
            },
            _ => {
                return Err(ApiError::invalid_param(
                    "tool_choice.type: must be one of auto, any, tool, none",
                    "tool_choice.type",
                ))
            }
        }),
    };
    // A thread's `continue` takes the thread's tools unless it repeats them.
    let defs = tool_defs(req);
    let mut tools = Vec::with_capacity(defs.len());
    let mut web = crate::backend::WebTools::default();
    for (i, t) in defs.iter().enumerate() {
        // (`web` is collected again by `web_tools`; here web tools are only skipped.)
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            // Web search / fetch: the CLI's own tools for this run (`run_options`).
            Some(_) if crate::http::web::anthropic_tool(t, i, &mut web)? => continue,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    format!(
                        "tools.{i}.type: `{other}` is a server tool, which this gateway does not run; only custom tools (with `input_schema`) are supported"
                    ),
                    &format!("tools[{i}].type"),
                ))
            }
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(ApiError::invalid_param(
                format!("tools.{i}.name: Field required"),
                &format!("tools[{i}].name"),
            ));
        };
        let Some(input_schema) = t.schema() else {
            return Err(ApiError::invalid_param(
                format!("tools.{i}.input_schema: Field required"),
                &format!("tools[{i}].input_schema"),
            ));
        };
        tools.push(ToolSpec {
            name: name.to_string(),
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            input_schema: input_schema.clone(),
        });
    }
    ToolSet::checked(tools, choice, parallel).map_err(|e| tool_error(&e))
}

/// The request's `tools`, or its thread's stored ones when a `continue` does not repeat
/// them (what this gateway stored from an earlier request's `tools`).
fn tool_defs(req: &MessagesRequest) -> std::borrow::Cow<'_, [ToolDef]> {
    let stored = req.ctx.previous.as_ref().and_then(|(_, t)| t.as_ref());
    match (&req.tools, stored) {
        (Some(t), _) => std::borrow::Cow::Borrowed(t.as_slice()),
        (None, Some(t)) => {
            std::borrow::Cow::Owned(serde_json::from_str(t.get()).unwrap_or_default())
        }
        _ => std::borrow::Cow::Borrowed(&[]),
    }
}

/// The web tools among the request's (or its thread's) `tools`.
fn web_tools(req: &MessagesRequest) -> Result<Option<crate::backend::WebTools>, ApiError> {
    let defs = tool_defs(req);
    let mut web = crate::backend::WebTools::default();
    for (i, t) in defs.iter().enumerate() {
        crate::http::web::anthropic_tool(t, i, &mut web)?;
    }
    Ok((web != crate::backend::WebTools::default()).then_some(web))
}

/// A tool definition's problem, naming the field in Anthropic's terms.
fn tool_error(e: &ToolError) -> ApiError {
    let param = match e {
        ToolError::BadName { index } | ToolError::Duplicate { index, .. } => {
            format!("tools[{index}].name")
        }
        ToolError::BadSchema { index } => format!("tools[{index}].input_schema"),
        ToolError::ToolTooLarge { index } => format!("tools[{index}]"),
        ToolError::UnknownChoice(_) | ToolError::ChoiceWithoutTools => "tool_choice".into(),
        ToolError::TooMany | ToolError::ToolsTooLarge => "tools".into(),
    };
    // The Anthropic rendering puts the dotted path in front (`tools.0.input_schema: …`).
    ApiError::invalid_param(e.to_string(), &param)
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
    crate::http::handler::schema_for_cli(schema).map_err(|e| bad(&format!("{field}.schema"), e))
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
            // What the CLI itself asks the API for (its default): no flag.
            Some("updates") => None,
            _ => {
                return Err(bad(
                    "thinking.display",
                    "must be summarized, omitted or updates",
                ))
            }
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
    options.web = web_tools(req)?;
    Ok((options, show))
}

fn stop_reason(s: &Success) -> &str {
    match s.stop_reason.as_deref() {
        Some("max_turns") => "max_tokens",
        // The CLI's structured output is its own StructuredOutput tool call, so its result
        // says `tool_use`; the client got text and no tool_use block, which the API ends
        // with `end_turn` (a tool loop reading `tool_use` would wait for a call).
        Some("tool_use") if s.tool_calls.is_empty() => "end_turn",
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

/// The usage with `server_tool_use` when the answer used the web tools.
fn answer_usage(s: &Success) -> Value {
    let mut usage = usage_json(&s.usage);
    if !s.web.is_empty() {
        let (mut searches, mut fetches) = (0, 0);
        for c in &s.web {
            match c.kind {
                WebKind::Search => searches += c.searches,
                WebKind::Fetch => fetches += u64::from(c.error.is_none()),
            }
        }
        usage["server_tool_use"] =
            json!({"web_search_requests": searches, "web_fetch_requests": fetches});
    }
    usage
}

/// The server tool id of one of the CLI's web calls (`toolu_X` → `srvtoolu_X`).
fn server_tool_id(call: &WebCall) -> String {
    format!(
        "srvtoolu_{}",
        call.id.strip_prefix("toolu_").unwrap_or(&call.id)
    )
}

/// A web call as the API reports a server tool: its `server_tool_use` block (input
/// empty: the streamed form sends it as a delta) and its input, then its result block.
fn web_blocks(call: &WebCall) -> (Value, Value, Value) {
    let id = server_tool_id(call);
    let (name, input) = match call.kind {
        WebKind::Search => ("web_search", json!({"query": call.query})),
        WebKind::Fetch => ("web_fetch", json!({"url": call.query})),
    };
    let result = match (call.kind, &call.error) {
        (WebKind::Search, None) => json!({
            "type": "web_search_tool_result", "tool_use_id": id,
            "content": call.sources.iter().map(|s| json!({
                "type": "web_search_result", "url": s.url, "title": s.title,
                "encrypted_content": "", "page_age": null,
            })).collect::<Vec<_>>(),
        }),
        (WebKind::Search, Some(e)) => json!({
            "type": "web_search_tool_result", "tool_use_id": id,
            "content": {"type": "web_search_tool_result_error", "error_code":
                if e.contains("budget") { "max_uses_exceeded" } else { "unavailable" }},
        }),
        (WebKind::Fetch, None) => json!({
            "type": "web_fetch_tool_result", "tool_use_id": id,
            "content": {"type": "web_fetch_result", "url": call.query, "retrieved_at": null,
                "content": {"type": "document", "title": null, "source": {
                    "type": "text", "media_type": "text/plain",
                    "data": call.text.as_deref().unwrap_or("")}}},
        }),
        (WebKind::Fetch, Some(_)) => json!({
            "type": "web_fetch_tool_result", "tool_use_id": id,
            "content": {"type": "web_fetch_tool_error", "error_code": "url_not_accessible"},
        }),
    };
    (
        json!({"type": "server_tool_use", "id": id, "name": name, "input": {}}),
        input,
        result,
    )
}

/// The text block of an answer, with `citations` where it links the searches' sources.
fn text_block(text: &str, web: &[WebCall]) -> Value {
    let cites: Vec<Value> = crate::protocol::web::citations(text, web)
        .iter()
        .filter(|c| {
            web.iter()
                .any(|w| w.kind == WebKind::Search && w.sources.contains(c.source))
        })
        .map(|c| {
            json!({"type": "web_search_result_location", "url": c.source.url,
                   "title": c.source.title, "encrypted_index": "", "cited_text": c.cited_text})
        })
        .collect();
    if cites.is_empty() {
        json!({"type": "text", "text": text})
    } else {
        json!({"type": "text", "text": text, "citations": cites})
    }
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

    fn stored_refs(req: &MessagesRequest) -> crate::response_store::StoredRefs {
        let thread = req
            .thread
            .as_ref()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("continue"))
            .and_then(|t| t.get("previous_message_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        crate::response_store::StoredRefs {
            thread,
            ..Default::default()
        }
    }

    fn prepare(req: &mut MessagesRequest, state: &AppState, tenant: &str) -> Result<(), ApiError> {
        crate::http::threads::prepare(req.thread.as_ref(), &mut req.ctx, state, tenant)
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
        let tools = tool_set(req)?;
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
            let path = format!("messages[{i}].content");
            for (at, name) in m.content.tool_references(&path) {
                let known = tools
                    .as_ref()
                    .is_some_and(|t| t.tools.iter().any(|spec| spec.name == name));
                if !known {
                    return Err(ApiError::invalid_param(
                        format!(
                            "{}: the referenced tool is not among the request's `tools`",
                            at.replace(['[', ']'], ".")
                        ),
                        &at,
                    ));
                }
            }
            let blocks = m.content.blocks(&path, allow)?;
            messages.push(Message::new(role, blocks));
        }
        if messages.last().is_some_and(|m| m.role == Role::Assistant) {
            // Prefill: the API would continue that text. The CLI takes only user turns
            // on stdin and answers each with a new assistant message; it cannot continue
            // a partial one (docs/clients.md).
            let last = messages.len() - 1;
            return Err(ApiError::invalid_param(
                format!(
                    "messages.{last}: a final assistant message (prefill) is not supported by this gateway: the Claude CLI cannot continue a partial assistant turn; end with a user message"
                ),
                &format!("messages[{last}]"),
            ));
        }
        let messages = crate::http::threads::continued(&req.ctx, messages);
        let (options, show_thinking) = run_options(req)?;
        let conversation = Conversation { system, messages };
        let _ = req.ctx.conversation.set(conversation.clone());
        let _ = req.ctx.tools.set(match (&req.tools, &req.ctx.previous) {
            // Kept only for a thread that is stored (a tree of the definitions).
            (Some(_), _) if !req.ctx.stores() => None,
            (Some(t), _) => serde_json::value::to_raw_value(t)
                .ok()
                .and_then(|r| RawJson::from_raw(r).ok()),
            (None, Some((_, t))) => t.clone(),
            (None, None) => None,
        });
        let mut turn = crate::http::handler::turn_request(conversation, &req.model, stop)?;
        turn.tools = tools;
        turn.options = options;
        turn.show_thinking = show_thinking;
        Ok(turn)
    }

    fn answer_id() -> String {
        format!("msg_{}", uuid::Uuid::new_v4().simple())
    }

    fn complete_body(req: &MessagesRequest, id: &str, s: &Success) -> Value {
        crate::http::threads::remember(&req.ctx, &req.model, id, s);
        // The thinking blocks (only on answers that show them) before the text.
        let mut content: Vec<Value> = s
            .thinking
            .iter()
            .map(|t| json!({"type": "thinking", "thinking": t.thinking, "signature": t.signature}))
            .collect();
        for call in &s.web {
            let (mut start, input, result) = web_blocks(call);
            start["input"] = input;
            content.push(start);
            content.push(result);
        }
        if let Value::Array(blocks) = content_json(s) {
            content.extend(blocks);
        }
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": stop_reason(s),
            "stop_sequence": s.stop_sequence,
            "usage": answer_usage(s),
        })
    }

    fn framer(req: MessagesRequest, id: String, prompt_usage: Option<&Usage>) -> MessageFramer {
        // Thinking blocks come before the text block: with thinking shown, blocks open as
        // their content arrives.
        let lazy = run_options(&req).is_ok_and(|(_, show)| show);
        MessageFramer {
            id,
            model: req.model,
            thread: req.ctx,
            prompt_usage: prompt_usage.cloned(),
            lazy,
            blocks: 0,
            open: None,
            answered: false,
        }
    }
}

/// The answer's content blocks: its text (left out when empty before tool calls), then
/// the tool calls.
fn content_json(s: &Success) -> Value {
    let mut content = Vec::with_capacity(s.tool_calls.len() + 1);
    if !s.text.is_empty() || s.tool_calls.is_empty() {
        content.push(text_block(&s.text, &s.web));
    }
    content.extend(
        s.tool_calls
            .iter()
            .map(|c| json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input})),
    );
    Value::Array(content)
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The Messages API's streaming events.
pub struct MessageFramer {
    id: String,
    model: String,
    /// The request's thread: the answered thread is stored at the finish.
    thread: ThreadCtx,
    prompt_usage: Option<Usage>,
    /// Thinking is shown: the opening `ping` follows `message_start` and blocks open as
    /// their content arrives; otherwise the first block is followed by the `ping`, as the
    /// API sends it.
    lazy: bool,
    /// Content blocks started so far.
    blocks: usize,
    /// The open block: its index and kind.
    open: Option<(usize, BlockOpen)>,
    /// A text or tool_use block was started (an answer without one, thinking aside, still
    /// gets its empty text block).
    answered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockOpen {
    Text,
    Thinking,
    ToolUse,
}

impl MessageFramer {
    /// Closes the open block and starts `block` (of `kind`), returning its index.
    fn start(&mut self, block: Value, kind: BlockOpen, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        if index == 0 && !self.lazy {
            out.push(event("ping", json!({"type": "ping"})));
        }
        if kind != BlockOpen::Thinking {
            self.answered = true;
        }
        self.open = Some((index, kind));
        index
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// The index of the open block of `kind`, started if another one (or none) is open.
    fn open_as(&mut self, kind: BlockOpen, out: &mut Vec<Event>) -> usize {
        match self.open {
            Some((i, k)) if k == kind => i,
            _ => {
                let block = match kind {
                    BlockOpen::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                    _ => json!({"type": "text", "text": ""}),
                };
                self.start(block, kind, out)
            }
        }
    }

    fn delta(index: usize, delta: Value) -> Event {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
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
        if self.lazy {
            out.push(event("ping", json!({"type": "ping"})));
        }
        out
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        let mut out = Vec::new();
        let index = self.open_as(BlockOpen::Text, &mut out);
        out.push(Self::delta(
            index,
            json!({"type": "text_delta", "text": text}),
        ));
        out
    }

    fn thinking(&mut self, step: ThinkingStep) -> Vec<Event> {
        let mut out = Vec::new();
        match step {
            ThinkingStep::Start => {
                self.start(
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    BlockOpen::Thinking,
                    &mut out,
                );
            }
            ThinkingStep::Text(t) => {
                let index = self.open_as(BlockOpen::Thinking, &mut out);
                out.push(Self::delta(
                    index,
                    json!({"type": "thinking_delta", "thinking": t}),
                ));
            }
            // A signature belongs to the open thinking block.
            ThinkingStep::Signature(sig) => {
                if let Some((index, BlockOpen::Thinking)) = self.open {
                    out.push(Self::delta(
                        index,
                        json!({"type": "signature_delta", "signature": sig}),
                    ));
                }
            }
        }
        out
    }

    fn tool_start(&mut self, _index: usize, id: String, name: String) -> Vec<Event> {
        let mut out = Vec::new();
        self.start(
            json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            BlockOpen::ToolUse,
            &mut out,
        );
        out
    }

    fn tool_args(&mut self, _index: usize, fragment: String) -> Vec<Event> {
        match self.open {
            Some((index, BlockOpen::ToolUse)) => vec![Self::delta(
                index,
                json!({"type": "input_json_delta", "partial_json": fragment}),
            )],
            _ => Vec::new(),
        }
    }

    fn web(&mut self, call: &WebCall) -> Vec<Event> {
        let mut out = Vec::new();
        let (start, input, result) = web_blocks(call);
        let index = self.start(start, BlockOpen::ToolUse, &mut out);
        out.push(Self::delta(
            index,
            json!({"type": "input_json_delta", "partial_json": input.to_string()}),
        ));
        self.start(result, BlockOpen::ToolUse, &mut out);
        self.close(&mut out);
        out
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        crate::http::threads::remember(&self.thread, &self.model, &self.id, s);
        let mut out = Vec::new();
        if !self.answered {
            // An empty answer still has its (empty) text block.
            self.start(
                json!({"type": "text", "text": ""}),
                BlockOpen::Text,
                &mut out,
            );
        }
        self.close(&mut out);
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(s), "stop_sequence": s.stop_sequence},
                   "usage": answer_usage(s)}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn fail(&mut self, body: Value) -> Vec<Event> {
        vec![event("error", body)]
    }
}
