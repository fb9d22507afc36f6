//! Unit tests of the stream-json parser and the run accumulator, driven by real lines.
use super::*;

/// Real lines from the spec's `cli-examples.jsonl`, trimmed of irrelevant fields.
const NOT_LOGGED_IN: &str = include_str!("../../tests/fixtures/not_logged_in.jsonl");
const SUCCESS_PARTIAL: &str = include_str!("../../tests/fixtures/success_partial.jsonl");
const AUTH401: &str = include_str!("../../tests/fixtures/auth401.jsonl");
const ABANDONED: &str = include_str!("../../tests/fixtures/abandoned.jsonl");
const MAX_TURNS: &str = include_str!("../../tests/fixtures/max_turns.jsonl");

fn exited(code: i32) -> RunEnd {
    RunEnd {
        exit_code: Some(code),
        ..RunEnd::default()
    }
}

fn run(lines: &str) -> (Vec<CliEvent>, RunAccumulator) {
    let mut acc = RunAccumulator::new();
    let mut events = Vec::new();
    for l in lines.lines() {
        events.extend(acc.push_line(l));
    }
    (events, acc)
}

#[test]
fn not_logged_in_is_a_failure_with_structured_fields() {
    let (events, acc) = run(NOT_LOGGED_IN);
    assert!(matches!(events.first(), Some(CliEvent::Started { .. })));
    let facts = acc.conclude(exited(1)).unwrap_err();
    assert_eq!(
        facts.assistant_error.as_deref(),
        Some("authentication_failed")
    );
    assert_eq!(
        facts.assistant_error_text.as_deref(),
        Some("Not logged in · Please run /login")
    );
    assert!(facts.result_seen && facts.result_is_error);
    assert_eq!(facts.result_subtype.as_deref(), Some("success"));
    assert_eq!(facts.terminal_reason.as_deref(), Some("api_error"));
    assert_eq!(facts.api_error_status, None);
    assert_eq!(facts.condition, None);
    assert_eq!(facts.exit_code, Some(1));
}

#[test]
fn auth401_collects_retries_and_status() {
    let (_, acc) = run(AUTH401);
    let facts = acc.conclude(exited(1)).unwrap_err();
    assert_eq!(facts.retry_statuses, vec![401]);
    assert_eq!(
        facts.retry_errors,
        vec!["authentication_failed".to_string()]
    );
    assert_eq!(facts.api_error_status, Some(401));
    assert_eq!(
        facts.api_error_type.as_deref(),
        Some("authentication_error")
    );
}

#[test]
fn success_with_partial_messages() {
    let (events, acc) = run(SUCCESS_PARTIAL);
    assert!(events.contains(&CliEvent::TextDelta("Hello".into())));
    assert!(events.contains(&CliEvent::AssistantText("Hello from the mock API.".into())));
    let ok = acc.conclude(exited(0)).unwrap();
    assert_eq!(ok.text, "Hello from the mock API.");
    assert_eq!(ok.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(ok.usage.input_tokens, 12);
    assert_eq!(ok.usage.output_tokens, 6);
    assert_eq!(ok.model.as_deref(), Some("claude-opus-5-5"));
}

#[test]
fn abandoned_blocks_emit_abandoned() {
    let (events, _) = run(ABANDONED);
    assert!(events.contains(&CliEvent::Abandoned));
}

#[test]
fn max_turns_has_no_result_text_but_errors() {
    let (_, acc) = run(MAX_TURNS);
    let facts = acc.conclude(exited(1)).unwrap_err();
    assert_eq!(facts.result_subtype.as_deref(), Some("error_max_turns"));
    assert_eq!(facts.result_text, None);
    assert!(!facts.result_errors.is_empty());
}

#[test]
fn exit0_without_result_is_no_result_and_bad_json_is_flagged() {
    let mut acc = RunAccumulator::new();
    assert!(acc.push_line("[SandboxDebug] hello").is_empty());
    assert!(acc.push_line("").is_empty());
    let f = acc.clone().conclude(exited(0)).unwrap_err();
    assert_eq!(f.condition, Some(GatewayCondition::NoResult));
    acc.push_line("{\"type\":\"assistant\",\"mess");
    let f = acc.conclude(exited(0)).unwrap_err();
    assert_eq!(f.condition, Some(GatewayCondition::BadJson));
}

#[test]
fn only_a_rejected_rate_limit_event_sets_the_reset_time() {
    let mut acc = RunAccumulator::new();
    acc.push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1771390800}}"#);
    let f = acc.clone().conclude(exited(1)).unwrap_err();
    assert_eq!(f.rate_limit_resets_at, None);
    acc.push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1771390800000}}"#);
    let f = acc.conclude(exited(1)).unwrap_err();
    assert_eq!(
        f.rate_limit_resets_at,
        Some(1_771_390_800),
        "milliseconds converted"
    );
}

#[test]
fn rate_limit_warning_is_not_a_failure_and_subagent_deltas_are_skipped() {
    let mut acc = RunAccumulator::new();
    let ev = acc
        .push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning"}}"#);
    assert!(ev.is_empty());
    let ev = acc.push_line(r#"{"parent_tool_use_id":"toolu_1","type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"sub"}}}"#);
    assert!(ev.is_empty());
    acc.push_line(r#"{"is_error":false,"result":"ok","type":"result","subtype":"success"}"#);
    assert_eq!(acc.conclude(exited(0)).unwrap().text, "ok");
}

#[test]
fn structured_output_calls_thinking_and_rejections_are_events() {
    let mut acc = RunAccumulator::new();
    let lines = [
        r#"{"type":"stream_event","event":{"type":"message_start","message":{"usage":{"input_tokens":3}}},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}},"parent_tool_use_id":null}"#,
        r#"{"type":"assistant","message":{"model":"m","content":[{"type":"thinking","thinking":"hm","signature":"sig"}]},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"StructuredOutput","input":{}}},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}},"parent_tool_use_id":null}"#,
        r#"{"type":"assistant","message":{"model":"m","content":[{"type":"tool_use","id":"toolu_1","name":"StructuredOutput","input":{"a":1}}]},"parent_tool_use_id":null}"#,
        r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"bad","is_error":true,"tool_use_id":"toolu_1"}]},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"mcp__cg__f","input":{}}},"parent_tool_use_id":null}"#,
        r#"{"type":"stream_event","event":{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}},"parent_tool_use_id":null}"#,
        r#"{"type":"result","subtype":"success","is_error":false,"result":"{\"a\":1}","structured_output":{"a":1},"usage":{"output_tokens":5,"output_tokens_details":{"thinking_tokens":2}}}"#,
    ];
    let events: Vec<CliEvent> = lines.iter().flat_map(|l| acc.push_line(l)).collect();
    assert_eq!(
        events[1..],
        [
            CliEvent::ThinkingStart,
            CliEvent::ThinkingDelta("hm".into()),
            CliEvent::SignatureDelta("sig".into()),
            CliEvent::AssistantThinking(ThinkingBlock {
                thinking: "hm".into(),
                signature: "sig".into()
            }),
            CliEvent::StructuredDelta("{\"a\":1}".into()),
            CliEvent::StructuredRejected,
            CliEvent::ToolUseStart {
                id: "toolu_2".into(),
                name: "mcp__cg__f".into()
            },
            CliEvent::ToolInputDelta("{}".into()),
        ],
        "another tool's input is a tool call's, not structured output"
    );
    let ok = acc.conclude(exited(0)).unwrap();
    assert_eq!(ok.structured_output, Some(serde_json::json!({"a": 1})));
    assert_eq!(ok.usage.thinking_tokens, 2);
}

#[test]
fn a_sub_agents_abandoned_attempt_does_not_abandon_the_answer() {
    let mut acc = RunAccumulator::new();
    let sub = r#"{"type":"stream_event","parent_tool_use_id":"toolu_1","abandoned_blocks":[0],"event":{"type":"message_stop"}}"#;
    assert!(acc.push_line(sub).is_empty());
    let top = r#"{"type":"stream_event","parent_tool_use_id":null,"abandoned_blocks":[0],"event":{"type":"message_stop"}}"#;
    assert_eq!(acc.push_line(top), vec![CliEvent::Abandoned]);
}

#[test]
fn a_watchdog_after_a_success_result_changes_nothing_but_an_oversized_line_voids_it() {
    let mut acc = RunAccumulator::new();
    acc.push_line(r#"{"is_error":false,"result":"done","type":"result","subtype":"success"}"#);
    let late = RunEnd {
        timeout: Some(TimeoutKind::Inactivity),
        ..exited(0)
    };
    assert_eq!(acc.clone().conclude(late).unwrap().text, "done");
    let lost = RunEnd {
        condition: Some(GatewayCondition::BadJson),
        stderr_tail: "tail".into(),
        ..exited(0)
    };
    let f = acc.conclude(lost).unwrap_err();
    assert_eq!(f.condition, Some(GatewayCondition::BadJson));
    assert_eq!(f.result_subtype.as_deref(), Some("success"));
    assert_eq!(f.stderr_tail, "tail", "the stderr tail is kept");
}

#[test]
fn rate_limit_events_report_the_plans_windows_on_the_success() {
    // The shape CLI 2.1.332 writes for the unified rate-limit headers (tests/it/real_windows.rs).
    let mut acc = RunAccumulator::new();
    acc.push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","unifiedWindows":{"seven_day":{"utilization":0.1,"resetsAt":1796674549},"five_hour":{"utilization":0.42,"resetsAt":1796418949000}},"overageStatus":"allowed","overageInUse":true},"session_id":"s"}"#);
    acc.push_line(
        r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s"}"#,
    );
    let s = acc.conclude(RunEnd::default()).unwrap();
    let w = s.plan_windows.expect("windows");
    let names: Vec<&str> = w.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["five_hour", "seven_day"]);
    assert_eq!(w.windows[0].utilization, 0.42);
    // Milliseconds are converted to seconds.
    assert_eq!(w.windows[0].resets_at, Some(1_796_418_949));
    assert_eq!(w.extra_usage_in_use, Some(true));
    // One `rateLimitType` window (no unifiedWindows); odd names and values are dropped.
    let mut acc = RunAccumulator::new();
    acc.push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","rateLimitType":"seven_day_opus","utilization":1.7,"resetsAt":5,"isUsingOverage":false}}"#);
    acc.push_line(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","unifiedWindows":{"bad name":{"utilization":0.5},"x":{"utilization":"high"}}}}"#);
    acc.push_line(r#"{"type":"result","subtype":"success","is_error":false,"result":"ok"}"#);
    let w = acc
        .conclude(RunEnd::default())
        .unwrap()
        .plan_windows
        .unwrap();
    assert_eq!(w.windows.len(), 1, "{w:?}");
    assert_eq!(
        (w.windows[0].name.as_str(), w.windows[0].utilization),
        ("seven_day_opus", 1.0)
    );
    assert_eq!(w.extra_usage_in_use, Some(false));
    // No event: no windows.
    let mut acc = RunAccumulator::new();
    acc.push_line(r#"{"type":"result","subtype":"success","is_error":false,"result":"ok"}"#);
    assert_eq!(acc.conclude(RunEnd::default()).unwrap().plan_windows, None);
}
