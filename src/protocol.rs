//! The CLI's stream-json protocol (pure, no IO): its stdout lines parsed into typed
//! events, and the fold of one run's lines into events and a conclusion.
//!
//! [`Line::parse`] turns one stdout line into a [`Line`] (never relying on key order;
//! blank and non-`{` lines are skipped, a bad `{` line is [`Line::BadJson`]).
//! [`RunAccumulator`] folds the lines of one run into the [`CliEvent`]s the HTTP layer
//! streams, and at the end into a [`Success`] or the [`FailureFacts`] the rules classify.
//! Used by the backend on live runs and by `ccgate classify`/`ccgate test` on captures.

use serde_json::Value;

use crate::rules::{FailureFacts, GatewayCondition, TimeoutKind};

pub mod web;
pub use web::{WebCall, WebKind, WebSource};

/// Token counts from the CLI's `result.usage` (or a `message_start`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// `usage.output_tokens_details.thinking_tokens` of the result (part of
    /// `output_tokens`); 0 when the CLI does not report it.
    pub thinking_tokens: u64,
}

/// The name of the tool `--json-schema` adds: the model's call of it is the answer.
pub const STRUCTURED_OUTPUT_TOOL: &str = "StructuredOutput";

/// One complete thinking block of the answer, as the model wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ThinkingBlock {
    pub thinking: String,
    pub signature: String,
}

/// A successful turn (a `result` with `is_error: false`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Success {
    /// `result.result`: the authoritative final text.
    pub text: String,
    /// `result.stop_reason` (`end_turn`, `max_tokens`, `stop_sequence`, `tool_use` …).
    pub stop_reason: Option<String>,
    /// The client's stop sequence that ended the answer (set by the gateway, which
    /// applies stop sequences itself: the CLI has no flag for them).
    pub stop_sequence: Option<String>,
    pub usage: Usage,
    pub total_cost_usd: Option<f64>,
    pub num_turns: Option<u64>,
    pub session_id: Option<String>,
    /// Model from `system/init` (or the first assistant message).
    pub model: Option<String>,
    /// The client's tool calls that end this answer (`stop_reason` `tool_use`): the run
    /// is held until the client returns their results. Set by the turn fold.
    pub tool_calls: Vec<crate::conversation::ToolCall>,
    /// `result.structured_output` (with `--json-schema`: the validated answer; None when
    /// the model answered in prose).
    pub structured_output: Option<Value>,
    /// The top-level thinking blocks of the answer, in order.
    pub thinking: Vec<ThinkingBlock>,
    /// The plan's usage windows the run's last `rate_limit_event` reported.
    pub plan_windows: Option<PlanWindows>,
    /// The CLI's web searches and fetches of this answer, in order. Set by the turn fold.
    pub web: Vec<WebCall>,
}

/// The subscription's usage windows as the CLI reports them after an answer (its
/// `rate_limit_event`: `unifiedWindows`, or one `rateLimitType` window): each window's
/// utilization (0–1) and reset, and whether the request was billed as extra usage.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanWindows {
    pub windows: Vec<PlanWindow>,
    /// `overageInUse` / `isUsingOverage`: billed beyond the plan.
    pub extra_usage_in_use: Option<bool>,
}

/// One usage window (`five_hour`, `seven_day`, `seven_day_opus`, …).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanWindow {
    pub name: String,
    /// 0–1.
    pub utilization: f64,
    /// Unix seconds.
    pub resets_at: Option<u64>,
}

/// The most windows kept from one event (the CLI reports two to five).
const PLAN_WINDOWS_MAX: usize = 8;

impl PlanWindows {
    /// The windows of a `rate_limit_info` object, if it reports any.
    fn of(info: &Value) -> Option<PlanWindows> {
        let window = |name: &str, w: &Value| -> Option<PlanWindow> {
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let utilization = w.get("utilization").and_then(Value::as_f64)?;
            (ok_name && utilization.is_finite()).then(|| PlanWindow {
                name: name.to_string(),
                utilization: utilization.clamp(0.0, 1.0),
                resets_at: w.get("resetsAt").and_then(Value::as_u64).map(unix_seconds),
            })
        };
        let mut windows: Vec<PlanWindow> =
            match info.get("unifiedWindows").and_then(Value::as_object) {
                Some(all) => all
                    .iter()
                    .filter_map(|(name, w)| window(name, w))
                    .take(PLAN_WINDOWS_MAX)
                    .collect(),
                None => info
                    .get("rateLimitType")
                    .and_then(Value::as_str)
                    .and_then(|name| window(name, info))
                    .into_iter()
                    .collect(),
            };
        windows.sort_by(|a, b| a.name.cmp(&b.name));
        let extra_usage_in_use = info
            .get("overageInUse")
            .or_else(|| info.get("isUsingOverage"))
            .and_then(Value::as_bool);
        (!windows.is_empty() || extra_usage_in_use.is_some()).then_some(PlanWindows {
            windows,
            extra_usage_in_use,
        })
    }
}

/// Seconds from a CLI time that may be in milliseconds (a value this large can only be).
fn unix_seconds(t: u64) -> u64 {
    if t > 100_000_000_000 {
        t / 1000
    } else {
        t
    }
}

/// What the CLI puts before the name of a client tool (offered through ccgate's
/// in-process MCP server `cg`) in what the model sees and in its `tool_use` blocks.
pub const CLIENT_TOOL_PREFIX: &str = "mcp__cg__";

/// What a run reports, in order.
// `Done` is the large one and comes once per run; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CliEvent {
    /// `system/init` was seen (first line of a turn).
    Started {
        session_id: Option<String>,
        model: Option<String>,
    },
    /// A top-level upstream message began (`message_start`); the usage counts its prompt.
    MessageStart(Usage),
    /// A `text_delta` of a top-level (not sub-agent) message, as the CLI emitted it.
    TextDelta(String),
    /// A top-level `message_stop` with `abandoned_blocks`: the deltas sent so far for the
    /// current message are void; the CLI is retrying without streaming.
    Abandoned,
    /// A complete top-level, non-error assistant text block (emitted at block end).
    AssistantText(String),
    /// A top-level `tool_use` content block began streaming (`content_block_start`).
    ToolUseStart { id: String, name: String },
    /// An `input_json_delta` fragment of the top-level tool-use block being streamed.
    ToolInputDelta(String),
    /// A complete top-level `tool_use` block of an assistant message (its parsed input).
    AssistantToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A top-level `message_delta`: the message's stop reason and output usage.
    MessageDelta {
        stop_reason: Option<String>,
        output_tokens: u64,
    },
    /// A top-level `message_stop` (without abandoned blocks): the message is complete.
    MessageStop,
    /// A control-channel message from the CLI (`control_request` / `control_response`);
    /// the backend answers these itself and never forwards them.
    Control(Control),
    /// The CLI called one of the client's tools (`tools/call` with this tool-use id) and
    /// waits for its result. Emitted by the backend, not by the accumulator.
    ToolCallHeld { tool_use_id: String },
    /// A fragment of the input JSON of a top-level `StructuredOutput` tool call
    /// (`input_json_delta`), as the model wrote it.
    StructuredDelta(String),
    /// The CLI rejected a `StructuredOutput` call (its input did not match the schema);
    /// the model tries again.
    StructuredRejected,
    /// A top-level thinking block began.
    ThinkingStart,
    /// A `thinking_delta` of a top-level thinking block.
    ThinkingDelta(String),
    /// A `signature_delta` of a top-level thinking block.
    SignatureDelta(String),
    /// A complete top-level thinking block (from the assistant message).
    AssistantThinking(ThinkingBlock),
    /// The result of one of the CLI's own top-level tool calls (its `user` line): the
    /// turn fold keeps those of WebSearch / WebFetch ([`WebCall`]).
    ToolOutcome(ToolOutcome),
    /// Final event: success, or the failure facts (including timeouts, spawn errors,
    /// queue full, no result).
    Done(Result<Success, Box<FailureFacts>>),
}

/// One tool result of a CLI `user` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub id: String,
    pub is_error: bool,
    /// The `tool_result` block's `content` (what the model sees).
    pub content: Value,
    /// The line's `tool_use_result`: the tool's structured output (WebSearch:
    /// `{query, results: [{tool_use_id, content: [{title, url}]} | text…], searchCount}`).
    pub detail: Value,
}

/// A control-channel line of the CLI.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `control_request`: the CLI asks the host (`request` holds `subtype` and its fields,
    /// e.g. `mcp_message` with `server_name` and the JSON-RPC `message`).
    Request { request_id: String, request: Value },
    /// `control_response` to a request of the host's.
    Response {
        request_id: String,
        success: bool,
        error: Option<String>,
    },
}

/// How a run ended apart from its stdout: what [`RunAccumulator::conclude`] needs to decide
/// between success and failure. The live backend and `ccgate classify` / `test` both
/// build one, so a capture is judged exactly as the run it records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEnd {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr_tail: String,
    /// A watchdog that fired. After a successful result it changes nothing: the answer
    /// is complete.
    pub timeout: Option<TimeoutKind>,
    /// A gateway condition that voids even a successful result (an oversized stdout line
    /// is `BadJson`: some of the output was lost).
    pub condition: Option<GatewayCondition>,
}

/// The fields of an `assistant` line that matter to the gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssistantLine {
    /// Top-level `error` (present on the CLI's synthetic API-error messages).
    pub error: Option<String>,
    /// `message.model == "<synthetic>"` or `error` present.
    pub synthetic: bool,
    /// `parent_tool_use_id` is null/absent (not a sub-agent message).
    pub top_level: bool,
    /// `message.model`.
    pub model: Option<String>,
    /// The `text` of every `text` content block, in order.
    pub texts: Vec<String>,
    /// Every `tool_use` content block: id, name, input.
    pub tool_uses: Vec<(String, String, Value)>,
    /// Every `thinking` content block, in order.
    pub thinking: Vec<ThinkingBlock>,
    /// The ids of its `StructuredOutput` tool calls.
    pub structured_ids: Vec<String>,
    pub api_error_status: Option<u16>,
    pub api_error_type: Option<String>,
    pub api_error: Option<String>,
    /// `api_error_code` (the upstream's `error.details.error_code`, CLI 2.1.274+).
    pub api_error_code: Option<String>,
}

/// The fields of a `result` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultLine {
    pub subtype: Option<String>,
    pub is_error: bool,
    pub result: Option<String>,
    pub errors: Vec<String>,
    pub api_error_status: Option<u16>,
    pub api_error_type: Option<String>,
    pub api_error: Option<String>,
    /// `api_error_code` (the upstream's `error.details.error_code`, CLI 2.1.274+).
    pub api_error_code: Option<String>,
    /// `startup_failure_reason`: why the CLI refused to start (CLI 2.1.274+).
    pub startup_failure_reason: Option<String>,
    pub terminal_reason: Option<String>,
    pub stop_reason: Option<String>,
    pub usage: Usage,
    pub total_cost_usd: Option<f64>,
    pub num_turns: Option<u64>,
    pub session_id: Option<String>,
    /// `structured_output` (absent or null: None).
    pub structured_output: Option<Value>,
}

/// What a `content_block_start` opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    Thinking,
    /// A `tool_use` of the `StructuredOutput` tool (`--json-schema`).
    StructuredOutput,
    /// Any other `tool_use` (a client tool's call through the MCP server).
    ToolUse {
        id: String,
        name: String,
    },
    Other,
}

/// One stdout line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Blank, or not starting with `{` (the CLI's stray debug output): ignored.
    Skip,
    /// Starts with `{` but is not a JSON object: a protocol error.
    BadJson(String),
    /// `system/init`.
    Init {
        session_id: Option<String>,
        model: Option<String>,
    },
    /// `system/api_retry`.
    ApiRetry {
        error_status: Option<u16>,
        error: Option<String>,
    },
    Assistant(AssistantLine),
    /// `stream_event` `content_block_delta` / `text_delta`.
    TextDelta {
        text: String,
        top_level: bool,
    },
    /// `stream_event` `message_start`: the upstream message began; its usage counts the
    /// prompt (`input_tokens`, cache fields).
    MessageStart {
        usage: Usage,
        top_level: bool,
    },
    /// `stream_event` `message_stop` carrying `abandoned_blocks`.
    Abandoned {
        top_level: bool,
    },
    /// `stream_event` `message_stop` without abandoned blocks.
    MessageStop {
        top_level: bool,
    },
    /// `stream_event` `message_delta`.
    MessageDelta {
        stop_reason: Option<String>,
        output_tokens: u64,
        top_level: bool,
    },
    Control(Control),
    /// `stream_event` `content_block_start`.
    BlockStart {
        index: u64,
        kind: BlockKind,
        top_level: bool,
    },
    /// `stream_event` `content_block_delta` / `input_json_delta`.
    JsonDelta {
        index: u64,
        json: String,
        top_level: bool,
    },
    /// `stream_event` `content_block_delta` / `thinking_delta`.
    ThinkingDelta {
        text: String,
        top_level: bool,
    },
    /// `stream_event` `content_block_delta` / `signature_delta`.
    SignatureDelta {
        signature: String,
        top_level: bool,
    },
    /// A `user` line (the CLI's tool results): the ids of the `tool_result` blocks with
    /// `is_error: true`.
    ToolErrors {
        ids: Vec<String>,
        top_level: bool,
        /// The line's one tool result, with the CLI's structured `tool_use_result`
        /// (None when the line holds several or none).
        single: Option<ToolOutcome>,
    },
    Result(ResultLine),
    /// `rate_limit_event` (a warning such as `allowed_warning` is not a failure).
    RateLimit {
        status: Option<String>,
        /// `rate_limit_info.resetsAt`, Unix seconds (milliseconds are converted).
        resets_at: Option<u64>,
        windows: Option<PlanWindows>,
    },
    /// Any other valid JSON object (tolerated and ignored).
    Other,
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn status(v: &Value, key: &str) -> Option<u16> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn usage_of(us: &Value) -> Usage {
    Usage {
        input_tokens: u(us, "input_tokens"),
        output_tokens: u(us, "output_tokens"),
        cache_creation_input_tokens: u(us, "cache_creation_input_tokens"),
        cache_read_input_tokens: u(us, "cache_read_input_tokens"),
        thinking_tokens: us
            .get("output_tokens_details")
            .map_or(0, |d| u(d, "thinking_tokens")),
    }
}

fn top_level(v: &Value) -> bool {
    v.get("parent_tool_use_id").is_none_or(Value::is_null)
}

impl Line {
    /// Parses one stdout line (trailing `\r`/`\n` allowed).
    pub fn parse(line: &str) -> Line {
        let t = line.trim();
        if !t.starts_with('{') {
            return Line::Skip;
        }
        let v: Value = match serde_json::from_str(t) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Line::BadJson("not a JSON object".into()),
            Err(e) => return Line::BadJson(e.to_string()),
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "system" => match v.get("subtype").and_then(Value::as_str).unwrap_or("") {
                "init" => Line::Init {
                    session_id: s(&v, "session_id"),
                    model: s(&v, "model"),
                },
                "api_retry" => Line::ApiRetry {
                    error_status: status(&v, "error_status"),
                    error: s(&v, "error"),
                },
                _ => Line::Other,
            },
            "assistant" => {
                let msg = v.get("message");
                let model = msg.and_then(|m| s(m, "model"));
                let error = s(&v, "error");
                let blocks = msg
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let of_type = |t: &'static str| {
                    blocks
                        .iter()
                        .filter(move |b| b.get("type").and_then(Value::as_str) == Some(t))
                };
                let texts = of_type("text").filter_map(|b| s(b, "text")).collect();
                let thinking = of_type("thinking")
                    .map(|b| ThinkingBlock {
                        thinking: s(b, "thinking").unwrap_or_default(),
                        signature: s(b, "signature").unwrap_or_default(),
                    })
                    .collect();
                let structured_ids = of_type("tool_use")
                    .filter(|b| s(b, "name").as_deref() == Some(STRUCTURED_OUTPUT_TOOL))
                    .filter_map(|b| s(b, "id"))
                    .collect();
                let tool_uses = of_type("tool_use")
                    .filter(|b| s(b, "name").as_deref() != Some(STRUCTURED_OUTPUT_TOOL))
                    .filter_map(|b| {
                        Some((
                            s(b, "id")?,
                            s(b, "name")?,
                            b.get("input").cloned().unwrap_or(Value::Null),
                        ))
                    })
                    .collect();
                Line::Assistant(AssistantLine {
                    synthetic: error.is_some() || model.as_deref() == Some("<synthetic>"),
                    error,
                    top_level: top_level(&v),
                    model,
                    texts,
                    tool_uses,
                    thinking,
                    structured_ids,
                    api_error_status: status(&v, "api_error_status"),
                    api_error_type: s(&v, "api_error_type"),
                    api_error: s(&v, "api_error"),
                    api_error_code: s(&v, "api_error_code"),
                })
            }
            "stream_event" => {
                let Some(ev) = v.get("event") else {
                    return Line::Other;
                };
                match ev.get("type").and_then(Value::as_str).unwrap_or("") {
                    "message_start" => Line::MessageStart {
                        usage: ev
                            .get("message")
                            .and_then(|m| m.get("usage"))
                            .map(usage_of)
                            .unwrap_or_default(),
                        top_level: top_level(&v),
                    },
                    "content_block_start" => {
                        let block = ev.get("content_block");
                        let kind = match block.and_then(|b| s(b, "type")).as_deref() {
                            Some("thinking") => BlockKind::Thinking,
                            Some("tool_use")
                                if block.and_then(|b| s(b, "name")).as_deref()
                                    == Some(STRUCTURED_OUTPUT_TOOL) =>
                            {
                                BlockKind::StructuredOutput
                            }
                            Some("tool_use") => match (
                                block.and_then(|b| s(b, "id")),
                                block.and_then(|b| s(b, "name")),
                            ) {
                                (Some(id), Some(name)) => BlockKind::ToolUse { id, name },
                                _ => BlockKind::Other,
                            },
                            _ => BlockKind::Other,
                        };
                        Line::BlockStart {
                            index: u(ev, "index"),
                            kind,
                            top_level: top_level(&v),
                        }
                    }
                    "content_block_delta" => {
                        let Some(delta) = ev.get("delta") else {
                            return Line::Other;
                        };
                        let top_level = top_level(&v);
                        match (delta.get("type").and_then(Value::as_str), delta) {
                            (Some("text_delta"), d) => match s(d, "text") {
                                Some(text) => Line::TextDelta { text, top_level },
                                None => Line::Other,
                            },
                            (Some("input_json_delta"), d) => match s(d, "partial_json") {
                                Some(json) => Line::JsonDelta {
                                    index: u(ev, "index"),
                                    json,
                                    top_level,
                                },
                                None => Line::Other,
                            },
                            (Some("thinking_delta"), d) => match s(d, "thinking") {
                                Some(text) => Line::ThinkingDelta { text, top_level },
                                None => Line::Other,
                            },
                            (Some("signature_delta"), d) => match s(d, "signature") {
                                Some(signature) => Line::SignatureDelta {
                                    signature,
                                    top_level,
                                },
                                None => Line::Other,
                            },
                            _ => Line::Other,
                        }
                    }
                    "message_delta" => Line::MessageDelta {
                        stop_reason: ev.get("delta").and_then(|d| s(d, "stop_reason")),
                        output_tokens: ev.get("usage").map_or(0, |u| self::u(u, "output_tokens")),
                        top_level: top_level(&v),
                    },
                    "message_stop" if v.get("abandoned_blocks").is_some_and(|a| !a.is_null()) => {
                        Line::Abandoned {
                            top_level: top_level(&v),
                        }
                    }
                    "message_stop" => Line::MessageStop {
                        top_level: top_level(&v),
                    },
                    _ => Line::Other,
                }
            }
            "result" => {
                let usage = v.get("usage").map(usage_of).unwrap_or_default();
                Line::Result(ResultLine {
                    subtype: s(&v, "subtype"),
                    is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    result: s(&v, "result"),
                    errors: v
                        .get("errors")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    api_error_status: status(&v, "api_error_status"),
                    api_error_type: s(&v, "api_error_type"),
                    api_error: s(&v, "api_error"),
                    api_error_code: s(&v, "api_error_code"),
                    startup_failure_reason: s(&v, "startup_failure_reason"),
                    terminal_reason: s(&v, "terminal_reason"),
                    stop_reason: s(&v, "stop_reason"),
                    usage,
                    total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
                    num_turns: v.get("num_turns").and_then(Value::as_u64),
                    session_id: s(&v, "session_id"),
                    structured_output: v.get("structured_output").filter(|o| !o.is_null()).cloned(),
                })
            }
            "control_request" => match s(&v, "request_id") {
                Some(request_id) => Line::Control(Control::Request {
                    request_id,
                    request: v.get("request").cloned().unwrap_or(Value::Null),
                }),
                None => Line::Other,
            },
            "control_response" => {
                let r = v.get("response");
                match r.and_then(|r| s(r, "request_id")) {
                    Some(request_id) => Line::Control(Control::Response {
                        request_id,
                        success: r.and_then(|r| r.get("subtype")).and_then(Value::as_str)
                            == Some("success"),
                        error: r.and_then(|r| s(r, "error")),
                    }),
                    None => Line::Other,
                }
            }
            "user" => {
                let results: Vec<&Value> = v
                    .get("message")
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_array)
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter(|b| {
                                b.get("type").and_then(Value::as_str) == Some("tool_result")
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let ids = results
                    .iter()
                    .filter(|b| b.get("is_error").and_then(Value::as_bool) == Some(true))
                    .filter_map(|b| s(b, "tool_use_id"))
                    .collect();
                let single = match results.as_slice() {
                    [one] => s(one, "tool_use_id").map(|id| ToolOutcome {
                        id,
                        is_error: one.get("is_error").and_then(Value::as_bool) == Some(true),
                        content: one.get("content").cloned().unwrap_or(Value::Null),
                        detail: v.get("tool_use_result").cloned().unwrap_or(Value::Null),
                    }),
                    _ => None,
                };
                Line::ToolErrors {
                    ids,
                    top_level: top_level(&v),
                    single,
                }
            }
            "rate_limit_event" => {
                let info = v.get("rate_limit_info");
                Line::RateLimit {
                    status: info
                        .and_then(|i| s(i, "status"))
                        .or_else(|| s(&v, "status")),
                    resets_at: info
                        .and_then(|i| i.get("resetsAt"))
                        .and_then(Value::as_u64)
                        .map(unix_seconds),
                    windows: info.and_then(PlanWindows::of),
                }
            }
            _ => Line::Other,
        }
    }
}

/// Folds the stdout lines of one run into events and, at the end, a success or failure.
#[derive(Debug, Clone, Default)]
pub struct RunAccumulator {
    facts: FailureFacts,
    bad_json: bool,
    session_id: Option<String>,
    model: Option<String>,
    last_result: Option<ResultLine>,
    /// The index of the top-level `StructuredOutput` block of the current message.
    structured_block: Option<u64>,
    /// The ids of the top-level `StructuredOutput` calls so far (bounded by the turns).
    structured_ids: Vec<String>,
    /// The last `rate_limit_event`'s usage windows.
    plan_windows: Option<PlanWindows>,
}

impl RunAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one stdout line; returns the events it produces (often none).
    pub fn push_line(&mut self, line: &str) -> Vec<CliEvent> {
        match Line::parse(line) {
            Line::Skip | Line::Other => vec![],
            Line::BlockStart {
                index,
                kind,
                top_level: true,
            } => match kind {
                BlockKind::StructuredOutput => {
                    self.structured_block = Some(index);
                    vec![]
                }
                BlockKind::Thinking => vec![CliEvent::ThinkingStart],
                BlockKind::ToolUse { id, name } => vec![CliEvent::ToolUseStart { id, name }],
                BlockKind::Other => vec![],
            },
            Line::JsonDelta {
                index,
                json,
                top_level: true,
            } => {
                if self.structured_block == Some(index) {
                    vec![CliEvent::StructuredDelta(json)]
                } else {
                    vec![CliEvent::ToolInputDelta(json)]
                }
            }
            Line::ThinkingDelta {
                text,
                top_level: true,
            } => vec![CliEvent::ThinkingDelta(text)],
            Line::SignatureDelta {
                signature,
                top_level: true,
            } => vec![CliEvent::SignatureDelta(signature)],
            Line::ToolErrors {
                ids,
                top_level: true,
                ..
            } if ids.iter().any(|id| self.structured_ids.contains(id)) => {
                vec![CliEvent::StructuredRejected]
            }
            Line::ToolErrors {
                top_level: true,
                single: Some(outcome),
                ..
            } => vec![CliEvent::ToolOutcome(outcome)],
            Line::BlockStart { .. }
            | Line::JsonDelta { .. }
            | Line::ThinkingDelta { .. }
            | Line::SignatureDelta { .. }
            | Line::ToolErrors { .. } => vec![],
            Line::RateLimit {
                status,
                resets_at,
                windows,
            } => {
                if windows.is_some() {
                    self.plan_windows = windows;
                }
                // Only a rejection's reset time says when a retry can succeed; the
                // `allowed*` events describe a window that has not run out.
                if status.as_deref() == Some("rejected") && resets_at.is_some() {
                    self.facts.rate_limit_resets_at = resets_at;
                }
                if status.is_some() {
                    self.facts.rate_limit_status = status;
                }
                vec![]
            }
            Line::BadJson(_) => {
                self.bad_json = true;
                vec![]
            }
            Line::Init { session_id, model } => {
                if session_id.is_some() {
                    self.session_id.clone_from(&session_id);
                }
                if model.is_some() {
                    self.model.clone_from(&model);
                }
                vec![CliEvent::Started { session_id, model }]
            }
            Line::ApiRetry {
                error_status,
                error,
            } => {
                self.facts.retry_statuses.extend(error_status);
                self.facts.retry_errors.extend(error);
                vec![]
            }
            Line::TextDelta { text, top_level } => {
                if top_level {
                    vec![CliEvent::TextDelta(text)]
                } else {
                    vec![]
                }
            }
            Line::MessageStart { usage, top_level } => {
                if top_level {
                    self.structured_block = None;
                    vec![CliEvent::MessageStart(usage)]
                } else {
                    vec![]
                }
            }
            Line::MessageStop { top_level } => {
                if top_level {
                    vec![CliEvent::MessageStop]
                } else {
                    vec![]
                }
            }
            Line::MessageDelta {
                stop_reason,
                output_tokens,
                top_level,
            } => {
                if top_level {
                    vec![CliEvent::MessageDelta {
                        stop_reason,
                        output_tokens,
                    }]
                } else {
                    vec![]
                }
            }
            Line::Control(c) => vec![CliEvent::Control(c)],
            // A sub-agent's abandoned attempt voids none of the top-level answer.
            Line::Abandoned { top_level } => {
                if top_level {
                    vec![CliEvent::Abandoned]
                } else {
                    vec![]
                }
            }
            Line::Assistant(a) => {
                if a.synthetic {
                    let f = &mut self.facts;
                    if a.error.is_some() {
                        f.assistant_error = a.error;
                    }
                    let text = a.texts.join("\n");
                    if !text.is_empty() {
                        f.assistant_error_text = Some(text);
                    }
                    f.api_error_status = a.api_error_status.or(f.api_error_status);
                    f.api_error_type = a.api_error_type.or(f.api_error_type.take());
                    f.api_error = a.api_error.or(f.api_error.take());
                    f.api_error_code = a.api_error_code.or(f.api_error_code.take());
                    vec![]
                } else {
                    if self.model.is_none() {
                        self.model = a.model;
                    }
                    if a.top_level {
                        self.structured_ids.extend(a.structured_ids);
                        let tools = a.tool_uses.into_iter().map(|(id, name, input)| {
                            CliEvent::AssistantToolUse { id, name, input }
                        });
                        a.thinking
                            .into_iter()
                            .map(CliEvent::AssistantThinking)
                            .chain(a.texts.into_iter().map(CliEvent::AssistantText))
                            .chain(tools)
                            .collect()
                    } else {
                        vec![]
                    }
                }
            }
            Line::Result(r) => {
                let f = &mut self.facts;
                f.result_seen = true;
                f.result_subtype.clone_from(&r.subtype);
                f.result_is_error = r.is_error;
                f.result_text = if r.is_error { r.result.clone() } else { None };
                f.result_errors.clone_from(&r.errors);
                if r.api_error_status.is_some() {
                    f.api_error_status = r.api_error_status;
                }
                if r.api_error_type.is_some() {
                    f.api_error_type.clone_from(&r.api_error_type);
                }
                if r.api_error.is_some() {
                    f.api_error.clone_from(&r.api_error);
                }
                if r.api_error_code.is_some() {
                    f.api_error_code.clone_from(&r.api_error_code);
                }
                f.startup_failure_reason
                    .clone_from(&r.startup_failure_reason);
                f.terminal_reason.clone_from(&r.terminal_reason);
                if r.session_id.is_some() && self.session_id.is_none() {
                    self.session_id.clone_from(&r.session_id);
                }
                self.last_result = Some(r);
                vec![]
            }
        }
    }

    /// Whether the last `result` so far was a success (None: no result yet).
    pub fn last_result_ok(&self) -> Option<bool> {
        self.last_result.as_ref().map(|r| !r.is_error)
    }

    /// The run's conclusion, the one place success and failure are decided (live runs
    /// and captures alike). Success only if the last `result` had `is_error: false` and
    /// no gateway condition voids it (a watchdog that fired after the result does not);
    /// otherwise the failure facts, with `condition` BadJson (a broken `{` line) or
    /// NoResult (no result line at all, whatever the exit status) when nothing more
    /// specific is known.
    pub fn conclude(self, end: RunEnd) -> Result<Success, Box<FailureFacts>> {
        if end.condition.is_none() {
            if let Some(r) = self.last_result.as_ref().filter(|r| !r.is_error) {
                return Ok(Success {
                    text: r.result.clone().unwrap_or_default(),
                    stop_reason: r.stop_reason.clone(),
                    stop_sequence: None,
                    usage: r.usage.clone(),
                    total_cost_usd: r.total_cost_usd,
                    num_turns: r.num_turns,
                    session_id: self.session_id.clone().or_else(|| r.session_id.clone()),
                    model: self.model.clone(),
                    tool_calls: Vec::new(),
                    structured_output: r.structured_output.clone(),
                    thinking: Vec::new(),
                    plan_windows: self.plan_windows.clone(),
                    web: Vec::new(),
                });
            }
        }
        let mut facts = self.facts;
        facts.exit_code = end.exit_code;
        facts.signal = end.signal;
        facts.stderr_tail = end.stderr_tail;
        facts.timeout = end.timeout;
        facts.condition = if end.condition.is_some() {
            end.condition
        } else if self.bad_json {
            Some(GatewayCondition::BadJson)
        } else if !facts.result_seen {
            Some(GatewayCondition::NoResult)
        } else {
            None
        };
        Err(Box::new(facts))
    }
}

#[cfg(test)]
mod tests;
