//! The neutral conversation model every API translates into (pure, no IO).
//!
//! A [`Conversation`] is the top-level system prompt plus the messages in order. Messages
//! hold content [`Block`]s: text, images and documents (already validated into the
//! Messages API's block shape), and the tool-use, tool-result and thinking blocks some
//! clients send back in their history. The backend decides how a conversation reaches the
//! CLI; the APIs only translate.
//!
//! System instructions: the top-level `system` comes first; a message with role
//! [`Role::System`] (OpenAI `system` / `developer` messages, Anthropic `role: "system"`
//! entries) stays at its place in `messages`.

use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// An Anthropic `image` content block (`{"type":"image","source":{…}}`), validated.
    Image(Value),
    /// An Anthropic `document` content block, validated.
    Document(Value),
    /// A tool call the model made.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The result of a tool call, as the client returned it.
    ToolResult {
        tool_use_id: String,
        content: Vec<Block>,
        is_error: bool,
    },
    /// The model's reasoning, as an Anthropic client sends it back (`redacted` for
    /// `redacted_thinking`, whose text is the opaque `data`).
    Thinking {
        text: String,
        signature: Option<String>,
        redacted: bool,
    },
}

impl Block {
    /// The block type's name as the Messages API spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Block::Text(_) => "text",
            Block::Image(_) => "image",
            Block::Document(_) => "document",
            Block::ToolUse { .. } => "tool_use",
            Block::ToolResult { .. } => "tool_result",
            Block::Thinking {
                redacted: false, ..
            } => "thinking",
            Block::Thinking { redacted: true, .. } => "redacted_thinking",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub blocks: Vec<Block>,
}

impl Message {
    pub fn new(role: Role, blocks: Vec<Block>) -> Message {
        Message { role, blocks }
    }

    /// A message of one text block.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message::new(role, vec![Block::Text(text.into())])
    }

    /// The text blocks joined with newlines (other blocks skipped).
    pub fn joined_text(&self) -> String {
        let texts: Vec<&str> = self
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }
}

/// A whole conversation, as one request carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// The top-level system prompt (Anthropic `system`); None when absent or empty.
    pub system: Option<String>,
    pub messages: Vec<Message>,
}

/// Why a conversation cannot be answered (a 400 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("at least one user or assistant message is required")]
    Empty,
    #[error("the last message must have role `user`")]
    LastNotUser,
}

impl Conversation {
    /// One user message of text (the health probe's shape).
    pub fn single_user_text(text: impl Into<String>) -> Conversation {
        Conversation {
            system: None,
            messages: vec![Message::text(Role::User, text)],
        }
    }

    /// The messages that take part in the dialogue (user and assistant).
    pub fn turns(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.role != Role::System)
    }

    /// Checks the shape every presentation needs: a dialogue that ends with the user.
    pub fn validate(&self) -> Result<(), ConversationError> {
        match self.turns().last() {
            None => Err(ConversationError::Empty),
            Some(m) if m.role != Role::User => Err(ConversationError::LastNotUser),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialogue_must_end_with_the_user_and_system_messages_do_not_count() {
        let mut c = Conversation::default();
        assert_eq!(c.validate(), Err(ConversationError::Empty));
        c.messages.push(Message::text(Role::System, "be terse"));
        assert_eq!(c.validate(), Err(ConversationError::Empty));
        c.messages.push(Message::text(Role::User, "hi"));
        assert_eq!(c.validate(), Ok(()));
        c.messages.push(Message::text(Role::Assistant, "hello"));
        assert_eq!(c.validate(), Err(ConversationError::LastNotUser));
        c.messages
            .push(Message::text(Role::System, "now in French"));
        assert_eq!(c.validate(), Err(ConversationError::LastNotUser));
    }
}
