//! A pre-warmed process serves any first turn: it is spawned without per-request settings
//! (the pool's model, `--system-prompt ""`, no client tools, no options), and a request that
//! takes one gives it its settings over the control channel, written before its prompt.
//! The CLI applies control requests in the order written, before it reads the first user
//! line (measured on 2.1.332 and 2.1.336: `docs/cli-control-channel.md`,
//! `tests/it/real_late_settings.rs`):
//!
//! - system prompt, JSON Schema, the client's tools: ONE `initialize` (the CLI takes it
//!   once per process, so the pool never sends it at spawn): `systemPrompt: [text]`,
//!   `jsonSchema`, `sdkMcpServers: ["cg"]` (the run's in-process MCP server, answered by
//!   the driver as on a cold run);
//! - tool permissions and effort: one `apply_flag_settings` with `permissions.allow` (the
//!   model-facing tool names, as `--allowedTools`) and `effortLevel` (as `--effort`);
//! - model: `set_model` (as `--model`), only when it differs from the pool's.
//!
//! What cannot be set after spawn keeps the cold path ([`fits`]): earlier turns (a resumed
//! session is a flag), and thinking options (not observable late against the mock, so not
//! relied on). Each is a reason of `ccgate_pool_misses_total`.

use serde_json::{json, Map, Value};

use super::mcp;
use super::request::CliRequest;
use super::stats::PoolMiss;

/// How a control response line of the CLI begins (its lines put `type` first).
pub(super) const REPLY_PREFIX: &str = r#"{"type":"control_response""#;

/// The request ids of the late settings (and the `initialize` they may include).
const LATE_IDS: [&str; 3] = [
    mcp::INIT_REQUEST_ID,
    "ccgate_late_flags",
    "ccgate_late_model",
];

/// Whether `request_id` is one of the late settings' requests.
pub(super) fn is_late(request_id: &str) -> bool {
    LATE_IDS.contains(&request_id)
}

/// Whether `req` can run on a process spawned with the pool's flags (`pool_model`: its
/// `--model`, None: the CLI's default), its settings applied by [`control_lines`].
pub(super) fn fits(req: &CliRequest, pool_model: Option<&str>) -> Result<(), PoolMiss> {
    if !req.history.is_empty() || req.resume_results {
        return Err(PoolMiss::History);
    }
    if req.options.thinking.is_some() || req.options.thinking_display.is_some() {
        return Err(PoolMiss::Thinking);
    }
    if model_of(req).is_none() && pool_model.is_some() {
        // No model named: the CLI's default, which the pool's process no longer has.
        return Err(PoolMiss::Model);
    }
    if let Some(schema) = &req.options.json_schema {
        if serde_json::from_str::<Value>(schema).is_err() {
            return Err(PoolMiss::Schema);
        }
    }
    Ok(())
}

fn model_of(req: &CliRequest) -> Option<&str> {
    req.model.as_deref().filter(|m| !m.is_empty())
}

/// The control-request lines that give a pre-warmed process `req`'s settings, in the order
/// they are written, before its prompt (empty: it needs none).
pub(super) fn control_lines(req: &CliRequest, pool_model: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut init = Map::new();
    if let Some(system) = req.system_prompt.as_deref().filter(|s| !s.is_empty()) {
        init.insert("systemPrompt".into(), json!([system]));
    }
    if let Some(schema) = req.options.json_schema.as_deref() {
        if let Ok(schema) = serde_json::from_str::<Value>(schema) {
            init.insert("jsonSchema".into(), schema);
        }
    }
    if req.tools.is_some() {
        init.insert("sdkMcpServers".into(), json!([mcp::SERVER]));
    }
    if !init.is_empty() {
        init.insert("subtype".into(), json!("initialize"));
        init.insert("hooks".into(), Value::Null);
        out.push(line(LATE_IDS[0], Value::Object(init)));
    }
    let mut settings = Map::new();
    if let Some(tools) = req.tools.as_deref().filter(|t| !t.tools.is_empty()) {
        let allow: Vec<String> = tools
            .tools
            .iter()
            .map(|t| mcp::model_name(&t.name))
            .collect();
        settings.insert("permissions".into(), json!({ "allow": allow }));
    }
    if let Some(effort) = req.options.effort {
        settings.insert("effortLevel".into(), json!(effort.as_str()));
    }
    if !settings.is_empty() {
        out.push(line(
            LATE_IDS[1],
            json!({"subtype": "apply_flag_settings", "settings": settings}),
        ));
    }
    if let Some(model) = model_of(req).filter(|m| Some(*m) != pool_model) {
        out.push(line(
            LATE_IDS[2],
            json!({"subtype": "set_model", "model": model}),
        ));
    }
    out
}

fn line(id: &str, request: Value) -> String {
    let mut s =
        json!({"type": "control_request", "request_id": id, "request": request}).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Effort, RunOptions, Thinking};
    use crate::conversation::{ToolChoice, ToolSet, ToolSpec};
    use std::sync::Arc;

    fn agent_request() -> CliRequest {
        CliRequest {
            prompt: "hi".into(),
            system_prompt: Some("You are an agent.".into()),
            model: Some("haiku".into()),
            tools: Some(Arc::new(ToolSet {
                tools: ["lookup", "search"]
                    .iter()
                    .map(|n| ToolSpec {
                        name: n.to_string(),
                        description: None,
                        input_schema: crate::conversation::RawJson::parse(r#"{"type":"object"}"#)
                            .unwrap(),
                    })
                    .collect(),
                choice: ToolChoice::Auto,
                parallel: true,
            })),
            options: RunOptions {
                json_schema: Some(r#"{"type":"object"}"#.into()),
                effort: Some(Effort::High),
                ..RunOptions::default()
            },
            ..CliRequest::default()
        }
    }

    fn parsed(lines: &[String]) -> Vec<Value> {
        lines
            .iter()
            .map(|l| {
                assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
                serde_json::from_str(l).unwrap()
            })
            .collect()
    }

    #[test]
    fn an_agent_request_is_one_initialize_one_flag_settings_and_a_model() {
        let lines = parsed(&control_lines(&agent_request(), Some("sonnet")));
        assert_eq!(lines.len(), 3);
        let init = &lines[0]["request"];
        assert_eq!(init["subtype"], "initialize");
        assert_eq!(init["systemPrompt"], json!(["You are an agent."]));
        assert_eq!(init["jsonSchema"], json!({"type": "object"}));
        assert_eq!(init["sdkMcpServers"], json!(["cg"]));
        let flags = &lines[1]["request"];
        assert_eq!(flags["subtype"], "apply_flag_settings");
        assert_eq!(
            flags["settings"]["permissions"]["allow"],
            json!(["mcp__cg__lookup", "mcp__cg__search"])
        );
        assert_eq!(flags["settings"]["effortLevel"], "high");
        assert_eq!(
            lines[2]["request"],
            json!({"subtype": "set_model", "model": "haiku"})
        );
        assert!(fits(&agent_request(), Some("sonnet")).is_ok());
    }

    #[test]
    fn a_plain_request_on_the_pools_model_needs_nothing() {
        let req = CliRequest {
            prompt: "hi".into(),
            model: Some("sonnet".into()),
            ..CliRequest::default()
        };
        assert!(control_lines(&req, Some("sonnet")).is_empty());
        assert!(fits(&req, Some("sonnet")).is_ok());
    }

    #[test]
    fn what_cannot_be_set_late_keeps_the_spawn_path() {
        let mut req = agent_request();
        req.options.thinking = Some(Thinking::Adaptive);
        assert!(matches!(fits(&req, None), Err(PoolMiss::Thinking)));
        let mut req = agent_request();
        req.resume_results = true;
        assert!(matches!(fits(&req, None), Err(PoolMiss::History)));
        let mut req = agent_request();
        req.model = None;
        assert!(matches!(fits(&req, Some("sonnet")), Err(PoolMiss::Model)));
        assert!(fits(&req, None).is_ok(), "both on the CLI's default model");
    }
}
