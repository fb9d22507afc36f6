//! [`RequestRecord`]: a request's one log line and its metrics, written when the last
//! reference to it goes (for streams: when the stream ends or the client leaves), and the
//! [`RequestSummary`] its finish hooks (the usage ledger, the per-key limits) get then.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::rules::FailureFacts;

/// Outcome fields of the request log line, filled as the request proceeds.
#[derive(Debug, Default)]
struct Outcome {
    method: String,
    path: String,
    status: u16,
    kind: String,
    model: Option<String>,
    cli_exit: Option<i32>,
    cli_signal: Option<i32>,
    /// The answer was completely delivered (for streams: the last event was produced).
    finished: bool,
    /// A stream that had answered 200 ended with an error event.
    failed_mid_stream: bool,
    /// The account the request ran on (the last one, after a failover).
    account: Option<String>,
    /// What the answer's `usage` reported (the last one, for a stream).
    usage: Option<crate::protocol::Usage>,
    /// The model the CLI reported serving.
    served_model: Option<String>,
    streamed: bool,
    /// Seconds from the request's start to the first content (streams).
    first_token_secs: Option<f64>,
    /// `held` (a client tool round went on in the run waiting for it) or `fresh`.
    round: Option<&'static str>,
}

/// What a finished request reports to its [`RequestRecord::on_finish`] hook (the usage
/// ledger and the per-key limits): no prompt, no key material.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub request_id: String,
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub served_model: Option<String>,
    pub account: Option<String>,
    pub streamed: bool,
    pub status: u16,
    pub kind: String,
    pub usage: crate::protocol::Usage,
    pub duration_secs: f64,
    pub first_token_secs: Option<f64>,
    pub round: Option<&'static str>,
}

/// Called once with the summary when the request's record is dropped.
pub type FinishHook = Box<dyn FnOnce(&RequestSummary) + Send>;

/// A request's log line and metrics, written once when the last reference is dropped.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    endpoint: &'static str,
    pub request_id: String,
    started: Instant,
    outcome: Mutex<Outcome>,
    on_finish: Mutex<Vec<FinishHook>>,
}

impl RequestRecord {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        endpoint: &'static str,
        request_id: String,
    ) -> RequestRecord {
        RequestRecord {
            metrics,
            endpoint,
            request_id,
            started: Instant::now(),
            outcome: Mutex::new(Outcome::default()),
            on_finish: Mutex::new(Vec::new()),
        }
    }

    /// Adds a hook called with the request's summary when it ends (after its answer
    /// was delivered or abandoned).
    pub fn on_finish(&self, hook: FinishHook) {
        self.on_finish
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// The answer's usage and the model the CLI served.
    pub fn set_usage(&self, usage: &crate::protocol::Usage, served_model: Option<&str>) {
        let mut o = self.outcome();
        o.usage = Some(usage.clone());
        if let Some(m) = served_model {
            o.served_model = Some(m.to_string());
        }
    }

    /// The answer is a stream (its headers may go out before its first content).
    pub fn streaming(&self) {
        self.outcome().streamed = true;
    }

    /// The answer is a stream whose first content is ready now (the first call counts).
    pub fn first_content(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        let mut o = self.outcome();
        o.streamed = true;
        o.first_token_secs.get_or_insert(secs);
    }

    /// How the turn ran: `held` or `fresh`.
    pub fn set_round(&self, round: &'static str) {
        self.outcome().round = Some(round);
    }

    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn endpoint(&self) -> &'static str {
        self.endpoint
    }

    /// The request's method and path (logged).
    pub fn set_target(&self, method: &str, path: &str) {
        let mut o = self.outcome();
        o.method = method.to_string();
        o.path = path.to_string();
    }

    /// The account the request runs on (logged, counted).
    pub fn set_account(&self, name: &str) {
        self.outcome().account = Some(name.to_string());
    }

    /// The model the request named (logged).
    pub fn set_model(&self, model: &str) {
        self.outcome().model = Some(model.to_string());
    }

    pub fn model(&self) -> Option<String> {
        self.outcome().model.clone()
    }

    /// The answer's status and kind (`ok`, a rules kind, or a gateway kind). A complete
    /// answer (not a stream still running) is also finished.
    pub fn answered(&self, status: u16, kind: &str, finished: bool) {
        let mut o = self.outcome();
        o.status = status;
        o.kind = kind.to_string();
        o.finished = finished;
    }

    /// A stream's successful end.
    pub fn stream_finished(&self) {
        self.outcome().finished = true;
    }

    /// A stream that already answered 200 failed: the client got a 200 and an error event.
    pub fn stream_failed(&self, kind: &str) {
        let mut o = self.outcome();
        o.kind = kind.to_string();
        o.finished = true;
        o.failed_mid_stream = true;
    }

    pub(super) fn record_exit(&self, facts: &FailureFacts) {
        let mut o = self.outcome();
        o.cli_exit = facts.exit_code;
        o.cli_signal = facts.signal;
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let o = self.outcome();
        let secs = self.started.elapsed().as_secs_f64();
        let (status, kind) = if o.status == 0 {
            (499, "client_disconnected")
        } else if o.status == 200 && !o.finished {
            // A stream the client left before its end.
            (499, o.kind.as_str())
        } else {
            (o.status, o.kind.as_str())
        };
        self.metrics
            .count_request(self.endpoint, status, kind, secs);
        self.metrics
            .count_account_request(o.account.as_deref(), self.endpoint, status, kind);
        let hooks = std::mem::take(&mut *self.on_finish.lock().unwrap_or_else(|p| p.into_inner()));
        if !hooks.is_empty() {
            let summary = RequestSummary {
                request_id: self.request_id.clone(),
                endpoint: self.endpoint,
                model: o.model.clone(),
                served_model: o.served_model.clone(),
                account: o.account.clone(),
                streamed: o.streamed,
                status,
                kind: kind.to_string(),
                usage: o.usage.clone().unwrap_or_default(),
                duration_secs: secs,
                first_token_secs: o.first_token_secs,
                round: o.round,
            };
            for hook in hooks {
                hook(&summary);
            }
        }
        // Client-chosen strings (request id, path, model) are recorded as `&str` values, which
        // the text format quotes and escapes (and JSON encodes): printed bare, a `"` in an
        // `x-request-id` flipped the quoting of the rest of the line, so a model name could
        // forge fields such as `status=200` for a logfmt parser.
        tracing::info!(
            request_id = self.request_id.as_str(),
            endpoint = self.endpoint,
            method = o.method.as_str(),
            path = o.path.as_str(),
            model = o.model.as_deref().unwrap_or(""),
            account = o.account.as_deref().unwrap_or(""),
            status,
            kind,
            failed_mid_stream = o.failed_mid_stream,
            cli_exit = o.cli_exit,
            cli_signal = o.cli_signal,
            duration_ms = (secs * 1000.0) as u64,
            "request"
        );
    }
}
