//! Operator endpoints: `/v1/models`, `/v1/models/{id}`, `/health`, `/ready`, `/v1/auth/status`, `/metrics`,
//! and the admin endpoints `/admin/probe`, `/admin/reload`, `/admin/rules`, `/admin/usage`,
//! `/admin/keys`, `/admin/accounts`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::health::Source;
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::http::{flavour_for_request, ApiError};
use crate::reload::Trigger;

/// One model object, with the fields of both APIs (OpenAI: `object`, `created`,
/// `owned_by`; Anthropic: `type`, `display_name`, `created_at`).
fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "anthropic",
           "type": "model", "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
}

/// `GET /v1/models`: the rules' models, then their aliases (each with `alias_for`).
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let rules = state.rules.load();
    let mut data: Vec<Value> = rules.models().iter().map(|m| model_object(m)).collect();
    for (alias, target) in rules.aliases() {
        let mut m = model_object(alias);
        m["alias_for"] = json!(target);
        data.push(m);
    }
    let first = data.first().map(|m| m["id"].clone());
    let last = data.last().map(|m| m["id"].clone());
    Json(json!({"object": "list", "data": data, "has_more": false,
                "first_id": first, "last_id": last}))
}

/// `GET /v1/models/{id}` (`client.models.retrieve(id)` in both SDKs).
pub async fn model(
    State(state): State<AppState>,
    crate::http::RequestId(request_id): crate::http::RequestId,
    ApiPath(id): ApiPath<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let rules = state.rules.load();
    if rules.models().contains(&id) {
        return Json(model_object(&id)).into_response();
    }
    if let Some((alias, target)) = rules
        .aliases()
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(&id))
    {
        let mut m = model_object(alias);
        m["alias_for"] = json!(target);
        return Json(m).into_response();
    }
    let flavour = flavour_for_request("/v1/models", &headers);
    crate::http::static_error(&state, flavour, &request_id, ApiError::UnknownModel(id))
}

/// Liveness: the process serves requests.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn auth_status_body(state: &AppState) -> Value {
    let rules = state.rules.load();
    let probe = rules.probe();
    json!({
        "cli_health": state.health.snapshot(),
        "accounts": state.accounts.status(),
        "rules": {"sha256": rules.sha256(), "kinds": rules.kinds_count()},
        // The start-up check's version and capabilities (null until it has run).
        "cli": state.cli.load().as_ref().map(|r| r.to_json()),
        "probe": {
            "interval_seconds": probe.interval.as_secs_f64(),
            "unhealthy_interval_seconds": probe.unhealthy_interval.as_secs_f64(),
            "timeout_seconds": probe.timeout.as_secs_f64(),
            "model": probe.model,
            "enabled": !probe.interval.is_zero(),
        },
    })
}

pub async fn auth_status(State(state): State<AppState>) -> Json<Value> {
    Json(auth_status_body(&state))
}

/// Readiness: 200 `{"status":"ready"}` while the CLI is healthy, 503
/// `{"status":"not_ready","reason":"<kind>"}` while the gate is closed. Readiness only:
/// `/ready` is open (probes carry no key), so the messages, rules version and probe
/// settings are for the authenticated `/v1/auth/status`.
pub async fn ready(State(state): State<AppState>) -> Response {
    match not_ready_reason(&state) {
        None => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// Why the gateway cannot serve now (None: it can): the closed gate's kind, or, with the
/// gate open, the kind of the earliest cooldown when every configured account is out.
/// `/ready` and the operator page's overview say the same.
pub(crate) fn not_ready_reason(state: &AppState) -> Option<String> {
    match state.health.gate() {
        Some(h) => Some(h.error_kind.unwrap_or_else(|| "cli_unhealthy".into())),
        None if !state.accounts.any_usable() => Some(
            state
                .accounts
                .earliest_cooldown()
                .map_or_else(|| "no_account".into(), |c| c.kind),
        ),
        None => None,
    }
}

pub async fn admin_probe(State(state): State<AppState>) -> Json<Value> {
    state.accounts.probe_all(Source::Probe).await;
    Json(auth_status_body(&state))
}

pub async fn admin_reload(State(state): State<AppState>) -> Response {
    let attempt = state.reloader.reload(Trigger::Admin).await;
    let status = if attempt.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (
        status,
        Json(json!({"reload": attempt, "rules": state.reloader.status()})),
    )
        .into_response()
}

pub async fn admin_rules(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.reloader.status()))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The query of `GET /admin/usage`.
#[derive(Debug, serde::Deserialize)]
pub struct UsageParams {
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// What an admin query of the usage ledger gets on a gateway without a state store.
pub(crate) fn no_store() -> Response {
    admin_error(
        StatusCode::NOT_FOUND,
        "this gateway runs without a state store".into(),
    )
}

pub(crate) fn admin_error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"type": "invalid_request_error", "message": message}})),
    )
        .into_response()
}

/// `GET /admin/usage?group_by=key,model,account,api,day|hour&from=…&to=…&format=csv`: the
/// usage ledger summed per group (`from` / `to`: RFC 3339, a date, Unix seconds, or a span
/// back from now such as `24h`; default: everything kept).
pub async fn admin_usage(
    State(state): State<AppState>,
    axum::extract::Query(p): axum::extract::Query<UsageParams>,
) -> Response {
    use crate::store::{parse_group_by, parse_range, usage_csv};
    let Some(ledger) = &state.ledger else {
        return no_store();
    };
    let now = crate::clock::unix_now() as i64;
    let group_by = match parse_group_by(p.group_by.as_deref().unwrap_or("key")) {
        Ok(g) => g,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    let (from, to) = match parse_range(p.from.as_deref(), p.to.as_deref(), now) {
        Ok(r) => r,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("format: `{other}` is not json or csv"),
            )
        }
    };
    // Read what this gateway has answered so far.
    ledger.flush().await;
    match ledger.store().usage(&group_by, from, to).await {
        Ok(rows) if csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage_csv(&group_by, &rows),
        )
            .into_response(),
        Ok(rows) => Json(json!({
            "from": crate::clock::rfc3339_of_unix(from.max(0) as u64),
            "to": crate::clock::rfc3339_of_unix(to.max(0) as u64),
            "group_by": group_by.iter().map(|g| g.name()).collect::<Vec<_>>(),
            "rows": rows,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "usage query failed");
            admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the usage ledger cannot be read right now".into(),
            )
        }
    }
}

/// `GET /admin/accounts`: every account's health, cooldown, plan windows (with their
/// source and the last `get_usage` read), headroom and `extra_usage` policy; no secrets.
pub async fn admin_accounts(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "configured": state.accounts.is_configured(),
        "windows_refresh_seconds": state.settings.windows_refresh.map(|d| d.as_secs_f64()),
        "accounts": state.accounts.admin_status(),
    }))
}

/// `GET /admin/keys`: the keys in force (names, roles, allow-lists, limits, expiry, what
/// each used of its limits now, its share of the accounts' 5-hour windows); never a key or
/// a digest.
pub async fn admin_keys(State(state): State<AppState>) -> Json<Value> {
    let keys = state.keys.load();
    let now = crate::clock::unix_now() as i64;
    let list: Vec<Value> = keys
        .keys()
        .iter()
        .map(|k| {
            let (in_flight, requests_minute, tokens_minute, tokens_day) =
                state.limiter.usage(&k.name, now);
            // What `limits.window_share` is compared with: the key's share of each
            // reporting account's 5-hour window; the key is refused when the smallest
            // of them reaches its limit.
            let shares: serde_json::Map<String, Value> = crate::http::keyed::key_windows(&state, k)
                .iter()
                .map(|w| {
                    let share = state.limiter.window_share(&k.name, w, now as u64);
                    (
                        w.account.clone(),
                        json!((share * 10_000.0).round() / 10_000.0),
                    )
                })
                .collect();
            let least = shares
                .values()
                .filter_map(Value::as_f64)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
            json!({
                "name": k.name,
                "role": k.role,
                "models": k.models,
                "accounts": k.accounts,
                "limits": k.limits,
                "expires": k.expires.map(|e| crate::clock::rfc3339_of_unix(e.max(0) as u64)),
                "usage": {
                    "in_flight": in_flight,
                    "requests_this_minute": requests_minute,
                    "tokens_this_minute": tokens_minute,
                    "tokens_today": tokens_day,
                    "window_share": least,
                    "window_share_by_account": shares,
                },
            })
        })
        .collect();
    Json(json!({"source": keys.source(), "sha256": keys.sha256(), "keys": list}))
}
