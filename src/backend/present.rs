//! How a [`Conversation`] reaches the CLI: the one stdin user line (text plus image and
//! document blocks) and the system prompt.
//!
//! Presentation: a single user message is passed as it is; earlier turns are given as a
//! tagged transcript before the last user message, with a per-request nonce in the tags
//! so that a message containing `</conversation>` cannot close the wrapper. Every system
//! instruction (the top-level `system`, then each system message in order) joins the
//! system prompt; empty ones are dropped. Images and documents go after the text of the
//! line, an `[image N]` / `[document N]` marker keeping their place in the text.
//! Thinking blocks sent back in the history are not shown to the model again; tool blocks
//! cannot be presented this way and are refused.

use serde_json::Value;

use crate::conversation::{Block, Conversation, ConversationError, Role};

/// What is written to the CLI for one conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presented {
    /// The text of the stdin user line.
    pub prompt: String,
    /// Image and document blocks sent after the text in that line.
    pub attachments: Vec<Value>,
    /// The system prompt (None: no system instruction at all).
    pub system_prompt: Option<String>,
}

/// Why a conversation cannot be presented to the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresentError {
    #[error(transparent)]
    Shape(#[from] ConversationError),
    /// A block this presentation cannot carry: its type, and where it is (message index,
    /// block index).
    #[error("`{block}` blocks are not supported by this gateway")]
    Unsupported {
        block: &'static str,
        message: usize,
        index: usize,
    },
}

/// Presents `conversation` as today's transcript prompt.
pub fn present(conversation: &Conversation) -> Result<Presented, PresentError> {
    conversation.validate()?;
    let system: Vec<&str> = conversation
        .system
        .iter()
        .map(String::as_str)
        .chain(
            conversation
                .messages
                .iter()
                .filter(|m| m.role == Role::System)
                .flat_map(|m| m.blocks.iter())
                .filter_map(|b| match b {
                    Block::Text(t) => Some(t.as_str()),
                    _ => None,
                }),
        )
        .filter(|t| !t.is_empty())
        .collect();
    let mut attachments = Vec::new();
    let mut turns: Vec<(Role, String)> = Vec::new();
    let turns_with_index = conversation
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role != Role::System);
    for (i, m) in turns_with_index {
        let mut parts = Vec::with_capacity(m.blocks.len());
        for (j, b) in m.blocks.iter().enumerate() {
            match b {
                Block::Text(t) => parts.push(t.clone()),
                Block::Image(v) | Block::Document(v) => {
                    let kind = b.type_name();
                    attachments.push(v.clone());
                    let n = attachments.iter().filter(|a| a["type"] == kind).count();
                    parts.push(format!("[{kind} {n}]"));
                }
                Block::Thinking { .. } => {}
                Block::ToolUse { .. } | Block::ToolResult { .. } => {
                    return Err(PresentError::Unsupported {
                        block: b.type_name(),
                        message: i,
                        index: j,
                    })
                }
            }
        }
        turns.push((m.role, parts.join("\n")));
    }
    Ok(Presented {
        prompt: transcript(&turns),
        attachments,
        system_prompt: (!system.is_empty()).then(|| system.join("\n\n")),
    })
}

/// The prompt for dialogue turns that end with the user (checked by the caller).
fn transcript(turns: &[(Role, String)]) -> String {
    let Some(((_, last), earlier)) = turns.split_last() else {
        return String::new();
    };
    if earlier.is_empty() {
        return last.clone();
    }
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let mut out =
        format!("Earlier turns of this conversation, for context:\n<conversation-{nonce}>\n");
    for (role, text) in earlier {
        let who = if *role == Role::User {
            "User"
        } else {
            "Assistant"
        };
        out.push_str(&format!("<{who}-{nonce}>\n{text}\n</{who}-{nonce}>\n"));
    }
    out.push_str(&format!("</conversation-{nonce}>\n\n"));
    out.push_str(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Message;
    use serde_json::json;

    #[test]
    fn one_user_message_is_passed_as_is_and_empty_system_messages_are_dropped() {
        let c = Conversation {
            system: None,
            messages: vec![
                Message::text(Role::System, ""),
                Message::text(Role::User, "hi"),
            ],
        };
        let p = present(&c).unwrap();
        assert_eq!(p.prompt, "hi");
        assert_eq!(
            p.system_prompt, None,
            "an empty system message is no system prompt"
        );
    }

    #[test]
    fn system_instructions_join_in_order_after_the_top_level_one() {
        let c = Conversation {
            system: Some("top".into()),
            messages: vec![
                Message::text(Role::System, "first"),
                Message::text(Role::User, "q"),
                Message::text(Role::System, "later"),
            ],
        };
        assert_eq!(
            present(&c).unwrap().system_prompt.as_deref(),
            Some("top\n\nfirst\n\nlater")
        );
    }

    #[test]
    fn earlier_turns_become_a_nonce_tagged_transcript_with_attachment_markers() {
        let img = json!({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}});
        let c = Conversation {
            system: None,
            messages: vec![
                Message::new(
                    Role::User,
                    vec![Block::Text("look".into()), Block::Image(img.clone())],
                ),
                Message::new(
                    Role::Assistant,
                    vec![
                        Block::Thinking {
                            text: "hmm".into(),
                            signature: None,
                            redacted: false,
                        },
                        Block::Text("a cat".into()),
                    ],
                ),
                Message::text(Role::User, "and now?"),
            ],
        };
        let p = present(&c).unwrap();
        assert_eq!(p.attachments, vec![img]);
        assert!(p.prompt.contains("look\n[image 1]"), "{}", p.prompt);
        assert!(p.prompt.contains("a cat") && !p.prompt.contains("hmm"));
        assert!(p.prompt.ends_with("\n\nand now?"));
        let nonce = p.prompt.split("<conversation-").nth(1).unwrap();
        assert_eq!(&nonce[12..13], ">");
    }

    #[test]
    fn tool_blocks_and_bad_shapes_are_refused() {
        let c = Conversation {
            system: None,
            messages: vec![Message::new(
                Role::User,
                vec![Block::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: vec![],
                    is_error: false,
                }],
            )],
        };
        assert_eq!(
            present(&c),
            Err(PresentError::Unsupported {
                block: "tool_result",
                message: 0,
                index: 0
            })
        );
        let c = Conversation {
            system: None,
            messages: vec![Message::text(Role::Assistant, "x")],
        };
        assert_eq!(
            present(&c),
            Err(PresentError::Shape(ConversationError::LastNotUser))
        );
    }
}
