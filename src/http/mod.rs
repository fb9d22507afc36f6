//! The HTTP surface: `router(state)` wires the API endpoints, the operator endpoints and the
//! middleware (request ids, Host and Origin checks, API keys, JSON-only POSTs, body limit
//! and deadline, CORS). Every API endpoint is
//! `handler::handle` over one API's translation (`openai`, `anthropic`, `responses`); `ops`
//! holds the operator endpoints, `admin` the operator page and its JSON; every error goes
//! through `errors`.

pub mod admin;
pub mod anthropic;
pub mod bounded;
pub mod content;
pub mod count_tokens;
pub mod edge;
pub mod errors;
pub mod extract;
pub mod gate;
pub mod handler;
pub mod keyed;
pub mod openai;
pub mod ops;
pub mod responses;
pub mod state;
pub mod threads;
pub mod web;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::http::errors::{ApiError, ErrorContext};
use crate::http::state::AppState;
use crate::rules::Flavour;

/// The request id of this request (from `x-request-id` or generated), as an extractor.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(new_request_id())))
    }
}

/// A new request id: `req_` and 32 hex digits, unique in this process (a counter) and
/// across processes (a random seed), without a random-number syscall per request.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SplitMix64 of the counter: ids do not look sequential.
    let mut z = n.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("req_{seed:016x}{:016x}", z ^ (z >> 31))
}

/// A client-sent id is echoed only if it is short, visible ASCII (it ends up in headers,
/// logs and bodies).
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

async fn request_id_layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(acceptable_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    // Anthropic's SDKs read `request-id` (what the real API sends), OpenAI's `x-request-id`.
    let anthropic = flavour_for_request(req.uri().path(), req.headers()) == Flavour::Anthropic;
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        if anthropic {
            resp.headers_mut().insert("request-id", v.clone());
        }
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Which error shape a request gets: Anthropic's for `/v1/messages…`, OpenAI's for
/// `/v1/chat/completions`; elsewhere (`/v1/models`, unknown paths) Anthropic's when the
/// client sent `anthropic-version` (every Anthropic SDK does), else OpenAI's.
pub fn flavour_for_request(path: &str, headers: &axum::http::HeaderMap) -> Flavour {
    if path.starts_with("/v1/messages") {
        Flavour::Anthropic
    } else if path.starts_with("/v1/chat/completions") || path.starts_with("/v1/responses") {
        Flavour::Openai
    } else if headers.contains_key("anthropic-version") {
        Flavour::Anthropic
    } else {
        Flavour::Openai
    }
}

/// Renders a static error (no verdict) in `flavour`.
pub fn static_error(
    state: &AppState,
    flavour: Flavour,
    request_id: &str,
    err: ApiError,
) -> Response {
    use axum::response::IntoResponse;
    let rules = state.rules.load();
    let health = state.health.snapshot();
    err.render(&ErrorContext {
        flavour,
        request_id,
        model: None,
        rules: &rules,
        health: &health,
    })
    .into_response()
}

/// [`static_error`] in the flavour of `req`.
pub(crate) fn static_error_for(
    state: &AppState,
    req: &Request,
    request_id: &str,
    err: ApiError,
) -> Response {
    let flavour = flavour_for_request(req.uri().path(), req.headers());
    static_error(state, flavour, request_id, err)
}

/// The API key a request presents (`x-api-key`, or `Authorization: Bearer`).
pub(crate) fn presented_key(req: &Request) -> Option<&str> {
    let h = req.headers();
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = h.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Unknown endpoints are answered, logged and counted (`endpoint="unknown"`), so operators
/// see misconfigured clients (`/v1/completions`, a doubled `/v1/v1/…`).
async fn fallback(
    State(state): State<AppState>,
    RequestId(id): RequestId,
    req: Request,
) -> Response {
    let flavour = flavour_for_request(req.uri().path(), req.headers());
    let cx = extract::Cx::new(&state, flavour, "unknown", id);
    cx.record
        .set_target(req.method().as_str(), req.uri().path());
    cx.error(ApiError::NotFound)
}

async fn method_not_allowed(
    State(state): State<AppState>,
    RequestId(id): RequestId,
    req: Request,
) -> Response {
    static_error_for(&state, &req, &id, ApiError::MethodNotAllowed)
}

async fn hello() -> axum::http::StatusCode {
    axum::http::StatusCode::OK
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route(
            "/v1/chat/completions",
            post(handler::handle::<openai::ChatCompletions>).fallback(method_not_allowed),
        )
        .route(
            "/v1/responses",
            post(handler::handle::<responses::Responses>).fallback(method_not_allowed),
        )
        .route(
            "/v1/messages",
            post(handler::handle::<anthropic::Messages>).fallback(method_not_allowed),
        )
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens::count_tokens).fallback(method_not_allowed),
        )
        .route("/v1/models", get(ops::models).fallback(method_not_allowed))
        .route(
            "/v1/models/{id}",
            get(ops::model).fallback(method_not_allowed),
        )
        .route(
            "/v1/auth/status",
            get(ops::auth_status).fallback(method_not_allowed),
        )
        .route(
            "/admin/probe",
            post(ops::admin_probe).fallback(method_not_allowed),
        )
        .route(
            "/admin/reload",
            post(ops::admin_reload).fallback(method_not_allowed),
        )
        .route(
            "/admin/rules",
            get(ops::admin_rules).fallback(method_not_allowed),
        )
        .route(
            "/admin/usage",
            get(ops::admin_usage).fallback(method_not_allowed),
        )
        .route(
            "/admin/keys",
            get(ops::admin_keys).fallback(method_not_allowed),
        )
        .route(
            "/admin/accounts",
            get(ops::admin_accounts).fallback(method_not_allowed),
        )
        .route(
            "/admin/overview",
            get(admin::overview).fallback(method_not_allowed),
        )
        .route(
            "/admin/classify",
            post(admin::classify).fallback(method_not_allowed),
        )
        .route(
            "/admin/failures",
            get(admin::failures).fallback(method_not_allowed),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            keyed::key_layer,
        ));
    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        // Claude Code as a client sends `HEAD /api/hello` to its base URL at start (a
        // connectivity check; measured on 2.1.332): answered like the API does, not 404.
        .route("/api/hello", get(hello))
        // The operator page and its assets hold no data: the page asks for the admin key.
        .route("/admin", get(admin::page_redirect))
        .route("/admin/", get(admin::page))
        .route("/admin/assets/app.js", get(admin::script))
        .route("/admin/assets/app.css", get(admin::style));
    let mut app = protected
        .merge(open)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(state.settings.request_body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::body_deadline_layer,
        ));
    if let Some(cors) = cors_layer(&state.settings.cors_origins) {
        app = app.layer(cors);
    }
    // The Host and Origin checks come before CORS, so a refused origin's preflight is a
    // 403 too.
    app.layer(middleware::from_fn_with_state(
        state.clone(),
        edge::guard_layer,
    ))
    .layer(middleware::from_fn(request_id_layer))
    .with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(Any)
            .expose_headers([
                axum::http::HeaderName::from_static("x-request-id"),
                axum::http::HeaderName::from_static("request-id"),
            ]),
    )
}

pub use crate::clock::unix_now;
