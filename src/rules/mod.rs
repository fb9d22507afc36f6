//! The rules engine: `rules.yaml` → [`model::RulesFile`] (serde) → validated, compiled
//! [`Rules`] (one Aho-Corasick automaton, regexes, parsed templates). Pure: no IO here
//! except what the caller hands in as text.
//!
//! PUBLIC API CONTRACT (other modules build against exactly this; keep it):
//! - `Rules::from_yaml(text: &str, origin: &str) -> Result<Rules, LoadError>`
//! - `Rules::embedded() -> Rules` (the default `rules/rules.yaml`, compiled in)
//! - `rules.classify(&FailureFacts) -> Verdict` (never fails: the fallback kind catches all)
//! - `rules.verdict_for_kind(name) -> Option<Verdict>` (e.g. the health gate re-answering
//!   with the kind the probe found; None if the kind no longer exists)
//! - `rules.first_unhealthy_kind() -> Option<Verdict>`
//! - `rules.render_body(&Verdict, Flavour, &TemplateValues) -> serde_json::Value`
//! - `rules.render_headers(&Verdict, &TemplateValues) -> Vec<(String, String)>`
//! - `rules.probe() -> &ProbeSettings`, `rules.models() -> &[String]`,
//!   `rules.sha256() -> &str` (hex of the source text), `rules.kinds_count()`, `rules.markers_count()`

pub mod facts;

pub use facts::{FailureFacts, GatewayCondition, SpawnErrorKind, TimeoutKind};

use std::time::Duration;

/// Lowercase hex SHA-256 of the rules source (the rules version).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which API's error body shape a template renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    /// The failure's summary text (`FailureFacts::summary`), for `{{error_message}}`.
    pub message: String,
    /// `retry_after` seconds from the kind, if set.
    pub retry_after: Option<u64>,
    /// The stderr tail of the run (only rendered if a template names `{{stderr_tail}}`).
    #[serde(skip)]
    pub stderr_tail: String,
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

// ---- STUB (integrator's placeholder until the rules branch merges; delete at merge) ----
mod stub_rules {
    use super::*;
    /// Compiled rules (stub).
    #[derive(Debug)]
    pub struct Rules;
    #[derive(Debug, thiserror::Error)]
    #[error("stub")]
    pub struct LoadError;
    impl Rules {
        pub fn from_yaml(_text: &str, _origin: &str) -> Result<Rules, LoadError> {
            Err(LoadError)
        }
        pub fn embedded() -> Rules {
            Rules
        }
        pub fn classify(&self, _f: &FailureFacts) -> Verdict {
            todo!()
        }
        pub fn verdict_for_kind(&self, _name: &str) -> Option<Verdict> {
            todo!()
        }
        pub fn first_unhealthy_kind(&self) -> Option<Verdict> {
            todo!()
        }
        pub fn status_for(&self, _v: &Verdict, _f: Flavour) -> u16 {
            todo!()
        }
        pub fn render_body(
            &self,
            _v: &Verdict,
            _f: Flavour,
            _t: &TemplateValues,
        ) -> serde_json::Value {
            todo!()
        }
        pub fn render_headers(&self, _v: &Verdict, _t: &TemplateValues) -> Vec<(String, String)> {
            todo!()
        }
        pub fn probe(&self) -> &ProbeSettings {
            todo!()
        }
        pub fn models(&self) -> &[String] {
            todo!()
        }
        pub fn sha256(&self) -> &str {
            todo!()
        }
        pub fn kinds_count(&self) -> usize {
            todo!()
        }
        pub fn markers_count(&self) -> usize {
            todo!()
        }
    }
}
pub use stub_rules::{LoadError, Rules};
