//! The turn fold (sans-IO): the CLI's events of one run in, the steps of the answer out.
//!
//! Both the streaming and the non-streaming path feed every [`CliEvent`] of a run to one
//! [`TurnFold`] and act on the [`Step`]s it returns: streaming sends each [`Step::Text`]
//! as it comes, non-streaming answers with the text of [`Step::Finish`]. What the fold
//! decides, once for both:
//! - **Abandoned attempts.** After a top-level `message_stop` with `abandoned_blocks` the
//!   deltas of that attempt are void; the CLI's retry arrives as a complete assistant text.
//!   If what the client already has is a prefix of it, only the rest is sent; otherwise
//!   the answer fails (`stream_abandoned`) rather than serve a corrupted text.
//! - **Stop sequences.** Text that could begin a stop sequence is held back until it is
//!   clear; once a sequence appears the answer finishes with `stop_sequence` and
//!   [`TurnFold::wants_stop`] tells the caller to end the CLI run.
//! - **Length-truncated answers.** A run that hit its turn or output-token limit after
//!   writing some text is a success with a length stop (`max_turns` / `max_tokens`).
//! - **Usage.** The prompt's usage from the first top-level `message_start`; an answer cut
//!   at a stop sequence reports it with 0 output tokens (the run ends before its totals).

use crate::protocol::{CliEvent, Success, Usage};
use crate::rules::{FailureFacts, GatewayCondition};

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer text for the client, in order.
    Text(String),
    /// The answer is complete. `text` is the whole answer (the CLI's authoritative result,
    /// cut at a stop sequence; or what was released before the cut).
    Finish(Box<Success>),
    /// The run failed: the facts go to the rules. Nothing follows.
    Fail(Box<FailureFacts>),
}

/// Where the answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No answer text yet.
    Waiting,
    /// Answer text has arrived.
    Answering,
    /// The current attempt was abandoned; its deltas are void until the retry's text.
    /// `answered`: text had arrived before.
    Abandoned { answered: bool },
    /// Finished, stopped at a stop sequence, or failed: nothing more.
    Ended(End),
}

/// How the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Finished,
    /// A stop sequence ended it before the CLI did.
    Stopped,
    Failed,
}

/// The fold of one run. See the module docs.
#[derive(Debug)]
pub struct TurnFold {
    phase: Phase,
    stops: StopFilter,
    /// Text released to the client (all [`Step::Text`]s so far).
    released: String,
    /// Text of the current attempt since the last complete assistant block.
    since_block: String,
    /// Complete top-level assistant text blocks, for a length-truncated answer.
    blocks: String,
    prompt_usage: Option<Usage>,
}

impl TurnFold {
    /// A fold applying `stops` (the client's stop sequences; empty for none).
    pub fn new(stops: Vec<String>) -> TurnFold {
        TurnFold {
            phase: Phase::Waiting,
            stops: StopFilter::new(stops),
            released: String::new(),
            since_block: String::new(),
            blocks: String::new(),
            prompt_usage: None,
        }
    }

    /// Whether the answer has ended (and how).
    pub fn ended(&self) -> Option<End> {
        match self.phase {
            Phase::Ended(e) => Some(e),
            _ => None,
        }
    }

    /// Whether any answer text has been released to the client.
    pub fn released_any(&self) -> bool {
        !self.released.is_empty()
    }

    /// True once a stop sequence ended the answer: the CLI run is no longer wanted.
    pub fn wants_stop(&self) -> bool {
        self.phase == Phase::Ended(End::Stopped)
    }

    /// The prompt's usage from the run's first top-level `message_start`.
    pub fn prompt_usage(&self) -> Option<&Usage> {
        self.prompt_usage.as_ref()
    }

    /// Folds one event; returns the steps it produces (often none). After the end every
    /// event is ignored.
    pub fn push(&mut self, event: CliEvent) -> Vec<Step> {
        let mut out = Vec::new();
        if self.ended().is_some() {
            return out;
        }
        match event {
            CliEvent::Started { .. } => {}
            CliEvent::MessageStart(usage) => {
                self.prompt_usage.get_or_insert(usage);
            }
            CliEvent::TextDelta(text) => match self.phase {
                Phase::Abandoned { .. } => {}
                _ => {
                    self.phase = Phase::Answering;
                    self.since_block.push_str(&text);
                    self.emit(&text, &mut out);
                }
            },
            CliEvent::Abandoned => {
                let answered = !matches!(self.phase, Phase::Waiting);
                self.phase = Phase::Abandoned { answered };
            }
            CliEvent::AssistantText(full) => {
                let sent = std::mem::take(&mut self.since_block);
                // The CLI's own "resume" turns continue the text where it was cut.
                self.blocks.push_str(&full);
                if let Phase::Abandoned { .. } = self.phase {
                    self.phase = Phase::Answering;
                    match full.strip_prefix(sent.as_str()) {
                        Some(rest) => self.emit(rest, &mut out),
                        None => self.fail(
                            Box::new(FailureFacts {
                                condition: Some(GatewayCondition::StreamAbandoned),
                                ..FailureFacts::default()
                            }),
                            &mut out,
                        ),
                    }
                }
            }
            CliEvent::Done(Ok(success)) => self.succeed(success, &mut out),
            CliEvent::Done(Err(facts)) => self.failed(facts, &mut out),
        }
        out
    }

    /// The run ended without its final event (its driver vanished): a protocol error.
    pub fn lost(&mut self) -> Vec<Step> {
        self.push(CliEvent::Done(Err(Box::new(FailureFacts {
            condition: Some(GatewayCondition::NoResult),
            ..FailureFacts::default()
        }))))
    }

    fn answered(&self) -> bool {
        matches!(
            self.phase,
            Phase::Answering | Phase::Abandoned { answered: true }
        )
    }

    /// Sends `text` through the stop filter.
    fn emit(&mut self, text: &str, out: &mut Vec<Step>) {
        if text.is_empty() {
            return;
        }
        self.phase = Phase::Answering;
        let (release, stop) = self.stops.push(text);
        self.release(release, out);
        if let Some(stop) = stop {
            let usage = Usage {
                output_tokens: 0,
                ..self.prompt_usage.clone().unwrap_or_default()
            };
            self.phase = Phase::Ended(End::Stopped);
            out.push(Step::Finish(Box::new(Success {
                text: self.released.clone(),
                stop_reason: Some("stop_sequence".into()),
                stop_sequence: Some(stop),
                usage,
                ..Success::default()
            })));
        }
    }

    fn release(&mut self, text: String, out: &mut Vec<Step>) {
        if !text.is_empty() {
            self.released.push_str(&text);
            out.push(Step::Text(text));
        }
    }

    fn succeed(&mut self, mut success: Success, out: &mut Vec<Step>) {
        if !self.answered() {
            // Nothing was streamed (no partial messages): the whole text is the answer.
            let text = success.text.clone();
            self.emit(&text, out);
            if self.ended().is_some() {
                return;
            }
        }
        let (rest, held_stop) = self.stops.finish();
        self.release(rest, out);
        // The non-streaming answer is the CLI's own final text, cut at the earliest stop
        // sequence in it; a stream reports the sequence its held text ended at.
        let cut = earliest_stop(&success.text, self.stops.sequences());
        if let Some((at, _)) = &cut {
            success.text.truncate(*at);
        }
        if let Some(stop) = held_stop.or(cut.map(|(_, s)| s)) {
            success.stop_reason = Some("stop_sequence".into());
            success.stop_sequence = Some(stop);
        }
        self.phase = Phase::Ended(End::Finished);
        out.push(Step::Finish(Box::new(success)));
    }

    fn failed(&mut self, facts: Box<FailureFacts>, out: &mut Vec<Step>) {
        if let Some(stop) = length_limit(&facts) {
            let text = if self.blocks.trim().is_empty() {
                self.released.clone()
            } else {
                self.blocks.clone()
            };
            if !text.trim().is_empty() || self.answered() {
                if !self.answered() {
                    self.emit(&text, out);
                    if self.ended().is_some() {
                        return;
                    }
                }
                let (rest, _) = self.stops.finish();
                self.release(rest, out);
                self.phase = Phase::Ended(End::Finished);
                out.push(Step::Finish(Box::new(Success {
                    text,
                    stop_reason: Some(stop.into()),
                    ..Success::default()
                })));
                return;
            }
        }
        self.fail(facts, out);
    }

    fn fail(&mut self, facts: Box<FailureFacts>, out: &mut Vec<Step>) {
        self.phase = Phase::Ended(End::Failed);
        out.push(Step::Fail(facts));
    }
}

/// A length limit the CLI hit: its turn limit (`error_max_turns`) or its output token
/// limit (`max_output_tokens`, after the CLI's own "resume" attempts). The APIs report a
/// truncated answer as a success with a length stop.
fn length_limit(facts: &FailureFacts) -> Option<&'static str> {
    if facts.result_subtype.as_deref() == Some("error_max_turns") {
        Some("max_turns")
    } else if facts.assistant_error.as_deref() == Some("max_output_tokens")
        || facts.api_error.as_deref() == Some("max_output_tokens")
    {
        Some("max_tokens")
    } else {
        None
    }
}

/// Applies stop sequences to text arriving in pieces: releases what cannot be part of a
/// stop sequence, holds back the rest, and reports the sequence once it is certain.
/// Released text, concatenated, equals the whole text cut at the earliest stop sequence.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> StopFilter {
        StopFilter {
            stops,
            held: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop sequences this filter applies.
    pub fn sequences(&self) -> &[String] {
        &self.stops
    }

    /// Feeds a piece of text: (text safe to release, the stop sequence if one appeared;
    /// then the released text ends just before it and nothing more may follow).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        if self.stops.is_empty() {
            return (text.to_string(), None);
        }
        self.held.push_str(text);
        // The earliest place where a stop sequence may have begun but not yet ended. A
        // complete match after it is not final: the unfinished one could end up earlier.
        let pending = self.held.char_indices().map(|(i, _)| i).find(|&i| {
            let tail = &self.held[i..];
            self.stops
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
        });
        if let Some((at, stop)) = earliest_stop(&self.held, &self.stops) {
            if pending.is_none_or(|p| at <= p) {
                self.held.truncate(at);
                return (std::mem::take(&mut self.held), Some(stop));
            }
        }
        // No stop sequence can begin before `pending`: everything up to it is safe.
        let safe = pending.unwrap_or(self.held.len());
        (self.held.drain(..safe).collect(), None)
    }

    /// At the end of the answer: the rest of the held text, cut at a stop sequence in it
    /// (which nothing can pre-empt any more), and that sequence.
    pub fn finish(&mut self) -> (String, Option<String>) {
        let stop = earliest_stop(&self.held, &self.stops).map(|(at, stop)| {
            self.held.truncate(at);
            stop
        });
        (std::mem::take(&mut self.held), stop)
    }
}

/// The earliest occurrence of any stop sequence in `text`: (byte offset, the sequence).
pub fn earliest_stop(text: &str, stops: &[String]) -> Option<(usize, String)> {
    stops
        .iter()
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at)
        .map(|(at, s)| (at, s.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RunAccumulator, RunEnd};

    const SUCCESS_PARTIAL: &str = include_str!("../tests/fixtures/success_partial.jsonl");
    const ABANDONED: &str = include_str!("../tests/fixtures/abandoned.jsonl");
    const MAX_TURNS: &str = include_str!("../tests/fixtures/max_turns.jsonl");

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
}
