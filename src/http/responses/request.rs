//! The Responses request as parsed: the body's fields and what `prepare` and `translate`
//! find on the way (the stored conversation, where the answer is stored).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::Value;

use crate::conversation::{Conversation, Message};
use crate::response_store::{ResponseStore, StoredConversation};

#[derive(Deserialize)]
pub struct ResponsesRequest {
    pub(super) model: String,
    #[serde(default)]
    pub(super) input: Option<Input>,
    #[serde(default)]
    pub(super) instructions: Option<String>,
    #[serde(default)]
    pub(super) max_output_tokens: Option<i64>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(default)]
    pub(super) store: Option<bool>,
    #[serde(default)]
    pub(super) previous_response_id: Option<String>,
    #[serde(default, deserialize_with = "crate::http::bounded::trees")]
    pub(super) tools: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    pub(super) tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    pub(super) text: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    pub(super) reasoning: Option<Value>,
    #[serde(default)]
    pub(super) background: Option<bool>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    pub(super) conversation: Option<Value>,
    #[serde(default, deserialize_with = "crate::http::bounded::tree")]
    pub(super) prompt: Option<Value>,
    #[serde(default)]
    pub(super) include: Option<Vec<String>>,
    #[serde(default)]
    pub(super) top_logprobs: Option<u64>,
    #[serde(default)]
    pub(super) truncation: Option<String>,
    #[serde(default, deserialize_with = "crate::http::bounded::metadata")]
    pub(super) metadata: Option<Value>,
    #[serde(default)]
    pub(super) temperature: Option<f64>,
    #[serde(default)]
    pub(super) top_p: Option<f64>,
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) parallel_tool_calls: Option<bool>,
    /// What [`Responses::prepare`] and [`Responses::translate`] found.
    #[serde(skip)]
    pub(super) ctx: Ctx,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Default)]
pub(super) struct Ctx {
    /// The stored conversation `previous_response_id` names.
    pub(super) previous: Option<Arc<StoredConversation>>,
    /// Where the answer is stored (None with `store: false`), and for which tenant.
    pub(super) store: Option<(Arc<ResponseStore>, String)>,
    /// The translated conversation (what is stored with the answer).
    pub(super) conversation: OnceLock<Conversation>,
    /// The messages `item_reference` items (by input index) stand for.
    pub(super) references: HashMap<usize, Message>,
    /// Where each message of `conversation` came from (`input[i]`…), for errors.
    pub(super) sources: OnceLock<Vec<String>>,
}

/// The id as the error may repeat it (client-chosen: short visible ASCII only).
pub(crate) fn shown_id(id: &str) -> String {
    if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_string()
    } else {
        "(not shown)".to_string()
    }
}
