//! Accounts: the credentials requests are spread over (`accounts:` in the process config),
//! each with its own health, probe and cooldown, and the choice of the account a request
//! runs on.
//!
//! - Without `accounts`, one implicit account named `default` is the whole gateway: its
//!   health state *is* the gateway's `cli_health`, its prober the one probe, and it never
//!   cools down, so everything behaves as without this module.
//! - With `accounts`, each has its own [`Health`] and [`Prober`] (probing with its
//!   environment). A kind marked `unhealthy` closes that account only; the gateway's
//!   `cli_health` (the contract's view) is derived: ok while any account is healthy,
//!   failed with the last failing account's kind once none is, which closes the gate.
//! - A verdict of a kind with `cooldown` takes its account out until the reset the CLI
//!   reported ([`crate::rules::Verdict::cooldown_until`]); its prober probes right after.
//! - [`Accounts::select`]: a conversation whose earlier turns were last answered on an
//!   account that can serve stays there (its prompt cache and kept process are there);
//!   otherwise weighted least recently used: each pick advances the account's virtual
//!   time by 1/weight, the least advanced usable account serving the model is picked
//!   (config order on ties), and an account coming back does not get a burst (it starts
//!   at the others' time). No usable account: the earliest cooldown's answer, a 429
//!   counting down to its end.
//!
//! A run carries its account as one `Arc<Member>`; its backend identity
//! ([`Member::backend_account`]) decides its processes (kept, pre-warmed, spawned).

mod shared;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{json, Value};

use crate::backend::present::Fingerprint;
use crate::backend::{Account, Backend};
use crate::config::{AccountSettings, ExtraUsage};
use crate::health::{Cooldown, Health, Source};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::protocol::PlanWindows;
use crate::rules::{Rules, Verdict, ACCOUNT_ACTION_REQUIRED};
use crate::shutdown::Shutdown;

/// The kind of the extra-usage guard's cooldown: a usage limit (429, retry after the
/// reset), with a message that names extra usage.
pub const EXTRA_USAGE_KIND: &str = "usage_limit";

/// The name of the implicit account (no `accounts` configured).
pub const IMPLICIT_NAME: &str = crate::probe::IMPLICIT_ACCOUNT;
/// Conversations whose account is remembered for stickiness.
pub const STICKY_MAX: usize = 4096;

/// One account: what it is, its health and its prober.
pub struct Member {
    name: String,
    account: Option<Arc<Account>>,
    models: Option<Vec<String>>,
    weight: u32,
    health: Arc<Health>,
    prober: Arc<Prober>,
    index: usize,
    /// The plan's usage windows last reported (an answer or `get_usage`).
    windows: Mutex<Option<WindowsSeen>>,
    /// What the last `get_usage` said (None: not asked yet).
    usage_read: Mutex<Option<UsageRead>>,
    /// `extra_usage:` (the implicit account: the default, `refuse`).
    extra_usage: ExtraUsage,
}

/// Plan windows as last reported.
#[derive(Debug, Clone)]
struct WindowsSeen {
    windows: PlanWindows,
    /// Unix seconds.
    at: u64,
    /// `answer` (the stream's `rate_limit_event`) or `get_usage` (the scheduled read).
    source: &'static str,
}

/// The outcome of the last scheduled `get_usage` read of an account.
#[derive(Debug, Clone)]
struct UsageRead {
    at: u64,
    /// `rate_limits_available` (None: the read failed).
    available: Option<bool>,
    subscription_type: Option<String>,
    /// Why the read failed (no secrets: the CLI's stderr is not read).
    error: Option<String>,
}

/// Accounts whose headroom is within this much (0-1) of the best are equals for the
/// weighted least-recently-used pick.
pub const HEADROOM_SLACK: f64 = 0.10;
/// A login that answered `rate_limits_available: false` is asked again only after this
/// many refresh intervals (a login may change).
const UNAVAILABLE_BACKOFF: u32 = 12;

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Member {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's identity of the account (None: the implicit one).
    pub fn backend_account(&self) -> Option<Arc<Account>> {
        self.account.clone()
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn prober(&self) -> &Arc<Prober> {
        &self.prober
    }

    /// What is left of its plan (0-1): one minus the higher utilization of its 5-hour
    /// and 7-day windows as last reported; None before any report.
    pub fn headroom(&self) -> Option<f64> {
        let seen = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let used = seen
            .as_ref()?
            .windows
            .windows
            .iter()
            .filter(|w| w.name == "five_hour" || w.name == "seven_day")
            .map(|w| w.utilization)
            .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))))?;
        Some((1.0 - used).clamp(0.0, 1.0))
    }

    /// The 5-hour window as last reported: (utilization 0-1, reset in Unix seconds).
    pub fn five_hour(&self) -> Option<(f64, Option<u64>)> {
        let seen = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref()?
            .windows
            .windows
            .iter()
            .find(|w| w.name == "five_hour")
            .map(|w| (w.utilization, w.resets_at))
    }

    fn serves(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case(model)))
    }

    /// Healthy and not cooling down.
    fn usable(&self) -> bool {
        self.health.is_ok() && self.health.cooldown().is_none()
    }

    /// The account's entry in `/v1/auth/status` (no secrets: the name, never the env).
    fn status(&self) -> Value {
        let h = self.health.snapshot();
        let cooldown = self.health.cooldown();
        json!({
            "name": self.name,
            "ok": h.ok && cooldown.is_none(),
            "healthy": h.ok,
            "error_kind": h.error_kind,
            "error_message": h.error_message,
            "last_probed_at": h.last_probed_at,
            "last_ok_at": h.last_ok_at,
            "cooldown_until": cooldown.as_ref().map(|c| c.until.clone()),
            "cooldown": cooldown,
            "last_probe": h.last_probe,
            "suspected": h.suspected,
            "models": self.models,
            "weight": self.weight,
            "windows": self.windows_status(),
            "extra_usage": self.extra_usage,
        })
    }

    /// The account's entry in `GET /admin/accounts`: its status plus where its windows
    /// came from, the last `get_usage` read and its headroom.
    fn admin_status(&self) -> Value {
        let mut v = self.status();
        let read = self
            .usage_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v["headroom"] = json!(self.headroom().map(|h| (h * 1000.0).round() / 1000.0));
        v["get_usage"] = read.map_or(Value::Null, |r| {
            json!({
                "read_at": crate::clock::rfc3339_of_unix(r.at),
                "rate_limits_available": r.available,
                "subscription_type": r.subscription_type,
                "error": r.error,
            })
        });
        v
    }

    /// `windows` of the status: `{five_hour: {utilization (percent), resets_at (RFC 3339),
    /// resets_at_unix}, …, extra_usage_in_use, observed_at}`, or null before any answer
    /// reported them.
    fn windows_status(&self) -> Value {
        let seen = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let Some(WindowsSeen {
            windows: w,
            at,
            source,
        }) = seen.as_ref()
        else {
            return Value::Null;
        };
        let mut out = serde_json::Map::new();
        for win in &w.windows {
            out.insert(
                win.name.clone(),
                json!({
                    "utilization": (win.utilization * 1000.0).round() / 10.0,
                    "resets_at": win.resets_at.map(crate::clock::rfc3339_of_unix),
                    "resets_at_unix": win.resets_at,
                }),
            );
        }
        out.insert("extra_usage_in_use".into(), json!(w.extra_usage_in_use));
        out.insert(
            "observed_at".into(),
            json!(crate::clock::rfc3339_of_unix(*at)),
        );
        out.insert("source".into(), json!(source));
        Value::Object(out)
    }
}

/// Why no account can take a request.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// No account serves this model.
    NoModel,
    /// Every account serving it is cooling down (the earliest to return) or unhealthy.
    AllOut(Option<Cooldown>),
}

#[derive(Default)]
struct Selection {
    /// Virtual time per account (weighted least recently used).
    pass: Vec<f64>,
    /// Conversation (fingerprint after its last answer) → account index.
    sticky: HashMap<Fingerprint, usize>,
    order: VecDeque<Fingerprint>,
}

/// The accounts of the gateway. Shared (`Arc`).
pub struct Accounts {
    members: Vec<Arc<Member>>,
    /// The gateway-wide health (`cli_health`, the gate).
    gateway: Arc<Health>,
    /// `accounts` was configured (cooldowns, derived gateway health).
    configured: bool,
    selection: Mutex<Selection>,
    metrics: Arc<Metrics>,
    /// The state store cooldowns are shared through (`shared`).
    shared: std::sync::OnceLock<shared::SharedCooldowns>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// The implicit account: `health` and `prober` are the gateway's own.
    pub fn implicit(health: Arc<Health>, prober: Arc<Prober>, metrics: Arc<Metrics>) -> Arc<Self> {
        let member = Arc::new(Member {
            name: IMPLICIT_NAME.into(),
            account: None,
            models: None,
            weight: 1,
            health: health.clone(),
            prober,
            index: 0,
            windows: Default::default(),
            usage_read: Default::default(),
            extra_usage: ExtraUsage::default(),
        });
        Self::build(vec![member], health, false, metrics)
    }

    /// The configured accounts, each with its own health and prober; `gateway` is the
    /// derived gateway-wide state.
    pub fn from_settings(
        list: &[AccountSettings],
        rules: Arc<arc_swap::ArcSwap<Rules>>,
        backend: &Backend,
        gateway: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Accounts>| {
            let members = list
                .iter()
                .enumerate()
                .map(|(index, a)| {
                    let account = backend.account(&a.name, &a.env);
                    let health = Arc::new(Health::default());
                    let me = me.clone();
                    let prober = Prober::new(
                        rules.clone(),
                        backend.clone(),
                        health.clone(),
                        metrics.clone(),
                    )
                    .with_account(account.clone(), true)
                    .on_change(move || {
                        if let Some(me) = me.upgrade() {
                            me.refresh(Source::Probe);
                        }
                    });
                    Arc::new(Member {
                        name: a.name.clone(),
                        account: Some(account),
                        models: a.models.clone(),
                        weight: a.weight.max(1),
                        health,
                        prober: Arc::new(prober),
                        index,
                        windows: Default::default(),
                        usage_read: Default::default(),
                        extra_usage: a.extra_usage,
                    })
                })
                .collect();
            Self::unwrap_build(members, gateway, true, metrics)
        })
    }

    fn unwrap_build(
        members: Vec<Arc<Member>>,
        gateway: Arc<Health>,
        configured: bool,
        metrics: Arc<Metrics>,
    ) -> Accounts {
        metrics.attach_accounts(
            members
                .iter()
                .map(|m| (m.name.clone(), m.health.clone()))
                .collect(),
        );
        let n = members.len();
        Accounts {
            members,
            gateway,
            configured,
            shared: std::sync::OnceLock::new(),
            selection: Mutex::new(Selection {
                pass: vec![0.0; n],
                ..Selection::default()
            }),
            metrics,
        }
    }

    fn build(
        members: Vec<Arc<Member>>,
        gateway: Arc<Health>,
        configured: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self::unwrap_build(members, gateway, configured, metrics))
    }

    /// The member whose backend account is named `name` (None: the implicit account),
    /// for a process that already runs on it (a held run); the first member if none is
    /// (cannot happen: processes are only spawned for members).
    pub fn member_of(&self, name: Option<&str>) -> Arc<Member> {
        self.members
            .iter()
            .find(|m| m.account.as_deref().map(Account::name) == name)
            .or_else(|| self.members.first())
            .cloned()
            .expect("at least one account")
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Whether `accounts` was configured (else: the implicit account).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Selection> {
        self.selection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account for a request for `model`: the one that answered the conversation so
    /// far (`sticky`: its earlier turns' fingerprint) while it can serve, else the
    /// weighted least recently used usable one; `exclude` is never chosen (a failover).
    pub fn select(
        &self,
        model: &str,
        sticky: Option<&Fingerprint>,
        exclude: Option<&Member>,
    ) -> Result<Arc<Member>, Unavailable> {
        self.select_among(model, sticky, exclude, None)
    }

    /// [`Accounts::select`] among the accounts named in `allowed` only (a key's
    /// `accounts:`), when given.
    pub fn select_among(
        &self,
        model: &str,
        sticky: Option<&Fingerprint>,
        exclude: Option<&Member>,
        allowed: Option<&[String]>,
    ) -> Result<Arc<Member>, Unavailable> {
        let serving: Vec<&Arc<Member>> = self
            .members
            .iter()
            .filter(|m| m.serves(model))
            .filter(|m| allowed.is_none_or(|a| a.iter().any(|n| n == m.name())))
            .collect();
        if serving.is_empty() {
            return Err(Unavailable::NoModel);
        }
        let candidates: Vec<&Arc<Member>> = serving
            .iter()
            .copied()
            .filter(|m| exclude.is_none_or(|x| x.index != m.index))
            .collect();
        let usable: Vec<&Arc<Member>> = candidates.iter().copied().filter(|m| m.usable()).collect();
        if usable.is_empty() {
            let earliest = candidates
                .iter()
                .filter_map(|m| m.health.cooldown())
                .min_by_key(|c| c.until_unix);
            // A request none of whose accounts cools down while the gate let it through
            // (a reload changed what is unhealthy) runs: the run decides. The implicit
            // account cools down only by the extra-usage guard.
            if exclude.is_none() && earliest.is_none() {
                if let Some(m) = candidates.first() {
                    return Ok(Arc::clone(m));
                }
            }
            return Err(Unavailable::AllOut(earliest));
        }
        // Among otherwise equal accounts, the ones with the most headroom in their plan
        // windows (within HEADROOM_SLACK of the best; unknown counts as equal).
        let headroom: Vec<Option<f64>> = usable.iter().map(|m| m.headroom()).collect();
        let best = headroom.iter().flatten().copied().fold(f64::NAN, f64::max);
        let roomy: Vec<&Arc<Member>> = usable
            .iter()
            .zip(&headroom)
            .filter(|(_, h)| best.is_nan() || h.is_none_or(|h| h >= best - HEADROOM_SLACK))
            .map(|(m, _)| *m)
            .collect();
        let mut sel = self.lock();
        let chosen = sticky
            .and_then(|fp| sel.sticky.get(fp).copied())
            .and_then(|i| usable.iter().find(|m| m.index == i).copied())
            .unwrap_or_else(|| {
                roomy
                    .iter()
                    .copied()
                    .min_by(|a, b| sel.pass[a.index].total_cmp(&sel.pass[b.index]))
                    .unwrap_or(usable[0])
            });
        let floor = usable
            .iter()
            .map(|m| sel.pass[m.index])
            .fold(f64::INFINITY, f64::min);
        let p = &mut sel.pass[chosen.index];
        *p = p.max(floor) + 1.0 / f64::from(chosen.weight);
        Ok(Arc::clone(chosen))
    }

    /// Remembers that the conversation `fp` (after its answer) was answered on `member`.
    pub fn remember(&self, fp: Fingerprint, member: &Member) {
        if self.members.len() < 2 {
            return;
        }
        self.publish_conversation(&fp, member);
        self.keep_sticky(fp, member.index);
    }

    /// The account that answered `fp` on another replica (the state store's map), taken
    /// into this replica's map before [`Accounts::select_among`] looks there. Only when
    /// this replica does not know the conversation and a store is shared.
    pub async fn recall(&self, fp: &Fingerprint) {
        if self.members.len() < 2 || self.lock().sticky.contains_key(fp) {
            return;
        }
        if let Some(name) = self.shared_conversation_account(fp).await {
            if let Some(m) = self.members.iter().find(|m| m.name == name) {
                self.keep_sticky(*fp, m.index);
            }
        }
    }

    fn keep_sticky(&self, fp: Fingerprint, index: usize) {
        let mut sel = self.lock();
        if sel.sticky.insert(fp, index).is_none() {
            sel.order.push_back(fp);
            while sel.order.len() > STICKY_MAX {
                if let Some(old) = sel.order.pop_front() {
                    sel.sticky.remove(&old);
                }
            }
        }
    }

    /// A request's failure on `member`, classified: an `unhealthy` kind is a suspicion
    /// for that account's probe; a kind with `cooldown` takes a configured account out.
    pub fn failed(&self, member: &Member, verdict: &Verdict) {
        if verdict.unhealthy {
            member.prober.suspect_unhealthy(&verdict.kind);
        }
        if verdict.kind == ACCOUNT_ACTION_REQUIRED {
            self.action_required(member, verdict);
        }
        if !self.configured {
            return;
        }
        let Some(until) = verdict.cooldown_until(crate::clock::unix_now()) else {
            return;
        };
        let c = Cooldown::new(Source::Request, &verdict.kind, &verdict.message, until);
        self.publish_cooldown(member, &c);
        self.impose_cooldown(member, c, "account cooling down");
    }

    /// Sets `c` on `member` (a cooldown only ever lengthens); when it took, logs `what`
    /// with the account, kind and end, and counts it in `ccgate_account_cooldowns_total`.
    pub(crate) fn impose_cooldown(&self, member: &Member, c: Cooldown, what: &str) {
        let (kind, until) = (c.kind.clone(), c.until.clone());
        if member.health.set_cooldown(c) {
            tracing::warn!(
                account = member.name.as_str(),
                kind = kind.as_str(),
                until = until.as_str(),
                "{what}"
            );
            self.metrics.count_cooldown(&member.name);
        }
    }

    /// The built-in `account_action_required` matched by a typed field the CLI set itself
    /// (`startup_failure_reason`, `api_error`): not a suspicion but a fact no client's text
    /// can produce, so the account leaves selection now, not after the probe (woken by the
    /// suspicion above) agrees; the probe's success brings it back. The implicit account is
    /// the gateway, so its gate closes and answers with this kind. Matched by a text only,
    /// it stays a suspicion the probe decides, as every other kind.
    fn action_required(&self, member: &Member, verdict: &Verdict) {
        if crate::probe::action_reason(verdict) == "text" {
            return;
        }
        if member
            .health
            .mark_failed(Source::Request, &verdict.kind, &verdict.message)
        {
            crate::probe::action_required(&self.metrics, &member.name, verdict);
        }
        self.refresh(Source::Request);
    }

    /// A request on `member` succeeded: a real answer reopens an account its probe had
    /// closed (recovery need not wait for the next probe).
    /// What an answer on `member` reported of its plan's usage windows (the CLI's
    /// `rate_limit_event`); kept for the status until the next answer reports them.
    pub fn observe_windows(&self, member: &Member, windows: Option<&PlanWindows>) {
        if let Some(w) = windows {
            self.keep_windows(member, w, "answer");
            if w.extra_usage_in_use == Some(true) {
                self.extra_usage_in_use(member, w);
            }
        }
    }

    fn keep_windows(&self, member: &Member, w: &PlanWindows, source: &'static str) {
        let at = crate::clock::unix_now();
        let kept = {
            let mut seen = member.windows.lock().unwrap_or_else(|p| p.into_inner());
            // A read without the extra-usage state keeps the one an answer reported.
            let mut w = w.clone();
            if w.extra_usage_in_use.is_none() {
                w.extra_usage_in_use = seen.as_ref().and_then(|s| s.windows.extra_usage_in_use);
            }
            self.metrics.set_windows(&member.name, &w);
            *seen = Some(WindowsSeen {
                windows: w.clone(),
                at,
                source,
            });
            w
        };
        self.publish_windows(member, &kept, at);
    }

    /// Windows another replica observed (`at`, Unix seconds), shared through the state
    /// store: kept when newer than this replica's own.
    fn adopt_windows(&self, member: &Member, w: PlanWindows, at: u64) {
        let mut seen = member.windows.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_ref().is_some_and(|s| s.at >= at) {
            return;
        }
        self.metrics.set_windows(&member.name, &w);
        *seen = Some(WindowsSeen {
            windows: w,
            at,
            source: "replica",
        });
    }

    /// The extra-usage guard: an answer on `member` was billed beyond its plan. With
    /// `extra_usage: refuse` the account cools down until the exhausted window resets
    /// (the latest reset of the windows at their limit, else the 5-hour one, else an
    /// hour), so no further request spends money on it; the cooldown's message says why
    /// (in the answer of every request it refuses and in `/v1/auth/status`).
    fn extra_usage_in_use(&self, member: &Member, w: &PlanWindows) {
        if member.extra_usage == ExtraUsage::Allow {
            return;
        }
        let now = crate::clock::unix_now();
        let full = w
            .windows
            .iter()
            .filter(|x| x.utilization >= 0.999)
            .filter_map(|x| x.resets_at)
            .max();
        let five = w
            .windows
            .iter()
            .find(|x| x.name == "five_hour")
            .and_then(|x| x.resets_at);
        let until = full.or(five).filter(|t| *t > now).unwrap_or(now + 3600);
        let until_text = crate::clock::rfc3339_of_unix(until);
        let message = format!(
            "The account {} is billing requests as extra usage beyond its plan; ccgate refuses extra usage for it (accounts[].extra_usage: refuse) until its usage window resets at {until_text}.",
            member.name
        );
        let c = Cooldown::new(Source::Request, EXTRA_USAGE_KIND, &message, until);
        self.impose_cooldown(
            member,
            c,
            "extra usage in use: account cooling down until its window resets (extra_usage: refuse)",
        );
    }

    /// Reads every account's plan windows through `get_usage` every `every` until
    /// `shutdown` (one read at a time, never a model call). An account an answer reported
    /// on within the last half interval is skipped (its windows are fresh); a login that
    /// answered `rate_limits_available: false` (an environment token, an API key) is
    /// asked again only every [`UNAVAILABLE_BACKOFF`] intervals, its windows then come
    /// from the answers' `rate_limit_event` only.
    pub async fn run_window_refresh(
        self: Arc<Self>,
        backend: Backend,
        every: std::time::Duration,
        shutdown: Shutdown,
    ) {
        let mut round: u32 = 0;
        loop {
            for m in &self.members {
                if shutdown.is_triggered() {
                    return;
                }
                if !self.due(m, every, round) {
                    continue;
                }
                tokio::select! {
                    () = shutdown.triggered() => return,
                    read = backend.read_windows(m.account.as_deref()) => self.read_done(m, read),
                }
            }
            round = round.wrapping_add(1);
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    fn due(&self, m: &Member, every: std::time::Duration, round: u32) -> bool {
        let now = crate::clock::unix_now();
        let fresh = m
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| {
                s.source == "answer" && now.saturating_sub(s.at) < every.as_secs() / 2
            });
        let unavailable = m
            .usage_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|r| r.available == Some(false));
        !fresh && (!unavailable || round % UNAVAILABLE_BACKOFF == 0)
    }

    fn read_done(&self, m: &Member, read: Result<crate::backend::usage::UsageReport, String>) {
        let at = crate::clock::unix_now();
        let entry = match read {
            Ok(r) => {
                if let Some(w) = r.windows.as_ref() {
                    self.keep_windows(m, w, "get_usage");
                }
                UsageRead {
                    at,
                    available: Some(r.available),
                    subscription_type: r.subscription_type,
                    error: None,
                }
            }
            Err(e) => {
                tracing::debug!(
                    account = m.name.as_str(),
                    error = e.as_str(),
                    "get_usage read failed"
                );
                UsageRead {
                    at,
                    available: None,
                    subscription_type: None,
                    error: Some(e),
                }
            }
        };
        *m.usage_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
    }

    /// `GET /admin/accounts`.
    pub fn admin_status(&self) -> Value {
        Value::Array(self.members.iter().map(|m| m.admin_status()).collect())
    }

    pub fn succeeded(&self, member: &Member) {
        if !member.health.is_ok() {
            member.health.mark_ok(Source::Request);
            self.refresh(Source::Request);
        }
    }

    /// Derives the gateway's `cli_health` from the accounts' (configured accounts only;
    /// the implicit account's state is the gateway's).
    pub fn refresh(&self, source: Source) {
        if !self.configured {
            return;
        }
        if self.members.iter().any(|m| m.health.is_ok()) {
            self.gateway.mark_ok(source);
        } else {
            let latest = self
                .members
                .iter()
                .map(|m| m.health.snapshot())
                .max_by(|a, b| a.last_probed_at.cmp(&b.last_probed_at));
            if let Some(h) = latest {
                self.gateway.mark_failed(
                    h.source.unwrap_or(source),
                    h.error_kind.as_deref().unwrap_or("cli_unhealthy"),
                    h.error_message.as_deref().unwrap_or(""),
                );
            }
        }
        if let Some(p) = self
            .members
            .iter()
            .filter_map(|m| m.health.snapshot().last_probe)
            .max_by(|a, b| a.at.cmp(&b.at))
        {
            let started = self.gateway.probe_started();
            self.gateway.record_probe(p, started);
        }
    }

    /// The verdict for a request no account can take: the earliest cooldown's kind with
    /// `retry-after` counting down to its end, or `model_not_found` for a model no
    /// account serves.
    pub fn unavailable_verdict(&self, rules: &Rules, why: &Unavailable, model: &str) -> Verdict {
        match why {
            Unavailable::NoModel => {
                let mut v = rules
                    .verdict_for_kind("model_not_found")
                    .unwrap_or_else(|| rules.classify(&crate::rules::FailureFacts::default()));
                v.message = format!("No configured account serves the model {model}.");
                v
            }
            Unavailable::AllOut(Some(c)) => {
                let mut v = rules
                    .verdict_for_kind(&c.kind)
                    .unwrap_or_else(|| rules.classify(&crate::rules::FailureFacts::default()));
                v.message = c.message.clone();
                v.resets_at = Some(c.until_unix);
                v
            }
            Unavailable::AllOut(None) => {
                let h = self.gateway.snapshot();
                let mut v = h
                    .error_kind
                    .as_deref()
                    .and_then(|k| rules.verdict_for_kind(k))
                    .or_else(|| rules.first_unhealthy_kind())
                    .unwrap_or_else(|| rules.classify(&crate::rules::FailureFacts::default()));
                v.message = h.error_message.unwrap_or_default();
                v
            }
        }
    }

    /// Whether any account can take a request now (`/ready`).
    pub fn any_usable(&self) -> bool {
        !self.configured || self.members.iter().any(|m| m.usable())
    }

    /// The earliest cooldown while no account is usable (for `/ready`'s reason).
    pub fn earliest_cooldown(&self) -> Option<Cooldown> {
        self.members
            .iter()
            .filter_map(|m| m.health.cooldown())
            .min_by_key(|c| c.until_unix)
    }

    /// The accounts the pre-warmed pool may keep processes for now.
    pub fn pool_accounts(&self) -> Vec<Option<Arc<Account>>> {
        if self.gateway.startup_probe_pending() {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| {
                if self.configured {
                    m.usable()
                } else {
                    m.health.is_ok()
                }
            })
            .map(|m| m.account.clone())
            .collect()
    }

    /// `/v1/auth/status`'s `accounts` list.
    pub fn status(&self) -> Value {
        Value::Array(self.members.iter().map(|m| m.status()).collect())
    }

    /// Probes every account now (`POST /admin/probe`).
    pub async fn probe_all(&self, source: Source) {
        for m in &self.members {
            m.prober.probe_once(source).await;
        }
    }

    /// The probe tasks until `shutdown`: the implicit account's prober, or one per
    /// account plus the forwarding of the gateway's wake-ups (reloads) to each and the
    /// end of the gateway's start-up wait once every account's first probe answered.
    pub async fn run_probes(self: Arc<Self>, shutdown: Shutdown) {
        if !self.configured {
            return self.members[0].prober.run(shutdown).await;
        }
        if self.gateway.startup_probe_pending() {
            for m in &self.members {
                m.health.expect_startup_probe();
            }
        }
        let probes = futures_util::future::join_all(
            self.members.iter().map(|m| m.prober.run(shutdown.clone())),
        );
        let forward = async {
            loop {
                tokio::select! {
                    () = self.gateway.probe_wakeup.notified() => {
                        self.members.iter().for_each(|m| m.health.probe_wakeup.notify_one());
                    }
                    () = self.gateway.settings_changed.notified() => {
                        self.members.iter().for_each(|m| m.health.settings_changed.notify_one());
                    }
                }
            }
        };
        let startup = async {
            while self
                .members
                .iter()
                .any(|m| m.health.startup_probe_pending())
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            self.gateway.end_startup_probe();
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = probes => {}
            () = forward => {}
            () = startup => {}
        }
        self.gateway.end_startup_probe();
    }
}
