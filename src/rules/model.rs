//! The rules file as written: serde types for `rules.yaml` (deserialized with serde-saphyr,
//! so selected fields carry their source location via [`Spanned`]) and the JSON Schema
//! (schemars) that editors use through the `yaml-language-server` comment.
//!
//! Nothing here is validated beyond what serde enforces (field names and types); the
//! semantic checks live in `load.rs`, which turns a [`RulesFile`] into compiled `Rules`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::facts::{GatewayCondition, SpawnErrorKind, TimeoutKind};

/// A ccgate rules file: how CLI failures are classified and answered, plus the health
/// probe settings and the model list. Reloaded at runtime when the file changes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ccgate rules")]
pub struct RulesFile {
    /// Active CLI health probe settings.
    #[serde(default)]
    pub probe: Option<ProbeDef>,
    /// Model ids served by `GET /v1/models`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Model aliases: a name clients send (e.g. `gpt-4o`) → the model the CLI runs (e.g.
    /// `sonnet`). Listed by `GET /v1/models`; an alias never shadows a real model id.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub aliases: Option<Spanned<BTreeMap<String, String>>>,
    /// Failure kinds, in match order: the first kind with any matching matcher wins.
    #[serde(default)]
    pub kinds: Vec<KindDef>,
    /// The kind used when no kind matches (required). Same fields as a kind, but no `match`.
    #[schemars(with = "FallbackDef")]
    pub fallback: Option<FallbackDef>,
}

/// Settings of the periodic one-turn CLI health probe.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeDef {
    /// Seconds between probes while healthy (fractions allowed); 0 disables the periodic
    /// probe. Default 600.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub interval: Option<Spanned<f64>>,
    /// Seconds between probes while unhealthy (0: same as `interval`). Default 30.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub unhealthy_interval: Option<Spanned<f64>>,
    /// Seconds a probe may take before it counts as inconclusive (must be > 0). Default 30.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub timeout: Option<Spanned<f64>>,
    /// The probe's prompt. Default "Reply with the single word OK.".
    #[serde(default)]
    pub prompt: Option<String>,
    /// `--model` for the probe (a cheap one, e.g. `haiku`); omitted: the CLI's default.
    #[serde(default)]
    pub model: Option<String>,
}

/// One failure kind: what it matches and how it is answered.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindDef {
    /// Unique name (`auth_failure`, …); reported as `error_kind`, in logs and metrics.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// HTTP status (400-599) for both flavours unless overridden.
    #[schemars(with = "u16", range(min = 400, max = 599))]
    pub status: Spanned<u16>,
    /// Status override for OpenAI-flavoured endpoints (e.g. 503 where Anthropic gets 529).
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 400, max = 599))]
    pub openai_status: Option<Spanned<u16>>,
    /// Status override for Anthropic-flavoured endpoints.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 400, max = 599))]
    pub anthropic_status: Option<Spanned<u16>>,
    /// Whether this kind marks the CLI unhealthy (opens the health gate). Default false.
    #[serde(default)]
    pub unhealthy: bool,
    /// Seconds, available to templates and headers as `{{retry_after}}`.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// The failure is the account's (its credentials, billing or usage limit), not the
    /// request's: before the first byte, the request is retried once on another account
    /// that can serve. Default false.
    #[serde(default)]
    pub account_scoped: bool,
    /// Takes the failing account out of service (requests go to the other accounts):
    /// `until_reset` (until the reset the CLI reported; its `retry_after`, else 300 s,
    /// when it reported none) or a number of seconds (1-691200). The account is probed
    /// right after. Needs `account_scoped: true`. Only configured `accounts` cool down.
    #[serde(default)]
    #[schemars(with = "Option<CooldownDef>")]
    pub cooldown: Option<Spanned<CooldownDef>>,
    /// Extra response headers; values may use placeholders. A header whose value renders
    /// empty is omitted.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// The kind matches if ANY listed matcher matches.
    #[serde(rename = "match")]
    #[schemars(with = "MatchDef")]
    pub match_: Option<Spanned<MatchDef>>,
    /// Response bodies per API flavour.
    #[schemars(with = "TemplatesDef")]
    pub templates: Option<Spanned<TemplatesDef>>,
}

/// A kind's `cooldown`: `until_reset` or seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CooldownDef {
    /// Seconds (1-691200).
    Seconds(u64),
    /// `until_reset`.
    Keyword(CooldownKeyword),
}

/// The keyword form of `cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum CooldownKeyword {
    /// Until the reset the CLI reported.
    #[serde(rename = "until_reset")]
    UntilReset,
}

/// The catch-all kind: like a kind, without `match`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackDef {
    /// Unique name (e.g. `cli_error`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// HTTP status (400-599).
    #[schemars(with = "u16", range(min = 400, max = 599))]
    pub status: Spanned<u16>,
    /// Status override for OpenAI-flavoured endpoints.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 400, max = 599))]
    pub openai_status: Option<Spanned<u16>>,
    /// Status override for Anthropic-flavoured endpoints.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 400, max = 599))]
    pub anthropic_status: Option<Spanned<u16>>,
    /// Whether this kind marks the CLI unhealthy. Default false (keep it false).
    #[serde(default)]
    pub unhealthy: bool,
    /// Seconds, as `{{retry_after}}`.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Extra response headers; values may use placeholders.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Response bodies per API flavour.
    #[schemars(with = "TemplatesDef")]
    pub templates: Option<Spanned<TemplatesDef>>,
}

/// Matchers of one kind. Structured matchers are checked before `markers` and `regex`.
/// String lists compare exactly but case-insensitively.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchDef {
    /// `error` of the CLI's synthetic assistant message (`authentication_failed`, …).
    #[serde(default)]
    pub assistant_error: Vec<String>,
    /// `result.subtype` (`error_max_turns`, `error_during_execution`, …).
    #[serde(default)]
    pub result_subtype: Vec<String>,
    /// `result.terminal_reason` (`prompt_too_long`, `aborted_streaming`, …).
    #[serde(default)]
    pub terminal_reason: Vec<String>,
    /// `result.api_error` (`connection_failed`, `stream_idle_timeout`, …).
    #[serde(default)]
    pub api_error: Vec<String>,
    /// `result.api_error_type` (`authentication_error`, `overloaded_error`, …).
    #[serde(default)]
    pub api_error_type: Vec<String>,
    /// `result.startup_failure_reason` (CLI 2.1.274+): why the CLI refused to start
    /// (`consumer_terms_accept_on_web`, `org_signin_ended`, `resume_target_not_found`,
    /// `bypass_root`, …). Identifiers (`^[a-z][a-z0-9_]{0,63}$`); `ccgate check` warns
    /// about a name the tested CLI versions do not report.
    #[serde(default)]
    #[schemars(with = "Vec<StartupFailureReasonDef>")]
    pub startup_failure_reason: Vec<Spanned<String>>,
    /// `api_error_code` of the synthetic assistant message or the result (CLI 2.1.274+):
    /// the upstream error's `error.details.error_code`, copied through by the CLI when it
    /// is an identifier (`^[a-z][a-z0-9_]{0,63}$`).
    #[serde(default)]
    #[schemars(with = "Vec<IdentifierDef>")]
    pub api_error_code: Vec<Spanned<String>>,
    /// `rate_limit_info.status` of the run's last `rate_limit_event`.
    #[serde(default)]
    pub rate_limit_status: Vec<RateLimitStatus>,
    /// Upstream HTTP status the CLI reported (`api_error_status`), 100-599.
    #[serde(default)]
    #[schemars(with = "Vec<u16>")]
    pub api_error_status: Vec<Spanned<u16>>,
    /// Any `error_status` of the CLI's `system/api_retry` events, 100-599.
    #[serde(default)]
    #[schemars(with = "Vec<u16>")]
    pub retry_status: Vec<Spanned<u16>>,
    /// Process exit code.
    #[serde(default)]
    pub exit_code: Vec<i32>,
    /// Signal number that killed the process.
    #[serde(default)]
    pub signal: Vec<i32>,
    /// Why the process could not be spawned.
    #[serde(default)]
    pub spawn_error: Vec<SpawnErrorKind>,
    /// Which gateway watchdog fired.
    #[serde(default)]
    pub timeout: Vec<TimeoutKind>,
    /// Conditions the gateway detected itself.
    #[serde(default)]
    pub condition: Vec<GatewayCondition>,
    /// Literal substrings, ASCII-case-insensitive, searched in the failure texts
    /// (synthetic assistant text, error result text, `errors[]`, spawn error, stderr tail).
    /// At least 4 characters and not only digits.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub markers: Vec<Spanned<String>>,
    /// Regular expressions (Rust `regex` syntax, case-insensitive) over the same texts.
    /// Must not match the empty string.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub regex: Vec<Spanned<String>>,
}

/// A `rate_limit_event` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStatus {
    /// Within the window.
    Allowed,
    /// Within the window, close to its limit.
    AllowedWarning,
    /// The window is exhausted.
    Rejected,
}

impl RateLimitStatus {
    /// The status as the CLI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitStatus::Allowed => "allowed",
            RateLimitStatus::AllowedWarning => "allowed_warning",
            RateLimitStatus::Rejected => "rejected",
        }
    }
}

/// The `startup_failure_reason` values the tested CLI versions report (2.1.332-2.1.336).
/// Other identifiers are allowed (a newer CLI may add reasons); `ccgate check` warns.
pub const STARTUP_FAILURE_REASONS: &[&str] = &[
    "org_pin_api_key_conflict",
    "provider_not_allowed",
    "org_verify_failed",
    "org_pin_mismatch",
    "managed_settings_invalid",
    "remote_settings_required_unavailable",
    "gateway_signin_required",
    "gateway_access_denied",
    "proxy_invalid",
    "temp_dir_unusable",
    "cwd_unavailable",
    "shell_tool_missing",
    "session_held_by_background",
    "worktree_resume_refused",
    "worktree_unverified",
    "cli_version_too_old",
    "bypass_root",
    "org_config_required_unavailable",
    "org_config_refused",
    "sandbox_required_unavailable",
    "initialize_not_first",
    "config_file_invalid",
    "managed_settings_not_delivered",
    "initialize_fields_not_delivered",
    "sideload_flags_disabled",
    "resume_target_not_found",
    "consumer_terms_review_in_terminal",
    "consumer_terms_accept_on_web",
    "org_signin_ended",
];

/// Schema of a `startup_failure_reason` entry: an identifier, with the known reasons as
/// editor suggestions.
struct StartupFailureReasonDef;

impl JsonSchema for StartupFailureReasonDef {
    fn schema_name() -> Cow<'static, str> {
        "StartupFailureReason".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": IDENTIFIER_PATTERN,
            "description": "A `result.startup_failure_reason` of the CLI.",
            "examples": STARTUP_FAILURE_REASONS,
        })
    }
}

/// What the CLI copies through as a code: `^[a-z][a-z0-9_]{0,63}$`.
pub const IDENTIFIER_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";

/// Schema of an identifier entry (`api_error_code`).
struct IdentifierDef;

impl JsonSchema for IdentifierDef {
    fn schema_name() -> Cow<'static, str> {
        "Identifier".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": IDENTIFIER_PATTERN,
        })
    }
}

/// Response body templates. Both flavours are required.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatesDef {
    /// Body for `/v1/chat/completions` (`{"error": {message, type, param, code}}`).
    #[schemars(with = "TemplateNode")]
    pub openai: Option<Spanned<TemplateNode>>,
    /// Body for `/v1/messages` (`{"type": "error", "error": {type, message}}`).
    #[schemars(with = "TemplateNode")]
    pub anthropic: Option<Spanned<TemplateNode>>,
}

/// A JSON-like template tree as written in YAML, with the location of every node and key,
/// so placeholder problems can point at the exact leaf.
#[derive(Debug, Clone)]
pub enum TemplateNode {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Spanned<TemplateNode>>),
    Object(Vec<(Spanned<String>, Spanned<TemplateNode>)>),
}

impl JsonSchema for TemplateNode {
    fn schema_name() -> Cow<'static, str> {
        "Template".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A JSON body template. String leaves may contain `{{placeholder}}`s (kind, status, request_id, model, marker, message, retry_after, last_probed_at, error_kind, error_message, stderr_tail); a leaf that is exactly one placeholder takes the value's JSON type. Keys may not contain placeholders."
        })
    }
}

impl<'de> Deserialize<'de> for TemplateNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TemplateNode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-compatible template value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<TemplateNode, E> {
                Ok(TemplateNode::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<TemplateNode, E> {
                Ok(TemplateNode::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<TemplateNode, D2::Error> {
                TemplateNode::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<TemplateNode, E> {
                Ok(TemplateNode::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TemplateNode, E> {
                Ok(TemplateNode::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TemplateNode, E> {
                Ok(TemplateNode::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TemplateNode, E> {
                serde_json::Number::from_f64(v)
                    .map(TemplateNode::Number)
                    .ok_or_else(|| E::custom("NaN and infinite numbers are not valid JSON"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TemplateNode, E> {
                Ok(TemplateNode::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TemplateNode, E> {
                Ok(TemplateNode::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TemplateNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<TemplateNode>>()? {
                    items.push(item);
                }
                Ok(TemplateNode::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TemplateNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<Spanned<TemplateNode>>()?;
                    entries.push((key, value));
                }
                Ok(TemplateNode::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}
