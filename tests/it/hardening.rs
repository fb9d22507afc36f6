//! Hardening (issue 27): files written off the runtime and private, slow readers cut,
//! streams that answer at once, bounded count_tokens, and the smaller findings.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, post, Opts, TestServer};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A conversation with an earlier exchange: it is presented as a synthesized session file.
fn with_history() -> Value {
    json!({"model": "sonnet", "messages": [
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "And now?"}]})
}

#[tokio::test]
async fn an_unwritable_config_dir_is_tmp_unwritable_without_the_path() {
    // A config dir whose `projects/` is a regular file: the session file cannot be created,
    // as when CLAUDE_CONFIG_DIR is full or read-only.
    let base = tempfile::tempdir().unwrap();
    let config = base.path().join("secret-config-dir");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("projects"), "x").unwrap();
    let shown = config.display().to_string();
    let s = TestServer::start(Opts {
        env: vec![("CLAUDE_CONFIG_DIR", shown)],
        ..Opts::default()
    })
    .await;
    let (st, _, text) = post(&s, "/v1/chat/completions", &with_history()).await;
    assert_eq!(st, 503, "{text}");
    let v = json_of(&text);
    assert_eq!(v["error"]["code"], "gateway_tmp_unwritable", "{v}");
    assert!(!text.contains("secret-config-dir"), "{text}");
    // Without history no session file is needed: the same gateway answers.
    let plain = json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]});
    let (st, _, text) = post(&s, "/v1/chat/completions", &plain).await;
    assert_eq!(st, 200, "{text}");
}

#[tokio::test]
async fn session_files_leave_no_project_directory() {
    let s = TestServer::start(Opts::default()).await;
    for _ in 0..2 {
        let (st, _, text) = post(&s, "/v1/chat/completions", &with_history()).await;
        assert_eq!(st, 200, "{text}");
    }
    let projects = s.claude_config_dir.join("projects");
    let left = || -> Vec<_> {
        std::fs::read_dir(&projects)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let gone = eventually(Duration::from_secs(5), || left().is_empty()).await;
    assert!(gone, "{:?}", left());
}
