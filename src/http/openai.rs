//! `POST /v1/chat/completions`: an OpenAI chat request → [`TurnRequest`], and the answer →
//! `chat.completion` or SSE `chat.completion.chunk`s ending in `data: [DONE]`.

use axum::response::sse::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{Effort, RunOptions};
use crate::conversation::{
    Block, Conversation, Message, RawJson, Role, ToolChoice, ToolError, ToolSet, ToolSpec,
};
use crate::engine::TurnRequest;
use crate::http::bounded::ToolDef;
use crate::http::content::{Allow, Content};
use crate::http::errors::ApiError;
use crate::http::handler::{Api, Framer};
use crate::http::unix_now;
use crate::protocol::{Success, Usage};
use crate::rules::Flavour;
use crate::turn::ThinkingStep;

/// The Chat Completions API.
pub struct ChatCompletions;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    tools: Option<Vec<ToolDef>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default, deserialize_with = "crate::http::bounded::trees")]
    functions: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    response_format: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    reasoning_effort: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    audio: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    prediction: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    web_search_options: Option<Value>,
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
    /// An assistant message's calls.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallParam>>,
    /// A `tool` message's call.
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// One of an assistant message's `tool_calls`, as sent back: its `arguments` (a string of
/// JSON) kept as text, never a tree.
#[derive(Debug, Deserialize)]
struct ToolCallParam {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<FunctionCallParam>,
}

#[derive(Debug, Deserialize)]
struct FunctionCallParam {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// A tool call's `arguments` (a string of JSON, empty for none) as the call's input: a
/// JSON object, validated and kept as text (None: not an object).
pub(crate) fn call_arguments(args: Option<&str>) -> Option<RawJson> {
    let args = args.unwrap_or("{}");
    let args = if args.trim().is_empty() { "{}" } else { args };
    RawJson::parse(args).ok().filter(RawJson::is_object)
}

/// An OpenAI `tool_choice` (Chat Completions and Responses alike): `auto`, `none`,
/// `required`, or a named function, whose name `named` finds in the object (`shape` is
/// how the error message spells that object).
pub(crate) fn openai_tool_choice(
    choice: Option<&Value>,
    named: impl Fn(&Value) -> Option<&str>,
    shape: &str,
) -> Result<Option<ToolChoice>, ApiError> {
    Ok(match choice.filter(|c| !c.is_null()) {
        None => None,
        Some(Value::String(c)) => Some(match c.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid_param(
                    format!("`tool_choice` `{other}` is not one of auto, none, required"),
                    "tool_choice",
                ))
            }
        }),
        Some(c) => match (c.get("type").and_then(Value::as_str), named(c)) {
            (Some("function"), Some(name)) => Some(ToolChoice::Named(name.to_string())),
            _ => {
                return Err(ApiError::invalid_param(
                    format!("`tool_choice` must be auto, none, required or {shape}"),
                    "tool_choice",
                ))
            }
        },
    })
}

/// The tool set of OpenAI-style function tools (`specs`, in order), checked; a choice
/// without tools is no tool set, unless it demands a call (a 400). `param` names a
/// definition's field for an error (`index`, field).
pub(crate) fn openai_tool_set(
    specs: Vec<ToolSpec>,
    choice: Option<ToolChoice>,
    parallel: Option<bool>,
    param: impl Fn(usize, &str) -> String,
) -> Result<Option<ToolSet>, ApiError> {
    ToolSet::checked(specs, choice, parallel.unwrap_or(true)).map_err(|e| {
        let at = match &e {
            ToolError::BadName { index } | ToolError::Duplicate { index, .. } => {
                param(*index, "name")
            }
            ToolError::BadSchema { index } => param(*index, "parameters"),
            ToolError::ToolTooLarge { index } => format!("tools[{index}]"),
            ToolError::ChoiceWithoutTools => {
                return ApiError::invalid_param(
                    "`tool_choice` requires a tool call, but no `tools` are given",
                    "tool_choice",
                )
            }
            ToolError::UnknownChoice(_) => "tool_choice".into(),
            ToolError::TooMany | ToolError::ToolsTooLarge => "tools".into(),
        };
        ApiError::invalid_param(e.to_string(), &at)
    })
}

/// The request's `tools` and `tool_choice` as the neutral tool set (None: no tools).
fn tool_set(req: &ChatRequest) -> Result<Option<ToolSet>, ApiError> {
    let choice = openai_tool_choice(
        req.tool_choice.as_ref(),
        |c| c.pointer("/function/name").and_then(Value::as_str),
        "{\"type\": \"function\", \"function\": {\"name\": …}}",
    )?;
    let defs = req.tools.as_deref().unwrap_or_default();
    let mut tools = Vec::with_capacity(defs.len());
    for (i, t) in defs.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid_param(
                "only tools of type `function` are supported",
                &format!("tools[{i}].type"),
            ));
        }
        let f = t.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name else {
            return Err(ApiError::invalid_param(
                "a function tool needs `function.name`",
                &format!("tools[{i}].function.name"),
            ));
        };
        let description = f
            .and_then(|f| f.get("description"))
            .and_then(Value::as_str)
            .map(str::to_string);
        // A function without parameters takes none.
        let input_schema = t.schema().cloned().unwrap_or_else(no_parameters);
        tools.push(ToolSpec {
            name: name.to_string(),
            description,
            input_schema,
        });
    }
    openai_tool_set(tools, choice, req.parallel_tool_calls, |i, f| {
        format!("tools[{i}].function.{f}")
    })
}

/// The schema of a function without parameters.
pub(crate) fn no_parameters() -> RawJson {
    RawJson::parse(r#"{"type":"object","properties":{}}"#).expect("a valid schema")
}

/// An assistant message's `tool_calls` as tool-use blocks.
fn tool_calls(i: usize, calls: &[ToolCallParam]) -> Result<Vec<Block>, ApiError> {
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let id = c.id.as_deref().filter(|s| !s.is_empty());
        let name = c.function.as_ref().and_then(|f| f.name.as_deref());
        let (Some(id), Some(name)) = (id, name) else {
            return Err(ApiError::invalid_param(
                "a tool call needs `id` and `function.name`",
                &at,
            ));
        };
        if c.kind.as_deref().is_some_and(|t| t != "function") {
            return Err(ApiError::invalid_param(
                "only `function` tool calls are supported",
                &format!("{at}.type"),
            ));
        }
        let args = c.function.as_ref().and_then(|f| f.arguments.as_deref());
        let Some(input) = call_arguments(args) else {
            return Err(ApiError::invalid_param(
                "`function.arguments` must be a JSON object",
                &format!("{at}.function.arguments"),
            ));
        };
        out.push(Block::ToolUse {
            id: id.to_string(),
            name: name.to_string(),
            input,
        });
    }
    Ok(out)
}

/// Parses and validates a request body into the turn it asks for (pure; fuzzed).
pub fn parse_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let req: ChatRequest = crate::http::extract::parse_json_in(body, Flavour::Openai)?;
    ChatCompletions::translate(&req)
}

/// Fields that promise what the CLI cannot do: refused with a 400 naming the field, rather
/// than accepted and silently ignored. (Sampling knobs like `temperature` or `max_tokens`
/// promise nothing checkable and are accepted.)
fn refuse_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    let refuse = |field: &str, message: &str| Err(ApiError::invalid_param(message, field));
    if req.n.is_some_and(|n| n != 1) {
        return refuse("n", "only `n: 1` is supported");
    }
    if req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return refuse(
            "functions",
            "the legacy `functions` field is not supported; use `tools`",
        );
    }
    if req.logprobs == Some(true) {
        return refuse("logprobs", "`logprobs` is not supported by this gateway");
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
    {
        return refuse(
            "modalities",
            "only the `text` modality is supported by this gateway",
        );
    }
    for (field, value) in [("audio", &req.audio), ("prediction", &req.prediction)] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return refuse(
                field,
                &format!("`{field}` is not supported by this gateway"),
            );
        }
    }
    Ok(())
}

/// The permissive schema of `json_object`: any JSON object.
const ANY_OBJECT: &str = r#"{"type":"object"}"#;

/// `response_format` → the schema for `--json-schema` (None for `text`).
fn response_schema(format: &Value) -> Result<Option<String>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            const P: &str = "response_format.json_schema";
            let Some(js) = format.get("json_schema").and_then(Value::as_object) else {
                return Err(ApiError::invalid_param(
                    "`response_format.json_schema` must be an object",
                    P,
                ));
            };
            json_schema_format(js, P, &[]).map(Some)
        }
        _ => output_format(format, "response_format"),
    }
}

/// An OpenAI output format's `type` other than `json_schema`: `text` (None) or
/// `json_object` (any object); anything else is a 400 naming `param`.
pub(crate) fn output_format(format: &Value, param: &str) -> Result<Option<String>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ANY_OBJECT.to_string())),
        _ => Err(ApiError::invalid_param(
            format!("`{param}.type` must be one of text, json_object, json_schema"),
            param,
        )),
    }
}

/// An OpenAI `json_schema` format's fields (Chat Completions nests them under
/// `json_schema`, Responses puts them beside `type`, named in `extra`): `name` (required,
/// as OpenAI's), `description`, `schema` (default: any object) and `strict` (the CLI
/// validates every answer against the schema either way) → the schema's JSON text.
pub(crate) fn json_schema_format(
    js: &serde_json::Map<String, Value>,
    prefix: &str,
    extra: &[&str],
) -> Result<String, ApiError> {
    let bad = |param: &str, message: String| Err(ApiError::invalid_param(message, param));
    if let Some(k) = js.keys().find(|k| {
        !matches!(k.as_str(), "name" | "description" | "schema" | "strict")
            && !extra.contains(&k.as_str())
    }) {
        return bad(prefix, format!("`{prefix}` has an unknown key `{k}`"));
    }
    let name_ok = js.get("name").and_then(Value::as_str).is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if !name_ok {
        return bad(
            &format!("{prefix}.name"),
            format!("`{prefix}.name` is required: 1 to 64 of a-z, A-Z, 0-9, _ and -"),
        );
    }
    if js
        .get("strict")
        .is_some_and(|s| !s.is_boolean() && !s.is_null())
    {
        return bad(
            &format!("{prefix}.strict"),
            format!("`{prefix}.strict` must be a boolean"),
        );
    }
    match js.get("schema").filter(|s| !s.is_null()) {
        None => Ok(ANY_OBJECT.to_string()),
        Some(schema) => crate::http::handler::schema_for_cli(schema).or_else(|e| {
            bad(
                &format!("{prefix}.schema"),
                format!("`{prefix}.schema`: {e}"),
            )
        }),
    }
}

/// `reasoning_effort` → `--effort`: `minimal` maps to the CLI's lowest level (`low`);
/// `none` cannot be honoured (the CLI's models always think) and is refused.
pub(crate) fn reasoning_effort(v: &Value, param: &str) -> Result<Effort, ApiError> {
    match v.as_str() {
        Some("minimal" | "low") => Ok(Effort::Low),
        Some("medium") => Ok(Effort::Medium),
        Some("high") => Ok(Effort::High),
        Some("xhigh") => Ok(Effort::Xhigh),
        Some("none") => Err(ApiError::invalid_param(
            format!("`{param}: none` is not supported by this gateway: the Claude CLI always lets the model think (use minimal or low)"),
            param,
        )),
        _ => Err(ApiError::invalid_param(
            format!("`{param}` must be one of minimal, low, medium, high, xhigh"),
            param,
        )),
    }
}

fn run_options(req: &ChatRequest) -> Result<RunOptions, ApiError> {
    let mut options = RunOptions::default();
    if let Some(format) = req.response_format.as_ref().filter(|f| !f.is_null()) {
        options.json_schema = response_schema(format)?;
    }
    if let Some(e) = req.reasoning_effort.as_ref().filter(|e| !e.is_null()) {
        options.effort = Some(reasoning_effort(e, "reasoning_effort")?);
    }
    if let Some(w) = req.web_search_options.as_ref().filter(|w| !w.is_null()) {
        options.web = Some(crate::http::web::chat_options(w)?);
    }
    Ok(options)
}

fn stop_sequences(req: &ChatRequest) -> Result<Vec<String>, ApiError> {
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
    crate::engine::check_stops(&stop)
        .map_err(|e| ApiError::invalid_param(format!("`stop` {e}"), "stop"))?;
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "`stop` sequences must not be empty",
            "stop",
        ));
    }
    Ok(stop)
}

fn finish_reason(s: &Success) -> &'static str {
    match s.stop_reason.as_deref() {
        Some("max_tokens") | Some("max_turns") => "length",
        _ if !s.tool_calls.is_empty() => "tool_calls",
        _ => "stop",
    }
}

/// The answer's calls as `message.tool_calls`.
fn tool_calls_json(s: &Success) -> Value {
    s.tool_calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.input.to_string()}})
        })
        .collect()
}

fn usage(s: &Success) -> Value {
    let u: &Usage = &s.usage;
    let prompt = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.thinking_tokens},
    })
}

impl Api for ChatCompletions {
    type Request = ChatRequest;
    type Framer = ChunkFramer;
    const FLAVOUR: Flavour = Flavour::Openai;
    const ENDPOINT: &'static str = "chat_completions";

    fn model(req: &ChatRequest) -> &str {
        &req.model
    }

    fn wants_stream(req: &ChatRequest) -> bool {
        req.stream.unwrap_or(false)
    }

    fn translate(req: &ChatRequest) -> Result<TurnRequest, ApiError> {
        if req.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "`messages` must contain at least one message",
                "messages",
            ));
        }
        refuse_unsupported(req)?;
        crate::engine::check_model(&req.model)
            .map_err(|e| ApiError::invalid_param(format!("`model` {e}"), "model"))?;
        let stop = stop_sequences(req)?;
        let tools = tool_set(req)?;
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            let (role, allow) = match m.role.as_str() {
                "system" | "developer" => (Role::System, Allow::Text),
                "user" => (Role::User, Allow::User),
                "assistant" => (Role::Assistant, Allow::Text),
                "tool" => (Role::User, Allow::User),
                other => {
                    return Err(ApiError::invalid_param(
                        format!("message role `{other}` is not supported"),
                        &format!("messages[{i}].role"),
                    ))
                }
            };
            let mut blocks = match &m.content {
                None => vec![Block::Text(String::new())],
                Some(c) => c.blocks(&format!("messages[{i}].content"), allow)?,
            };
            if m.role == "tool" {
                let Some(id) = m.tool_call_id.as_deref().filter(|s| !s.is_empty()) else {
                    return Err(ApiError::invalid_param(
                        "a `tool` message needs `tool_call_id`",
                        &format!("messages[{i}].tool_call_id"),
                    ));
                };
                blocks.retain(|b| !matches!(b, Block::Text(t) if t.is_empty()));
                blocks = vec![Block::ToolResult {
                    tool_use_id: id.to_string(),
                    content: blocks,
                    is_error: false,
                }];
            }
            match (m.role.as_str(), m.tool_calls.as_deref()) {
                ("assistant", Some(calls)) if !calls.is_empty() => {
                    blocks.retain(|b| !matches!(b, Block::Text(t) if t.is_empty()));
                    blocks.extend(tool_calls(i, calls)?);
                }
                (_, Some(calls)) if !calls.is_empty() => {
                    return Err(ApiError::invalid_param(
                        "only assistant messages have `tool_calls`",
                        &format!("messages[{i}].tool_calls"),
                    ))
                }
                _ => {}
            }
            messages.push(Message::new(role, blocks));
        }
        crate::http::handler::continue_after_assistant(&mut messages);
        let conversation = Conversation {
            system: None,
            messages,
        };
        let options = run_options(req)?;
        let mut turn = crate::http::handler::turn_request(conversation, &req.model, stop)?;
        turn.tools = tools;
        turn.options = options;
        Ok(turn)
    }

    fn thinking_by_config(settings: &crate::config::Settings) -> bool {
        settings.openai_reasoning_content
    }

    fn answer_id() -> String {
        format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
    }

    fn complete_body(req: &ChatRequest, id: &str, s: &Success) -> Value {
        json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": req.model,
            "choices": [{
                "index": 0,
                "message": message(s),
                "logprobs": null,
                "finish_reason": finish_reason(s),
            }],
            "usage": usage(s),
            "service_tier": "default",
            "system_fingerprint": null,
        })
    }

    fn framer(req: ChatRequest, id: String, _prompt_usage: Option<&Usage>) -> ChunkFramer {
        ChunkFramer {
            id,
            created: unix_now(),
            include_usage: req
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            searching: req
                .web_search_options
                .as_ref()
                .is_some_and(|w| !w.is_null()),
            model: req.model,
            text: String::new(),
            web: Vec::new(),
        }
    }
}

/// The answer's message; `reasoning_content` (not part of the OpenAI API; the
/// `openai.reasoning_content` config key) when the answer carries the model's thinking.
fn message(s: &Success) -> Value {
    let mut m = if s.tool_calls.is_empty() {
        json!({"role": "assistant", "content": s.text, "refusal": null})
    } else {
        json!({"role": "assistant",
            "content": if s.text.is_empty() { Value::Null } else { s.text.clone().into() },
            "refusal": null, "tool_calls": tool_calls_json(s)})
    };
    if !s.thinking.is_empty() {
        let thinking: Vec<&str> = s.thinking.iter().map(|t| t.thinking.as_str()).collect();
        m["reasoning_content"] = Value::String(thinking.join("\n\n"));
    }
    if !s.web.is_empty() {
        m["annotations"] = chat_annotations(&s.text, &s.web);
    }
    m
}

/// `url_citation` annotations: where `text` links the web searches' sources.
fn chat_annotations(text: &str, web: &[crate::protocol::WebCall]) -> Value {
    use crate::protocol::web::{char_index, citations};
    citations(text, web)
        .iter()
        .map(|c| {
            json!({"type": "url_citation", "url_citation": {
                "start_index": char_index(text, c.start), "end_index": char_index(text, c.end),
                "url": c.source.url, "title": c.source.title}})
        })
        .collect()
}

/// `chat.completion.chunk` events.
pub struct ChunkFramer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The request enabled web search: the streamed text is kept (the annotations at
    /// the end point into it).
    searching: bool,
    text: String,
    /// The CLI's web calls so far.
    web: Vec<crate::protocol::WebCall>,
}

impl ChunkFramer {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "service_tier": "default", "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Event::default().data(v.to_string())
    }
}

impl Framer for ChunkFramer {
    fn opening(&mut self) -> Vec<Event> {
        vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        if self.searching {
            self.text.push_str(&text);
        }
        vec![self.chunk(json!({"content": text}), None)]
    }

    fn web(&mut self, call: &crate::protocol::WebCall) -> Vec<Event> {
        self.web.push(call.clone());
        Vec::new()
    }

    fn tool_start(&mut self, index: usize, id: String, name: String) -> Vec<Event> {
        vec![self.chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            None,
        )]
    }

    fn tool_args(&mut self, index: usize, fragment: String) -> Vec<Event> {
        vec![self.chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
            None,
        )]
    }

    // Reached only with `openai.reasoning_content` on.
    fn thinking(&mut self, step: ThinkingStep) -> Vec<Event> {
        match step {
            ThinkingStep::Text(t) => vec![self.chunk(json!({"reasoning_content": t}), None)],
            ThinkingStep::Start | ThinkingStep::Signature(_) => Vec::new(),
        }
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        let mut v = Vec::new();
        if !self.web.is_empty() {
            let notes = chat_annotations(&self.text, &self.web);
            if notes.as_array().is_some_and(|a| !a.is_empty()) {
                v.push(self.chunk(json!({"annotations": notes}), None));
            }
        }
        v.push(self.chunk(json!({}), Some(finish_reason(s))));
        if self.include_usage {
            let u = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "service_tier": "default", "system_fingerprint": null,
                "choices": [], "usage": usage(s),
            });
            v.push(Event::default().data(u.to_string()));
        }
        v.push(Event::default().data("[DONE]"));
        v
    }

    // The openai SDK raises on a `data:` chunk carrying `error`.
    fn fail(&mut self, body: Value) -> Vec<Event> {
        vec![Event::default().data(body.to_string())]
    }
}
