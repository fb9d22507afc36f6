//! Extractors whose rejections are in our error shape, never axum's plain text: the body
//! parser behind `handler::ApiRequest` (a body over the limit, chunked or not, is our 413)
//! and [`ApiPath`] (path parameters). [`Cx`] is the per-request context an API handler
//! works with.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::engine::RequestRecord;
use crate::health::Health;
use crate::http::errors::{ApiError, ErrorContext, RenderedError};
use crate::http::state::AppState;
use crate::http::{flavour_for_request, RequestId};
use crate::rules::{Flavour, Rules};

/// One API request's context: its flavour, id, rules snapshot and record.
#[derive(Clone)]
pub struct Cx {
    pub flavour: Flavour,
    pub request_id: String,
    /// The rules snapshot this request uses from start to end.
    pub rules: Arc<Rules>,
    pub record: Arc<RequestRecord>,
    /// A digest of the client's API key (empty when ccgate has no keys).
    pub tenant: String,
    health: Arc<Health>,
}

impl Cx {
    pub fn new(
        state: &AppState,
        flavour: Flavour,
        endpoint: &'static str,
        request_id: String,
    ) -> Cx {
        Cx {
            flavour,
            record: state.engine.record(endpoint, &request_id),
            request_id,
            rules: state.engine.rules(),
            tenant: String::new(),
            health: Arc::clone(state.engine.health()),
        }
    }

    /// Renders an error in this request's flavour (no bookkeeping).
    pub fn render(&self, err: &ApiError) -> RenderedError {
        let health = self.health.snapshot();
        let model = self.record.model();
        err.render(&ErrorContext {
            flavour: self.flavour,
            request_id: &self.request_id,
            model: model.as_deref(),
            rules: &self.rules,
            health: &health,
        })
    }

    /// The request's answer is this error: rendered and recorded.
    pub fn fail(&self, err: ApiError) -> RenderedError {
        let rendered = self.render(&err);
        self.record
            .answered(rendered.status.as_u16(), err.kind(), true);
        rendered
    }

    pub fn error(&self, err: ApiError) -> Response {
        self.fail(err).into_response()
    }
}

/// Path parameters, with a rejection (e.g. `%FF` in a segment) in the request's flavour.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => {
                let id = RequestId::from_request_parts(parts, state)
                    .await
                    .map(|r| r.0)
                    .unwrap_or_else(|never| match never {});
                let flavour = flavour_for_request(parts.uri.path(), &parts.headers);
                let err = ApiError::invalid(format!("invalid path: {}", e.body_text()));
                Err(crate::http::static_error(state, flavour, &id, err))
            }
        }
    }
}

/// The body bytes parsed as JSON, every failure mapped to a clear [`ApiError`].
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    parse_json_bytes(&read_body(body, limit)?)
}

/// The body bytes, a failure to read them (too large, too late, broken) mapped to a clear
/// [`ApiError`].
pub(crate) fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            Err(ApiError::TooLarge { limit })
        }
        Err(e) if crate::http::edge::is_body_timeout(&e) => Err(ApiError::BodyTimeout),
        Err(e) => Err(ApiError::invalid(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Parses JSON bytes into `T`, mapping every failure to a 400 [`ApiError`].
pub fn parse_json_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    crate::http::bounded::with_tree_budget(crate::http::bounded::MAX_TREE_VALUES, || {
        serde_json::from_slice(bytes)
    })
    .map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON in request body",
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}
