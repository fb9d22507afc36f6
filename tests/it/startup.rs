//! `ccgate serve` at start (the binary, with the fake CLI): it logs the CLI's version and
//! capabilities (no model call), warns about a version outside the tested range, shows
//! them in `/v1/auth/status`; and a start-up probe that finds an account a person must
//! act on logs that line for the operator.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Serve {
    child: Child,
    rx: Receiver<String>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &[(&str, &str)]) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ccgate"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env("CCGATE_WATCH_RULES", "false")
        .env("CCGATE_LOG_LEVEL", "info")
        .env("CLAUDE_CONFIG_DIR", dir.path().join("claude"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ccgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = next(&rx, "ccgate listening");
    let addr = listening["listen"].as_str().unwrap().to_string();
    Serve {
        child,
        rx,
        addr,
        _dir: dir,
    }
}

/// The next JSON log line whose message is `message`.
fn next(rx: &Receiver<String>, message: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["message"] == message {
                return v;
            }
        }
    }
}

async fn status(addr: &str) -> Value {
    reqwest::get(format!("http://{addr}/v1/auth/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_cli_version_and_capabilities_are_logged_and_shown() {
    let s = serve(&[]);
    let checked = next(&s.rx, "Claude CLI checked");
    assert_eq!(checked["version"], "2.1.332", "{checked}");
    assert_eq!(checked["tested_range"], "2.1.332-2.1.336");
    assert_eq!(
        checked["capabilities"],
        "control_protocol=true sdk_mcp_servers=true json_schema=true resume=true",
        "{checked}"
    );
    assert_eq!(checked["level"], "INFO");
    let v = status(&s.addr).await;
    let cli = &v["cli"];
    assert_eq!(cli["version"], "2.1.332", "{v}");
    assert_eq!(cli["in_tested_range"], true, "{v}");
    assert_eq!(cli["capabilities"]["sdk_mcp_servers"], true, "{v}");
    assert_eq!(cli["capabilities"]["resume"], true, "{v}");
    assert_eq!(cli["problems"], serde_json::json!([]), "{v}");
}

#[tokio::test]
async fn a_version_outside_the_tested_range_is_warned_about() {
    let s = serve(&[("FAKE_CLAUDE_VERSION", "2.1.400")]);
    let warned = next(
        &s.rx,
        "the Claude CLI version is outside the tested range; it may behave differently",
    );
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["version"], "2.1.400");
    let v = status(&s.addr).await;
    assert_eq!(v["cli"]["in_tested_range"], false, "{v}");
    assert!(
        v["cli"]["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("outside the tested range 2.1.332-2.1.336")),
        "{v}"
    );
}

#[tokio::test]
async fn an_account_a_person_must_act_on_is_logged_for_the_operator() {
    let s = serve(&[("FAKE_CLAUDE_SCENARIO", "consumer_terms")]);
    let line = next(
        &s.rx,
        "a person must act on this account before it can serve again; it is out of service until a probe succeeds",
    );
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["account"], "default");
    assert_eq!(line["reason"], "consumer_terms_accept_on_web");
    assert!(
        line["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("https://claude.ai/settings/data-privacy-controls")),
        "{line}"
    );
}
