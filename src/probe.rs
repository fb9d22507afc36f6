//! The health probe: a short CLI run with the current rules' probe settings whose verdict
//! feeds [`Health`]. [`Prober::run`] is the periodic task (`serve` spawns it), and
//! `POST /admin/probe` calls [`Prober::probe_once`]. A request's unhealthy verdict is only
//! a suspicion ([`Prober::suspect_unhealthy`]) that wakes the probe.
//!
//! Invariants: only the probe's verdict closes the gate (its prompt and model are the
//! operator's, never a client's), and only a verdict whose kind the rules mark `unhealthy`;
//! other failures are inconclusive and leave it as it is.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::backend::{Backend, CliEvent, CliRequest};
use crate::clock::now_rfc3339;
use crate::health::{Health, LastProbe, ProbeOutcome, Source};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::rules::{FailureFacts, GatewayCondition, Rules};
use crate::shutdown::Shutdown;

/// Runs probes and records verdicts. Shared (`Arc`) by the periodic task and the handlers.
pub struct Prober {
    rules: Arc<ArcSwap<Rules>>,
    backend: Backend,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Serializes probes (the periodic task and `POST /admin/probe`).
    serial: tokio::sync::Mutex<()>,
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
        }
    }

    /// A request's `unhealthy` verdict: a suspicion, not a verdict for everyone. The
    /// request's failure text may echo what its client chose, and one client must not close
    /// the gate for all (a model named `Not logged in` once did), so only the probe, with
    /// the operator's prompt and model, closes it: this wakes the probe now rather than at
    /// the next interval. It also drains the pre-warmed pool (its processes may hold stale
    /// credentials; it refills at once while the gate stays open).
    pub fn suspect_unhealthy(&self, kind: &str) {
        self.health.suspect(kind);
        self.backend.invalidate_pool();
        self.health.probe_wakeup.notify_one();
    }

    /// The probe's `unhealthy` verdict: closes the health gate and drains the pre-warmed
    /// pool (it refills once healthy again).
    fn mark_unhealthy(&self, source: Source, kind: &str, message: &str) {
        self.health.mark_failed(source, kind, message);
        self.backend.invalidate_pool();
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
                (ProbeOutcome::Ok, None, None)
            }
            Err(facts) => {
                let verdict = rules.classify(&facts);
                let outcome = if verdict.unhealthy {
                    self.mark_unhealthy(source, &verdict.kind, &verdict.message);
                    ProbeOutcome::Unhealthy
                } else {
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
            let timer = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep_until(last_run + interval).await
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
