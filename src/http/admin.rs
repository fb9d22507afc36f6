//! The operator page and the admin JSON it reads.
//!
//! `GET /admin/` is one HTML page with its script and style (`admin_page/`, embedded with
//! `include_str!`: no CDN, no build step, works offline). The page and its assets hold no
//! data, so they are served without a key; the page asks for an admin key, keeps it in the
//! tab (`sessionStorage`) and sends it as `Authorization: Bearer` with every read of the
//! admin endpoints. No cookie carries it, so another site cannot make a browser send it
//! (the edge checks refuse foreign `Origin`s and non-JSON POSTs as well): the page's POSTs
//! are CSRF-safe by construction. A strict `Content-Security-Policy` allows only the page's
//! own script, style and same-origin fetches.
//!
//! The JSON endpoints (behind the key check with the other `/admin/*` routes):
//! `GET /admin/overview` (gateway and account health, live processes, the rules in force),
//! `GET /admin/failures` (failed requests per kind over time and the latest ones, from the
//! usage ledger) and `POST /admin/classify` (the classify playground: the same parser and
//! verdict document as `ccgate classify`, for both API shapes). Usage and keys come from
//! `GET /admin/usage` and `GET /admin/keys` (`ops`).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::capture::{classify_json, parse_input, Outcome};
use crate::http::extract::parse_json_bytes;
use crate::http::state::AppState;
use crate::http::{static_error, ApiError, RequestId};
use crate::rules::{FailureFacts, Flavour};

const INDEX_HTML: &str = include_str!("admin_page/index.html");
const APP_JS: &str = include_str!("admin_page/app.js");
const APP_CSS: &str = include_str!("admin_page/app.css");

/// What the page may load and talk to: its own script, style and endpoints, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

/// `GET /admin/`: the page (a login form until an admin key is given; no data in it).
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /admin`: to the page, so relative asset paths resolve.
pub async fn page_redirect() -> Redirect {
    Redirect::permanent("/admin/")
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /admin/overview`: what the page's top half shows, in one read.
pub async fn overview(State(state): State<AppState>) -> Json<Value> {
    let rules = state.rules.load();
    let stats = state.backend.stats().snapshot();
    let cli = state.backend.settings();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": crate::clock::unix_now(),
        "gateway": {
            "ready": crate::http::ops::not_ready_reason(&state).is_none(),
            "cli_health": state.health.snapshot(),
        },
        "accounts": state.accounts.status(),
        "processes": {
            "in_flight": stats.in_flight,
            // The live processes serving a request now: the rest wait parked.
            "serving": stats
                .in_flight
                .saturating_sub(stats.pool_idle + stats.kept_idle + stats.held_runs),
            "queued": stats.queued,
            "max_concurrent": cli.max_concurrent,
            "queue_size": cli.queue_size,
            "prewarmed": stats.pool_idle,
            "kept": stats.kept_idle,
            "held": stats.held_runs,
            "spawned_total": stats.spawned_total,
        },
        // The page's optional sections, each backed by an admin endpoint of its own: usage
        // and failures read the usage ledger, keys the keys in force.
        "sections": {
            "usage": state.ledger.is_some(),
            "failures": state.ledger.is_some(),
            "keys": !state.keys.load().is_empty(),
        },
        "rules": {
            "sha256": rules.sha256(),
            "reload": state.reloader.status(),
            "kinds": rules.describe(),
        },
    }))
}

/// The playground's input: `input` is what `ccgate classify` reads (a stream-json capture
/// with `#stderr:` / `#exit:` … directives, or a YAML/JSON facts document); `facts` is a
/// facts document as JSON. Exactly one of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    facts: Option<FailureFacts>,
}

/// `POST /admin/classify`: the verdict the rules in force give a failure, with the status,
/// headers and body each API would get.
pub async fn classify(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    body: axum::body::Bytes,
) -> Response {
    let bad = |message: String| {
        static_error(
            &state,
            Flavour::Openai,
            &request_id,
            ApiError::invalid(message),
        )
    };
    let req: ClassifyRequest = match parse_json_bytes(&body) {
        Ok(r) => r,
        Err(e) => return static_error(&state, Flavour::Openai, &request_id, e),
    };
    let outcome = match (req.input, req.facts) {
        (Some(text), None) => match parse_input(&text) {
            Ok(o) => o,
            Err(e) => return bad(e),
        },
        (None, Some(facts)) => Outcome::Failure(Box::new(facts)),
        _ => {
            return bad("give exactly one of `input` (a capture or facts text) and `facts`".into())
        }
    };
    let rules = state.rules.load();
    Json(json!({
        "rules_sha256": rules.sha256(),
        "openai": classify_json(&rules, &outcome, Flavour::Openai),
        "anthropic": classify_json(&rules, &outcome, Flavour::Anthropic),
    }))
    .into_response()
}

/// The query of `GET /admin/failures`.
#[derive(Debug, Deserialize)]
pub struct FailuresParams {
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The most failed requests `GET /admin/failures` lists.
const FAILURES_LIMIT_MAX: u32 = 200;

/// `GET /admin/failures?bucket=hour|day&from=…&to=…&limit=N`: failed requests (status 400
/// or more) per kind and bucket over the range, and the `limit` (default 20, at most 200)
/// latest ones: time, request id, key name, API, model, account, kind, status.
pub async fn failures(
    State(state): State<AppState>,
    axum::extract::Query(p): axum::extract::Query<FailuresParams>,
) -> Response {
    use crate::http::ops::{admin_error, no_store};
    use crate::store::{parse_range, GroupBy};
    let Some(ledger) = &state.ledger else {
        return no_store();
    };
    let bucket = match p.bucket.as_deref().unwrap_or("hour") {
        "hour" => GroupBy::Hour,
        "day" => GroupBy::Day,
        other => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("bucket: `{other}` is not hour or day"),
            )
        }
    };
    let limit = p.limit.unwrap_or(20);
    if limit > FAILURES_LIMIT_MAX {
        return admin_error(
            StatusCode::BAD_REQUEST,
            format!("limit: at most {FAILURES_LIMIT_MAX}"),
        );
    }
    let now = crate::clock::unix_now() as i64;
    let (from, to) = match parse_range(p.from.as_deref(), p.to.as_deref(), now) {
        Ok(r) => r,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e),
    };
    ledger.flush().await;
    let store = ledger.store();
    match tokio::try_join!(
        store.failures(bucket, from, to),
        store.latest_failures(limit)
    ) {
        Ok((by_kind, latest)) => Json(json!({
            "bucket": bucket.name(),
            "from": crate::clock::rfc3339_of_unix(from.max(0) as u64),
            "to": crate::clock::rfc3339_of_unix(to.max(0) as u64),
            "by_kind": by_kind,
            "latest": latest,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "failures query failed");
            admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the usage ledger cannot be read right now".into(),
            )
        }
    }
}
