//! The one request path every API shares, generic over a small per-API trait: parse
//! (the [`ApiRequest`] extractor), translate into a [`TurnRequest`], run the turn on the
//! engine, and answer with the API's complete body or its SSE framing. An API is one
//! module implementing [`Api`] and [`Framer`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::backend::RunOptions;
use crate::conversation::Conversation;
use crate::engine::{TurnError, TurnRequest, TurnRun, TurnStep};
use crate::http::errors::ApiError;
use crate::http::extract::{parse_body, read_body, Cx};
use crate::http::keyed::SharedLease;
use crate::http::state::AppState;
use crate::http::RequestId;
use crate::protocol::{Success, Usage};
use crate::rules::Flavour;
use crate::turn::ThinkingStep;

/// One API: its request type and how it translates to and from a turn.
pub trait Api: Send + Sync + Sized + 'static {
    type Request: DeserializeOwned + Send + 'static;
    type Framer: Framer;
    /// The error shape of this API.
    const FLAVOUR: Flavour;
    /// The `endpoint` label of logs and metrics.
    const ENDPOINT: &'static str;

    /// The model the request names (logged, and `{{model}}` in error templates).
    fn model(req: &Self::Request) -> &str;
    fn wants_stream(req: &Self::Request) -> bool;
    /// Resolves what the request refers to in the gateway's state for `tenant` (Responses:
    /// `previous_response_id`), before [`Api::translate`]. Most APIs refer to nothing.
    fn prepare(_req: &mut Self::Request, _state: &AppState, _tenant: &str) -> Result<(), ApiError> {
        Ok(())
    }
    /// What the request names in the stored state (responses, items, threads), brought
    /// from the shared state store before [`Api::prepare`] when this replica lacks it.
    fn stored_refs(_req: &Self::Request) -> crate::response_store::StoredRefs {
        crate::response_store::StoredRefs::default()
    }
    /// Validates the request and translates it into the neutral turn.
    fn translate(req: &Self::Request) -> Result<TurnRequest, ApiError>;
    /// Whether the process config shows this API's clients the model's thinking whatever
    /// the request says (OpenAI: `openai.reasoning_content`).
    fn thinking_by_config(_settings: &crate::config::Settings) -> bool {
        false
    }
    /// A turn that could not start, as this API's error (its own field names).
    fn start_error(_req: &Self::Request, e: TurnError) -> ApiError {
        e.into()
    }
    /// A new id for the answer (`chatcmpl-…`, `msg_…`).
    fn answer_id() -> String;
    /// The complete (non-streaming) answer body.
    fn complete_body(req: &Self::Request, id: &str, answer: &Success) -> Value;
    /// The stream framing of this answer; `prompt_usage` is the prompt's token counts
    /// when the CLI reported them before the first text.
    fn framer(req: Self::Request, id: String, prompt_usage: Option<&Usage>) -> Self::Framer;
}

/// The turn a translation produced, after the check every API shares: a dialogue that
/// ends with the user. (The tenant is set by the handler from the request's API key.)
pub fn turn_request(
    conversation: Conversation,
    model: &str,
    stop: Vec<String>,
) -> Result<TurnRequest, ApiError> {
    conversation
        .validate()
        .map_err(|e| ApiError::invalid_param(e.to_string(), "messages"))?;
    Ok(TurnRequest {
        conversation,
        model: model.to_string(),
        stop,
        tenant: String::new(),
        tools: None,
        options: RunOptions::default(),
        show_thinking: false,
        accounts: None,
    })
}

/// A structured-output schema as `--json-schema` takes it: its draft declarations removed
/// (see below), then checked and bounded ([`crate::engine::check_schema`]).
pub fn schema_for_cli(schema: &serde_json::Value) -> Result<String, String> {
    crate::engine::check_schema(&without_draft_declarations(schema))
}

/// The schema without its `$schema` declarations (at the top and in `$defs` /
/// `definitions`): the CLI validates schemas as draft-07 and refuses any other declared
/// draft ("no schema with key or ref …", exit 1), while the keywords clients use mean the
/// same there (zod 4 declares draft 2020-12 on every schema).
fn without_draft_declarations(
    schema: &serde_json::Value,
) -> std::borrow::Cow<'_, serde_json::Value> {
    use serde_json::Value;
    let declares = |v: &Value| v.get("$schema").is_some_and(Value::is_string);
    let nested = |v: &Value| {
        ["$defs", "definitions"].iter().any(|k| {
            v.get(*k)
                .and_then(Value::as_object)
                .is_some_and(|d| d.values().any(declares))
        })
    };
    if !declares(schema) && !nested(schema) {
        return std::borrow::Cow::Borrowed(schema);
    }
    let mut out = schema.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("$schema");
        for k in ["$defs", "definitions"] {
            if let Some(defs) = o.get_mut(k).and_then(Value::as_object_mut) {
                for d in defs.values_mut().filter_map(Value::as_object_mut) {
                    if d.get("$schema").is_some_and(Value::is_string) {
                        d.remove("$schema");
                    }
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What an OpenAI-shaped conversation that ends with an assistant message gets as its next
/// user turn: the OpenAI APIs answer after such a message (LangGraph's structured-output
/// call sends one), while the CLI answers only a user turn.
pub const CONTINUE_AFTER_ASSISTANT: &str = "Continue.";

/// Appends [`CONTINUE_AFTER_ASSISTANT`] as a user turn when `messages` ends with an
/// assistant message without tool calls (one with calls still needs their results).
pub fn continue_after_assistant(messages: &mut Vec<crate::conversation::Message>) {
    use crate::conversation::{Block, Message, Role};
    let ends_with_answer = messages.last().is_some_and(|m| {
        m.role == Role::Assistant && !m.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }))
    });
    if ends_with_answer {
        messages.push(Message::text(Role::User, CONTINUE_AFTER_ASSISTANT));
    }
}

/// An API's SSE events for a streamed answer.
pub trait Framer: Send + 'static {
    /// The events before the first text.
    fn opening(&mut self) -> Vec<Event>;
    fn text(&mut self, text: String) -> Vec<Event>;
    /// A tool call began: its index among the answer's calls, the tool-use id, the name.
    fn tool_start(&mut self, index: usize, id: String, name: String) -> Vec<Event>;
    /// A fragment of the JSON arguments of the call at `index`.
    fn tool_args(&mut self, index: usize, fragment: String) -> Vec<Event>;
    /// The model's streamed thinking (only for requests that show it).
    fn thinking(&mut self, _step: ThinkingStep) -> Vec<Event> {
        Vec::new()
    }
    /// One of the CLI's web searches or fetches completed (between the text before it
    /// and the text after it).
    fn web(&mut self, _call: &crate::protocol::WebCall) -> Vec<Event> {
        Vec::new()
    }
    /// The last events of a complete answer.
    fn finish(&mut self, answer: &Success) -> Vec<Event>;
    /// The last events of a stream that failed after it began (`body` is the rendered
    /// error body of this API's shape).
    fn fail(&mut self, body: Value) -> Vec<Event>;
}

/// An API call: its context and its body parsed as the API's request type.
pub struct ApiRequest<A: Api> {
    pub cx: Cx,
    pub body: A::Request,
}

impl<A: Api> FromRequest<AppState> for ApiRequest<A> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(crate::http::new_request_id);
        let mut cx = Cx::new(state, A::FLAVOUR, A::ENDPOINT, id);
        cx.caller = req
            .extensions()
            .get::<crate::http::keyed::Caller>()
            .cloned();
        // The ledger row and per-key counters, whatever answers (the closed gate too).
        crate::http::keyed::on_finish(state, &cx, cx.caller.as_ref().map(|c| c.0.clone()));
        if cx.caller.is_some() {
            // The key passed the API key layer; only its digest is kept.
            cx.tenant = crate::http::presented_key(&req)
                .map(|k| crate::rules::sha256_hex(k.as_bytes()))
                .unwrap_or_default();
        }
        cx.record
            .set_target(req.method().as_str(), req.uri().path());
        let limit = state.settings.request_body_limit;
        // A closed health gate answers before the body is parsed (see `http::gate`).
        let closed = state.gate.closed(&state.health, &cx.rules, cx.flavour);
        let body = Bytes::from_request(req, state).await;
        if let Some(closed) = closed {
            return Err(match read_body(body, limit) {
                Ok(_) => closed.respond(&cx.record, &cx.request_id),
                Err(e) => cx.error(e),
            });
        }
        // A body at the size limit takes milliseconds to parse: off the async workers.
        match crate::offload::blocking(|| parse_body(body, limit, A::FLAVOUR)) {
            Ok(body) => Ok(ApiRequest { cx, body }),
            Err(e) => Err(cx.error(e)),
        }
    }
}

/// The handler of every API endpoint.
pub async fn handle<A: Api>(State(state): State<AppState>, request: ApiRequest<A>) -> Response {
    let ApiRequest { cx, mut body } = request;
    // A model that fails the checks is not logged (it may be megabytes or hold controls).
    if crate::engine::check_model(A::model(&body)).is_ok() {
        cx.record.set_model(A::model(&body));
    }
    state
        .responses
        .hydrate(&A::stored_refs(&body), &cx.tenant)
        .await;
    if let Err(e) = A::prepare(&mut body, &state, &cx.tenant) {
        return cx.error(e);
    }
    let mut turn = match A::translate(&body) {
        Ok(t) => t,
        Err(e) => return cx.error(e),
    };

    // A model alias of the rules names the model the CLI runs (the ledger and the answer
    // keep the name asked for).
    let resolved = cx.rules.resolve_model(&turn.model);
    if resolved != turn.model {
        turn.model = resolved.to_string();
    }
    // The key's allow-lists and limits, before anything runs.
    if let Err(refused) = crate::http::keyed::admit(&state, &cx, cx.caller.as_ref(), &turn.model) {
        return cx.error(refused);
    }
    let lease = match crate::http::keyed::admit_shared(&state, &cx).await {
        Ok(lease) => lease,
        Err(refused) => return cx.error(refused),
    };
    // The key's shared `concurrent` slot goes back before the answer's last bytes: here
    // before a complete answer is sent, in the stream before its final events.
    let (response, lease) = answer::<A>(&state, cx, body, turn, lease).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    response
}

/// After admission: runs the turn and answers. The lease comes back unless a stream took
/// it.
async fn answer<A: Api>(
    state: &AppState,
    cx: Cx,
    body: A::Request,
    mut turn: TurnRequest,
    lease: Option<SharedLease>,
) -> (Response, Option<SharedLease>) {
    turn.accounts = cx.caller.as_ref().and_then(|c| c.0.accounts.clone());
    turn.tenant.clone_from(&cx.tenant);
    turn.show_thinking |= A::thinking_by_config(&state.settings);
    if let Err(e) = crate::http::web::admit(state, &mut turn.options) {
        return (cx.error(e), lease);
    }
    let mut run = match state
        .engine
        .start(Arc::clone(&cx.rules), Arc::clone(&cx.record), turn)
        .await
    {
        Ok(run) => run,
        Err(e) => return (cx.error(A::start_error(&body, e)), lease),
    };
    let id = A::answer_id();
    if A::wants_stream(&body) {
        // A failure known before the first byte keeps its real status (SDKs map it to
        // their exception and retry 429 / 5xx), but a stream is never silent longer than
        // `sse_keepalive`: a run with no content by then (a queue wait, a slow start) gets
        // its headers and a keep-alive now, and a later failure is the API's error event.
        let waited = match state.settings.sse_keepalive {
            Some(every) => tokio::time::timeout(every, run.first_content()).await.ok(),
            None => Some(run.first_content().await),
        };
        if let Some(Err(v)) = waited {
            return (cx.error(ApiError::Verdict(v)), lease);
        }
        cx.record.streaming();
        if waited.is_some() {
            cx.record.first_content();
        }
        cx.record.answered(200, "ok", false);
        let start = match waited {
            Some(_) => Start::Open(A::framer(body, id, run.prompt_usage())),
            None => Start::Waiting(body, id),
        };
        return (
            sse_response::<A>(cx, run, start, state.settings.sse_keepalive, lease),
            None,
        );
    }
    let response = match run.complete().await {
        Ok(answer) => {
            cx.record.set_usage(&answer.usage, answer.model.as_deref());
            cx.record.answered(200, "ok", true);
            Json(A::complete_body(&body, &id, &answer)).into_response()
        }
        Err(v) => cx.error(ApiError::Verdict(v)),
    };
    (response, lease)
}

/// How a stream begins: with its framer (the first content is ready), or still waiting
/// for it (the request and answer id the framer is made from once it comes).
enum Start<A: Api> {
    Open(A::Framer),
    Waiting(A::Request, String),
}

/// Where a stream is: its events to send next, then the framer (None while it waits for
/// the first content, with what makes the framer).
struct Streaming<A: Api> {
    cx: Cx,
    run: TurnRun,
    /// The key's shared `concurrent` slot, given back before the final events (or the
    /// stream's end); dropped with the stream when the client leaves.
    lease: Option<SharedLease>,
    framer: Option<A::Framer>,
    waiting: Option<(A::Request, String)>,
    next: Option<Vec<Event>>,
}

/// The SSE response of a running turn: the framer's opening events, then its events for
/// each step until the finish or the failure. A stream that starts before its first
/// content opens with a keep-alive and then waits for it; a failure there is the API's
/// error event. The body stream owns the run, so a client that goes away drops it (and
/// the CLI is ended).
fn sse_response<A: Api>(
    cx: Cx,
    run: TurnRun,
    start: Start<A>,
    keep_alive: Option<Duration>,
    lease: Option<SharedLease>,
) -> Response {
    let keep_alive = keep_alive.map(|every| {
        // Sent only while the stream is idle that long: proxies with read timeouts
        // (nginx: 60 s) must not cut a stream whose CLI is quiet for a while. Anthropic
        // clients know `ping` events; OpenAI clients skip SSE comments.
        match cx.flavour {
            Flavour::Anthropic => KeepAlive::new()
                .interval(every)
                .event(Event::default().event("ping").data(r#"{"type":"ping"}"#)),
            Flavour::Openai => KeepAlive::new().interval(every).text("keep-alive"),
        }
    });
    let state = match start {
        Start::Open(mut framer) => Streaming::<A> {
            next: Some(framer.opening()),
            framer: Some(framer),
            waiting: None,
            cx,
            run,
            lease,
        },
        Start::Waiting(req, id) => Streaming::<A> {
            next: Some(vec![match cx.flavour {
                Flavour::Anthropic => Event::default().event("ping").data(r#"{"type":"ping"}"#),
                Flavour::Openai => Event::default().comment("keep-alive"),
            }]),
            framer: None,
            waiting: Some((req, id)),
            cx,
            run,
            lease,
        },
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(v) = st.next.take() {
            return Some((v, st));
        }
        if let Some((req, id)) = st.waiting.take() {
            let events = match st.run.first_content().await {
                Ok(()) => {
                    st.cx.record.first_content();
                    let mut framer = A::framer(req, id, st.run.prompt_usage());
                    let opening = framer.opening();
                    st.framer = Some(framer);
                    opening
                }
                Err(v) => {
                    st.cx.record.stream_failed(&v.kind);
                    release(&mut st.lease).await;
                    let body = st.cx.render(&ApiError::Verdict(v)).body;
                    A::framer(req, id, None).fail(body)
                }
            };
            return Some((events, st));
        }
        let step = match st.framer {
            Some(_) => st.run.next().await,
            None => None,
        };
        let Some(step) = step else {
            // The end without final events.
            release(&mut st.lease).await;
            return None;
        };
        let framer = st.framer.as_mut()?;
        let events = match step {
            TurnStep::Text(t) => framer.text(t),
            TurnStep::ToolStart { index, id, name } => framer.tool_start(index, id, name),
            TurnStep::ToolArgs { index, fragment } => framer.tool_args(index, fragment),
            TurnStep::Thinking(t) => framer.thinking(t),
            TurnStep::Web(c) => framer.web(&c),
            TurnStep::Finish(s) => {
                st.cx.record.set_usage(&s.usage, s.model.as_deref());
                st.cx.record.stream_finished();
                release(&mut st.lease).await;
                framer.finish(&s)
            }
            TurnStep::Fail(v) => {
                st.cx.record.stream_failed(&v.kind);
                release(&mut st.lease).await;
                let body = st.cx.render(&ApiError::Verdict(v)).body;
                framer.fail(body)
            }
        };
        Some((events, st))
    });
    let flat = futures_util::StreamExt::flat_map(events, |v| {
        futures_util::stream::iter(v.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    match keep_alive {
        Some(k) => Sse::new(flat).keep_alive(k).into_response(),
        None => Sse::new(flat).into_response(),
    }
}

/// Gives a stream's shared slot back (once), before its last events.
async fn release(lease: &mut Option<SharedLease>) {
    if let Some(lease) = lease.take() {
        lease.release().await;
    }
}
