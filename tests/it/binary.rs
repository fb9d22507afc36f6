//! The `ccgate` binary itself: `serve` with JSON logs on stderr (one line per request with
//! request id, kind, status, CLI exit and duration), `/health`, and a clean SIGTERM stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn serve_logs_json_lines_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env("CCGATE_WATCH_RULES", "false")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_json = |want: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("expected log line");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if want(&v) {
                return v;
            }
        }
    };
    // No rules file in the working directory: the embedded defaults are used.
    let loaded = next_json(&|v| v["message"] == "rules loaded");
    assert_eq!(loaded["source"], "embedded", "{loaded}");
    let listening = next_json(&|v| v["message"] == "ccgate listening");
    let addr = listening["listen"].as_str().unwrap().to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = crate::harness::client();
        let r = c.get(format!("http://{addr}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-request-id", "log-me-1")
            .json(&crate::harness::chat_body("[[scenario:rate_limit]]", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let r = c
            .post(format!("http://{addr}/v1/completions"))
            .header("x-request-id", "log-me-2")
            .json(&crate::harness::chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
    let line = next_json(&|v| v["message"] == "request");
    assert_eq!(line["request_id"], "log-me-1");
    assert_eq!(line["status"], 429);
    assert_eq!(line["kind"], "rate_limit");
    assert_eq!(line["endpoint"], "chat_completions");
    // Numbers, not Debug text, so log pipelines can filter on them; absent when unknown.
    assert_eq!(line["cli_exit"], 1, "{line}");
    assert!(line.get("cli_signal").is_none(), "{line}");
    assert!(line["duration_ms"].is_u64());
    assert_eq!(line["level"], "INFO");
    // A request to an unknown endpoint is logged too (misconfigured clients show up).
    let line = next_json(&|v| v["message"] == "request");
    assert_eq!(line["request_id"], "log-me-2", "{line}");
    assert_eq!(line["endpoint"], "unknown", "{line}");
    assert_eq!(line["path"], "/v1/completions", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["kind"], "unknown_endpoint", "{line}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "ccgate did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_public_bind_without_keys() {
    let out = Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("CCGATE_API_KEYS")
        .env_remove("CCGATE_ALLOW_UNAUTHENTICATED")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on non-loopback"), "{err}");
}

/// Starting in a directory without `rules/` (the embedded rules, the watcher on by
/// default) is normal: an info line about the missing directory, no ERROR line.
#[test]
fn serve_without_a_rules_directory_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env_remove("CCGATE_WATCH_RULES")
        .env_remove("CCGATE_RULES")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let not_watching = |l: &str| l.contains("rules directory does not exist");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| not_watching(l)) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    // Serving (so the SIGTERM handler is in place) before stopping it.
    let addr = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "ccgate listening")
        .and_then(|v| v["listen"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("not listening:\n{}", lines.join("\n")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = rt.block_on(async {
        let r = crate::harness::client()
            .get(format!("http://{addr}/health"))
            .send();
        r.await.unwrap().status()
    });
    assert_eq!(health, 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(status.success(), "{status:?}");
    let all = lines.join("\n");
    let level = |l: &String| {
        serde_json::from_str::<Value>(l)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))["level"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(!lines.iter().any(|l| level(l) == "ERROR"), "{all}");
    let info = lines
        .iter()
        .find(|l| not_watching(l))
        .unwrap_or_else(|| panic!("no line about the missing rules directory:\n{all}"));
    assert_eq!(level(info), "INFO", "{info}");
    assert!(
        lines.iter().any(|l| l.contains("\"source\":\"embedded\"")),
        "{all}"
    );
}

#[test]
fn serve_ends_and_reaps_a_setsid_descendant_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env("CCGATE_CLI__TOOLS", "true")
        .env("CCGATE_WATCH_RULES", "false")
        // The run must end with its request (a kept process would outlive it by design).
        .env("CCGATE_CLI__KEEP_CONVERSATIONS", "0")
        .env("FAKE_CLAUDE_ESCAPEE_PIDFILE", &pidfile)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccgate");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Keep draining: ccgate logs every request.
        for line in stderr.lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "ccgate listening" {
                let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
            }
            if v["message"] != "request" && v["message"] != "ccgate listening" {
                eprintln!("ccgate: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ccgate listening");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = crate::harness::client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&crate::harness::chat_body(
                "[[scenario:setsid_child]]",
                false,
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed with its run and reaped by ccgate (its subreaper): not even a zombie is left.
    let proc_dir = format!("/proc/{pid}");
    let t0 = Instant::now();
    while std::path::Path::new(&proc_dir).exists() && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = std::fs::read_to_string(format!("{proc_dir}/stat")).ok();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.wait();
    assert!(left.is_none(), "the setsid'd descendant is left: {left:?}");
}
