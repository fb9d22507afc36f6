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
//! - **Structured output** ([`TurnFold::structured`]). The answer is the model's
//!   `StructuredOutput` call: its input JSON fragments are the text, prose is not. A call
//!   the CLI rejects (schema mismatch) voids what was sent like an abandoned attempt; a
//!   result without structured output (the model answered in prose) is a failure
//!   (`structured_output_missing`), and a length-truncated one never a success.
//! - **Thinking.** The model's top-level thinking ([`Step::Thinking`]) as it streams,
//!   and its complete blocks on the [`Success`].

use crate::conversation::ToolCall;
use crate::protocol::web::MAX_WEB_CALLS;
use crate::protocol::{
    CliEvent, Success, ThinkingBlock, Usage, WebCall, WebKind, CLIENT_TOOL_PREFIX,
};
use crate::rules::{FailureFacts, GatewayCondition};

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer text for the client, in order.
    Text(String),
    /// A tool call of the client's began: its place among this answer's calls (from 0),
    /// the model's tool-use id and the client's tool name. Its argument fragments follow.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of the JSON arguments of the call at `index`.
    ToolArgs { index: usize, fragment: String },
    /// The model's thinking as it streams (before the text it leads to).
    Thinking(ThinkingStep),
    /// One of the CLI's web searches or fetches completed (after the text before it).
    Web(Box<WebCall>),
    /// The answer is complete. `text` is the whole answer (the CLI's authoritative result,
    /// cut at a stop sequence; or what was released before the cut).
    Finish(Box<Success>),
    /// The run failed: the facts go to the rules. Nothing follows.
    Fail(Box<FailureFacts>),
}

/// A piece of streamed thinking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingStep {
    /// A new thinking block.
    Start,
    Text(String),
    Signature(String),
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
    /// The client's tool calls of this answer (complete blocks), in order.
    calls: Vec<ToolCall>,
    /// Tool-use ids whose start was released, in order (their index is the position).
    started: Vec<String>,
    /// The call whose argument fragments are streaming now.
    streaming: Option<usize>,
    /// Upstream messages began (stream events are on).
    messages: u64,
    /// Usage summed over this fold's upstream messages (for continuations of held runs,
    /// whose CLI result sums the whole tool loop).
    stream_usage: Usage,
    /// This fold continues a held run: its usage is the stream's, not the result's.
    continuation: bool,
    /// At most this many client calls per answer reach the client (`parallel_tool_calls:
    /// false`: 1); the CLI's further calls are `suppressed` (the caller refuses them).
    max_calls: usize,
    /// Tool-use ids of calls the client does not see.
    suppressed: Vec<String>,
    /// Client tool calls are not the client's business (`tool_choice: none`: the caller
    /// refuses every call, and the model answers in text).
    ignore_calls: bool,
    /// The answer is the model's `StructuredOutput` call (`--json-schema`).
    structured: bool,
    /// Complete top-level thinking blocks.
    thinking: Vec<ThinkingBlock>,
    /// The CLI's web tool calls waiting for their results: id, kind, input.
    web_pending: Vec<(String, WebKind, serde_json::Value)>,
    /// The CLI's completed web calls.
    web: Vec<WebCall>,
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
            calls: Vec::new(),
            started: Vec::new(),
            streaming: None,
            messages: 0,
            stream_usage: Usage::default(),
            continuation: false,
            max_calls: usize::MAX,
            suppressed: Vec::new(),
            ignore_calls: false,
            structured: false,
            thinking: Vec::new(),
            web_pending: Vec::new(),
            web: Vec::new(),
        }
    }

    /// Lets at most one client tool call per answer through (`parallel_tool_calls: false`).
    pub fn single_call(mut self) -> TurnFold {
        self.max_calls = 1;
        self
    }

    /// Shows the client no tool call at all (`tool_choice: none`).
    pub fn without_calls(mut self) -> TurnFold {
        self.ignore_calls = true;
        self
    }

    /// Tool-use ids of the calls held back from the client (see [`TurnFold::single_call`]).
    pub fn suppressed(&self) -> &[String] {
        &self.suppressed
    }

    /// The client tool name in `name`, if it is one this fold passes on.
    fn client_tool<'a>(&mut self, id: &str, name: &'a str) -> Option<&'a str> {
        let name = name.strip_prefix(CLIENT_TOOL_PREFIX)?;
        if self.ignore_calls || self.suppressed.iter().any(|s| s == id) {
            return None;
        }
        if !self.started.iter().any(|s| s == id) && self.started.len() >= self.max_calls {
            self.suppressed.push(id.to_string());
            return None;
        }
        Some(name)
    }

    /// A fold for the rest of a held run, after the client's tool results.
    pub fn continuation(stops: Vec<String>) -> TurnFold {
        TurnFold {
            continuation: true,
            ..TurnFold::new(stops)
        }
    }

    /// A fold whose answer is structured output: see the module docs.
    pub fn structured(mut self, structured: bool) -> TurnFold {
        self.structured = structured;
        self
    }

    /// Whether the answer has ended (and how).
    pub fn ended(&self) -> Option<End> {
        match self.phase {
            Phase::Ended(e) => Some(e),
            _ => None,
        }
    }

    /// Whether any answer text or tool call has been released to the client.
    pub fn released_any(&self) -> bool {
        !self.released.is_empty() || !self.started.is_empty()
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
                self.messages += 1;
                let u = &mut self.stream_usage;
                u.input_tokens += usage.input_tokens;
                u.cache_creation_input_tokens += usage.cache_creation_input_tokens;
                u.cache_read_input_tokens += usage.cache_read_input_tokens;
                self.prompt_usage.get_or_insert(usage);
            }
            CliEvent::MessageDelta { output_tokens, .. } => {
                self.stream_usage.output_tokens += output_tokens;
            }
            CliEvent::ToolUseStart { id, name } => {
                self.streaming = None;
                if let Some(name) = self.client_tool(&id, &name) {
                    if !matches!(self.phase, Phase::Abandoned { .. }) {
                        self.start_tool(id, name.to_string(), &mut out);
                        self.streaming = Some(self.started.len() - 1);
                    }
                }
            }
            CliEvent::ToolInputDelta(fragment) => {
                if let Some(index) = self.streaming {
                    if !matches!(self.phase, Phase::Abandoned { .. }) && !fragment.is_empty() {
                        out.push(Step::ToolArgs { index, fragment });
                    }
                }
            }
            CliEvent::AssistantToolUse { id, name, input } => {
                self.streaming = None;
                if let Some(kind) = WebKind::of_tool(&name) {
                    if self.web_pending.len() + self.web.len() < MAX_WEB_CALLS {
                        self.web_pending.push((id, kind, input));
                    }
                    return out;
                }
                if let Some(name) = self.client_tool(&id, &name) {
                    if let Phase::Abandoned { .. } = self.phase {
                        // The retry's complete block: the client must not have seen a
                        // different call already.
                        if !self.started.contains(&id) && self.started.len() > self.calls.len() {
                            self.fail(
                                Box::new(FailureFacts {
                                    condition: Some(GatewayCondition::StreamAbandoned),
                                    ..FailureFacts::default()
                                }),
                                &mut out,
                            );
                            return out;
                        }
                        self.phase = Phase::Answering;
                    }
                    if !self.started.contains(&id) {
                        // Not streamed (no partial messages, or an abandoned attempt's
                        // retry): the whole call at once.
                        self.start_tool(id.clone(), name.to_string(), &mut out);
                        out.push(Step::ToolArgs {
                            index: self.started.len() - 1,
                            fragment: input.to_string(),
                        });
                    }
                    self.calls.push(ToolCall {
                        id,
                        name: name.to_string(),
                        input,
                    });
                }
            }
            CliEvent::MessageStop => {
                self.streaming = None;
                if !self.calls.is_empty() {
                    self.finish_with_calls(&mut out);
                }
            }
            CliEvent::ToolCallHeld { .. } => {
                // With stream events the answer ends at its message's end (a message's
                // later calls may still be streaming); without them this is the end.
                if self.messages == 0 && !self.calls.is_empty() {
                    self.finish_with_calls(&mut out);
                }
            }
            CliEvent::Control(_) => {}
            CliEvent::ToolOutcome(outcome) => {
                if let Some(at) = self
                    .web_pending
                    .iter()
                    .position(|(id, ..)| *id == outcome.id)
                {
                    let (id, kind, input) = self.web_pending.remove(at);
                    let call = WebCall::from_outcome(id, kind, &input, &outcome);
                    // The text before the call is complete (held-back text goes out now).
                    let (rest, _) = self.stops.finish();
                    self.release(rest, &mut out);
                    self.stops = StopFilter::new(self.stops.sequences().to_vec());
                    self.web.push(call.clone());
                    out.push(Step::Web(Box::new(call)));
                }
            }
            CliEvent::TextDelta(_) | CliEvent::AssistantText(_) if self.structured => {}
            CliEvent::StructuredDelta(json) => match self.phase {
                _ if !self.structured => {}
                Phase::Abandoned { .. } => {}
                _ => self.emit(&json, &mut out),
            },
            CliEvent::StructuredRejected => {
                if self.structured && self.answered() {
                    self.phase = Phase::Abandoned { answered: true };
                }
            }
            CliEvent::ThinkingStart => self.think(ThinkingStep::Start, &mut out),
            CliEvent::ThinkingDelta(t) => self.think(ThinkingStep::Text(t), &mut out),
            CliEvent::SignatureDelta(s) => self.think(ThinkingStep::Signature(s), &mut out),
            CliEvent::AssistantThinking(block) => {
                if self.thinking.len() < MAX_THINKING_BLOCKS {
                    self.thinking.push(block);
                }
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

    /// Releases the start of the client's tool call `id`: the text before it is complete
    /// (held-back text that might have begun a stop sequence goes out now).
    fn start_tool(&mut self, id: String, name: String, out: &mut Vec<Step>) {
        let (rest, _) = self.stops.finish();
        self.release(rest, out);
        self.stops = StopFilter::new(self.stops.sequences().to_vec());
        self.phase = Phase::Answering;
        let index = self.started.len();
        self.started.push(id.clone());
        out.push(Step::ToolStart { index, id, name });
    }

    /// The answer ends with the client's tool calls: the run waits for their results.
    fn finish_with_calls(&mut self, out: &mut Vec<Step>) {
        // The usage of this fold's upstream messages (none without stream events).
        let usage = self.stream_usage.clone();
        self.phase = Phase::Ended(End::Finished);
        out.push(Step::Finish(Box::new(Success {
            text: self.released.clone(),
            stop_reason: Some("tool_use".into()),
            usage,
            tool_calls: std::mem::take(&mut self.calls),
            thinking: std::mem::take(&mut self.thinking),
            web: std::mem::take(&mut self.web),
            ..Success::default()
        })));
    }

    /// The run ended without its final event (its driver vanished): a protocol error.
    pub fn lost(&mut self) -> Vec<Step> {
        self.push(CliEvent::Done(Err(Box::new(FailureFacts {
            condition: Some(GatewayCondition::NoResult),
            ..FailureFacts::default()
        }))))
    }

    /// Streamed thinking, except during an abandoned attempt (its retry is not streamed).
    fn think(&mut self, step: ThinkingStep, out: &mut Vec<Step>) {
        if !matches!(self.phase, Phase::Abandoned { .. }) {
            out.push(Step::Thinking(step));
        }
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
        success.thinking = std::mem::take(&mut self.thinking);
        success.web = std::mem::take(&mut self.web);
        if self.structured {
            if success.structured_output.is_none() {
                let facts = FailureFacts {
                    condition: Some(GatewayCondition::StructuredOutputMissing),
                    result_seen: true,
                    result_subtype: Some("success".into()),
                    ..FailureFacts::default()
                };
                return self.fail(Box::new(facts), out);
            }
            if let Phase::Abandoned { answered: true } = self.phase {
                // A rejected call was streamed: the accepted one must continue it.
                let text = success.text.clone();
                match text.strip_prefix(self.released.as_str()) {
                    Some(rest) => {
                        self.phase = Phase::Answering;
                        self.emit(rest, out);
                        if self.ended().is_some() {
                            return;
                        }
                    }
                    None => {
                        let facts = FailureFacts {
                            condition: Some(GatewayCondition::StreamAbandoned),
                            ..FailureFacts::default()
                        };
                        return self.fail(Box::new(facts), out);
                    }
                }
            }
        }
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
        if self.continuation && self.messages > 0 {
            success.usage = self.stream_usage.clone();
        }
        self.phase = Phase::Ended(End::Finished);
        out.push(Step::Finish(Box::new(success)));
    }

    fn failed(&mut self, facts: Box<FailureFacts>, out: &mut Vec<Step>) {
        // A cut-off JSON answer is no answer.
        if let Some(stop) = length_limit(&facts).filter(|_| !self.structured) {
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
                    web: std::mem::take(&mut self.web),
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

/// The most thinking blocks one answer keeps (the CLI's turns bound them anyway).
const MAX_THINKING_BLOCKS: usize = 256;

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
/// Released text, concatenated, equals the whole text cut at the earliest stop sequence
/// (at equal starts, the first in the list).
///
/// Linear: each stop keeps a Knuth-Morris-Pratt state (the longest prefix of it that ends
/// the text so far), so every byte of the text is looked at once per stop, and the held
/// text is never rescanned (it was quadratic: a 200 KB stop over a 200 KB answer took
/// 0.4 CPU-s). The KMP states also say where a stop may have begun without ending yet:
/// everything before the earliest such start is safe to release.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    matchers: Vec<Kmp>,
    /// Text not yet released; it begins at byte `base` of the whole text.
    held: String,
    base: usize,
    /// The earliest complete occurrence so far: (start in the whole text, stop index).
    best: Option<(usize, usize)>,
    /// A stop sequence ended the text: nothing more is released.
    stopped: bool,
    /// Bytes examined, fallbacks included (the work bound the tests check).
    steps: u64,
}

/// One stop sequence's matcher state.
#[derive(Debug)]
struct Kmp {
    /// `fail[i]`: the length of the longest proper prefix of `pattern[..=i]` that is also
    /// its suffix.
    fail: Vec<usize>,
    /// Length of the longest prefix of the pattern that ends the text so far (always
    /// shorter than the pattern: a complete match ends the stop's search).
    state: usize,
    /// This stop already occurred; a later occurrence cannot start earlier.
    found: bool,
}

impl Kmp {
    fn new(pattern: &[u8]) -> Kmp {
        let mut fail = vec![0; pattern.len()];
        let mut k = 0;
        for i in 1..pattern.len() {
            while k > 0 && pattern[i] != pattern[k] {
                k = fail[k - 1];
            }
            if pattern[i] == pattern[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Kmp {
            fail,
            state: 0,
            found: false,
        }
    }
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> StopFilter {
        let mut matchers: Vec<Kmp> = stops.iter().map(|s| Kmp::new(s.as_bytes())).collect();
        // An empty sequence occurs at the very start (the APIs refuse them; be total).
        let best = stops.iter().position(String::is_empty).map(|j| (0, j));
        for (m, s) in matchers.iter_mut().zip(&stops) {
            m.found = s.is_empty();
        }
        StopFilter {
            stops,
            matchers,
            best,
            ..StopFilter::default()
        }
    }

    /// The work done so far: bytes examined per stop sequence, fallbacks included. Linear
    /// in the text's length times the number of sequences.
    pub fn work(&self) -> u64 {
        self.steps
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
        if self.stopped {
            return (String::new(), None);
        }
        let offset = self.base + self.held.len();
        self.held.push_str(text);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            let end = offset + i + 1;
            for (j, m) in self.matchers.iter_mut().enumerate() {
                if m.found {
                    continue;
                }
                let pattern = self.stops[j].as_bytes();
                while m.state > 0 && pattern[m.state] != b {
                    m.state = m.fail[m.state - 1];
                    self.steps += 1;
                }
                if pattern[m.state] == b {
                    m.state += 1;
                }
                self.steps += 1;
                if m.state == pattern.len() {
                    m.found = true;
                    let start = end - pattern.len();
                    if self.best.is_none_or(|best| (start, j) < best) {
                        self.best = Some((start, j));
                    }
                }
            }
            if self.best.is_some() && self.decided(end) {
                break;
            }
        }
        let end = self.base + self.held.len();
        if let Some((at, j)) = self.best.filter(|_| self.decided(end)) {
            self.stopped = true;
            self.held.truncate(at - self.base);
            return (std::mem::take(&mut self.held), Some(self.stops[j].clone()));
        }
        // No stop sequence can begin before the earliest unfinished one: everything up to
        // it is safe. (A start found by a byte-wise match is a char boundary: UTF-8 lead
        // bytes never occur inside a character.)
        let safe = self.pending(end).unwrap_or(end);
        let released: String = self.held.drain(..safe - self.base).collect();
        self.base = safe;
        (released, None)
    }

    /// The earliest start of a stop sequence that has begun at or before `end` but not
    /// ended (that is, of the stops not found yet).
    fn pending(&self, end: usize) -> Option<usize> {
        self.matchers
            .iter()
            .filter(|m| !m.found && m.state > 0)
            .map(|m| end - m.state)
            .min()
    }

    /// True when the best occurrence so far is final: no unfinished stop began before it
    /// (or at the same place, listed before it).
    fn decided(&self, end: usize) -> bool {
        let Some(best) = self.best else {
            return false;
        };
        self.matchers
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.found && m.state > 0)
            .all(|(j, m)| (end - m.state, j) > best)
    }

    /// At the end of the answer: the rest of the held text, cut at a stop sequence in it
    /// (which nothing can pre-empt any more), and that sequence.
    pub fn finish(&mut self) -> (String, Option<String>) {
        if self.stopped {
            return (String::new(), None);
        }
        self.stopped = true;
        let stop = self.best.map(|(at, j)| {
            self.held.truncate(at - self.base);
            self.stops[j].clone()
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
mod tests;
