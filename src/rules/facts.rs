//! Failure facts: everything the backend observed about one failed CLI run.
//!
//! This is the classifier's only input. The backend fills it; `ccgate classify` and the
//! rule test files deserialize it (or build it from a captured stream-json transcript).
//! It deliberately holds *failure signals only*: the model's normal answer text never
//! lands here, so no marker can match an ordinary answer that mentions "401".

use serde::{Deserialize, Serialize};

/// Which of the gateway's own watchdogs fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// No stdout line within `cli.start_timeout` of spawning.
    Start,
    /// No stdout line within `cli.inactivity_timeout` of the previous one.
    Inactivity,
    /// The whole request exceeded `cli.total_timeout`.
    Total,
}

/// Why the process could not be started at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpawnErrorKind {
    /// ENOENT: the CLI is not installed / not on PATH.
    NotFound,
    /// EACCES: found but not executable.
    PermissionDenied,
    /// Anything else (fork failure, bad working directory …).
    Other,
}

/// Conditions the gateway itself detects (not reported by the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GatewayCondition {
    /// Concurrency limit reached and the wait queue is full.
    QueueFull,
    /// The process ended (any exit status) without a `result` line.
    NoResult,
    /// A stdout line starting with `{` was not valid JSON, or a line exceeded the size limit.
    BadJson,
    /// The CLI abandoned a partially streamed answer after deltas were already sent.
    StreamAbandoned,
    /// The gateway is stopping and the shutdown grace period ran out for this request.
    ShuttingDown,
    /// The gateway could not write a request's temp file (`cli.temp_dir` / TMPDIR full or
    /// read-only); no CLI was started.
    TmpUnwritable,
    /// The request's `tool_choice` demanded a tool call (`required` / `any`, or a named
    /// tool) and the model's answer had none (the CLI cannot force one).
    ToolChoiceUnmet,
    /// The client asked for structured output (a JSON Schema) and the CLI's result has
    /// none: the model answered in prose.
    StructuredOutputMissing,
}

/// Everything known about one failed run. All fields optional: a spawn error has no
/// exit code, a timeout may have no result, and so on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FailureFacts {
    /// `error` of a synthetic `assistant` event (`authentication_failed`, `rate_limit`, …).
    pub assistant_error: Option<String>,
    /// The human text of that synthetic assistant message (`Not logged in · Please run /login`).
    pub assistant_error_text: Option<String>,
    /// Whether a `result` line was seen at all.
    pub result_seen: bool,
    /// `result.subtype` (`success`, `error_max_turns`, `error_during_execution`, …).
    pub result_subtype: Option<String>,
    /// `result.is_error`.
    pub result_is_error: bool,
    /// `result.result` of an `is_error` result.
    pub result_text: Option<String>,
    /// `result.errors[]`.
    pub result_errors: Vec<String>,
    /// `result.api_error_status` (or the synthetic assistant's), the upstream HTTP status.
    pub api_error_status: Option<u16>,
    /// `result.api_error_type` (`authentication_error`, `overloaded_error`, …).
    pub api_error_type: Option<String>,
    /// `result.api_error` (`connection_failed`, `stream_idle_timeout`, …).
    pub api_error: Option<String>,
    /// `result.terminal_reason` (`api_error`, `max_turns`, `aborted_streaming`, …).
    pub terminal_reason: Option<String>,
    /// `result.startup_failure_reason` (CLI 2.1.274+): why the CLI refused to start
    /// (`bypass_root`, `resume_target_not_found`, `consumer_terms_accept_on_web`, …).
    pub startup_failure_reason: Option<String>,
    /// `api_error_code` of the synthetic assistant message or the result: the upstream
    /// error's `error.details.error_code`, which the CLI copies through when it is an
    /// identifier (`consumer_terms_not_accepted`, …).
    pub api_error_code: Option<String>,
    /// `rate_limit_info.status` of the run's last `rate_limit_event` (`allowed`,
    /// `allowed_warning`, `rejected`).
    pub rate_limit_status: Option<String>,
    /// `error_status` of every `system/api_retry` event, in order (null ones skipped).
    pub retry_statuses: Vec<u16>,
    /// `error` of every `system/api_retry` event, in order.
    pub retry_errors: Vec<String>,
    /// `rate_limit_info.resetsAt` (Unix seconds) of a `rate_limit_event` whose status is
    /// `rejected`: when the exhausted usage window resets. Feeds `{{retry_after}}`.
    pub rate_limit_resets_at: Option<u64>,
    /// Process exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number, when it was killed by a signal.
    pub signal: Option<i32>,
    /// Set when the process could not be spawned.
    pub spawn_error: Option<SpawnErrorKind>,
    /// The OS error text of a spawn failure.
    pub spawn_error_message: Option<String>,
    /// Set when one of the gateway's watchdogs fired.
    pub timeout: Option<TimeoutKind>,
    /// Set for conditions the gateway detected itself.
    pub condition: Option<GatewayCondition>,
    /// The last bytes the CLI wrote to stderr (bounded ring, UTF-8 lossy).
    pub stderr_tail: String,
}

impl FailureFacts {
    /// The failure texts markers and regexes are matched against, in a fixed order.
    /// Never includes normal answer text.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.assistant_error_text
            .as_deref()
            .into_iter()
            .chain(self.result_text.as_deref())
            .chain(self.result_errors.iter().map(String::as_str))
            .chain(self.spawn_error_message.as_deref())
            .chain(std::iter::once(self.stderr_tail.as_str()).filter(|s| !s.is_empty()))
    }

    /// The most specific human-readable failure message, for logs and the `{{message}}`
    /// placeholder. Deliberately excludes stderr, which reaches a body only through
    /// `{{stderr_tail}}` in a template.
    pub fn summary(&self) -> String {
        let structured = self
            .assistant_error_text
            .iter()
            .chain(self.result_text.iter())
            .chain(self.result_errors.iter())
            .chain(self.spawn_error_message.iter());
        if let Some(t) = structured.map(|t| t.trim()).find(|t| !t.is_empty()) {
            return t.to_string();
        }
        if let Some(t) = self.timeout {
            return format!("Claude CLI timed out ({t:?} timeout)").to_lowercase();
        }
        let how = match (self.exit_code, self.signal) {
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            (Some(code), _) => format!("exited with status {code}"),
            _ => "failed".to_string(),
        };
        match self.condition {
            Some(GatewayCondition::QueueFull) => {
                "too many concurrent requests: the Claude CLI queue is full".to_string()
            }
            Some(GatewayCondition::NoResult) => {
                format!("Claude CLI {how} without a result")
            }
            Some(GatewayCondition::BadJson) => {
                "Claude CLI printed malformed or oversized output".to_string()
            }
            Some(GatewayCondition::StreamAbandoned) => {
                "Claude CLI abandoned the answer mid-stream".to_string()
            }
            Some(GatewayCondition::ShuttingDown) => "the gateway is shutting down".to_string(),
            Some(GatewayCondition::TmpUnwritable) => {
                "the gateway's temporary directory is not writable".to_string()
            }
            Some(GatewayCondition::ToolChoiceUnmet) => {
                "the model answered without the tool call that tool_choice requires".to_string()
            }
            Some(GatewayCondition::StructuredOutputMissing) => {
                "the model answered in prose instead of the requested JSON".to_string()
            }
            None => format!("Claude CLI {how}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_gateway_conditions_is_human_text() {
        let facts = FailureFacts {
            condition: Some(GatewayCondition::NoResult),
            exit_code: Some(0),
            ..FailureFacts::default()
        };
        assert_eq!(
            facts.summary(),
            "Claude CLI exited with status 0 without a result"
        );
        let facts = FailureFacts {
            condition: Some(GatewayCondition::NoResult),
            signal: Some(9),
            stderr_tail: "secret stderr".into(),
            ..FailureFacts::default()
        };
        assert_eq!(
            facts.summary(),
            "Claude CLI was killed by signal 9 without a result"
        );
    }
}
