//! Harness for running the REAL `claude` binary in tests, isolated and offline.
//!
//! * [`real_claude`] finds the executable via `CCGATE_REAL_CLAUDE`. Unset: prints
//!   [`SKIP_MSG`] and returns `None` (the test should return) — unless `CI` is
//!   set, in which case it panics: CI never skips.
//! * [`RealCli`] runs one CLI process with a cleared environment, its own temp
//!   `CLAUDE_CONFIG_DIR`, `HOME` and cwd, the exact flags ccgate uses
//!   ([`ccgate_flags`]) and one stream-json user line on stdin (then EOF).
//! * [`CliOutput`] holds the parsed stdout lines plus helpers for assertions and
//!   for saving transcripts as parser fixtures (`tests/fixtures/real/`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Printed (loudly) when a real-CLI test is skipped.
pub const SKIP_MSG: &str =
    "SKIPPED: real Claude CLI not available; set CCGATE_REAL_CLAUDE (see scripts/install-claude.sh)";

/// The flags ccgate passes to the CLI for a turn with the default config, no model and no
/// system prompt: taken from ccgate's own `cli_args`, so these tests follow any change.
pub fn ccgate_flags() -> Vec<String> {
    let settings = ccgate::config::Config::default()
        .compile()
        .expect("the default config is valid")
        .cli_settings(std::env::temp_dir());
    ccgate::backend::cli_args(&settings, &ccgate::backend::CliRequest::default(), None)
        .into_iter()
        .map(|a| a.into_string().expect("ccgate's flags are UTF-8"))
        .collect()
}

/// The user line ccgate writes on stdin for the prompt `Hello`.
pub const HELLO_LINE: &str = r#"{"type":"user","message":{"role":"user","content":"Hello"}}"#;

/// Path of the real CLI, or `None` after printing [`SKIP_MSG`].
///
/// Panics when `CI` is set and `CCGATE_REAL_CLAUDE` is not, or when the
/// variable points at something that is not a file.
pub fn real_claude() -> Option<PathBuf> {
    match std::env::var_os("CCGATE_REAL_CLAUDE").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "CCGATE_REAL_CLAUDE={} is not a file",
                p.display()
            );
            Some(p)
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but CCGATE_REAL_CLAUDE is not: CI must run the real-CLI tests ({SKIP_MSG})")
        }
        None => {
            // Written to the stderr handle directly (not `eprintln!`), which libtest
            // does not capture: the skip must be visible even without --nocapture.
            let bar = "!".repeat(SKIP_MSG.len());
            let _ = writeln!(std::io::stderr(), "\n{bar}\n{SKIP_MSG}\n{bar}");
            None
        }
    }
}

/// `claude --version` of `exe` as numbers (`2.1.336 (Claude Code)` → `(2, 1, 336)`).
pub fn cli_version(exe: &Path) -> (u32, u32, u32) {
    let out = std::process::Command::new(exe)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", exe.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text.split_whitespace().next().unwrap_or("");
    let mut n = word.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
    );
    assert!(v != (0, 0, 0), "unparsable `--version`: {text:?}");
    v
}

/// Builder for one isolated run of the real CLI.
#[derive(Debug, Clone)]
pub struct RealCli {
    exe: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin_lines: Vec<String>,
    timeout: Duration,
}

impl RealCli {
    /// [`ccgate_flags`], stdin [`HELLO_LINE`], `ANTHROPIC_API_KEY=test-key`,
    /// `CLAUDE_CODE_MAX_RETRIES=0`, 30 s timeout. No base URL: call [`Self::base_url`].
    pub fn new(exe: &Path) -> Self {
        RealCli {
            exe: exe.to_owned(),
            args: ccgate_flags(),
            env: vec![
                ("ANTHROPIC_API_KEY".into(), "test-key".into()),
                ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
            ],
            stdin_lines: vec![HELLO_LINE.into()],
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets `ANTHROPIC_BASE_URL`.
    pub fn base_url(self, url: &str) -> Self {
        self.env("ANTHROPIC_BASE_URL", url)
    }

    /// Sets (or replaces) an environment variable.
    pub fn env(mut self, key: &str, val: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), val.into()));
        self
    }

    /// Removes an environment variable set by default (e.g. `ANTHROPIC_API_KEY`).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// Appends CLI arguments after [`ccgate_flags`].
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Replaces the stdin lines (stdin is closed after them).
    pub fn stdin_lines(mut self, lines: &[&str]) -> Self {
        self.stdin_lines = lines.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Kills the process group after this long (`CliOutput::timed_out`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs the CLI to completion (or timeout) and collects its output.
    pub async fn run(self) -> CliOutput {
        let tmp = tempfile::tempdir().expect("temp dir for the CLI run");
        let (config, home, cwd) = (
            tmp.path().join("config"),
            tmp.path().join("home"),
            tmp.path().join("work"),
        );
        for d in [&config, &home, &cwd] {
            std::fs::create_dir(d).expect("create temp subdir");
        }
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", &config)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.exe.display()));
        let pid = child.id().expect("child pid") as i32;
        let mut stdin = child.stdin.take().expect("stdin pipe");
        let mut out = child.stdout.take().expect("stdout pipe");
        let mut err = child.stderr.take().expect("stderr pipe");
        let input: String = self.stdin_lines.iter().map(|l| format!("{l}\n")).collect();
        let writer = tokio::spawn(async move {
            // A failed write just means the CLI exited early; its output tells why.
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
        });
        let out_task = tokio::spawn(async move {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b).await;
            b
        });
        let err_task = tokio::spawn(async move {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b).await;
            b
        });
        let (status, timed_out) = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(s) => (s.expect("wait for the CLI"), false),
            Err(_) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                (child.wait().await.expect("wait for the killed CLI"), true)
            }
        };
        let elapsed = start.elapsed();
        writer.abort();
        let grace = Duration::from_secs(5);
        let stdout = tokio::time::timeout(grace, out_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = tokio::time::timeout(grace, err_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let lines = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("non-JSON stdout line ({e}): {l}"))
            })
            .collect();
        CliOutput {
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            lines,
            exit_code: status.code(),
            elapsed,
            timed_out,
        }
    }
}

/// What one CLI run produced.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Raw stdout (NDJSON).
    pub stdout: String,
    pub stderr: String,
    /// Every stdout line, parsed.
    pub lines: Vec<Value>,
    /// `None` when killed by a signal (e.g. after a timeout).
    pub exit_code: Option<i32>,
    pub elapsed: Duration,
    /// We killed it because [`RealCli::timeout`] expired.
    pub timed_out: bool,
}

impl CliOutput {
    /// Lines with `"type": t`.
    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["type"] == t).collect()
    }

    /// Index of the (last) `result` line, if any.
    pub fn result_index(&self) -> Option<usize> {
        self.lines.iter().rposition(|l| l["type"] == "result")
    }

    /// The last `result` line; panics with the transcript if there is none.
    pub fn result(&self) -> &Value {
        let i = self
            .result_index()
            .unwrap_or_else(|| panic!("no result line\n{}", self.describe()));
        &self.lines[i]
    }

    /// The synthetic `assistant` message carrying the API error, if any.
    pub fn synthetic_assistant(&self) -> Option<&Value> {
        self.of_type("assistant")
            .into_iter()
            .find(|l| l["message"]["model"] == "<synthetic>" || l.get("error").is_some())
    }

    /// `system/api_retry` lines.
    pub fn api_retries(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["type"] == "system" && l["subtype"] == "api_retry")
            .collect()
    }

    /// Indices of `stream_event` `text_delta` lines.
    pub fn text_delta_indices(&self) -> Vec<usize> {
        (0..self.lines.len())
            .filter(|&i| {
                let l = &self.lines[i];
                l["type"] == "stream_event" && l["event"]["delta"]["type"] == "text_delta"
            })
            .collect()
    }

    /// Concatenation of all streamed `text_delta`s.
    pub fn stream_text(&self) -> String {
        self.text_delta_indices()
            .into_iter()
            .filter_map(|i| self.lines[i]["event"]["delta"]["text"].as_str())
            .collect()
    }

    /// One-line summary for reports: rc, time, error fields, text.
    pub fn summary(&self) -> String {
        let r = self.result_index().map(|i| &self.lines[i]);
        let a = self.synthetic_assistant();
        format!(
            "rc={:?} t={:.2}s timed_out={} retries={} assistant.error={} status={} api_error_type={} api_error={} is_error={} result={}",
            self.exit_code,
            self.elapsed.as_secs_f64(),
            self.timed_out,
            self.api_retries().len(),
            a.map_or(Value::Null, |a| a["error"].clone()),
            r.map_or(Value::Null, |r| r["api_error_status"].clone()),
            r.map_or(Value::Null, |r| r["api_error_type"].clone()),
            r.map_or(Value::Null, |r| r["api_error"].clone()),
            r.map_or(Value::Null, |r| r["is_error"].clone()),
            r.map_or(Value::Null, |r| r["result"].clone()),
        )
    }

    /// Summary plus full stdout/stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.summary(),
            self.stdout,
            self.stderr
        )
    }

    /// Writes stdout verbatim to `tests/fixtures/real/<case>.jsonl`, but only
    /// when `CCGATE_UPDATE_FIXTURES` is set (so normal runs leave the tree clean).
    pub fn save_fixture(&self, case: &str) {
        if std::env::var_os("CCGATE_UPDATE_FIXTURES").is_none() {
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
        std::fs::create_dir_all(&dir).expect("create tests/fixtures/real");
        let path = dir.join(format!("{case}.jsonl"));
        std::fs::write(&path, &self.stdout)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
