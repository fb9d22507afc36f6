//! Ending a run's whole process tree, including descendants that left its process group.
//!
//! A CLI with tools can start a process that calls `setsid` (a new session and group), so
//! killing the run's group misses it. Every run's processes carry a tag in their
//! environment (`CCGATE_RUN_TAG=<ccgate pid>.<n>`), which descendants inherit whatever
//! their session or group; when a run ends, [`end_run`] SIGKILLs every process whose
//! environment carries that tag. `serve` makes ccgate a child subreaper
//! ([`become_subreaper`]), so such escaped processes are re-parented to ccgate rather than
//! to init; [`end_run`] also reaps adopted children that have exited — only pids ccgate
//! did not spawn itself (those tokio reaps), so no `Child::wait` loses its status — and
//! only in a process that is a subreaper (`serve`), whose only children are CLI runs.
//!
//! Limits: a descendant that clears its environment before `setsid` is not recognised by
//! its tag (it is still reaped once it exits); the scan reads `/proc` (Linux only).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The environment variable carrying a run's tag.
pub(super) const RUN_TAG_VAR: &str = "CCGATE_RUN_TAG";

/// How long [`end_run`] waits for killed processes to exit (so it can reap them).
const KILL_GRACE: Duration = Duration::from_millis(200);

/// Pids of the CLI processes ccgate spawned and has not reaped yet (tokio reaps them).
/// Held while spawning, so a new child is never mistaken for an adopted one. Counted: a
/// pid reused by a new spawn before the old leader's guard forgot it stays tracked.
static SPAWNED: Mutex<BTreeMap<i32, usize>> = Mutex::new(BTreeMap::new());

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// Set once this process is a child subreaper: only then are adopted zombies reaped (a
/// process that is not one, like a test binary, may have children of its own that some
/// other `wait` is about to collect).
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// Makes this process a child subreaper: orphans in its subtree are re-parented to it.
/// Called when `serve` starts.
pub fn become_subreaper() {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper; CLI descendants that leave their process group are re-parented to init")
        }
    }
}

/// A new run tag, unique in this process (and across ccgate processes by the pid).
pub(super) fn new_tag() -> String {
    format!(
        "{}.{}",
        std::process::id(),
        NEXT_TAG.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawned() -> std::sync::MutexGuard<'static, BTreeMap<i32, usize>> {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `spawn` (which returns the child's pid on success) while adopted-child reaping is
/// held off, and records the pid as one of ours.
pub(super) fn spawning<T>(spawn: impl FnOnce() -> (T, Option<i32>)) -> T {
    let mut set = spawned();
    let (out, pid) = spawn();
    if let Some(pid) = pid {
        *set.entry(pid).or_insert(0) += 1;
    }
    out
}

/// The leader `pid` has been reaped (or given up on): it is no longer ours to track.
pub(super) fn forget(pid: i32) {
    let mut set = spawned();
    if let Some(n) = set.get_mut(&pid) {
        *n -= 1;
        if *n == 0 {
            set.remove(&pid);
        }
    }
}

/// Kills every process carrying `tag` (the run has ended: its group is already dead) and
/// reaps adopted children that have exited. Blocking (a `/proc` scan, and up to
/// `KILL_GRACE` when it killed something); cheap when nothing escaped.
pub(super) fn end_run(tag: &str) {
    let me = std::process::id();
    let needle = format!("{RUN_TAG_VAR}={tag}");
    let mut killed = Vec::new();
    for pid in proc_pids() {
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|e| e == needle.as_bytes()) {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                killed.push(pid);
            }
        }
    }
    if !killed.is_empty() {
        tracing::info!(tag, pids = ?killed, "killed CLI descendants that had left the run's process group");
        let t0 = Instant::now();
        while t0.elapsed() < KILL_GRACE
            && killed
                .iter()
                .any(|p| matches!(proc_state(*p), Some((s, _)) if s != 'Z'))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    reap_adopted();
}

/// Reaps exited children that ccgate did not spawn itself (adopted as subreaper).
fn reap_adopted() {
    if !SUBREAPER.load(Ordering::Relaxed) {
        return;
    }
    let me = std::process::id();
    let set = spawned();
    for pid in proc_pids() {
        let Some(('Z', ppid)) = proc_state(pid) else {
            continue;
        };
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if ppid == me && !set.contains_key(&raw) {
            let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
        }
    }
}

fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
}

/// A process's state letter and parent pid, from `/proc/<pid>/stat`.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
