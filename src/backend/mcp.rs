//! The in-process MCP server through which a run offers the client's tools to the CLI.
//!
//! The CLI hosts an "sdk" MCP server named [`SERVER`] whose JSON-RPC messages travel on
//! its control channel (stdin/stdout): the host opens the channel with
//! [`initialize_request`], then answers each `control_request` of subtype `mcp_message`
//! ([`answer`]): `initialize`, `notifications/initialized` and `tools/list` at once, and
//! `tools/call` by holding it until the client returns the call's result
//! ([`call_reply`]). The model sees each tool as `mcp__cg__<name>` ([`PREFIX`]); the
//! call names the model's tool-use id in `_meta["claudecode/toolUseId"]`.
//! The message types are rmcp's (the official MCP SDK, without its transports).

use rmcp::model::{
    CallToolResult, ContentBlock as Content, Implementation, InitializeResult, ProtocolVersion,
    ServerCapabilities, ToolsCapability,
};
use serde_json::{json, Value};

use super::request::ToolResult;
use crate::conversation::{Block, ToolSet};

/// The MCP server's name in `--mcp-config`.
pub const SERVER: &str = "cg";
/// What the CLI puts before a tool's name in what the model sees.
pub const PREFIX: &str = crate::protocol::CLIENT_TOOL_PREFIX;
/// The request id of the host's `initialize` control request.
pub(super) const INIT_REQUEST_ID: &str = "ccgate_init";

/// The `--mcp-config` value.
pub fn mcp_config() -> String {
    json!({"mcpServers": {SERVER: {"type": "sdk", "name": SERVER}}}).to_string()
}

/// The name the model sees for the client's tool `name`.
pub fn model_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The host's first control line: opens the control channel (and the sdk MCP server).
pub(super) fn initialize_request() -> String {
    let mut s = json!({
        "type": "control_request",
        "request_id": INIT_REQUEST_ID,
        "request": {"subtype": "initialize", "hooks": null},
    })
    .to_string();
    s.push('\n');
    s
}

/// What the host does with one `control_request` of the CLI.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Write this line to the CLI's stdin.
    Reply(String),
    /// A `tools/call`: hold it until the client's result; answer with [`call_reply`].
    Call {
        request_id: String,
        tool_use_id: String,
    },
}

fn control_success(request_id: &str, response: Value) -> String {
    let mut s = json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response},
    })
    .to_string();
    s.push('\n');
    s
}

fn control_error(request_id: &str, error: &str) -> String {
    let mut s = json!({
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    })
    .to_string();
    s.push('\n');
    s
}

fn mcp_reply(request_id: &str, id: &Value, result: Value) -> String {
    control_success(
        request_id,
        json!({"mcp_response": {"jsonrpc": "2.0", "id": id, "result": result}}),
    )
}

fn mcp_error(request_id: &str, id: &Value, code: i64, message: &str) -> String {
    control_success(
        request_id,
        json!({"mcp_response": {"jsonrpc": "2.0", "id": id,
            "error": {"code": code, "message": message}}}),
    )
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The `tools/list` reply for the client's tools: each schema written as the client sent
/// it (rmcp's `Tool` holds a schema as a tree, a copy of every value of it per run).
fn list_tools_reply(request_id: &str, id: &Value, tools: &ToolSet) -> String {
    use crate::conversation::RawJson;
    use serde::Serialize;
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        response: Success<'a>,
    }
    #[derive(Serialize)]
    struct Success<'a> {
        subtype: &'static str,
        request_id: &'a str,
        response: Mcp<'a>,
    }
    #[derive(Serialize)]
    struct Mcp<'a> {
        mcp_response: Rpc<'a>,
    }
    #[derive(Serialize)]
    struct Rpc<'a> {
        jsonrpc: &'static str,
        id: &'a Value,
        result: List<'a>,
    }
    #[derive(Serialize)]
    struct List<'a> {
        tools: Vec<Listed<'a>>,
    }
    /// As rmcp's `Tool` is written (`name`, `description` when given, `inputSchema`).
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
        #[serde(rename = "inputSchema")]
        input_schema: &'a RawJson,
    }
    let line = Line {
        kind: "control_response",
        response: Success {
            subtype: "success",
            request_id,
            response: Mcp {
                mcp_response: Rpc {
                    jsonrpc: "2.0",
                    id,
                    result: List {
                        tools: tools
                            .tools
                            .iter()
                            .map(|t| Listed {
                                name: &t.name,
                                description: t.description.as_deref(),
                                input_schema: &t.input_schema,
                            })
                            .collect(),
                    },
                },
            },
        },
    };
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

fn initialize_result(params: Option<&Value>) -> Value {
    // Answer with the version the CLI asked for when rmcp knows it, else rmcp's latest.
    let version = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(|v| serde_json::from_value::<ProtocolVersion>(v.clone()).ok())
        .unwrap_or_default();
    let mut caps = ServerCapabilities::default();
    caps.tools = Some(ToolsCapability::default());
    to_value(
        &InitializeResult::new(caps)
            .with_protocol_version(version)
            .with_server_info(Implementation::new("ccgate", env!("CARGO_PKG_VERSION"))),
    )
}

/// The answer to one `control_request` of the CLI (`request` is its `request` object).
pub(super) fn answer(request_id: &str, request: &Value, tools: Option<&ToolSet>) -> Action {
    let subtype = request.get("subtype").and_then(Value::as_str).unwrap_or("");
    if subtype != "mcp_message" {
        // No other request is expected (no hooks, no permission prompts: every allowed
        // tool is pre-approved); refuse rather than leave the CLI waiting.
        return Action::Reply(control_error(
            request_id,
            &format!("unsupported control request `{subtype}`"),
        ));
    }
    let server = request.get("server_name").and_then(Value::as_str);
    let msg = request.get("message").cloned().unwrap_or(Value::Null);
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let Some(tools) = tools.filter(|_| server == Some(SERVER)) else {
        return Action::Reply(mcp_error(request_id, &id, -32601, "unknown MCP server"));
    };
    match method {
        "initialize" => Action::Reply(mcp_reply(
            request_id,
            &id,
            initialize_result(msg.get("params")),
        )),
        // Notifications get an empty result: the CLI waits for an answer to each message.
        m if m.starts_with("notifications/") => Action::Reply(control_success(
            request_id,
            json!({"mcp_response": {"jsonrpc": "2.0", "result": {}}}),
        )),
        "tools/list" => Action::Reply(list_tools_reply(request_id, &id, tools)),
        "ping" => Action::Reply(mcp_reply(request_id, &id, json!({}))),
        "tools/call" => {
            let params = msg.get("params");
            let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
            let tool_use_id = params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get("claudecode/toolUseId"))
                .and_then(Value::as_str);
            match (name, tool_use_id) {
                (Some(name), Some(tool_use_id)) if tools.tools.iter().any(|t| t.name == name) => {
                    Action::Call {
                        request_id: request_id.to_string(),
                        tool_use_id: tool_use_id.to_string(),
                    }
                }
                (Some(_), Some(_)) => {
                    Action::Reply(mcp_error(request_id, &id, -32602, "unknown tool"))
                }
                _ => Action::Reply(mcp_error(
                    request_id,
                    &id,
                    -32602,
                    "tools/call without a name or a tool-use id",
                )),
            }
        }
        _ => Action::Reply(mcp_error(request_id, &id, -32601, "method not found")),
    }
}

/// A client's tool result as an MCP `CallToolResult`: text, base64 images and plain-text
/// documents; None when it holds anything else (URL images, PDFs), which only a fresh run
/// can carry.
pub(super) fn try_call_result(r: &ToolResult) -> Option<CallToolResult> {
    let mut content = Vec::with_capacity(r.content.len());
    for b in &r.content {
        content.push(match b {
            Block::Text(t) => Content::text(t.clone()),
            Block::Image(v) if v["source"]["type"] == "base64" => Content::image(
                v["source"]["data"].as_str()?.to_string(),
                v["source"]["media_type"].as_str()?.to_string(),
            ),
            Block::Document(v) if v["source"]["type"] == "text" => {
                Content::text(v["source"]["data"].as_str()?.to_string())
            }
            _ => return None,
        });
    }
    Some(if r.is_error {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    })
}

/// Whether a held run can take `r` (see [`try_call_result`]).
pub fn deliverable(r: &ToolResult) -> bool {
    try_call_result(r).is_some()
}

/// [`try_call_result`] for a result already checked by it (anything else becomes an
/// error result saying so).
pub(super) fn call_result(r: &ToolResult) -> CallToolResult {
    try_call_result(r).unwrap_or_else(|| {
        CallToolResult::error(vec![Content::text(
            "the tool result could not be delivered to the model",
        )])
    })
}

/// The answer to a held `tools/call` (`call` is the CLI's `control_request` for it):
/// the client's result as an MCP `CallToolResult`.
pub(super) fn call_reply(request_id: &str, call_id: &Value, result: &CallToolResult) -> String {
    mcp_reply(request_id, call_id, to_value(result))
}

/// The JSON-RPC id of a held call's request (needed for its reply).
pub(super) fn jsonrpc_id(request: &Value) -> Value {
    request
        .get("message")
        .and_then(|m| m.get("id"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{ToolChoice, ToolSpec};

    fn tools() -> ToolSet {
        ToolSet {
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: Some("Weather".into()),
                input_schema: crate::conversation::RawJson::from_value(
                    &json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
            }],
            choice: ToolChoice::Auto,
            parallel: true,
        }
    }

    fn mcp(id: u64, method: &str, params: Value) -> Value {
        json!({"subtype": "mcp_message", "server_name": "cg",
            "message": {"jsonrpc": "2.0", "id": id, "method": method, "params": params}})
    }

    fn reply(a: Action) -> Value {
        match a {
            Action::Reply(line) => {
                assert!(line.ends_with('\n'));
                serde_json::from_str(&line).unwrap()
            }
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn the_handshake_and_the_tool_list() {
        let t = tools();
        let init = reply(answer(
            "r1",
            &mcp(0, "initialize", json!({"protocolVersion": "2025-11-25"})),
            Some(&t),
        ));
        assert_eq!(init["type"], "control_response");
        assert_eq!(init["response"]["request_id"], "r1");
        let result = &init["response"]["response"]["mcp_response"]["result"];
        assert_eq!(result["protocolVersion"], "2025-11-25");
        assert!(result["capabilities"]["tools"].is_object());
        let list = reply(answer("r2", &mcp(1, "tools/list", json!({})), Some(&t)));
        let listed = &list["response"]["response"]["mcp_response"]["result"]["tools"];
        assert_eq!(listed[0]["name"], "get_weather");
        assert_eq!(
            listed[0]["inputSchema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(list["response"]["response"]["mcp_response"]["id"], 1);
    }

    #[test]
    fn a_schema_is_listed_as_the_client_wrote_it() {
        let schema = r#"{ "type": "object", "properties": { "x": { "enum": [0, 0, 0] } } }"#;
        let t = ToolSet {
            tools: vec![ToolSpec {
                name: "t".into(),
                description: None,
                input_schema: crate::conversation::RawJson::parse(schema).unwrap(),
            }],
            choice: ToolChoice::Auto,
            parallel: true,
        };
        let Action::Reply(line) = answer("r", &mcp(1, "tools/list", json!({})), Some(&t)) else {
            panic!("not a reply")
        };
        assert!(
            line.contains(&format!(r#""inputSchema":{schema}"#)),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        let listed = &v["response"]["response"]["mcp_response"]["result"]["tools"][0];
        assert_eq!(listed["name"], "t");
        assert!(listed.get("description").is_none(), "{listed}");
    }

    #[test]
    fn a_call_is_held_only_for_a_known_tool_with_a_tool_use_id() {
        let t = tools();
        let call = mcp(
            2,
            "tools/call",
            json!({"name": "get_weather", "arguments": {"city": "Paris"},
                "_meta": {"claudecode/toolUseId": "toolu_1"}}),
        );
        assert_eq!(
            answer("r3", &call, Some(&t)),
            Action::Call {
                request_id: "r3".into(),
                tool_use_id: "toolu_1".into()
            }
        );
        let unknown = mcp(
            3,
            "tools/call",
            json!({"name": "rm_rf", "_meta": {"claudecode/toolUseId": "toolu_2"}}),
        );
        let r = reply(answer("r4", &unknown, Some(&t)));
        assert!(r["response"]["response"]["mcp_response"]["error"].is_object());
        let r = reply(answer("r5", &json!({"subtype": "can_use_tool"}), Some(&t)));
        assert_eq!(r["response"]["subtype"], "error");
        let r = reply(answer("r6", &mcp(4, "tools/list", json!({})), None));
        assert!(r["response"]["response"]["mcp_response"]["error"].is_object());
    }
}
