//! The CLI's output pipes: stdout split into lines of at most [`MAX_LINE_BYTES`] (a longer
//! line is reported, not buffered), stderr drained into a ring of its last bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;

/// Longest stdout line accepted (the Python SDK uses the same 1 MB limit). A longer line
/// is a protocol error (`GatewayCondition::BadJson`).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What the stdout reader hands to the driver.
pub(super) enum LineMsg {
    Line(String),
    TooLong,
}

/// Split stdout into lines of at most `max` bytes (without the '\n'); a longer line is
/// reported as [`LineMsg::TooLong`] and skipped up to its end.
pub(super) async fn read_lines<R: AsyncRead + Unpin>(
    out: R,
    tx: mpsc::Sender<LineMsg>,
    max: usize,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, out);
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    loop {
        let (used, complete) = {
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(_) => break,
            };
            if buf.is_empty() {
                break;
            }
            let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            if !too_long {
                if line.len() + chunk.len() > max {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            (used, complete)
        };
        reader.consume(used);
        if complete {
            let msg = if too_long {
                LineMsg::TooLong
            } else {
                LineMsg::Line(String::from_utf8_lossy(&line).into_owned())
            };
            line.clear();
            too_long = false;
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
    // EOF (or read error) with an unterminated last line.
    let last = if too_long {
        Some(LineMsg::TooLong)
    } else if !line.is_empty() {
        Some(LineMsg::Line(String::from_utf8_lossy(&line).into_owned()))
    } else {
        None
    };
    if let Some(msg) = last {
        let _ = tx.send(msg).await;
    }
}

pub(super) type Ring = Arc<Mutex<VecDeque<u8>>>;

/// Keep the last `cap` bytes of stderr.
pub(super) async fn drain_stderr<R: AsyncRead + Unpin>(mut err: R, ring: Ring, cap: usize) {
    let mut buf = vec![0u8; 8192];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
                r.extend(&buf[..n]);
                let excess = r.len().saturating_sub(cap);
                r.drain(..excess);
            }
        }
    }
}

pub(super) fn ring_to_string(ring: &Ring) -> String {
    let r = ring.lock().unwrap_or_else(|p| p.into_inner());
    let bytes: Vec<u8> = r.iter().copied().collect();
    // The ring may start in the middle of a UTF-8 sequence: drop those continuation bytes.
    let start = bytes
        .iter()
        .take(3)
        .take_while(|&&b| (0x80..0xC0).contains(&b))
        .count();
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_a_split_utf8_prefix() {
        let ring: Ring = Arc::new(Mutex::new("é·x".bytes().skip(1).collect()));
        assert_eq!(ring_to_string(&ring), "·x");
    }

    #[tokio::test]
    async fn line_reader_enforces_the_limit_and_keeps_the_last_line() {
        let input: &[u8] = b"short\n0123456789abc\nok\nlast-no-newline";
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(input, tx, 10).await;
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(match m {
                LineMsg::Line(l) => l,
                LineMsg::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(got, ["short", "<too long>", "ok", "<too long>"]);
    }
}
