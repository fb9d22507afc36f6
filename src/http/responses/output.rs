//! The `response` object (the request's settings echoed), its output items and usage, and
//! storing the answered conversation for `previous_response_id`.

use serde_json::{json, Value};

use super::reasoning::reasoning_id;
use super::request::ResponsesRequest;
use super::tools::ToolKind;
use crate::conversation::{Block, Message, Role};
use crate::protocol::{Success, Usage, WebCall, WebKind};
use crate::response_store::{StoredConversation, StoredItem};

pub(super) fn incomplete(s: &Success) -> bool {
    matches!(s.stop_reason.as_deref(), Some("max_tokens" | "max_turns"))
}

pub(super) fn usage(u: &Usage) -> Value {
    let input = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + u.output_tokens,
    })
}

/// The output item id of the call `call_id` (`fc_…`, `ctc_…` for a custom tool; derived
/// so both paths agree).
pub(super) fn call_item_id(call_id: &str, kind: &ToolKind) -> String {
    let prefix = match kind {
        ToolKind::Custom => "ctc",
        ToolKind::Function { .. } => "fc",
    };
    format!(
        "{prefix}_{}",
        call_id.strip_prefix("toolu_").unwrap_or(call_id)
    )
}

/// The output item of a call: a `function_call` (with its `namespace` when the tool came
/// from one) or a `custom_tool_call` (its `input` is the call's `input` string;
/// `arguments` is the call's JSON text, empty while streaming).
pub(super) fn call_item(
    kind: &ToolKind,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    let id = call_item_id(call_id, kind);
    match kind {
        ToolKind::Custom => {
            let input = serde_json::from_str::<Value>(arguments)
                .ok()
                .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            json!({"id": id, "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": name, "input": input})
        }
        ToolKind::Function { namespace } => {
            let mut item = json!({"id": id, "type": "function_call", "status": status,
                "arguments": arguments, "call_id": call_id, "name": name});
            if let Some(ns) = namespace {
                item["namespace"] = ns.as_str().into();
            }
            item
        }
    }
}

/// The output item of one of the CLI's web searches (`web_search_call`; its id derived
/// from the CLI's tool-use id).
pub(super) fn web_item(call: &WebCall) -> Value {
    let id = format!("ws_{}", call.id.strip_prefix("toolu_").unwrap_or(&call.id));
    let status = if call.error.is_some() {
        "failed"
    } else {
        "completed"
    };
    let sources: Vec<Value> = call
        .sources
        .iter()
        .map(|s| json!({"type": "url", "url": s.url}))
        .collect();
    let action = match call.kind {
        WebKind::Search => json!({"type": "search", "query": call.query, "sources": sources}),
        WebKind::Fetch => json!({"type": "open_page", "url": call.query}),
    };
    json!({"id": id, "type": "web_search_call", "status": status, "action": action})
}

/// The `url_citation` annotations of `text`: where it links the searches' sources
/// (character offsets, as OpenAI counts).
pub(super) fn annotations(text: &str, web: &[WebCall]) -> Value {
    use crate::protocol::web::{char_index, citations};
    Value::Array(
        citations(text, web)
            .iter()
            .map(|c| {
                json!({"type": "url_citation", "start_index": char_index(text, c.start),
                    "end_index": char_index(text, c.end), "url": c.source.url,
                    "title": c.source.title})
            })
            .collect(),
    )
}

/// The assistant message item of an answer.
pub(super) fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}]),
        None => json!([]),
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

impl ResponsesRequest {
    /// The `response` object with this request's settings echoed.
    pub(super) fn response(&self, id: &str, created_at: u64, status: &str, output: Value) -> Value {
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
            "reasoning": self.reasoning_echo(),
            "service_tier": "default",
            "store": self.store.unwrap_or(true),
            "temperature": self.temperature.unwrap_or(1.0),
            "text": {
                "format": self.text.as_ref().and_then(|t| t.get("format")).filter(|f| !f.is_null())
                    .cloned().unwrap_or_else(|| json!({"type": "text"})),
                "verbosity": "medium",
            },
            "tool_choice": self.tool_choice.clone().filter(|c| !c.is_null()).unwrap_or_else(|| "auto".into()),
            "tools": self.tools.iter().flatten().map(crate::http::bounded::ToolDef::to_value).collect::<Vec<_>>(),
            "top_logprobs": 0,
            "top_p": self.top_p.unwrap_or(1.0),
            "truncation": "disabled",
            "usage": null,
            "user": self.user,
            "metadata": self.metadata.clone().filter(|m| !m.is_null()).unwrap_or_else(|| json!({})),
        })
    }

    /// `reasoning` as the request gave it (`effort` and `summary`, null when not given).
    fn reasoning_echo(&self) -> Value {
        let field = |k: &str| {
            self.reasoning
                .as_ref()
                .and_then(|r| r.get(k))
                .cloned()
                .unwrap_or(Value::Null)
        };
        json!({"effort": field("effort"), "summary": field("summary")})
    }

    /// The finished `response` object of an answer.
    pub(super) fn finished(
        &self,
        id: &str,
        created_at: u64,
        msg_id: &str,
        s: &Success,
        text: &str,
    ) -> Value {
        let (status, details) = if incomplete(s) {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        } else {
            ("completed", Value::Null)
        };
        let mut output = Vec::with_capacity(s.tool_calls.len() + s.thinking.len() + 1);
        if self.shows_reasoning() {
            output.extend(
                s.thinking
                    .iter()
                    .map(|t| self.reasoning_item(&reasoning_id(), &t.thinking, &t.signature)),
            );
        }
        output.extend(s.web.iter().map(web_item));
        if !text.is_empty() || s.tool_calls.is_empty() {
            let mut item = message_item(msg_id, status, Some(text));
            item["content"][0]["annotations"] = annotations(text, &s.web);
            output.push(item);
        }
        output.extend(s.tool_calls.iter().map(|c| {
            let kind = self.tool_kind(&c.name);
            call_item(&kind, &c.id, &c.name, &c.input.to_string(), "completed")
        }));
        let mut r = self.response(id, created_at, status, Value::Array(output));
        r["incomplete_details"] = details;
        r["usage"] = usage(&s.usage);
        r
    }

    /// Stores the answered conversation under `id` (unless `store: false`), with the
    /// answer's `output` items for `item_reference`.
    pub(super) fn remember(&self, id: &str, text: &str, s: &Success, output: &Value) {
        let (Some((store, tenant)), Some(c)) = (&self.ctx.store, self.ctx.conversation.get())
        else {
            return;
        };
        let mut messages = c.messages.clone();
        let mut blocks = vec![Block::Text(text.to_string())];
        blocks.extend(s.tool_calls.iter().map(|c| Block::ToolUse {
            id: c.id.clone(),
            name: c.name.clone(),
            input: crate::conversation::RawJson::from_value(&c.input),
        }));
        messages.push(Message::new(Role::Assistant, blocks));
        let items = output
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(stored_item)
            .collect();
        let stored = StoredConversation {
            model: self.model.clone(),
            messages,
        };
        if !store.put_with_items(id, tenant, stored, items) {
            tracing::debug!(response_id = id, "conversation too large to store");
        }
    }
}

/// An output item as the message an `item_reference` to it stands for (None: an item
/// that is not shown to the model again).
fn stored_item(item: &Value) -> Option<StoredItem> {
    let id = item.get("id")?.as_str()?.to_string();
    let message = match item.get("type")?.as_str()? {
        "message" => {
            let text: String = item
                .get("content")?
                .as_array()?
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            Message::text(Role::Assistant, text)
        }
        "function_call" => Message::new(
            Role::Assistant,
            vec![Block::ToolUse {
                id: item.get("call_id")?.as_str()?.to_string(),
                name: item.get("name")?.as_str()?.to_string(),
                input: crate::conversation::RawJson::parse(item.get("arguments")?.as_str()?)
                    .ok()?,
            }],
        ),
        // Without ccgate's encrypted_content: stands for nothing the model sees again.
        "reasoning" => super::reasoning::reasoning_input(item)
            .unwrap_or_else(|| Message::new(Role::Assistant, Vec::new())),
        "custom_tool_call" => Message::new(
            Role::Assistant,
            vec![Block::ToolUse {
                id: item.get("call_id")?.as_str()?.to_string(),
                name: item.get("name")?.as_str()?.to_string(),
                input: crate::conversation::RawJson::from_value(
                    &json!({"input": item.get("input")?.as_str()?}),
                ),
            }],
        ),
        _ => return None,
    };
    Some(StoredItem { id, message })
}
