//! The non-blocking, bounded log writer behind `serve`'s logging.
//!
//! A log line is appended to an in-memory buffer under a short lock and the request goes
//! on; a writer thread takes the whole buffer at once and writes it to the sink (stderr)
//! in one `write`. When `limit` lines are waiting (the sink is slower than the request
//! rate, or blocked), further lines are dropped and counted instead of slowing requests
//! down. The writer thread is woken only when the buffer goes from empty to non-empty and
//! then waits [`COALESCE`] for more lines, so under load it wakes a few hundred times a
//! second, not once per line (tracing-appender's channel woke its worker for about every
//! fourth line: ~25k context switches in 5 s of gated 401s).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer thread waits for more lines after the first one of a batch.
const COALESCE: Duration = Duration::from_millis(5);
/// How long dropping the guard waits for the last lines to be written.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    lines: usize,
    /// The writer thread is waiting on the condvar (so a writer must notify it).
    idle: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    limit: usize,
    dropped: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `MakeWriter` for tracing-subscriber: each event is one `write` of a whole line.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

/// Stops the writer thread when dropped, after it has written what is buffered (for up to
/// [`FLUSH_AT_EXIT`]).
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

/// A writer of at most `limit` buffered lines into `sink`, counting dropped lines in
/// `dropped`.
pub fn log_writer<W: Write + Send + 'static>(
    sink: W,
    limit: usize,
    dropped: Arc<AtomicU64>,
) -> (LogWriter, LogWriterGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        limit: limit.max(1),
        dropped,
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("ccgate-log".into())
        .spawn(move || {
            run(&worker, sink);
            let _ = done_tx.send(());
        });
    let done = match spawned {
        Ok(_) => Some(done_rx),
        Err(e) => {
            // No thread, no logs: say so once, directly.
            let _ = writeln!(
                std::io::stderr(),
                "ccgate: cannot start the log writer: {e}"
            );
            shared.lock().closed = true;
            None
        }
    };
    (
        LogWriter(Arc::clone(&shared)),
        LogWriterGuard { shared, done },
    )
}

fn run<W: Write>(shared: &Shared, mut sink: W) {
    let mut spare = Vec::new();
    loop {
        let mut s = shared.lock();
        while s.buf.is_empty() && !s.closed {
            s.idle = true;
            s = shared.wake.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle = false;
        }
        if s.buf.is_empty() && s.closed {
            break;
        }
        if !s.closed && s.lines < shared.limit / 2 {
            // Let a batch gather (writers do not notify while the buffer is non-empty).
            drop(s);
            std::thread::sleep(COALESCE);
            s = shared.lock();
        }
        std::mem::swap(&mut s.buf, &mut spare);
        s.lines = 0;
        drop(s);
        // A failed write loses this batch; there is nowhere else to report it.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        if spare.capacity() > 4 * 1024 * 1024 {
            spare = Vec::new();
        }
    }
    let _ = sink.flush();
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut s = self.0.lock();
        if s.closed || s.lines >= self.0.limit {
            drop(s);
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        s.buf.extend_from_slice(line);
        s.lines += 1;
        let notify = s.idle;
        s.idle = false;
        drop(s);
        if notify {
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(FLUSH_AT_EXIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records what it got, and can be held blocked.
    #[derive(Clone, Default)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.gate.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_writes_the_rest() {
        let sink = Sink::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let (mut w, guard) = log_writer(sink.clone(), 10_000, dropped.clone());
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let out = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out, want);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_blocked_sink_drops_and_counts_lines_instead_of_blocking() {
        let sink = Sink::default();
        let held = sink.gate.lock().unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let (mut w, guard) = log_writer(sink.clone(), 10, dropped.clone());
        // The thread takes the first line and blocks in the sink with it.
        w.write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t = std::time::Instant::now();
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(1), "writes blocked");
        // 10 lines fit in the buffer while the sink is blocked; the rest are dropped.
        assert_eq!(dropped.load(Ordering::Relaxed), 990);
        drop(held);
        drop(guard);
        let out = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        let want: String = std::iter::once("first\n".to_string())
            .chain((0..10).map(|i| format!("line {i}\n")))
            .collect();
        assert_eq!(out, want);
    }
}
