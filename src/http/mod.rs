//! The HTTP surface: `router(state)` wires the API endpoints, the operator endpoints and the
//! middleware (request ids, API keys, body limit, CORS). Handlers live in `openai`,
//! `anthropic` and `ops`; every error goes through `errors`.

pub mod anthropic;
pub mod body;
pub mod errors;
pub mod openai;
pub mod ops;
pub mod pipeline;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::http::errors::{ApiError, ErrorContext};
use crate::rules::Flavour;
use crate::state::AppState;

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

pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
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
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
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
    } else if path.starts_with("/v1/chat/completions") {
        Flavour::Openai
    } else if headers.contains_key("anthropic-version") {
        Flavour::Anthropic
    } else {
        Flavour::Openai
    }
}

/// Renders a static error (no verdict) in the request's flavour.
pub fn static_error(state: &AppState, req: &Request, request_id: &str, err: ApiError) -> Response {
    let rules = state.rules.load();
    let health = state.health.snapshot();
    err.into_response(&ErrorContext {
        flavour: flavour_for_request(req.uri().path(), req.headers()),
        request_id,
        model: None,
        rules: &rules,
        health: &health,
    })
}

/// Constant-time comparison of the presented key with every configured key.
fn key_ok(state: &AppState, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(p) = presented else { return false };
    let mut ok = subtle::Choice::from(0);
    for k in &state.settings.api_keys {
        ok |= k.as_bytes().ct_eq(p.as_bytes());
    }
    ok.into()
}

fn presented_key(req: &Request) -> Option<&str> {
    let h = req.headers();
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = h.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

async fn api_key_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.settings.api_keys.is_empty() || key_ok(&state, presented_key(&req)) {
        return next.run(req).await;
    }
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(new_request_id);
    static_error(&state, &req, &id, ApiError::Unauthorized)
}

async fn fallback(
    State(state): State<AppState>,
    RequestId(id): RequestId,
    req: Request,
) -> Response {
    static_error(&state, &req, &id, ApiError::NotFound)
}

async fn method_not_allowed(
    State(state): State<AppState>,
    RequestId(id): RequestId,
    req: Request,
) -> Response {
    static_error(&state, &req, &id, ApiError::MethodNotAllowed)
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).fallback(method_not_allowed),
        )
        .route(
            "/v1/messages",
            post(anthropic::messages).fallback(method_not_allowed),
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
        .route_layer(middleware::from_fn_with_state(state.clone(), api_key_layer));
    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics));
    let mut app = protected
        .merge(open)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(state.settings.request_body_limit));
    if let Some(cors) = cors_layer(&state.settings.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn(request_id_layer))
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
            .expose_headers([axum::http::HeaderName::from_static("x-request-id")]),
    )
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A content block / part as both APIs write it: `{"type": "text", "text": "…"}`, an
/// Anthropic `image` / `document` block (`{"type": …, "source": {…}}`), or an OpenAI
/// `image_url` / `file` part.
#[derive(Debug, serde::Deserialize)]
pub struct TextBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<serde_json::Value>,
    #[serde(default)]
    image_url: Option<serde_json::Value>,
    #[serde(default)]
    file: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    context: Option<String>,
}

/// Media types the Messages API accepts for images.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Joins text blocks with newlines; any other block type is a 400 naming its path
/// (`path` is the JSON path of the list, e.g. `messages[2].content`).
pub fn join_text_blocks(blocks: &[TextBlock], path: &str) -> Result<String, ApiError> {
    join_content(blocks, path, None)
}

/// Like [`join_text_blocks`], but images and documents (PDF, plain text) are allowed when
/// `attachments` is given: each becomes an Anthropic content block in `attachments`
/// (passed to the CLI with the prompt) and an `[image N]` / `[document N]` marker in the
/// text where it stood, so the flattened transcript keeps its place.
pub fn join_content(
    blocks: &[TextBlock],
    path: &str,
    mut attachments: Option<&mut Vec<serde_json::Value>>,
) -> Result<String, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.iter().enumerate() {
        let at = |field: &str| format!("{path}[{j}]{field}");
        let attachment = match (b.kind.as_str(), &b.text) {
            ("text", Some(t)) => {
                out.push(t.clone());
                continue;
            }
            ("text", None) => {
                return Err(ApiError::invalid_param(
                    "text block is missing `text`",
                    &at(".text"),
                ))
            }
            ("image" | "image_url" | "document" | "file", _) if attachments.is_none() => {
                return Err(ApiError::invalid_param(
                    "images and documents are only supported in user messages",
                    &at(".type"),
                ))
            }
            ("image", _) => anthropic_image(b.source.as_ref(), &at(".source"))?,
            ("image_url", _) => openai_image(b.image_url.as_ref(), &at(".image_url"))?,
            ("document", _) => anthropic_document(b, &at(".source"))?,
            ("file", _) => openai_file(b.file.as_ref(), &at(".file"))?,
            (other, _) => {
                return Err(ApiError::invalid_param(
                    format!(
                    "content type `{other}` is not supported; only text, images and documents are"
                ),
                    &at(".type"),
                ))
            }
        };
        if let Some(list) = attachments.as_deref_mut() {
            let kind = attachment["type"].as_str().unwrap_or("image").to_string();
            list.push(attachment);
            let n = list.iter().filter(|a| a["type"] == kind.as_str()).count();
            out.push(format!("[{kind} {n}]"));
        }
    }
    Ok(out.join("\n"))
}

fn plausible_base64(data: &str) -> bool {
    !data.is_empty()
        && data
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

fn base64_source(
    media_type: &str,
    allowed: &[&str],
    data: &str,
    path: &str,
) -> Result<serde_json::Value, ApiError> {
    if !allowed.contains(&media_type) {
        return Err(ApiError::invalid_param(
            format!(
                "media type `{media_type}` is not supported here; use one of {}",
                allowed.join(", ")
            ),
            path,
        ));
    }
    if !plausible_base64(data) {
        return Err(ApiError::invalid_param(
            "data must be non-empty base64",
            path,
        ));
    }
    Ok(serde_json::json!({"type": "base64", "media_type": media_type, "data": data}))
}

fn url_source(url: &str, path: &str) -> Result<serde_json::Value, ApiError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::invalid_param(
            "URL must be http(s) or a base64 data: URL",
            path,
        ));
    }
    Ok(serde_json::json!({"type": "url", "url": url}))
}

fn str_field<'a>(v: Option<&'a serde_json::Value>, key: &str) -> &'a str {
    v.and_then(|s| s.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
}

/// An Anthropic `image` block's `source` (`base64` or `url`), validated.
fn anthropic_image(
    source: Option<&serde_json::Value>,
    path: &str,
) -> Result<serde_json::Value, ApiError> {
    let source = match str_field(source, "type") {
        "base64" => base64_source(
            str_field(source, "media_type"),
            &IMAGE_MEDIA_TYPES,
            str_field(source, "data"),
            path,
        )?,
        "url" => url_source(str_field(source, "url"), path)?,
        _ => {
            return Err(ApiError::invalid_param(
                "image `source.type` must be `base64` or `url`",
                path,
            ))
        }
    };
    Ok(serde_json::json!({"type": "image", "source": source}))
}

/// An Anthropic `document` block: a base64 PDF, plain text, or a PDF URL (with its
/// optional `title` and `context`).
fn anthropic_document(b: &TextBlock, path: &str) -> Result<serde_json::Value, ApiError> {
    let source = b.source.as_ref();
    let source = match str_field(source, "type") {
        "base64" => base64_source(
            str_field(source, "media_type"),
            &["application/pdf"],
            str_field(source, "data"),
            path,
        )?,
        "text" => {
            let data = source
                .and_then(|s| s.get("data"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| ApiError::invalid_param("text document needs `data`", path))?;
            serde_json::json!({"type": "text", "media_type": "text/plain", "data": data})
        }
        "url" => url_source(str_field(source, "url"), path)?,
        _ => {
            return Err(ApiError::invalid_param(
                "document `source.type` must be `base64` (PDF), `text` or `url`",
                path,
            ))
        }
    };
    let mut block = serde_json::json!({"type": "document", "source": source});
    if let Some(t) = &b.title {
        block["title"] = t.clone().into();
    }
    if let Some(c) = &b.context {
        block["context"] = c.clone().into();
    }
    Ok(block)
}

/// An OpenAI `image_url` part: a `data:<type>;base64,<data>` URL or an http(s) URL.
fn openai_image(
    image_url: Option<&serde_json::Value>,
    path: &str,
) -> Result<serde_json::Value, ApiError> {
    // Both `{"url": "…"}` and the older bare string.
    let url = image_url
        .and_then(|v| v.get("url").or(Some(v)))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let source = match url.strip_prefix("data:") {
        Some(rest) => {
            let (media_type, data) = rest
                .split_once(";base64,")
                .ok_or_else(|| ApiError::invalid_param("data: URL must be base64", path))?;
            base64_source(media_type, &IMAGE_MEDIA_TYPES, data, path)?
        }
        None => url_source(url, path)?,
    };
    Ok(serde_json::json!({"type": "image", "source": source}))
}

/// An OpenAI `file` part with inline `file_data` (a base64 PDF data: URL); uploaded
/// `file_id`s do not exist here.
fn openai_file(
    file: Option<&serde_json::Value>,
    path: &str,
) -> Result<serde_json::Value, ApiError> {
    if !str_field(file, "file_id").is_empty() {
        return Err(ApiError::invalid_param(
            "`file_id` is not supported (there is no file store); send the file inline as `file_data`",
            path,
        ));
    }
    let data_url = str_field(file, "file_data");
    let (media_type, data) = data_url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            ApiError::invalid_param(
                "`file_data` must be a data: URL (data:application/pdf;base64,…)",
                path,
            )
        })?;
    let source = base64_source(media_type, &["application/pdf"], data, path)?;
    let mut block = serde_json::json!({"type": "document", "source": source});
    let name = str_field(file, "filename");
    if !name.is_empty() {
        block["title"] = name.into();
    }
    Ok(block)
}

/// Flattens a conversation into the one prompt the CLI receives on stdin. A single user
/// message is passed as is; earlier turns are given as a transcript before the last one.
pub fn transcript(turns: &[(&str, String)]) -> Result<String, ApiError> {
    let Some((last_role, last)) = turns.last() else {
        return Err(ApiError::invalid_param(
            "at least one user or assistant message is required",
            "messages",
        ));
    };
    if *last_role != "user" {
        return Err(ApiError::invalid_param(
            "the last message must have role `user`",
            "messages",
        ));
    }
    if turns.len() == 1 {
        return Ok(last.clone());
    }
    // The tags carry a per-request nonce so a message that contains `</conversation>` or
    // `</User>` cannot close the wrapper and pose as a later turn.
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let mut out =
        format!("Earlier turns of this conversation, for context:\n<conversation-{nonce}>\n");
    for (role, text) in &turns[..turns.len() - 1] {
        let who = if *role == "user" { "User" } else { "Assistant" };
        out.push_str(&format!("<{who}-{nonce}>\n{text}\n</{who}-{nonce}>\n"));
    }
    out.push_str(&format!("</conversation-{nonce}>\n\n"));
    out.push_str(last);
    Ok(out)
}
