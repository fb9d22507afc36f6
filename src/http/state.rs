//! The shared state every handler sees: settings, the current rules snapshot (arc-swap),
//! the turn engine, the CLI backend, health, metrics, the prober and the reload path.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accounts::Accounts;
use crate::backend::Backend;
use crate::config::Settings;
use crate::engine::Engine;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::reload::Reloader;
use crate::response_store::ResponseStore;
use crate::rules::Rules;

/// Cloned into every handler and middleware: one reference count for all of it (each
/// layer of every request clones the state, and one atomic update per clone is far
/// cheaper across cores than one per service handle).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Services {
    pub settings: Arc<Settings>,
    /// The running rules. Each request loads one snapshot and uses it start to end.
    pub rules: Arc<ArcSwap<Rules>>,
    pub backend: Backend,
    /// The request policy shared by every API.
    pub engine: Engine,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The first account's prober (the only one without `accounts`).
    pub prober: Arc<Prober>,
    /// The Responses API's stored responses (`previous_response_id`).
    pub responses: Arc<ResponseStore>,
    /// The closed health gate's prepared answers (see `http::gate`).
    pub gate: crate::http::gate::GateAnswers,
    /// The accounts (the implicit one without `accounts`).
    pub accounts: Arc<Accounts>,
    /// The CLI's version and capabilities, once `serve`'s start-up check has run
    /// (`/v1/auth/status` shows them as `cli`).
    pub cli: Arc<arc_swap::ArcSwapOption<crate::backend::capabilities::CliReport>>,
}

impl AppState {
    /// Builds the state from the settings and the initially loaded rules.
    pub fn new(settings: Settings, rules: Rules, backend: Backend) -> AppState {
        let rules = Arc::new(ArcSwap::from_pointee(rules));
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new(health.clone(), backend.stats()));
        backend
            .stats()
            .attach_first_line_histogram(metrics.cli_first_line.clone());
        backend.stats().attach_pool_metrics(metrics.pool_metrics());
        let for_reload = backend.clone();
        let reloader = Arc::new(Reloader::new(
            settings.rules.clone(),
            rules.clone(),
            metrics.clone(),
            health.clone(),
            Box::new(move || for_reload.invalidate_pool()),
        ));
        let responses = Arc::new(ResponseStore::new(
            backend.settings().conversation_idle_timeout,
        ));
        // The configured accounts, or the implicit one (whose prober is the gateway's); never
        // both: an implicit `default` next to configured accounts had counters and a
        // prober of its own that nothing used.
        let accounts = if settings.accounts.is_empty() {
            let prober = Arc::new(Prober::new(
                rules.clone(),
                backend.clone(),
                health.clone(),
                metrics.clone(),
            ));
            Accounts::implicit(health.clone(), prober, metrics.clone())
        } else {
            Accounts::from_settings(
                &settings.accounts,
                rules.clone(),
                &backend,
                health.clone(),
                metrics.clone(),
            )
        };
        let engine = Engine::new(
            rules.clone(),
            backend.clone(),
            health.clone(),
            metrics.clone(),
            accounts.clone(),
        );
        let prober = accounts.members()[0].prober().clone();
        AppState(Arc::new(Services {
            accounts,
            settings: Arc::new(settings),
            rules,
            backend,
            engine,
            health,
            metrics,
            reloader,
            prober,
            responses,
            gate: Default::default(),
            cli: Default::default(),
        }))
    }
}
