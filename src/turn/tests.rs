//! Unit tests of the turn fold, driven by event fixtures.
use super::*;
use crate::protocol::{RunAccumulator, RunEnd};

const SUCCESS_PARTIAL: &str = include_str!("../../tests/fixtures/success_partial.jsonl");
const ABANDONED: &str = include_str!("../../tests/fixtures/abandoned.jsonl");
const MAX_TURNS: &str = include_str!("../../tests/fixtures/max_turns.jsonl");
/// The real CLI 2.1.332's WebSearch (`--tools WebSearch`, partial messages) against a mock
/// that emulates the API's server-side search and echoes the tool result.
const WEB_SEARCH: &str = include_str!("../../tests/fixtures/web_search.jsonl");

/// The events of a captured run, ending with its conclusion (exit 0).
fn events_of(capture: &str) -> Vec<CliEvent> {
    let mut acc = RunAccumulator::new();
    let mut events: Vec<CliEvent> = capture.lines().flat_map(|l| acc.push_line(l)).collect();
    events.push(CliEvent::Done(acc.conclude(RunEnd::default())));
    events
}

fn fold(stops: &[&str], events: Vec<CliEvent>) -> (Vec<Step>, TurnFold) {
    let mut f = TurnFold::new(stops.iter().map(|s| s.to_string()).collect());
    let steps = events.into_iter().flat_map(|e| f.push(e)).collect();
    (steps, f)
}

fn texts(steps: &[Step]) -> String {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn finish(steps: &[Step]) -> &Success {
    match steps.last() {
        Some(Step::Finish(s)) => s,
        other => panic!("expected a finish, got {other:?}"),
    }
}

fn ok(text: &str) -> CliEvent {
    CliEvent::Done(Ok(Success {
        text: text.into(),
        stop_reason: Some("end_turn".into()),
        ..Success::default()
    }))
}

fn delta(t: &str) -> CliEvent {
    CliEvent::TextDelta(t.into())
}

#[test]
fn a_streamed_capture_yields_its_deltas_then_the_result() {
    // The trimmed fixture keeps one delta of the answer: a stream sends the deltas as
    // the CLI emitted them, the complete answer is the result's text.
    let (steps, f) = fold(&[], events_of(SUCCESS_PARTIAL));
    assert_eq!(texts(&steps), "Hello");
    assert_eq!(finish(&steps).text, "Hello from the mock API.");
    assert_eq!(f.ended(), Some(End::Finished));
    assert_eq!(f.prompt_usage().map(|u| u.input_tokens), Some(12));
}

#[test]
fn an_abandoned_attempt_sends_only_what_the_retry_adds() {
    let (steps, _) = fold(&[], events_of(ABANDONED));
    assert_eq!(texts(&steps), "Hello from the mock API.");
    assert_eq!(
        steps.iter().filter(|s| matches!(s, Step::Text(_))).count(),
        2,
        "the streamed prefix, then the rest of the retry: {steps:?}"
    );
}

#[test]
fn a_retry_that_contradicts_the_streamed_text_fails_the_answer() {
    let (steps, f) = fold(
        &[],
        vec![
            delta("Hello"),
            CliEvent::Abandoned,
            delta("ignored"),
            CliEvent::AssistantText("Goodbye".into()),
            ok("Goodbye"),
        ],
    );
    assert_eq!(texts(&steps), "Hello");
    match steps.last() {
        Some(Step::Fail(f)) => {
            assert_eq!(f.condition, Some(GatewayCondition::StreamAbandoned))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.ended(), Some(End::Failed));
}

#[test]
fn without_deltas_the_whole_result_is_the_text() {
    let (steps, _) = fold(&[], vec![ok("all at once")]);
    assert_eq!(
        steps,
        vec![
            Step::Text("all at once".into()),
            Step::Finish(Box::new(Success {
                text: "all at once".into(),
                stop_reason: Some("end_turn".into()),
                ..Success::default()
            }))
        ]
    );
}

#[test]
fn a_stop_sequence_across_deltas_ends_the_answer_and_asks_to_stop_the_run() {
    let usage = Usage {
        input_tokens: 7,
        output_tokens: 3,
        ..Usage::default()
    };
    let (steps, f) = fold(
        &["Observation:"],
        vec![
            CliEvent::MessageStart(usage),
            delta("Thought: look\nObserv"),
            delta("ation: 42"),
            ok("never used"),
        ],
    );
    assert_eq!(texts(&steps), "Thought: look\n");
    let s = finish(&steps);
    assert_eq!(s.text, "Thought: look\n");
    assert_eq!(s.stop_sequence.as_deref(), Some("Observation:"));
    assert_eq!(s.stop_reason.as_deref(), Some("stop_sequence"));
    assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (7, 0));
    assert!(f.wants_stop());
}

#[test]
fn held_text_is_released_at_the_end_and_the_result_is_cut_at_a_late_stop() {
    let (steps, _) = fold(&["STOP"], vec![delta("abc ST"), ok("abc ST")]);
    assert_eq!(texts(&steps), "abc ST");
    assert_eq!(finish(&steps).stop_sequence, None);
    let (steps, _) = fold(&["STOP"], vec![ok("one STOP two")]);
    assert_eq!(texts(&steps), "one ");
    assert_eq!(finish(&steps).text, "one ");
}

#[test]
fn a_length_limit_after_some_text_is_a_truncated_success() {
    let max_tokens = || {
        CliEvent::Done(Err(Box::new(FailureFacts {
            assistant_error: Some("max_output_tokens".into()),
            ..FailureFacts::default()
        })))
    };
    let (steps, _) = fold(&[], vec![delta("part"), max_tokens()]);
    assert_eq!(texts(&steps), "part");
    assert_eq!(finish(&steps).stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(finish(&steps).text, "part");
    let (steps, _) = fold(&[], vec![max_tokens()]);
    assert!(matches!(steps.as_slice(), [Step::Fail(_)]), "{steps:?}");
}

#[test]
fn a_turn_limit_with_complete_blocks_but_no_deltas_answers_with_the_blocks() {
    let mut events = events_of(MAX_TURNS);
    events.insert(events.len() - 1, CliEvent::AssistantText("so far".into()));
    let (steps, _) = fold(&[], events);
    assert_eq!(texts(&steps), "so far");
    assert_eq!(finish(&steps).stop_reason.as_deref(), Some("max_turns"));
}

#[test]
fn nothing_follows_the_end_and_a_lost_run_fails() {
    let mut f = TurnFold::new(vec![]);
    assert_eq!(f.push(ok("x")).len(), 2);
    assert!(f.push(delta("late")).is_empty());
    assert!(f.lost().is_empty());
    let mut f = TurnFold::new(vec![]);
    match f.lost().as_slice() {
        [Step::Fail(facts)] => assert_eq!(facts.condition, Some(GatewayCondition::NoResult)),
        other => panic!("{other:?}"),
    }
}

fn structured_ok(json: &str) -> CliEvent {
    CliEvent::Done(Ok(Success {
        text: json.into(),
        structured_output: Some(serde_json::from_str(json).unwrap()),
        ..Success::default()
    }))
}

fn fold_structured(events: Vec<CliEvent>) -> Vec<Step> {
    let mut f = TurnFold::new(vec![]).structured(true);
    events.into_iter().flat_map(|e| f.push(e)).collect()
}

#[test]
fn structured_output_streams_the_calls_json_and_ignores_prose() {
    let steps = fold_structured(vec![
        delta("Here you go: "),
        CliEvent::AssistantText("Here you go: ".into()),
        CliEvent::StructuredDelta("{\"a\": ".into()),
        CliEvent::StructuredDelta("1}".into()),
        structured_ok("{\"a\":1}"),
    ]);
    assert_eq!(texts(&steps), "{\"a\": 1}");
    assert_eq!(finish(&steps).text, "{\"a\":1}");
    // Without partial messages the result's JSON is the whole text.
    let steps = fold_structured(vec![structured_ok("{\"a\":1}")]);
    assert_eq!(texts(&steps), "{\"a\":1}");
}

#[test]
fn a_prose_result_fails_and_a_truncated_one_is_no_success() {
    let steps = fold_structured(vec![delta("prose"), ok("prose")]);
    match steps.as_slice() {
        [Step::Fail(f)] => {
            assert_eq!(f.condition, Some(GatewayCondition::StructuredOutputMissing))
        }
        other => panic!("{other:?}"),
    }
    let max_tokens = CliEvent::Done(Err(Box::new(FailureFacts {
        assistant_error: Some("max_output_tokens".into()),
        ..FailureFacts::default()
    })));
    let steps = fold_structured(vec![CliEvent::StructuredDelta("{\"a\"".into()), max_tokens]);
    assert!(matches!(steps.last(), Some(Step::Fail(_))), "{steps:?}");
}

#[test]
fn a_rejected_call_must_be_continued_by_the_accepted_one() {
    // The retry's JSON starts with what was sent: only the rest follows.
    let steps = fold_structured(vec![
        CliEvent::StructuredDelta("{\"a\":".into()),
        CliEvent::StructuredRejected,
        CliEvent::StructuredDelta("ignored".into()),
        structured_ok("{\"a\":1}"),
    ]);
    assert_eq!(texts(&steps), "{\"a\":1}");
    // Otherwise the answer fails rather than send two JSON documents.
    let steps = fold_structured(vec![
        CliEvent::StructuredDelta("{\"b\": 2".into()),
        CliEvent::StructuredRejected,
        structured_ok("{\"a\":1}"),
    ]);
    match steps.last() {
        Some(Step::Fail(f)) => assert_eq!(f.condition, Some(GatewayCondition::StreamAbandoned)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn thinking_streams_as_steps_and_its_blocks_land_on_the_success() {
    let block = ThinkingBlock {
        thinking: "hm".into(),
        signature: "sig".into(),
    };
    let (steps, _) = fold(
        &[],
        vec![
            CliEvent::ThinkingStart,
            CliEvent::ThinkingDelta("hm".into()),
            CliEvent::SignatureDelta("sig".into()),
            CliEvent::AssistantThinking(block.clone()),
            delta("4"),
            ok("4"),
        ],
    );
    assert_eq!(
        steps[..3],
        [
            Step::Thinking(ThinkingStep::Start),
            Step::Thinking(ThinkingStep::Text("hm".into())),
            Step::Thinking(ThinkingStep::Signature("sig".into()))
        ]
    );
    assert_eq!(finish(&steps).thinking, vec![block]);
}

/// Pushes `text` in pieces of `piece` bytes (at char boundaries); returns the released
/// text, the stop, and the filter.
fn filter_in_pieces(
    stops: &[String],
    text: &str,
    piece: usize,
) -> (String, Option<String>, StopFilter) {
    let mut f = StopFilter::new(stops.to_vec());
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = piece.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        let (released, stop) = f.push(head);
        out.push_str(&released);
        if stop.is_some() {
            return (out, stop, f);
        }
    }
    let (released, stop) = f.finish();
    out.push_str(&released);
    (out, stop, f)
}

#[test]
fn a_long_stop_sequence_over_a_long_answer_is_linear_work() {
    // The worst case of the old rescan: an answer of `a`s and a stop of `a`s ending in
    // `b`, so every held position is a long partial match. 200 KB each.
    let n = 200_000;
    let text = "a".repeat(n);
    let stop = format!("{}b", "a".repeat(n - 1));
    for piece in [7, 4096, n] {
        let started = std::time::Instant::now();
        let (out, found, f) = filter_in_pieces(std::slice::from_ref(&stop), &text, piece);
        assert_eq!(out, text);
        assert_eq!(found, None);
        // KMP: at most two steps per byte (one advance, amortized one fallback).
        assert!(
            f.work() <= 2 * n as u64 + 16,
            "piece {piece}: {} steps",
            f.work()
        );
        // Loose enough for a debug build on a busy CI machine; the quadratic scan took
        // minutes here.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "piece {piece}: {:?}",
            started.elapsed()
        );
    }
    // And when it does occur at the end, it is found there.
    let text = format!("x{stop}y");
    let (out, found, _) = filter_in_pieces(std::slice::from_ref(&stop), &text, 1000);
    assert_eq!(out, "x");
    assert_eq!(found.as_deref(), Some(stop.as_str()));
}

#[test]
fn the_earliest_stop_wins_and_ties_go_to_the_first_listed() {
    let stops = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // "bcd" is complete first, but "abcdef" began earlier and completes.
    let (out, stop, _) = filter_in_pieces(&stops(&["bcd", "abcdef"]), "xabcdefg", 1);
    assert_eq!((out.as_str(), stop.as_deref()), ("x", Some("abcdef")));
    // ... or does not, and "bcd" stands.
    let (out, stop, _) = filter_in_pieces(&stops(&["bcd", "abcdef"]), "xabcdzz", 1);
    assert_eq!((out.as_str(), stop.as_deref()), ("xa", Some("bcd")));
    // Same start: the first listed, however the text is cut.
    for piece in [1, 2, 100] {
        let (out, stop, _) = filter_in_pieces(&stops(&["abc", "ab"]), "zabcd", piece);
        assert_eq!(
            (out.as_str(), stop.as_deref()),
            ("z", Some("abc")),
            "{piece}"
        );
        let (out, stop, _) = filter_in_pieces(&stops(&["ab", "abc"]), "zabcd", piece);
        assert_eq!(
            (out.as_str(), stop.as_deref()),
            ("z", Some("ab")),
            "{piece}"
        );
    }
    // Multi-byte text and stops: held text is released at char boundaries.
    let (out, stop, _) = filter_in_pieces(&stops(&["é✓é"]), "aé✓bé✓éc", 1);
    assert_eq!((out.as_str(), stop.as_deref()), ("aé✓b", Some("é✓é")));
    // A partial match at the end is released by finish.
    let (out, stop, _) = filter_in_pieces(&stops(&["STOP"]), "a ST", 2);
    assert_eq!((out.as_str(), stop), ("a ST", None));
}

#[test]
fn a_web_search_of_the_cli_is_a_step_between_the_texts_and_on_the_answer() {
    let (steps, _) = fold(&[], events_of(WEB_SEARCH));
    let at = steps
        .iter()
        .position(|s| matches!(s, Step::Web(_)))
        .expect("a web step");
    let Step::Web(call) = &steps[at] else {
        unreachable!()
    };
    assert_eq!(call.kind, WebKind::Search);
    assert_eq!(call.query, "rust");
    assert_eq!(call.searches, 1);
    let urls: Vec<&str> = call.sources.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://www.rust-lang.org/",
            "https://doc.rust-lang.org/book/"
        ]
    );
    // The answer's text comes after the search (it reports the results).
    assert!(!steps[..at].iter().any(|s| matches!(s, Step::Text(_))));
    assert!(texts(&steps[at..]).starts_with("seen: "));
    let done = finish(&steps);
    assert_eq!(done.web.len(), 1);
    assert!(done.tool_calls.is_empty(), "WebSearch is not a client call");
}
