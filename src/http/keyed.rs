//! Who is calling: the API key layer (401 for a missing, wrong or expired key; 403 for a
//! client key on `/admin/*` whenever any key exists), the per-key limits checked before
//! anything runs (429 with `retry-after`), the rate-limit headers on every answer to a key
//! with limits, and what a finished request leaves behind (the ledger row, the per-key
//! counters, the tokens counted against the key's limits).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::engine::RequestSummary;
use crate::http::errors::ApiError;
pub use crate::http::extract::Caller;
use crate::http::extract::Cx;
use crate::http::state::AppState;
use crate::http::{new_request_id, presented_key, static_error_for, RequestId};
use crate::keys::{Key, Lookup, Role};
use crate::limits::AccountWindow;
use crate::metrics::{KeyLabels, KeyTokenLabels};
use crate::store::{LedgerRow, Retry, Store};

fn now() -> i64 {
    crate::clock::unix_now() as i64
}

/// The API key check, the admin role check, then the JSON-only POST check
/// ([`super::edge::json_post_refusal`]); afterwards the rate-limit headers of a key with
/// limits.
pub async fn key_layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let keys = state.keys.load();
    let lookup = keys.lookup(presented_key(&req), now());
    let refuse = |state: &AppState, req: &Request, err: ApiError| {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(new_request_id);
        static_error_for(state, req, &id, err)
    };
    let caller = match lookup {
        Lookup::Open => None,
        Lookup::Unknown => return refuse(&state, &req, ApiError::Unauthorized),
        Lookup::Expired(_) => return refuse(&state, &req, ApiError::KeyExpired),
        Lookup::Found(k) => Some(k),
    };
    drop(keys);
    if req.uri().path().starts_with("/admin/") {
        if let Some(k) = &caller {
            if k.role != Role::Admin {
                return refuse(
                    &state,
                    &req,
                    ApiError::Forbidden {
                        code: "admin_key_required",
                        message: "The /admin endpoints need a key with role admin.".into(),
                    },
                );
            }
        }
    }
    if let Some(refused) = super::edge::json_post_refusal(&state, &req) {
        return refused;
    }
    let limited = caller.clone().filter(|k| k.limits.any());
    if let Some(k) = caller {
        req.extensions_mut().insert(Caller(k));
    }
    let mut resp = next.run(req).await;
    if let Some(k) = limited {
        add_rate_limit_headers(&state, &k, &mut resp);
    }
    resp
}

/// OpenAI's `x-ratelimit-*` and Anthropic's `anthropic-ratelimit-*` headers of `key`.
fn add_rate_limit_headers(state: &AppState, key: &Key, resp: &mut Response) {
    let now = now();
    let budget = state.limiter.budget(&key.name, &key.limits, now);
    let reset_at =
        |secs: u64| crate::clock::rfc3339_of_unix(now as u64 + secs).replace("+00:00", "Z");
    let mut set = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    };
    for (what, b) in [("requests", budget.requests), ("tokens", budget.tokens)] {
        let Some((limit, remaining, reset)) = b else {
            continue;
        };
        set(&format!("x-ratelimit-limit-{what}"), limit.to_string());
        set(
            &format!("x-ratelimit-remaining-{what}"),
            remaining.to_string(),
        );
        set(&format!("x-ratelimit-reset-{what}"), format!("{reset}s"));
        set(
            &format!("anthropic-ratelimit-{what}-limit"),
            limit.to_string(),
        );
        set(
            &format!("anthropic-ratelimit-{what}-remaining"),
            remaining.to_string(),
        );
        set(
            &format!("anthropic-ratelimit-{what}-reset"),
            reset_at(reset),
        );
    }
}

/// For an API request: the key's model allow-list and limits, checked before anything
/// runs. `model` is the model the CLI would run (after aliases). Err is the refusal to
/// answer with; a concurrency slot taken is given back when the request ends.
pub fn admit(
    state: &AppState,
    cx: &Cx,
    caller: Option<&Caller>,
    model: &str,
) -> Result<(), ApiError> {
    let Some(Caller(k)) = caller else {
        return Ok(());
    };
    if !model.is_empty() && !k.allows_model(model) {
        return Err(ApiError::Forbidden {
            code: "model_not_allowed",
            message: format!("This API key may not use the model `{model}`."),
        });
    }
    let refused = match k.limits.window_share {
        Some(_) => state
            .limiter
            .window_share_refusal(k, &key_windows(state, k), now() as u64)
            .map(Err),
        None => None,
    };
    match refused.unwrap_or_else(|| state.limiter.admit(k, now())) {
        Ok(Some(permit)) => {
            cx.record.on_finish(Box::new(move |_| drop(permit)));
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(r) => {
            state.metrics.count_key_limited(&k.name);
            Err(ApiError::RateLimited {
                limit: r.limit,
                message: r.message,
                retry_after: r.retry_after,
            })
        }
    }
}

/// The 5-hour windows of the accounts `k` may run on (its `accounts:`, else all) that
/// reported one.
pub(crate) fn key_windows(state: &AppState, k: &Key) -> Vec<AccountWindow> {
    state
        .accounts
        .members()
        .iter()
        .filter(|m| {
            k.accounts
                .as_ref()
                .is_none_or(|a| a.iter().any(|n| n == m.name()))
        })
        .filter_map(|m| {
            m.five_hour().map(|(utilization, resets_at)| AccountWindow {
                account: m.name().to_string(),
                utilization,
                resets_at,
            })
        })
        .collect()
}

/// Runs `write` (a key's counters in the shared store) in the store's background writes
/// (`store::write_behind`: bounded in number and by `state.statement_timeout`); one refused
/// because too many are running, or failed, is counted as a fallback.
fn write_behind<W, F>(
    metrics: &Arc<crate::metrics::Metrics>,
    store: &Store,
    what: &'static str,
    write: W,
) where
    W: FnMut(Store) -> F + Send + 'static,
    F: std::future::Future<Output = Result<(), crate::store::StoreError>> + Send + 'static,
{
    let m = Arc::clone(metrics);
    let started = store.write_behind(what, Retry::Never, write, move |r| {
        if r.is_err() {
            m.count_limits_fallback();
        }
    });
    if !started {
        metrics.count_limits_fallback();
    }
}

/// A running request's slot of its key's `concurrent` limit in the shared store (a lease
/// row). The handler gives it back with [`SharedLease::release`] before the answer's last
/// bytes go out (a complete answer before it is sent, a stream before its final events),
/// so the client's next request, on this replica or another, finds the slot free: a
/// client that never has two requests in flight is never refused for `concurrent`.
/// Dropped unreleased (a client that left mid-stream; nobody waits then), it is given back
/// in the background. The row's expiry frees the slot of a replica that died.
pub struct SharedLease {
    store: Store,
    lease: String,
    metrics: Arc<crate::metrics::Metrics>,
    held: bool,
}

impl SharedLease {
    /// Gives the slot back now, waiting at most `state.statement_timeout` (a store that
    /// does not answer is counted as a fallback; the row then expires by itself).
    pub async fn release(mut self) {
        let done = self
            .store
            .bounded(
                "release a key's slot",
                self.store.release_lease(&self.lease),
            )
            .await;
        // Only now: a release cancelled half-way (the client left) is redone on drop.
        self.held = false;
        if done.is_err() {
            self.metrics.count_limits_fallback();
        }
    }
}

impl Drop for SharedLease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let lease = std::mem::take(&mut self.lease);
        write_behind(
            &self.metrics,
            &self.store,
            "release a key's slot",
            move |store| {
                let lease = lease.clone();
                async move { store.release_lease(&lease).await }
            },
        );
    }
}

/// Says (at the first time and then at each power of two) that the store did not answer a
/// limit check, so this replica decides alone.
fn warn_fallback(state: &AppState, e: &crate::store::StoreError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    state.metrics.count_limits_fallback();
    let n = N.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(error = %e, times = n, "state store did not answer a limit check: limits enforced per replica");
    }
}

/// After [`admit`]: the key's limits against the counters of every replica in the state
/// store (`store::counters`). The store's numbers are taken into this replica's counters
/// (the headers show them); when the store does not answer within
/// `state.statement_timeout` the request goes on under this replica's verdict alone (a
/// warning and `ccgate_limits_local_fallback_total` say so).
///
/// Only on a shared store (PostgreSQL): the embedded SQLite store serves one replica, whose
/// own counters ([`admit`]) are the whole truth, and a slot's release there must not wait
/// for a store write at all.
///
/// With a `concurrent` limit, Ok holds the request's [`SharedLease`], which the handler
/// gives back before the answer's last bytes.
pub async fn admit_shared(state: &AppState, cx: &Cx) -> Result<Option<SharedLease>, ApiError> {
    let (Some(Caller(k)), Some(ledger)) = (cx.caller.as_ref(), state.ledger.as_ref()) else {
        return Ok(None);
    };
    if !ledger.store().is_shared() {
        return Ok(None);
    }
    let l = &k.limits;
    let limits = crate::store::KeyLimits {
        concurrent: l.concurrent,
        requests_per_minute: l.requests_per_minute,
        tokens_per_minute: l.tokens_per_minute,
        tokens_per_day: l.tokens_per_day,
    };
    if limits.concurrent.is_none()
        && limits.requests_per_minute.is_none()
        && limits.tokens_per_minute.is_none()
        && limits.tokens_per_day.is_none()
    {
        return Ok(None);
    }
    let store = ledger.store().clone();
    let lease = crate::keys::new_key().1;
    let now = now();
    // A slot whose replica died frees itself once no request could still be running.
    let until = now + state.settings.cli.total_timeout.as_secs() as i64 + 60;
    let verdict = store
        .bounded(
            "check a key's limits",
            store.admit_key(&k.name, limits, &lease, until, now),
        )
        .await;
    match verdict {
        Ok(crate::store::Admission::Admitted(u)) => {
            state.limiter.observe(
                &k.name,
                u.requests_minute,
                u.tokens_minute,
                u.tokens_day,
                now,
            );
            Ok(limits.concurrent.map(|_| SharedLease {
                store,
                lease,
                metrics: Arc::clone(&state.metrics),
                held: true,
            }))
        }
        Ok(crate::store::Admission::Refused(limit)) => {
            state.metrics.count_key_limited(&k.name);
            let to_minute = (60 - now.rem_euclid(60)).max(1) as u64;
            let (message, retry_after) = match limit {
                "concurrent" => (
                    format!(
                        "This key may run {} request(s) at once (across replicas); wait for one to finish.",
                        l.concurrent.unwrap_or(0)
                    ),
                    1,
                ),
                "requests_per_minute" => (
                    format!(
                        "This key's limit of {} requests per minute is reached.",
                        l.requests_per_minute.unwrap_or(0)
                    ),
                    to_minute,
                ),
                "tokens_per_minute" => (
                    format!(
                        "This key's limit of {} tokens per minute is reached.",
                        l.tokens_per_minute.unwrap_or(0)
                    ),
                    to_minute,
                ),
                _ => (
                    format!(
                        "This key's limit of {} tokens per day is reached.",
                        l.tokens_per_day.unwrap_or(0)
                    ),
                    (86_400 - now.rem_euclid(86_400)).max(1) as u64,
                ),
            };
            Err(ApiError::RateLimited {
                limit,
                message,
                retry_after,
            })
        }
        Err(e) => {
            warn_fallback(state, &e);
            Ok(None)
        }
    }
}

/// Records the request when it ends, whatever answered it (the health gate included):
/// ledger row, per-key counters, tokens against the key's limits.
pub fn on_finish(state: &AppState, cx: &Cx, key: Option<Arc<Key>>) {
    let ledger = state.ledger.clone();
    let limiter = Arc::clone(&state.limiter);
    let metrics = Arc::clone(&state.metrics);
    let accounts = Arc::clone(&state.accounts);
    cx.record.on_finish(Box::new(move |s: &RequestSummary| {
        let u = &s.usage;
        let total = u.input_tokens
            + u.output_tokens
            + u.cache_read_input_tokens
            + u.cache_creation_input_tokens;
        // Every answer's tokens count towards its account's 5-hour window (the
        // denominator of every key's `window_share`).
        if let Some(account) = s.account.as_deref().filter(|_| total > 0) {
            let reset = accounts
                .members()
                .iter()
                .find(|m| m.name() == account)
                .and_then(|m| m.five_hour())
                .and_then(|(_, r)| r);
            if let Some(reset) = reset {
                limiter.add_window_tokens(
                    account,
                    key.as_ref().map(|k| k.name.as_str()),
                    total,
                    reset,
                );
            }
        }
        let name = key.as_ref().map(|k| k.name.clone()).unwrap_or_default();
        if let Some(k) = &key {
            limiter.add_tokens(&k.name, total, now());
            if total > 0 && k.limits.any() {
                // Only where replicas read them (as `admit_shared`).
                let shared = ledger.as_ref().map(|l| l.store()).filter(|s| s.is_shared());
                if let Some(store) = shared {
                    let (name, at) = (k.name.clone(), now());
                    write_behind(&metrics, store, "count a key's tokens", move |store| {
                        let name = name.clone();
                        async move { store.add_key_tokens(&name, total, at).await }
                    });
                }
            }
            metrics
                .key_requests
                .get_or_create(&KeyLabels {
                    key: k.name.clone(),
                })
                .inc();
            for (t, n) in [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cache_read", u.cache_read_input_tokens),
                ("cache_creation", u.cache_creation_input_tokens),
            ] {
                if n > 0 {
                    metrics
                        .key_tokens
                        .get_or_create(&KeyTokenLabels {
                            key: k.name.clone(),
                            r#type: t.to_string(),
                        })
                        .inc_by(n);
                }
            }
        }
        if let Some(ledger) = &ledger {
            let dropped_before = ledger.dropped();
            ledger.record(LedgerRow {
                at: now(),
                request_id: s.request_id.clone(),
                key: name,
                model: s.model.clone().unwrap_or_default(),
                served_model: s.served_model.clone().unwrap_or_default(),
                account: s.account.clone().unwrap_or_default(),
                api: s.endpoint.to_string(),
                streamed: s.streamed,
                status: s.status,
                kind: s.kind.clone(),
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_read_tokens: u.cache_read_input_tokens,
                cache_creation_tokens: u.cache_creation_input_tokens,
                duration_ms: (s.duration_secs * 1000.0) as u64,
                ttft_ms: s.first_token_secs.map(|t| (t * 1000.0) as u64),
                round: s.round.map(str::to_string),
            });
            if ledger.dropped() > dropped_before {
                metrics.count_ledger_drop();
            }
        }
    }));
}
