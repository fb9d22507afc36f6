//! The request's `tools`, `tool_choice` and `parallel_tool_calls` as the neutral tool set.
//! All are client tools (the client runs them):
//! - `function` tools, as in Chat Completions;
//! - `namespace` tools (`{"type": "namespace", "name", "tools": [function tools]}`, Codex
//!   CLI's `multi_agent_v1`) are flattened into their function tools; a call of one is a
//!   `function_call` item carrying its `namespace`;
//! - `custom` tools (freeform: one free-text input, Codex CLI's `apply_patch`) are offered
//!   to the model as a tool with one string parameter `input`, the tool's grammar (`format`
//!   `grammar`, lark or regex) in its description; a call of one is a `custom_tool_call`
//!   item with that `input`, and the client's `custom_tool_call_output` is its result.
//!
//! The hosted `web_search` tool (and `web_search_preview`) is the CLI's own WebSearch for
//! the run ([`web_tools`], `http::web`); other hosted tools (`file_search`, …) are refused
//! with a 400 naming them.

use serde_json::{json, Value};

use super::request::ResponsesRequest;
use crate::conversation::{RawJson, ToolSet, ToolSpec};
use crate::http::bounded::ToolDef;
use crate::http::errors::ApiError;
use crate::http::openai::{no_parameters, openai_tool_choice, openai_tool_set};

/// The most bytes of a custom tool's grammar given to the model.
const GRAMMAR_MAX_BYTES: usize = 32 * 1024;

/// What kind of client tool a name is (for the answer's output items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToolKind {
    Function { namespace: Option<String> },
    Custom,
}

fn kind(t: &Value) -> &str {
    t.get("type").and_then(Value::as_str).unwrap_or("")
}

fn def_kind(t: &ToolDef) -> &str {
    t.get("type").and_then(Value::as_str).unwrap_or("")
}

impl ResponsesRequest {
    /// The kind of the client tool `name` (a plain function when the request has none).
    pub(super) fn tool_kind(&self, name: &str) -> ToolKind {
        for t in self.tools.iter().flatten() {
            match def_kind(t) {
                "custom" if t.get("name").and_then(Value::as_str) == Some(name) => {
                    return ToolKind::Custom
                }
                "namespace" => {
                    let inner = t.get("tools").and_then(Value::as_array);
                    if inner
                        .into_iter()
                        .flatten()
                        .any(|f| f.get("name").and_then(Value::as_str) == Some(name))
                    {
                        return ToolKind::Function {
                            namespace: t.get("name").and_then(Value::as_str).map(str::to_string),
                        };
                    }
                }
                _ => {}
            }
        }
        ToolKind::Function { namespace: None }
    }
}

/// A function tool definition at `at` as a tool spec: its `name`, `description` and
/// schema (`parameters`).
fn function_spec(
    name: Option<&Value>,
    description: Option<&Value>,
    schema: Option<RawJson>,
    at: &str,
) -> Result<ToolSpec, ApiError> {
    let Some(name) = name.and_then(Value::as_str) else {
        return Err(ApiError::invalid_param(
            "a function tool needs `name`",
            &format!("{at}.name"),
        ));
    };
    Ok(ToolSpec {
        name: name.to_string(),
        description: description.and_then(Value::as_str).map(str::to_string),
        input_schema: schema.unwrap_or_else(no_parameters),
    })
}

/// A custom tool definition at `at` as a tool spec with one string parameter `input`.
fn custom_spec(t: &ToolDef, at: &str) -> Result<ToolSpec, ApiError> {
    let Some(name) = t.get("name").and_then(Value::as_str) else {
        return Err(ApiError::invalid_param(
            "a custom tool needs `name`",
            &format!("{at}.name"),
        ));
    };
    let mut description = t
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match t.get("format").filter(|f| !f.is_null()) {
        None => {}
        Some(f) => match kind(f) {
            "text" => {}
            "grammar" => {
                let syntax = f.get("syntax").and_then(Value::as_str).unwrap_or("");
                if !matches!(syntax, "lark" | "regex") {
                    return Err(ApiError::invalid_param(
                        "`format.syntax` must be lark or regex",
                        &format!("{at}.format.syntax"),
                    ));
                }
                let Some(definition) = f.get("definition").and_then(Value::as_str) else {
                    return Err(ApiError::invalid_param(
                        "a grammar format needs `definition`",
                        &format!("{at}.format.definition"),
                    ));
                };
                if definition.len() > GRAMMAR_MAX_BYTES {
                    return Err(ApiError::invalid_param(
                        format!("the grammar must be at most {GRAMMAR_MAX_BYTES} bytes"),
                        &format!("{at}.format.definition"),
                    ));
                }
                if !description.is_empty() {
                    description.push_str("\n\n");
                }
                description.push_str(&format!(
                    "The `input` must be text that matches this {syntax} grammar exactly:\n\n{definition}"
                ));
            }
            other => {
                return Err(ApiError::invalid_param(
                    format!("custom tool format `{other}` is not one of text, grammar"),
                    &format!("{at}.format.type"),
                ))
            }
        },
    }
    Ok(ToolSpec {
        name: name.to_string(),
        description: (!description.is_empty()).then_some(description),
        input_schema: RawJson::from_value(&json!({"type": "object",
            "properties": {"input": {"type": "string",
                "description": "The tool's whole free-text input."}},
            "required": ["input"], "additionalProperties": false})),
    })
}

/// `tools`, `tool_choice` and `parallel_tool_calls` as the neutral tool set (None: no
/// tools). Hosted tools are refused.
pub(super) fn tool_set(req: &ResponsesRequest) -> Result<Option<ToolSet>, ApiError> {
    let tools = req.tools.as_deref().unwrap_or_default();
    let choice = openai_tool_choice(
        req.tool_choice.as_ref(),
        |c| c.get("name").and_then(Value::as_str),
        "{\"type\": \"function\", \"name\": …}",
    )?;
    // Each spec's definition path, for errors.
    let mut paths = Vec::with_capacity(tools.len());
    let mut specs = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        match def_kind(t) {
            "function" => specs.push(function_spec(
                t.get("name"),
                t.get("description"),
                t.schema().cloned(),
                &at,
            )?),
            "custom" => specs.push(custom_spec(t, &at)?),
            "namespace" => {
                let Some(inner) = t.get("tools").and_then(Value::as_array) else {
                    return Err(ApiError::invalid_param(
                        "a namespace tool needs `tools` (function tools)",
                        &format!("{at}.tools"),
                    ));
                };
                for (j, f) in inner.iter().enumerate() {
                    let at = format!("{at}.tools[{j}]");
                    if kind(f) != "function" {
                        return Err(ApiError::invalid_param(
                            "a namespace holds function tools only",
                            &format!("{at}.type"),
                        ));
                    }
                    let schema = f
                        .get("parameters")
                        .filter(|p| !p.is_null())
                        .map(RawJson::from_value);
                    specs.push(function_spec(
                        f.get("name"),
                        f.get("description"),
                        schema,
                        &at,
                    )?);
                    paths.push(at);
                }
                continue;
            }
            _ if crate::http::web::responses_tool(t, i, &mut Default::default())? => continue,
            other => {
                return Err(ApiError::invalid_param(
                    format!(
                        "hosted tool `{other}` is not supported by this gateway (function, namespace and custom tools are)"
                    ),
                    &format!("{at}.type"),
                ))
            }
        }
        paths.push(at);
    }
    openai_tool_set(specs, choice, req.parallel_tool_calls, |i, f| {
        match paths.get(i) {
            Some(p) => format!("{p}.{f}"),
            None => format!("tools[{i}].{f}"),
        }
    })
}

/// The hosted web search among `tools` as the run's web tools (None: not asked).
pub(super) fn web_tools(
    req: &ResponsesRequest,
) -> Result<Option<crate::backend::WebTools>, ApiError> {
    let mut web = crate::backend::WebTools::default();
    for (i, t) in req.tools.as_deref().unwrap_or_default().iter().enumerate() {
        crate::http::web::responses_tool(t, i, &mut web)?;
    }
    Ok(web.search.then_some(web))
}
