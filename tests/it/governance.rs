//! Governance against the fake CLI: the keys file (roles, allow-lists, expiry, reloads
//! that never let a bad file in), per-key limits with the rate-limit headers, the usage
//! ledger (equal to the answers' usage, across a restart), per-key metrics, and the
//! `check`, `schema keys`, `keys new` and `usage` subcommands.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{chat_body, client, messages_body, Opts, TestServer};

fn digest(key: &str) -> String {
    ccgate::rules::sha256_hex(key.as_bytes())
}

/// alice: client, sonnet only, 2 requests a minute; bob: client, no limits; root: admin.
fn keys_yaml(extra: &str) -> String {
    format!(
        "keys:\n  - name: alice\n    sha256: \"{}\"\n    models: [sonnet]\n    limits:\n      requests_per_minute: 2\n      tokens_per_day: 1000000\n  - name: bob\n    sha256: \"{}\"\n  - name: root\n    sha256: \"{}\"\n    role: admin\n{extra}",
        digest("alice-key"),
        digest("bob-key"),
        digest("root-key"),
    )
}

async fn server(keys: String) -> TestServer {
    TestServer::start(Opts {
        keys_yaml: Some(keys),
        api_keys: vec!["legacy-key".into()],
        ..Opts::default()
    })
    .await
}

async fn call(
    s: &TestServer,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(s.url(path))
        .header("authorization", format!("Bearer {key}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

async fn get(s: &TestServer, path: &str, key: &str) -> (u16, String) {
    let r = client()
        .get(s.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn roles_allow_lists_and_unknown_keys() {
    let s = server(keys_yaml("")).await;
    // Admin endpoints: the admin key only; client keys (file or api_keys) get 403.
    for path in ["/admin/rules", "/admin/keys", "/admin/usage"] {
        assert_eq!(get(&s, path, "root-key").await.0, 200, "{path}");
        for k in ["bob-key", "legacy-key"] {
            let (st, body) = get(&s, path, k).await;
            assert_eq!(st, 403, "{path} {k}: {body}");
            assert!(body.contains("admin_key_required"), "{body}");
        }
        assert_eq!(get(&s, path, "nope").await.0, 401, "{path}");
    }
    // Client keys of both kinds call the API.
    for k in ["bob-key", "legacy-key", "alice-key"] {
        let (st, _, v) = call(&s, "/v1/chat/completions", k, &chat_body("hi", false)).await;
        assert_eq!(st, 200, "{k}: {v}");
    }
    // alice may use sonnet only: 403 in each API's shape, before anything runs.
    let mut body = messages_body("hi", false);
    body["model"] = json!("opus");
    let (st, _, v) = call(&s, "/v1/messages", "alice-key", &body).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    // /admin/keys lists names, roles and limits, never digests or keys.
    let (_, keys) = get(&s, "/admin/keys", "root-key").await;
    let v: Value = serde_json::from_str(&keys).unwrap();
    let names: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api_keys[0]", "alice", "bob", "root"]);
    assert_eq!(v["keys"][1]["limits"]["requests_per_minute"], 2);
    assert!(
        !keys.contains(&digest("alice-key")) && !keys.contains("alice-key"),
        "{keys}"
    );
}

#[tokio::test]
async fn expired_keys_get_401() {
    let soon = ccgate::clock::unix_now() + 2;
    let expires = ccgate::clock::rfc3339_of_unix(soon);
    let s = server(keys_yaml(&format!(
        "  - name: temp\n    sha256: \"{}\"\n    expires: \"{expires}\"\n",
        digest("temp-key")
    )))
    .await;
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "temp-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let (st, _, v) = call(&s, "/v1/messages", "temp-key", &messages_body("hi", false)).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
}

#[tokio::test]
async fn reloads_swap_good_keys_files_and_keep_the_running_keys_on_bad_ones() {
    let s = server(keys_yaml("")).await;
    // A bad file (malformed digest, duplicate name, negative limit): 422 with line:column,
    // and the running keys stay.
    std::fs::write(
        &s.keys_path,
        format!(
            "keys:\n  - name: root\n    sha256: \"{}\"\n    role: admin\n  - name: root\n    sha256: \"xyz\"\n    limits:\n      concurrent: -1\n",
            digest("root-key")
        ),
    )
    .unwrap();
    let r = client()
        .post(s.url("/admin/reload"))
        .header("x-api-key", "root-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    let err = v["reload"]["error"].as_str().unwrap();
    assert!(
        err.contains("keys.yaml:5:11: duplicate key name `root`"),
        "{err}"
    );
    assert!(
        err.contains("keys.yaml:6:13: sha256 must be 64 hexadecimal digits"),
        "{err}"
    );
    assert!(
        err.contains("keys.yaml:8:19: limits.concurrent must be a positive whole number"),
        "{err}"
    );
    assert!(err.contains("keeping the running keys"), "{err}");
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "bob-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 200, "bob still works");
    // A good file: bob is gone, carol is in, at once.
    std::fs::write(
        &s.keys_path,
        format!(
            "keys:\n  - name: root\n    sha256: \"{}\"\n    role: admin\n  - name: carol\n    sha256: \"{}\"\n",
            digest("root-key"),
            digest("carol-key")
        ),
    )
    .unwrap();
    let r = client()
        .post(s.url("/admin/reload"))
        .header("x-api-key", "root-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reload"]["changed"], true, "{v}");
    assert_eq!(v["rules"]["keys"]["keys"], 3, "{v}");
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "bob-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "carol-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn limits_answer_429_with_retry_after_and_every_answer_carries_the_headers() {
    let s = server(keys_yaml("")).await;
    let (st, h, _) = call(
        &s,
        "/v1/chat/completions",
        "alice-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(h["x-ratelimit-remaining-requests"], "1");
    assert!(h["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));
    assert_eq!(h["x-ratelimit-limit-tokens"], "1000000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    assert!(h.contains_key("x-ratelimit-reset-tokens"));
    let (st, h, _) = call(&s, "/v1/messages", "alice-key", &messages_body("hi", false)).await;
    assert_eq!(st, 200);
    assert_eq!(h["anthropic-ratelimit-requests-limit"], "2");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "0");
    assert!(h["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(h["anthropic-ratelimit-tokens-limit"], "1000000");
    // The third in the minute: 429 in each API's shape, with retry-after.
    let (st, h, v) = call(&s, "/v1/messages", "alice-key", &messages_body("hi", false)).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (st, _, v) = call(
        &s,
        "/v1/chat/completions",
        "alice-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 429);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    // A key without limits gets no rate-limit headers.
    let (_, h, _) = call(
        &s,
        "/v1/chat/completions",
        "bob-key",
        &chat_body("hi", false),
    )
    .await;
    assert!(!h.contains_key("x-ratelimit-limit-requests"));
    let metrics = crate::harness::get_text(&s, "/metrics").await;
    assert!(
        metrics.contains("ccgate_key_limited_total{key=\"alice\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrency_limit() {
    let s = TestServer::start(Opts {
        keys_yaml: Some(keys_yaml(&format!(
            "  - name: one\n    sha256: \"{}\"\n    limits:\n      concurrent: 1\n",
            digest("one-key")
        ))),
        // A second between deltas: the first answer runs for seconds after its spawn.
        env: vec![("FAKE_CLAUDE_DELAY", "1".into())],
        ..Opts::default()
    })
    .await;
    s.set_scenario("slow");
    let s = std::sync::Arc::new(s);
    let s2 = s.clone();
    let first = tokio::spawn(async move {
        call(
            &s2,
            "/v1/chat/completions",
            "one-key",
            &chat_body("a", false),
        )
        .await
        .0
    });
    // The first holds the key's slot once its CLI is spawned (a count, not a clock; the
    // loop is a hang guard only).
    for _ in 0..1500 {
        if s.state.backend.stats().snapshot().spawned_total >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, h, v) = call(
        &s,
        "/v1/chat/completions",
        "one-key",
        &chat_body("b", false),
    )
    .await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(first.await.unwrap(), 200);
    // The slot is free again once the first answer is done.
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "one-key",
        &chat_body("c", false),
    )
    .await;
    assert_eq!(st, 200);
}

/// Sums an Anthropic answer's usage into (input, output, cache_read, cache_creation).
fn add_usage(sum: &mut [u64; 4], usage: &Value) {
    for (i, f) in [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ]
    .iter()
    .enumerate()
    {
        sum[i] += usage[f].as_u64().unwrap_or(0);
    }
}

#[tokio::test]
async fn the_ledger_equals_the_answers_usage_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let opts = |db: &std::path::Path| Opts {
        keys_yaml: Some(keys_yaml("")),
        state_path: Some(db.to_path_buf()),
        ..Opts::default()
    };
    let s = TestServer::start(opts(&db)).await;
    let mut bob = [0u64; 4];
    for _ in 0..3 {
        let (st, _, v) = call(&s, "/v1/messages", "bob-key", &messages_body("hi", false)).await;
        assert_eq!(st, 200, "{v}");
        add_usage(&mut bob, &v["usage"]);
    }
    // A streamed answer: the usage of message_start and message_delta.
    let r = client()
        .post(s.url("/v1/messages"))
        .header("x-api-key", "bob-key")
        .json(&messages_body("hi", true))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let mut streamed = [0u64; 4];
    for (_, data) in crate::harness::sse_events(&body) {
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        match v["type"].as_str() {
            Some("message_start") => add_usage(&mut streamed, &v["message"]["usage"]),
            Some("message_delta") => {
                streamed[1] = v["usage"]["output_tokens"].as_u64().unwrap_or(streamed[1])
            }
            _ => {}
        }
    }
    for i in 0..4 {
        bob[i] += streamed[i];
    }
    assert!(bob[0] > 0 && bob[1] > 0, "{bob:?}");
    let (st, _, _) = call(
        &s,
        "/v1/chat/completions",
        "root-key",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(st, 200);
    let metrics = crate::harness::get_text(&s, "/metrics").await;
    assert!(
        metrics.contains("ccgate_key_requests_total{key=\"bob\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ccgate_key_tokens_total{{key=\"bob\",type=\"input\"}} {}",
            bob[0]
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("bob-key") && !metrics.contains(&digest("bob-key")));
    s.shutdown().await;

    // Another process on the same database.
    let s = TestServer::start(opts(&db)).await;
    let (st, text) = get(&s, "/admin/usage?group_by=key,api&from=1h", "root-key").await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["key"] == "bob")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(row["api"], "messages");
    assert_eq!(row["requests"], 4);
    assert_eq!(
        [
            row["input_tokens"].as_u64().unwrap(),
            row["output_tokens"].as_u64().unwrap(),
            row["cache_read_tokens"].as_u64().unwrap(),
            row["cache_creation_tokens"].as_u64().unwrap()
        ],
        bob,
        "{v}"
    );
    assert_eq!(row["errors"], 0);
    assert!(
        rows.iter()
            .any(|r| r["key"] == "root" && r["api"] == "chat_completions"),
        "{v}"
    );
    assert!(!text.contains("bob-key"));
    // CSV, and bad parameters.
    let (st, csv) = get(&s, "/admin/usage?group_by=key&format=csv", "root-key").await;
    assert_eq!(st, 200);
    assert!(csv.starts_with("key,requests,input_tokens,"), "{csv}");
    assert!(csv.contains(&format!("\nbob,4,{},", bob[0])), "{csv}");
    for bad in [
        "group_by=key;drop",
        "from=yesterday",
        "format=xml",
        "group_by=day,hour",
    ] {
        let (st, body) = get(&s, &format!("/admin/usage?{bad}"), "root-key").await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    s.shutdown().await;

    // `ccgate usage` reads the same store.
    let out = assert_cmd::Command::cargo_bin("ccgate")
        .unwrap()
        .args(["usage", "--by", "key,model", "--since", "1h", "--state"])
        .arg(&db)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("bob "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[..4],
        ["bob", "sonnet", "4", &bob[0].to_string()],
        "{text}"
    );
}

#[test]
fn check_schema_and_keys_new() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    // `keys new` prints a key once and an entry whose digest is the key's.
    let out = Command::cargo_bin("ccgate")
        .unwrap()
        .args(["keys", "new", "alice", "--role", "admin"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let key = text
        .lines()
        .find(|l| l.starts_with("ccg-"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        text.contains(&format!("sha256: \"{}\"", digest(key))),
        "{text}"
    );
    assert!(text.contains("role: admin"), "{text}");
    // The printed entry is a valid keys file.
    let entry = text
        .split("# The entry for the keys file:\n")
        .nth(1)
        .unwrap();
    let good = dir.path().join("keys.yaml");
    std::fs::write(&good, format!("keys:\n{entry}")).unwrap();
    let out = Command::cargo_bin("ccgate")
        .unwrap()
        .args(["check", "rules/rules.yaml", "--keys"])
        .arg(&good)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("keys.yaml: ok (1 keys)"), "{text}");
    // A bad file: every problem with line:column, exit 1.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "keys:\n  - name: a\n    sha256: nothex\n    role: owner\n    colour: red\n",
    )
    .unwrap();
    let out = Command::cargo_bin("ccgate")
        .unwrap()
        .args(["check", "rules/rules.yaml", "--keys"])
        .arg(&bad)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("bad.yaml:5:5: unknown field `colour`"),
        "{err}"
    );
    // `schema keys`: the keys file's JSON Schema.
    let out = Command::cargo_bin("ccgate")
        .unwrap()
        .args(["schema", "keys"])
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["title"], "ccgate keys");
    assert!(
        v["$defs"]["KeyDef"]["properties"]["sha256"].is_object(),
        "{v}"
    );
}

#[tokio::test]
async fn model_aliases_run_their_target_and_are_listed() {
    let rules = crate::harness::default_rules_with_probe(0.0, 0.0, 5.0)
        + "\naliases:\n  gpt-4o: sonnet\n  GPT-4o-mini: haiku\n";
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules),
        keys_yaml: Some(keys_yaml("")),
        ..Opts::default()
    })
    .await;
    let mut body = chat_body("hi", false);
    body["model"] = json!("gpt-4o");
    let (st, _, v) = call(&s, "/v1/chat/completions", "bob-key", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"], "gpt-4o", "the answer names the model asked for");
    let log = std::fs::read_to_string(&s.log_file).unwrap();
    assert!(log.contains("ARG:--model=sonnet"), "{log}");
    assert!(!log.contains("ARG:gpt-4o"), "{log}");
    // alice may use sonnet: an alias of it is sonnet too.
    let (st, _, v) = call(&s, "/v1/chat/completions", "alice-key", &body).await;
    assert_eq!(st, 200, "{v}");
    body["model"] = json!("gpt-4o-mini");
    let (st, _, v) = call(&s, "/v1/chat/completions", "alice-key", &body).await;
    assert_eq!(st, 403, "haiku is not alice's: {v}");
    // Listed, and retrievable.
    let (_, text) = get(&s, "/v1/models", "bob-key").await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sonnet", "opus", "haiku", "gpt-4o", "gpt-4o-mini"]);
    assert_eq!(v["data"][4]["alias_for"], "haiku");
    let (st, text) = get(&s, "/v1/models/gpt-4o", "bob-key").await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("\"alias_for\":\"sonnet\""), "{text}");
    // The ledger keeps the name asked for.
    let (_, text) = get(&s, "/admin/usage?group_by=model", "root-key").await;
    assert!(text.contains("\"model\":\"gpt-4o\""), "{text}");
}

#[test]
fn aliases_never_shadow_real_models() {
    let base = crate::harness::default_rules_with_probe(0.0, 0.0, 5.0);
    for (aliases, want) in [
        ("  sonnet: opus\n", "alias `sonnet` shadows a real model id"),
        (
            "  claude-sonnet-4-5: opus\n",
            "alias `claude-sonnet-4-5` shadows a real model id",
        ),
        (
            "  a: b\n  b: sonnet\n",
            "alias `a` points to another alias (`b`)",
        ),
        ("  X: sonnet\n  x: opus\n", "is given twice"),
    ] {
        let text = format!("{base}\naliases:\n{aliases}");
        let e = ccgate::rules::Rules::from_yaml(&text, "r.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{aliases}: {e}");
        assert!(e.contains("r.yaml:"), "{e}");
    }
}

#[test]
fn committed_keys_schema_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/keys.schema.json"
    ))
    .unwrap();
    assert!(
        committed == ccgate::keys::schema_json(),
        "schema/keys.schema.json is stale: run `cargo run -- schema keys > schema/keys.schema.json`"
    );
}
