//! The pre-warmed CLI pool (`cli.prewarm`) through the real server and the fake CLI:
//! one process per request (isolation), refill, dead-process replacement, key mismatch
//! fallback, invalidation on reload and on an unhealthy verdict, idle-age recycling, the
//! start timeout counted from the prompt, the concurrency bound, and no leaked processes.

use std::time::Duration;

use ccgate::backend::{Backend, CliRequest};
use ccgate::rules::GatewayCondition;
use serde_json::{json, Value};

use crate::harness::{chat_body, client, eventually, messages_body, post, Opts, TestServer};
use crate::support::fake_settings;

const WAIT: Duration = Duration::from_secs(10);

/// A live process (not a zombie).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, after)| !after.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// No such process at all (reaped, not even a zombie).
fn pid_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The `State:` line of /proc/<pid>/status (`Z (zombie)` for killed but not reaped), for
/// assertion messages.
fn pid_state(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("State:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "gone".into())
}

/// A request with the pool's key (model `sonnet`, no system prompt).
fn matching(prompt: &str) -> CliRequest {
    CliRequest {
        prompt: prompt.into(),
        model: Some("sonnet".into()),
        ..CliRequest::default()
    }
}

/// A server with `prewarm` pooled processes keyed on model `sonnet` (what `chat_body`
/// sends), the fake CLI echoing the prompt.
async fn pool_server(
    prewarm: usize,
    tweak: impl FnOnce(&mut ccgate::config::Config) + Send + 'static,
) -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        tweak: Box::new(move |c| {
            c.cli.prewarm = prewarm;
            c.cli.prewarm_model = Some("sonnet".into());
            c.cli.max_concurrent = 4;
            // These tests are about the pool: no process is kept for a conversation.
            c.cli.keep_conversations = 0;
            tweak(c);
        }),
        ..Opts::default()
    })
    .await
}

async fn wait_idle(s: &TestServer, n: usize) -> bool {
    let b = s.state.backend.clone();
    eventually(WAIT, move || b.pool_pids().len() == n).await
}

fn stats(s: &TestServer) -> ccgate::backend::StatsSnapshot {
    s.state.backend.stats().snapshot()
}

async fn chat(s: &TestServer, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let st = r.status().as_u16();
    (st, r.json().await.expect("json body"))
}

fn answer(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `PID_STDIN:<pid>:<line>` entries of the fake CLI's log, as (pid, line).
fn stdin_lines(s: &TestServer) -> Vec<(u32, String)> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("PID_STDIN:"))
        .filter_map(|rest| {
            let (pid, line) = rest.split_once(':')?;
            Some((pid.parse().ok()?, line.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn pooled_requests_are_isolated_one_process_each() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await, "pool never filled");
    let first_pid = s.state.backend.pool_pids()[0];

    let (st, v) = chat(&s, chat_body("alpha secret", false)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answer(&v), "echo: alpha secret");
    // The used process is retired (exits after its one turn and is reaped).
    assert!(eventually(WAIT, || pid_gone(first_pid)).await);
    assert!(wait_idle(&s, 1).await, "pool did not refill");
    let second_pid = s.state.backend.pool_pids()[0];
    assert_ne!(first_pid, second_pid);

    let (st, v) = chat(&s, chat_body("bravo", false)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        answer(&v),
        "echo: bravo",
        "the second answer must see only its own prompt"
    );

    let lines = stdin_lines(&s);
    let of = |pid: u32| -> Vec<&String> {
        lines
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, l)| l)
            .collect()
    };
    let a = of(first_pid);
    let b = of(second_pid);
    assert_eq!(a.len(), 1, "first process got {a:?}");
    assert_eq!(b.len(), 1, "second process got {b:?}");
    assert!(a[0].contains("alpha secret") && !a[0].contains("bravo"));
    assert!(b[0].contains("bravo") && !b[0].contains("alpha"));
    let st = stats(&s);
    assert_eq!(st.pool_hits_total, 2);
    assert_eq!(st.pool_misses_total, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn pool_refills_after_concurrent_use_and_streams_like_a_cold_run() {
    let s = pool_server(2, |_| {}).await;
    assert!(wait_idle(&s, 2).await);
    let before = s.state.backend.pool_pids();
    let (r1, r2) = tokio::join!(
        chat(&s, chat_body("one", false)),
        client()
            .post(s.url("/v1/chat/completions"))
            .json(&chat_body("two", true))
            .send(),
    );
    assert_eq!(r1.0, 200);
    assert_eq!(answer(&r1.1), "echo: one");
    let r2 = r2.expect("stream");
    assert_eq!(r2.status(), 200);
    let body = r2.text().await.expect("sse");
    assert!(
        body.contains("\" two\"") && body.contains("[DONE]"),
        "{body}"
    );
    assert_eq!(stats(&s).pool_hits_total, 2);
    assert!(wait_idle(&s, 2).await, "pool did not return to 2 idle");
    let after = s.state.backend.pool_pids();
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn dead_idle_process_is_never_handed_out_and_is_replaced() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await);
    let victim = s.state.backend.pool_pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert!(eventually(WAIT, || !pid_alive(victim)).await);

    let (st, v) = chat(&s, chat_body("after the kill", false)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answer(&v), "echo: after the kill");
    assert!(
        eventually(WAIT, || pid_gone(victim)).await,
        "dead process not reaped"
    );
    assert!(wait_idle(&s, 1).await, "pool did not refill");
    assert_ne!(s.state.backend.pool_pids()[0], victim);
    assert!(stats(&s).pool_died_total >= 1);
    // The victim never got a prompt.
    assert!(stdin_lines(&s).iter().all(|(p, _)| *p != victim));
    s.shutdown().await;
}

#[tokio::test]
async fn pooled_process_dying_silently_at_hand_over_is_retried_cold() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await, "pool never filled");
    let doomed = s.state.backend.pool_pids()[0];
    // The next turn (the pooled one) exits without a word once it has its prompt, as a
    // process killed between the idle check and the write would; later turns succeed.
    std::fs::write(&s.scenario_file, "exit0_no_output@once\n").expect("scenario");

    let (st, v) = chat(&s, chat_body("still answered", false)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answer(&v), "echo: still answered");
    let snap = stats(&s);
    assert_eq!(snap.pool_hits_total, 1);
    assert_eq!(snap.pool_handover_retries_total, 1);
    // The doomed process got the prompt, then a cold process got the same prompt.
    let got: Vec<u32> = stdin_lines(&s)
        .into_iter()
        .filter(|(_, l)| l.contains("still answered"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], doomed);
    assert!(eventually(WAIT, || pid_gone(doomed)).await);
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ccgate_pool_misses_total{reason=\"handover\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn any_first_turn_takes_a_prewarmed_process_and_gets_its_settings_late() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await);
    let pooled = s.state.backend.pool_pids()[0];

    // Another model and a system prompt: set over the control channel before the prompt.
    let body = json!({
        "model": "opus",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "with system"}
        ],
    });
    let (st, v) = chat(&s, body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answer(&v), "echo: with system");
    let st = stats(&s);
    assert_eq!((st.pool_hits_total, st.pool_misses_total), (1, 0));
    let lines: Vec<Value> = stdin_lines(&s)
        .into_iter()
        .filter(|(p, _)| *p == pooled)
        .map(|(_, l)| serde_json::from_str(&l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| {
            l["request"]["subtype"]
                .as_str()
                .or(l["type"].as_str())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(kinds, ["initialize", "set_model", "user"], "{lines:?}");
    assert_eq!(lines[0]["request"]["systemPrompt"], json!(["Be terse."]));
    assert_eq!(lines[1]["request"]["model"], "opus");
    s.shutdown().await;
}

#[tokio::test]
async fn what_cannot_be_set_late_cold_spawns_and_counts_as_misses() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await);
    let pooled = s.state.backend.pool_pids()[0];

    // Earlier turns: a resumed session is a spawn flag.
    let with_history = json!({
        "model": "sonnet",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "echo: first"},
            {"role": "user", "content": "second"}
        ],
    });
    let (st, v) = chat(&s, with_history).await;
    assert_eq!(st, 200, "{v}");
    // Thinking options: not settable after spawn.
    let mut thinking = messages_body("think", false);
    thinking["max_tokens"] = json!(4096);
    thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let (st, _, v) = post(&s, "/v1/messages", &thinking).await;
    assert_eq!(st, 200, "{v}");

    let st = stats(&s);
    assert_eq!(st.pool_hits_total, 0);
    assert_eq!(st.pool_misses_total, 2);
    // The pooled process was not used (still idle, still the same one).
    assert_eq!(s.state.backend.pool_pids(), vec![pooled]);
    assert!(stdin_lines(&s).iter().all(|(p, _)| *p != pooled));

    let (st, _) = chat(&s, chat_body("matching", false)).await;
    assert_eq!(st, 200);
    assert_eq!(stats(&s).pool_hits_total, 1);

    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ccgate_cli_pool_hits_total 1"),
        "{metrics}"
    );
    for reason in ["history", "thinking"] {
        assert!(
            metrics.contains(&format!(
                "ccgate_pool_misses_total{{reason=\"{reason}\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("ccgate_cli_pool_idle "), "{metrics}");
    assert!(
        metrics.contains("ccgate_cli_pool_first_line_seconds_count 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn rules_reload_drains_and_refills_the_pool() {
    let s = pool_server(2, |_| {}).await;
    assert!(wait_idle(&s, 2).await);
    let old = s.state.backend.pool_pids();
    let text = std::fs::read_to_string(&s.rules_path).unwrap();
    std::fs::write(&s.rules_path, format!("{text}\n# changed\n")).unwrap();
    let r = client()
        .post(s.url("/admin/reload"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reload"]["changed"], true, "{v}");
    assert!(
        eventually(WAIT, || old.iter().all(|p| pid_gone(*p))).await,
        "stale pooled processes survived the reload"
    );
    assert!(wait_idle(&s, 2).await);
    let new = s.state.backend.pool_pids();
    assert!(new.iter().all(|p| !old.contains(p)));
    assert!(stats(&s).pool_drained_total >= 2);
    s.shutdown().await;
}

#[tokio::test]
async fn unhealthy_verdict_drains_the_pool_until_healthy_again() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await);
    let first = s.state.backend.pool_pids()[0];
    // The scenario is read when the prompt arrives, so the pooled process fails like
    // a freshly started one would.
    s.set_scenario("not_logged_in");
    let (st, v) = chat(&s, chat_body("hi", false)).await;
    assert_eq!(st, 401, "{v}");
    assert!(eventually(WAIT, || pid_gone(first)).await);
    // Gate closed: nothing is kept warm.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(s.state.backend.pool_pids().is_empty());

    s.set_scenario("success");
    let r = client()
        .post(s.url("/admin/probe"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(s.state.health.is_ok());
    assert!(wait_idle(&s, 1).await, "pool did not refill once healthy");
    let (st, v) = chat(&s, chat_body("back", false)).await;
    assert_eq!(st, 200, "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn idle_processes_are_recycled_after_max_idle() {
    let s = pool_server(1, |c| c.cli.prewarm_max_idle = 0.6).await;
    assert!(wait_idle(&s, 1).await);
    let first = s.state.backend.pool_pids()[0];
    let b = s.state.backend.clone();
    assert!(
        eventually(WAIT, move || b
            .pool_pids()
            .first()
            .is_some_and(|p| *p != first))
        .await,
        "idle process was not recycled"
    );
    assert!(eventually(WAIT, || pid_gone(first)).await);
    assert!(stats(&s).pool_expired_total >= 1);
    s.shutdown().await;
}

#[tokio::test]
async fn start_timeout_counts_from_the_prompt_not_the_spawn() {
    let s = pool_server(1, |c| c.cli.start_timeout = 1.0).await;
    assert!(wait_idle(&s, 1).await);
    // Idle for longer than the start timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (st, v) = chat(&s, chat_body("late", false)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(stats(&s).pool_hits_total, 1);
    // And a pooled process that never answers still hits the start timeout.
    s.set_scenario("hang");
    let t = std::time::Instant::now();
    let (st, _) = chat(&s, chat_body("hang", false)).await;
    assert_eq!(st, 504);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(stats(&s).pool_hits_total, 2);
    s.shutdown().await;
}

#[tokio::test]
async fn idle_processes_hold_slots_and_yield_them_to_other_requests() {
    let s = pool_server(2, |c| {
        c.cli.max_concurrent = 2;
        c.cli.total_timeout = 5.0;
    })
    .await;
    assert!(wait_idle(&s, 2).await);
    assert_eq!(stats(&s).in_flight, 2);
    // All slots are held by idle processes: a request no pre-warmed process can take
    // (earlier turns: a spawn flag) evicts one instead of waiting.
    let other = json!({
        "model": "sonnet",
        "messages": [
            {"role": "user", "content": "before"},
            {"role": "assistant", "content": "echo: before"},
            {"role": "user", "content": "evict"}
        ],
    });
    let t = std::time::Instant::now();
    let (st, v) = chat(&s, other.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(stats(&s).pool_evicted_total, 1);
    // idle + running never exceeds max_concurrent.
    for _ in 0..3 {
        let (a, b, c) = tokio::join!(
            chat(&s, chat_body("x", false)),
            chat(&s, other.clone()),
            chat(&s, chat_body("y", false)),
        );
        assert_eq!((a.0, b.0, c.0), (200, 200, 200));
        assert!(stats(&s).in_flight <= 2, "{:?}", stats(&s));
    }
    assert!(wait_idle(&s, 2).await);
    s.shutdown().await;
}

#[tokio::test]
async fn no_pooled_process_survives_the_server() {
    // Graceful stop.
    let s = pool_server(3, |_| {}).await;
    assert!(wait_idle(&s, 3).await);
    let pids = s.state.backend.pool_pids();
    let backend = s.state.backend.clone();
    s.shutdown().await;
    assert!(
        pids.iter().all(|p| pid_gone(*p)),
        "pooled processes left after a graceful stop: {pids:?}"
    );
    assert_eq!(backend.stats().snapshot().in_flight, 0);
    assert!(backend.pool_pids().is_empty());

    // The serve task dropped (aborted) instead.
    let s = pool_server(2, |_| {}).await;
    assert!(wait_idle(&s, 2).await);
    let pids = s.state.backend.pool_pids();
    drop(s);
    assert!(
        eventually(WAIT, || pids.iter().all(|p| pid_gone(*p))).await,
        "pooled processes left after the server was dropped: {pids:?}"
    );
}

#[tokio::test]
async fn a_pooled_process_handed_out_as_abort_all_fires_is_reaped_before_the_answer() {
    let s = pool_server(1, |_| {}).await;
    assert!(wait_idle(&s, 1).await);
    let pid = s.state.backend.pool_pids()[0];
    // Admission hands the idle process over inside `start`; the run's task (this test's
    // runtime is single-threaded) only begins after `abort_all`.
    let run = s.state.backend.start(matching("too late"));
    s.state.backend.abort_all();
    let facts = tokio::time::timeout(WAIT, run.finish())
        .await
        .expect("an answer")
        .expect_err("the run was aborted");
    assert_eq!(facts.condition, Some(GatewayCondition::ShuttingDown));
    assert_eq!(
        stats(&s).pool_hits_total,
        1,
        "the run took the pooled process"
    );
    assert!(
        pid_gone(pid),
        "pooled process {pid} not killed and reaped before the answer (state {})",
        pid_state(pid)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn abort_all_reaps_the_idle_pool_and_stops_refilling() {
    let s = pool_server(2, |_| {}).await;
    assert!(wait_idle(&s, 2).await);
    let pids = s.state.backend.pool_pids();
    s.state.backend.abort_all();
    assert!(
        eventually(WAIT, || pids.iter().all(|p| pid_gone(*p))).await,
        "idle pooled processes after abort_all: {:?}",
        pids.iter().map(|p| (*p, pid_state(*p))).collect::<Vec<_>>()
    );
    let spawned = stats(&s).pool_spawned_total;
    // Several maintainer ticks with every slot free.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stats(&s).pool_spawned_total, spawned, "the pool refilled");
    assert!(s.state.backend.pool_pids().is_empty());
    assert_eq!(stats(&s).in_flight, 0);
    s.shutdown().await;
}

#[test]
fn a_pool_handle_dropped_without_a_runtime_reaps_its_processes() {
    let mut settings = fake_settings("success");
    settings.prewarm = 2;
    settings.prewarm_model = Some("sonnet".into());
    let backend = Backend::new(settings);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let handle = rt.block_on(async {
        let (_stop, shutdown) = ccgate::shutdown::channel();
        let handle = backend.start_pool(shutdown, || true);
        let b = backend.clone();
        assert!(eventually(WAIT, move || b.pool_pids().len() == 2).await);
        handle
    });
    let pids = backend.pool_pids();
    drop(rt);
    drop(handle);
    let left: Vec<(u32, String)> = pids
        .iter()
        .filter(|p| !pid_gone(**p))
        .map(|p| (*p, pid_state(*p)))
        .collect();
    assert!(left.is_empty(), "not reaped: {left:?}");
    assert_eq!(backend.stats().snapshot().in_flight, 0);
}

#[tokio::test]
async fn the_pool_stops_refilling_once_shutdown_begins() {
    let mut settings = fake_settings("success");
    settings.prewarm = 1;
    settings.prewarm_model = Some("sonnet".into());
    settings.max_concurrent = 2;
    let backend = Backend::new(settings);
    let (trigger, shutdown) = ccgate::shutdown::channel();
    let handle = backend.start_pool(shutdown, || true);
    let b = backend.clone();
    assert!(eventually(WAIT, move || b.pool_pids().len() == 1).await);
    let pid = backend.pool_pids()[0];

    trigger.trigger();
    assert!(
        eventually(WAIT, || pid_gone(pid)).await,
        "idle process {pid} after shutdown (state {})",
        pid_state(pid)
    );
    assert!(backend.pool_pids().is_empty());
    let spawned = backend.stats().snapshot().pool_spawned_total;
    // A run ends and frees its slot (which wakes the maintainer), then several ticks pass.
    let out = tokio::time::timeout(WAIT, backend.start(matching("after")).finish())
        .await
        .expect("answer");
    assert!(out.is_ok(), "{out:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let snap = backend.stats().snapshot();
    assert_eq!(snap.pool_spawned_total, spawned, "the pool refilled");
    assert!(backend.pool_pids().is_empty());
    assert_eq!(snap.in_flight, 0);
    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .expect("PoolHandle::shutdown returns");
}
