//! `CCGATE_*` environment variables as a figment source: nested keys joined with `__`,
//! only the config's top-level keys read, the CLI's own variable names kept as written.

use figment::providers::Serialized;

/// Top-level keys of [`Config`], the only `CCGATE_*` names read from the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "rules",
    "watch_rules",
    "api_keys",
    "allow_unauthenticated",
    "log_format",
    "log_level",
    "log_buffer_lines",
    "cors_origins",
    "request_body_limit",
    "shutdown_timeout",
    "sse_keepalive",
    "allowed_hosts",
    "http",
    "cli",
    "accounts",
    "keys",
    "state",
    "openai",
    "web",
];

/// `CCGATE_*` variables from the given environment, as a figment provider, plus the names
/// that were ignored. Variables whose first segment is no config key are skipped, not
/// fatal: Kubernetes injects `CCGATE_PORT`, `CCGATE_SERVICE_HOST`… for a Service named
/// `ccgate`, and tools use their own `CCGATE_*` variables. Keys under `cli__env__` keep
/// their case (they are environment variable names for the CLI).
pub(super) fn env_source(
    env: &[(String, String)],
) -> (Serialized<figment::value::Dict>, Vec<String>) {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    let mut ignored = Vec::new();
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix("CCGATE_") else {
            continue;
        };
        let mut path: Vec<String> = rest.split("__").map(str::to_string).collect();
        let is_cli_env = path.len() > 2
            && path[0].eq_ignore_ascii_case("cli")
            && path[1].eq_ignore_ascii_case("env");
        let keep_case_from = if is_cli_env { 2 } else { path.len() };
        for seg in path.iter_mut().take(keep_case_from) {
            *seg = seg.to_ascii_lowercase();
        }
        if path.iter().any(String::is_empty) || !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
            ignored.push(key.clone());
            continue;
        }
        let value: Value = if is_cli_env {
            Value::from(raw.clone())
        } else if path.len() == 1 && path[0] == "accounts" {
            // The whole list as JSON (figment cannot address list items by index). Not
            // JSON: left a string, which the extraction reports as the wrong type.
            serde_json::from_str::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| Value::serialize(v).ok())
                .unwrap_or_else(|| Value::from(raw.clone()))
        } else {
            raw.parse().unwrap_or_else(|_| Value::from(raw.clone()))
        };
        insert_path(&mut root, &path, value);
    }
    (Serialized::defaults(root), ignored)
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}
