//! `POST /v1/responses` through ccgate → the REAL `claude` binary → the loopback mock
//! Messages API: text, the streaming event sequence, a failure after the stream began,
//! and a `previous_response_id` follow-up that continues the kept CLI process. Skipped
//! loudly without `CCGATE_REAL_CLAUDE` (fails under CI instead).

use serde_json::{json, Value};

use crate::harness::{post, sse_events};
use crate::mock_api::MockApi;
use crate::real_gateway::{real_server, real_server_with};
use crate::support_real::real_claude;

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn output_text(v: &Value) -> &str {
    v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
}

/// The named events of a stream, checking their sequence numbers.
fn events(text: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = sse_events(text)
        .into_iter()
        .filter_map(|(name, data)| Some((name?, json_of(&data))))
        .collect();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "{data}");
        assert_eq!(data["sequence_number"], i, "{text}");
    }
    events
}

#[tokio::test]
async fn real_cli_responses_text_and_stream() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server(exe, Some(mock.url("slow:One two three four")), None).await;
    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "Hello", "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(v["status"], "completed");
    assert_eq!(output_text(&v), "One two three four");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{v}");
    let sent = mock.message_requests().last().unwrap().body.clone();
    assert!(sent["system"].to_string().contains("Be brief."), "{sent}");

    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Hello"}]}], "stream": true}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(deltas >= 2, "the real CLI streams token deltas: {names:?}");
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, want);
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(output_text(completed), "One two three four");
}

#[tokio::test]
async fn real_cli_responses_failure_after_the_stream_began() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    // One delta, then nothing: the inactivity timeout ends the run mid-stream.
    let (s, _home) = real_server(exe, Some(mock.url("stall")), None).await;
    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "Hello", "stream": true}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"response.output_text.delta"), "{names:?}");
    assert_eq!(
        names[names.len() - 2..],
        ["error", "response.failed"],
        "{names:?}"
    );
    let failed = &events.last().unwrap().1["response"];
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"]["message"].is_string(), "{failed}");
}

#[tokio::test]
async fn real_cli_previous_response_id_continues_the_kept_process() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let (s, _home) = real_server_with(exe, Some(mock.url("ok:Noted.")), None, |c| {
        c.cli.keep_conversations = 2;
    })
    .await;
    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "Remember the word teal."}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let r1 = json_of(&text);
    let hits = s.state.backend.stats().snapshot().kept_hits_total;
    let (st, _, text) = post(
        &s,
        "/v1/responses",
        &json!({"model": "sonnet", "input": "Which word?", "previous_response_id": r1["id"]}),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(output_text(&json_of(&text)), "Noted.");
    let sent = mock.message_requests().last().unwrap().body["messages"].to_string();
    assert!(sent.contains("Remember the word teal."), "{sent}");
    assert!(sent.contains("Which word?"), "{sent}");
    assert_eq!(
        s.state.backend.stats().snapshot().kept_hits_total,
        hits + 1,
        "the follow-up continued the kept process"
    );
}
