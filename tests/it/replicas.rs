//! Several replicas on one state store: two servers in this process on the same
//! PostgreSQL database (`CCGATE_TEST_POSTGRES_URL`, set by .ci/run from
//! scripts/pg-scratch.sh; the PostgreSQL tests skip without it, like the real-CLI tests
//! without CCGATE_REAL_CLAUDE) or on the same SQLite file (the embedded default).
//!
//! An outage is a loopback proxy in front of PostgreSQL that refuses and cuts every
//! connection for 10 s: other tests share the scratch cluster, so it is not stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, get_json_as, messages_body, Opts, TestServer};

/// A fresh database of the scratch cluster, or None (test skipped) without one.
async fn pg_database() -> Option<String> {
    let admin = std::env::var("CCGATE_TEST_POSTGRES_URL").ok()?;
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ccgate_it_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    sqlx::any::install_default_drivers();
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("CCGATE_TEST_POSTGRES_URL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    Some(format!("{base}/{name}"))
}

fn skip(what: &str) {
    eprintln!("skipped {what}: CCGATE_TEST_POSTGRES_URL is not set");
}

fn digest(key: &str) -> String {
    ccgate::rules::sha256_hex(key.as_bytes())
}

/// alice: client, 3 requests a minute; root: admin.
fn keys_yaml() -> String {
    format!(
        "keys:\n  - name: alice\n    sha256: \"{}\"\n    limits:\n      requests_per_minute: 3\n  - name: bob\n    sha256: \"{}\"\n  - name: root\n    sha256: \"{}\"\n    role: admin\n",
        digest("alice-key"),
        digest("bob-key"),
        digest("root-key"),
    )
}

/// Where the replicas keep their state.
#[derive(Clone)]
enum Shared {
    Postgres(String),
    Sqlite(std::path::PathBuf),
}

async fn replica(shared: &Shared) -> TestServer {
    let shared = shared.clone();
    TestServer::start(Opts {
        keys_yaml: Some(keys_yaml()),
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        state_path: match &shared {
            Shared::Sqlite(p) => Some(p.clone()),
            Shared::Postgres(_) => None,
        },
        tweak: Box::new(move |c| {
            if let Shared::Postgres(url) = shared {
                c.state.url = Some(url);
            }
        }),
        ..Opts::default()
    })
    .await
}

async fn post(s: &TestServer, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(s.url(path))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn usage(s: &TestServer) -> Value {
    get_json_as(s, "/admin/usage?group_by=key,api&from=1h", "root-key").await
}

/// Waits until the replica's ledger holds no row (hang guard only).
async fn drained(s: &TestServer) {
    let ledger = s.state.ledger.as_ref().expect("a ledger");
    for _ in 0..600 {
        if ledger.pending() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ledger rows still pending: {}", ledger.pending());
}

async fn usage_is_the_same_on_both(shared: Shared) {
    let (a, b) = (replica(&shared).await, replica(&shared).await);
    for (s, n) in [(&a, 3), (&b, 2)] {
        for _ in 0..n {
            let (st, v) = post(s, "/v1/messages", "bob-key", &messages_body("hi", false)).await;
            assert_eq!(st, 200, "{v}");
        }
    }
    // Each admin read writes its own replica's queue first.
    usage(&a).await;
    usage(&b).await;
    let (ua, ub) = (usage(&a).await, usage(&b).await);
    assert_eq!(ua, ub);
    let rows = ua["rows"].as_array().unwrap();
    let bob = rows.iter().find(|r| r["key"] == "bob").expect("bob's row");
    assert_eq!(bob["requests"], 5, "{ua}");
    assert!(bob["input_tokens"].as_u64().unwrap() > 0, "{ua}");
    // A failed request on one replica is in the other's failures view (the operator
    // page's), per kind and among the latest.
    let (st, v) = post(&a, "/v1/messages", "bob-key", &json!({"model": "sonnet"})).await;
    assert_eq!(st, 400, "{v}");
    usage(&a).await;
    let f = get_json_as(&b, "/admin/failures?bucket=hour&from=1h", "root-key").await;
    let latest = f["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 1, "{f}");
    assert_eq!(
        (latest[0]["key"].as_str(), latest[0]["status"].as_u64()),
        (Some("bob"), Some(400)),
        "{f}"
    );
    let counted: u64 = f["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 1, "{f}");
}

#[tokio::test]
async fn usage_is_the_same_on_both_replicas_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("usage_is_the_same_on_both_replicas_on_postgres");
    };
    usage_is_the_same_on_both(Shared::Postgres(url)).await;
}

#[tokio::test]
async fn usage_is_the_same_on_both_replicas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    usage_is_the_same_on_both(Shared::Sqlite(dir.path().join("shared.db"))).await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(url) = pg_database().await else {
        return skip("migrate_once");
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { ccgate::store::Store::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every replica opens"));
    }
    let known = ccgate::store::schema_version();
    for s in &stores {
        assert_eq!(s.version().await.unwrap(), known);
        assert!(s.is_shared());
    }
    sqlx::any::install_default_drivers();
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM ccgate_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, known, "each version recorded once");
    sqlx::query("INSERT INTO ccgate_schema (version) VALUES (999)")
        .execute(&mut conn)
        .await
        .unwrap();
    let e = ccgate::store::Store::open(&url)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema version 999 is newer"), "{e}");
}

/// A PostgreSQL cluster of the test's own (`scripts/pg-scratch.sh` in its own directory
/// and on its own port), so stopping it for an outage stops no other test's database.
struct OwnCluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnCluster {
    async fn script(args: Vec<String>) -> String {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("bash")
                .arg("scripts/pg-scratch.sh")
                .args(&args)
                .output()
                .expect("bash runs");
            assert!(
                out.status.success(),
                "pg-scratch.sh {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_string()
        })
        .await
        .unwrap()
    }

    /// Creates and starts it; its URL.
    async fn start_new() -> (OwnCluster, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("ccgate-pg-outage-{}-{port}", std::process::id()));
        let c = OwnCluster { dir, port };
        let url = c.start().await;
        (c, url)
    }

    async fn start(&self) -> String {
        Self::script(vec![
            "start".into(),
            self.dir.display().to_string(),
            self.port.to_string(),
        ])
        .await
    }

    async fn stop(&self) {
        Self::script(vec!["stop".into(), self.dir.display().to_string()]).await;
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args(["scripts/pg-scratch.sh", "stop"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_postgres_outage_under_traffic_answers_every_request_and_loses_no_ledger_row() {
    // Only where the tests have PostgreSQL (its binaries are then installed).
    if pg_database().await.is_none() {
        return skip("outage");
    }
    let (cluster, url) = OwnCluster::start_new().await;
    let s = replica(&Shared::Postgres(url.clone())).await;
    let other = replica(&Shared::Postgres(url)).await;
    let (st, answered) = post(
        &s,
        "/v1/responses",
        "bob-key",
        &serde_json::json!({"model": "sonnet", "input": "before the outage"}),
    )
    .await;
    assert_eq!(st, 200, "{answered}");
    written(&s).await;
    let send = |n: usize| {
        let s = &s;
        async move {
            for _ in 0..n {
                let (st, v) = post(s, "/v1/messages", "bob-key", &messages_body("hi", false)).await;
                assert_eq!(st, 200, "{v}");
            }
        }
    };
    send(3).await;
    drained(&s).await;
    // 10 s with PostgreSQL stopped (`pg_ctl stop -m fast`), under traffic.
    cluster.stop().await;
    let cut_at = std::time::Instant::now();
    let mut during = 0u64;
    while cut_at.elapsed() < Duration::from_secs(10) {
        send(1).await;
        during += 1;
    }
    assert!(during > 0);
    // A stored response the other replica cannot reach: the client is told to send the
    // full input.
    let (st, v) = post(
        &other,
        "/v1/responses",
        "bob-key",
        &serde_json::json!({"model": "sonnet", "input": "after",
                            "previous_response_id": answered["id"]}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "previous_response_not_found", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send the full conversation"),
        "{v}"
    );
    // A key with limits is served too, under this replica's counters alone.
    let (st, v) = post(&s, "/v1/messages", "alice-key", &messages_body("hi", false)).await;
    assert_eq!(st, 200, "{v}");
    let metrics = crate::harness::get_text(&s, "/metrics").await;
    assert!(
        metrics.contains("ccgate_limits_local_fallback_total"),
        "{metrics}"
    );
    let ledger = s.state.ledger.as_ref().unwrap();
    assert!(ledger.pending() > 0, "rows wait for the store");
    cluster.start().await;
    send(2).await;
    drained(&s).await;
    assert_eq!(ledger.dropped(), 0);
    let v = usage(&s).await;
    let bob = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "bob" && r["api"] == "messages")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(bob["requests"], 3 + during + 2, "{v}");
    s.shutdown().await;
}

async fn a_keys_limit_holds_across_both(shared: Shared) {
    let (a, b) = (replica(&shared).await, replica(&shared).await);
    // alice may send 3 requests a minute in all. A try that straddles a minute's end
    // (the windows are UTC minutes) proves nothing and is made again.
    for _ in 0..3 {
        let minute = ccgate::clock::unix_now() / 60;
        let mut statuses = Vec::new();
        for s in [&a, &b, &a, &b, &a, &b] {
            let (st, v) = post(s, "/v1/messages", "alice-key", &messages_body("hi", false)).await;
            assert!(st == 200 || st == 429, "{st} {v}");
            if st == 429 {
                assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
            }
            statuses.push(st);
        }
        if ccgate::clock::unix_now() / 60 != minute {
            continue;
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
        return;
    }
    panic!("three tries each straddled a minute's end");
}

#[tokio::test]
async fn a_keys_limit_holds_across_both_replicas_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("a_keys_limit_holds_across_both_replicas_on_postgres");
    };
    a_keys_limit_holds_across_both(Shared::Postgres(url)).await;
}

/// A replica whose key `one` may run one request at a time (`concurrent: 1`).
async fn replica_one_at_a_time(url: &str, env: Vec<(&'static str, String)>) -> TestServer {
    let url = url.to_string();
    TestServer::start(Opts {
        keys_yaml: Some(format!(
            "keys:\n  - name: one\n    sha256: \"{}\"\n    limits:\n      concurrent: 1\n",
            digest("one-key"),
        )),
        env,
        tweak: Box::new(move |c| c.state.url = Some(url)),
        ..Opts::default()
    })
    .await
}

/// A client that never has two requests in flight is never refused for `concurrent`: a
/// request's lease is given back before its answer's last bytes reach the client, so its
/// next request (on either replica) finds the slot free. Before, the release was written
/// in the background after the answer, and a quick client could get a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_client_is_never_refused_for_concurrent_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("a_sequential_client_is_never_refused_for_concurrent_on_postgres");
    };
    let env = vec![("FAKE_CLAUDE_ECHO", "1".to_string())];
    let (a, b) = (
        replica_one_at_a_time(&url, env.clone()).await,
        replica_one_at_a_time(&url, env).await,
    );
    let mut refused = Vec::new();
    for i in 0..40 {
        let s = if i % 4 < 2 { &a } else { &b };
        let (path, body) = match i % 3 {
            0 => ("/v1/messages", messages_body("hi", i % 2 == 0)),
            1 => (
                "/v1/chat/completions",
                crate::harness::chat_body("hi", i % 2 == 0),
            ),
            _ => (
                "/v1/responses",
                serde_json::json!({"model": "sonnet", "input": "hi", "stream": i % 2 == 0}),
            ),
        };
        let (st, v) = post(s, path, "one-key", &body).await;
        if st != 200 {
            refused.push((i, path, st, v));
        }
    }
    assert!(refused.is_empty(), "{refused:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Two requests at once on two replicas: the second is refused for `concurrent` while the
/// first runs, and served once it is done.
#[tokio::test]
async fn concurrent_holds_across_both_replicas_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("concurrent_holds_across_both_replicas_on_postgres");
    };
    // A second between deltas: the first answer runs for seconds after its spawn.
    let a = Arc::new(replica_one_at_a_time(&url, vec![("FAKE_CLAUDE_DELAY", "1".into())]).await);
    a.set_scenario("slow");
    let b = replica_one_at_a_time(&url, vec![("FAKE_CLAUDE_ECHO", "1".into())]).await;
    let a2 = Arc::clone(&a);
    let first = tokio::spawn(async move {
        post(&a2, "/v1/messages", "one-key", &messages_body("a", true)).await
    });
    // The first holds the key's slot once its CLI is spawned (a count, not a clock; the
    // loop is a hang guard only).
    for _ in 0..1500 {
        if a.state.backend.stats().snapshot().spawned_total >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, v) = post(&b, "/v1/messages", "one-key", &messages_body("b", false)).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("at once"),
        "{v}"
    );
    let (st, v) = first.await.unwrap();
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(&b, "/v1/messages", "one-key", &messages_body("c", false)).await;
    assert_eq!(st, 200, "{v}");
    b.shutdown().await;
}

/// Lease rows in the database at `url`.
async fn leases(url: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::Row::get(
        &sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM key_leases")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        0,
    );
    let _ = conn.close().await;
    n
}

/// A client that leaves mid-stream: its lease is given back in the background (nobody
/// waits for the stream's end any more), long before the row would expire
/// (`cli.total_timeout` + 60 s = 80 s here), and the key is served again on the other
/// replica.
#[tokio::test]
async fn a_stream_the_client_left_gives_its_slot_back_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("a_stream_the_client_left_gives_its_slot_back_on_postgres");
    };
    let a = replica_one_at_a_time(&url, vec![("FAKE_CLAUDE_DELAY", "1".into())]).await;
    a.set_scenario("slow");
    let b = replica_one_at_a_time(&url, vec![("FAKE_CLAUDE_ECHO", "1".into())]).await;
    let mut r = client()
        .post(a.url("/v1/messages"))
        .header("x-api-key", "one-key")
        .json(&messages_body("a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The stream began: its lease is held.
    assert!(r.chunk().await.unwrap().is_some());
    assert_eq!(leases(&url).await, 1);
    let (st, v) = post(&b, "/v1/messages", "one-key", &messages_body("b", false)).await;
    assert_eq!(st, 429, "{v}");
    drop(r);
    // The replica notices at its next event (a second later) and releases in the
    // background (the loop is a hang guard, well below the row's 80 s expiry).
    for _ in 0..400 {
        if leases(&url).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leases(&url).await, 0);
    let (st, v) = post(&b, "/v1/messages", "one-key", &messages_body("c", false)).await;
    assert_eq!(st, 200, "{v}");
    a.shutdown().await;
    b.shutdown().await;
}

// Not on SQLite: the embedded store serves one replica, whose own counters decide
// (`http::keyed::admit_shared`); a SQLite file shared by replicas is not a deployment.

/// Waits until the replica's stored responses are written to the shared store (hang guard
/// only): its client could otherwise be quicker than its background write.
async fn written(s: &TestServer) {
    for _ in 0..600 {
        if s.state.responses.pending_writes() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stored responses still being written");
}

fn output_text(v: &Value) -> String {
    v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

async fn a_follow_up_continues_on_the_other_replica(shared: Shared) {
    let (a, b) = (replica(&shared).await, replica(&shared).await);
    let (st, r1) = post(
        &a,
        "/v1/responses",
        "bob-key",
        &serde_json::json!({"model": "sonnet", "input": "first-turn-marker"}),
    )
    .await;
    assert_eq!(st, 200, "{r1}");
    written(&a).await;
    // Another key does not find it on either replica.
    let follow = serde_json::json!({"model": "sonnet", "input": "second",
                                    "previous_response_id": r1["id"]});
    let (st, v) = post(&b, "/v1/responses", "alice-key", &follow).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "previous_response_not_found", "{v}");
    // The owner's follow-up on the other replica runs from the stored conversation.
    let (st, r2) = post(&b, "/v1/responses", "bob-key", &follow).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(output_text(&r2), "echo: second");
    assert_eq!(r2["previous_response_id"], r1["id"]);
    // Its CLI ran fresh, resuming the first turn from a synthesized session.
    let log = std::fs::read_to_string(&b.log_file).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("RESUME_LINE:") && l.contains("first-turn-marker")),
        "{log}"
    );
    // And an output item of A's answer is found on B by `item_reference`.
    written(&b).await;
    let item = r1["output"][0]["id"].as_str().unwrap().to_string();
    let (st, r3) = post(
        &b,
        "/v1/responses",
        "bob-key",
        &serde_json::json!({"model": "sonnet", "input": [
            {"type": "item_reference", "id": item},
            {"role": "user", "content": "third"}]}),
    )
    .await;
    assert_eq!(st, 200, "{r3}");
}

#[tokio::test]
async fn a_responses_follow_up_continues_on_the_other_replica_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("a_responses_follow_up_continues_on_the_other_replica_on_postgres");
    };
    a_follow_up_continues_on_the_other_replica(Shared::Postgres(url)).await;
}

#[tokio::test]
async fn a_responses_follow_up_continues_on_the_other_replica_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_follow_up_continues_on_the_other_replica(Shared::Sqlite(dir.path().join("shared.db"))).await;
}

/// An account `name` of the fake CLI answering "from NAME", with more of its env.
fn fake_account(name: &str, env: &[(&str, String)]) -> ccgate::config::AccountConfig {
    let mut all = vec![("FAKE_CLAUDE_TEXT".to_string(), format!("from {name}"))];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    ccgate::config::AccountConfig {
        name: name.into(),
        env: all.into_iter().collect(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    }
}

/// A replica on `shared` with these accounts, periodic probes off, the shared state
/// polled every 100 ms.
async fn replica_serving(
    shared: &Shared,
    accounts: Vec<ccgate::config::AccountConfig>,
) -> TestServer {
    let shared = shared.clone();
    TestServer::start(Opts {
        rules_yaml: Some(crate::harness::default_rules_with_probe(0.0, 1.0, 5.0)),
        state_path: match &shared {
            Shared::Sqlite(p) => Some(p.clone()),
            Shared::Postgres(_) => None,
        },
        tweak: Box::new(move |c| {
            c.accounts = accounts;
            c.state.poll_interval = 0.1;
            if let Shared::Postgres(url) = shared {
                c.state.url = Some(url);
            }
        }),
        ..Opts::default()
    })
    .await
}

/// A replica with accounts `a` (its CLI answers with a usage limit until an hour from
/// now) and `b` (it answers).
async fn replica_with_accounts(shared: &Shared) -> TestServer {
    let reset = (ccgate::clock::unix_now() + 3600).to_string();
    let scenario = |s: &str| ("FAKE_CLAUDE_SCENARIO", s.to_string());
    let accounts = vec![
        fake_account(
            "a",
            &[
                scenario("usage_limit"),
                ("FAKE_CLAUDE_USAGE_RESET_AT", reset),
            ],
        ),
        fake_account("b", &[scenario("success")]),
    ];
    replica_serving(shared, accounts).await
}

/// Request runs so far (probes excluded).
fn runs(s: &TestServer) -> usize {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("STDIN:") && !l.contains("Reply with OK."))
        .count()
}

/// x's request: x tries `a`, gets the usage limit, cools it down and answers from `b`.
async fn cool_a_down_on(x: &TestServer) {
    let r = client()
        .post(x.url("/v1/chat/completions"))
        .json(&crate::harness::chat_body("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("from b"));
    assert_eq!(runs(x), 2, "one run on a, one on b");
}

/// Waits until `y` has `a`'s usage-limit cooldown (the loop is a hang guard only).
async fn a_cooldown_reaches(y: &TestServer) {
    let a_on_y = y.state.accounts.members()[0].health().clone();
    for _ in 0..1200 {
        if a_on_y.cooldown().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = a_on_y.cooldown().expect("y sees a's cooldown");
    assert_eq!(c.kind, "usage_limit");
}

async fn a_cooldown_is_seen_by_both(shared: Shared) {
    let (x, y) = (
        replica_with_accounts(&shared).await,
        replica_with_accounts(&shared).await,
    );
    let chat = crate::harness::chat_body("hi", false);
    cool_a_down_on(&x).await;
    // y learns it without a request of its own.
    a_cooldown_reaches(&y).await;
    // y's request goes straight to `b`: `a` is not tried again.
    let r = client()
        .post(y.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("from b"));
    assert_eq!(runs(&y), 1, "y never ran a request on a");
}

#[tokio::test]
async fn a_cooldown_is_seen_by_both_replicas_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("a_cooldown_is_seen_by_both_replicas_on_postgres");
    };
    a_cooldown_is_seen_by_both(Shared::Postgres(url)).await;
}

#[tokio::test]
async fn a_cooldown_is_seen_by_both_replicas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_cooldown_is_seen_by_both(Shared::Sqlite(dir.path().join("shared.db"))).await;
}

/// A cooldown found while PostgreSQL is down reaches the other replica once it is back:
/// its write is retried after transient failures (`store::write_behind`). Before, it stayed
/// on the replica that found it.
#[tokio::test]
async fn a_cooldown_and_a_response_of_an_outage_are_shared_once_the_store_is_back() {
    if pg_database().await.is_none() {
        return skip("a_cooldown_and_a_response_of_an_outage_are_shared_once_the_store_is_back");
    }
    let (cluster, url) = OwnCluster::start_new().await;
    let shared = Shared::Postgres(url);
    let (x, y) = (
        replica_with_accounts(&shared).await,
        replica_with_accounts(&shared).await,
    );
    cluster.stop().await;
    // The store does not take the cooldown x finds.
    cool_a_down_on(&x).await;
    assert!(y.state.accounts.members()[0].health().cooldown().is_none());
    // The store keeps down until the cooldown's write has failed once and waits to be
    // tried again (a count; the loop is a hang guard only).
    let store = x.state.ledger.as_ref().unwrap().store().clone();
    for _ in 0..600 {
        if store.writes_retried() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A response answered during the outage is not lost to the other replicas either:
    // the store stays down until its write has failed once (it is then retried, or, on
    // a build that does not retry, given up: the follow-up below finds nothing).
    let (retried, failed) = (store.writes_retried(), store.writes_failed());
    let (st, r1) = post(
        &x,
        "/v1/responses",
        "",
        &serde_json::json!({"model": "sonnet", "input": "during the outage"}),
    )
    .await;
    assert_eq!(st, 200, "{r1}");
    for _ in 0..600 {
        if store.writes_retried() > retried || store.writes_failed() > failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start().await;
    // y learns it once the store is back.
    a_cooldown_reaches(&y).await;
    written(&x).await;
    let follow = serde_json::json!({"model": "sonnet", "input": "after it",
                                    "previous_response_id": r1["id"]});
    let (st, r2) = post(&y, "/v1/responses", "", &follow).await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["previous_response_id"], r1["id"]);
    x.shutdown().await;
    y.shutdown().await;
}

#[test]
fn check_warns_of_config_directory_logins_when_state_is_shared() {
    let account = |name: &str, env: &[(&str, &str)]| ccgate::config::AccountConfig {
        name: name.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        models: None,
        weight: 1,
        extra_usage: Default::default(),
    };
    let mut c = ccgate::config::Config {
        accounts: vec![
            account("seat", &[("CLAUDE_CONFIG_DIR", "/d/seat")]),
            account("token", &[("CLAUDE_CODE_OAUTH_TOKEN", "t")]),
        ],
        ..Default::default()
    };
    let no_env = |_: &str| false;
    assert!(
        c.shared_login_warnings(&no_env).is_empty(),
        "one replica: no warning"
    );
    c.state.url = Some("postgres://db/x".into());
    let w = c.shared_login_warnings(&no_env);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("`seat`") && w[0].contains("claude setup-token"),
        "{w:?}"
    );
    // The implicit account: the process environment's token counts.
    c.accounts.clear();
    assert_eq!(c.shared_login_warnings(&no_env).len(), 1);
    assert!(c
        .shared_login_warnings(&|k| k == "CLAUDE_CODE_OAUTH_TOKEN")
        .is_empty());
}

/// A replica with accounts `a` and `b`, both answering; `b`'s answers report plan windows
/// (5-hour 42 %, 7-day 10 %) when `b_windows`.
async fn replica_with_two_accounts(shared: &Shared, b_windows: bool) -> TestServer {
    let success = ("FAKE_CLAUDE_SCENARIO", "success".to_string());
    let mut b = vec![success.clone()];
    if b_windows {
        b.push(("FAKE_CLAUDE_WINDOWS", "0.42,0.1".to_string()));
    }
    let accounts = vec![fake_account("a", &[success]), fake_account("b", &b)];
    replica_serving(shared, accounts).await
}

async fn chat(s: &TestServer, messages: Value) -> String {
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "sonnet", "messages": messages}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn plan_windows_and_a_conversations_account_are_shared(shared: Shared) {
    let x = replica_with_two_accounts(&shared, true).await;
    let y = replica_with_two_accounts(&shared, false).await;
    // On x, conversations until one is answered on `b` (accounts take turns).
    let mut on_b = None;
    for i in 0..4 {
        let first = format!("question {i}");
        let text = chat(&x, serde_json::json!([{"role": "user", "content": first}])).await;
        if text.contains("from b") {
            on_b = Some((first, text));
            break;
        }
    }
    let (first, answer) = on_b.expect("x answered a conversation on b");
    // y learns b's windows (observed by x only) without a request of its own.
    let b_on_y = Arc::clone(&y.state.accounts.members()[1]);
    assert_eq!(b_on_y.name(), "b");
    for _ in 0..600 {
        if b_on_y.five_hour().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (utilization, resets_at) = b_on_y.five_hour().expect("y sees b's windows");
    assert!((utilization - 0.42).abs() < 1e-9, "{utilization}");
    assert!(resets_at.is_some());
    let status: Value = client()
        .get(y.url("/v1/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["accounts"][1]["windows"]["five_hour"]["utilization"], 42.0,
        "{status}"
    );
    // The follow-up lands on y, which never saw the conversation: it stays on b (y's own
    // turn order would pick a, its first account).
    let follow_up = serde_json::json!([
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and then?"}
    ]);
    let text = chat(&y, follow_up).await;
    assert!(text.contains("from b"), "{text}");
}

#[tokio::test]
async fn plan_windows_and_a_conversations_account_are_shared_on_postgres() {
    let Some(url) = pg_database().await else {
        return skip("plan_windows_and_a_conversations_account_are_shared_on_postgres");
    };
    plan_windows_and_a_conversations_account_are_shared(Shared::Postgres(url)).await;
}

#[tokio::test]
async fn plan_windows_and_a_conversations_account_are_shared_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    plan_windows_and_a_conversations_account_are_shared(Shared::Sqlite(
        dir.path().join("shared.db"),
    ))
    .await;
}
