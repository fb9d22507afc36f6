//! The process-wide CLI health state (the `cli_health` contract of
//! `shared/spec/health-contract.md`) and the gate that answers requests without spawning
//! while the CLI is known unhealthy. The probe task that feeds it lives in `probe.rs`.
//!
//! Invariant: only a verdict whose kind the rules mark `unhealthy` flips `ok` to false;
//! anything else a probe sees is recorded as inconclusive and leaves `ok` alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_rfc3339;

/// `error_message` is cut to this many characters (contract).
pub const ERROR_MESSAGE_MAX_CHARS: usize = 500;

/// Where the current verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Probe,
    Request,
}

/// What the last probe concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOutcome {
    Ok,
    Unhealthy,
    Inconclusive,
}

/// The last probe run, kept apart from `cli_health` so an inconclusive probe never
/// changes the contract fields.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    pub at: String,
    pub outcome: ProbeOutcome,
    pub kind: Option<String>,
    pub message: Option<String>,
    pub duration_ms: u64,
}

/// A request's verdict of an `unhealthy` kind that the probe has not judged yet. Kind and
/// time only: the request's own text may be its client's.
#[derive(Debug, Clone, Serialize)]
pub struct Suspicion {
    pub kind: String,
    pub at: String,
    /// Orders suspicions against probes (a probe that began before it does not clear it).
    #[serde(skip)]
    seq: u64,
}

/// `cli_health` exactly as the contract names it, plus ccgate's extras.
#[derive(Debug, Clone, Serialize)]
pub struct CliHealth {
    pub ok: bool,
    pub last_probed_at: Option<String>,
    pub last_ok_at: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// Who produced the current verdict (`probe` or `request`); null before any.
    pub source: Option<Source>,
    pub consecutive_failures: u32,
    pub last_probe: Option<LastProbe>,
    /// A request-path `unhealthy` verdict waiting for the probe it woke; the gate stays
    /// open until that probe agrees. Null when there is none.
    pub suspected: Option<Suspicion>,
    /// Suspicions raised so far (orders them against probes).
    #[serde(skip)]
    suspicions: u64,
}

impl Default for CliHealth {
    fn default() -> Self {
        CliHealth {
            ok: true,
            last_probed_at: None,
            last_ok_at: None,
            error_kind: None,
            error_message: None,
            source: None,
            consecutive_failures: 0,
            last_probe: None,
            suspected: None,
            suspicions: 0,
        }
    }
}

/// An account taken out of service by a kind with `cooldown` until `until_unix`; the
/// probe runs right after that time and clears it (or renews it). Kept apart from
/// `cli_health`, whose contract fields it never changes.
#[derive(Debug, Clone, Serialize)]
pub struct Cooldown {
    /// RFC 3339 UTC.
    pub until: String,
    #[serde(skip)]
    pub until_unix: u64,
    /// The kind that caused it (`usage_limit`, …) and its (redacted) message.
    pub kind: String,
    pub message: String,
    pub since: String,
    pub source: Source,
}

impl Cooldown {
    /// A cooldown of `kind` until `until_unix` (message cut to the contract's length).
    pub fn new(source: Source, kind: &str, message: &str, until_unix: u64) -> Cooldown {
        Cooldown {
            until: crate::clock::rfc3339_of_unix(until_unix),
            until_unix,
            kind: kind.to_string(),
            message: cut(message),
            since: now_rfc3339(),
            source,
        }
    }
}

/// Shared health state. Cheap to read; writes are rare.
#[derive(Debug)]
pub struct Health {
    state: Mutex<CliHealth>,
    /// Bumped (under the lock) after every change of the fields a gate answer renders
    /// (`ok`, `last_probed_at`, `error_kind`, `error_message`): see [`Health::epoch`].
    epoch: AtomicU64,
    /// Set while a cooldown takes this (account's) CLI out; see [`Cooldown`].
    cooldown: Mutex<Option<Cooldown>>,
    /// Wakes the probe task to probe now: a request-path unhealthy verdict asks for a
    /// confirming probe, a reload while the gate is closed for a re-decision.
    pub probe_wakeup: Notify,
    /// Wakes the probe task to re-read its settings (a reload changed the interval)
    /// without probing now.
    pub settings_changed: Notify,
    /// True while the first probe after start is running. Requests arriving meanwhile wait
    /// for its verdict (bounded by [`STARTUP_PROBE_WAIT`]) instead of each spawning a CLI
    /// of their own: a logged-out CLI then costs one process, and clients get the gate's
    /// 401 as soon as that one probe knows.
    startup_probe: tokio::sync::watch::Sender<bool>,
}

/// The longest a request waits for the first probe's verdict before running anyway.
pub const STARTUP_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::default(),
            epoch: AtomicU64::new(0),
            cooldown: Mutex::default(),
            probe_wakeup: Notify::new(),
            settings_changed: Notify::new(),
            startup_probe: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn cut(message: &str) -> String {
    message.chars().take(ERROR_MESSAGE_MAX_CHARS).collect()
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, CliHealth> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the
        // state is still a valid value, so keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> CliHealth {
        self.lock().clone()
    }

    pub fn is_ok(&self) -> bool {
        self.lock().ok
    }

    /// A number that changes whenever the gate's state or the health fields its answer
    /// shows change. Read it *before* a [`Health::snapshot`]: if it is unchanged later, so
    /// is everything that snapshot rendered (a change after the read bumps it).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Contract `mark_ok`: `last_probed_at` = `last_ok_at` = now, error fields cleared.
    pub fn mark_ok(&self, source: Source) {
        let now = now_rfc3339();
        let mut s = self.lock();
        s.ok = true;
        s.last_probed_at = Some(now.clone());
        s.last_ok_at = Some(now);
        s.error_kind = None;
        s.error_message = None;
        s.source = Some(source);
        s.consecutive_failures = 0;
        self.bump();
    }

    /// A verdict of an `unhealthy` kind: `ok=false`, `last_probed_at`, error fields set,
    /// `last_ok_at` kept. Returns true if this flipped the state from ok to failed.
    pub fn mark_failed(&self, source: Source, kind: &str, message: &str) -> bool {
        let mut s = self.lock();
        let flipped = s.ok;
        s.ok = false;
        s.last_probed_at = Some(now_rfc3339());
        s.error_kind = Some(kind.to_string());
        s.error_message = Some(cut(message));
        s.source = Some(source);
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        self.bump();
        flipped
    }

    /// A request's verdict of an `unhealthy` kind, for the probe to confirm or refute; the
    /// state (and the gate) is unchanged.
    pub fn suspect(&self, kind: &str) {
        let mut s = self.lock();
        s.suspicions += 1;
        let seq = s.suspicions;
        s.suspected = Some(Suspicion {
            kind: kind.to_string(),
            at: now_rfc3339(),
            seq,
        });
    }

    /// Marks where a probe begins, for [`Health::record_probe`].
    pub fn probe_started(&self) -> u64 {
        self.lock().suspicions
    }

    /// Record a probe run (all outcomes) for `/v1/auth/status`. It answers the suspicions
    /// raised before it began (`started`, from [`Health::probe_started`]).
    pub fn record_probe(&self, probe: LastProbe, started: u64) {
        let mut s = self.lock();
        s.last_probe = Some(LastProbe {
            message: probe.message.as_deref().map(cut),
            ..probe
        });
        if s.suspected.as_ref().is_some_and(|x| x.seq <= started) {
            s.suspected = None;
        }
    }

    /// Marks the first probe as pending; called by `serve` before it accepts connections
    /// (so no request can slip in before the mark) when the periodic probe is enabled.
    pub fn expect_startup_probe(&self) {
        self.startup_probe.send_replace(true);
    }

    /// The first probe after start has answered (or will not: shutdown began).
    pub fn end_startup_probe(&self) {
        self.startup_probe.send_replace(false);
    }

    /// True while the first probe after start is still running.
    pub fn startup_probe_pending(&self) -> bool {
        *self.startup_probe.borrow()
    }

    /// Waits (bounded) while the first probe after start is still running.
    pub async fn await_startup_probe(&self) {
        // The common case costs no timer and no subscription.
        if !self.startup_probe_pending() {
            return;
        }
        let mut rx = self.startup_probe.subscribe();
        let _ = tokio::time::timeout(STARTUP_PROBE_WAIT, rx.wait_for(|running| !running)).await;
    }

    fn cooldown_lock(&self) -> std::sync::MutexGuard<'_, Option<Cooldown>> {
        self.cooldown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cooldown in force, if any (also once its time is past, until a probe clears it).
    pub fn cooldown(&self) -> Option<Cooldown> {
        self.cooldown_lock().clone()
    }

    /// Takes the CLI out until `c.until_unix` (a later cooldown replaces an earlier one;
    /// an earlier one never shortens it) and re-times the probe for that moment. Returns
    /// true if it was not cooling down before.
    pub fn set_cooldown(&self, c: Cooldown) -> bool {
        let fresh = {
            let mut slot = self.cooldown_lock();
            let fresh = slot.is_none();
            if slot
                .as_ref()
                .is_none_or(|old| old.until_unix <= c.until_unix)
            {
                *slot = Some(c);
            }
            fresh
        };
        self.settings_changed.notify_one();
        fresh
    }

    /// Ends the cooldown (a probe after it succeeded or saw another verdict).
    pub fn clear_cooldown(&self) {
        self.cooldown_lock().take();
    }

    /// Some(kind) while the gate is closed (CLI known unhealthy).
    pub fn gate(&self) -> Option<CliHealth> {
        let s = self.lock();
        (!s.ok).then(|| s.clone())
    }
}
