//! The ONE place an error becomes an HTTP status + body. Gateway errors (bad JSON, missing
//! fields, body too large, missing API key) have fixed shapes per API flavour; CLI failures
//! carry a rules [`Verdict`] and are rendered from the rule templates. A [`RenderedError`]
//! is an error already in its request's flavour and implements `IntoResponse`.
//!
//! Gateway-side errors have kinds of their own in logs and metrics (`bad_request`,
//! `body_too_large`, `unknown_endpoint`, …), never the names of the rules' kinds, which
//! are upstream failures.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::backend::present::PresentError;
use crate::health::CliHealth;
use crate::rules::{Flavour, Rules, TemplateValues, Verdict};

/// Every error a handler can return.
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed JSON, wrong types, missing or unsupported fields.
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// 413: body over `request_body_limit`.
    TooLarge { limit: usize },
    /// 401: missing or wrong gateway API key (not the CLI's login).
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 404: `GET /v1/models/{id}` for a model ccgate does not offer.
    UnknownModel(String),
    /// 405: route exists, method doesn't.
    MethodNotAllowed,
    /// 415: a POST whose `Content-Type` is not `application/json`.
    UnsupportedMediaType,
    /// 403: a browser request from an origin neither same-origin nor in `cors_origins`.
    OriginNotAllowed,
    /// 403: a `Host` name the gateway does not serve (`allowed_hosts`).
    HostNotAllowed,
    /// 408: the request body did not arrive within `http.body_timeout`.
    BodyTimeout,
    /// 400: a Responses `previous_response_id` this replica does not hold for this API
    /// key (never stored, `store: false`, expired, evicted, or another key's).
    PreviousResponseNotFound(String),
    /// 400: a Responses `item_reference` (or an Anthropic thread) naming what this replica
    /// does not hold for this API key: the same answer as an unknown
    /// `previous_response_id`, naming the field (`param`) and the id.
    StoredNotFound {
        what: &'static str,
        id: String,
        param: String,
    },
    /// 401: the API key matched a key of the keys file whose `expires` has passed.
    KeyExpired,
    /// 403: the key may not do this (`admin_key_required`, `model_not_allowed`).
    Forbidden { code: &'static str, message: String },
    /// 429: one of the key's limits (`limit`: its name) refuses the request for
    /// `retry_after` seconds.
    RateLimited {
        limit: &'static str,
        message: String,
        retry_after: u64,
    },
    /// Anthropic Threads: `thread_not_found` (404: no stored thread for
    /// `previous_message_id`) or `thread_unsupported_request` (400), with
    /// `error.details.error_code`, which the SDKs read to resend the full history.
    Thread { code: &'static str, message: String },
    /// A CLI failure (or the health gate) classified by the rules.
    Verdict(Box<Verdict>),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(message: impl Into<String>, param: &str) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// The kind label used in logs and metrics.
    pub fn kind(&self) -> &str {
        match self {
            ApiError::InvalidRequest { .. } => "bad_request",
            ApiError::TooLarge { .. } => "body_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "unknown_endpoint",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::HostNotAllowed => "host_not_allowed",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::PreviousResponseNotFound(_) | ApiError::StoredNotFound { .. } => {
                "previous_response_not_found"
            }
            ApiError::KeyExpired => "key_expired",
            ApiError::Forbidden { code, .. } => code,
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Thread { code, .. } if *code == "thread_not_found" => {
                "previous_response_not_found"
            }
            ApiError::Thread { .. } => "bad_request",
            ApiError::Verdict(v) => &v.kind,
        }
    }
}

/// The kinds of gateway-side errors (never a rules kind's name).
pub const GATEWAY_KINDS: [&str; 15] = [
    "key_expired",
    "admin_key_required",
    "model_not_allowed",
    "rate_limited",
    "bad_request",
    "body_too_large",
    "unauthorized",
    "unknown_endpoint",
    "unknown_model",
    "method_not_allowed",
    "unsupported_media_type",
    "origin_not_allowed",
    "host_not_allowed",
    "body_timeout",
    "previous_response_not_found",
];

impl From<crate::engine::TurnError> for ApiError {
    fn from(e: crate::engine::TurnError) -> ApiError {
        match e {
            crate::engine::TurnError::Present(p) => {
                // Both APIs keep one conversation message per request message, in order.
                let param = match &p {
                    PresentError::Unsupported { message, index, .. } => {
                        format!("messages[{message}].content[{index}].type")
                    }
                    PresentError::Shape(_) => "messages".to_string(),
                };
                ApiError::invalid_param(p.to_string(), &param)
            }
            crate::engine::TurnError::Invalid(e) => {
                // The APIs check these first, in their own words; this is the backstop.
                let param = match &e {
                    crate::engine::TurnFieldError::Model(_) => "model",
                    crate::engine::TurnFieldError::Stop(_) => "stop",
                    crate::engine::TurnFieldError::Tools(_) => "tools",
                };
                ApiError::invalid_param(format!("{param}: {e}"), param)
            }
            crate::engine::TurnError::Verdict(v) => ApiError::Verdict(v),
        }
    }
}

impl From<Box<Verdict>> for ApiError {
    fn from(v: Box<Verdict>) -> ApiError {
        ApiError::Verdict(v)
    }
}

/// What rendering an error needs besides the error itself.
pub struct ErrorContext<'a> {
    pub flavour: Flavour,
    pub request_id: &'a str,
    pub model: Option<&'a str>,
    pub rules: &'a Rules,
    pub health: &'a CliHealth,
}

/// Status, extra headers and JSON body of an error.
pub struct RenderedError {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl ApiError {
    /// Renders for one flavour. Static errors use the APIs' documented shapes.
    pub fn render(&self, cx: &ErrorContext<'_>) -> RenderedError {
        let (status, etype, code, message, param) = match self {
            ApiError::InvalidRequest { message, param } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message.clone(),
                param.clone(),
            ),
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                match cx.flavour {
                    Flavour::Openai => "invalid_request_error",
                    Flavour::Anthropic => "request_too_large",
                },
                "request_too_large",
                format!(
                    "Request body exceeds the gateway's limit of {limit} bytes (its operator can raise request_body_limit)."
                ),
                None,
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "Missing or invalid API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`."
                    .to_string(),
                None,
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                match cx.flavour {
                    Flavour::Openai => "invalid_request_error",
                    Flavour::Anthropic => "not_found_error",
                },
                "not_found",
                "Unknown endpoint.".to_string(),
                None,
            ),
            ApiError::UnknownModel(id) => (
                StatusCode::NOT_FOUND,
                match cx.flavour {
                    Flavour::Openai => "invalid_request_error",
                    Flavour::Anthropic => "not_found_error",
                },
                "model_not_found",
                format!("The model `{id}` does not exist or is not offered by this gateway."),
                Some("model".to_string()),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                "Method not allowed for this endpoint.".to_string(),
                None,
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
                "POST bodies must be sent with `Content-Type: application/json`.".to_string(),
                None,
            ),
            ApiError::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "origin_not_allowed",
                "Requests from this web origin are not allowed (the gateway's operator can add it to cors_origins)."
                    .to_string(),
                None,
            ),
            ApiError::HostNotAllowed => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "host_not_allowed",
                "This gateway does not serve this host name (its operator can add it to allowed_hosts)."
                    .to_string(),
                None,
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                "The request body did not arrive in time (the gateway's operator can raise http.body_timeout)."
                    .to_string(),
                None,
            ),
            ApiError::PreviousResponseNotFound(id) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "previous_response_not_found",
                format!(
                    "Previous response with id '{id}' not found. This gateway keeps responses for a limited time (shared by replicas only with a shared state store); send the full conversation as `input` instead."
                ),
                Some("previous_response_id".to_string()),
            ),
            ApiError::StoredNotFound { what, id, param } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "previous_response_not_found",
                format!(
                    "{what} with id '{id}' not found. This gateway keeps responses for a limited time (shared by replicas only with a shared state store); send the full conversation as `input` instead."
                ),
                Some(param.clone()),
            ),
            ApiError::KeyExpired => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "key_expired",
                "This API key has expired (its operator can issue a new one).".to_string(),
                None,
            ),
            ApiError::Forbidden { code, message } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                *code,
                message.clone(),
                None,
            ),
            ApiError::RateLimited { limit, message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                match cx.flavour {
                    Flavour::Anthropic => "rate_limit_error",
                    Flavour::Openai if limit.starts_with("tokens") || *limit == "window_share" => "tokens",
                    Flavour::Openai => "requests",
                },
                "rate_limit_exceeded",
                message.clone(),
                None,
            ),
            ApiError::Thread { code, message } => (
                if *code == "thread_not_found" {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::BAD_REQUEST
                },
                match (cx.flavour, *code) {
                    (Flavour::Anthropic, "thread_not_found") => "not_found_error",
                    _ => "invalid_request_error",
                },
                *code,
                message.clone(),
                Some("thread".to_string()),
            ),
            ApiError::Verdict(v) => return render_verdict(v, cx),
        };
        let mut body = match cx.flavour {
            Flavour::Openai => json!({"error": {
                "message": message, "type": etype, "param": param, "code": code,
                "request_id": cx.request_id,
            }}),
            Flavour::Anthropic => json!({
                "type": "error",
                "error": {"type": etype, "message": anthropic_message(&message, param.as_deref())},
                "request_id": cx.request_id,
            }),
        };
        if let ApiError::Thread { code, .. } = self {
            body["error"]["details"] = json!({"error_code": code});
        }
        // The rest of a late body is never read: the connection cannot be reused.
        let headers = match self {
            ApiError::BodyTimeout => vec![("connection".to_string(), "close".to_string())],
            ApiError::RateLimited { retry_after, .. } => {
                vec![("retry-after".to_string(), retry_after.to_string())]
            }
            _ => Vec::new(),
        };
        RenderedError {
            status,
            headers,
            body,
        }
    }
}

/// Anthropic's errors have no `param`; like the real API, the message starts with the
/// offending field in dotted form (`messages.0.content.1.source: …`).
fn anthropic_message(message: &str, param: Option<&str>) -> String {
    let Some(param) = param else {
        return message.to_string();
    };
    let dotted = param.replace('[', ".").replace(']', "");
    if message.starts_with(&dotted) {
        message.to_string()
    } else {
        format!("{dotted}: {message}")
    }
}

/// Template values for a verdict: request fields plus the health fields at render time.
pub fn template_values(cx: &ErrorContext<'_>) -> TemplateValues {
    TemplateValues {
        request_id: cx.request_id.to_string(),
        model: cx.model.map(str::to_string),
        last_probed_at: cx.health.last_probed_at.clone(),
        error_kind: cx.health.error_kind.clone(),
        error_message: cx.health.error_message.clone(),
        now_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
    }
}

fn render_verdict(v: &Verdict, cx: &ErrorContext<'_>) -> RenderedError {
    let values = template_values(cx);
    let status = cx.rules.status_for(v, cx.flavour);
    RenderedError {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        headers: cx.rules.render_headers(v, &values),
        body: cx.rules.render_body(v, cx.flavour, &values),
    }
}

impl IntoResponse for RenderedError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        for (name, value) in self.headers {
            // Header names/values come from validated rules; a value a placeholder made
            // invalid (control characters) is dropped rather than failing the response.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                resp.headers_mut().insert(n, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gateway_kinds_are_not_rule_kinds() {
        let rules = crate::rules::Rules::embedded();
        for kind in super::GATEWAY_KINDS {
            assert!(
                rules.verdict_for_kind(kind).is_none(),
                "gateway kind `{kind}` is also a rules kind"
            );
        }
    }
}
