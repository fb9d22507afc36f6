//! Real conversations with the fake CLI: a kept process continues exactly its own
//! conversation (same API key, every message, its own answer), and nothing else; kept
//! processes are bounded, expire, give way to new requests and are drained.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, Opts, TestServer};

/// `PID_STDIN:<pid>:<line>` entries of the fake CLI's log (user lines only), as (pid, line).
fn user_lines(s: &TestServer) -> Vec<(u32, Value)> {
    std::fs::read_to_string(&s.log_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("PID_STDIN:"))
        .filter_map(|rest| {
            let (pid, line) = rest.split_once(':')?;
            let v: Value = serde_json::from_str(line).ok()?;
            (v["type"] == "user").then(|| Some((pid.parse().ok()?, v)))?
        })
        .collect()
}

/// The pid that got the user line whose content is `text`.
fn pid_of(s: &TestServer, text: &str) -> u32 {
    user_lines(s)
        .into_iter()
        .rev()
        .find(|(_, v)| v["message"]["content"] == text)
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no user line {text:?}: {:?}", user_lines(s)))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn server(tweak: impl FnOnce(&mut ccgate::config::Config) + Send + 'static) -> TestServer {
    TestServer::start(Opts {
        env: vec![("FAKE_CLAUDE_ECHO", "1".into())],
        api_keys: vec!["key-a".into(), "key-b".into()],
        tweak: Box::new(tweak),
        ..Opts::default()
    })
    .await
}

/// One chat request as `key`: the answer's text.
async fn ask(s: &TestServer, key: &str, messages: &[(&str, &str)]) -> String {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let r = crate::harness::client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "sonnet", "messages": messages}))
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

/// A JSON POST as `key-a`: the JSON answer.
async fn post_as_a(s: &TestServer, path: &str, body: &Value) -> Value {
    crate::harness::client()
        .post(s.url(path))
        .bearer_auth("key-a")
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn stats(s: &TestServer) -> ccgate::backend::StatsSnapshot {
    s.state.backend.stats().snapshot()
}

#[tokio::test]
async fn the_next_turn_continues_in_the_kept_process_writing_only_the_new_message() {
    let s = server(|_| {}).await;
    let a1 = ask(&s, "key-a", &[("user", "first")]).await;
    assert_eq!(a1, "echo: first");
    let p1 = pid_of(&s, "first");
    assert_eq!(s.state.backend.kept_pids(), [p1]);
    let a2 = ask(
        &s,
        "key-a",
        &[("user", "first"), ("assistant", &a1), ("user", "second")],
    )
    .await;
    assert_eq!(a2, "echo: second");
    assert_eq!(pid_of(&s, "second"), p1, "continued in the same process");
    let a3 = ask(
        &s,
        "key-a",
        &[
            ("user", "first"),
            ("assistant", &a1),
            ("user", "second"),
            ("assistant", &a2),
            ("user", "third"),
        ],
    )
    .await;
    assert_eq!(a3, "echo: third");
    assert_eq!(pid_of(&s, "third"), p1);
    // One process for the whole conversation, and it received each message once.
    assert_eq!(stats(&s).spawned_total, 1, "{:?}", stats(&s));
    assert_eq!(user_lines(&s).len(), 3);
    assert_eq!(stats(&s).kept_hits_total, 2);
    let metrics = s.state.metrics.render();
    assert!(
        metrics.contains("ccgate_conversations_continued_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn another_api_key_never_continues_a_kept_conversation() {
    let s = server(|_| {}).await;
    let a1 = ask(&s, "key-a", &[("user", "secret plan")]).await;
    let pa = pid_of(&s, "secret plan");
    let history = [
        ("user", "secret plan"),
        ("assistant", a1.as_str()),
        ("user", "more"),
    ];
    let _ = ask(&s, "key-b", &history).await;
    let pb = pid_of(&s, "more");
    assert_ne!(pb, pa, "key-b got key-a's process");
    // key-b's run was fresh: it resumed the history from a session file.
    let log = std::fs::read_to_string(&s.log_file).unwrap();
    assert!(log.contains("RESUME_LINE:"), "{log}");
    // key-a's process is still kept, untouched.
    assert!(s.state.backend.kept_pids().contains(&pa));
}

#[tokio::test]
async fn conversations_sharing_a_prefix_never_share_a_process() {
    let s = server(|_| {}).await;
    let a1 = ask(&s, "key-a", &[("user", "start")]).await;
    let root = pid_of(&s, "start");
    let x = [
        ("user", "start"),
        ("assistant", a1.as_str()),
        ("user", "left"),
    ];
    let y = [
        ("user", "start"),
        ("assistant", a1.as_str()),
        ("user", "right"),
    ];
    let ax = ask(&s, "key-a", &x).await;
    let ay = ask(&s, "key-a", &y).await;
    let (px, py) = (pid_of(&s, "left"), pid_of(&s, "right"));
    assert_eq!(px, root, "the first branch continues the kept process");
    assert_ne!(py, px, "the second branch runs on its own");
    // Each branch's next turn goes to its own process.
    let mut x2: Vec<(&str, &str)> = x.to_vec();
    x2.extend([("assistant", ax.as_str()), ("user", "left again")]);
    let mut y2: Vec<(&str, &str)> = y.to_vec();
    y2.extend([("assistant", ay.as_str()), ("user", "right again")]);
    ask(&s, "key-a", &y2).await;
    ask(&s, "key-a", &x2).await;
    assert_eq!(pid_of(&s, "left again"), px);
    assert_eq!(pid_of(&s, "right again"), py);
}

#[tokio::test]
async fn an_edited_history_gets_a_fresh_run() {
    let s = server(|_| {}).await;
    let _ = ask(&s, "key-a", &[("user", "q")]).await;
    let p = pid_of(&s, "q");
    // The client regenerated: the assistant turn is not what the kept process answered.
    let _ = ask(
        &s,
        "key-a",
        &[("user", "q"), ("assistant", "edited"), ("user", "n")],
    )
    .await;
    assert_ne!(pid_of(&s, "n"), p);
    assert_eq!(stats(&s).kept_hits_total, 0);
    assert!(stats(&s).kept_misses_total >= 1);
}

#[tokio::test]
async fn kept_processes_are_bounded_expire_and_give_way() {
    // Cap 1: keeping a second conversation ends the first's process.
    let s = server(|c| c.cli.keep_conversations = 1).await;
    let _ = ask(&s, "key-a", &[("user", "one")]).await;
    let p1 = pid_of(&s, "one");
    let _ = ask(&s, "key-a", &[("user", "two")]).await;
    let p2 = pid_of(&s, "two");
    assert!(eventually(Duration::from_secs(5), || !alive(p1)).await);
    assert_eq!(s.state.backend.kept_pids(), [p2]);

    // A reload drains them (possibly stale state), like the pool.
    std::fs::write(
        &s.rules_path,
        std::fs::read_to_string(&s.rules_path).unwrap() + "\n# changed\n",
    )
    .unwrap();
    // (api_keys are client keys: the reload goes through the reloader, as /admin/reload does.)
    let attempt = s
        .state
        .reloader
        .reload(ccgate::reload::Trigger::Admin)
        .await;
    assert!(attempt.changed, "{attempt:?}");
    assert!(eventually(Duration::from_secs(5), || !alive(p2)).await);
    assert!(s.state.backend.kept_pids().is_empty());

    // Idle timeout.
    let s = server(|c| c.cli.conversation_idle_timeout = 0.5).await;
    let _ = ask(&s, "key-a", &[("user", "idle")]).await;
    let p = pid_of(&s, "idle");
    assert!(alive(p));
    assert!(
        eventually(Duration::from_secs(5), || !alive(p)).await,
        "not expired"
    );
    assert!(s.state.backend.kept_pids().is_empty());
    assert_eq!(stats(&s).kept_expired_total, 1);

    // One slot, held by a kept process: a new request evicts it instead of waiting.
    let s = server(|c| {
        c.cli.max_concurrent = 1;
        c.cli.queue_size = 0;
    })
    .await;
    let _ = ask(&s, "key-a", &[("user", "holder")]).await;
    let holder = pid_of(&s, "holder");
    let t = std::time::Instant::now();
    let _ = ask(&s, "key-a", &[("user", "newcomer")]).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(5), || !alive(holder)).await);
    assert_eq!(stats(&s).queue_full_total, 0, "{:?}", stats(&s));
    assert!(stats(&s).kept_evicted_total >= 1);
}

#[tokio::test]
async fn no_kept_process_survives_the_server() {
    let s = server(|_| {}).await;
    let _ = ask(&s, "key-a", &[("user", "bye")]).await;
    let p = pid_of(&s, "bye");
    assert!(alive(p));
    s.shutdown().await;
    assert!(!alive(p), "kept process {p} outlived serve");
}

#[tokio::test]
async fn usage_reports_the_clis_cache_figures_in_both_apis() {
    // The fake CLI's result: 12 input, 5 cache creation, 7 cache read tokens.
    let s = server(|_| {}).await;
    let v = post_as_a(
        &s,
        "/v1/chat/completions",
        &crate::harness::chat_body("hi", false),
    )
    .await;
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 7,
        "{v}"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 12 + 5 + 7, "{v}");
    let v = post_as_a(
        &s,
        "/v1/messages",
        &crate::harness::messages_body("hi", false),
    )
    .await;
    assert_eq!(v["usage"]["cache_read_input_tokens"], 7, "{v}");
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 5, "{v}");
    assert_eq!(v["usage"]["input_tokens"], 12, "{v}");
}
