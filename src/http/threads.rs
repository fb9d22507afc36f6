//! The Anthropic Threads beta (`anthropic-beta: message-threads-2026-08-12`) on the store
//! that backs Responses' `previous_response_id` ([`crate::response_store`]: per API key,
//! bounded, expiring, per replica). `thread: {"type": "create"}` stores the answered
//! conversation (system prompt, messages, answer, tools) under the answer's id;
//! `{"type": "continue", "previous_message_id": id}` prepends the stored conversation to
//! the request's new messages and takes the thread's system prompt and tools when the
//! request does not repeat them, then stores the longer thread under the new answer's id.
//! The SDKs' tool runners use threads by default.
//!
//! What cannot be served is refused in the shape the SDKs recover from
//! (`error.details.error_code`): an unknown, expired or another key's
//! `previous_message_id` is `thread_not_found` (404: the SDK replays the full history
//! under a new thread); a malformed `thread` is `thread_unsupported_request` (400: the
//! tool runner resends without `thread`). Never a 200 without the history.

use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::conversation::{Block, Conversation, Message, RawJson, Role};
use crate::http::errors::ApiError;
use crate::http::state::AppState;
use crate::protocol::Success;
use crate::response_store::{ResponseStore, StoredConversation};

/// A request's thread, as `prepare` found it.
#[derive(Default)]
pub struct ThreadCtx {
    /// The stored thread `continue` names: its conversation and tools.
    pub previous: Option<(Arc<StoredConversation>, Option<RawJson>)>,
    /// Where the answered thread is stored (a `thread` was given), for which tenant.
    store: Option<(Arc<ResponseStore>, String)>,
    /// The whole conversation the answer continues (set by `translate`).
    pub conversation: OnceLock<Conversation>,
    /// The thread's tools (the request's or the stored ones), as JSON text.
    pub tools: OnceLock<Option<RawJson>>,
}

impl std::fmt::Debug for ThreadCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCtx")
            .field("continues", &self.previous.is_some())
            .field("stores", &self.store.is_some())
            .finish()
    }
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::Thread {
        code: "thread_unsupported_request",
        message: message.into(),
    }
}

/// Resolves `thread` for `tenant`: a `continue` finds its stored thread (or is
/// `thread_not_found`); any thread is stored when answered.
pub fn prepare(
    thread: Option<&Value>,
    ctx: &mut ThreadCtx,
    state: &AppState,
    tenant: &str,
) -> Result<(), ApiError> {
    let Some(thread) = thread.filter(|t| !t.is_null()) else {
        return Ok(());
    };
    match thread.get("type").and_then(Value::as_str) {
        Some("create") => {}
        Some("continue") => {
            let Some(id) = thread.get("previous_message_id").and_then(Value::as_str) else {
                return Err(unsupported(
                    "thread.previous_message_id: required for `continue`",
                ));
            };
            let found = state.responses.get_thread(id, tenant).ok_or_else(|| {
                ApiError::Thread {
                    code: "thread_not_found",
                    message: format!(
                        "thread: no stored thread for previous_message_id '{}' (this gateway keeps threads for a limited time, shared by replicas only with a shared state store); send the full conversation with thread type `create`",
                        crate::http::responses::shown_id(id)
                    ),
                }
            })?;
            ctx.previous = Some(found);
        }
        _ => return Err(unsupported("thread.type: must be `create` or `continue`")),
    }
    ctx.store = Some((Arc::clone(&state.responses), tenant.to_string()));
    Ok(())
}

/// The stored thread's messages (its system prompt as a leading system message), then
/// the request's; None without a `continue`.
impl ThreadCtx {
    /// The answered thread will be stored (the request has a `thread`).
    pub fn stores(&self) -> bool {
        self.store.is_some()
    }
}

pub fn continued(ctx: &ThreadCtx, mut messages: Vec<Message>) -> Vec<Message> {
    match &ctx.previous {
        None => messages,
        Some((stored, _)) => {
            let mut all = stored.messages.clone();
            all.append(&mut messages);
            all
        }
    }
}

/// Stores the answered thread under `id` (when the request has a thread).
pub fn remember(ctx: &ThreadCtx, model: &str, id: &str, s: &Success) {
    let (Some((store, tenant)), Some(c)) = (&ctx.store, ctx.conversation.get()) else {
        return;
    };
    let mut messages = Vec::with_capacity(c.messages.len() + 2);
    if let Some(system) = &c.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    messages.extend(c.messages.iter().cloned());
    let mut blocks: Vec<Block> = s
        .thinking
        .iter()
        .map(|t| Block::Thinking {
            text: t.thinking.clone(),
            signature: Some(t.signature.clone()).filter(|s| !s.is_empty()),
            redacted: false,
        })
        .collect();
    if !s.text.is_empty() || s.tool_calls.is_empty() {
        blocks.push(Block::Text(s.text.clone()));
    }
    blocks.extend(s.tool_calls.iter().map(|c| Block::ToolUse {
        id: c.id.clone(),
        name: c.name.clone(),
        input: crate::conversation::RawJson::from_value(&c.input),
    }));
    messages.push(Message::new(Role::Assistant, blocks));
    let stored = StoredConversation {
        model: model.to_string(),
        messages,
    };
    let tools = ctx.tools.get().cloned().flatten();
    if !store.put_thread(id, tenant, stored, tools) {
        tracing::debug!(message_id = id, "thread too large to store");
    }
}
