//! Hot reload against a running server with real files in a temp dir: every editor save
//! pattern, symlinks, the Kubernetes ConfigMap `..data` swap, broken edits, SIGHUP,
//! debouncing, and reloads under load never mixing two rule sets in one response.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{chat_body, client, default_rules_with_probe, get_json, Opts, TestServer};

/// Default rules whose `/v1/models` list is exactly `[tag]`.
fn rules_tagged(tag: &str) -> String {
    default_rules_with_probe(0.0, 0.0, 5.0)
        .lines()
        .map(|l| {
            if l.starts_with("models:") {
                format!("models: [{tag}]")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

async fn served_tag(s: &TestServer) -> String {
    let v: Value = get_json(s, "/v1/models").await;
    v["data"][0]["id"].as_str().unwrap_or("").to_string()
}

/// Waits (up to 2 s, the bound) for the served tag; returns the latency.
async fn wait_tag(s: &TestServer, tag: &str) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if served_tag(s).await == tag {
            eprintln!(
                "reload latency for {tag}: {:?} (file write → served)",
                t.elapsed()
            );
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "rules tagged {tag} not served within 2 s (serving {})",
        served_tag(s).await
    );
}

async fn watched_server(rules_path: Option<&Path>) -> TestServer {
    let mut opts = Opts {
        rules_yaml: Some(rules_tagged("v0")),
        watch_rules: true,
        ..Opts::default()
    };
    if let Some(p) = rules_path {
        let p = p.to_path_buf();
        opts.tweak = Box::new(move |c| c.rules = p);
    }
    let s = TestServer::start(opts).await;
    // Let the watcher settle before the first edit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s
}

fn reload_count(s: &TestServer, result: &str) -> u64 {
    reload_count_in(&s.state.metrics, result)
}

fn reload_count_in(metrics: &ccgate::metrics::Metrics, result: &str) -> u64 {
    let text = metrics.render();
    text.lines()
        .find(|l| {
            l.starts_with("ccgate_rules_reloads_total")
                && l.contains(&format!("result=\"{result}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn editor_save_patterns_are_followed() {
    let s = watched_server(None).await;
    let path = s.rules_path.clone();
    // In-place write.
    std::fs::write(&path, rules_tagged("inplace")).unwrap();
    wait_tag(&s, "inplace").await;
    // Write to a temp file, then rename over (vim, sed -i, Sublime).
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, rules_tagged("renamed")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_tag(&s, "renamed").await;
    // Truncate, pause (a transient empty file), then write.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.write_all(rules_tagged("truncated").as_bytes()).unwrap();
    }
    wait_tag(&s, "truncated").await;
    // Delete, then recreate.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_tag(&s).await,
        "truncated",
        "a deleted file keeps the running rules"
    );
    std::fs::write(&path, rules_tagged("recreated")).unwrap();
    wait_tag(&s, "recreated").await;
}

#[tokio::test]
async fn symlinked_rules_and_configmap_swap() {
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes layout: rules.yaml -> ..data/rules.yaml, ..data -> ..2026_1 (a directory).
    let v1 = dir.path().join("..2026_1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("rules.yaml"), rules_tagged("cm1")).unwrap();
    std::os::unix::fs::symlink("..2026_1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/rules.yaml", dir.path().join("rules.yaml")).unwrap();
    let link = dir.path().join("rules.yaml");
    let s = watched_server(Some(&link)).await;
    // The server was started with v0 rules in memory; a SIGHUP-free first sync:
    let r = admin_reload(&s).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_tag(&s).await, "cm1");
    // The kubelet's atomic swap: new timestamped dir, new ..data_tmp link renamed over ..data.
    let v2 = dir.path().join("..2026_2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("rules.yaml"), rules_tagged("cm2")).unwrap();
    std::os::unix::fs::symlink("..2026_2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_tag(&s, "cm2").await;
    // An in-place edit of the symlink target is followed too.
    std::fs::write(v2.join("rules.yaml"), rules_tagged("cm2-edit")).unwrap();
    wait_tag(&s, "cm2-edit").await;
}

#[tokio::test]
async fn broken_edit_keeps_rules_and_reports_then_recovers() {
    let s = watched_server(None).await;
    std::fs::write(&s.rules_path, rules_tagged("good")).unwrap();
    wait_tag(&s, "good").await;
    let broken = rules_tagged("broken").replace("kinds:", "kindz:");
    std::fs::write(&s.rules_path, &broken).unwrap();
    let t = Instant::now();
    loop {
        let v: Value = get_json(&s, "/admin/rules").await;
        if v["last_attempt"]["ok"] == false {
            let err = v["last_attempt"]["error"].as_str().unwrap();
            assert!(err.contains("kindz") || err.contains("line"), "{err}");
            assert!(err.contains(':'), "error names a location: {err}");
            assert_eq!(v["last_attempt"]["trigger"], "file_change");
            assert!(v["sha256"].as_str().unwrap().len() == 64);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "broken edit not reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_tag(&s).await,
        "good",
        "a broken file must not replace good rules"
    );
    let text = s.state.metrics.render();
    assert!(
        text.contains("ccgate_rules_last_reload_successful 0"),
        "{text}"
    );
    std::fs::write(&s.rules_path, rules_tagged("fixed")).unwrap();
    wait_tag(&s, "fixed").await;
    let text = s.state.metrics.render();
    assert!(text.contains("ccgate_rules_last_reload_successful 1"));
}

#[tokio::test]
async fn a_truncate_then_write_save_is_not_a_failed_reload() {
    let s = watched_server(None).await;
    std::fs::write(&s.rules_path, rules_tagged("before")).unwrap();
    wait_tag(&s, "before").await;
    let failures = reload_count(&s, "failure");
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&s.rules_path)
        .unwrap();
    f.flush().unwrap();
    // Past the watcher's debounce: the empty file has been seen.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text = s.state.metrics.render();
    assert!(
        text.contains("ccgate_rules_last_reload_successful 1"),
        "an empty file right after a change is a save in progress, not a failed reload: {text}"
    );
    assert_eq!(reload_count(&s, "failure"), failures);
    assert_eq!(served_tag(&s).await, "before");
    f.write_all(rules_tagged("after").as_bytes()).unwrap();
    drop(f);
    wait_tag(&s, "after").await;
    let text = s.state.metrics.render();
    assert!(text.contains("ccgate_rules_last_reload_successful 1"));
    assert_eq!(reload_count(&s, "failure"), failures);
    // An explicit reload of an empty file is still a failure (the operator asked).
    std::fs::write(&s.rules_path, "").unwrap();
    let r = admin_reload(&s).await;
    assert_eq!(r.status(), 422);
    assert_eq!(served_tag(&s).await, "after");
}

#[tokio::test]
async fn a_hostile_rules_file_is_refused_fast_and_the_old_rules_keep_serving() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules_tagged("old")),
        ..Opts::default()
    })
    .await;
    let hostile = rules_tagged("hostile").replacen(
        "kinds:",
        &format!(
            "kinds:\n  - name: huge\n    status: 500\n    match: {{markers: [\"{}\"]}}\n    templates: {{openai: {{}}, anthropic: {{}}}}",
            "x".repeat(100_000)
        ),
        1,
    );
    std::fs::write(&s.rules_path, hostile).unwrap();
    let t = Instant::now();
    let r = admin_reload(&s).await;
    let took = t.elapsed();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    let err = v["reload"]["error"].as_str().unwrap();
    assert!(err.contains("the limit is 256"), "{err}");
    assert!(took < Duration::from_secs(1), "reload took {took:?}");
    assert_eq!(served_tag(&s).await, "old");
    // A later good file still reloads.
    std::fs::write(&s.rules_path, rules_tagged("new")).unwrap();
    let r = admin_reload(&s).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_tag(&s).await, "new");
}

#[tokio::test]
async fn sighup_reloads() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules_tagged("before")),
        watch_rules: false,
        ..Opts::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&s.rules_path, rules_tagged("after-hup")).unwrap();
    assert_eq!(served_tag(&s).await, "before");
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_tag(&s, "after-hup").await;
    let v: Value = get_json(&s, "/admin/rules").await;
    assert_eq!(v["last_attempt"]["trigger"], "sighup");
}

#[tokio::test]
async fn a_burst_of_saves_gives_a_few_reloads() {
    let s = watched_server(None).await;
    let before = reload_count(&s, "success");
    for i in 0..20 {
        std::fs::write(&s.rules_path, rules_tagged(&format!("burst{i}"))).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_tag(&s, "burst19").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reloads = reload_count(&s, "success") - before;
    // Debounced: 20 saves are a handful of reloads at most. A loaded runner can stretch the
    // 5 ms gaps past the debounce window now and then, hence more than two are allowed.
    assert!(
        (1..=5).contains(&reloads),
        "20 saves gave {reloads} reloads"
    );
}

/// A rule set whose rate-limit answer is recognisably A or B in status and a header.
fn rules_variant(tag: &str, status: u16) -> String {
    let mut out = String::new();
    let mut in_rate = false;
    for line in rules_tagged(tag).lines() {
        if line.trim_start().starts_with("- name:") {
            in_rate = line.trim_end().ends_with(" rate_limit");
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if in_rate && trimmed.starts_with("status:") {
            out.push_str(&format!("{indent}status: {status}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if in_rate && trimmed.starts_with("headers:") {
            out.push_str(&format!("{indent}  x-rules: {tag}\n"));
        }
    }
    out
}

#[tokio::test]
async fn reloads_under_load_never_fail_or_mix() {
    let a = rules_variant("setA", 429);
    let b = rules_variant("setB", 503);
    ccgate::rules::Rules::from_yaml(&a, "a").expect("variant A valid");
    ccgate::rules::Rules::from_yaml(&b, "b").expect("variant B valid");
    let s = TestServer::start(Opts {
        rules_yaml: Some(a.clone()),
        tweak: Box::new(|c| {
            c.cli.max_concurrent = 8;
        }),
        ..Opts::default()
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = s.url("/v1/chat/completions");
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client()
                    .post(&url)
                    .json(&chat_body("[[scenario:rate_limit]]", false))
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let tag = r
                    .headers()
                    .get("x-rules")
                    .map(|v| v.to_str().unwrap().to_string());
                let body: Value = r.json().await.expect("JSON body");
                assert!(body["error"]["message"].is_string(), "{body}");
                match (status, tag.as_deref()) {
                    (429, Some("setA")) => seen.0 += 1,
                    (503, Some("setB")) => seen.1 += 1,
                    other => panic!("mixed or malformed response: {other:?} {body}"),
                }
            }
            seen
        }));
    }
    let mut latencies = Vec::new();
    for i in 0..100 {
        let text = if i % 2 == 0 { &b } else { &a };
        std::fs::write(&s.rules_path, text).unwrap();
        let t = Instant::now();
        let r = admin_reload(&s).await;
        assert_eq!(r.status(), 200);
        latencies.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = (0, 0);
    for c in clients {
        let (x, y) = c.await.expect("client task");
        total.0 += x;
        total.1 += y;
    }
    assert!(
        total.0 > 0 && total.1 > 0,
        "both rule sets served: {total:?}"
    );
    latencies.sort();
    eprintln!(
        "reload latency via /admin/reload: median {:?}, max {:?}; responses A={} B={}",
        latencies[50], latencies[99], total.0, total.1
    );
}

#[tokio::test]
async fn unwatchable_rules_directory_still_serves_and_reload_reports() {
    let s = TestServer::start(Opts {
        rules_yaml: Some(rules_tagged("boot")),
        watch_rules: true,
        tweak: Box::new(|c| c.rules = "/nonexistent-ccgate-dir/rules.yaml".into()),
        ..Opts::default()
    })
    .await;
    // The watcher could not be set up (logged); the server still serves its rules.
    assert_eq!(served_tag(&s).await, "boot");
    let r = admin_reload(&s).await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reload"]["ok"], false);
    assert!(
        v["reload"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot read"),
        "{v}"
    );
    assert_eq!(served_tag(&s).await, "boot");
}

#[tokio::test]
async fn other_files_in_the_rules_directory_do_not_reload() {
    let s = watched_server(None).await;
    let before =
        reload_count(&s, "unchanged") + reload_count(&s, "success") + reload_count(&s, "failure");
    let dir = s.rules_path.parent().unwrap().to_path_buf();
    for i in 0..20 {
        std::fs::write(dir.join("ccgate.log"), format!("log line {i}\n")).unwrap();
        std::fs::write(dir.join(".rules.yaml.swp"), format!("swap {i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after =
        reload_count(&s, "unchanged") + reload_count(&s, "success") + reload_count(&s, "failure");
    assert_eq!(after, before, "writes to other files triggered reloads");
    std::fs::write(&s.rules_path, rules_tagged("still-watched")).unwrap();
    wait_tag(&s, "still-watched").await;
}

fn reloads_total(metrics: &ccgate::metrics::Metrics) -> u64 {
    ["success", "unchanged", "failure"]
        .iter()
        .map(|r| reload_count_in(metrics, r))
        .sum()
}

#[tokio::test]
async fn serve_returns_only_after_its_background_tasks_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules_tagged("v0")).unwrap();
    let s = watched_server(Some(&path)).await;
    std::fs::write(&path, rules_tagged("v1")).unwrap();
    assert!(
        crate::harness::eventually(Duration::from_secs(2), || reload_count(&s, "success") >= 1)
            .await,
        "the watcher did not reload before shutdown"
    );
    let state = s.state.clone();
    s.shutdown().await;
    // The probe loop, the SIGHUP listener and the watcher each held the reloader (or the
    // state around it); after `serve` returned only this test's clone is left.
    assert_eq!(
        std::sync::Arc::strong_count(&state.reloader),
        1,
        "a background task outlived serve"
    );
    let before = reloads_total(&state.metrics);
    std::fs::write(&path, rules_tagged("v2")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        reloads_total(&state.metrics),
        before,
        "the watcher reloaded after serve returned"
    );
}

#[tokio::test]
async fn dropping_the_watch_guard_stops_the_watcher() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules_tagged("v0")).unwrap();
    let rules = Arc::new(arc_swap::ArcSwap::from_pointee(
        ccgate::rules::Rules::from_yaml(&rules_tagged("v0"), "v0").unwrap(),
    ));
    let metrics = Arc::new(ccgate::metrics::Metrics::default());
    let reloader = Arc::new(ccgate::reload::Reloader::new(
        path.clone(),
        rules.clone(),
        metrics.clone(),
        Arc::new(ccgate::health::Health::default()),
        Box::new(|| {}),
    ));
    let tag = || rules.load().models().first().cloned().unwrap_or_default();
    let (stop, stopping) = ccgate::shutdown::channel();
    let guard = ccgate::reload::spawn_watcher(
        reloader.clone(),
        Duration::from_millis(50),
        stopping.clone(),
    )
    .expect("watching the temp dir");
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&path, rules_tagged("v1")).unwrap();
    assert!(
        crate::harness::eventually(Duration::from_secs(2), || tag() == "v1").await,
        "the watcher did not reload"
    );
    drop(guard);
    assert!(
        crate::harness::eventually(Duration::from_secs(2), || Arc::strong_count(&reloader) == 1)
            .await,
        "the watcher task still holds the reloader after its guard was dropped"
    );
    std::fs::write(&path, rules_tagged("v2")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(tag(), "v1", "a dropped watcher still reloads");
    // The shutdown signal ends a watcher whose guard is still alive.
    let guard =
        ccgate::reload::spawn_watcher(reloader.clone(), Duration::from_millis(50), stopping)
            .expect("watching the temp dir");
    assert_eq!(Arc::strong_count(&reloader), 2);
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(2), guard.stop())
        .await
        .expect("the watcher task ends on shutdown");
    assert_eq!(Arc::strong_count(&reloader), 1);
}

/// `POST /admin/reload` (with the JSON content type admin POSTs need): the response.
async fn admin_reload(s: &TestServer) -> reqwest::Response {
    client()
        .post(s.url("/admin/reload"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
}
