//! The rules engine: `rules.yaml` → [`model::RulesFile`] (serde) → validated, compiled
//! [`Rules`] (one Aho-Corasick automaton, regexes, parsed templates). Pure: no IO here
//! except what the caller hands in as text.
//!
//! PUBLIC API CONTRACT (other modules build against exactly this; keep it):
//! - `Rules::from_yaml(text: &str, origin: &str) -> Result<Rules, LoadError>`
//! - `Rules::embedded() -> Rules` (the default `rules/rules.yaml`, compiled in)
//! - `rules.classify(&FailureFacts) -> Verdict` (never fails: the fallback kind catches all)
//! - `rules.classify_request(&FailureFacts, &ClientText) -> Verdict`: a request's failure,
//!   decided without the text its client chose (`client_text.rs`)
//! - `rules.verdict_for_kind(name) -> Option<Verdict>` (e.g. the health gate re-answering
//!   with the kind the probe found; None if the kind no longer exists)
//! - `rules.first_unhealthy_kind() -> Option<Verdict>`
//! - `rules.render_body(&Verdict, Flavour, &TemplateValues) -> serde_json::Value`
//! - `rules.render_headers(&Verdict, &TemplateValues) -> Vec<(String, String)>`
//! - `rules.probe() -> &ProbeSettings`, `rules.models() -> &[String]`,
//!   `rules.sha256() -> &str` (hex of the source text), `rules.kinds_count()`, `rules.markers_count()`
//! - added: `rules.status_for(&Verdict, Flavour) -> u16` (per-flavour status override:
//!   `openai_status` / `anthropic_status` on a kind), `rules.origin() -> &str`,
//!   `rules.kind_names()`; `LoadError { origin, problems: Vec<Problem> }` (Display prints
//!   every problem as `file:line:col: message` + snippet).
//!
//! Files: `model.rs` (serde/schema types of the file), `load.rs` (validate + compile),
//! `classify.rs` (facts → verdict), `template.rs` (placeholders, rendering), `facts.rs`,
//! `redact.rs` (addresses and secrets out of verdict messages), `client_text.rs` (a
//! client's echoed text out of classification).

pub mod classify;
pub mod client_text;
mod describe;
pub mod facts;
pub mod load;
pub mod model;
pub mod redact;
pub mod template;

pub use client_text::ClientText;
pub use facts::{FailureFacts, GatewayCondition, SpawnErrorKind, TimeoutKind};
pub use load::{LoadError, Problem};

use std::time::Duration;

/// Which API's error body shape a template renders.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// `/v1/chat/completions`: `{"error":{"message","type","param","code"}}`.
    Openai,
    /// `/v1/messages`: `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// What which the classifier decided about one failure.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// Kind name from the rules (`auth_failure`, `rate_limit`, …, or the fallback's name).
    pub kind: String,
    /// HTTP status to answer with (400-599).
    pub status: u16,
    /// Whether this kind marks the CLI unhealthy (opens the health gate).
    pub unhealthy: bool,
    /// What matched: e.g. `assistant_error=authentication_failed` or `marker="Not logged in"`;
    /// None for the fallback.
    pub matched: Option<String>,
    /// The failure's summary text (`FailureFacts::summary`, redacted: no addresses or
    /// secrets), for `{{message}}` and `{{error_message}}`.
    pub message: String,
    /// `retry_after` seconds from the kind, if set.
    pub retry_after: Option<u64>,
    /// For a kind with `retry_after`: when the CLI said the exhausted limit resets (Unix
    /// seconds). While in the future, `{{retry_after}}` counts down to it instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<u64>,
    /// The stderr tail of the run (only rendered if a template names `{{stderr_tail}}`).
    #[serde(skip)]
    pub stderr_tail: String,
    /// The kind's `account_scoped`: the account's failure, retried on another account.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub account_scoped: bool,
    /// The kind's `cooldown`: how long the failing account is taken out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Cooldown>,
}

/// A kind's `cooldown`, compiled. Serialized as written in the rules: `"until_reset"`
/// or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooldown {
    /// Until the reset the CLI reported.
    UntilReset,
    /// This many seconds.
    Seconds(u64),
}

impl serde::Serialize for Cooldown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cooldown::UntilReset => s.serialize_str("until_reset"),
            Cooldown::Seconds(n) => s.serialize_u64(*n),
        }
    }
}

/// The built-in kind of failures that need a person to act on the account (accept updated
/// Consumer Terms, sign in again): its account leaves selection until a probe succeeds.
pub const ACCOUNT_ACTION_REQUIRED: &str = "account_action_required";
/// The built-in kind of a conversation the CLI could not resume: answered from a
/// transcript instead (the fresh-run fallback).
pub const SESSION_NOT_FOUND: &str = "session_not_found";

/// The longest cooldown (eight days: a weekly window and then some).
pub const COOLDOWN_MAX_SECS: u64 = 8 * 86_400;
/// `until_reset` when the CLI reported no reset and the kind has no `retry_after`.
pub const COOLDOWN_DEFAULT_SECS: u64 = 300;

impl Verdict {
    /// Until when (Unix seconds) this failure takes its account out, `now` being the
    /// current Unix time; None for a kind without `cooldown`. `until_reset` uses the
    /// reset the CLI reported (its `rate_limit_event`, else the reset time in the limit
    /// text when it names a UTC time), else `retry_after`, else
    /// [`COOLDOWN_DEFAULT_SECS`]; a reset already past counts as none. Never more than
    /// [`COOLDOWN_MAX_SECS`] ahead.
    pub fn cooldown_until(&self, now: u64) -> Option<u64> {
        let secs = match self.cooldown? {
            Cooldown::Seconds(s) => s,
            Cooldown::UntilReset => self
                .resets_at
                .or_else(|| reset_in_text(&self.message, now))
                .and_then(|r| r.checked_sub(now))
                .filter(|&s| s > 0)
                .unwrap_or(self.retry_after.unwrap_or(COOLDOWN_DEFAULT_SECS)),
        };
        Some(now.saturating_add(secs.clamp(1, COOLDOWN_MAX_SECS)))
    }
}

/// The reset time a limit text names, as the CLI words it (`You've hit your 5-hour
/// limit · resets 9:34am (UTC)`, `resets 1pm (UTC)`): the next such time of day after
/// `now`. Only UTC times are understood (no time zone database); None otherwise.
pub fn reset_in_text(text: &str, now: u64) -> Option<u64> {
    let rest = &text[text.find("resets ")? + "resets ".len()..];
    let (clock, zone) = rest.split_once(' ')?;
    if !zone.starts_with("(UTC)") {
        return None;
    }
    let (clock, pm) = if let Some(c) = clock.strip_suffix("am") {
        (c, false)
    } else {
        (clock.strip_suffix("pm")?, true)
    };
    let (h, m) = match clock.split_once(':') {
        Some((h, m)) => (h.parse::<u64>().ok()?, m.parse::<u64>().ok()?),
        None => (clock.parse::<u64>().ok()?, 0),
    };
    if !(1..=12).contains(&h) || m > 59 {
        return None;
    }
    let hour = (h % 12) + if pm { 12 } else { 0 };
    let day = now - now % 86_400;
    let mut at = day + hour * 3600 + m * 60;
    if at <= now {
        at += 86_400;
    }
    Some(at)
}

/// Per-request values for template placeholders. `None` renders as JSON null when the
/// placeholder is a whole leaf, and as an empty string inside a longer string.
#[derive(Debug, Clone, Default)]
pub struct TemplateValues {
    pub request_id: String,
    pub model: Option<String>,
    /// Health fields (from the process-wide health state at render time).
    pub last_probed_at: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// The current Unix time, for `{{retry_after}}` of a verdict with `resets_at`
    /// (None: always the kind's static `retry_after`).
    pub now_unix: Option<u64>,
}

/// Probe settings in force (from the rules' `probe:` section).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    /// Zero disables the periodic probe.
    pub interval: Duration,
    /// Used instead of `interval` while unhealthy (zero: same as `interval`).
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub prompt: String,
    pub model: Option<String>,
}

impl std::str::FromStr for Flavour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "openai" => Ok(Flavour::Openai),
            "anthropic" => Ok(Flavour::Anthropic),
            other => Err(format!(
                "unknown flavour `{other}` (expected openai or anthropic)"
            )),
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavour::Openai => "openai",
            Flavour::Anthropic => "anthropic",
        })
    }
}

/// Lowercase hex SHA-256 of a rules source (the rules version).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The default rules file, compiled in.
pub const EMBEDDED_RULES: &str = include_str!("../../rules/rules.yaml");

/// A validated, compiled rules snapshot. Cheap to share behind an `Arc`; immutable.
#[derive(Debug, Clone)]
pub struct Rules {
    pub(crate) origin: String,
    pub(crate) sha256: String,
    /// What `ccgate check` reports without failing (e.g. an unknown startup reason).
    pub(crate) warnings: Vec<Problem>,
    pub(crate) probe: ProbeSettings,
    pub(crate) models: Vec<String>,
    /// (alias lower-cased, target), sorted by alias.
    pub(crate) aliases: Vec<(String, String)>,
    pub(crate) kinds: Vec<load::CompiledKind>,
    pub(crate) fallback: load::CompiledKind,
    pub(crate) markers: Option<load::MarkerIndex>,
    pub(crate) markers_count: usize,
}

impl Rules {
    /// Parses, validates and compiles a rules file. `origin` (a path or `<embedded>`)
    /// prefixes every problem in the error.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Rules, LoadError> {
        load::load(text, origin)
    }

    /// The default rules (`rules/rules.yaml`, compiled in). A test guarantees they load.
    pub fn embedded() -> Rules {
        match load::load(EMBEDDED_RULES, "<embedded>") {
            Ok(r) => r,
            // Unreachable in a tested build: `embedded_rules_load` covers it.
            Err(e) => panic!("embedded rules are invalid:\n{e}"),
        }
    }

    /// The source text of the embedded default rules.
    pub fn embedded_source() -> &'static str {
        EMBEDDED_RULES
    }

    /// Where these rules came from (path or `<embedded>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Probe settings in force.
    pub fn probe(&self) -> &ProbeSettings {
        &self.probe
    }

    /// Models served by `GET /v1/models`.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Problems that do not stop the file from loading, as `file:line:col: warning: …`
    /// lines with snippets (`ccgate check` prints them; reloads log them).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| {
                let at = if w.line == 0 {
                    format!("{}: warning: {}", self.origin, w.message)
                } else {
                    format!(
                        "{}:{}:{}: warning: {}",
                        self.origin, w.line, w.column, w.message
                    )
                };
                if w.snippet.is_empty() {
                    at
                } else {
                    format!("{at}\n{}", w.snippet)
                }
            })
            .collect()
    }

    /// The model aliases: (alias, target), sorted by alias.
    pub fn aliases(&self) -> &[(String, String)] {
        &self.aliases
    }

    /// The model the CLI runs for `model`: an alias's target (case-insensitive), else
    /// `model` itself.
    pub fn resolve_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.aliases
            .binary_search_by(|(a, _)| a.as_str().cmp(model))
            .ok()
            .or_else(|| {
                let lower = model.to_ascii_lowercase();
                self.aliases
                    .binary_search_by(|(a, _)| a.as_str().cmp(lower.as_str()))
                    .ok()
            })
            .map_or(model, |i| self.aliases[i].1.as_str())
    }

    /// Hex SHA-256 of the source text.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Number of kinds, the fallback included.
    pub fn kinds_count(&self) -> usize {
        self.kinds.len() + 1
    }

    /// Number of markers over all kinds.
    pub fn markers_count(&self) -> usize {
        self.markers_count
    }

    /// Kind names in match order, the fallback last.
    pub fn kind_names(&self) -> impl Iterator<Item = &str> {
        self.kinds
            .iter()
            .chain(std::iter::once(&self.fallback))
            .map(|k| k.name.as_str())
    }

    pub(crate) fn kind(&self, name: &str) -> Option<&load::CompiledKind> {
        self.kinds
            .iter()
            .chain(std::iter::once(&self.fallback))
            .find(|k| k.name == name)
    }

    fn verdict_of(&self, k: &load::CompiledKind) -> Verdict {
        Verdict {
            kind: k.name.clone(),
            status: k.status,
            unhealthy: k.unhealthy,
            matched: None,
            message: k.description.clone().unwrap_or_else(|| k.name.clone()),
            retry_after: k.retry_after,
            resets_at: None,
            stderr_tail: String::new(),
            account_scoped: k.account_scoped,
            cooldown: k.cooldown,
        }
    }

    /// A verdict for a kind by name (message = the kind's description), or None if these
    /// rules have no such kind.
    pub fn verdict_for_kind(&self, name: &str) -> Option<Verdict> {
        self.kind(name).map(|k| self.verdict_of(k))
    }

    /// The first kind marked `unhealthy: true`, as a verdict: the answer when the CLI is
    /// unhealthy for no recorded kind. Not the built-in `account_action_required`, whose
    /// answer (a person must act) holds only for a failure it matched.
    pub fn first_unhealthy_kind(&self) -> Option<Verdict> {
        self.kinds
            .iter()
            .chain(std::iter::once(&self.fallback))
            .find(|k| k.unhealthy && k.name != ACCOUNT_ACTION_REQUIRED)
            .map(|k| self.verdict_of(k))
    }

    /// The HTTP status for this verdict on an endpoint of `flavour`: the kind's
    /// `openai_status` / `anthropic_status` override if set, else `Verdict::status`.
    /// (A verdict whose kind no longer exists keeps its own status.)
    pub fn status_for(&self, verdict: &Verdict, flavour: Flavour) -> u16 {
        match self.kind(&verdict.kind) {
            Some(k) => match flavour {
                Flavour::Openai => k.openai_status.unwrap_or(verdict.status),
                Flavour::Anthropic => k.anthropic_status.unwrap_or(verdict.status),
            },
            None => verdict.status,
        }
    }
}

#[cfg(test)]
mod cooldown_tests {
    use super::*;

    const NOW: u64 = 1_796_125_000; // 2026-12-01T11:36:40Z

    fn usage_limit() -> Verdict {
        Rules::embedded()
            .verdict_for_kind("usage_limit")
            .expect("the default rules have usage_limit")
    }

    #[test]
    fn until_reset_uses_the_reported_reset_then_the_text_then_retry_after() {
        let mut v = usage_limit();
        assert_eq!(v.cooldown, Some(Cooldown::UntilReset));
        assert!(v.account_scoped);
        v.resets_at = Some(NOW + 42);
        assert_eq!(v.cooldown_until(NOW), Some(NOW + 42));
        // No rate_limit_event: the UTC time in the limit text (11:51 today).
        v.resets_at = None;
        v.message = "You've hit your 5-hour limit · resets 11:51am (UTC)".into();
        assert_eq!(
            v.cooldown_until(NOW),
            Some(NOW - NOW % 86_400 + 11 * 3600 + 51 * 60)
        );
        // A time already past today is tomorrow's; 12am is midnight.
        assert_eq!(
            reset_in_text("resets 9am (UTC)", NOW),
            Some(NOW - NOW % 86_400 + 86_400 + 9 * 3600)
        );
        assert_eq!(
            reset_in_text("resets 12am (UTC)", NOW),
            Some(NOW - NOW % 86_400 + 86_400)
        );
        // Another zone: not understood, so the kind's retry_after (3600).
        v.message = "You've hit your session limit · resets 1pm (Europe/Lisbon)".into();
        assert_eq!(v.cooldown_until(NOW), Some(NOW + 3600));
        // A reset in the past counts as none.
        v.resets_at = Some(NOW - 5);
        assert_eq!(v.cooldown_until(NOW), Some(NOW + 3600));
    }

    #[test]
    fn seconds_and_no_cooldown() {
        let billing = Rules::embedded().verdict_for_kind("billing").unwrap();
        assert_eq!(billing.cooldown_until(NOW), Some(NOW + 600));
        let auth = Rules::embedded().verdict_for_kind("auth_failure").unwrap();
        assert!(auth.account_scoped);
        assert_eq!(auth.cooldown_until(NOW), None);
        let rate = Rules::embedded().verdict_for_kind("rate_limit").unwrap();
        assert!(!rate.account_scoped && rate.cooldown.is_none());
    }

    #[test]
    fn check_refuses_bad_cooldowns() {
        let text = EMBEDDED_RULES.replace(
            "    account_scoped: true\n    cooldown: 600\n",
            "    cooldown: 600\n",
        );
        let err = Rules::from_yaml(&text, "t.yaml").unwrap_err().to_string();
        assert!(
            err.contains("kind `billing` has `cooldown` but is not `account_scoped: true`"),
            "{err}"
        );
        for bad in ["cooldown: 0", "cooldown: 9999999", "cooldown: forever"] {
            let text = EMBEDDED_RULES.replace("cooldown: 600", bad);
            let err = Rules::from_yaml(&text, "t.yaml").unwrap_err().to_string();
            assert!(
                err.contains("cooldown") || err.contains("did not match"),
                "{bad}: {err}"
            );
        }
    }
}
