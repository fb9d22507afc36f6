//! `input` items as the conversation: messages and their content parts, `function_call` /
//! `function_call_output` items as tool-use / tool-result blocks, after the stored
//! conversation `previous_response_id` names.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::reasoning::reasoning_input;
use super::request::{shown_id, Input, ResponsesRequest};
use crate::conversation::{Block, Conversation, Message, Role};
use crate::http::content::{self, Allow};
use crate::http::errors::ApiError;
use crate::response_store::StoredConversation;

/// Built-in tool and item types: refused for good (the CLI's own tools never serve a
/// client's request).
const BUILT_IN_ITEMS: [&str; 15] = [
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
];

/// A `function_call` item (the model's call, sent back) as a tool-use block.
fn function_call_item(at: &str, item: &Value) -> Result<Message, ApiError> {
    let call_id = item
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let name = item.get("name").and_then(Value::as_str);
    let (Some(call_id), Some(name)) = (call_id, name) else {
        return Err(ApiError::invalid_param(
            "a `function_call` item needs `call_id` and `name`",
            at,
        ));
    };
    let Some(input) =
        crate::http::openai::call_arguments(item.get("arguments").and_then(Value::as_str))
    else {
        return Err(ApiError::invalid_param(
            "`arguments` must be a JSON object",
            &format!("{at}.arguments"),
        ));
    };
    Ok(Message::new(
        Role::Assistant,
        vec![Block::ToolUse {
            id: call_id.to_string(),
            name: name.to_string(),
            input,
        }],
    ))
}

/// A `custom_tool_call` item (the model's call of a custom tool, sent back) as a tool-use
/// block whose input is `{"input": …}`, as the tool was offered.
fn custom_tool_call_item(at: &str, item: &Value) -> Result<Message, ApiError> {
    let call_id = item
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let name = item.get("name").and_then(Value::as_str);
    let (Some(call_id), Some(name)) = (call_id, name) else {
        return Err(ApiError::invalid_param(
            "a `custom_tool_call` item needs `call_id` and `name`",
            at,
        ));
    };
    let Some(input) = item.get("input").and_then(Value::as_str) else {
        return Err(ApiError::invalid_param(
            "`input` must be a string",
            &format!("{at}.input"),
        ));
    };
    Ok(Message::new(
        Role::Assistant,
        vec![Block::ToolUse {
            id: call_id.to_string(),
            name: name.to_string(),
            input: crate::conversation::RawJson::from_value(&json!({"input": input})),
        }],
    ))
}

/// A `function_call_output` or `custom_tool_call_output` item (the client's result) as a
/// tool-result block.
fn function_call_output_item(at: &str, item: &Value) -> Result<Message, ApiError> {
    let Some(call_id) = item
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::invalid_param(
            "a tool call output item needs `call_id`",
            &format!("{at}.call_id"),
        ));
    };
    let path = format!("{at}.output");
    let content = match item.get("output") {
        Some(Value::String(s)) => vec![Block::Text(s.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| content_part(p, &format!("{path}[{j}]"), false, Allow::User))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ApiError::invalid_param(
                "`output` must be a string or a list of content parts",
                &path,
            ))
        }
    };
    Ok(Message::new(
        Role::User,
        vec![Block::ToolResult {
            tool_use_id: call_id.to_string(),
            content,
            is_error: false,
        }],
    ))
}

/// A Responses content part as a block (an image or file through the shared parser, in
/// its shape), or a 400 naming it.
fn content_part(part: &Value, at: &str, assistant: bool, allow: Allow) -> Result<Block, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    let str_of = |key: &str| part.get(key).and_then(Value::as_str);
    let text = |key: &str| -> Result<Block, ApiError> {
        let t = str_of(key).ok_or_else(|| {
            ApiError::invalid_param(
                format!("`{kind}` part is missing `{key}`"),
                &format!("{at}.{key}"),
            )
        })?;
        // A text part is its text: no tree, no part on its way (most parts are text).
        Ok(Block::Text(t.to_owned()))
    };
    let block = |part: Value| content::part_block(part, at, allow);
    match (kind, assistant) {
        ("input_text", _) => text("text"),
        ("output_text", true) => text("text"),
        ("refusal", true) => text("refusal"),
        ("input_image", false) => {
            if str_of("file_id").is_some() {
                return Err(ApiError::invalid_param(
                    "`file_id` is not supported (there is no file store); send `image_url` (a data: URL or an http(s) URL)",
                    &format!("{at}.file_id"),
                ));
            }
            let url = str_of("image_url").ok_or_else(|| {
                ApiError::invalid_param(
                    "`input_image` needs `image_url`",
                    &format!("{at}.image_url"),
                )
            })?;
            block(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        ("input_file", false) => {
            for field in ["file_id", "file_url"] {
                if str_of(field).is_some() {
                    return Err(ApiError::invalid_param(
                        format!("`{field}` is not supported by this gateway; send the file inline as `file_data`"),
                        &format!("{at}.{field}"),
                    ));
                }
            }
            let mut file = json!({"file_data": str_of("file_data").unwrap_or("")});
            if let Some(name) = str_of("filename") {
                file["filename"] = name.into();
            }
            block(json!({"type": "file", "file": file}))
        }
        ("input_image" | "input_file", true) => Err(ApiError::invalid_param(
            "images and files are only supported in user messages",
            &format!("{at}.type"),
        )),
        _ => Err(ApiError::invalid_param(
            format!("content part type `{kind}` is not supported here"),
            &format!("{at}.type"),
        )),
    }
}

/// One `input` item as a message (None: an item that is not shown to the model again).
fn input_item(
    i: usize,
    item: &Value,
    references: &HashMap<usize, Message>,
) -> Result<Option<Message>, ApiError> {
    let at = format!("input[{i}]");
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {}
        "function_call" => return function_call_item(&at, item).map(Some),
        "function_call_output" | "custom_tool_call_output" => {
            return function_call_output_item(&at, item).map(Some)
        }
        "custom_tool_call" => return custom_tool_call_item(&at, item).map(Some),
        // A thinking block again when it carries ccgate's `encrypted_content`; otherwise
        // accepted and not shown to the model again.
        "reasoning" => return Ok(reasoning_input(item)),
        // An earlier answer's web search (served by the CLI's WebSearch): its findings are
        // in the answer text after it; not shown to the model again.
        "web_search_call" => return Ok(None),
        // Resolved by `prepare` among the key's stored responses.
        "item_reference" => {
            return match references.get(&i) {
                Some(m) if m.blocks.is_empty() => Ok(None),
                Some(m) => Ok(Some(m.clone())),
                None => Err(ApiError::StoredNotFound {
                    what: "Item",
                    id: shown_id(item.get("id").and_then(Value::as_str).unwrap_or("")),
                    param: format!("{at}.id"),
                }),
            }
        }
        k if BUILT_IN_ITEMS.contains(&k) => {
            return Err(ApiError::invalid_param(
                format!(
                    "`{k}` items belong to built-in tools, which this gateway does not support"
                ),
                &format!("{at}.type"),
            ))
        }
        k => {
            return Err(ApiError::invalid_param(
                format!("input item type `{k}` is not supported by this gateway"),
                &format!("{at}.type"),
            ))
        }
    }
    let role = item.get("role").and_then(Value::as_str).unwrap_or("");
    let (role, allow) = match role {
        "user" => (Role::User, Allow::User),
        "assistant" => (Role::Assistant, Allow::Text),
        "system" | "developer" => (Role::System, Allow::Text),
        other => {
            return Err(ApiError::invalid_param(
                format!("message role `{other}` is not one of user, assistant, system, developer"),
                &format!("{at}.role"),
            ))
        }
    };
    let path = format!("{at}.content");
    let blocks = match item.get("content") {
        Some(Value::String(s)) => vec![Block::Text(s.clone())],
        Some(Value::Array(parts)) => {
            let assistant = role == Role::Assistant;
            parts
                .iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{path}[{j}]"), assistant, allow))
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(ApiError::invalid_param(
                "`content` must be a string or a list of content parts",
                &path,
            ))
        }
    };
    Ok(Some(Message::new(role, blocks)))
}

/// The conversation a request asks to continue: the stored one's messages, then `input`;
/// `instructions` as the system prompt. With it, where each message came from
/// (`previous_response_id`, `input`, `input[i]`), to name it in a later error.
pub(super) fn conversation(
    req: &ResponsesRequest,
    previous: Option<&StoredConversation>,
    references: &HashMap<usize, Message>,
) -> Result<(Conversation, Vec<String>), ApiError> {
    let mut messages = previous.map(|p| p.messages.clone()).unwrap_or_default();
    let mut sources = vec!["previous_response_id".to_string(); messages.len()];
    match &req.input {
        None => return Err(ApiError::invalid_param("`input` is required", "input")),
        Some(Input::Text(t)) => {
            messages.push(Message::text(Role::User, t.clone()));
            sources.push("input".into());
        }
        Some(Input::Items(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid_param(
                    "`input` must contain at least one item",
                    "input",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                if let Some(m) = input_item(i, item, references)? {
                    messages.push(m);
                    sources.push(format!("input[{i}]"));
                }
            }
        }
    }
    if messages.last().is_some_and(|m| m.role == Role::Assistant) {
        crate::http::handler::continue_after_assistant(&mut messages);
        sources.push("input".into());
    }
    let conversation = Conversation {
        system: req.instructions.clone().filter(|s| !s.is_empty()),
        messages,
    };
    conversation
        .validate()
        .map_err(|e| ApiError::invalid_param(format!("`input`: {e}"), "input"))?;
    Ok((conversation, sources))
}
