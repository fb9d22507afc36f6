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

mod raw;
pub use raw::{bytes_in_strings, RawJson, RawJsonError, RAW_MAX_DEPTH};

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
    /// A tool call the model made; its input (an object) as the client sent it.
    ToolUse {
        id: String,
        name: String,
        input: RawJson,
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
    /// A tool result whose call is not in the assistant turn right before it.
    #[error("tool result `{0}` answers no tool call of the assistant turn before it")]
    UnknownToolResult(String),
    /// A tool call of an assistant turn whose result is missing from the next user turn.
    #[error("tool call `{0}` has no tool result in the user turn after it")]
    MissingToolResult(String),
    /// A tool-call id longer than [`TOOL_ID_MAX_LEN`].
    #[error("tool call ids must be at most {TOOL_ID_MAX_LEN} characters long")]
    ToolIdTooLong,
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
            None => return Err(ConversationError::Empty),
            Some(m) if m.role != Role::User => return Err(ConversationError::LastNotUser),
            Some(_) => {}
        }
        self.validate_tool_pairs()
    }

    /// Tool calls and results pair up as both APIs demand: the results of an assistant
    /// turn's calls are in the user turn right after it, and no result answers anything
    /// else. (Consecutive messages of one role are one turn.) Every id is at most
    /// [`TOOL_ID_MAX_LEN`] long. Linear: the open calls are a set.
    fn validate_tool_pairs(&self) -> Result<(), ConversationError> {
        use std::collections::HashSet;
        let mut calls: HashSet<&str> = HashSet::new();
        let mut answered: HashSet<&str> = HashSet::new();
        // The first call of the current assistant turn left unanswered, in order.
        let mut order: Vec<&str> = Vec::new();
        let mut prev: Option<Role> = None;
        let unanswered = |order: &[&str], answered: &HashSet<&str>| {
            order
                .iter()
                .find(|c| !answered.contains(*c))
                .map(|c| ConversationError::MissingToolResult((*c).to_string()))
        };
        for m in self.turns() {
            if prev != Some(m.role) {
                // A turn boundary: the previous user turn must have answered every call.
                if m.role == Role::Assistant && prev == Some(Role::User) {
                    if let Some(e) = unanswered(&order, &answered) {
                        return Err(e);
                    }
                    calls.clear();
                    order.clear();
                }
                if m.role == Role::User {
                    answered.clear();
                } else {
                    calls.clear();
                    order.clear();
                }
                prev = Some(m.role);
            }
            for b in &m.blocks {
                match b {
                    Block::ToolUse { id, .. }
                    | Block::ToolResult {
                        tool_use_id: id, ..
                    } if id.len() > TOOL_ID_MAX_LEN => {
                        return Err(ConversationError::ToolIdTooLong);
                    }
                    // (A repeated id is one call.)
                    Block::ToolUse { id, .. } if m.role == Role::Assistant && calls.insert(id) => {
                        order.push(id);
                    }
                    Block::ToolResult { tool_use_id, .. } => {
                        if !calls.contains(tool_use_id.as_str()) {
                            return Err(ConversationError::UnknownToolResult(tool_use_id.clone()));
                        }
                        answered.insert(tool_use_id);
                    }
                    _ => {}
                }
            }
        }
        match unanswered(&order, &answered) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A tool the client offers the model (an OpenAI `function` tool, an Anthropic custom
/// tool): its name, description and the JSON Schema of its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object (`{"type":"object",…}`), as the client sent it.
    pub input_schema: RawJson,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (OpenAI `auto`, Anthropic `auto`).
    Auto,
    /// No call (OpenAI and Anthropic `none`).
    None,
    /// At least one call (OpenAI `required`, Anthropic `any`).
    Required,
    /// A call of this tool (OpenAI named function, Anthropic `tool`).
    Named(String),
}

/// The client's tools for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    pub tools: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// Several calls in one answer are allowed (OpenAI `parallel_tool_calls`, Anthropic
    /// `!disable_parallel_tool_use`).
    pub parallel: bool,
}

/// The most tools one request may offer.
pub const TOOLS_MAX_COUNT: usize = 128;
/// The largest tool definition (name, description and schema as JSON), in bytes.
pub const TOOL_MAX_BYTES: usize = 64 * 1024;
/// All tool definitions of a request together, in bytes.
pub const TOOLS_MAX_BYTES: usize = 1024 * 1024;
/// The longest tool name: the model sees the name behind the CLI's 9-character MCP prefix
/// (`mcp__cg__`), and the CLI drops tools whose full name is longer than 128 characters
/// (the Messages API's own limit).
pub const TOOL_NAME_MAX_LEN: usize = 119;
/// The longest tool-call id accepted back from a client.
pub const TOOL_ID_MAX_LEN: usize = 256;

/// Why a tool definition or choice is refused (a 400 naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("at most {TOOLS_MAX_COUNT} tools may be given")]
    TooMany,
    #[error("tool names must match ^[a-zA-Z0-9_-]{{1,119}}$ (the gateway's tool prefix takes 9 of the 128 characters the model may see)")]
    BadName { index: usize },
    #[error("tool name `{name}` is given twice")]
    Duplicate { index: usize, name: String },
    #[error("the input schema must be a JSON Schema object with `type: \"object\"`")]
    BadSchema { index: usize },
    #[error("a tool definition may be at most {TOOL_MAX_BYTES} bytes")]
    ToolTooLarge { index: usize },
    #[error("the tool definitions may be at most {TOOLS_MAX_BYTES} bytes together")]
    ToolsTooLarge,
    #[error("names the tool `{0}`, which is not among the tools given")]
    UnknownChoice(String),
    #[error("requires a tool call, but no tools are given")]
    ChoiceWithoutTools,
}

/// Whether `name` is a valid tool name.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOOL_NAME_MAX_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl ToolSet {
    /// The tool set of `tools` with `choice` (default `auto`), checked ([`ToolSet::validate`]).
    /// No tools is no tool set, unless the choice demands a call.
    pub fn checked(
        tools: Vec<ToolSpec>,
        choice: Option<ToolChoice>,
        parallel: bool,
    ) -> Result<Option<ToolSet>, ToolError> {
        if tools.is_empty() {
            return match choice {
                None | Some(ToolChoice::Auto | ToolChoice::None) => Ok(None),
                Some(_) => Err(ToolError::ChoiceWithoutTools),
            };
        }
        let set = ToolSet {
            tools,
            choice: choice.unwrap_or(ToolChoice::Auto),
            parallel,
        };
        set.validate()?;
        Ok(Some(set))
    }

    /// Checks names, schemas, sizes and the choice.
    pub fn validate(&self) -> Result<(), ToolError> {
        if self.tools.len() > TOOLS_MAX_COUNT {
            return Err(ToolError::TooMany);
        }
        let mut total = 0usize;
        for (index, t) in self.tools.iter().enumerate() {
            if !valid_tool_name(&t.name) {
                return Err(ToolError::BadName { index });
            }
            if self.tools[..index].iter().any(|o| o.name == t.name) {
                return Err(ToolError::Duplicate {
                    index,
                    name: t.name.clone(),
                });
            }
            let schema_ok = t.input_schema.is_object()
                && t.input_schema
                    .top("type")
                    .is_none_or(|ty| ty.get() == r#""object""#);
            if !schema_ok {
                return Err(ToolError::BadSchema { index });
            }
            let size = t.name.len()
                + t.description.as_deref().map_or(0, str::len)
                + t.input_schema.compact_len();
            if size > TOOL_MAX_BYTES {
                return Err(ToolError::ToolTooLarge { index });
            }
            total += size;
        }
        if total > TOOLS_MAX_BYTES {
            return Err(ToolError::ToolsTooLarge);
        }
        match &self.choice {
            ToolChoice::Named(n) if !self.tools.iter().any(|t| &t.name == n) => {
                Err(ToolError::UnknownChoice(n.clone()))
            }
            ToolChoice::Required | ToolChoice::Named(_) if self.tools.is_empty() => {
                Err(ToolError::ChoiceWithoutTools)
            }
            _ => Ok(()),
        }
    }
}

/// A tool call the model made, as the client sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    /// The model's tool-use id (`toolu_…`).
    pub id: String,
    /// The client's tool name.
    pub name: String,
    /// The call's arguments (a JSON object).
    pub input: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ids: &[String], results: &[String]) -> Conversation {
        let call = |id: &String| Block::ToolUse {
            id: id.clone(),
            name: "t".into(),
            input: RawJson::empty_object(),
        };
        let result = |id: &String| Block::ToolResult {
            tool_use_id: id.clone(),
            content: vec![],
            is_error: false,
        };
        Conversation {
            system: None,
            messages: vec![
                Message::text(Role::User, "q"),
                Message::new(Role::Assistant, ids.iter().map(call).collect()),
                // One message per result, as OpenAI clients send them.
                Message::new(Role::User, vec![]),
            ]
            .into_iter()
            .chain(
                results
                    .iter()
                    .map(|r| Message::new(Role::User, vec![result(r)])),
            )
            .collect(),
        }
    }

    #[test]
    fn tool_ids_longer_than_the_bound_are_refused() {
        let long = "x".repeat(TOOL_ID_MAX_LEN + 1);
        let c = round(std::slice::from_ref(&long), std::slice::from_ref(&long));
        assert_eq!(c.validate(), Err(ConversationError::ToolIdTooLong));
        let ok = "x".repeat(TOOL_ID_MAX_LEN);
        assert_eq!(
            round(std::slice::from_ref(&ok), std::slice::from_ref(&ok)).validate(),
            Ok(())
        );
    }

    #[test]
    fn many_parallel_calls_pair_up_and_the_first_unanswered_is_named() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("toolu_{i}")).collect();
        let mut results = ids.clone();
        results.reverse();
        assert_eq!(round(&ids, &results).validate(), Ok(()));
        results.retain(|r| r != "toolu_7" && r != "toolu_9");
        assert_eq!(
            round(&ids, &results).validate(),
            Err(ConversationError::MissingToolResult("toolu_7".into()))
        );
        let mut extra = ids.clone();
        extra.push("toolu_other".into());
        assert_eq!(
            round(&ids, &extra).validate(),
            Err(ConversationError::UnknownToolResult("toolu_other".into()))
        );
    }

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
