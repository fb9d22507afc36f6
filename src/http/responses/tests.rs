//! Translation tests: what is accepted, and the 400s naming the field.

use serde_json::{json, Value};

use super::parse_request;
use crate::conversation::{Message, Role};
use crate::engine::TurnRequest;
use crate::http::errors::ApiError;

fn turn(body: Value) -> Result<TurnRequest, ApiError> {
    parse_request(body.to_string().as_bytes())
}

fn param(r: Result<TurnRequest, ApiError>) -> String {
    match r {
        Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
        Err(ApiError::PreviousResponseNotFound(_)) => "previous_response_id".into(),
        Err(ApiError::StoredNotFound { param, .. }) => param,
        Err(e) => panic!("{e:?}"),
        Ok(t) => panic!("accepted: {t:?}"),
    }
}

#[test]
fn text_format_and_reasoning_effort_become_run_options() {
    let t = turn(json!({"model": "sonnet", "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "person", "strict": true,
            "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
        "reasoning": {"effort": "minimal"}}))
    .unwrap();
    let schema: Value = serde_json::from_str(t.options.json_schema.as_deref().unwrap()).unwrap();
    assert_eq!(schema["properties"]["name"]["type"], "string");
    assert_eq!(t.options.effort, Some(crate::backend::Effort::Low));
    let t = turn(
        json!({"model": "sonnet", "input": "hi", "text": {"format": {"type": "json_object"}}}),
    )
    .unwrap();
    assert_eq!(
        t.options.json_schema.as_deref(),
        Some(r#"{"type":"object"}"#)
    );
    let t = turn(json!({"model": "sonnet", "input": "hi", "text": {"format": {"type": "text"}}}))
        .unwrap();
    assert!(t.options.is_default());
}

#[test]
fn web_search_is_the_clis_web_search_and_its_items_come_back() {
    // As Codex CLI sends it, next to a function tool; an earlier answer's
    // `web_search_call` item in the history is accepted and not shown to the model.
    let t = turn(json!({"model": "sonnet",
        "tools": [{"type": "web_search", "external_web_access": false},
                  {"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "input": [{"role": "user", "content": "q"},
                  {"type": "web_search_call", "id": "ws_1", "status": "completed",
                   "action": {"type": "search", "query": "rust"}},
                  {"role": "assistant", "content": "answer"},
                  {"role": "user", "content": "more"}]}))
    .unwrap();
    let web = t.options.web.as_ref().expect("web tools");
    assert!(web.search && !web.fetch);
    assert_eq!(web.max_searches, None);
    let names: Vec<&str> = t
        .tools
        .as_ref()
        .unwrap()
        .tools
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["f"]);
    assert_eq!(t.conversation.messages.len(), 3);
    let t =
        turn(json!({"model": "sonnet", "input": "hi", "tools": [{"type": "web_search_preview"}]}))
            .unwrap();
    assert!(t.options.web.is_some() && t.tools.is_none());
}

#[test]
fn string_and_item_input_with_instructions() {
    let t = turn(json!({"model": "sonnet", "input": "hi", "instructions": "be brief"})).unwrap();
    assert_eq!(t.conversation.system.as_deref(), Some("be brief"));
    assert_eq!(
        t.conversation.messages,
        vec![Message::text(Role::User, "hi")]
    );
    let t = turn(json!({"model": "sonnet", "input": [
        {"role": "developer", "content": "terse"},
        {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}]}
    ]}))
    .unwrap();
    let m = &t.conversation.messages;
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].role, Role::System);
    assert_eq!(m[2], Message::text(Role::Assistant, "two"));
    assert_eq!(m[3].blocks.len(), 3);
    assert!(t.stop.is_empty());
}

#[test]
fn unsupported_fields_are_400s_naming_them() {
    let base = |extra: Value| {
        let mut b = json!({"model": "sonnet", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (
            json!({"tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}),
            "tools[1].type",
        ),
        (
            json!({"tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "web_search", "user_location": {"type": "approximate"}}]}),
            "tools[0].user_location",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"text": {"format": {"type": "json_schema", "schema": {}}}}),
            "text.format.name",
        ),
        (json!({"text": {"format": {"type": "xml"}}}), "text.format"),
        (json!({"reasoning": {"effort": "none"}}), "reasoning.effort"),
        (
            json!({"reasoning": {"summary": "sometimes"}}),
            "reasoning.summary",
        ),
        (json!({"background": true}), "background"),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"prompt": {"id": "p"}}), "prompt"),
        (json!({"truncation": "auto"}), "truncation"),
        (json!({"max_output_tokens": 0}), "max_output_tokens"),
        (
            json!({"include": ["message.output_text.logprobs"]}),
            "include[0]",
        ),
        // A call's output without the call it answers.
        (
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}),
            "input",
        ),
        (
            json!({"input": [{"type": "file_search_call", "id": "w"}]}),
            "input[0].type",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input[0].content[0].file_id",
        ),
        (
            json!({"input": [{"role": "tool", "content": "x"}]}),
            "input[0].role",
        ),
        (json!({"input": []}), "input"),
        (
            json!({"previous_response_id": "resp_x"}),
            "previous_response_id",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(param(turn(base(extra.clone()))), want, "{extra}");
    }
    assert_eq!(param(turn(json!({"model": "sonnet"}))), "input");
    // Defaults clients send are fine.
    turn(base(
        json!({"tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
        "reasoning": {}, "store": false, "include": ["reasoning.encrypted_content"],
        "truncation": "disabled", "temperature": 0.2, "metadata": {"a": "b"},
        "max_output_tokens": 100, "parallel_tool_calls": true}),
    ))
    .unwrap();
}

#[test]
fn presentation_errors_name_the_input_item() {
    use super::{Responses, ResponsesRequest};
    use crate::backend::present::PresentError;
    use crate::engine::TurnError;
    use crate::http::handler::Api;
    let req: ResponsesRequest = serde_json::from_value(json!({"model": "sonnet", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}))
    .unwrap();
    Responses::translate(&req).unwrap();
    let param = |message| {
        let e = Responses::start_error(
            &req,
            TurnError::Present(PresentError::Unsupported {
                block: "tool_result",
                message,
                index: 0,
            }),
        );
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            e => panic!("{e:?}"),
        }
    };
    // The reasoning item is no message: the third message is `input[3]`.
    assert_eq!(param(2), "input[3]");
    assert_eq!(param(1), "input[2]");
}

#[test]
fn a_returned_reasoning_item_is_the_signed_thinking_block_again() {
    let t = super::parse_request(
        json!({"model": "sonnet", "input": [
            {"role": "user", "content": "2+2?"},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "encrypted_content": "ccgate-thinking-v1:{\"thinking\":\"Adding.\",\"signature\":\"sig_1\"}"},
            {"role": "assistant", "content": "4"},
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA"},
            {"role": "user", "content": "and 3+3?"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let m = &t.conversation.messages;
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(
        m[1].blocks,
        vec![crate::conversation::Block::Thinking {
            text: "Adding.".into(),
            signature: Some("sig_1".into()),
            redacted: false,
        }]
    );
}
