//! A test host for client tools: runs a CLI (the fake or the real one) with ccgate's flags
//! plus an in-process ("sdk") MCP server `cg` on the control channel, reads its stdout line
//! by line, answers the MCP handshake (initialize, notifications/initialized, tools/list)
//! and lets a test answer each `tools/call` itself (see /work/tools-facts.md).
//!
//! [`shape`] reduces a stdout line to a comparable key, so the fake's sequence can be
//! checked against the real CLI's fixtures (`tests/fixtures/real/tool_call_*.jsonl`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The sdk MCP server name the tests use.
pub const SERVER: &str = "cg";

/// The flags for a run with `tools`: ccgate's flags (`--strict-mcp-config` among them), the sdk server and
/// one `--allowedTools mcp__cg__<name>` per entry of `allowed`.
pub fn tool_flags(allowed: &[&str]) -> Vec<String> {
    let mut v = crate::support_real::ccgate_flags();
    v.push("--mcp-config".into());
    v.push(json!({"mcpServers": {SERVER: {"type": "sdk", "name": SERVER}}}).to_string());
    for a in allowed {
        v.push("--allowedTools".into());
        v.push(format!("mcp__{SERVER}__{a}"));
    }
    v
}

/// A tool definition as the host lists it (`tools/list`).
pub fn tool(name: &str, description: &str, props: Value) -> Value {
    json!({"name": name, "description": description,
           "inputSchema": {"type": "object", "properties": props}})
}

/// One running CLI with its private HOME / config dir / cwd.
pub struct ToolHost {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every stdout line so far, parsed, in order.
    pub out: Vec<Value>,
    /// The same lines verbatim.
    pub raw: Vec<String>,
    /// What `tools/list` answers.
    pub tools: Vec<Value>,
    /// Holds HOME, CLAUDE_CONFIG_DIR and the cwd of the run (deleted on drop).
    _tmp: tempfile::TempDir,
}

/// Prepares a run's directories before spawn: gets (config dir, cwd).
pub type Prepare<'a> = &'a dyn Fn(&Path, &Path);

/// How to start a [`ToolHost`].
pub struct HostOpts<'a> {
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub tools: Vec<Value>,
    /// Write `control_request initialize` right after spawn.
    pub initialize: bool,
    /// Runs in the temp dir before spawn (e.g. to write a session file): gets (config dir, cwd).
    pub prepare: Option<Prepare<'a>>,
}

impl<'a> HostOpts<'a> {
    pub fn new(exe: &Path, tools: Vec<Value>) -> Self {
        let names: Vec<String> = tools
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        HostOpts {
            exe: exe.to_owned(),
            args: tool_flags(&refs),
            env: vec![
                ("ANTHROPIC_API_KEY".into(), "test-key".into()),
                ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
            ],
            tools,
            initialize: true,
            prepare: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }
}

impl ToolHost {
    pub async fn spawn(opts: HostOpts<'_>) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (config, home, cwd) = (
            tmp.path().join("config"),
            tmp.path().join("home"),
            tmp.path().join("work"),
        );
        for d in [&config, &home, &cwd] {
            std::fs::create_dir(d).expect("create temp subdir");
        }
        if let Some(prepare) = opts.prepare {
            prepare(&config, &cwd);
        }
        let mut cmd = tokio::process::Command::new(&opts.exe);
        cmd.args(&opts.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", &config)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", opts.exe.display()));
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut host = ToolHost {
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            out: Vec::new(),
            raw: Vec::new(),
            tools: opts.tools,
            _tmp: tmp,
        };
        if opts.initialize {
            host.send(&json!({"type": "control_request", "request_id": "init_1",
                              "request": {"subtype": "initialize", "hooks": null}}))
                .await;
        }
        host
    }

    /// Writes one JSON line to stdin (ignored once stdin is closed or the CLI is gone).
    pub async fn send(&mut self, v: &Value) {
        if let Some(stdin) = self.stdin.as_mut() {
            let mut s = v.to_string();
            s.push('\n');
            let _ = stdin.write_all(s.as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// Writes a stream-json user line with `content` (a string or a block list).
    pub async fn user(&mut self, content: Value) {
        self.send(&json!({"type": "user", "message": {"role": "user", "content": content}}))
            .await;
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line (recorded in `out`); `None` at EOF or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.lines.next_line())
            .await
            .ok()?
            .ok()??;
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("non-JSON stdout line ({e}): {line}"));
        self.out.push(v.clone());
        self.raw.push(line);
        Some(v)
    }

    /// Reads lines until one satisfies `pred` (returned), answering the MCP handshake on the
    /// way. Panics with the transcript on EOF or after `wait`.
    pub async fn until(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.next(left).await else {
                panic!(
                    "no matching line within {wait:?} (EOF or timeout); transcript:\n{}",
                    self.transcript()
                );
            };
            if pred(&v) {
                return v;
            }
            self.answer_handshake(&v).await;
        }
    }

    /// Answers `v` if it is one of the MCP handshake requests.
    pub async fn answer_handshake(&mut self, v: &Value) {
        let Some(method) = mcp_method(v) else { return };
        let msg = &v["request"]["message"];
        let reply = match method {
            "initialize" => json!({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": SERVER, "version": "1"}}}),
            "notifications/initialized" => json!({"jsonrpc": "2.0", "result": {}}),
            "tools/list" => {
                json!({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": self.tools}})
            }
            _ => return,
        };
        self.reply(v, reply).await;
    }

    /// Answers the mcp_message control request `req` with the JSON-RPC message `reply`.
    pub async fn reply(&mut self, req: &Value, reply: Value) {
        let rid = req["request_id"].clone();
        self.send(&json!({"type": "control_response", "response": {
            "subtype": "success", "request_id": rid, "response": {"mcp_response": reply}}}))
            .await;
    }

    /// Answers the `tools/call` request `call` with the MCP result `result`.
    pub async fn answer_call(&mut self, call: &Value, result: Value) {
        let id = call["request"]["message"]["id"].clone();
        self.reply(call, json!({"jsonrpc": "2.0", "id": id, "result": result}))
            .await;
    }

    /// Reads to EOF (the CLI exits after stdin is closed) and returns the exit code.
    pub async fn finish(&mut self, wait: Duration) -> Option<i32> {
        self.close_stdin();
        while self.next(wait).await.is_some() {}
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(s)) => s.code(),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        }
    }

    /// Kills the CLI's process group (SIGTERM) and reaps it; returns the exit status code.
    pub async fn terminate(&mut self, wait: Duration) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
        }
        while self.next(wait).await.is_some() {}
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(s)) => s.code().or_else(|| {
                use std::os::unix::process::ExitStatusExt as _;
                s.signal().map(|sig| 128 + sig)
            }),
            _ => None,
        }
    }

    /// Writes stdout verbatim to `tests/fixtures/real/<case>.jsonl`, only when
    /// `CCGATE_UPDATE_FIXTURES` is set.
    pub fn save_fixture(&self, case: &str) {
        if std::env::var_os("CCGATE_UPDATE_FIXTURES").is_none() {
            return;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/real")
            .join(format!("{case}.jsonl"));
        let mut text = self.raw.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The stdout lines so far, one per line, for assertion messages.
    pub fn transcript(&self) -> String {
        self.out
            .iter()
            .map(|v| {
                let s = v.to_string();
                if s.chars().count() > 600 {
                    format!("{}…", s.chars().take(600).collect::<String>())
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The MCP method of an `mcp_message` control request.
pub fn mcp_method(v: &Value) -> Option<&str> {
    (v["type"] == "control_request" && v["request"]["subtype"] == "mcp_message")
        .then(|| v["request"]["message"]["method"].as_str())
        .flatten()
}

pub fn is_tools_call(v: &Value) -> bool {
    mcp_method(v) == Some("tools/call")
}

pub fn is_result(v: &Value) -> bool {
    v["type"] == "result"
}

/// A comparable key for one stdout line: its type and the fields that make the protocol
/// (subtype, MCP method, stream event / block / delta type, stop reason, content block types,
/// is_error). `None` for lines whose count depends on timing (`tool_progress`).
pub fn shape(v: &Value) -> Option<String> {
    let t = v["type"].as_str().unwrap_or("?");
    let s = match t {
        "tool_progress" => return None,
        "control_request" => format!(
            "control_request:{}:{}",
            v["request"]["subtype"].as_str().unwrap_or(""),
            v["request"]["message"]["method"].as_str().unwrap_or("")
        ),
        "system" => format!("system:{}", v["subtype"].as_str().unwrap_or("")),
        "stream_event" => {
            let e = &v["event"];
            let et = e["type"].as_str().unwrap_or("");
            match et {
                "content_block_start" => format!(
                    "stream_event:{et}:{}",
                    e["content_block"]["type"].as_str().unwrap_or("")
                ),
                "content_block_delta" => {
                    format!(
                        "stream_event:{et}:{}",
                        e["delta"]["type"].as_str().unwrap_or("")
                    )
                }
                "message_delta" => format!(
                    "stream_event:{et}:{}",
                    e["delta"]["stop_reason"].as_str().unwrap_or("null")
                ),
                _ => format!("stream_event:{et}"),
            }
        }
        "assistant" | "user" => {
            let blocks: Vec<String> = v["message"]["content"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            let bt = b["type"].as_str().unwrap_or("").to_owned();
                            if b["is_error"] == true {
                                format!("{bt}(error)")
                            } else {
                                bt
                            }
                        })
                        .collect()
                })
                .unwrap_or_else(|| vec!["text".into()]);
            format!("{t}:{}", blocks.join(","))
        }
        "result" => format!(
            "result:{}:{}:{}",
            v["subtype"].as_str().unwrap_or(""),
            v["num_turns"],
            v["stop_reason"].as_str().unwrap_or("")
        ),
        other => other.to_owned(),
    };
    Some(s)
}

/// [`shape`] of every line, with runs of equal keys collapsed (the number of text / JSON
/// deltas is the model's business).
pub fn shapes(lines: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in lines.iter().filter_map(shape) {
        if v.last() != Some(&s) {
            v.push(s);
        }
    }
    v
}

/// A real-CLI fixture's lines.
pub fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

/// Writes a synthesized session (the CLI's own format, as `src/backend/session.rs` does)
/// for a CLI running in `cwd`; returns its id. `entries` are `(type, message)` pairs.
pub fn write_session(config: &Path, cwd: &Path, entries: &[(&str, Value)]) -> String {
    let cwd = std::fs::canonicalize(cwd).expect("canonical cwd");
    let cwd = cwd.to_string_lossy().into_owned();
    let proj: String = cwd
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = config.join("projects").join(proj);
    std::fs::create_dir_all(&dir).expect("project dir");
    let id = uuid::Uuid::new_v4().to_string();
    let mut parent = Value::Null;
    let mut text = String::new();
    let now = ccgate::clock::now_rfc3339();
    for (kind, message) in entries {
        let uuid = uuid::Uuid::new_v4().to_string();
        let e = json!({"parentUuid": parent, "isSidechain": false, "type": kind, "message": message,
                       "uuid": uuid, "timestamp": now, "cwd": cwd, "sessionId": id,
                       "version": "2.1.332", "userType": "external"});
        text.push_str(&e.to_string());
        text.push('\n');
        parent = Value::String(uuid);
    }
    std::fs::write(dir.join(format!("{id}.jsonl")), text).expect("write session");
    id
}
