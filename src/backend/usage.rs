//! An account's plan windows read through the CLI's `get_usage` control request, without a
//! model call: one short-lived process (ccgate's flags, the account's environment) gets
//! `get_usage {skip_behaviors: true}` and no user line, answers, and is ended.
//!
//! What the real CLI (2.1.332–2.1.336) answers, verified against the loopback mock
//! (`tests/it/real_windows.rs`) and its debug log:
//! - a login whose token has the `user:profile` scope (a logged-in config directory):
//!   `rate_limits_available: true`; the CLI then reads the windows from the claude.ai
//!   usage endpoint (`GET https://api.anthropic.com/api/oauth/usage`, not a model call),
//!   falling back to the last answer's unified headers in the same process; a fresh
//!   process that cannot reach the endpoint answers `rate_limits: null`;
//! - an environment token, an API key or a third-party provider:
//!   `rate_limits_available: false`, `rate_limits: null` — only the stream's
//!   `rate_limit_event` after each answer reports the windows then.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::request::{Account, CliRequest, CliSettings};
use crate::protocol::{PlanWindow, PlanWindows};

/// How long one read may take (a cold start of the CLI plus the usage endpoint).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The request id of the read's `get_usage`.
const REQUEST_ID: &str = "ccgate-get-usage";
/// The longest stdout line read (the answer is small; the init line is a few KiB).
const LINE_MAX: usize = 256 * 1024;

/// What one `get_usage` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// `rate_limits_available`: the login can report its plan's windows at all.
    pub available: bool,
    /// `subscription_type` (`pro`, `max`, `team`, `enterprise`), when reported.
    pub subscription_type: Option<String>,
    /// The windows `rate_limits` reported (None: none, e.g. a fresh process offline).
    pub windows: Option<PlanWindows>,
}

/// Reads the plan windows of `account` (None: the CLI's own environment, `base`).
pub async fn read_windows(
    base: &CliSettings,
    account: Option<&Account>,
) -> Result<UsageReport, String> {
    let settings = account.map_or(base, |a| a.settings().as_ref());
    tokio::time::timeout(READ_TIMEOUT, read(settings))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "get_usage was not answered within {} s",
                READ_TIMEOUT.as_secs()
            ))
        })
}

async fn read(settings: &CliSettings) -> Result<UsageReport, String> {
    let args = super::args::cli_args(settings, &CliRequest::default(), None);
    let mut child = super::child::build_command(settings, args, None)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", settings.command.display()))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the CLI's pipes are missing".into());
    };
    let ask = format!(
        "{{\"type\":\"control_request\",\"request_id\":\"{REQUEST_ID}\",\"request\":{{\"subtype\":\"get_usage\",\"skip_behaviors\":true}}}}\n"
    );
    stdin
        .write_all(ask.as_bytes())
        .await
        .map_err(|e| format!("cannot write to the CLI: {e}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut answer = Err("the CLI ended without answering get_usage".to_string());
    while let Ok(Some(line)) = lines.next_line().await {
        if line.len() > LINE_MAX || !line.contains(REQUEST_ID) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let r = &v["response"];
        if v["type"] != "control_response" || r["request_id"] != REQUEST_ID {
            continue;
        }
        answer = if r["subtype"] == "success" {
            Ok(parse(&r["response"]))
        } else {
            Err(format!(
                "the CLI refused get_usage: {}",
                crate::rules::redact::redact(r["error"].as_str().unwrap_or("no reason"))
            ))
        };
        break;
    }
    // No user line: closing stdin ends the CLI without a model call.
    drop(stdin);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    answer
}

/// The most windows kept from one answer.
const WINDOWS_MAX: usize = 8;

/// A `get_usage` answer's plan part (utilization in percent, `resets_at` RFC 3339).
pub fn parse(answer: &Value) -> UsageReport {
    let available = answer["rate_limits_available"].as_bool().unwrap_or(false);
    let subscription_type = answer["subscription_type"]
        .as_str()
        .filter(|s| s.len() <= 32)
        .map(str::to_string);
    let limits = &answer["rate_limits"];
    let window = |name: String, w: &Value| -> Option<PlanWindow> {
        let percent = w
            .get("utilization_precise")
            .and_then(Value::as_f64)
            .or_else(|| w.get("utilization").and_then(Value::as_f64))?;
        let ok_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        (ok_name && percent.is_finite()).then(|| PlanWindow {
            name,
            utilization: (percent / 100.0).clamp(0.0, 1.0),
            resets_at: w
                .get("resets_at")
                .and_then(Value::as_str)
                .and_then(unix_of_rfc3339),
        })
    };
    let mut windows: Vec<PlanWindow> = Vec::new();
    if let Some(all) = limits.as_object() {
        for (name, w) in all {
            if name == "model_scoped" || name == "extra_usage" || !w.is_object() {
                continue;
            }
            windows.extend(window(name.clone(), w));
        }
        for m in limits["model_scoped"].as_array().into_iter().flatten() {
            let Some(display) = m["display_name"].as_str() else {
                continue;
            };
            let slug: String = display
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            windows.extend(window(format!("seven_day_{slug}"), m));
        }
    }
    windows.sort_by(|a, b| a.name.cmp(&b.name));
    windows.dedup_by(|a, b| a.name == b.name);
    windows.truncate(WINDOWS_MAX);
    UsageReport {
        available,
        subscription_type,
        windows: (!windows.is_empty()).then_some(PlanWindows {
            windows,
            extra_usage_in_use: None,
        }),
    }
}

fn unix_of_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_documented_answer() {
        let r = parse(&json!({
            "session": {"total_cost_usd": 0},
            "subscription_type": "max",
            "rate_limits_available": true,
            "rate_limits": {
                "five_hour": {"utilization": 42, "resets_at": "2026-12-04T22:08:48.000Z"},
                "seven_day": {"utilization": 10, "utilization_precise": 10.5, "resets_at": null},
                "seven_day_opus": null,
                "model_scoped": [{"display_name": "Opus 5", "utilization": 3, "resets_at": null}],
                "extra_usage": {"is_enabled": true}
            },
            "behaviors": null
        }));
        assert!(r.available);
        assert_eq!(r.subscription_type.as_deref(), Some("max"));
        let w = r.windows.unwrap().windows;
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["five_hour", "seven_day", "seven_day_opus_5"]);
        assert!((w[0].utilization - 0.42).abs() < 1e-9);
        assert_eq!(w[0].resets_at, Some(1_796_422_128));
        assert!((w[1].utilization - 0.105).abs() < 1e-9);
    }

    #[test]
    fn an_environment_token_reports_nothing() {
        let r = parse(&json!({"rate_limits_available": false, "rate_limits": null}));
        assert_eq!(
            r,
            UsageReport {
                available: false,
                subscription_type: None,
                windows: None
            }
        );
    }
}
