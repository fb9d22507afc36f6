//! Pre-warmed processes serve any first turn (issue 26 item 1), on the real CLI against the
//! mock: a process spawned with the pool's flags (`prewarm_model`, no system prompt, no
//! tools, no options) takes an agent-shaped first request — system prompt, two client
//! tools, another model, effort and a JSON Schema — over the control channel (`late.rs`).
//! Each setting must reach the upstream request (the mock's log) exactly as a cold spawn's
//! flags put it there, and the request must be a pool hit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, post, TestServer};
use crate::mock_api::{MockApi, RecordedRequest};
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

const SCHEMA_ANSWER: &str = r#"{"city":"Paris"}"#;

fn agent_body(model: &str) -> Value {
    let tool = |name: &str| {
        json!({"type": "function", "function": {
            "name": name,
            "description": format!("{name} something"),
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }})
    };
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "SYS-AGENT: answer as a travel agent."},
            {"role": "user", "content": "Which city?"}
        ],
        "tools": [tool("lookup"), tool("search")],
        "reasoning_effort": "high",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
        }},
    })
}

/// Runs the agent request on a server with `prewarm` processes; returns the upstream
/// request, the answer and the server's pool hits.
async fn agent_run(exe: std::path::PathBuf, prewarm: usize) -> (RecordedRequest, Value, u64) {
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url(&format!("schema:{SCHEMA_ANSWER}"))),
        None,
        move |c| {
            c.cli.prewarm = prewarm;
            c.cli.prewarm_model = Some("sonnet".into());
            c.cli.max_concurrent = 2;
            c.cli.keep_conversations = 0;
        },
    )
    .await;
    if prewarm > 0 {
        let b = s.state.backend.clone();
        assert!(
            eventually(Duration::from_secs(20), move || b.pool_pids().len()
                == prewarm)
            .await,
            "pool never filled"
        );
    }
    let (st, _, body) = post(&s, "/v1/chat/completions", &agent_body("haiku")).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let requests = mock.message_requests();
    assert_eq!(requests.len(), 1, "one model call: {requests:?}");
    let hits = s.state.backend.stats().snapshot().pool_hits_total;
    TestServer::shutdown(s).await;
    (requests[0].clone(), v, hits)
}

fn system_text(r: &RecordedRequest) -> String {
    match &r.body["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[tokio::test]
async fn real_cli_a_prewarmed_process_takes_an_agents_first_turn_with_every_setting() {
    let Some(exe) = real_claude() else { return };
    let (warm, answer, hits) = agent_run(exe.clone(), 1).await;
    assert_eq!(
        hits, 1,
        "the agent's first turn took the pre-warmed process"
    );
    assert_eq!(
        answer["choices"][0]["message"]["content"].as_str(),
        Some(SCHEMA_ANSWER),
        "{answer}"
    );
    let (cold, _, cold_hits) = agent_run(exe, 0).await;
    assert_eq!(cold_hits, 0);

    // System prompt: the client's text, as the spawn flag gives it.
    assert!(system_text(&warm).contains("SYS-AGENT"), "{}", warm.body);
    assert_eq!(system_text(&warm), system_text(&cold));
    // The client's tools (and the schema's StructuredOutput), as `--mcp-config` gives them.
    let mut tools = warm.tool_names();
    tools.sort();
    assert!(tools.iter().any(|t| t == "mcp__cg__lookup"), "{tools:?}");
    assert!(tools.iter().any(|t| t == "mcp__cg__search"), "{tools:?}");
    assert!(tools.iter().any(|t| t == "StructuredOutput"), "{tools:?}");
    let mut cold_tools = cold.tool_names();
    cold_tools.sort();
    assert_eq!(tools, cold_tools);
    // The model (not prewarm_model), and the effort.
    let model = warm.body["model"].as_str().unwrap_or_default();
    assert!(model.contains("haiku"), "{model}");
    assert_eq!(warm.body["model"], cold.body["model"]);
    assert_eq!(warm.body["output_config"]["effort"], "high");
    assert_eq!(
        warm.body["output_config"]["effort"],
        cold.body["output_config"]["effort"]
    );
}

/// The client's tools given late are callable: the permissions `apply_flag_settings` gives
/// them let the model's two parallel calls reach the host (without them the CLI denies
/// the calls itself), and the client gets both calls from a pre-warmed process.
#[tokio::test]
async fn real_cli_a_prewarmed_process_lets_the_model_call_the_late_tools() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(
        exe,
        Some(mock.url("tool_call:mcp__cg__lookup,mcp__cg__search")),
        None,
        |c| {
            c.cli.prewarm = 1;
            c.cli.prewarm_model = Some("sonnet".into());
            c.cli.max_concurrent = 2;
        },
    )
    .await;
    let b = s.state.backend.clone();
    assert!(
        eventually(Duration::from_secs(20), move || b.pool_pids().len() == 1).await,
        "pool never filled"
    );
    let mut body = agent_body("haiku");
    body.as_object_mut().unwrap().remove("response_format");
    let (st, _, text) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<&str> = v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter_map(|c| c["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    assert_eq!(names, ["lookup", "search"], "{v}");
    assert_eq!(s.state.backend.stats().snapshot().pool_hits_total, 1);
    TestServer::shutdown(s).await;
}
