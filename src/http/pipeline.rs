//! The request pipeline shared by both APIs: health gate → CLI run → success, or failure
//! facts → rules verdict (→ health update). Also the per-request log line and metrics,
//! written once when the request ends (including client disconnects mid-stream).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::response::Response;

use crate::backend::{CliEvent, CliRequest, CliRun, Success};
use crate::health::Source;
use crate::http::errors::{ApiError, ErrorContext, RenderedError};
use crate::rules::{FailureFacts, Flavour, GatewayCondition, Rules};
use crate::state::AppState;

/// One turn to run, already translated from either API.
#[derive(Debug, Clone)]
pub struct Turn {
    pub prompt: String,
    /// The client's stop sequences (OpenAI `stop`, Anthropic `stop_sequences`), applied by
    /// the gateway to the CLI's answer.
    pub stop: Vec<String>,
    /// Anthropic image blocks sent with the prompt (the prompt marks their places).
    pub attachments: Vec<serde_json::Value>,
    pub system: Option<String>,
    pub model: String,
}

/// Outcome fields of the per-request log line, filled as the request proceeds.
#[derive(Debug, Default)]
struct Outcome {
    status: u16,
    kind: String,
    cli_exit: Option<i32>,
    cli_signal: Option<i32>,
    finished: bool,
}

/// Per-request context: one rules snapshot for the whole request, ids, timing.
pub struct RequestCx {
    pub state: AppState,
    pub rules: Arc<Rules>,
    pub request_id: String,
    pub flavour: Flavour,
    pub endpoint: &'static str,
    pub model: Option<String>,
    started: Instant,
    outcome: Mutex<Outcome>,
}

impl RequestCx {
    pub fn new(
        state: AppState,
        request_id: String,
        flavour: Flavour,
        endpoint: &'static str,
    ) -> RequestCx {
        let rules = state.rules.load_full();
        RequestCx {
            state,
            rules,
            request_id,
            flavour,
            endpoint,
            model: None,
            started: Instant::now(),
            outcome: Mutex::new(Outcome::default()),
        }
    }

    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders an error for this request's flavour and records it as the outcome.
    pub fn render_error(&self, err: &ApiError) -> RenderedError {
        let health = self.state.health.snapshot();
        let cx = ErrorContext {
            flavour: self.flavour,
            request_id: &self.request_id,
            model: self.model.as_deref(),
            rules: &self.rules,
            health: &health,
        };
        let rendered = err.render(&cx);
        let mut o = self.outcome();
        o.status = rendered.status.as_u16();
        o.kind = err.kind().to_string();
        rendered
    }

    pub fn error_response(&self, err: ApiError) -> Response {
        use axum::response::IntoResponse;
        self.render_error(&err).into_response()
    }

    /// Records a successful answer (status 200).
    pub fn record_ok(&self) {
        let mut o = self.outcome();
        o.status = 200;
        o.kind = "ok".into();
    }

    fn record_exit(&self, facts: Option<&FailureFacts>) {
        if let Some(f) = facts {
            let mut o = self.outcome();
            o.cli_exit = f.exit_code;
            o.cli_signal = f.signal;
        }
    }

    /// Marks the response complete (for streams: the last event was sent).
    pub fn record_finished(&self) {
        self.outcome().finished = true;
    }

    /// The health gate: while the CLI is known unhealthy, answer from the unhealthy kind's
    /// template without spawning anything.
    pub async fn gate(&self) -> Result<(), ApiError> {
        self.state.health.await_startup_probe().await;
        let Some(h) = self.state.health.gate() else {
            return Ok(());
        };
        let verdict = h
            .error_kind
            .as_deref()
            .and_then(|k| self.rules.verdict_for_kind(k))
            .filter(|v| v.unhealthy)
            .or_else(|| self.rules.first_unhealthy_kind());
        match verdict {
            Some(mut v) => {
                v.message = h.error_message.clone().unwrap_or_default();
                Err(ApiError::Verdict(Box::new(v)))
            }
            // The rules no longer declare any unhealthy kind: nothing may keep the gate closed.
            None => Ok(()),
        }
    }

    /// Classifies failure facts with this request's rules snapshot and updates health.
    pub fn fail(&self, facts: &FailureFacts) -> ApiError {
        self.record_exit(Some(facts));
        let verdict = self.rules.classify(facts);
        tracing::debug!(request_id = %self.request_id, kind = %verdict.kind,
            matched = ?verdict.matched, stderr_tail = %facts.stderr_tail, "CLI failure classified");
        let m = &self.state.metrics;
        m.cli_runs
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: verdict.kind.clone(),
            })
            .inc();
        if verdict.unhealthy {
            self.state
                .mark_unhealthy(Source::Request, &verdict.kind, &verdict.message);
            // Confirm (or refute) with a probe now rather than at the next interval.
            self.state.health.probe_wakeup.notify_one();
        }
        ApiError::Verdict(Box::new(verdict))
    }

    fn succeeded(&self) {
        self.state
            .metrics
            .cli_runs
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: "success".into(),
            })
            .inc();
        if !self.state.health.is_ok() {
            // A real request just worked: recovery need not wait for the next probe.
            self.state.health.mark_ok(Source::Request);
            self.state.metrics.cli_health_ok.set(1);
        }
    }

    fn cli_request(&self, turn: &Turn) -> CliRequest {
        CliRequest {
            prompt: turn.prompt.clone(),
            attachments: turn.attachments.clone(),
            system_prompt: turn.system.clone(),
            model: Some(turn.model.clone()),
            timeout: None,
            bypass_queue: false,
        }
    }

    /// Runs a turn to completion (non-streaming).
    pub async fn complete(&self, turn: &Turn) -> Result<Success, ApiError> {
        self.gate().await?;
        let mut run = self.state.backend.start(self.cli_request(turn));
        let mut assistant_text = String::new();
        // With stop sequences, the deltas are watched so the CLI can be stopped as soon as
        // one appears (agents stop at "Observation:"; the rest would be wasted tokens).
        let mut stops = StopFilter::new(turn.stop.clone());
        let mut before_stop = String::new();
        let mut prompt_usage = None;
        loop {
            match run.recv().await {
                Some(CliEvent::AssistantText(t)) => assistant_text.push_str(&t),
                Some(CliEvent::MessageStart(u)) => {
                    prompt_usage.get_or_insert(u);
                }
                Some(CliEvent::TextDelta(t)) if !stops.is_empty() => {
                    let (release, stop) = stops.push(&t);
                    before_stop.push_str(&release);
                    if let Some(stop) = stop {
                        drop(run); // kills the CLI
                        self.succeeded();
                        return Ok(Success {
                            text: before_stop,
                            stop_reason: Some("stop_sequence".into()),
                            stop_sequence: Some(stop),
                            usage: cut_usage(prompt_usage),
                            ..Success::default()
                        });
                    }
                }
                Some(CliEvent::Abandoned) => {
                    // The streamed attempt is void; the CLI's retry arrives whole and is cut
                    // at the end instead.
                    stops = StopFilter::default();
                    before_stop.clear();
                }
                Some(CliEvent::Done(Ok(mut success))) => {
                    self.succeeded();
                    if let Some((at, stop)) = earliest_stop(&success.text, &turn.stop) {
                        success.text.truncate(at);
                        success.stop_reason = Some("stop_sequence".into());
                        success.stop_sequence = Some(stop);
                    }
                    return Ok(success);
                }
                Some(CliEvent::Done(Err(facts))) => {
                    if let Some(s) = length_partial(&facts, &assistant_text) {
                        self.record_exit(Some(&facts));
                        self.succeeded();
                        return Ok(s);
                    }
                    return Err(self.fail(&facts));
                }
                Some(_) => {}
                None => return Err(self.fail(&lost_run())),
            }
        }
    }

    /// Starts a streaming turn: waits until the first content (or the end), so a failure
    /// known before the first byte keeps its real status.
    pub async fn begin_stream(self: Arc<Self>, turn: &Turn) -> Result<LiveStream, ApiError> {
        self.gate().await?;
        let mut run = self.state.backend.start(self.cli_request(turn));
        let mut ready = std::collections::VecDeque::new();
        loop {
            match run.recv().await {
                Some(CliEvent::Done(Err(facts))) => {
                    let partial: String = ready
                        .iter()
                        .filter_map(|e| match e {
                            CliEvent::AssistantText(t) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect();
                    if let Some(s) = length_partial(&facts, &partial) {
                        self.record_exit(Some(&facts));
                        ready.push_back(CliEvent::Done(Ok(s)));
                        break;
                    }
                    return Err(self.fail(&facts));
                }
                Some(e @ (CliEvent::TextDelta(_) | CliEvent::Done(Ok(_)))) => {
                    ready.push_back(e);
                    break;
                }
                Some(other) => ready.push_back(other),
                None => return Err(self.fail(&lost_run())),
            }
        }
        let first_usage = ready.iter().find_map(|e| match e {
            CliEvent::MessageStart(u) => Some(u.clone()),
            _ => None,
        });
        Ok(LiveStream {
            cx: self,
            run: Some(run),
            ready,
            since_reset: String::new(),
            streamed_any: false,
            abandoned: false,
            stops: StopFilter::new(turn.stop.clone()),
            first_usage,
            out: std::collections::VecDeque::new(),
            stopped: false,
        })
    }
}

impl Drop for RequestCx {
    fn drop(&mut self) {
        let o = self.outcome();
        let secs = self.started.elapsed().as_secs_f64();
        let (status, kind) = if o.status == 0 {
            (499, "client_disconnected")
        } else {
            (o.status, o.kind.as_str())
        };
        let status = if o.status == 200 && !o.finished {
            // A stream the client left before its end.
            499
        } else {
            status
        };
        self.state
            .metrics
            .count_request(self.endpoint, status, kind, secs);
        tracing::info!(
            request_id = %self.request_id,
            endpoint = self.endpoint,
            model = self.model.as_deref().unwrap_or(""),
            status,
            kind,
            cli_exit = o.cli_exit,
            cli_signal = o.cli_signal,
            duration_ms = (secs * 1000.0) as u64,
            "request"
        );
    }
}

/// A run that ended without its final event (the driver task died): a protocol error.
fn lost_run() -> FailureFacts {
    FailureFacts {
        condition: Some(GatewayCondition::NoResult),
        ..FailureFacts::default()
    }
}

/// A length limit the CLI hit after writing some of the answer: its turn limit
/// (`error_max_turns`) or its output token limit (`max_output_tokens`, after the CLI's own
/// "resume" attempts). The APIs report a truncated answer as a success with a length stop
/// (`finish_reason: length` / `stop_reason: max_tokens`), so that is what the caller gets.
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

/// [`length_limit`] after some answer text: that text as a truncated success.
fn length_partial(facts: &FailureFacts, text: &str) -> Option<Success> {
    let stop = length_limit(facts)?;
    (!text.trim().is_empty()).then(|| Success {
        text: text.to_string(),
        stop_reason: Some(stop.into()),
        ..Success::default()
    })
}

/// One piece of a streamed answer, API-neutral.
#[derive(Debug)]
pub enum Piece {
    Delta(String),
    Finish(Box<Success>),
    /// A failure after the stream began: the flavour's error event with this body.
    Fail(serde_json::Value),
}

/// A streaming run after its first content: yields pieces until the end.
pub struct LiveStream {
    pub cx: Arc<RequestCx>,
    run: Option<CliRun>,
    ready: std::collections::VecDeque<CliEvent>,
    /// Text streamed since the last complete assistant block.
    since_reset: String,
    streamed_any: bool,
    abandoned: bool,
    /// Stop sequences, applied to the deltas (see [`LiveStream::next_piece`]).
    stops: StopFilter,
    /// The prompt's usage from the first upstream `message_start`.
    first_usage: Option<crate::backend::Usage>,
    /// Pieces ready for the client.
    out: std::collections::VecDeque<Piece>,
    /// A stop sequence ended the answer.
    stopped: bool,
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

    /// Feeds a piece of text: (text safe to release, the stop sequence if one appeared;
    /// then the released text ends just before it and nothing more may follow).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
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

/// Usage of a run cut at a stop sequence: the prompt's counts from its `message_start`;
/// output tokens are unknown (the run ended before its totals) and reported as 0.
fn cut_usage(prompt: Option<crate::backend::Usage>) -> crate::backend::Usage {
    crate::backend::Usage {
        output_tokens: 0,
        ..prompt.unwrap_or_default()
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

impl LiveStream {
    /// The next piece for the client, or None after the last one. With stop sequences,
    /// text that could be the start of one is held back until it is clear; when one
    /// appears, the text before it is sent, the answer finishes with `stop_sequence`, and
    /// the CLI is stopped.
    pub async fn next_piece(&mut self) -> Option<Piece> {
        loop {
            if let Some(p) = self.out.pop_front() {
                return Some(p);
            }
            if self.stopped {
                return None;
            }
            let raw = self.next_cli_piece().await?;
            if self.stops.is_empty() {
                return Some(raw);
            }
            self.apply_stops(raw);
        }
    }

    fn apply_stops(&mut self, raw: Piece) {
        match raw {
            Piece::Delta(t) => {
                let (release, stop) = self.stops.push(&t);
                self.release(release);
                if let Some(stop) = stop {
                    // Dropping the run kills the CLI: the rest of the answer is not wanted.
                    self.run = None;
                    self.stopped = true;
                    let end = self.finish(Success {
                        stop_reason: Some("stop_sequence".into()),
                        stop_sequence: Some(stop),
                        usage: cut_usage(self.first_usage.clone()),
                        ..Success::default()
                    });
                    self.out.push_back(end);
                }
            }
            Piece::Finish(mut success) => {
                let (rest, stop) = self.stops.finish();
                self.release(rest);
                if let Some(stop) = stop {
                    success.stop_reason = Some("stop_sequence".into());
                    success.stop_sequence = Some(stop);
                }
                self.out.push_back(Piece::Finish(success));
            }
            Piece::Fail(body) => {
                let (rest, _) = self.stops.finish();
                self.release(rest);
                self.out.push_back(Piece::Fail(body));
            }
        }
    }

    fn release(&mut self, text: String) {
        if !text.is_empty() {
            self.out.push_back(Piece::Delta(text));
        }
    }

    /// The usage of the first upstream `message_start` seen before the first content (the
    /// prompt's token counts), for a flavour whose opening event reports them.
    pub fn prompt_usage(&self) -> Option<&crate::backend::Usage> {
        self.first_usage.as_ref()
    }

    /// The next piece as the CLI produced it, or None after the last one.
    async fn next_cli_piece(&mut self) -> Option<Piece> {
        loop {
            let event = match self.ready.pop_front() {
                Some(e) => e,
                None => self
                    .run
                    .as_mut()?
                    .recv()
                    .await
                    .unwrap_or_else(|| CliEvent::Done(Err(Box::new(lost_run())))),
            };
            match event {
                CliEvent::TextDelta(t) => {
                    if self.abandoned {
                        // The CLI retries without streaming after abandoning; deltas of a
                        // new streamed attempt restart the block.
                        continue;
                    }
                    self.since_reset.push_str(&t);
                    self.streamed_any = true;
                    return Some(Piece::Delta(t));
                }
                CliEvent::Abandoned => {
                    self.abandoned = true;
                }
                CliEvent::AssistantText(full) => {
                    let sent = std::mem::take(&mut self.since_reset);
                    if !self.abandoned {
                        continue;
                    }
                    self.abandoned = false;
                    // The retry's full text: send what the client lacks if what it already
                    // has is a prefix; otherwise the streamed text is wrong and the stream
                    // must fail rather than serve a corrupted answer.
                    match full.strip_prefix(sent.as_str()) {
                        Some(rest) => {
                            if !rest.is_empty() {
                                self.streamed_any = true;
                                return Some(Piece::Delta(rest.to_string()));
                            }
                        }
                        None => {
                            self.run = None;
                            let facts = FailureFacts {
                                condition: Some(GatewayCondition::StreamAbandoned),
                                ..FailureFacts::default()
                            };
                            return Some(self.fail_piece(&facts));
                        }
                    }
                }
                CliEvent::Started { .. } | CliEvent::MessageStart(_) => {}
                CliEvent::Done(Ok(success)) => {
                    self.run = None;
                    if !self.streamed_any && !success.text.is_empty() {
                        // Nothing was streamed (no partial messages): send the whole text
                        // first, then finish (when this event comes round again).
                        self.streamed_any = true;
                        self.ready.push_back(CliEvent::Done(Ok(success.clone())));
                        return Some(Piece::Delta(success.text));
                    }
                    return Some(self.finish(success));
                }
                CliEvent::Done(Err(facts)) => {
                    self.run = None;
                    if let Some(stop) = length_limit(&facts).filter(|_| self.streamed_any) {
                        // Truncated, not failed: end the stream as the APIs end a
                        // length-limited answer.
                        self.cx.record_exit(Some(&facts));
                        return Some(self.finish(Success {
                            stop_reason: Some(stop.into()),
                            ..Success::default()
                        }));
                    }
                    return Some(self.fail_piece(&facts));
                }
            }
        }
    }

    /// The stream's successful end: the run counts as a success, the answer as a complete 200.
    fn finish(&mut self, success: Success) -> Piece {
        self.cx.succeeded();
        self.cx.record_ok();
        self.cx.record_finished();
        Piece::Finish(Box::new(success))
    }

    fn fail_piece(&mut self, facts: &FailureFacts) -> Piece {
        let err = self.cx.fail(facts);
        let rendered = self.cx.render_error(&err);
        self.cx.record_finished();
        Piece::Fail(rendered.body)
    }
}

/// Turns a live stream into an SSE response: `opening` events first, then `render(piece)`
/// for each piece. A `Finish` or `Fail` piece is the last one. The run is dropped (and its
/// CLI killed) when the client goes away, because the body stream owns it.
pub fn sse_response(
    live: LiveStream,
    opening: Vec<axum::response::sse::Event>,
    render: impl Fn(Piece) -> Vec<axum::response::sse::Event> + Send + Sync + 'static,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::IntoResponse;
    let keep_alive = live.cx.state.settings.sse_keepalive.map(|every| {
        // Sent only while the stream is idle that long: proxies with read timeouts
        // (nginx: 60 s) must not cut a stream whose CLI is quiet for a while. Anthropic
        // clients know `ping` events; OpenAI clients skip SSE comments.
        match live.cx.flavour {
            Flavour::Anthropic => KeepAlive::new()
                .interval(every)
                .event(Event::default().event("ping").data(r#"{"type":"ping"}"#)),
            Flavour::Openai => KeepAlive::new().interval(every).text("keep-alive"),
        }
    });
    let render = Arc::new(render);
    let events = futures_util::stream::unfold(
        (live, Some(opening), false),
        move |(mut live, opening, done)| {
            let render = render.clone();
            async move {
                if let Some(v) = opening {
                    return Some((v, (live, None, false)));
                }
                if done {
                    return None;
                }
                let piece = live.next_piece().await?;
                let last = matches!(piece, Piece::Finish(_) | Piece::Fail(_));
                Some((render(piece), (live, None, last)))
            }
        },
    );
    let flat = futures_util::StreamExt::flat_map(events, |v| {
        futures_util::stream::iter(v.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    match keep_alive {
        Some(k) => Sse::new(flat).keep_alive(k).into_response(),
        None => Sse::new(flat).into_response(),
    }
}
