//! One run: the driver task behind a [`CliRun`] and the watch loop around its process.
//!
//! Lifecycle of a run (all inside one spawned tokio task, see [`Shared::start`]):
//! 1. Admission (`admission`): a slot, a pre-warmed process, a place in the wait queue, or
//!    at once `Done(Err(condition QueueFull))`. The wait for a slot counts against the
//!    total timeout.
//! 2. Spawn (`child`) with flags only (the prompt never goes to argv), or take the
//!    pre-warmed process; the prompt goes to stdin as one stream-json `user` line, then
//!    stdin is closed.
//! 3. stdout lines (`io`) are fed to [`RunAccumulator`]; its events are forwarded as they
//!    come. stderr is drained concurrently into a ring.
//! 4. Watchdogs: start (prompt written → first line), inactivity (between lines), total
//!    (whole run, including the queue wait). When one fires the group is SIGKILLed and
//!    the facts get `timeout`. They pause only while the run is held (its answer is
//!    complete and its CLI waits in the client's tool calls: the parked store bounds that).
//! 5. End: once the leader has exited (noticed without reaping it, so its pid/pgid cannot
//!    be reused yet), the group is SIGKILLed to remove stragglers, stdout is read to EOF,
//!    the leader is reaped and `Done` is sent.
//! 6. Cancellation: when the [`CliRun`] is dropped, the task notices (`tx.closed()`), kills
//!    the group and reaps the leader. [`Shared::abort`] (`Backend::abort_all`) ends every
//!    run the same way, as `ShuttingDown`.

use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::admission::{Admission, Limiter};
use super::child::{spawn_cli, Spawned};
use super::handle::{CliRun, RunCell, ToolResults};
use super::io::{ring_to_string, LineMsg};
use super::kept::{end_gracefully, Kept};
use super::late;
use super::mcp;
use super::parked::ParkedStore;
use super::pool::{Idle, Pool};
use super::present::FingerprintBuilder;
use super::request::{CliRequest, CliSettings, ToolResult};
use super::stats::BackendStats;
use crate::conversation::Block;
use crate::protocol::{CliEvent, Control, RunAccumulator, RunEnd, Success};
use crate::rules::{FailureFacts, GatewayCondition, TimeoutKind};

/// Events buffered between the driver task and the consumer.
const EVENT_CHANNEL: usize = 256;
/// Commands buffered from the consumer to the driver task.
const COMMAND_CHANNEL: usize = 4;
/// How often the driver checks whether the leader exited while stdout is still open
/// (a straggler may hold the pipe open after the leader has gone).
const EXIT_PEEK_OPEN: Duration = Duration::from_millis(100);
/// How often a held run looks whether it is still held (its watchdogs resume once not).
const HELD_RECHECK: Duration = Duration::from_secs(1);
/// Upper bound for the exit-check backoff once stdout has reached EOF.
const EXIT_PEEK_CLOSED_MAX: Duration = Duration::from_millis(20);

/// What every run of one backend shares.
pub(super) struct Shared {
    pub(super) settings: Arc<CliSettings>,
    pub(super) limiter: Limiter,
    pub(super) stats: Arc<BackendStats>,
    /// The pre-warmed pool (None when `prewarm` is 0).
    pub(super) pool: Option<Arc<Pool>>,
    /// Kept conversation processes and held tool runs.
    pub(super) parked: Arc<ParkedStore>,
    /// Set once by `Backend::abort_all` (end of the shutdown grace period): every run in
    /// progress or queued ends as `ShuttingDown`, and no new process is spawned.
    pub(super) abort: watch::Sender<bool>,
}

impl Shared {
    /// Starts one run: the admission decision now, everything else in its own task.
    /// Must be called inside a tokio runtime.
    pub(super) fn start(self: &Arc<Self>, req: CliRequest) -> CliRun {
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL);
        let cell = Arc::new(RunCell {
            account: req.account.clone(),
            ..RunCell::default()
        });
        let admission = self.limiter.admit(&req, self.pool.as_ref(), &self.parked);
        tokio::spawn(drive(
            Arc::clone(self),
            req,
            admission,
            Channels { tx, cmd_rx },
            Arc::clone(&cell),
        ));
        CliRun {
            cell,
            rx,
            cmd: cmd_tx,
        }
    }
}

/// The driver's ends of a run's channels.
struct Channels {
    tx: mpsc::Sender<CliEvent>,
    cmd_rx: mpsc::Receiver<ToolResults>,
}

fn far_future(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

fn condition_facts(condition: GatewayCondition) -> Box<FailureFacts> {
    Box::new(FailureFacts {
        condition: Some(condition),
        ..FailureFacts::default()
    })
}

/// Resolves once `Backend::abort_all` was called (never if the backend is gone).
async fn aborted(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The task behind one [`CliRun`].
async fn drive(
    shared: Arc<Shared>,
    req: CliRequest,
    admission: Admission,
    channels: Channels,
    cell: Arc<RunCell>,
) {
    let Channels { tx, mut cmd_rx } = channels;
    let total = req.timeout.unwrap_or(shared.settings.total_timeout);
    let total_deadline = far_future(tokio::time::Instant::now(), total);
    let mut abort = shared.abort.subscribe();
    let stopping = *abort.borrow_and_update();
    if stopping {
        // A pre-warmed process the admission handed over is not used now: the orderly
        // end (kill + reap, then free its slot) before the answer.
        match admission {
            Admission::Pooled(idle) | Admission::Evict(idle) => idle.retire().await,
            Admission::Continue(k) | Admission::EvictKept(k) => k.retire().await,
            _ => {}
        }
        let _ = tx
            .send(CliEvent::Done(Err(condition_facts(
                GatewayCondition::ShuttingDown,
            ))))
            .await;
        return;
    }
    let mut handover = None;
    let permit = match admission {
        Admission::Pooled(idle) => {
            let Idle { proc, permit, .. } = *idle;
            handover = Some((proc, Handover::Pooled));
            Some(permit)
        }
        Admission::Continue(k) => {
            let Kept { proc, permit, .. } = *k;
            handover = Some((proc, Handover::Kept));
            Some(permit)
        }
        Admission::Evict(idle) => {
            let Idle { proc, permit, .. } = *idle;
            let _ = proc.reap().await;
            Some(permit)
        }
        Admission::EvictKept(k) => {
            let Kept { proc, permit, .. } = *k;
            end_gracefully(proc).await;
            Some(permit)
        }
        Admission::Full => {
            let facts = condition_facts(GatewayCondition::QueueFull);
            let _ = tx.send(CliEvent::Done(Err(facts))).await;
            return;
        }
        Admission::Bypass => None,
        Admission::Ready(p) => Some(p),
        Admission::Queued(ticket) => {
            let acquired = tokio::select! {
                biased;
                _ = tx.closed() => {
                    cell.count_gone(&shared.stats);
                    return;
                }
                () = aborted(&mut abort) => {
                    drop(ticket);
                    let facts = condition_facts(GatewayCondition::ShuttingDown);
                    let _ = tx.send(CliEvent::Done(Err(facts))).await;
                    return;
                }
                _ = tokio::time::sleep_until(total_deadline) => None,
                p = shared.limiter.acquire() => p,
            };
            drop(ticket);
            match acquired {
                Some(p) => Some(p),
                None => {
                    shared.stats.timeouts_total.fetch_add(1, Ordering::Relaxed);
                    let facts = Box::new(FailureFacts {
                        timeout: Some(TimeoutKind::Total),
                        ..FailureFacts::default()
                    });
                    let _ = tx.send(CliEvent::Done(Err(facts))).await;
                    return;
                }
            }
        }
    };
    let mut outcome = run_process(
        &shared,
        &req,
        total_deadline,
        (&tx, &mut cmd_rx),
        &cell,
        handover,
        &mut abort,
    )
    .await;
    if let Ran::HandoverSilent(kind, _) = outcome {
        // The pre-warmed or kept process died at hand-over without a word (killed,
        // crashed before reading its prompt): nothing reached the client, so this request
        // gets the cold run it would have had without it (same slot, same deadline). A
        // real problem with the CLI repeats there and is reported from that run.
        if kind == Handover::Pooled {
            shared.stats.record_pool_handover_retry();
        }
        tracing::warn!(
            ?kind,
            "cli process ended silently at hand-over; retrying cold"
        );
        outcome = run_process(
            &shared,
            &req,
            total_deadline,
            (&tx, &mut cmd_rx),
            &cell,
            None,
            &mut abort,
        )
        .await;
    }
    let permit = match outcome {
        Ran::Kept(proc, result, keep) => {
            // Kept before the answer goes out, so the conversation's next request finds it.
            match (permit, keep.as_ref(), result.as_ref()) {
                // A request waiting for a slot gets this one rather than a kept process.
                (Some(permit), Some(keep), Ok(success))
                    if shared.stats.queued.load(Ordering::Acquire) == 0 =>
                {
                    let key = keep
                        .after_answer(&success.text)
                        .on_account(req.account_name());
                    let kept = Kept {
                        proc: *proc,
                        permit,
                        account: req.account.clone(),
                    };
                    if let Some(refused) = shared.parked.offer_kept(key, &req.tenant, kept) {
                        refused.retire().await;
                    }
                }
                // Not kept: its stdin is closed so the CLI exits by itself and removes its
                // files (a SIGKILLed CLI leaves them behind). That takes the real CLI about
                // 0.5 s, so it happens after the answer; the slot is freed once it is gone.
                (permit, _, _) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        end_gracefully(*proc).await;
                        drop(permit);
                        if let Some(pool) = shared.pool.as_ref() {
                            pool.notify();
                        }
                    });
                }
            }
            outcome = Ran::Done(result);
            None
        }
        _ => permit,
    };
    // Free the slot before reporting, so a caller that starts its next run right after
    // `Done` finds it available.
    drop(permit);
    if let Some(pool) = shared.pool.as_ref() {
        pool.notify();
    }
    match outcome {
        Ran::Done(result) | Ran::HandoverSilent(_, result) | Ran::Kept(_, result, _) => {
            let _ = tx.send(CliEvent::Done(result)).await;
        }
        Ran::Cancelled => {}
    }
}

/// Where a process handed to a run comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// The pre-warmed pool: nothing written yet.
    Pooled,
    /// A kept conversation: it answered earlier turns and waits for the next one.
    Kept,
}

/// How [`run_process`] ended.
enum Ran {
    Done(Result<Success, Box<FailureFacts>>),
    /// The consumer went away.
    Cancelled,
    /// A handed-over process ended without printing a single stdout line after its prompt
    /// was written (its failure, should the caller not retry).
    HandoverSilent(Handover, Result<Success, Box<FailureFacts>>),
    /// The turn was answered and the process still waits on stdin: keep it (a clean
    /// answer, under the conversation `keep` plus the answer) or reap it.
    Kept(
        Box<Spawned>,
        Result<Success, Box<FailureFacts>>,
        Option<FingerprintBuilder>,
    ),
}

/// How the watch loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// stdout reached EOF and the leader exited.
    Finished,
    /// A process whose stdin stays open printed its turn's `result`.
    TurnDone,
    Timeout(TimeoutKind),
    /// The consumer dropped the run.
    Cancelled,
    /// `Backend::abort_all`: the server is stopping.
    Aborted,
}

/// Spawn (or take the pre-warmed `pooled` process), watch and reap one process.
///
/// The start timeout counts from the moment the prompt is written: for a cold process
/// that is its spawn, for a pooled one the hand-over.
async fn run_process(
    shared: &Shared,
    req: &CliRequest,
    mut total_deadline: tokio::time::Instant,
    (tx, cmd_rx): (&mpsc::Sender<CliEvent>, &mut mpsc::Receiver<ToolResults>),
    cell: &RunCell,
    handover: Option<(Spawned, Handover)>,
    abort: &mut watch::Receiver<bool>,
) -> Ran {
    let settings = req.settings(&shared.settings);
    let stats = &shared.stats;
    let t0 = Instant::now();

    let handed = handover.as_ref().map(|(_, h)| *h);
    let is_pooled = handed == Some(Handover::Pooled);
    let mut sp = match handover {
        Some((sp, _)) => sp,
        None => match spawn_cli(settings, stats, req) {
            Ok(sp) => sp,
            Err(facts) => return Ran::Done(Err(facts)),
        },
    };
    let pid = sp.pid();
    let _ = cell.pid.set(pid);
    let start_base = if handed.is_some() {
        tokio::time::Instant::now()
    } else {
        sp.spawned_at()
    };
    // While a pooled run waits for its first line the pool does not refill: a refill's
    // CPU-heavy start-up would eat the very latency the pool exists to save.
    let mut starting = if is_pooled {
        shared.pool.as_deref().map(Pool::starting)
    } else {
        None
    };
    // A run that may be kept leaves stdin open: the CLI answers the turn, then waits. So
    // does a run with the client's tools: its MCP server talks on stdin.
    let keepable = req.keep.is_some() && !req.bypass_queue && shared.parked.keeps();
    let tools = req.tools.as_deref();
    let keep_open = keepable || tools.is_some();
    let mut keep = req.keep.clone().filter(|_| keepable);
    if tools.is_some() && handed.is_none() {
        // Opens the control channel; the CLI then asks its MCP server for the tools.
        sp.write_line(mcp::initialize_request());
    }
    if is_pooled {
        // The request's own settings, before its prompt (see `late.rs`).
        let pool_model = shared.pool.as_deref().and_then(Pool::model);
        for line in late::control_lines(req, pool_model) {
            sp.write_line(line);
        }
    }
    if !req.resume_results {
        sp.send_prompt(req, keep_open);
    } else if !keep_open {
        // The session ends with the client's results and nothing is written: the CLI
        // re-runs that turn and, with stdin closed, exits after it.
        sp.close_stdin_later();
    }
    let ring = sp.stderr_ring();
    // The client's tool calls the CLI waits in, and results that came before their call.
    let mut calls = HeldCalls {
        refuse: req.refuse_calls,
        ..HeldCalls::default()
    };
    let total = req.timeout.unwrap_or(settings.total_timeout);

    let mut acc = RunAccumulator::new();
    let mut first_line = false;
    let mut last_line = start_base;
    let mut stdout_open = true;
    let mut exited = false;
    let mut too_long = false;
    let mut peek_closed = Duration::from_millis(1);
    let end = 'watch: loop {
        if !stdout_open && exited {
            break End::Finished;
        }
        let (line_deadline, line_kind) = if first_line {
            (
                far_future(last_line, settings.inactivity_timeout),
                TimeoutKind::Inactivity,
            )
        } else {
            (
                far_future(start_base, settings.start_timeout),
                TimeoutKind::Start,
            )
        };
        let held = calls.waiting() && cell.held.load(Ordering::Acquire);
        let (deadline, kind) = if held {
            // The run is held, its CLI waiting in a tool call for the client (its
            // heartbeats are no sign of work): the parked store bounds that wait, not the
            // run's watchdogs. Before it is held (the model may still be streaming) they
            // all apply.
            (far_future(tokio::time::Instant::now(), HELD_RECHECK), None)
        } else if total_deadline <= line_deadline {
            (total_deadline, Some(TimeoutKind::Total))
        } else {
            (line_deadline, Some(line_kind))
        };
        let peek = if stdout_open {
            EXIT_PEEK_OPEN
        } else {
            peek_closed
        };
        tokio::select! {
            biased;
            _ = tx.closed() => break 'watch End::Cancelled,
            () = aborted(abort) => break 'watch End::Aborted,
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { continue };
                if cmd.keep.is_some() && keepable {
                    keep = cmd.keep;
                }
                calls.refuse = cmd.refuse_calls;
                calls.add_results(cmd.results);
                if calls.answer(&mut sp) {
                    // The client came back: its continuation is timed like a new request.
                    let now = tokio::time::Instant::now();
                    last_line = now;
                    total_deadline = far_future(now, total);
                }
            }
            msg = sp.next_line(), if stdout_open => {
                let Some(msg) = msg else {
                    stdout_open = false;
                    // stdout EOF usually means the leader is exiting or already a zombie:
                    // look now rather than after the first backoff sleep (>= 1 ms timer tick,
                    // which the response would otherwise wait for).
                    if !exited && sp.leader_exited() {
                        exited = true;
                        sp.kill_group();
                    }
                    continue;
                };
                last_line = tokio::time::Instant::now();
                // A pooled process answers the request's late settings first: that is
                // not yet its turn's first line (the start timeout, the hand-over retry
                // and the pool's refill wait for that).
                let late_reply = is_pooled
                    && matches!(&msg, LineMsg::Line(l) if l.starts_with(late::REPLY_PREFIX));
                if !first_line && !late_reply {
                    first_line = true;
                    let latency = last_line.duration_since(start_base);
                    match handed {
                        Some(Handover::Pooled) => {
                            stats.record_pool_first_line(latency);
                            drop(starting.take());
                        }
                        Some(Handover::Kept) => {}
                        None => stats.record_first_line(latency),
                    }
                }
                let line = match msg {
                    LineMsg::Line(l) => l,
                    LineMsg::TooLong => {
                        too_long = true;
                        continue;
                    }
                };
                for ev in acc.push_line(&line) {
                    let ev = match ev {
                        CliEvent::Control(Control::Request { request_id, request }) => {
                            match mcp::answer(&request_id, &request, tools) {
                                mcp::Action::Reply(reply) => {
                                    sp.write_line(reply);
                                    continue;
                                }
                                mcp::Action::Call { request_id, tool_use_id } => {
                                    let known = calls.call(request_id, mcp::jsonrpc_id(&request),
                                        tool_use_id.clone());
                                    calls.answer(&mut sp);
                                    if known {
                                        continue;
                                    }
                                    CliEvent::ToolCallHeld { tool_use_id }
                                }
                            }
                        }
                        CliEvent::Control(Control::Response { request_id, success, error }) => {
                            if !success {
                                tracing::warn!(pid, request_id, ?error,
                                    "the CLI refused a control request");
                                if is_pooled && !first_line && late::is_late(&request_id) {
                                    // A setting the pre-warmed process did not take: this
                                    // request runs cold instead (the hand-over retry).
                                    break 'watch End::Finished;
                                }
                            }
                            continue;
                        }
                        ev => ev,
                    };
                    match tokio::time::timeout_at(total_deadline, tx.send(ev)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break 'watch End::Cancelled,
                        Err(_) => break 'watch End::Timeout(TimeoutKind::Total),
                    }
                }
                match acc.last_result_ok() {
                    Some(true) if keep_open && !too_long => break 'watch End::TurnDone,
                    // A failed turn: let the CLI exit, and conclude from its whole run.
                    // (Not awaited: a write still in progress must not stop this loop from
                    // watching cancellation and the watchdogs.)
                    Some(_) if keep_open => sp.close_stdin_later(),
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                match kind {
                    // Held, or held since this deadline was set: look again.
                    _ if calls.waiting() && cell.held.load(Ordering::Acquire) => continue,
                    Some(kind) => break 'watch End::Timeout(kind),
                    None => continue,
                }
            }
            _ = tokio::time::sleep(peek), if !exited => {
                if sp.leader_exited() {
                    exited = true;
                    // The leader is a zombie (pgid still reserved): remove stragglers so
                    // that nobody holds stdout open and stdout reaches EOF.
                    sp.kill_group();
                } else if !stdout_open {
                    peek_closed = (peek_closed * 2).min(EXIT_PEEK_CLOSED_MAX);
                }
            }
        }
    };

    if end == End::TurnDone {
        let result = acc.conclude(RunEnd {
            stderr_tail: ring_to_string(&ring),
            ..RunEnd::default()
        });
        tracing::debug!(
            pid,
            "cli turn answered; the process waits for its next turn"
        );
        // The CLI read its session file at start; a kept process needs it no more.
        sp.drop_session_file();
        return Ran::Kept(Box::new(sp), result, keep);
    }
    // Always: kill whatever is left of the group, then reap the leader.
    let status = sp.reap().await;
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    tracing::debug!(
        pid,
        pooled = is_pooled,
        ?exit_code,
        ?signal,
        ?end,
        duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        "cli run ended"
    );

    let timeout = match end {
        End::Cancelled => {
            cell.count_gone(stats);
            return Ran::Cancelled;
        }
        End::Timeout(kind) => {
            stats.timeouts_total.fetch_add(1, Ordering::Relaxed);
            Some(kind)
        }
        End::Aborted => {
            return Ran::Done(Err(Box::new(FailureFacts {
                condition: Some(GatewayCondition::ShuttingDown),
                exit_code,
                signal,
                ..FailureFacts::default()
            })));
        }
        // (A turn answered in a kept process returned above.)
        End::Finished | End::TurnDone => None,
    };
    let result = acc.conclude(RunEnd {
        exit_code,
        signal,
        stderr_tail: ring_to_string(&ring),
        timeout,
        condition: too_long.then_some(GatewayCondition::BadJson),
    });
    if let Some(h) = handed.filter(|_| !first_line && end == End::Finished && result.is_err()) {
        return Ran::HandoverSilent(h, result);
    }
    Ran::Done(result)
}

/// The `tools/call` requests a run's CLI waits in, and the client's results.
#[derive(Default)]
struct HeldCalls {
    /// Calls not answered yet: the control request id, the JSON-RPC id, the tool-use id.
    pending: Vec<(String, serde_json::Value, String)>,
    /// Results by tool-use id, kept until their call comes (the CLI asks for a message's
    /// calls one at a time).
    results: Vec<ToolResult>,
    /// Every call gets an error result at once (`tool_choice: none`).
    refuse: bool,
}

impl HeldCalls {
    /// Whether the CLI waits for the client (a call is pending and its result unknown).
    fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records a `tools/call`; true when its result is already known (so the client
    /// need not hear of it).
    fn call(&mut self, request_id: String, rpc_id: serde_json::Value, tool_use_id: String) -> bool {
        if self.refuse && !self.results.iter().any(|r| r.tool_use_id == tool_use_id) {
            self.results.push(ToolResult {
                tool_use_id: tool_use_id.clone(),
                content: vec![Block::Text(
                    "Tool use is turned off for this request; answer without calling tools.".into(),
                )],
                is_error: true,
            });
        }
        let known = self.results.iter().any(|r| r.tool_use_id == tool_use_id);
        self.pending.push((request_id, rpc_id, tool_use_id));
        known
    }

    fn add_results(&mut self, results: Vec<ToolResult>) {
        self.results.extend(results);
    }

    /// Answers every pending call whose result is known; true if any was answered.
    fn answer(&mut self, sp: &mut Spawned) -> bool {
        let mut answered = false;
        let mut still = Vec::new();
        for (request_id, rpc_id, tool_use_id) in std::mem::take(&mut self.pending) {
            match self
                .results
                .iter()
                .position(|r| r.tool_use_id == tool_use_id)
            {
                Some(i) => {
                    let r = self.results.remove(i);
                    sp.write_line(mcp::call_reply(&request_id, &rpc_id, &mcp::call_result(&r)));
                    answered = true;
                }
                None => still.push((request_id, rpc_id, tool_use_id)),
            }
        }
        self.pending = still;
        answered
    }
}
