//! No MCP server from the CLI's own configuration runs for a request (real CLI against the
//! mock): the host's `.claude.json` names a stdio server that leaves a marker file when it
//! is started. Run as ccgate runs it — plain, with client tools, and from a pre-warmed
//! process that gets its tools late — the server is never started and no `mcp__spy__`
//! tool is offered upstream. The same CLI without `--strict-mcp-config` does start it,
//! so the marker is a real witness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, post, TestServer};
use crate::mock_api::MockApi;
use crate::real_gateway::real_server_with;
use crate::support_real::{ccgate_flags, real_claude, HELLO_LINE};

/// Writes a user-scope MCP server named `spy` into `config_dir/.claude.json`, whose start
/// creates `marker`.
fn plant_spy(config_dir: &Path, marker: &Path) {
    std::fs::create_dir_all(config_dir).unwrap();
    let script = format!("touch '{}'; exec cat >/dev/null", marker.display());
    std::fs::write(
        config_dir.join(".claude.json"),
        json!({"mcpServers": {"spy": {"type": "stdio", "command": "sh", "args": ["-c", script]}}})
            .to_string(),
    )
    .unwrap();
}

fn offered_tools(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn real_cli_starts_no_mcp_server_of_its_own_configuration() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let marker: PathBuf = dir.path().join("spy-started");

    // The witness: the CLI with ccgate's flags but without --strict-mcp-config, on the
    // same kind of configuration, starts the spy.
    let control_home = dir.path().join("control");
    plant_spy(&control_home.join(".claude"), &marker);
    let flags: Vec<String> = ccgate_flags()
        .into_iter()
        .filter(|f| f != "--strict-mcp-config")
        .collect();
    let mut control = tokio::process::Command::new(&exe)
        .args(&flags)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &control_home)
        .env("CLAUDE_CONFIG_DIR", control_home.join(".claude"))
        .env("ANTHROPIC_BASE_URL", mock.url("ok"))
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = control.stdin.take().unwrap();
        stdin
            .write_all(format!("{HELLO_LINE}\n").as_bytes())
            .await
            .unwrap();
    }
    let m = marker.clone();
    assert!(
        eventually(Duration::from_secs(60), move || m.exists()).await,
        "the witness run never started the spy server: the test's configuration is not read"
    );
    let _ = control.kill().await;
    std::fs::remove_file(&marker).unwrap();
    let before = mock.message_requests().len();

    // ccgate: a pre-warmed process and cold runs, on a home with the spy planted.
    let m = marker.clone();
    let (s, home) = real_server_with(exe, Some(mock.url("ok")), None, move |c| {
        let config = PathBuf::from(&c.cli.env["CLAUDE_CONFIG_DIR"]);
        plant_spy(&config, &m);
        c.cli.prewarm = 1;
        c.cli.max_concurrent = 2;
        c.cli.keep_conversations = 0;
    })
    .await;
    let b = s.state.backend.clone();
    assert!(
        eventually(Duration::from_secs(30), move || b.pool_pids().len() == 1).await,
        "pool never filled"
    );
    let tool = json!({"type": "function", "function": {
        "name": "lookup", "description": "look up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}});
    // Pre-warmed, taking its tools late; then cold ones, plain and with tools.
    for body in [
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}),
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}),
    ] {
        let (st, _, text) = post(&s, "/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{text}");
    }
    let hits = s.state.backend.stats().snapshot().pool_hits_total;
    assert!(hits >= 1, "no request was served by the pre-warmed process");
    TestServer::shutdown(s).await;
    drop(home);
    assert!(
        !marker.exists(),
        "a run through ccgate started an MCP server of the CLI's own configuration"
    );
    let requests = mock.message_requests();
    assert_eq!(requests.len() - before, 3, "one model call per request");
    for r in &requests[before..] {
        let tools = offered_tools(&r.body);
        assert!(
            tools.iter().all(|t| !t.starts_with("mcp__spy__")),
            "the spy's tools were offered: {tools:?}"
        );
    }
    // The client's tool still reaches the model (late for the pre-warmed process).
    let with_tools = requests[before..]
        .iter()
        .filter(|r| offered_tools(&r.body).iter().any(|t| t.ends_with("lookup")))
        .count();
    assert_eq!(with_tools, 2, "the client's tool was not offered twice");
}
