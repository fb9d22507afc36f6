//! Anthropic prefill (a conversation ending with a partial assistant message) on the REAL
//! `claude` binary: can the CLI be made to continue a partial assistant turn? The only way
//! to hand it earlier turns without a new user line is the synthesized session ccgate
//! resumes (`--resume <id> --fork-session`) with `CLAUDE_CODE_RESUME_INTERRUPTED_TURN=1`
//! and no stdin line, which re-runs a turn that ends with the user's side (tool results,
//! `real_tools`). A session that ends with an assistant message is not an interrupted turn:
//! the CLI makes no model call at all, and a user line after it would make the model answer
//! a new user turn instead of continuing the text. So Anthropic prefill stays a 400
//! (docs/api.md). Skipped loudly without `CCGATE_REAL_CLAUDE` (fails under CI instead).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::mock_api::MockApi;
use crate::support_real::{ccgate_flags, real_claude};
use crate::support_tools::write_session;

#[tokio::test]
async fn real_cli_does_not_continue_a_partial_assistant_turn() {
    let Some(exe) = real_claude() else { return };
    let mock = MockApi::start().await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let (config, home, cwd) = (
        tmp.path().join("config"),
        tmp.path().join("home"),
        tmp.path().join("work"),
    );
    for d in [&config, &home, &cwd] {
        std::fs::create_dir(d).expect("dir");
    }
    let id = write_session(
        &config,
        &cwd,
        &[
            (
                "user",
                json!({"role": "user", "content": [{"type": "text", "text": "Say hello"}]}),
            ),
            (
                "assistant",
                json!({"id": "msg_prefill", "type": "message", "role": "assistant",
                       "model": "claude-opus-5-5", "content": [{"type": "text", "text": "Hello, my name"}],
                       "stop_reason": null, "stop_sequence": null,
                       "usage": {"input_tokens": 0, "output_tokens": 0}}),
            ),
        ],
    );
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(ccgate_flags())
        .args(["--resume", &id, "--fork-session"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", &config)
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("ANTHROPIC_BASE_URL", mock.url("ok"))
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("CLAUDE_CODE_RESUME_INTERRUPTED_TURN", "1")
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI ends (hang guard)")
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        mock.message_requests().is_empty(),
        "the CLI asked the model: {stdout}"
    );
    assert!(
        !stdout.contains("\"type\":\"result\""),
        "no turn ran: {stdout}"
    );
}
