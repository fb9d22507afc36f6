//! One CLI child process in its own process group: spawning it with ccgate's flags
//! ([`spawn_cli`]), killing the group, noticing the leader's exit without reaping it, and
//! the orderly end ([`Spawned::reap`]: kill the group, then reap the leader). A process
//! dropped before that end (a task cancelled, no runtime left) is still killed and reaped
//! by its [`Leader`] guard, with a short blocking wait.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::args::{cli_args, user_line, write_system_prompt};
use super::io::{drain_stderr, read_lines, LineMsg, Ring, MAX_LINE_BYTES};
use super::reaper;
use super::request::{CliRequest, CliSettings};
use super::session::{session_dir, write_session, SessionFile};
use super::stats::{BackendStats, InFlight};
use crate::rules::{FailureFacts, GatewayCondition, SpawnErrorKind};

/// Lines buffered between the stdout reader task and the driver.
const LINE_CHANNEL: usize = 64;
/// How long to wait for the leader to die after SIGKILL before giving up on reaping it
/// here (then `kill_on_drop` and tokio's orphan queue take over).
const REAP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the stderr drain to reach EOF once the group is dead.
const STDERR_GRACE: Duration = Duration::from_millis(500);
/// How long a [`Leader`] dropped without [`Spawned::reap`] blocks for the killed leader to
/// exit (SIGKILL takes effect in milliseconds) before it leaves it to tokio's orphan queue.
const DROP_REAP_GRACE: Duration = Duration::from_millis(500);

/// A spawned CLI process with its stdout reader and stderr drain already running, and its
/// stdin still open (nothing written yet). A pooled process waits in this state; a cold
/// run writes its prompt right away. [`Spawned::reap`] is the orderly end (kill group, then
/// reap); dropping it instead kills the group and reaps the leader right there (blocking
/// briefly, see [`Leader`]).
pub(super) struct Spawned {
    leader: Leader,
    pid: i32,
    stdin: Option<tokio::process::ChildStdin>,
    /// Writes a user line; gives stdin back when it stays open for a later turn.
    stdin_task: Option<tokio::task::JoinHandle<Option<tokio::process::ChildStdin>>>,
    line_rx: mpsc::Receiver<LineMsg>,
    stdout_task: Option<tokio::task::JoinHandle<()>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    ring: Ring,
    /// The system prompt file must outlive the process (deleted on drop).
    system_file: Option<tempfile::NamedTempFile>,
    /// The synthesized session the process resumed (deleted on drop).
    session_file: Option<SessionFile>,
    spawned_at: tokio::time::Instant,
    _in_flight: InFlight,
}

impl Spawned {
    /// The process id (also its process-group id).
    pub(super) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// When it was spawned.
    pub(super) fn spawned_at(&self) -> tokio::time::Instant {
        self.spawned_at
    }

    /// The next stdout line; `None` at EOF.
    pub(super) async fn next_line(&mut self) -> Option<LineMsg> {
        self.line_rx.recv().await
    }

    /// The ring the stderr drain fills (complete once [`Spawned::reap`] returned).
    pub(super) fn stderr_ring(&self) -> Ring {
        Arc::clone(&self.ring)
    }

    /// Whether the leader has exited (it stays a zombie until [`Spawned::reap`]).
    pub(super) fn leader_exited(&self) -> bool {
        leader_exited(self.leader.pgid)
    }

    /// SIGKILLs the whole group; safe while the leader is not reaped.
    pub(super) fn kill_group(&self) {
        kill_group(self.leader.pgid);
    }

    /// Whether a process that has not been given a prompt yet can still take one: its
    /// leader is alive (not even a zombie) and it has printed nothing on stdout. Consumes
    /// a stray stdout line if there is one (the process is unusable anyway).
    pub(super) fn idle_usable(&mut self) -> bool {
        if leader_exited(self.leader.pgid) {
            return false;
        }
        matches!(
            self.line_rx.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        )
    }

    /// Writes one line to stdin in a task of its own, after every earlier write (so a huge
    /// prompt cannot block the watchdogs; it fails harmlessly with EPIPE if the process
    /// dies first). Stdin stays open.
    pub(super) fn write_line(&mut self, line: String) {
        let stdin = self.stdin.take();
        let earlier = self.stdin_task.take();
        self.stdin_task = Some(tokio::spawn(async move {
            let mut stdin = match (stdin, earlier) {
                (Some(s), _) => s,
                (None, Some(t)) => t.await.ok().flatten()?,
                (None, None) => return None,
            };
            let written =
                stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok();
            written.then_some(stdin)
        }));
    }

    /// Closes stdin after every earlier write, without waiting for that.
    pub(super) fn close_stdin_later(&mut self) {
        let stdin = self.stdin.take();
        let earlier = self.stdin_task.take();
        self.stdin_task = Some(tokio::spawn(async move {
            let stdin = match (stdin, earlier) {
                (Some(s), _) => Some(s),
                (None, Some(t)) => t.await.ok().flatten(),
                (None, None) => None,
            };
            if let Some(mut s) = stdin {
                let _ = s.shutdown().await;
            }
            None
        }));
    }

    /// Writes the turn's user line (see [`Spawned::write_line`]). Then stdin is closed, so
    /// the CLI exits after this turn, unless `keep_open`: a kept process waits for its next
    /// turn, and a run with client tools answers the CLI's control requests on stdin.
    pub(super) fn send_prompt(&mut self, req: &CliRequest, keep_open: bool) {
        self.write_line(user_line(&req.prompt, &req.attachments));
        if !keep_open {
            self.close_stdin_later();
        }
    }

    /// Deletes the synthesized session file (read by the CLI when it started).
    pub(super) fn drop_session_file(&mut self) {
        drop(self.session_file.take());
    }

    /// Closes stdin (after any write in progress), so the CLI exits.
    pub(super) async fn close_stdin(&mut self) {
        if let Some(task) = self.stdin_task.take() {
            drop(task.await.ok().flatten());
        }
        drop(self.stdin.take());
    }

    /// The end of every process: SIGKILL whatever is left of the group (before reaping,
    /// see [`leader_exited`]), reap the leader, stop the helper tasks. Returns the exit
    /// status (None if it could not be reaped in time; `kill_on_drop` and tokio's orphan
    /// queue take over then).
    pub(super) async fn reap(self) -> Option<ExitStatus> {
        let Spawned {
            mut leader,
            pid: _,
            stdin,
            stdin_task,
            line_rx,
            stdout_task,
            stderr_task,
            ring: _,
            system_file,
            session_file,
            spawned_at: _,
            _in_flight,
        } = self;
        drop(stdin);
        let status = leader.reap().await;
        // Descendants that left the group (`setsid`) end with the run too.
        if let Some(tag) = leader.tag.clone() {
            if let Err(e) = tokio::task::spawn_blocking(move || reaper::end_run(&tag)).await {
                tracing::warn!(error = %e, "ending the run's descendants failed");
            }
        }
        drop(leader);
        drop(system_file);
        drop(session_file);
        drop(line_rx);
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = stdout_task {
            t.abort();
        }
        if let Some(mut t) = stderr_task {
            if tokio::time::timeout(STDERR_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
        status
    }
}

/// Spawns the CLI for `req`'s process flags (model, system prompt, tools, history, schema,
/// effort, thinking) with ccgate's flags and starts draining its stdout and stderr. Nothing
/// is written to stdin (`req.prompt` is not looked at). Spawn errors come back as facts.
pub(super) fn spawn_cli(
    settings: &CliSettings,
    stats: &Arc<BackendStats>,
    req: &CliRequest,
) -> Result<Spawned, Box<FailureFacts>> {
    let model = req.model.as_deref();
    let history = req.history.as_slice();
    // A missing working directory also fails with ENOENT; say so instead of "not found".
    if let Err(e) = std::fs::metadata(&settings.workdir) {
        stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
        let msg = format!("working directory {}: {e}", settings.workdir.display());
        return Err(spawn_error_facts(SpawnErrorKind::Other, msg));
    }
    // Files next, off the async workers: a session file holds a whole earlier
    // conversation (megabytes), a system prompt can be large too.
    let files = crate::offload::blocking(|| {
        let system = req
            .system_prompt
            .as_deref()
            .map(|text| write_system_prompt(&settings.temp_dir, text))
            .transpose()
            .map_err(|e| ("system prompt file", settings.temp_dir.clone(), e))?;
        let session = (!history.is_empty())
            .then(|| write_session(settings, model, history))
            .transpose()
            .map_err(|e| ("session file", session_dir(settings), e))?;
        Ok((system, session))
    });
    let (system_file, session_file) = match files {
        Ok(files) => files,
        Err((what, dir, e)) => {
            stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
            // The path and the OS error go to the log only: a client learns that the
            // gateway cannot write its private files, not where they are.
            tracing::error!(dir = %dir.display(), error = %e, file = what,
                "cannot write a run's private file (cli.temp_dir / TMPDIR, or CLAUDE_CONFIG_DIR for sessions, full or read-only?)");
            return Err(Box::new(FailureFacts {
                condition: Some(GatewayCondition::TmpUnwritable),
                ..FailureFacts::default()
            }));
        }
    };
    let mut args = cli_args(settings, req, system_file.as_ref().map(|f| f.path()));
    if let Some(f) = &session_file {
        for a in ["--resume", f.id.as_str(), "--fork-session"] {
            args.push(a.into());
        }
    }
    // Only a CLI with its tools can start processes that leave its group; without them
    // the run end needs no `/proc` scan (which costs about a millisecond per request).
    let tag = settings.tools.then(reaper::new_tag);
    let mut cmd = build_command(settings, args, tag.as_deref());
    if req.tools.is_some() {
        // The CLI's own limit on a tool call must not end a held call before ccgate's
        // hold timeout does (its expiry would make a model call nobody waits for).
        let ms = settings
            .tool_hold_timeout
            .as_millis()
            .saturating_add(60_000);
        cmd.env("MCP_TOOL_TIMEOUT", ms.to_string());
    }
    if req.options.web.is_some() {
        let base = settings
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "ANTHROPIC_BASE_URL")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("ANTHROPIC_BASE_URL").ok());
        cmd.envs(req.options.env(base.as_deref()));
    }
    if req.resume_results {
        // The session ends with the client's tool results: the CLI re-runs that
        // interrupted turn from them (no stdin line; one model call).
        cmd.env("CLAUDE_CODE_RESUME_INTERRUPTED_TURN", "1");
    }

    let spawned_at = tokio::time::Instant::now();
    let spawned = reaper::spawning(|| {
        let r = cmd.spawn();
        let pid = r
            .as_ref()
            .ok()
            .and_then(|c| c.id())
            .and_then(|p| i32::try_from(p).ok());
        (r, pid)
    });
    let mut child: Child = match spawned {
        Ok(c) => c,
        Err(e) => {
            stats.spawn_errors_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(command = %settings.command.display(), error = %e, "cli spawn failed");
            return Err(spawn_error_facts(spawn_error_kind(&e), e.to_string()));
        }
    };
    let in_flight = InFlight::new(stats);
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Cannot happen for a freshly spawned child; be defensive rather than panic.
        // (`kill_on_drop` kills it; tokio's orphan queue reaps it.)
        let _ = child.start_kill();
        let msg = "spawned process has no pid".to_string();
        return Err(spawn_error_facts(SpawnErrorKind::Other, msg));
    };
    let pgid = Pid::from_raw(pid);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let leader = Leader {
        child,
        pgid,
        guard: Guard::Armed,
        tag,
    };

    let (line_tx, line_rx) = mpsc::channel(LINE_CHANNEL);
    let stdout_task = match stdout {
        Some(out) => Some(tokio::spawn(read_lines(out, line_tx, MAX_LINE_BYTES))),
        None => {
            drop(line_tx);
            None
        }
    };
    let ring: Ring = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_task = stderr.map(|err| {
        tokio::spawn(drain_stderr(
            err,
            Arc::clone(&ring),
            settings.stderr_tail_bytes,
        ))
    });
    Ok(Spawned {
        leader,
        pid,
        stdin,
        stdin_task: None,
        line_rx,
        stdout_task,
        stderr_task,
        ring,
        system_file,
        session_file,
        spawned_at,
        _in_flight: in_flight,
    })
}

pub(super) fn build_command(
    settings: &CliSettings,
    args: Vec<OsString>,
    tag: Option<&str>,
) -> Command {
    let mut cmd = Command::new(&settings.command);
    cmd.args(args)
        .current_dir(&settings.workdir)
        .env_remove("CLAUDECODE")
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(tag) = tag {
        cmd.env(reaper::RUN_TAG_VAR, tag);
    }
    cmd
}

fn spawn_error_facts(kind: SpawnErrorKind, message: String) -> Box<FailureFacts> {
    Box::new(FailureFacts {
        spawn_error: Some(kind),
        spawn_error_message: Some(message),
        ..FailureFacts::default()
    })
}

fn spawn_error_kind(e: &std::io::Error) -> SpawnErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => SpawnErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => SpawnErrorKind::PermissionDenied,
        _ => SpawnErrorKind::Other,
    }
}

/// Whether the group may still be signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// The leader is not reaped yet: its pid, which is the pgid, stays reserved (alive or
    /// a zombie), so a `killpg` cannot hit a stranger.
    Armed,
    /// Reaped: from now on the pgid may be reused, never signal it again.
    Reaped,
    /// Not reaped after SIGKILL within `REAP_GRACE`: left to `kill_on_drop` and tokio's
    /// orphan queue.
    GaveUp,
}

/// The group leader. Dropped before [`Leader::reap`] finished (a cancelled task, a dropped
/// idle process, no runtime left), it kills the group and reaps the leader right there,
/// blocking up to `DROP_REAP_GRACE`, so a dropped process never lingers as a zombie.
struct Leader {
    child: Child,
    pgid: Pid,
    guard: Guard,
    /// The run's tag in its processes' environment ([`reaper`]; with the CLI's tools on).
    tag: Option<String>,
}

impl Leader {
    /// SIGKILL the group, then reap the leader (waits up to `REAP_GRACE`).
    async fn reap(&mut self) -> Option<ExitStatus> {
        kill_group(self.pgid);
        let pid = self.pgid.as_raw();
        match tokio::time::timeout(REAP_GRACE, self.child.wait()).await {
            Ok(Ok(s)) => {
                self.guard = Guard::Reaped;
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::warn!(pid, error = %e, "waiting for the cli process failed");
                self.guard = Guard::Reaped;
                None
            }
            Err(_) => {
                tracing::warn!(
                    pid,
                    "cli process did not die after SIGKILL; leaving it to the orphan reaper"
                );
                self.guard = Guard::GaveUp;
                None
            }
        }
    }

    /// The blocking counterpart of [`Leader::reap`], for `Drop`.
    fn reap_blocking(&mut self) {
        kill_group(self.pgid);
        let t0 = std::time::Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    self.guard = Guard::Reaped;
                    return;
                }
                Ok(None) if t0.elapsed() < DROP_REAP_GRACE => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Ok(None) => {
                    tracing::warn!(
                        pid = self.pgid.as_raw(),
                        "dropped cli process did not die after SIGKILL; leaving it to the orphan reaper"
                    );
                    self.guard = Guard::GaveUp;
                    return;
                }
                Err(e) => {
                    tracing::warn!(pid = self.pgid.as_raw(), error = %e, "waiting for the cli process failed");
                    self.guard = Guard::Reaped;
                    return;
                }
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        match self.guard {
            Guard::Armed => {
                self.reap_blocking();
                if let Some(tag) = &self.tag {
                    reaper::end_run(tag);
                }
            }
            Guard::GaveUp => kill_group(self.pgid),
            Guard::Reaped => {}
        }
        reaper::forget(self.pgid.as_raw());
    }
}

/// SIGKILL a whole process group; "no such group" is fine (everyone is already gone).
fn kill_group(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), error = %e, "killpg failed"),
    }
}

/// Whether the leader has exited, *without* reaping it (WNOWAIT): the zombie keeps the
/// pid and pgid reserved until we call `wait()`, so a later `killpg` cannot hit a stranger.
fn leader_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
        // Exited, or an error such as ECHILD: either way there is nothing left to wait for.
        Ok(_) | Err(_) => true,
    }
}
