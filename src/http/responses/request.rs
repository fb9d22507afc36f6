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
    /// Echoed in every `response` object (a tree): their schemas are charged too.
    #[serde(default, deserialize_with = "crate::http::bounded::echoed_tools")]
    pub(super) tools: Option<Vec<crate::http::bounded::ToolDef>>,
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

/// `input`: a string (one user message) or a list of items. Of each item only the keys
/// ccgate reads ([`ITEM_KEYS`]) become a tree, charged to the request's budget of tree
/// values before it is parsed; everything else in it is skipped as it is read
/// ([`crate::http::bounded::read_fields`]): an item's ids, statuses, annotations or
/// fields of later API versions cost neither memory nor budget. Read by hand: an
/// untagged enum would buffer the whole list as a tree first.
pub(super) enum Input {
    Text(String),
    Items(Vec<Value>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Input, D::Error> {
        struct Visit;
        /// One item, charged.
        struct Item(Value);
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
                crate::http::bounded::read_fields(d, ITEM_KEYS).map(Item)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Input;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of input items")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Input, E> {
                Ok(Input::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Input, E> {
                Ok(Input::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Input, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
                while let Some(Item(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Input::Items(items))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// What `input.rs` reads of an input item and of its content parts (`content`, a tool
/// output's `output`). A key read there must be listed here, or it is never seen.
pub(super) const ITEM_KEYS: crate::http::bounded::ReadKeys = crate::http::bounded::ReadKeys {
    keys: &[
        "type",
        "role",
        "call_id",
        "name",
        "arguments",
        "input",
        "id",
        "encrypted_content",
    ],
    lists: &[("content", PART_KEYS), ("output", PART_KEYS)],
};
const PART_KEYS: &[&str] = &[
    "type",
    "text",
    "refusal",
    "image_url",
    "file_id",
    "file_url",
    "file_data",
    "filename",
];

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
