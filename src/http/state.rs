//! The shared state every handler sees: settings, the current rules snapshot (arc-swap),
//! the turn engine, the CLI backend, health, metrics, the prober and the reload path.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accounts::Accounts;
use crate::backend::Backend;
use crate::config::Settings;
use crate::engine::Engine;
use crate::health::Health;
use crate::keys::KeySet;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::reload::Reloader;
use crate::response_store::ResponseStore;
use crate::rules::Rules;
use crate::store::{Ledger, LedgerWriter, Store};

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
    /// The API keys in force (the keys file and `api_keys`), swapped by reloads.
    pub keys: Arc<ArcSwap<KeySet>>,
    /// The per-key limit counters.
    pub limiter: Arc<Limiter>,
    /// The usage ledger (None: no store, only for embedders and tests).
    pub ledger: Option<Ledger>,
    /// The ledger's writer, until `serve` starts it.
    pub ledger_writer: std::sync::Mutex<Option<LedgerWriter>>,
    /// The egress proxy of web-fetching runs (only with `web.fetch: true`).
    pub egress: Option<crate::backend::egress::EgressProxy>,
}

impl AppState {
    /// Builds the state from the settings and the initially loaded rules, without a store
    /// (no usage ledger). Panics if the configured keys file does not load: `serve` uses
    /// [`AppState::build`], which reports it.
    pub fn new(settings: Settings, rules: Rules, backend: Backend) -> AppState {
        AppState::build(settings, rules, backend, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the state: loads the keys file (if configured) through the one keys loader,
    /// and writes the usage ledger to `store` (if any).
    pub fn build(
        settings: Settings,
        rules: Rules,
        backend: Backend,
        store: Option<Store>,
    ) -> Result<AppState, String> {
        let account_names: Vec<String> = settings.accounts.iter().map(|a| a.name.clone()).collect();
        let key_set = match &settings.keys {
            Some(path) => crate::keys::load_keys_file(
                path,
                &settings.api_keys,
                &account_names,
                crate::clock::unix_now() as i64,
            )
            .map_err(|e| e.to_string())?,
            None => KeySet::from_config(&settings.api_keys),
        };
        let keys = Arc::new(ArcSwap::from_pointee(key_set));
        let rules = Arc::new(ArcSwap::from_pointee(rules));
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new(health.clone(), backend.stats()));
        backend
            .stats()
            .attach_first_line_histogram(metrics.cli_first_line.clone());
        backend.stats().attach_pool_metrics(metrics.pool_metrics());
        let for_reload = backend.clone();
        let reloader = Reloader::new(
            settings.rules.clone(),
            rules.clone(),
            metrics.clone(),
            health.clone(),
            Box::new(move || for_reload.invalidate_pool()),
        );
        let reloader = Arc::new(match &settings.keys {
            Some(path) => reloader.with_keys(crate::reload::KeysReload {
                path: path.clone(),
                api_keys: settings.api_keys.clone(),
                accounts: account_names.clone(),
                keys: keys.clone(),
            }),
            None => reloader,
        });
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
        if let Some(store) = &store {
            responses.attach_store(store.clone());
            accounts.attach_store(store.clone());
        }
        let (ledger, ledger_writer) = match store {
            Some(store) => {
                let (l, w) = Ledger::new(store, settings.state.buffer_rows);
                (Some(l), Some(w))
            }
            None => (None, None),
        };
        let egress = if settings.web.fetch {
            let route = settings
                .web_route()
                .map_err(|e| format!("web.fetch: {e}"))?;
            Some(
                crate::backend::egress::EgressProxy::start(metrics.egress.clone(), route)
                    .map_err(|e| format!("web.fetch: cannot start the egress proxy: {e}"))?,
            )
        } else {
            None
        };
        Ok(AppState(Arc::new(Services {
            egress,
            keys,
            limiter: Arc::new(Limiter::default()),
            ledger,
            ledger_writer: std::sync::Mutex::new(ledger_writer),
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
        })))
    }
}
