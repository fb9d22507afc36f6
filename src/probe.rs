//! The health probe: a short CLI run with the current rules' probe settings whose verdict
//! feeds [`Health`]. [`Prober::run`] is the periodic task (`serve` spawns it), and
//! `POST /admin/probe` calls [`Prober::probe_once`]. A request's unhealthy verdict is only
//! a suspicion ([`Prober::suspect_unhealthy`]) that wakes the probe.
//!
//! Invariants: only the probe's verdict closes the gate (its prompt and model are the
//! operator's, never a client's), and only a verdict whose kind the rules mark `unhealthy`;
//! other failures are inconclusive and leave it as it is.
//!
//! With several accounts there is one `Prober` per account ([`Prober::with_account`]): it
//! probes with that account's environment and feeds that account's [`Health`]. Such a
//! prober also keeps the account's cooldown ([`Health::set_cooldown`]): a probe whose
//! verdict has a `cooldown` renews it, and the periodic task probes right after it ends;
//! any other verdict of that probe ends it.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::backend::{Account, Backend, CliEvent, CliRequest};
use crate::clock::now_rfc3339;
use crate::health::{Cooldown, Health, LastProbe, ProbeOutcome, Source};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::rules::{FailureFacts, GatewayCondition, Rules, Verdict, ACCOUNT_ACTION_REQUIRED};
use crate::shutdown::Shutdown;

/// How long after a cooldown's reset time its probe runs (the upstream's clock may be a
/// little behind ours).
const COOLDOWN_SLACK: std::time::Duration = std::time::Duration::from_millis(500);

/// The name of the implicit account (no `accounts` configured); `accounts` uses it too.
pub const IMPLICIT_ACCOUNT: &str = "default";

/// What the metric and log line name as the reason of an `account_action_required`
/// verdict: the CLI's typed value that matched (`consumer_terms_accept_on_web`,
/// `token_revoked`, …), or `text` when a marker or regex did.
pub fn action_reason(verdict: &Verdict) -> &str {
    verdict
        .matched
        .as_deref()
        .and_then(|m| m.split_once('='))
        .filter(|(field, _)| !matches!(*field, "marker" | "regex"))
        .map_or("text", |(_, value)| value)
}

/// A verdict of the built-in kind `account_action_required` took `account` out of
/// service until a probe succeeds: the operator's log line (with the CLI's remedy, as
/// redacted in the verdict) and `ccgate_account_action_required_total`.
pub fn action_required(metrics: &Metrics, account: &str, verdict: &Verdict) {
    let reason = action_reason(verdict);
    tracing::error!(
        account,
        kind = verdict.kind.as_str(),
        reason,
        remedy = verdict.message.as_str(),
        "a person must act on this account before it can serve again; it is out of service until a probe succeeds"
    );
    metrics.count_action_required(account, reason);
}

/// Runs probes and records verdicts. Shared (`Arc`) by the periodic task and the handlers.
pub struct Prober {
    rules: Arc<ArcSwap<Rules>>,
    backend: Backend,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Serializes probes (the periodic task and `POST /admin/probe`).
    serial: tokio::sync::Mutex<()>,
    /// The account probed (None: the implicit one).
    account: Option<Arc<Account>>,
    /// Whether verdicts with a `cooldown` take this account out (configured accounts).
    cooldowns: bool,
    /// Called after each probe's verdict is recorded (the gateway-wide view of several
    /// accounts is derived from theirs).
    on_change: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    pub fn new(
        rules: Arc<ArcSwap<Rules>>,
        backend: Backend,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Prober {
        Prober {
            rules,
            backend,
            health,
            metrics,
            serial: tokio::sync::Mutex::new(()),
            account: None,
            cooldowns: false,
            on_change: None,
        }
    }

    /// This prober probes `account` (its spawn environment); `cooldowns`: verdicts with a
    /// `cooldown` take it out until then, and the probe runs right after.
    pub fn with_account(mut self, account: Arc<Account>, cooldowns: bool) -> Prober {
        self.account = Some(account);
        self.cooldowns = cooldowns;
        self
    }

    /// Calls `f` after every probe verdict is recorded.
    pub fn on_change(mut self, f: impl Fn() + Send + Sync + 'static) -> Prober {
        self.on_change = Some(Box::new(f));
        self
    }

    /// The name of the account probed (None: the implicit one).
    fn account_name(&self) -> Option<&str> {
        self.account.as_deref().map(Account::name)
    }

    /// The health state this prober feeds.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A request's `unhealthy` verdict: a suspicion, not a verdict for everyone. The
    /// request's failure text may echo what its client chose, and one client must not close
    /// the gate for all (a model named `Not logged in` once did), so only the probe, with
    /// the operator's prompt and model, closes it: this wakes the probe now rather than at
    /// the next interval. It also drains the pre-warmed pool (its processes may hold stale
    /// credentials; it refills at once while the gate stays open).
    pub fn suspect_unhealthy(&self, kind: &str) {
        self.health.suspect(kind);
        // Only this account's processes: another account's credentials are not suspect.
        self.backend.invalidate_account(self.account_name());
        self.health.probe_wakeup.notify_one();
    }

    /// The probe's `unhealthy` verdict: closes the health gate and drains the pre-warmed
    /// pool (it refills once healthy again). The built-in `account_action_required` also
    /// gets its operator log line and metric when it takes the account out.
    fn mark_unhealthy(&self, source: Source, verdict: &Verdict) {
        let flipped = self
            .health
            .mark_failed(source, &verdict.kind, &verdict.message);
        if flipped && verdict.kind == ACCOUNT_ACTION_REQUIRED {
            let name = self.account.as_ref().map_or(IMPLICIT_ACCOUNT, |a| a.name());
            action_required(&self.metrics, name, verdict);
        }
        self.backend.invalidate_account(self.account_name());
    }

    /// Runs one probe now with the current rules' probe settings and records its verdict.
    pub async fn probe_once(&self, source: Source) -> ProbeOutcome {
        let _serial = self.serial.lock().await;
        let rules = self.rules.load_full();
        let settings = rules.probe().clone();
        let suspicions = self.health.probe_started();
        let started = Instant::now();
        let mut run = self.backend.start(CliRequest {
            prompt: settings.prompt.clone(),
            attachments: Vec::new(),
            system_prompt: None,
            model: settings.model.clone(),
            timeout: Some(settings.timeout),
            bypass_queue: true,
            account: self.account.clone(),
            ..CliRequest::default()
        });
        let result = loop {
            match run.recv().await {
                Some(CliEvent::Done(r)) => break r,
                Some(_) => continue,
                None => {
                    break Err(Box::new(FailureFacts {
                        condition: Some(GatewayCondition::NoResult),
                        ..Default::default()
                    }))
                }
            }
        };
        let elapsed = started.elapsed();
        let (outcome, kind, message) = match result {
            Ok(_) => {
                self.health.mark_ok(source);
                self.health.clear_cooldown();
                (ProbeOutcome::Ok, None, None)
            }
            Err(facts) => {
                let verdict = rules.classify(&facts);
                let cooling = self
                    .cooldowns
                    .then(|| verdict.cooldown_until(crate::clock::unix_now()))
                    .flatten();
                let outcome = if verdict.unhealthy {
                    self.health.clear_cooldown();
                    self.mark_unhealthy(source, &verdict);
                    ProbeOutcome::Unhealthy
                } else {
                    match cooling {
                        // Still (or again) at its limit: out until the new reset.
                        Some(until) => {
                            let c = Cooldown::new(source, &verdict.kind, &verdict.message, until);
                            self.health.set_cooldown(c);
                        }
                        // Inconclusive, but no longer the failure that took it out.
                        None => self.health.clear_cooldown(),
                    }
                    ProbeOutcome::Inconclusive
                };
                (outcome, Some(verdict.kind), Some(verdict.message))
            }
        };
        let label = match outcome {
            ProbeOutcome::Ok => "ok",
            ProbeOutcome::Unhealthy => "unhealthy",
            ProbeOutcome::Inconclusive => "inconclusive",
        };
        tracing::info!(
            outcome = label,
            kind = kind.as_deref().unwrap_or(""),
            duration_ms = elapsed.as_millis() as u64,
            "CLI probe"
        );
        self.metrics
            .probes
            .get_or_create(&OutcomeLabels {
                outcome: label.into(),
            })
            .inc();
        self.metrics.probe_last_duration.set(elapsed.as_secs_f64());
        self.health.record_probe(
            LastProbe {
                at: now_rfc3339(),
                outcome,
                kind,
                message,
                duration_ms: elapsed.as_millis() as u64,
            },
            suspicions,
        );
        if let Some(f) = &self.on_change {
            f();
        }
        outcome
    }

    /// The periodic probe, until `shutdown`: first run right after start, then every
    /// `probe.interval` (`probe.unhealthy_interval` while unhealthy). Woken early by
    /// `Health::probe_wakeup` (probe now) or `Health::settings_changed` (re-time only).
    /// Interval 0 disables the timer, including the run at start; wake-ups still probe.
    /// A probe in progress when shutdown begins is abandoned (its CLI is killed).
    pub async fn run(&self, shutdown: Shutdown) {
        let mut last_run = tokio::time::Instant::now();
        let mut run_now = !self.rules.load().probe().interval.is_zero();
        loop {
            if run_now {
                tokio::select! {
                    _ = self.probe_once(Source::Probe) => {}
                    () = shutdown.triggered() => break,
                }
                self.health.end_startup_probe();
                last_run = tokio::time::Instant::now();
            }
            let interval = self.interval();
            // A cooldown ends with a probe, whatever the interval (also with probes off).
            let cooldown_end = self.health.cooldown().map(|c| {
                let left = c.until_unix as f64 - crate::clock::unix_now_f64();
                tokio::time::Instant::now()
                    + std::time::Duration::from_secs_f64(left.max(0.0))
                    + COOLDOWN_SLACK
            });
            let timer = async {
                let periodic = (!interval.is_zero()).then(|| last_run + interval);
                match (periodic, cooldown_end) {
                    (None, None) => std::future::pending::<()>().await,
                    (Some(t), None) | (None, Some(t)) => tokio::time::sleep_until(t).await,
                    (Some(a), Some(b)) => tokio::time::sleep_until(a.min(b)).await,
                }
            };
            tokio::select! {
                () = timer => run_now = true,
                () = self.health.probe_wakeup.notified() => run_now = true,
                () = self.health.settings_changed.notified() => run_now = false,
                () = shutdown.triggered() => break,
            }
        }
        // Requests still draining must not wait for a first probe that will not come.
        self.health.end_startup_probe();
    }

    /// The time between probes now (zero: no periodic probe).
    fn interval(&self) -> std::time::Duration {
        let rules = self.rules.load();
        let p = rules.probe();
        let ok = self.health.is_ok();
        if !ok && !p.unhealthy_interval.is_zero() && !p.interval.is_zero() {
            p.unhealthy_interval.min(p.interval)
        } else if !ok && !p.unhealthy_interval.is_zero() {
            p.unhealthy_interval
        } else {
            p.interval
        }
    }
}
