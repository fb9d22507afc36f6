//! `POST /v1/responses`: an OpenAI Responses request → [`TurnRequest`], and the answer → a
//! `response` object or the Responses SSE sequence (`response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, then `response.completed` / `response.incomplete`, or
//! `error` + `response.failed` when the run fails after the stream began), every event
//! with its `sequence_number`.
//!
//! `input` is a string or items: messages (`input_text`, `input_image`, `input_file`
//! parts; assistant `output_text` / `refusal`), `reasoning` items (accepted and not shown
//! to the model again, like thinking blocks). `instructions` is the system prompt.
//! `previous_response_id` continues a stored response ([`crate::response_store`]) of the
//! same API key: its conversation, then this input. A response is stored unless
//! `store: false`.
//!
//! Function `tools`, `tool_choice` and `parallel_tool_calls` ([`tool_set`]) go through
//! the client-tools machinery: an answer with calls has `function_call` output items
//! (streamed with `response.function_call_arguments.delta` / `.done`), and the client's
//! `function_call_output` items (after its `function_call` items, or after
//! `previous_response_id`) continue the held run. `text.format` (`json_schema`,
//! `json_object`) and `reasoning.effort` are run options ([`run_options`]) as in Chat
//! Completions. Built-in tools and their items, `reasoning.summary`, `background`,
//! `conversation`, `prompt`, logprobs and `truncation: auto` are refused (400 naming the
//! field).

use std::sync::{Arc, OnceLock};

use axum::response::sse::Event;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::backend::RunOptions;
use crate::conversation::{Block, Conversation, Message, Role, ToolSet, ToolSpec};
use crate::engine::TurnRequest;
use crate::http::content::{Allow, Content};
use crate::http::errors::ApiError;
use crate::http::handler::{Api, Framer};
use crate::http::openai::{
    json_schema_format, openai_tool_choice, openai_tool_set, output_format, reasoning_effort,
};
use crate::http::state::AppState;
use crate::http::unix_now;
use crate::protocol::{Success, Usage};
use crate::response_store::{ResponseStore, StoredConversation};
use crate::rules::Flavour;

/// The Responses API.
pub struct Responses;

#[derive(Deserialize)]
pub struct ResponsesRequest {
    model: String,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default, deserialize_with = "crate::http::bounded::trees")]
    tools: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    text: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    reasoning: Option<Value>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    conversation: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    prompt: Option<Value>,
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    top_logprobs: Option<u64>,
    #[serde(default)]
    truncation: Option<String>,
    #[serde(default, deserialize_with = "crate::http::bounded::metadata")]
    metadata: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// What [`Responses::prepare`] and [`Responses::translate`] found.
    #[serde(skip)]
    ctx: Ctx,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Default)]
struct Ctx {
    /// The stored conversation `previous_response_id` names.
    previous: Option<Arc<StoredConversation>>,
    /// Where the answer is stored (None with `store: false`), and for which tenant.
    store: Option<(Arc<ResponseStore>, String)>,
    /// The translated conversation (what is stored with the answer).
    conversation: OnceLock<Conversation>,
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed). A
/// `previous_response_id` is not found here (there is no store).
pub fn parse_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let req: ResponsesRequest = crate::http::extract::parse_json_bytes(body)?;
    Responses::translate(&req)
}

fn refuse(param: &str, message: impl Into<String>) -> Result<(), ApiError> {
    Err(ApiError::invalid_param(message, param))
}

fn present(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

/// Built-in tool and item types: refused for good (the CLI's own tools never serve a
/// client's request).
const BUILT_IN_ITEMS: [&str; 18] = [
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
];

/// `tools`, `tool_choice` and `parallel_tool_calls` as the neutral tool set (None: no
/// tools). Built-in tools are refused.
fn tool_set(req: &ResponsesRequest) -> Result<Option<ToolSet>, ApiError> {
    let tools = req.tools.as_deref().unwrap_or_default();
    let kind = |t: &Value| {
        t.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if let Some(i) = tools.iter().position(|t| kind(t) != "function") {
        return Err(ApiError::invalid_param(
            format!(
                "built-in tool `{}` is not supported by this gateway (only `function` tools can be)",
                kind(&tools[i])
            ),
            &format!("tools[{i}].type"),
        ));
    }
    let choice = openai_tool_choice(
        req.tool_choice.as_ref(),
        |c| c.get("name").and_then(Value::as_str),
        "{\"type\": \"function\", \"name\": …}",
    )?;
    let mut specs = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(ApiError::invalid_param(
                "a function tool needs `name`",
                &format!("tools[{i}].name"),
            ));
        };
        specs.push(ToolSpec {
            name: name.to_string(),
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            input_schema: t
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    openai_tool_set(specs, choice, req.parallel_tool_calls, |i, f| {
        format!("tools[{i}].{f}")
    })
}

/// A `function_call` item (the model's call, sent back) as a tool-use block.
fn function_call_item(at: &str, item: &Value) -> Result<Message, ApiError> {
    let call_id = item
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let name = item.get("name").and_then(Value::as_str);
    let (Some(call_id), Some(name)) = (call_id, name) else {
        return Err(ApiError::invalid_param(
            "a `function_call` item needs `call_id` and `name`",
            at,
        ));
    };
    let args = item
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let input = match serde_json::from_str(if args.trim().is_empty() { "{}" } else { args }) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(ApiError::invalid_param(
                "`arguments` must be a JSON object",
                &format!("{at}.arguments"),
            ))
        }
    };
    Ok(Message::new(
        Role::Assistant,
        vec![Block::ToolUse {
            id: call_id.to_string(),
            name: name.to_string(),
            input,
        }],
    ))
}

/// A `function_call_output` item (the client's result) as a tool-result block.
fn function_call_output_item(at: &str, item: &Value) -> Result<Message, ApiError> {
    let Some(call_id) = item
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::invalid_param(
            "a `function_call_output` item needs `call_id`",
            &format!("{at}.call_id"),
        ));
    };
    let path = format!("{at}.output");
    let content = match item.get("output") {
        Some(Value::String(s)) => vec![Block::Text(s.clone())],
        Some(Value::Array(parts)) => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{path}[{j}]"), false))
                .collect::<Result<Vec<_>, _>>()?;
            let c: Content = serde_json::from_value(Value::Array(parts))
                .map_err(|e| ApiError::invalid_param(format!("invalid output: {e}"), &path))?;
            c.blocks(&path, Allow::User)?
        }
        _ => {
            return Err(ApiError::invalid_param(
                "`output` must be a string or a list of content parts",
                &path,
            ))
        }
    };
    Ok(Message::new(
        Role::User,
        vec![Block::ToolResult {
            tool_use_id: call_id.to_string(),
            content,
            is_error: false,
        }],
    ))
}

/// `text` and `reasoning` as run options: `text.format` `json_schema` / `json_object` →
/// `--json-schema` (the answer's text is the JSON), `reasoning.effort` → `--effort` (as
/// Chat Completions' `reasoning_effort`). `text.verbosity` other than the default and
/// `reasoning.summary` (the CLI gives no summaries) are promises it cannot keep.
fn run_options(req: &ResponsesRequest) -> Result<RunOptions, ApiError> {
    let mut options = RunOptions::default();
    if let Some(text) = req.text.as_ref().filter(|t| !t.is_null()) {
        if let Some(format) = text.get("format").filter(|f| !f.is_null()) {
            options.json_schema = match format.get("type").and_then(Value::as_str) {
                Some("json_schema") => Some(json_schema_format(
                    format.as_object().unwrap_or(&Map::new()),
                    "text.format",
                    &["type"],
                )?),
                _ => output_format(format, "text.format")?,
            };
        }
        if let Some(v) = text.get("verbosity").filter(|v| !v.is_null()) {
            if v.as_str() != Some("medium") {
                refuse(
                    "text.verbosity",
                    "only `text.verbosity: \"medium\"` is supported by this gateway",
                )?;
            }
        }
    }
    if let Some(r) = req.reasoning.as_ref().filter(|r| !r.is_null()) {
        for field in ["summary", "generate_summary"] {
            if r.get(field).is_some_and(|v| !v.is_null()) {
                refuse(
                    &format!("reasoning.{field}"),
                    format!("`reasoning.{field}`: the Claude CLI gives no reasoning summaries"),
                )?;
            }
        }
        if let Some(e) = r.get("effort").filter(|e| !e.is_null()) {
            options.effort = Some(reasoning_effort(e, "reasoning.effort")?);
        }
    }
    Ok(options)
}

/// Fields that promise what the CLI cannot do: refused with a 400 naming the field.
/// (Sampling knobs like `temperature`, bookkeeping like `metadata`, `user` or
/// `prompt_cache_key` promise nothing checkable and are accepted.)
fn refuse_unsupported(req: &ResponsesRequest) -> Result<(), ApiError> {
    if req.background == Some(true) {
        return refuse(
            "background",
            "background responses are not supported by this gateway",
        );
    }
    if present(&req.conversation) {
        return refuse(
            "conversation",
            "conversations are not stored by this gateway; send `input` (and `previous_response_id`)",
        );
    }
    if present(&req.prompt) {
        return refuse(
            "prompt",
            "prompt templates are not supported by this gateway; send `instructions` and `input`",
        );
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("top_logprobs", "logprobs are not supported by this gateway");
    }
    if let Some(i) = req
        .include
        .iter()
        .flatten()
        .position(|s| s == "message.output_text.logprobs")
    {
        return refuse(
            &format!("include[{i}]"),
            "logprobs are not supported by this gateway",
        );
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return refuse(
            "truncation",
            "only `truncation: \"disabled\"` is supported by this gateway",
        );
    }
    if let Some(n) = req.max_output_tokens {
        if n < 1 {
            return refuse(
                "max_output_tokens",
                "`max_output_tokens` must be at least 1",
            );
        }
    }
    Ok(())
}

/// A Responses content part as a content part of the shared parser, or a 400 naming it.
fn content_part(part: &Value, at: &str, assistant: bool) -> Result<Value, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    let str_of = |key: &str| part.get(key).and_then(Value::as_str);
    let text = |key: &str| -> Result<Value, ApiError> {
        let t = str_of(key).ok_or_else(|| {
            ApiError::invalid_param(
                format!("`{kind}` part is missing `{key}`"),
                &format!("{at}.{key}"),
            )
        })?;
        Ok(json!({"type": "text", "text": t}))
    };
    match (kind, assistant) {
        ("input_text", _) => text("text"),
        ("output_text", true) => text("text"),
        ("refusal", true) => text("refusal"),
        ("input_image", false) => {
            if str_of("file_id").is_some() {
                return Err(ApiError::invalid_param(
                    "`file_id` is not supported (there is no file store); send `image_url` (a data: URL or an http(s) URL)",
                    &format!("{at}.file_id"),
                ));
            }
            let url = str_of("image_url").ok_or_else(|| {
                ApiError::invalid_param(
                    "`input_image` needs `image_url`",
                    &format!("{at}.image_url"),
                )
            })?;
            Ok(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        ("input_file", false) => {
            for field in ["file_id", "file_url"] {
                if str_of(field).is_some() {
                    return Err(ApiError::invalid_param(
                        format!("`{field}` is not supported by this gateway; send the file inline as `file_data`"),
                        &format!("{at}.{field}"),
                    ));
                }
            }
            let mut file = json!({"file_data": str_of("file_data").unwrap_or("")});
            if let Some(name) = str_of("filename") {
                file["filename"] = name.into();
            }
            Ok(json!({"type": "file", "file": file}))
        }
        ("input_image" | "input_file", true) => Err(ApiError::invalid_param(
            "images and files are only supported in user messages",
            &format!("{at}.type"),
        )),
        _ => Err(ApiError::invalid_param(
            format!("content part type `{kind}` is not supported here"),
            &format!("{at}.type"),
        )),
    }
}

/// One `input` item as a message (None: an item that is not shown to the model again).
fn input_item(i: usize, item: &Value) -> Result<Option<Message>, ApiError> {
    let at = format!("input[{i}]");
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {}
        "function_call" => return function_call_item(&at, item).map(Some),
        "function_call_output" => return function_call_output_item(&at, item).map(Some),
        // As thinking blocks: accepted, not shown to the model again.
        "reasoning" => return Ok(None),
        "item_reference" => {
            return Err(ApiError::invalid_param(
                "item references are not supported by this gateway; send the item itself",
                &format!("{at}.type"),
            ))
        }
        k if BUILT_IN_ITEMS.contains(&k) => {
            return Err(ApiError::invalid_param(
                format!(
                    "`{k}` items belong to built-in tools, which this gateway does not support"
                ),
                &format!("{at}.type"),
            ))
        }
        k => {
            return Err(ApiError::invalid_param(
                format!("input item type `{k}` is not supported by this gateway"),
                &format!("{at}.type"),
            ))
        }
    }
    let role = item.get("role").and_then(Value::as_str).unwrap_or("");
    let (role, allow) = match role {
        "user" => (Role::User, Allow::User),
        "assistant" => (Role::Assistant, Allow::Text),
        "system" | "developer" => (Role::System, Allow::Text),
        other => {
            return Err(ApiError::invalid_param(
                format!("message role `{other}` is not one of user, assistant, system, developer"),
                &format!("{at}.role"),
            ))
        }
    };
    let path = format!("{at}.content");
    let content = match item.get("content") {
        Some(Value::String(s)) => Content::Text(s.clone()),
        Some(Value::Array(parts)) => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{path}[{j}]"), role == Role::Assistant))
                .collect::<Result<Vec<_>, _>>()?;
            serde_json::from_value(Value::Array(parts))
                .map_err(|e| ApiError::invalid_param(format!("invalid content: {e}"), &path))?
        }
        _ => {
            return Err(ApiError::invalid_param(
                "`content` must be a string or a list of content parts",
                &path,
            ))
        }
    };
    Ok(Some(Message::new(role, content.blocks(&path, allow)?)))
}

/// The conversation a request asks to continue: the stored one's messages, then `input`;
/// `instructions` as the system prompt.
fn conversation(
    req: &ResponsesRequest,
    previous: Option<&StoredConversation>,
) -> Result<Conversation, ApiError> {
    let mut messages = previous.map(|p| p.messages.clone()).unwrap_or_default();
    match &req.input {
        None => return Err(ApiError::invalid_param("`input` is required", "input")),
        Some(Input::Text(t)) => messages.push(Message::text(Role::User, t.clone())),
        Some(Input::Items(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid_param(
                    "`input` must contain at least one item",
                    "input",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                messages.extend(input_item(i, item)?);
            }
        }
    }
    let conversation = Conversation {
        system: req.instructions.clone().filter(|s| !s.is_empty()),
        messages,
    };
    conversation
        .validate()
        .map_err(|e| ApiError::invalid_param(format!("`input`: {e}"), "input"))?;
    Ok(conversation)
}

/// The id as the error may repeat it (client-chosen: short visible ASCII only).
fn shown_id(id: &str) -> String {
    if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_string()
    } else {
        "(not shown)".to_string()
    }
}

fn incomplete(s: &Success) -> bool {
    matches!(s.stop_reason.as_deref(), Some("max_tokens" | "max_turns"))
}

fn usage(u: &Usage) -> Value {
    let input = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + u.output_tokens,
    })
}

/// The output item id of the call `call_id` (`fc_…`, derived so both paths agree).
fn function_call_id(call_id: &str) -> String {
    format!("fc_{}", call_id.strip_prefix("toolu_").unwrap_or(call_id))
}

/// A `function_call` output item.
fn function_call_output(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments,
        "call_id": call_id, "name": name})
}

/// The assistant message item of an answer.
fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}]),
        None => json!([]),
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

impl ResponsesRequest {
    /// The `response` object with this request's settings echoed.
    fn response(&self, id: &str, created_at: u64, status: &str, output: Value) -> Value {
        json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": self.store.unwrap_or(true),
            "temperature": self.temperature.unwrap_or(1.0),
            "text": {
                "format": self.text.as_ref().and_then(|t| t.get("format")).filter(|f| !f.is_null())
                    .cloned().unwrap_or_else(|| json!({"type": "text"})),
                "verbosity": "medium",
            },
            "tool_choice": self.tool_choice.clone().filter(|c| !c.is_null()).unwrap_or_else(|| "auto".into()),
            "tools": [],
            "top_logprobs": 0,
            "top_p": self.top_p.unwrap_or(1.0),
            "truncation": "disabled",
            "usage": null,
            "user": self.user,
            "metadata": self.metadata.clone().filter(|m| !m.is_null()).unwrap_or_else(|| json!({})),
        })
    }

    /// The finished `response` object of an answer.
    fn finished(&self, id: &str, created_at: u64, msg_id: &str, s: &Success, text: &str) -> Value {
        let (status, details) = if incomplete(s) {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        } else {
            ("completed", Value::Null)
        };
        let mut output = Vec::with_capacity(s.tool_calls.len() + 1);
        if !text.is_empty() || s.tool_calls.is_empty() {
            output.push(message_item(msg_id, status, Some(text)));
        }
        output.extend(s.tool_calls.iter().map(|c| {
            function_call_output(
                &function_call_id(&c.id),
                &c.id,
                &c.name,
                &c.input.to_string(),
                "completed",
            )
        }));
        let mut r = self.response(id, created_at, status, Value::Array(output));
        r["incomplete_details"] = details;
        r["usage"] = usage(&s.usage);
        r
    }

    /// Stores the answered conversation under `id` (unless `store: false`).
    fn remember(&self, id: &str, text: &str, s: &Success) {
        let (Some((store, tenant)), Some(c)) = (&self.ctx.store, self.ctx.conversation.get())
        else {
            return;
        };
        let mut messages = c.messages.clone();
        let mut blocks = vec![Block::Text(text.to_string())];
        blocks.extend(s.tool_calls.iter().map(|c| Block::ToolUse {
            id: c.id.clone(),
            name: c.name.clone(),
            input: c.input.clone(),
        }));
        messages.push(Message::new(Role::Assistant, blocks));
        let stored = StoredConversation {
            model: self.model.clone(),
            messages,
        };
        if !store.put(id, tenant, stored) {
            tracing::debug!(response_id = id, "conversation too large to store");
        }
    }
}

impl Api for Responses {
    type Request = ResponsesRequest;
    type Framer = ResponseFramer;
    const FLAVOUR: Flavour = Flavour::Openai;
    const ENDPOINT: &'static str = "responses";

    fn model(req: &ResponsesRequest) -> &str {
        &req.model
    }

    fn wants_stream(req: &ResponsesRequest) -> bool {
        req.stream.unwrap_or(false)
    }

    fn prepare(req: &mut ResponsesRequest, state: &AppState, tenant: &str) -> Result<(), ApiError> {
        if let Some(id) = &req.previous_response_id {
            let found = state
                .responses
                .get(id, tenant)
                .ok_or_else(|| ApiError::PreviousResponseNotFound(shown_id(id)))?;
            req.ctx.previous = Some(found);
        }
        if req.store != Some(false) {
            req.ctx.store = Some((Arc::clone(&state.responses), tenant.to_string()));
        }
        Ok(())
    }

    fn translate(req: &ResponsesRequest) -> Result<TurnRequest, ApiError> {
        crate::engine::check_model(&req.model)
            .map_err(|e| ApiError::invalid_param(format!("`model` {e}"), "model"))?;
        refuse_unsupported(req)?;
        if req.previous_response_id.is_some() && req.ctx.previous.is_none() {
            let id = req.previous_response_id.as_deref().unwrap_or_default();
            return Err(ApiError::PreviousResponseNotFound(shown_id(id)));
        }
        let tools = tool_set(req)?;
        let conversation = conversation(req, req.ctx.previous.as_deref())?;
        let _ = req.ctx.conversation.set(conversation.clone());
        let options = run_options(req)?;
        let mut turn = crate::http::handler::turn_request(conversation, &req.model, Vec::new())?;
        turn.tools = tools;
        turn.options = options;
        Ok(turn)
    }

    fn answer_id() -> String {
        format!("resp_{}", uuid::Uuid::new_v4().simple())
    }

    /// The `response` object; the answer is stored for `previous_response_id` too.
    fn complete_body(req: &ResponsesRequest, id: &str, s: &Success) -> Value {
        req.remember(id, &s.text, s);
        let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        req.finished(id, unix_now(), &msg_id, s, &s.text)
    }

    fn framer(req: ResponsesRequest, id: String, _prompt_usage: Option<&Usage>) -> ResponseFramer {
        ResponseFramer {
            req,
            id,
            msg_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            created_at: unix_now(),
            sequence: 0,
            text: String::new(),
            items: 0,
            open: None,
        }
    }
}

/// The Responses API's streaming events.
pub struct ResponseFramer {
    req: ResponsesRequest,
    id: String,
    msg_id: String,
    created_at: u64,
    sequence: u64,
    /// The text so far (the `done` events repeat it).
    text: String,
    /// Output items started so far.
    items: usize,
    /// The open item: the message (its text is `text`), or a function call.
    open: Option<OpenItem>,
}

/// The output item being streamed.
enum OpenItem {
    Message {
        index: usize,
    },
    Call {
        index: usize,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl ResponseFramer {
    /// One event: `type` first, the fields, then its `sequence_number`.
    fn event(&mut self, kind: &str, fields: Value) -> Event {
        let mut m = Map::new();
        m.insert("type".into(), kind.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        m.insert("sequence_number".into(), self.sequence.into());
        self.sequence += 1;
        Event::default()
            .event(kind)
            .data(Value::Object(m).to_string())
    }

    fn part(text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }
}

impl ResponseFramer {
    /// Opens the message item (its one text part).
    fn open_message(&mut self, out: &mut Vec<Event>) -> usize {
        let index = self.items;
        self.items += 1;
        let item = message_item(&self.msg_id, "in_progress", None);
        let item_id = self.msg_id.clone();
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "part": Self::part("")}),
        ));
        self.open = Some(OpenItem::Message { index });
        index
    }

    /// Closes the open item with its `done` events.
    fn close(&mut self, out: &mut Vec<Event>, status: &str) {
        match self.open.take() {
            None => {}
            Some(OpenItem::Message { index }) => {
                let text = self.text.clone();
                let item_id = self.msg_id.clone();
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": []}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0,
                           "part": Self::part(&text)}),
                ));
                let item = message_item(&self.msg_id, status, Some(&text));
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
            }
            Some(OpenItem::Call {
                index,
                id,
                call_id,
                name,
                arguments,
            }) => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name,
                           "arguments": arguments}),
                ));
                let item = function_call_output(&id, &call_id, &name, &arguments, "completed");
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
            }
        }
    }
}

impl Framer for ResponseFramer {
    fn opening(&mut self) -> Vec<Event> {
        let r = self
            .req
            .response(&self.id, self.created_at, "in_progress", json!([]));
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        let mut out = Vec::new();
        let index = match self.open {
            Some(OpenItem::Message { index }) => index,
            _ => {
                self.close(&mut out, "completed");
                self.open_message(&mut out)
            }
        };
        self.text.push_str(&text);
        let item_id = self.msg_id.clone();
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "delta": text, "logprobs": []}),
        ));
        out
    }

    fn tool_start(&mut self, _index: usize, call_id: String, name: String) -> Vec<Event> {
        let mut out = Vec::new();
        self.close(&mut out, "completed");
        let index = self.items;
        self.items += 1;
        let id = function_call_id(&call_id);
        let item = function_call_output(&id, &call_id, &name, "", "in_progress");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        self.open = Some(OpenItem::Call {
            index,
            id,
            call_id,
            name,
            arguments: String::new(),
        });
        out
    }

    fn tool_args(&mut self, _index: usize, fragment: String) -> Vec<Event> {
        let Some(OpenItem::Call {
            index,
            id,
            arguments,
            ..
        }) = self.open.as_mut()
        else {
            return Vec::new();
        };
        arguments.push_str(&fragment);
        let (index, id) = (*index, id.clone());
        vec![self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": fragment}),
        )]
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        let mut out = Vec::new();
        let status = if incomplete(s) {
            "incomplete"
        } else {
            "completed"
        };
        if self.items == 0 {
            // An empty answer still has its (empty) message item.
            self.open_message(&mut out);
        }
        self.close(&mut out, status);
        let text = std::mem::take(&mut self.text);
        self.req.remember(&self.id, &text, s);
        let done = self
            .req
            .finished(&self.id, self.created_at, &self.msg_id, s, &text);
        let last = if incomplete(s) {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(last, json!({"response": done})));
        out
    }

    /// `error` with the error's code, message and param, then `response.failed` with the
    /// failed response (its `error` has the code and message).
    fn fail(&mut self, body: Value) -> Vec<Event> {
        let e = &body["error"];
        let code = e["code"]
            .as_str()
            .or_else(|| e["type"].as_str())
            .unwrap_or("server_error")
            .to_string();
        let message = e["message"]
            .as_str()
            .unwrap_or("The request failed.")
            .to_string();
        let mut r = self
            .req
            .response(&self.id, self.created_at, "failed", json!([]));
        r["error"] = json!({"code": code, "message": message});
        vec![
            self.event(
                "error",
                json!({"code": code, "message": message, "param": e["param"].clone()}),
            ),
            self.event("response.failed", json!({"response": r})),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(body: Value) -> Result<TurnRequest, ApiError> {
        parse_request(body.to_string().as_bytes())
    }

    fn param(r: Result<TurnRequest, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            Err(ApiError::PreviousResponseNotFound(_)) => "previous_response_id".into(),
            Err(e) => panic!("{e:?}"),
            Ok(t) => panic!("accepted: {t:?}"),
        }
    }

    #[test]
    fn text_format_and_reasoning_effort_become_run_options() {
        let t = turn(json!({"model": "sonnet", "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "person", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
            "reasoning": {"effort": "minimal"}}))
        .unwrap();
        let schema: Value =
            serde_json::from_str(t.options.json_schema.as_deref().unwrap()).unwrap();
        assert_eq!(schema["properties"]["name"]["type"], "string");
        assert_eq!(t.options.effort, Some(crate::backend::Effort::Low));
        let t = turn(
            json!({"model": "sonnet", "input": "hi", "text": {"format": {"type": "json_object"}}}),
        )
        .unwrap();
        assert_eq!(
            t.options.json_schema.as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        let t =
            turn(json!({"model": "sonnet", "input": "hi", "text": {"format": {"type": "text"}}}))
                .unwrap();
        assert!(t.options.is_default());
    }

    #[test]
    fn string_and_item_input_with_instructions() {
        let t =
            turn(json!({"model": "sonnet", "input": "hi", "instructions": "be brief"})).unwrap();
        assert_eq!(t.conversation.system.as_deref(), Some("be brief"));
        assert_eq!(
            t.conversation.messages,
            vec![Message::text(Role::User, "hi")]
        );
        let t = turn(json!({"model": "sonnet", "input": [
            {"role": "developer", "content": "terse"},
            {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}]}
        ]}))
        .unwrap();
        let m = &t.conversation.messages;
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(m[2], Message::text(Role::Assistant, "two"));
        assert_eq!(m[3].blocks.len(), 3);
        assert!(t.stop.is_empty());
    }

    #[test]
    fn unsupported_fields_are_400s_naming_them() {
        let base = |extra: Value| {
            let mut b = json!({"model": "sonnet", "input": "hi"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let cases = [
            (
                json!({"tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}),
                "tools[1].type",
            ),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"text": {"format": {"type": "json_schema", "schema": {}}}}),
                "text.format.name",
            ),
            (json!({"text": {"format": {"type": "xml"}}}), "text.format"),
            (json!({"reasoning": {"effort": "none"}}), "reasoning.effort"),
            (
                json!({"reasoning": {"summary": "auto"}}),
                "reasoning.summary",
            ),
            (json!({"background": true}), "background"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "p"}}), "prompt"),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (
                json!({"include": ["message.output_text.logprobs"]}),
                "include[0]",
            ),
            // A call's output without the call it answers.
            (
                json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}),
                "input",
            ),
            (
                json!({"input": [{"type": "web_search_call", "id": "w"}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"input": [{"role": "assistant", "content": "x"}]}),
                "input",
            ),
            (json!({"input": []}), "input"),
            (
                json!({"previous_response_id": "resp_x"}),
                "previous_response_id",
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(param(turn(base(extra.clone()))), want, "{extra}");
        }
        assert_eq!(param(turn(json!({"model": "sonnet"}))), "input");
        // Defaults clients send are fine.
        turn(base(
            json!({"tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "reasoning": {}, "store": false, "include": ["reasoning.encrypted_content"],
            "truncation": "disabled", "temperature": 0.2, "metadata": {"a": "b"},
            "max_output_tokens": 100, "parallel_tool_calls": true}),
        ))
        .unwrap();
    }
}
