//! The closed health gate's answer on the API endpoints, before the body is parsed.
//!
//! While the CLI is known unhealthy, every API request gets the same verdict (the recorded
//! unhealthy kind, see `Engine::gate`), whatever its body says. So the API extractor asks
//! [`GateAnswers::closed`] first: if the gate is closed, the request's body is read (its
//! size limit and deadline still apply) but not parsed, and the answer is the verdict,
//! rendered once per rules snapshot, health state ([`Health::epoch`]) and flavour and only
//! completed with the request's id. Checked before the gate, in this order: the `Host` and
//! `Origin` checks, the API key, the JSON content type, the body's size and deadline. After
//! it (only while the gate is open): the JSON, the fields and their values.
//!
//! A verdict whose rendering depends on more than the request id (a template with
//! `{{model}}`, or `{{request_id}}` in a header) is not prepared here: such requests take
//! the ordinary path, where the engine's gate answers them after the body is parsed.
//!
//! [`Health::epoch`]: crate::health::Health::epoch

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use crate::engine::RequestRecord;
use crate::health::Health;
use crate::http::errors::{ApiError, ErrorContext};
use crate::rules::{Flavour, Rules};

/// The prepared gate answers, one slot per flavour.
#[derive(Default)]
pub struct GateAnswers {
    openai: ArcSwapOption<Prepared>,
    anthropic: ArcSwapOption<Prepared>,
}

/// What the gate answers for one rules snapshot and health state.
struct Prepared {
    epoch: u64,
    rules: Arc<Rules>,
    /// None: the gate is open, or its answer is rendered per request (ordinary path).
    answer: Option<Arc<Answer>>,
}

/// A closed gate's answer, complete but for the request id.
struct Answer {
    status: StatusCode,
    kind: String,
    headers: HeaderMap,
    /// The serialized JSON body, split where the request id goes.
    body: Vec<Vec<u8>>,
}

/// A closed gate's answer for one request.
pub struct Closed(Arc<Answer>);

impl GateAnswers {
    fn slot(&self, flavour: Flavour) -> &ArcSwapOption<Prepared> {
        match flavour {
            Flavour::Openai => &self.openai,
            Flavour::Anthropic => &self.anthropic,
        }
    }

    /// The answer to a request of `flavour` with the rules snapshot `rules` if the health
    /// gate is closed for it, else None (the gate is open, the first probe is still
    /// running, or the answer depends on the body).
    pub fn closed(&self, health: &Health, rules: &Arc<Rules>, flavour: Flavour) -> Option<Closed> {
        if health.startup_probe_pending() {
            return None;
        }
        let epoch = health.epoch();
        let slot = self.slot(flavour);
        let current = slot
            .load_full()
            .filter(|p| p.epoch == epoch && Arc::ptr_eq(&p.rules, rules));
        let prepared = match current {
            Some(p) => p,
            None => {
                let p = Arc::new(Prepared {
                    epoch,
                    rules: Arc::clone(rules),
                    answer: prepare(health, rules, flavour).map(Arc::new),
                });
                slot.store(Some(Arc::clone(&p)));
                p
            }
        };
        prepared.answer.clone().map(Closed)
    }
}

/// A request id that no rendering produces by itself: where the real one goes.
fn sentinel(what: &str) -> String {
    format!("ccgate-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Renders the gate's verdict for the current health state, or None if the gate is open
/// (or reopens for these rules) or the answer depends on more than the request id.
fn prepare(health: &Health, rules: &Rules, flavour: Flavour) -> Option<Answer> {
    // The epoch was read before this snapshot (see `Health::epoch`).
    let health = health.snapshot();
    if health.ok {
        return None;
    }
    // As `Engine::gate`: the recorded kind, if these rules still mark it unhealthy.
    let mut verdict = health
        .error_kind
        .as_deref()
        .and_then(|k| rules.verdict_for_kind(k))
        .filter(|v| v.unhealthy && v.resets_at.is_none())?;
    verdict.message = health.error_message.clone().unwrap_or_default();
    let request_id = sentinel("request-id");
    let model = sentinel("model");
    let rendered = ApiError::Verdict(Box::new(verdict.clone())).render(&ErrorContext {
        flavour,
        request_id: &request_id,
        model: Some(&model),
        rules,
        health: &health,
    });
    let body = serde_json::to_string(&rendered.body).ok()?;
    let per_request = |s: &str| s.contains(&model);
    if per_request(&body)
        || rendered
            .headers
            .iter()
            .any(|(n, v)| per_request(n) || per_request(v) || v.contains(&request_id))
    {
        return None;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in &rendered.headers {
        // As `RenderedError::into_response`: a header that is not valid is left out.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    Some(Answer {
        status: rendered.status,
        kind: verdict.kind,
        headers,
        body: body
            .split(request_id.as_str())
            .map(|s| s.as_bytes().to_vec())
            .collect(),
    })
}

impl Closed {
    /// The answer, with the request's id; recorded as the request's answer.
    pub fn respond(self, record: &RequestRecord, request_id: &str) -> Response {
        let a = &self.0;
        // Request ids are visible ASCII: usually nothing to escape in a JSON string.
        let escaped;
        let id = if request_id
            .bytes()
            .any(|b| matches!(b, b'"' | b'\\') || b < 0x20)
        {
            escaped = serde_json::to_string(request_id).unwrap_or_default();
            escaped
                .get(1..escaped.len().saturating_sub(1))
                .unwrap_or_default()
        } else {
            request_id
        };
        let id = id.as_bytes();
        let len = a.body.iter().map(Vec::len).sum::<usize>() + id.len() * (a.body.len() - 1);
        let mut body = Vec::with_capacity(len);
        for (i, part) in a.body.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(id);
            }
            body.extend_from_slice(part);
        }
        record.answered(a.status.as_u16(), &a.kind, true);
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = a.status;
        *resp.headers_mut() = a.headers.clone();
        resp
    }
}
