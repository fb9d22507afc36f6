//! How a [`Conversation`] reaches the CLI: the system prompt, the stdin user line (text
//! plus image and document blocks) and, for earlier turns, either real turns or a
//! transcript.
//!
//! Real turns ([`present_turns`], the default): the last user message is the stdin line;
//! the earlier turns become a synthesized session the CLI resumes (`session.rs`), or are
//! already held by a kept CLI process whose conversation is exactly them
//! ([`Fingerprint`]: the tenant, model, system prompt, the client's tools, the run
//! options and every message, thinking blocks aside; a process is kept under the fingerprint of its conversation including its own
//! answer). Transcript ([`present`], the fallback when the CLI rejects a session): earlier
//! turns are given as a tagged transcript before the last user message, with a per-request
//! nonce in the tags so that a message containing `</conversation>` cannot close the
//! wrapper. In both, every system
//! instruction (the top-level `system`, then each system message in order) joins the
//! system prompt; empty ones are dropped. Images and documents go after the text of the
//! line, an `[image N]` / `[document N]` marker keeping their place in the text.
//! An assistant's signed thinking blocks sent back in the history go into the synthesized
//! session as the model wrote them (the transcript leaves them out; fingerprints ignore
//! them). The client's tool calls and results go into the session as real `tool_use` /
//! `tool_result` blocks; the transcript cannot carry them and refuses them.

use serde_json::Value;
use sha2::Digest as _;

use super::options::RunOptions;
use crate::conversation::{
    Block, Conversation, ConversationError, Message, RawJson, Role, ToolSet,
};
use crate::protocol::CLIENT_TOOL_PREFIX;

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

/// Every system instruction, in order, joined by a blank line (None when there is none).
fn system_prompt(conversation: &Conversation) -> Option<String> {
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
    (!system.is_empty()).then(|| system.join("\n\n"))
}

/// Presents `conversation` as a transcript prompt.
pub fn present(conversation: &Conversation) -> Result<Presented, PresentError> {
    conversation.validate()?;
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
        system_prompt: system_prompt(conversation),
    })
}

/// One earlier turn of a conversation presented as real turns: `user` or `assistant`,
/// with its content blocks in the Messages API's shape (text, image, document).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTurn {
    pub assistant: bool,
    pub content: Vec<SessionBlock>,
}

/// One content block of a session turn in the Messages API's shape: a block ccgate built
/// (text, image, document, thinking, tool result), or a client tool call, whose input is
/// written as the client sent it (shared, never a tree).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionBlock {
    /// A text block (`{"type":"text","text":…}`), the most common by far: kept as its
    /// string, not a tree (a part costs its text, not a map's).
    Text(String),
    Json(Value),
    ToolUse {
        id: String,
        /// The CLI's name for the tool (with its MCP prefix).
        name: String,
        input: RawJson,
    },
}

impl SessionBlock {
    /// The block's `type`.
    pub fn kind(&self) -> Option<&str> {
        match self {
            SessionBlock::Text(_) => Some("text"),
            SessionBlock::Json(v) => v.get("type").and_then(Value::as_str),
            SessionBlock::ToolUse { .. } => Some("tool_use"),
        }
    }

    /// A block ccgate built, as a tree (a tool call's input parsed: only for a call
    /// nested where no call belongs).
    fn into_value(self) -> Value {
        match self {
            SessionBlock::Text(text) => serde_json::json!({"type": "text", "text": text}),
            SessionBlock::Json(v) => v,
            SessionBlock::ToolUse { id, name, input } => serde_json::json!({
                "type": "tool_use", "id": id, "name": name, "input": input.to_value(),
            }),
        }
    }
}

/// A plain text block (`type` and `text` only) becomes [`SessionBlock::Text`].
impl From<Value> for SessionBlock {
    fn from(v: Value) -> SessionBlock {
        match v {
            Value::Object(mut m)
                if m.len() == 2
                    && m.get("type").and_then(Value::as_str) == Some("text")
                    && m.get("text").is_some_and(Value::is_string) =>
            {
                let Some(Value::String(text)) = m.swap_remove("text") else {
                    return SessionBlock::Json(Value::Object(m));
                };
                SessionBlock::Text(text)
            }
            v => SessionBlock::Json(v),
        }
    }
}

impl serde::Serialize for SessionBlock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct ToolUse<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            id: &'a str,
            name: &'a str,
            input: &'a RawJson,
        }
        #[derive(serde::Serialize)]
        struct Text<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            text: &'a str,
        }
        match self {
            SessionBlock::Text(text) => Text { kind: "text", text }.serialize(s),
            SessionBlock::Json(v) => v.serialize(s),
            SessionBlock::ToolUse { id, name, input } => ToolUse {
                kind: "tool_use",
                id,
                name,
                input,
            }
            .serialize(s),
        }
    }
}

/// A conversation's identity for continuing it in a kept CLI process: a SHA-256 over the
/// tenant (a digest of the client's API key), the model, the system prompt and every
/// message in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Its hex form (the state store's key for the conversation → account map).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A fingerprint of these bytes (a digest made elsewhere: the pool's key, tests).
    pub(super) fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The key of this conversation on account `name` (None: the implicit account, the
    /// fingerprint itself): a kept process is only ever continued on its own account.
    pub(super) fn on_account(self, name: Option<&str>) -> Fingerprint {
        match name {
            None => self,
            Some(name) => {
                let mut h = sha2::Sha256::new();
                h.update(self.0);
                h.update((name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                Fingerprint(h.finalize().into())
            }
        }
    }
}

/// A fingerprint being built, message by message.
#[derive(Debug, Clone)]
pub struct FingerprintBuilder(sha2::Sha256);

impl FingerprintBuilder {
    fn new(
        tenant: &str,
        model: &str,
        system: Option<&str>,
        tools: Option<&ToolSet>,
        options: &RunOptions,
    ) -> FingerprintBuilder {
        let mut b = FingerprintBuilder(sha2::Sha256::new());
        b.field(tenant.as_bytes());
        b.field(model.as_bytes());
        // Absent and present are told apart by a tag, not by a sentinel string a client
        // could send (a system prompt of "\u0000none" hashed like none at all).
        b.optional(system);
        // The tools are flags of the process (its MCP server's list): a process offering
        // other tools is another conversation.
        match tools {
            None => b.field(b"\0no tools"),
            Some(t) => {
                for spec in &t.tools {
                    b.field(spec.name.as_bytes());
                    b.optional(spec.description.as_deref());
                    b.field(spec.input_schema.canonical().as_bytes());
                }
                b.field(b"\0tools end");
            }
        }
        // The schema, effort and thinking flags the process was started with.
        for flag in options.flags() {
            b.field(flag.as_bytes());
        }
        b.field(b"\0flags");
        // The web tools and their environment (a process keeps both).
        for (k, v) in options.env(None) {
            b.field(k.as_bytes());
            b.field(v.as_bytes());
        }
        if let Some(web) = &options.web {
            b.field(web.names().join(",").as_bytes());
        }
        b.field(b"\0web");
        b
    }

    /// Length-prefixed, so no two sequences of fields hash alike.
    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// An optional text: a tag field (absent / present), then the text if present.
    fn optional(&mut self, text: Option<&str>) {
        match text {
            None => self.field(&[0]),
            Some(t) => {
                self.field(&[1]);
                self.field(t.as_bytes());
            }
        }
    }

    /// The fingerprint so far (a conversation up to its last message).
    pub fn current(&self) -> Fingerprint {
        self.clone().finish()
    }

    /// Thinking blocks aside: the CLI's own answer is fingerprinted by its text, and a
    /// client sending its thinking back holds the same conversation. A tool call counts
    /// by its id and name: the id is what ccgate issued, and clients re-serialise or
    /// normalise the input they echo (keys reordered, defaulted fields added).
    fn message(&mut self, assistant: bool, content: &[SessionBlock]) {
        self.field(if assistant { b"assistant" } else { b"user" });
        for block in content.iter().filter(|b| !is_thinking(b)) {
            match block {
                SessionBlock::ToolUse { id, name, .. } => {
                    self.field(b"\0tool_use");
                    self.field(id.as_bytes());
                    self.field(name.as_bytes());
                }
                // The bytes the same block as a tree hashed to.
                SessionBlock::Text(_) => {
                    self.field(serde_json::to_string(block).unwrap_or_default().as_bytes())
                }
                SessionBlock::Json(v) => self.field(v.to_string().as_bytes()),
            }
        }
        self.field(b"\0end");
    }

    /// The fingerprint after the CLI's own answer `text` (what a client sends back).
    pub fn after_answer(&self, text: &str) -> Fingerprint {
        let mut b = self.clone();
        b.message(
            true,
            &[serde_json::json!({"type": "text", "text": text}).into()],
        );
        b.finish()
    }

    /// The fingerprint after an answer of `text` and the client's tool `calls` (the key a
    /// run waiting for their results is held under).
    pub fn after_calls(&self, text: &str, calls: &[crate::conversation::ToolCall]) -> Fingerprint {
        let mut b = self.clone();
        let mut content = Vec::with_capacity(calls.len() + 1);
        if !text.is_empty() {
            content.push(serde_json::json!({"type": "text", "text": text}).into());
        }
        // A call counts by its id and name only (its input is not hashed).
        content.extend(
            calls
                .iter()
                .map(|c| tool_use_block(&c.id, &c.name, &RawJson::empty_object())),
        );
        b.message(true, &content);
        b.finish()
    }

    fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

/// A client tool call as the model made it (the CLI's name for the tool), its input as
/// the client sent it.
fn tool_use_block(id: &str, name: &str, input: &RawJson) -> SessionBlock {
    SessionBlock::ToolUse {
        id: id.to_string(),
        name: format!("{CLIENT_TOOL_PREFIX}{name}"),
        input: input.clone(),
    }
}

/// A conversation presented as real turns.
#[derive(Debug, Clone)]
pub struct Turns {
    /// The last user message: the stdin line's text and attachments.
    pub prompt: String,
    pub attachments: Vec<Value>,
    pub system_prompt: Option<String>,
    /// The earlier turns, for a synthesized session (empty for a single message).
    pub history: Vec<SessionTurn>,
    /// The fingerprint of the earlier turns: a kept process holding exactly them continues.
    pub history_fingerprint: Fingerprint,
    /// The fingerprint so far including the last user message (add the answer to get
    /// the key a process is kept under).
    pub keep: FingerprintBuilder,
    /// The last user message holds tool results: it belongs to the session as well (the
    /// CLI re-runs such an interrupted turn itself), and nothing is written to stdin.
    pub resume_results: bool,
    /// The fingerprint of the conversation after each of its user turns, the last one
    /// included: a held run asked at one of them is left behind by this request.
    pub asked: Vec<Fingerprint>,
}

fn is_thinking(block: &SessionBlock) -> bool {
    matches!(block.kind(), Some("thinking" | "redacted_thinking"))
}

/// A message's content blocks as the Messages API takes them (text, image, document, the
/// client's tool calls and results, and an assistant's signed thinking blocks, which the
/// model gets back as it wrote them); unsigned thinking (which the API refuses) and empty
/// text blocks are left out.
fn api_blocks(m: &Message) -> Result<Vec<SessionBlock>, (&'static str, usize)> {
    let mut out: Vec<SessionBlock> = Vec::with_capacity(m.blocks.len());
    for (j, b) in m.blocks.iter().enumerate() {
        match b {
            Block::Text(t) if t.is_empty() => {}
            Block::Text(t) => out.push(SessionBlock::Text(t.clone())),
            Block::Image(v) | Block::Document(v) => out.push(v.clone().into()),
            Block::Thinking {
                text,
                redacted: true,
                ..
            } if m.role == Role::Assistant => {
                out.push(serde_json::json!({"type": "redacted_thinking", "data": text}).into())
            }
            Block::Thinking {
                text,
                signature: Some(sig),
                ..
            } if m.role == Role::Assistant && !sig.is_empty() => out.push(
                serde_json::json!({"type": "thinking", "thinking": text, "signature": sig}).into(),
            ),
            Block::Thinking { .. } => {}
            Block::ToolUse { id, name, input } => out.push(tool_use_block(id, name, input)),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let inner: Vec<Value> = api_blocks(&Message::new(Role::User, content.clone()))
                    .map_err(|_| (b.type_name(), j))?
                    .into_iter()
                    .map(SessionBlock::into_value)
                    .collect();
                let mut block = serde_json::json!({
                    "type": "tool_result",
                    "tool_use_id": tool_use_id,
                    "content": inner,
                });
                if *is_error {
                    block["is_error"] = Value::Bool(true);
                }
                out.push(block.into());
            }
        }
    }
    Ok(out)
}

/// Presents `conversation` as real turns for a client identified by `tenant`.
pub fn present_turns(
    conversation: &Conversation,
    tenant: &str,
    model: &str,
    tools: Option<&ToolSet>,
    options: &RunOptions,
) -> Result<Turns, PresentError> {
    conversation.validate()?;
    let system_prompt = system_prompt(conversation);
    let mut fp = FingerprintBuilder::new(tenant, model, system_prompt.as_deref(), tools, options);
    let mut turns: Vec<SessionTurn> = Vec::new();
    for (i, m) in conversation.messages.iter().enumerate() {
        if m.role == Role::System {
            continue;
        }
        let content = api_blocks(m).map_err(|(block, index)| PresentError::Unsupported {
            block,
            message: i,
            index,
        })?;
        let assistant = m.role == Role::Assistant;
        match turns.last_mut() {
            // Consecutive messages of one role are one turn, as the API reads them.
            Some(last) if last.assistant == assistant => last.content.extend(content),
            _ => turns.push(SessionTurn { assistant, content }),
        }
    }
    // `validate` guarantees the dialogue ends with the user.
    let last = turns.pop().unwrap_or(SessionTurn {
        assistant: false,
        content: Vec::new(),
    });
    // Turns left without content (an empty assistant message) cannot be sent; their
    // neighbours of the same role merge.
    let mut history: Vec<SessionTurn> = Vec::with_capacity(turns.len());
    for t in turns.into_iter().filter(|t| !t.content.is_empty()) {
        match history.last_mut() {
            Some(prev) if prev.assistant == t.assistant => prev.content.extend(t.content),
            _ => history.push(t),
        }
    }
    let mut asked = Vec::with_capacity(history.len() / 2 + 1);
    for t in &history {
        fp.message(t.assistant, &t.content);
        if !t.assistant {
            asked.push(fp.current());
        }
    }
    let history_fingerprint = fp.current();
    fp.message(false, &last.content);
    asked.push(fp.current());
    let resume_results = last.content.iter().any(|b| b.kind() == Some("tool_result"));
    if resume_results {
        // The results answer the calls of the session's last assistant turn: they end
        // the session, and the CLI re-runs the interrupted turn from them.
        history.push(last);
        return Ok(Turns {
            prompt: String::new(),
            attachments: Vec::new(),
            system_prompt,
            history,
            history_fingerprint,
            keep: fp,
            resume_results,
            asked,
        });
    }
    // The stdin line as for a single message: the text, an `[image N]` / `[document N]`
    // marker where each attachment stood, the attachments after it.
    let mut prompt = Vec::new();
    let mut attachments: Vec<Value> = Vec::new();
    for block in last.content {
        let block = match block {
            SessionBlock::Text(text) => {
                prompt.push(text);
                continue;
            }
            other => other.into_value(),
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => prompt.push(block["text"].as_str().unwrap_or_default().to_string()),
            kind => {
                let kind = kind.unwrap_or("image").to_string();
                attachments.push(block);
                let n = attachments
                    .iter()
                    .filter(|a| a["type"] == kind.as_str())
                    .count();
                prompt.push(format!("[{kind} {n}]"));
            }
        }
    }
    Ok(Turns {
        prompt: prompt.join("\n"),
        attachments,
        system_prompt,
        history,
        history_fingerprint,
        keep: fp,
        resume_results: false,
        asked,
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
    fn a_system_prompt_spelling_the_old_sentinel_is_not_no_system_prompt() {
        let with = |system: Option<&str>| {
            let c = Conversation {
                system: system.map(str::to_string),
                messages: vec![Message::text(Role::User, "hi")],
            };
            present_turns(&c, "t", "m", None, &RunOptions::default())
                .unwrap()
                .keep
                .current()
        };
        assert_ne!(with(None), with(Some("\u{0}none")));
    }

    #[test]
    fn a_text_block_kept_as_a_string_is_written_and_hashed_as_the_tree_was() {
        let tree = json!({"type": "text", "text": "a \"quoted\"\nline"});
        let block: SessionBlock = tree.clone().into();
        assert!(matches!(block, SessionBlock::Text(_)));
        assert_eq!(serde_json::to_string(&block).unwrap(), tree.to_string());
        assert_eq!(block.kind(), Some("text"));
        let mut a = FingerprintBuilder::new("t", "m", None, None, &RunOptions::default());
        let mut b = a.clone();
        a.message(false, std::slice::from_ref(&block));
        b.message(false, &[SessionBlock::Json(tree.clone())]);
        assert_eq!(a.current(), b.current());
        assert_eq!(block.into_value(), tree);
        // Anything more than a plain text block stays a tree.
        let cited = json!({"type": "text", "text": "a", "citations": []});
        assert!(matches!(SessionBlock::from(cited), SessionBlock::Json(_)));
        assert!(matches!(
            SessionBlock::from(json!({"type": "text", "text": 1})),
            SessionBlock::Json(_)
        ));
    }

    #[test]
    fn a_tool_call_counts_by_id_and_name_not_by_how_its_input_is_spelled() {
        let call = |input: Value| Conversation {
            // (the input as a client spells it)
            system: None,
            messages: vec![
                Message::text(Role::User, "q"),
                Message::new(
                    Role::Assistant,
                    vec![Block::ToolUse {
                        id: "toolu_1".into(),
                        name: "edit".into(),
                        input: RawJson::from_value(&input),
                    }],
                ),
                Message::new(
                    Role::User,
                    vec![Block::ToolResult {
                        tool_use_id: "toolu_1".into(),
                        content: vec![Block::Text("ok".into())],
                        is_error: false,
                    }],
                ),
            ],
        };
        let fp = |c: &Conversation| {
            present_turns(c, "t", "m", None, &RunOptions::default())
                .unwrap()
                .history_fingerprint
        };
        let a = fp(&call(json!({"path": "a", "old": "x"})));
        let b = fp(&call(
            json!({"old": "x", "path": "a", "replace_all": false}),
        ));
        assert_eq!(a, b);
        let mut other = call(json!({}));
        if let Block::ToolUse { id, .. } = &mut other.messages[1].blocks[0] {
            *id = "toolu_2".into();
        }
        if let Block::ToolResult { tool_use_id, .. } = &mut other.messages[2].blocks[0] {
            *tool_use_id = "toolu_2".into();
        }
        assert_ne!(a, fp(&other), "another call id is another conversation");
    }

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
    fn process_flags_are_part_of_the_fingerprint_and_thinking_is_not() {
        let convo = |assistant: Vec<Block>| Conversation {
            system: None,
            messages: vec![
                Message::new(Role::User, vec![Block::Text("q".into())]),
                Message::new(Role::Assistant, assistant),
                Message::new(Role::User, vec![Block::Text("q2".into())]),
            ],
        };
        let plain = convo(vec![Block::Text("a".into())]);
        let fp = |c: &Conversation, o: &RunOptions| {
            present_turns(c, "t", "m", None, o)
                .unwrap()
                .history_fingerprint
        };
        let schema = RunOptions {
            json_schema: Some("{}".into()),
            ..RunOptions::default()
        };
        let effort = RunOptions {
            effort: Some(super::super::options::Effort::High),
            ..RunOptions::default()
        };
        let none = RunOptions::default();
        assert_ne!(fp(&plain, &none), fp(&plain, &schema));
        assert_ne!(fp(&plain, &none), fp(&plain, &effort));
        assert_ne!(fp(&plain, &schema), fp(&plain, &effort));
        let thought = convo(vec![
            Block::Thinking {
                text: "hm".into(),
                signature: Some("sig".into()),
                redacted: false,
            },
            Block::Text("a".into()),
        ]);
        assert_eq!(fp(&plain, &none), fp(&thought, &none));
        // The session carries the signed thinking block before the text.
        let turns = present_turns(&thought, "t", "m", None, &none).unwrap();
        assert_eq!(
            turns.history[1].content,
            vec![
                serde_json::json!({"type": "thinking", "thinking": "hm", "signature": "sig"})
                    .into(),
                serde_json::json!({"type": "text", "text": "a"}).into()
            ]
        );
    }

    #[test]
    fn tool_blocks_and_bad_shapes_are_refused() {
        let c = Conversation {
            system: None,
            messages: vec![
                Message::text(Role::User, "q"),
                Message::new(
                    Role::Assistant,
                    vec![Block::ToolUse {
                        id: "toolu_1".into(),
                        name: "f".into(),
                        input: RawJson::empty_object(),
                    }],
                ),
                Message::new(
                    Role::User,
                    vec![Block::ToolResult {
                        tool_use_id: "toolu_1".into(),
                        content: vec![],
                        is_error: false,
                    }],
                ),
            ],
        };
        // The transcript has no place for tool blocks (real turns carry them).
        assert_eq!(
            present(&c),
            Err(PresentError::Unsupported {
                block: "tool_use",
                message: 1,
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
