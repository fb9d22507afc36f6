//! TEMPORARY: replaced at merge. A minimal stand-in for the stream-json parser that another
//! engineer owns (same public API: `RunAccumulator::{new, push_line, finish}`), written only
//! so the process driver can compile and be tested. The driver uses nothing else from here.

use serde_json::Value;

use crate::backend::{CliEvent, Success, Usage};
use crate::rules::{FailureFacts, GatewayCondition};

/// Accumulates one run's stdout lines into events and, at the end, a success or facts.
#[derive(Debug, Default)]
pub struct RunAccumulator {
    facts: FailureFacts,
    success: Option<Success>,
    model: Option<String>,
    session_id: Option<String>,
    bad_json: bool,
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn texts_of(message: &Value) -> Vec<String> {
    message
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| str_of(b, "text"))
                .collect()
        })
        .unwrap_or_default()
}

impl RunAccumulator {
    /// A fresh accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// One raw stdout line (without '\n'). Skips blank / non-'{' lines; a bad '{' line is
    /// recorded as BadJson.
    pub fn push_line(&mut self, line: &str) -> Vec<CliEvent> {
        let line = line.trim();
        if !line.starts_with('{') {
            return Vec::new();
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.bad_json = true;
            return Vec::new();
        };
        let top_level = v.get("parent_tool_use_id").is_none_or(Value::is_null);
        let mut out = Vec::new();
        match v.get("type").and_then(Value::as_str) {
            Some("system") => match v.get("subtype").and_then(Value::as_str) {
                Some("init") => {
                    self.session_id = str_of(&v, "session_id");
                    self.model = str_of(&v, "model");
                    out.push(CliEvent::Started {
                        session_id: self.session_id.clone(),
                        model: self.model.clone(),
                    });
                }
                Some("api_retry") => {
                    if let Some(s) = v.get("error_status").and_then(Value::as_u64) {
                        self.facts.retry_statuses.push(s as u16);
                    }
                    if let Some(e) = str_of(&v, "error") {
                        self.facts.retry_errors.push(e);
                    }
                }
                _ => {}
            },
            Some("stream_event") if top_level => {
                let ev = v.get("event").unwrap_or(&Value::Null);
                match ev.get("type").and_then(Value::as_str) {
                    Some("content_block_delta") => {
                        let d = ev.get("delta").unwrap_or(&Value::Null);
                        if d.get("type").and_then(Value::as_str) == Some("text_delta") {
                            if let Some(t) = str_of(d, "text") {
                                out.push(CliEvent::TextDelta(t));
                            }
                        }
                    }
                    Some("message_stop") if v.get("abandoned_blocks").is_some() => {
                        out.push(CliEvent::Abandoned);
                    }
                    _ => {}
                }
            }
            Some("assistant") => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                if let Some(err) = str_of(&v, "error") {
                    self.facts.assistant_error = Some(err);
                    self.facts.assistant_error_text = Some(texts_of(msg).join(""));
                    if let Some(s) = v.get("api_error_status").and_then(Value::as_u64) {
                        self.facts.api_error_status = Some(s as u16);
                    }
                } else if top_level {
                    if self.model.is_none() {
                        self.model = str_of(msg, "model");
                    }
                    out.extend(texts_of(msg).into_iter().map(CliEvent::AssistantText));
                }
            }
            Some("result") => {
                let f = &mut self.facts;
                f.result_seen = true;
                f.result_subtype = str_of(&v, "subtype");
                f.result_is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(true);
                f.terminal_reason = str_of(&v, "terminal_reason");
                if let Some(s) = v.get("api_error_status").and_then(Value::as_u64) {
                    f.api_error_status = Some(s as u16);
                }
                f.api_error_type = str_of(&v, "api_error_type");
                f.api_error = str_of(&v, "api_error");
                f.result_errors = v
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if f.result_is_error {
                    f.result_text = str_of(&v, "result");
                    self.success = None;
                } else {
                    let u = v.get("usage").unwrap_or(&Value::Null);
                    self.success = Some(Success {
                        text: str_of(&v, "result").unwrap_or_default(),
                        stop_reason: str_of(&v, "stop_reason"),
                        usage: Usage {
                            input_tokens: u64_of(u, "input_tokens"),
                            output_tokens: u64_of(u, "output_tokens"),
                            cache_creation_input_tokens: u64_of(u, "cache_creation_input_tokens"),
                            cache_read_input_tokens: u64_of(u, "cache_read_input_tokens"),
                        },
                        total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
                        num_turns: v.get("num_turns").and_then(Value::as_u64),
                        session_id: str_of(&v, "session_id").or_else(|| self.session_id.clone()),
                        model: self.model.clone(),
                    });
                }
            }
            _ => {}
        }
        out
    }

    /// Success iff a result with is_error=false was seen; else the failure facts.
    pub fn finish(
        self,
        exit_code: Option<i32>,
        signal: Option<i32>,
        stderr_tail: String,
    ) -> Result<Success, Box<FailureFacts>> {
        if let Some(s) = self.success {
            return Ok(s);
        }
        let mut f = self.facts;
        f.exit_code = exit_code;
        f.signal = signal;
        f.stderr_tail = stderr_tail;
        if !f.result_seen {
            f.condition = Some(if self.bad_json {
                GatewayCondition::BadJson
            } else {
                GatewayCondition::NoResult
            });
        }
        Err(Box::new(f))
    }
}
