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

/// The key a request presented (absent when the gateway has no keys); put on the request
/// by the key layer (`http::keyed`).
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<crate::keys::Key>);

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
    /// The client's key (None when ccgate has no keys).
    pub caller: Option<Caller>,
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
            caller: None,
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

/// The body bytes parsed as JSON, every failure mapped to a clear [`ApiError`] in
/// `flavour`'s words.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    flavour: Flavour,
) -> Result<T, ApiError> {
    parse_json_in(&read_body(body, limit)?, flavour)
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

/// Parses JSON bytes into `T`, mapping every failure to a 400 [`ApiError`] (OpenAI's
/// words for a field of the wrong type).
pub fn parse_json_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json_in(bytes, Flavour::Openai)
}

/// Parses JSON bytes into `T`; a field of the wrong type or a missing one is a 400 naming
/// the field (`param`) in the API's own words: OpenAI's "Invalid type for 'max_tokens':
/// expected an integer, but got a string instead." / "Missing required parameter:
/// 'model'.", Anthropic's "max_tokens: Input should be a valid integer" / "model: Field
/// required".
pub fn parse_json_in<T: DeserializeOwned>(bytes: &[u8], flavour: Flavour) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    // Client JSON kept as trees counts against a budget of values while it is parsed.
    let budget = crate::http::bounded::tree_budget(bytes.len());
    let value: T = crate::http::bounded::with_tree_budget(budget, || {
        serde_path_to_error::deserialize(&mut *de)
    })
    .map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return ApiError::invalid(format!("malformed JSON in request body: {inner}"));
        }
        field_error(&path, &inner.to_string(), flavour)
    })?;
    // Trailing characters after the value (what `from_slice` checks).
    de.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON in request body: {e}")))?;
    Ok(value)
}

/// A data error of serde at `path` (`.` for the top) in the API's words.
fn field_error(path: &str, serde_message: &str, flavour: Flavour) -> ApiError {
    // serde_json ends its messages with the position; the field's path says more.
    let message = match serde_message.rfind(" at line ") {
        Some(i) => &serde_message[..i],
        None => serde_message,
    };
    let join = |field: &str| {
        if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let at = join(field);
        return match flavour {
            Flavour::Openai => {
                ApiError::invalid_param(format!("Missing required parameter: '{at}'."), &at)
            }
            Flavour::Anthropic => {
                ApiError::invalid_param(format!("{}: Field required", dotted(&at)), &at)
            }
        };
    }
    let at = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    let (got, expected) = match message.strip_prefix("invalid type: ") {
        Some(rest) => match rest.split_once(", expected ") {
            Some((got, expected)) => (Some(got), expected),
            None => (None, rest),
        },
        None => (None, message),
    };
    let expected = json_type(expected);
    let got = got.and_then(|g| json_type(g.split(' ').next().unwrap_or(g)));
    let text = match (flavour, got, expected) {
        (Flavour::Openai, Some(got), Some(expected)) if !at.is_empty() => {
            format!("Invalid type for '{at}': expected {expected}, but got {got} instead.")
        }
        (Flavour::Openai, None, Some(expected)) if !at.is_empty() => {
            format!("Invalid type for '{at}': expected {expected}.")
        }
        (Flavour::Openai, _, _) if !at.is_empty() => {
            format!("Invalid value for '{at}': {message}.")
        }
        (Flavour::Anthropic, _, Some(expected)) if !at.is_empty() => {
            format!("{}: Input should be {expected}", dotted(&at))
        }
        (Flavour::Anthropic, _, _) if !at.is_empty() => format!("{}: {message}", dotted(&at)),
        _ => format!("invalid request: {message}"),
    };
    if at.is_empty() {
        ApiError::invalid(text)
    } else {
        ApiError::invalid_param(text, &at)
    }
}

/// `messages[0].content` as Anthropic's errors spell a location: `messages.0.content`.
fn dotted(path: &str) -> String {
    path.replace('[', ".").replace(']', "")
}

/// What serde expected or found, as a JSON type with its article (None: not a type).
fn json_type(serde: &str) -> Option<&'static str> {
    Some(match serde {
        "a string" | "string" | "a borrowed string" | "char" => "a string",
        "u8" | "u16" | "u32" | "u64" | "u128" | "i8" | "i16" | "i32" | "i64" | "i128" | "usize"
        | "isize" | "integer" => "an integer",
        "f32" | "f64" | "floating" | "a number" => "a number",
        "a boolean" | "boolean" => "a boolean",
        "a sequence" | "sequence" => "an array",
        "a map" | "map" => "an object",
        "null" | "unit" => "null",
        s if s.starts_with("struct ") => "an object",
        s if s.starts_with("a sequence") => "an array",
        // Every untagged enum of the request types is a string or a list (content, input,
        // stop).
        s if s.starts_with("data did not match any variant of untagged enum") => {
            "a string or an array"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        max_tokens: u64,
        #[serde(default)]
        messages: Vec<Msg>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }

    fn err(body: &str, flavour: Flavour) -> (String, Option<String>) {
        match parse_json_in::<Body>(body.as_bytes(), flavour) {
            Err(ApiError::InvalidRequest { message, param }) => (message, param),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn type_errors_are_in_the_apis_own_words_naming_the_field() {
        let b = r#"{"model": "m", "max_tokens": "5"}"#;
        assert_eq!(
            err(b, Flavour::Openai),
            (
                "Invalid type for 'max_tokens': expected an integer, but got a string instead."
                    .into(),
                Some("max_tokens".into())
            )
        );
        assert_eq!(
            err(b, Flavour::Anthropic).0,
            "max_tokens: Input should be an integer"
        );
        let b = r#"{"model": "m", "max_tokens": 5, "messages": [{"role": 1}]}"#;
        assert_eq!(
            err(b, Flavour::Anthropic),
            (
                "messages.0.role: Input should be a string".into(),
                Some("messages[0].role".into())
            )
        );
        let b = r#"{"max_tokens": 5}"#;
        assert_eq!(
            err(b, Flavour::Openai),
            (
                "Missing required parameter: 'model'.".into(),
                Some("model".into())
            )
        );
        assert_eq!(err(b, Flavour::Anthropic).0, "model: Field required");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        #[serde(untagged)]
        enum Content {
            Text(String),
            Parts(Vec<String>),
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct WithContent {
            content: Content,
        }
        match parse_json_in::<WithContent>(br#"{"content": 5}"#, Flavour::Openai) {
            Err(ApiError::InvalidRequest { message, .. }) => assert_eq!(
                message,
                "Invalid type for 'content': expected a string or an array."
            ),
            other => panic!("{other:?}"),
        }
        let b = r#"{"model": "m", "max_tokens": 5, "messages": [{}]}"#;
        assert_eq!(
            err(b, Flavour::Anthropic).0,
            "messages.0.role: Field required"
        );
        // Malformed JSON and trailing bytes stay what they are.
        assert!(err("{", Flavour::Openai).0.starts_with("malformed JSON"));
        assert!(err(r#"{"model": "m", "max_tokens": 5} x"#, Flavour::Openai)
            .0
            .starts_with("malformed JSON"));
    }
}
