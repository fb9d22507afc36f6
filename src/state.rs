//! The shared state every handler sees: settings, the current rules snapshot (arc-swap),
//! the CLI backend, health, metrics and the reload path.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::backend::Backend;
use crate::config::Settings;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::rules::Rules;

/// Cloned into every handler (all fields are shared).
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// The running rules. Each request loads one snapshot and uses it start to end.
    pub rules: Arc<ArcSwap<Rules>>,
    pub backend: Backend,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
}

impl AppState {
    /// Builds the state from the settings and the initially loaded rules.
    pub fn new(settings: Settings, rules: Rules, backend: Backend) -> AppState {
        let rules = Arc::new(ArcSwap::from_pointee(rules));
        let metrics = Arc::new(Metrics::new());
        backend
            .stats()
            .attach_first_line_histogram(metrics.cli_first_line.clone());
        backend.stats().attach_pool_metrics(metrics.pool_metrics());
        let health = Arc::new(Health::default());
        let for_reload = backend.clone();
        let reloader = Arc::new(Reloader::new(
            settings.rules.clone(),
            rules.clone(),
            metrics.clone(),
            health.clone(),
            Box::new(move || for_reload.invalidate_pool()),
        ));
        AppState {
            settings: Arc::new(settings),
            rules,
            backend,
            health,
            metrics,
            reloader,
        }
    }
}

impl AppState {
    /// Copies point-in-time values into gauges before a scrape.
    pub fn sync_gauges(&self) {
        self.metrics
            .cli_health_ok
            .set(i64::from(self.health.is_ok()));
        let stats = self.backend.stats().snapshot();
        self.metrics.cli_in_flight.set(stats.in_flight as i64);
        self.metrics.cli_queued.set(stats.queued as i64);
        self.metrics.cli_spawned.set(stats.spawned_total as i64);
        self.metrics.cli_pool_idle.set(stats.pool_idle as i64);
    }

    /// Records an `unhealthy` verdict: closes the health gate and drains the pre-warmed
    /// pool (its processes may hold stale credentials); it refills once healthy again.
    pub fn mark_unhealthy(&self, source: crate::health::Source, kind: &str, message: &str) {
        self.health.mark_failed(source, kind, message);
        self.metrics.cli_health_ok.set(0);
        self.backend.invalidate_pool();
    }
}
