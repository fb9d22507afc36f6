//! The CLI's version and the capabilities ccgate relies on, checked without a model call:
//! `claude --version`, then ONE process spawned exactly as a request with client tools,
//! a JSON Schema and earlier turns would be (ccgate's flags, `--mcp-config` with the
//! in-process MCP server, `--json-schema`, `--resume` of a synthesized session) that gets
//! the control channel's `initialize` and no user line, so no model call is made:
//! - `control_protocol`: `initialize` is answered with success;
//! - `sdk_mcp_servers`: the CLI opens the in-process server (`mcp_message` `initialize`);
//! - `json_schema`: the CLI accepted `--json-schema` (an unknown option ends it first);
//! - `resume`: the CLI loaded the synthesized session (a refused one ends it first).
//!
//! `serve` runs it once at start (logged, shown in `/v1/auth/status`), `ccgate doctor`
//! prints it. Versions outside [`TESTED_MIN`]..=[`TESTED_MAX`] get a warning.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::mcp::{self, Action, INIT_REQUEST_ID};
use super::present::SessionTurn;
use super::request::{CliRequest, CliSettings};
use crate::conversation::{ToolChoice, ToolSet};
use crate::protocol::{Control, Line};

/// The oldest CLI version the real-CLI suite runs against (the pinned npm package).
pub const TESTED_MIN: Version = Version(2, 1, 332);
/// The newest CLI version the real-CLI suite runs against (the platform package).
pub const TESTED_MAX: Version = Version(2, 1, 336);

/// How long the whole check may take (a cold start of the CLI is about a second).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// A `major.minor.patch` CLI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// The version in `claude --version`'s output (`2.1.336 (Claude Code)`).
    pub fn parse(text: &str) -> Option<Version> {
        let word = text.split_whitespace().next()?;
        let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }

    /// Whether the real-CLI suite covers this version.
    pub fn tested(self) -> bool {
        (TESTED_MIN..=TESTED_MAX).contains(&self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The tested range as text (`2.1.332-2.1.336`).
pub fn tested_range() -> String {
    format!("{TESTED_MIN}-{TESTED_MAX}")
}

/// What ccgate relies on, each true when the check saw it work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub control_protocol: bool,
    pub sdk_mcp_servers: bool,
    pub json_schema: bool,
    pub resume: bool,
}

impl Capabilities {
    /// (name, present) in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 4] {
        [
            ("control_protocol", self.control_protocol),
            ("sdk_mcp_servers", self.sdk_mcp_servers),
            ("json_schema", self.json_schema),
            ("resume", self.resume),
        ]
    }

    pub fn all(&self) -> bool {
        self.list().iter().all(|(_, ok)| *ok)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CliReport {
    /// The CLI's version (None: `--version` failed or said something else).
    pub version: Option<Version>,
    /// `TESTED_MIN-TESTED_MAX`.
    pub tested_range: String,
    /// Whether `version` is in the tested range (None: no version).
    pub in_tested_range: Option<bool>,
    pub capabilities: Capabilities,
    /// What went wrong, for humans (no secrets: the CLI's stderr is not included).
    pub problems: Vec<String>,
    pub checked_at: String,
    pub duration_ms: u64,
}

impl CliReport {
    /// The CLI runs and has every capability ccgate relies on.
    pub fn usable(&self) -> bool {
        self.version.is_some() && self.capabilities.all()
    }

    /// The JSON `/v1/auth/status` shows as `cli`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Logs the outcome: the version and capabilities at info, a version outside the
    /// tested range or a missing capability as a warning.
    pub fn log(&self) {
        let version = self
            .version
            .map_or_else(|| "unknown".to_string(), |v| v.to_string());
        let caps: Vec<String> = self
            .capabilities
            .list()
            .iter()
            .map(|(n, ok)| format!("{n}={ok}"))
            .collect();
        tracing::info!(
            version = version.as_str(),
            tested_range = self.tested_range.as_str(),
            capabilities = caps.join(" ").as_str(),
            duration_ms = self.duration_ms,
            "Claude CLI checked"
        );
        if self.in_tested_range == Some(false) {
            tracing::warn!(
                version = version.as_str(),
                tested_range = self.tested_range.as_str(),
                "the Claude CLI version is outside the tested range; it may behave differently"
            );
        }
        for p in &self.problems {
            tracing::warn!(problem = p.as_str(), "Claude CLI check");
        }
    }
}

/// Runs `claude <args>` under `settings` (its command, environment and working
/// directory; stdin closed) to completion within `timeout`: a subcommand that answers
/// without a session (`--version`, `auth status`).
pub async fn run_subcommand(
    settings: &CliSettings,
    args: &[&str],
    timeout: Duration,
) -> Result<std::process::Output, String> {
    let what = format!("`{} {}`", settings.command.display(), args.join(" "));
    let mut cmd = tokio::process::Command::new(&settings.command);
    cmd.args(args)
        .env_remove("CLAUDECODE")
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if settings.workdir.is_dir() {
        cmd.current_dir(&settings.workdir);
    }
    tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("{what} did not answer within {} s", timeout.as_secs()))?
        .map_err(|e| format!("cannot run {}: {e}", settings.command.display()))
}

/// `claude --version` under `settings`.
pub async fn version(settings: &CliSettings) -> Result<Version, String> {
    let out = run_subcommand(settings, &["--version"], Duration::from_secs(10)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Version::parse(&text).ok_or_else(|| {
        format!(
            "`{} --version` printed no version (exit {:?})",
            settings.command.display(),
            out.status.code()
        )
    })
}

/// Runs the whole check (never fails: what went wrong is in `problems`).
pub async fn check(settings: &CliSettings) -> CliReport {
    let started = std::time::Instant::now();
    let mut report = CliReport {
        version: None,
        tested_range: tested_range(),
        in_tested_range: None,
        capabilities: Capabilities::default(),
        problems: Vec::new(),
        checked_at: crate::clock::now_rfc3339(),
        duration_ms: 0,
    };
    match version(settings).await {
        Ok(v) => {
            report.version = Some(v);
            report.in_tested_range = Some(v.tested());
            if !v.tested() {
                report.problems.push(format!(
                    "version {v} is outside the tested range {}",
                    tested_range()
                ));
            }
            match tokio::time::timeout(CHECK_TIMEOUT, capabilities(settings)).await {
                Ok(Ok(c)) => report.capabilities = c,
                Ok(Err((c, why))) => {
                    report.capabilities = c;
                    report.problems.push(why);
                }
                Err(_) => report.problems.push(format!(
                    "the capability check did not finish within {} s",
                    CHECK_TIMEOUT.as_secs()
                )),
            }
        }
        Err(e) => report.problems.push(e),
    }
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// The one process of the check (see the module docs).
async fn capabilities(settings: &CliSettings) -> Result<Capabilities, (Capabilities, String)> {
    let mut caps = Capabilities::default();
    let tools = ToolSet {
        tools: Vec::new(),
        choice: ToolChoice::Auto,
        parallel: true,
    };
    let req = CliRequest {
        tools: Some(std::sync::Arc::new(tools.clone())),
        options: super::RunOptions {
            json_schema: Some(json!({"type": "object"}).to_string()),
            ..super::RunOptions::default()
        },
        ..CliRequest::default()
    };
    let history = [
        SessionTurn {
            assistant: false,
            content: vec![json!({"type": "text", "text": "ccgate capability check"}).into()],
        },
        SessionTurn {
            assistant: true,
            content: vec![json!({"type": "text", "text": "OK"}).into()],
        },
    ];
    let session = super::session::write_session(settings, None, &history)
        .map_err(|e| (caps, format!("cannot write a session file to resume: {e}")))?;
    let mut args = super::args::cli_args(settings, &req, None);
    for a in ["--resume", session.id.as_str(), "--fork-session"] {
        args.push(a.into());
    }
    let mut child = super::child::build_command(settings, args, None)
        .spawn()
        .map_err(|e| {
            (
                caps,
                format!("cannot start {}: {e}", settings.command.display()),
            )
        })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err((caps, "the CLI's pipes are missing".into()));
    };
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let fail = |caps, why: String| Err((caps, why));
    if let Err(e) = stdin.write_all(mcp::initialize_request().as_bytes()).await {
        return fail(caps, format!("cannot write to the CLI: {e}"));
    }
    let mut lines = BufReader::new(stdout).lines();
    let mut refusal: Option<String> = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        match Line::parse(&line) {
            Line::Control(Control::Request {
                request_id,
                request,
            }) => {
                if request.get("subtype").and_then(Value::as_str) == Some("mcp_message")
                    && request.get("server_name").and_then(Value::as_str) == Some(mcp::SERVER)
                {
                    caps.sdk_mcp_servers = true;
                }
                if let Action::Reply(reply) = mcp::answer(&request_id, &request, Some(&tools)) {
                    if stdin.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
            Line::Control(Control::Response {
                request_id,
                success,
                error,
            }) if request_id == INIT_REQUEST_ID => {
                caps.control_protocol = success;
                if !success {
                    refusal = Some(format!(
                        "the CLI refused the control channel's initialize: {}",
                        crate::rules::redact::redact(error.as_deref().unwrap_or("no reason"))
                    ));
                }
                break;
            }
            Line::Result(r) if r.is_error => {
                let text = r
                    .errors
                    .first()
                    .cloned()
                    .or(r.result.clone())
                    .unwrap_or_default();
                if r.startup_failure_reason.as_deref() == Some("resume_target_not_found")
                    || text.contains("No conversation found")
                {
                    refusal = Some("the CLI did not resume ccgate's synthesized session".into());
                } else {
                    let reason = r
                        .startup_failure_reason
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    refusal = Some(format!(
                        "the CLI refused to start{reason}: {}",
                        crate::rules::redact::redact(&text)
                    ));
                }
                break;
            }
            _ => {}
        }
    }
    // No user line: closing stdin ends the CLI without a model call.
    drop(stdin);
    let exited = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    if exited.is_err() {
        let _ = child.start_kill();
    }
    drop(session);
    let stderr = tokio::time::timeout(Duration::from_secs(1), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if caps.control_protocol {
        // Every flag was accepted and the session loaded before the CLI answered.
        caps.json_schema = true;
        caps.resume = true;
        if !caps.sdk_mcp_servers {
            return fail(
                caps,
                "the CLI did not open the in-process MCP server (--mcp-config type sdk)".into(),
            );
        }
        return Ok(caps);
    }
    let why = if stderr.contains("--json-schema") {
        caps.resume = true;
        "the CLI does not know --json-schema".to_string()
    } else if let Some(r) = refusal {
        r
    } else if let Some(line) = stderr.lines().find(|l| l.contains("error:")) {
        format!(
            "the CLI rejected ccgate's flags: {}",
            crate::rules::redact::redact(line.trim())
        )
    } else {
        "the CLI ended without answering the control channel's initialize".to_string()
    };
    fail(caps, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(
            Version::parse("2.1.336 (Claude Code)\n"),
            Some(Version(2, 1, 336))
        );
        assert_eq!(Version::parse("2.1"), None);
        assert_eq!(Version::parse("2.1.3.4"), None);
        assert_eq!(Version::parse(""), None);
        assert!(Version(2, 1, 332).tested() && Version(2, 1, 336).tested());
        assert!(!Version(2, 1, 331).tested() && !Version(2, 1, 337).tested());
        assert!(!Version(3, 0, 0).tested());
        assert_eq!(tested_range(), "2.1.332-2.1.336");
    }
}
