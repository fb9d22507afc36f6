//! The accept loop and each client connection (HTTP/1.1 by hyper), with what `axum::serve`
//! does not bound: a cap on open connections, a deadline for a request head, an idle
//! timeout between requests (the request body's deadline is `http::edge`'s), a limit on
//! the head's size, and clear answers where hyper would only close:
//!
//! - over `http.max_connections`, a new connection gets a 503 (`Connection: close`) and
//!   is closed at once, so an idle crowd cannot take the file descriptors `/health` needs;
//! - a request head not complete within `http.header_timeout` of its first byte gets a
//!   408 and the connection closes; a connection that sent nothing is closed after
//!   `http.header_timeout` (new) or `http.idle_timeout` (after a request);
//! - an HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`, h2c) gets an HTTP/2 `GOAWAY`
//!   with `HTTP_1_1_REQUIRED`, which h2 clients understand (curl then retries with
//!   HTTP/1.1); an `Upgrade: h2c` header is ignored, as RFC 9110 allows, and the request
//!   is served over HTTP/1.1;
//! - a response whose client takes none of its bytes for `http.write_timeout` (the socket
//!   stays full: a streaming client that stopped reading) ends the connection, which
//!   cancels the request's run and frees what it held. What a response has pending is
//!   bounded by hyper's write buffer (about 400 KiB) and the run's event channel: hyper
//!   polls the body only while its buffer has room, so a stalled reader stops the CLI's
//!   output at the pipe instead of piling it up;
//! - malformed heads are hyper's to answer: 400, 431 (head over `http.max_header_bytes`),
//!   414, each with an empty body, and the connection closes.
//!
//! At shutdown the loop stops accepting, connections that are between requests close at
//! once, and the others finish their request (hyper's graceful shutdown); the loop
//! returns when every connection has ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::HttpSettings;
use crate::shutdown::Shutdown;

/// How long ccgate tries to deliver one of its own answers (503, 408, GOAWAY) to a client
/// before it closes the connection anyway.
const WRITE_GRACE: Duration = Duration::from_secs(1);

/// How often a refused connection is logged at most.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stopping`, then waits for the open connections to end.
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    http: HttpSettings,
    stopping: Shutdown,
) -> std::io::Result<()> {
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(http.max_connections));
    let mut conns = JoinSet::new();
    let mut refused = 0u64;
    let mut last_refused_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopping.triggered() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // Out of file descriptors (EMFILE) and the like: the connection waits in
                // the backlog; retrying at once would spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Streamed deltas are small writes: without TCP_NODELAY, Nagle holds each one back
        // until the previous is acknowledged, and with the client's delayed ACK that adds
        // ~40 ms stalls to SSE responses (measured by `benches/gateway.rs`).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                conns.spawn(serve_one(
                    tcp,
                    app.clone(),
                    http.clone(),
                    stopping.clone(),
                    permit,
                ));
            }
            Err(_) => {
                refuse(tcp);
                refused += 1;
                if last_refused_log.is_none_or(|t| t.elapsed() >= REFUSED_LOG_EVERY) {
                    tracing::warn!(
                        max_connections = http.max_connections,
                        refused,
                        "connection limit reached: refusing new connections with 503"
                    );
                    last_refused_log = Some(Instant::now());
                    refused = 0;
                }
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Answers a connection over the cap without waiting for it: what it already sent is
/// read (closing with unread data would reset the connection and lose the answer), the
/// 503 is written if the socket takes it now, and the connection closes.
fn refuse(tcp: TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match tcp.try_read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = tcp.try_write(&plain_answer(
        "503 Service Unavailable",
        "overloaded_error",
        "too_many_connections",
        "The gateway has too many open connections; retry shortly.",
        Some(1),
    ));
}

/// A complete HTTP/1.1 answer for the cases no request was parsed, so no endpoint shape
/// is known: a JSON body both SDKs read (`error.message`, `error.type`), and `Connection:
/// close`.
fn plain_answer(
    status: &str,
    etype: &str,
    code: &str,
    message: &str,
    retry_after: Option<u32>,
) -> Vec<u8> {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": etype, "code": code, "message": message},
    })
    .to_string();
    let retry = retry_after
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An HTTP/2 server preface (an empty SETTINGS frame) and a GOAWAY with
/// `HTTP_1_1_REQUIRED` (0xd) and a short reason as debug data.
fn h2_goaway() -> Vec<u8> {
    let debug = b"ccgate serves HTTP/1.1 only";
    let mut out = vec![0, 0, 0, 0x04, 0, 0, 0, 0, 0];
    let len = 8 + debug.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x07, 0]);
    out.extend_from_slice(&[0, 0, 0, 0]); // stream 0
    out.extend_from_slice(&[0, 0, 0, 0]); // last stream id
    out.extend_from_slice(&[0, 0, 0, 0x0d]); // HTTP_1_1_REQUIRED
    out.extend_from_slice(debug);
    out
}

/// How a connection ended.
enum End {
    /// hyper finished it (cleanly or with an error it may have answered).
    Hyper(hyper::Result<()>),
    /// The request head did not arrive in time: answer 408.
    HeadTimeout,
    /// Nothing in progress (idle, or nothing sent): just close.
    Close,
}

async fn serve_one(
    tcp: TcpStream,
    app: Router,
    http: Arc<HttpSettings>,
    stopping: Shutdown,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let service = ConnService {
        app,
        activity: activity.clone(),
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(http.max_header_bytes)
        .serve_connection(io, service);
    let mut stop_seen = false;
    let end = loop {
        let notified = activity.notify.notified();
        let deadline = activity.deadline(&http);
        let write_deadline = activity.write_deadline(&http);
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break End::Hyper(r),
            () = stopping.triggered(), if !stop_seen => {
                stop_seen = true;
                // Ends the connection after the request in progress; at once when hyper
                // is between requests.
                Pin::new(&mut conn).graceful_shutdown();
                if activity.is_waiting() {
                    break End::Close;
                }
            }
            () = sleep_until(deadline) => {
                match activity.expired(&http) {
                    Some(Expired::Head) => break End::HeadTimeout,
                    Some(Expired::Idle) => break End::Close,
                    None => {}
                }
            }
            () = sleep_until(write_deadline) => {
                if activity.write_deadline(&http).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection drops the response body: a stream's run is
                    // cancelled (its CLI ended) and its request and events are freed.
                    tracing::warn!(write_timeout_s = http.write_timeout.as_secs_f64(),
                        "client took no response bytes within http.write_timeout; closing the connection");
                    break End::Close;
                }
            }
            () = notified => {}
        }
    };
    let reply: Option<Vec<u8>> = match &end {
        End::Hyper(Ok(())) => None,
        End::Hyper(Err(e)) if e.is_parse_version_h2() => Some(h2_goaway()),
        End::Hyper(Err(e)) => {
            tracing::debug!(error = %e, "client connection ended with an error");
            None
        }
        End::HeadTimeout => Some(plain_answer(
            "408 Request Timeout",
            "invalid_request_error",
            "request_timeout",
            "The request headers did not arrive in time.",
            None,
        )),
        End::Close => return,
    };
    let mut io = conn.into_parts().io.into_inner();
    let _ = tokio::time::timeout(WRITE_GRACE, async {
        if let Some(bytes) = reply {
            io.tcp.write_all(&bytes).await?;
        }
        io.tcp.shutdown().await
    })
    .await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Where a connection is between requests, shared by its IO (bytes read), its service
/// (requests in flight) and its task (the deadlines).
struct Activity {
    phase: Mutex<Phase>,
    notify: Notify,
    /// Since when the socket has refused the response's bytes (a write returned
    /// `Pending` and none succeeded since): a client that stopped reading.
    write_blocked: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy)]
enum Phase {
    /// No byte of a request yet: since accept (`fresh`) or since the last response.
    Waiting { since: Instant, fresh: bool },
    /// A request head is arriving; its first byte came at `since`.
    Head { since: Instant },
    /// Requests in flight (to the end of their response bodies).
    Busy(usize),
}

enum Expired {
    Head,
    Idle,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                fresh: true,
            }),
            notify: Notify::new(),
            write_blocked: Mutex::new(None),
        }
    }

    /// Notes how a write went: `blocked` when the socket took nothing.
    fn on_write(&self, blocked: bool) {
        let mut since = self.write_blocked.lock().unwrap_or_else(|e| e.into_inner());
        match (blocked, since.is_some()) {
            (true, false) => {
                *since = Some(Instant::now());
                drop(since);
                // The connection's task arms the write deadline.
                self.notify.notify_one();
            }
            (false, true) => *since = None,
            _ => {}
        }
    }

    /// When a stalled write gives up: `write_timeout` after the socket last refused bytes.
    fn write_deadline(&self, http: &HttpSettings) -> Option<Instant> {
        let since = *self.write_blocked.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|t| t + http.write_timeout)
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = f(*p);
        drop(p);
        self.notify.notify_one();
    }

    fn on_read(&self, n: usize) {
        if n > 0 && matches!(self.phase(), Phase::Waiting { .. }) {
            self.set(|p| match p {
                Phase::Waiting { .. } => Phase::Head {
                    since: Instant::now(),
                },
                other => other,
            });
        }
    }

    fn is_waiting(&self) -> bool {
        matches!(self.phase(), Phase::Waiting { .. })
    }

    fn deadline(&self, http: &HttpSettings) -> Option<Instant> {
        match self.phase() {
            Phase::Waiting { since, fresh: true } => Some(since + http.header_timeout),
            Phase::Waiting { since, .. } => Some(since + http.idle_timeout),
            Phase::Head { since } => Some(since + http.header_timeout),
            Phase::Busy(_) => None,
        }
    }

    fn expired(&self, http: &HttpSettings) -> Option<Expired> {
        let over = self.deadline(http).is_some_and(|d| d <= Instant::now());
        match self.phase() {
            Phase::Head { .. } if over => Some(Expired::Head),
            Phase::Waiting { .. } if over => Some(Expired::Idle),
            _ => None,
        }
    }
}

/// Marks a request in flight from the service call to the end of its response body.
struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    fn new(activity: Arc<Activity>) -> BusyGuard {
        activity.set(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        BusyGuard(activity)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                fresh: false,
            },
        });
    }
}

/// The router as one connection's hyper service.
#[derive(Clone)]
struct ConnService {
    app: Router,
    activity: Arc<Activity>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<GuardedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let guard = BusyGuard::new(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let resp = match tower::ServiceExt::oneshot(app, req.map(Body::new)).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its connection busy until it is done.
struct GuardedBody {
    inner: Body,
    _guard: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, telling [`Activity`] when a request's first byte arrives.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.activity.on_read(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.activity.on_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.activity.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn goaway_frame_is_well_formed() {
        let f = super::h2_goaway();
        // SETTINGS: empty, type 4, stream 0.
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let g = &f[9..];
        let len = (usize::from(g[0]) << 16) | (usize::from(g[1]) << 8) | usize::from(g[2]);
        assert_eq!(len, g.len() - 9);
        assert_eq!(g[3], 7);
        assert_eq!(&g[13..17], &[0, 0, 0, 0x0d]);
    }
}
