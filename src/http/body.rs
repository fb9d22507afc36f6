//! Request bodies: the raw bytes extractor (so a body over the limit — chunked or not —
//! becomes our 413, not axum's plain text) and JSON parsing into our 400 shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use serde::de::DeserializeOwned;

use crate::http::errors::ApiError;
use crate::http::pipeline::RequestCx;

/// The body as bytes, or why it could not be read.
pub type RawBody = Result<Bytes, BytesRejection>;

/// Parses a JSON body, mapping every failure to a clear [`ApiError`].
pub fn parse_json<T: DeserializeOwned>(body: RawBody, cx: &RequestCx) -> Result<T, ApiError> {
    let bytes = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return Err(ApiError::TooLarge {
                limit: cx.state.settings.request_body_limit,
            })
        }
        Err(e) => {
            return Err(ApiError::invalid(format!(
                "could not read the request body: {e}"
            )))
        }
    };
    parse_json_bytes(&bytes)
}

/// Parses JSON bytes into `T`, mapping every failure to a 400 [`ApiError`].
pub fn parse_json_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON in request body",
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}
