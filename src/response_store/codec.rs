//! A stored entry as the JSON the shared state store keeps (`store::responses`): the
//! conversation's messages and blocks, the output items, and a thread's tools. Read back
//! only from that store; anything that does not parse is treated as not stored.

use serde_json::{json, Value};

use crate::conversation::{Block, Message, RawJson, Role};

use super::{StoredConversation, StoredItem};

fn block_json(b: &Block) -> Value {
    match b {
        Block::Text(t) => json!({"t": "text", "text": t}),
        Block::Image(v) => json!({"t": "image", "v": v}),
        Block::Document(v) => json!({"t": "document", "v": v}),
        Block::ToolUse { id, name, input } => {
            json!({"t": "tool_use", "id": id, "name": name, "input": input})
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => json!({
            "t": "tool_result",
            "id": tool_use_id,
            "content": content.iter().map(block_json).collect::<Vec<_>>(),
            "is_error": is_error,
        }),
        Block::Thinking {
            text,
            signature,
            redacted,
        } => json!({"t": "thinking", "text": text, "signature": signature, "redacted": redacted}),
    }
}

fn block_of(v: &Value) -> Option<Block> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(match v.get("t")?.as_str()? {
        "text" => Block::Text(s("text")?),
        "image" => Block::Image(v.get("v")?.clone()),
        "document" => Block::Document(v.get("v")?.clone()),
        "tool_use" => Block::ToolUse {
            id: s("id")?,
            name: s("name")?,
            input: RawJson::from_value(v.get("input")?),
        },
        "tool_result" => Block::ToolResult {
            tool_use_id: s("id")?,
            content: v
                .get("content")?
                .as_array()?
                .iter()
                .map(block_of)
                .collect::<Option<_>>()?,
            is_error: v.get("is_error")?.as_bool()?,
        },
        "thinking" => Block::Thinking {
            text: s("text")?,
            signature: s("signature"),
            redacted: v.get("redacted")?.as_bool()?,
        },
        _ => return None,
    })
}

fn message_json(m: &Message) -> Value {
    json!({
        "role": m.role.as_str(),
        "blocks": m.blocks.iter().map(block_json).collect::<Vec<_>>(),
    })
}

fn message_of(v: &Value) -> Option<Message> {
    let role = match v.get("role")?.as_str()? {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => return None,
    };
    let blocks = v
        .get("blocks")?
        .as_array()?
        .iter()
        .map(block_of)
        .collect::<Option<_>>()?;
    Some(Message::new(role, blocks))
}

/// What one stored entry holds, as decoded.
pub(super) struct Decoded {
    pub conversation: StoredConversation,
    pub items: Vec<StoredItem>,
    /// `Some(tools)` for a thread.
    pub thread: Option<Option<RawJson>>,
}

pub(super) fn encode(
    conversation: &StoredConversation,
    items: &[StoredItem],
    thread: Option<&Option<RawJson>>,
) -> String {
    json!({
        "model": conversation.model,
        "messages": conversation.messages.iter().map(message_json).collect::<Vec<_>>(),
        "items": items
            .iter()
            .map(|i| json!({"id": i.id, "message": message_json(&i.message)}))
            .collect::<Vec<_>>(),
        "thread": thread.map(|tools| json!({"tools": tools})),
    })
    .to_string()
}

pub(super) fn decode(body: &str) -> Option<Decoded> {
    let v: Value = serde_json::from_str(body).ok()?;
    let conversation = StoredConversation {
        model: v.get("model")?.as_str()?.to_string(),
        messages: v
            .get("messages")?
            .as_array()?
            .iter()
            .map(message_of)
            .collect::<Option<_>>()?,
    };
    let items = v
        .get("items")?
        .as_array()?
        .iter()
        .map(|i| {
            Some(StoredItem {
                id: i.get("id")?.as_str()?.to_string(),
                message: message_of(i.get("message")?)?,
            })
        })
        .collect::<Option<_>>()?;
    let thread = match v.get("thread") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.get("tools")
                .filter(|t| !t.is_null())
                .map(RawJson::from_value),
        ),
    };
    Some(Decoded {
        conversation,
        items,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let conversation = StoredConversation {
            model: "sonnet".into(),
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::new(
                    Role::User,
                    vec![
                        Block::Text("hi".into()),
                        Block::Image(
                            json!({"type": "image", "source": {"type": "url", "url": "u"}}),
                        ),
                        Block::ToolResult {
                            tool_use_id: "t1".into(),
                            content: vec![Block::Text("42".into())],
                            is_error: true,
                        },
                    ],
                ),
                Message::new(
                    Role::Assistant,
                    vec![
                        Block::Thinking {
                            text: "hm".into(),
                            signature: None,
                            redacted: false,
                        },
                        Block::ToolUse {
                            id: "t2".into(),
                            name: "f".into(),
                            input: RawJson::parse(r#"{"a":1}"#).unwrap(),
                        },
                    ],
                ),
            ],
        };
        let items = vec![StoredItem {
            id: "msg_1".into(),
            message: Message::text(Role::Assistant, "ok"),
        }];
        let tools = Some(RawJson::parse(r#"[{"name":"f"}]"#).unwrap());
        let d = decode(&encode(&conversation, &items, Some(&tools))).unwrap();
        assert_eq!(d.conversation, conversation);
        assert_eq!(d.items, items);
        assert_eq!(d.thread, Some(tools));
        let d = decode(&encode(&conversation, &[], None)).unwrap();
        assert_eq!(d.thread, None);
        assert!(decode("{\"model\": 1}").is_none());
    }
}
