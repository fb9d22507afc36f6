//! Structured output, effort and thinking through the REAL `claude` binary against the
//! loopback mock Messages API: what the CLI sends upstream for each client field, and
//! what the gateway makes of the CLI's genuine output (StructuredOutput calls, prose,
//! thinking and signature deltas). Skipped loudly without `CCGATE_REAL_CLAUDE`.

use serde_json::{json, Value};

use crate::harness::{chat_body, messages_body, post, sse_events};
use crate::mock_api::MockApi;
use crate::real_gateway::real_server_with;
use crate::support_real::real_claude;

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `%XX` for the characters a JSON scenario suffix has that a URL path must not.
fn url_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c.to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect()
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
           "required": ["name", "age"]})
}

const PERSON: &str = r#"{"name":"Ada","age":36}"#;

#[tokio::test]
async fn real_cli_structured_output_on_both_apis_and_the_prose_case() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let url = mock.url(&format!("schema:{}", url_escape(PERSON)));
    let (s, _home) = real_server_with(exe.clone(), Some(url), None, |_| {}).await;
    let mut b = chat_body("Give me a person", false);
    b["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    b["reasoning_effort"] = json!("high");
    let (st, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(st, 200, "{body}");
    let content = json_of(&body)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(json_of(&content), json_of(PERSON));
    // Upstream: the StructuredOutput tool with the client's schema, and the effort.
    let req = mock.message_requests();
    let first = &req[0].body;
    let tool = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "StructuredOutput")
        .unwrap_or_else(|| panic!("no StructuredOutput tool: {}", first["tools"]));
    assert_eq!(tool["input_schema"], person_schema());
    assert_eq!(first["output_config"]["effort"], "high");

    // Streaming, Anthropic: the JSON arrives as text deltas.
    let mut b = messages_body("Give me a person", true);
    b["output_config"] = json!({"format": {"type": "json_schema", "schema": person_schema()},
                               "effort": "low"});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let text: String = sse_events(&body)
        .iter()
        .map(|(_, d)| json_of(d))
        .filter_map(|d| d["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(json_of(&text), json_of(PERSON), "{body}");
    let last = mock.message_requests().last().unwrap().body.clone();
    assert_eq!(last["output_config"]["effort"], "low");
    drop(s);

    // The model answers in prose although a schema was asked for: the rule's 502.
    let (s, _home) = real_server_with(exe, Some(mock.url("ok")), None, |_| {}).await;
    let mut b = chat_body("Give me a person", false);
    b["response_format"] = json!({"type": "json_object"});
    let (st, _, body) = post(&s, "/v1/chat/completions", &b).await;
    assert_eq!(st, 502, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "structured_output_missing");
    let mut b = messages_body("Give me a person", true);
    b["output_format"] = json!({"type": "json_schema", "schema": person_schema()});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 502, "{body}");
}

#[tokio::test]
async fn real_cli_thinking_blocks_reach_an_anthropic_streaming_client() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("thinking")), None, |_| {}).await;
    let mut b = messages_body("2+2?", true);
    b["max_tokens"] = json!(8192);
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let events: Vec<Value> = sse_events(&body).iter().map(|(_, d)| json_of(d)).collect();
    let starts: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["content_block"]["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        [(0, "thinking".to_string()), (1, "text".to_string())],
        "{body}"
    );
    let thinking: String = events
        .iter()
        .filter(|e| e["index"] == 0)
        .filter_map(|e| e["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Let me think. 2+2 is 4.");
    assert!(
        events
            .iter()
            .any(|e| e["index"] == 0 && e["delta"]["signature"] == "sig_mock"),
        "{body}"
    );
    assert!(events
        .iter()
        .any(|e| e["index"] == 1 && e["delta"]["type"] == "text_delta"));

    // Non-streaming: the thinking block with its signature before the text.
    let mut b = messages_body("2+2?", false);
    b["max_tokens"] = json!(8192);
    b["thinking"] = json!({"type": "adaptive"});
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(
        v["content"][0],
        json!({"type": "thinking", "thinking": "Let me think. 2+2 is 4.", "signature": "sig_mock"})
    );
    assert_eq!(v["content"][1]["type"], "text");

    // Not asked for: none.
    let (st, _, body) = post(&s, "/v1/messages", &messages_body("2+2?", false)).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains("thinking"), "{body}");

    // The CLI relays the API's thinking token count: OpenAI's reasoning_tokens.
    let (st, _, body) = post(&s, "/v1/chat/completions", &chat_body("2+2?", false)).await;
    assert_eq!(st, 200, "{body}");
    let usage = &json_of(&body)["usage"];
    assert_eq!(
        usage["completion_tokens_details"]["reasoning_tokens"], 5,
        "{usage}"
    );
    assert!(
        !body.contains("Let me think"),
        "no thinking text for OpenAI by default: {body}"
    );
}

#[tokio::test]
async fn real_cli_thinking_config_and_history_reach_the_upstream_request() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("ok")), None, |_| {}).await;
    // A model that takes a thinking budget: the budget and `disabled` reach the API.
    for (thinking, upstream) in [
        (
            json!({"type": "enabled", "budget_tokens": 2048}),
            json!({"type": "enabled", "budget_tokens": 2048}),
        ),
        (json!({"type": "disabled"}), json!({"type": "disabled"})),
    ] {
        let mut b = messages_body("hi", false);
        b["model"] = json!("claude-sonnet-4-5");
        b["max_tokens"] = json!(8192);
        b["thinking"] = thinking.clone();
        let (st, _, body) = post(&s, "/v1/messages", &b).await;
        assert_eq!(st, 200, "{body}");
        let sent = mock.message_requests().last().unwrap().body["thinking"].clone();
        assert_eq!(sent["type"], upstream["type"], "{thinking} → {sent}");
        assert_eq!(
            sent["budget_tokens"], upstream["budget_tokens"],
            "{thinking} → {sent}"
        );
    }
    // Signed thinking sent back in the history is accepted and written into the
    // synthesized session; for a completed turn the CLI (like the API itself) leaves
    // earlier turns' thinking out of the upstream request: the model sees the turn's text.
    let mut b = messages_body("x", false);
    b["messages"] = json!([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Adding.", "signature": "sig_back"},
            {"type": "text", "text": "4"}]},
        {"role": "user", "content": "and 3+3?"}
    ]);
    let (st, _, body) = post(&s, "/v1/messages", &b).await;
    assert_eq!(st, 200, "{body}");
    let sent = mock.message_requests().last().unwrap().body.clone();
    let assistant = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap_or_else(|| panic!("no assistant turn upstream: {}", sent["messages"]))
        .clone();
    assert_eq!(
        assistant["content"],
        json!([{"type": "text", "text": "4"}]),
        "{assistant}"
    );
    assert!(
        !sent["messages"].to_string().contains("Adding."),
        "the thinking never becomes text: {}",
        sent["messages"]
    );
}
