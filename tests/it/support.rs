//! Shared helpers for the integration tests: `CliSettings` pointing at the fake CLI
//! (`tests/fake-claude`), with the scenario chosen through `CliSettings.env`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccgate::backend::CliSettings;

/// Absolute path of the fake CLI script.
pub fn fake_cli_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fake-claude")
}

/// Settings running the fake CLI with `scenario` and generous timeouts.
pub fn fake_settings(scenario: &str) -> CliSettings {
    CliSettings {
        command: fake_cli_path(),
        extra_args: Vec::new(),
        workdir: std::env::temp_dir(),
        env: vec![("FAKE_CLAUDE_SCENARIO".to_string(), scenario.to_string())],
        tools: false,
        start_timeout: Duration::from_secs(10),
        inactivity_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(30),
        max_concurrent: 8,
        queue_size: 64,
        stderr_tail_bytes: 4096,
        prewarm: 0,
        prewarm_model: None,
        prewarm_max_idle: Duration::from_secs(300),
        keep_conversations: 0,
        conversation_idle_timeout: Duration::from_secs(300),
        max_held_runs: 4,
        tool_hold_timeout: Duration::from_secs(600),
        max_held_runs_per_key: None,
        keep_conversations_per_key: None,
        temp_dir: std::env::temp_dir(),
    }
}

/// Set (or replace) one environment variable for the fake CLI.
pub fn set_env(settings: &mut CliSettings, key: &str, value: &str) {
    settings.env.retain(|(k, _)| k != key);
    settings.env.push((key.to_string(), value.to_string()));
}

/// Key structure of a JSON body: every scalar (where placeholder values land) becomes null,
/// so two renderings of one template compare equal whatever the values were.
pub fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        _ => Value::Null,
    }
}
