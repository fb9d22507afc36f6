//! Reasoning items: the model's thinking as the Responses API reports it.
//!
//! `reasoning.summary` (`auto`, `concise`, `detailed`) asks for `reasoning` output items
//! whose `summary` is the model's thinking as the CLI shows it (one `summary_text` per
//! thinking block; Claude's thinking is already summarised by the API); `none` (or no
//! summary) gives none. `include: ["reasoning.encrypted_content"]` adds
//! `encrypted_content` to each item: the thinking block with its signature, in a form this
//! gateway reads back, so a stateless client (`store: false`, Codex CLI) that returns the
//! item on its next turn gives the model its thinking again. (It is not encrypted: it is
//! the same text the summary shows, and the signature guards it upstream.)

use serde_json::{json, Value};

use super::request::ResponsesRequest;
use crate::conversation::{Block, Message, Role};

/// What marks ccgate's `encrypted_content` (the version of its format).
const PREFIX: &str = "ccgate-thinking-v1:";

impl ResponsesRequest {
    /// `reasoning.summary` (or the older `generate_summary`) asks for summaries.
    pub(super) fn summaries(&self) -> bool {
        let r = self.reasoning.as_ref();
        ["summary", "generate_summary"].iter().any(|k| {
            r.and_then(|r| r.get(*k))
                .and_then(Value::as_str)
                .is_some_and(|s| matches!(s, "auto" | "concise" | "detailed"))
        })
    }

    /// `include` asks for `reasoning.encrypted_content`.
    pub(super) fn encrypted_reasoning(&self) -> bool {
        self.include
            .iter()
            .flatten()
            .any(|s| s == "reasoning.encrypted_content")
    }

    /// The answer has reasoning items.
    pub(super) fn shows_reasoning(&self) -> bool {
        self.summaries() || self.encrypted_reasoning()
    }

    /// A `reasoning` output item of one thinking block.
    pub(super) fn reasoning_item(&self, id: &str, thinking: &str, signature: &str) -> Value {
        let summary = if self.summaries() && !thinking.is_empty() {
            json!([{"type": "summary_text", "text": thinking}])
        } else {
            json!([])
        };
        let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
        if self.encrypted_reasoning() {
            item["encrypted_content"] = encode(thinking, signature).into();
        }
        item
    }
}

/// A new reasoning item id.
pub(super) fn reasoning_id() -> String {
    format!("rs_{}", uuid::Uuid::new_v4().simple())
}

fn encode(thinking: &str, signature: &str) -> String {
    format!(
        "{PREFIX}{}",
        json!({"thinking": thinking, "signature": signature})
    )
}

/// A `reasoning` input item as the thinking block it carries (None: an item without
/// ccgate's `encrypted_content`, which is not shown to the model again, as before).
pub(super) fn reasoning_input(item: &Value) -> Option<Message> {
    let text = item
        .get("encrypted_content")?
        .as_str()?
        .strip_prefix(PREFIX)?;
    let v: Value = serde_json::from_str(text).ok()?;
    let signature = v.get("signature")?.as_str()?.to_string();
    Some(Message::new(
        Role::Assistant,
        vec![Block::Thinking {
            text: v.get("thinking")?.as_str()?.to_string(),
            signature: (!signature.is_empty()).then_some(signature),
            redacted: false,
        }],
    ))
}
