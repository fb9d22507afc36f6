//! What a request must look like at the edge, before anything runs: the `Host` it names
//! (DNS rebinding), the web `Origin` it comes from (cross-site requests), the content type
//! of a POST (browsers' "simple" cross-site requests), and a deadline for its body.
//!
//! A browser page can send a cross-site POST without asking first (no CORS preflight) only
//! with a "simple" request: no header beyond the CORS-safelisted ones, and a content type
//! of `text/plain`, `application/x-www-form-urlencoded` or `multipart/form-data` (or
//! none). So the API endpoints take only `Content-Type: application/json`, and the admin
//! POSTs take `application/json` or any request carrying `Authorization` or `x-api-key`
//! (headers a page cannot add cross-site without a preflight, which CORS answers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::http::errors::ApiError;
use crate::http::state::AppState;
use crate::http::{new_request_id, static_error_for, RequestId};

fn request_id(req: &Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(new_request_id)
}

/// The authority the request names: the absolute-form URI's, else the `Host` header.
fn authority(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The host part of an authority (`name`, `1.2.3.4`, `[::1]`), lower-cased, port dropped.
fn host_of(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return match a.find(']') {
            Some(end) => a[..=end].to_string(),
            None => a,
        };
    }
    match a.split_once(':') {
        Some((host, _port)) => host.to_string(),
        None => a,
    }
}

/// Whether `host` (from [`host_of`]) may be served: an IP literal (never a rebinding
/// vector: no DNS is involved), `localhost` or a `*.localhost` name (browsers resolve
/// them to loopback themselves), or an `allowed_hosts` entry.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let ip_literal = host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if ip_literal || host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    allowed
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => pattern == "*" || pattern == host,
        })
}

/// Whether a request carrying `Origin: origin` may be served: CORS allows that origin, or
/// it is the gateway's own (same host and port as the request names; the scheme is not
/// compared, as a TLS proxy in front may have ended it).
fn origin_allowed(origin: &str, authority: Option<&str>, cors: &[String]) -> bool {
    if cors
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    match (origin.split_once("://"), authority) {
        (Some((_, origin_authority)), Some(a)) => origin_authority.eq_ignore_ascii_case(a.trim()),
        _ => false,
    }
}

/// The `Host` check (see [`crate::config::Settings::checks_host`]) and the `Origin` check,
/// for every request: 403 in the endpoint's error shape.
pub async fn guard_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let authority = authority(&req);
    if state.settings.checks_host() {
        if let Some(a) = &authority {
            if !host_allowed(&host_of(a), &state.settings.allowed_hosts) {
                tracing::debug!(host = ?a, "refused a request for a host name not served");
                let id = request_id(&req);
                return static_error_for(&state, &req, &id, ApiError::HostNotAllowed);
            }
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, authority.as_deref(), &state.settings.cors_origins));
        if !ok {
            tracing::debug!(origin = ?origin, "refused a request from a web origin CORS does not allow");
            let id = request_id(&req);
            return static_error_for(&state, &req, &id, ApiError::OriginNotAllowed);
        }
    }
    next.run(req).await
}

/// Whether the request's `Content-Type` is `application/json` (any parameters, any case).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// For POSTs: the API endpoints take `application/json` only; the `/admin/*` actions also
/// take a request carrying `Authorization` or `x-api-key` (what `curl -X POST -H
/// "Authorization: Bearer $KEY"` sends). 415 in the endpoint's error shape otherwise.
/// (Run by the API key layer, after the key check: one middleware less per request.)
pub fn json_post_refusal(state: &AppState, req: &Request) -> Option<Response> {
    if req.method() != Method::POST || is_json(req.headers()) {
        return None;
    }
    let h = req.headers();
    let credentialed = h.contains_key(header::AUTHORIZATION) || h.contains_key("x-api-key");
    if req.uri().path().starts_with("/admin/") && credentialed {
        return None;
    }
    let id = request_id(req);
    Some(static_error_for(
        state,
        req,
        &id,
        ApiError::UnsupportedMediaType,
    ))
}

/// Gives the request body a deadline: `http.body_timeout` from when it is first read.
pub async fn body_deadline_layer(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let timeout = state.settings.http.body_timeout;
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            timeout,
            sleep: None,
        })
    });
    next.run(req).await
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

/// Whether a body read failed because of [`BodyTimedOut`] (anywhere in its sources).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A body that fails with [`BodyTimedOut`] unless it ends within `timeout` of its first poll.
struct DeadlineBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "[::1]",
            "10.0.0.7",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in ["evil.com", "localhost.evil.com", "127.0.0.1.nip.io", "[::1"] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let allowed = vec!["gw.example.com".to_string(), "*.corp.example".to_string()];
        assert!(host_allowed("gw.example.com", &allowed));
        assert!(host_allowed("a.b.corp.example", &allowed));
        assert!(!host_allowed("corp.example", &allowed));
        assert!(!host_allowed("xcorp.example", &allowed));
        assert_eq!(host_of("LocalHost:8000"), "localhost");
        assert_eq!(host_of("[::1]:8000"), "[::1]");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn origins() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(
            "http://127.0.0.1:8000",
            Some("127.0.0.1:8000"),
            &none
        ));
        assert!(!origin_allowed(
            "http://127.0.0.1:8001",
            Some("127.0.0.1:8000"),
            &none
        ));
        assert!(!origin_allowed("null", Some("127.0.0.1:8000"), &none));
        assert!(!origin_allowed("https://evil.com", None, &none));
        let cors = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(
            "https://app.example.com",
            Some("127.0.0.1:8000"),
            &cors
        ));
        assert!(origin_allowed("null", None, &["*".to_string()]));
    }
}
