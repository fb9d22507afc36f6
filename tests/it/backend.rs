//! Integration tests of the CLI process driver (`ccgate::backend`) against the fake CLI:
//! every scenario's events / success / failure facts, streaming before exit, cancellation,
//! the three watchdogs, spawn errors, the concurrency queue, argv/stdin/system-prompt
//! plumbing, the stdout line limit, and the absence of zombies and orphans.

use std::path::Path;
use std::time::{Duration, Instant};

use ccgate::backend::{Backend, CliEvent, CliRequest, CliRun, Success};
use ccgate::rules::{FailureFacts, GatewayCondition, SpawnErrorKind, TimeoutKind};
use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;

use crate::support::{fake_settings, set_env};

const TEST_LIMIT: Duration = Duration::from_secs(15);

type Outcome = Result<Success, Box<FailureFacts>>;

fn req(prompt: &str) -> CliRequest {
    CliRequest {
        prompt: prompt.to_string(),
        ..CliRequest::default()
    }
}

/// All events up to and including `Done`, plus the final outcome.
async fn collect(mut run: CliRun) -> (Vec<CliEvent>, Outcome) {
    let fut = async {
        let mut events = Vec::new();
        while let Some(ev) = run.recv().await {
            if let CliEvent::Done(r) = &ev {
                let r = r.clone();
                events.push(ev);
                return (events, r);
            }
            events.push(ev);
        }
        panic!("channel closed without Done; events: {events:?}");
    };
    tokio::time::timeout(TEST_LIMIT, fut)
        .await
        .expect("run did not finish in time")
}

async fn run_scenario(scenario: &str) -> (Vec<CliEvent>, Outcome) {
    let backend = Backend::new(fake_settings(scenario));
    collect(backend.start(req("hi"))).await
}

async fn failure(scenario: &str) -> (Vec<CliEvent>, FailureFacts) {
    let (events, out) = run_scenario(scenario).await;
    match out {
        Err(f) => (events, *f),
        Ok(s) => panic!("{scenario}: expected a failure, got {s:?}"),
    }
}

fn deltas(events: &[CliEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            CliEvent::TextDelta(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// The state letter from /proc/<pid>/stat, or None if there is no such process.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

fn group_gone(pid: u32) -> bool {
    let pgid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    killpg(pgid, None) == Err(Errno::ESRCH)
}

/// Wait (up to 2 s) until the process and its whole group are gone.
async fn assert_group_gone(pid: u32) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if group_gone(pid) && proc_state(pid).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "process group {pid} still alive (state {:?})",
        proc_state(pid)
    );
}

fn read_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("fake log written")
        .lines()
        .map(str::to_string)
        .collect()
}

// ------------------------------------------------------------------ success paths

#[tokio::test]
async fn success_streams_deltas_then_returns_result() {
    let (events, out) = run_scenario("success").await;
    let s = out.expect("success");
    assert!(
        matches!(&events[0], CliEvent::Started { model: Some(m), session_id: Some(_) } if m == "claude-opus-5-5"),
        "first event: {:?}",
        events[0]
    );
    let d = deltas(&events);
    assert!(d.len() > 1, "reply split into several deltas: {d:?}");
    assert_eq!(d.concat(), "Hello from the fake CLI.");
    assert!(events.contains(&CliEvent::AssistantText("Hello from the fake CLI.".into())));
    assert_eq!(s.text, "Hello from the fake CLI.");
    assert_eq!(s.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(s.usage.input_tokens, 12);
    assert_eq!(s.usage.output_tokens, d.len() as u64);
    assert_eq!(s.usage.cache_creation_input_tokens, 5);
    assert_eq!(s.usage.cache_read_input_tokens, 7);
    assert_eq!(s.total_cost_usd, Some(0.000168));
    assert_eq!(s.num_turns, Some(1));
    assert!(s.session_id.is_some());
    assert_eq!(s.model.as_deref(), Some("claude-opus-5-5"));
    assert!(matches!(events.last(), Some(CliEvent::Done(Ok(_)))));
}

#[tokio::test]
async fn abandoned_stream_reports_abandon_then_final_text() {
    let (events, out) = run_scenario("abandoned_stream").await;
    assert_eq!(out.expect("success").text, "Hello from the fake CLI.");
    let pos = |want: &CliEvent| events.iter().position(|e| e == want);
    let abandoned = pos(&CliEvent::Abandoned).expect("Abandoned event");
    let hello = pos(&CliEvent::TextDelta("Hello".into())).expect("first delta");
    let text = pos(&CliEvent::AssistantText("Hello from the fake CLI.".into())).expect("text");
    assert!(hello < abandoned && abandoned < text, "{events:?}");
}

#[tokio::test]
async fn slow_deltas_arrive_while_the_process_is_alive() {
    let mut settings = fake_settings("slow");
    set_env(&mut settings, "FAKE_CLAUDE_DELAY", "0.3");
    set_env(&mut settings, "FAKE_CLAUDE_TEXT", "one two three four");
    let mut run = Backend::new(settings).start(req("hi"));
    let first = tokio::time::timeout(TEST_LIMIT, async {
        loop {
            match run.recv().await {
                Some(CliEvent::TextDelta(t)) => return t,
                Some(CliEvent::Done(r)) => panic!("done before any delta: {r:?}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
    })
    .await
    .expect("first delta in time");
    let at_first = Instant::now();
    assert_eq!(first, "one");
    let pid = run.pid().expect("pid known once output flows");
    let state = proc_state(pid).expect("process still exists at the first delta");
    assert_ne!(state, 'Z', "process must still be running, not a zombie");
    let (events, out) = collect(run).await;
    assert_eq!(out.expect("success").text, "one two three four");
    assert_eq!(deltas(&events).concat(), " two three four");
    assert!(
        at_first.elapsed() >= Duration::from_millis(700),
        "three more deltas 0.3 s apart came after the first one"
    );
    assert_group_gone(pid).await;
}

#[tokio::test]
async fn argv_stdin_and_system_prompt_reach_the_cli_as_specified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("fake.log");
    let mut settings = fake_settings("success");
    set_env(
        &mut settings,
        "FAKE_CLAUDE_LOG",
        log.to_str().expect("utf-8 path"),
    );
    set_env(&mut settings, "FAKE_CLAUDE_ECHO", "1");
    settings.extra_args = vec!["--max-turns".into(), "3".into()];
    settings.workdir = dir.path().to_path_buf();
    let prompt = "--model x --tools Bash\n\"quoted\" \\ tab\tünï ✓";
    let request = CliRequest {
        prompt: prompt.to_string(),
        system_prompt: Some("Be terse.\nSecond line.".to_string()),
        model: Some("--evil-model".to_string()),
        ..CliRequest::default()
    };
    let (_, out) = collect(Backend::new(settings).start(request)).await;
    let s = out.expect("success");
    // The prompt arrived intact through stdin (the fake echoes it back).
    assert_eq!(s.text, format!("echo: {prompt}"));
    // The equals form keeps a model starting with `--` a value.
    assert_eq!(s.model.as_deref(), Some("--evil-model"));

    let lines = read_log(&log);
    let args: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG:"))
        .collect();
    let sp = args
        .iter()
        .position(|a| *a == "--system-prompt-file")
        .expect("--system-prompt-file passed");
    let sp_path = args[sp + 1].to_string();
    let expected: Vec<&str> = vec![
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--no-session-persistence",
        "--tools",
        "",
        "--strict-mcp-config",
        "--model=--evil-model",
        "--system-prompt-file",
        &sp_path,
        "--max-turns",
        "3",
    ];
    assert_eq!(args, expected);
    let stdin: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("STDIN:"))
        .collect();
    let want = format!(
        r#"{{"type":"user","message":{{"role":"user","content":{}}}}}"#,
        serde_json::to_string(prompt).expect("json")
    );
    assert_eq!(stdin, vec![want.as_str()], "exactly one stdin line");
    // The system prompt file's content reached the CLI; the file is gone after the run.
    let content_at = lines
        .iter()
        .position(|l| l.starts_with("SYSTEM_PROMPT_FILE_CONTENT:"))
        .expect("system prompt logged");
    assert_eq!(lines[content_at], "SYSTEM_PROMPT_FILE_CONTENT:Be terse.");
    assert_eq!(lines[content_at + 1], "Second line.");
    assert!(
        !Path::new(&sp_path).exists(),
        "temp file deleted after the run"
    );
    assert!(lines.contains(&format!("CWD:{}", dir.path().display())));
    assert!(lines.contains(&"ENV:CLAUDECODE unset".to_string()));
}

#[tokio::test]
async fn default_flags_without_system_prompt_with_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("fake.log");
    let mut settings = fake_settings("success");
    set_env(
        &mut settings,
        "FAKE_CLAUDE_LOG",
        log.to_str().expect("utf-8 path"),
    );
    settings.tools = true;
    let (_, out) = collect(Backend::new(settings).start(req("hi"))).await;
    out.expect("success");
    let lines = read_log(&log);
    let args: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG:"))
        .collect();
    assert_eq!(
        args,
        vec![
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--no-session-persistence",
            "--strict-mcp-config",
            "--system-prompt",
            "",
        ]
    );
}

#[tokio::test]
async fn scenario_file_and_inline_token_switch_behaviour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("scenario");
    let mut settings = fake_settings("success");
    set_env(
        &mut settings,
        "FAKE_CLAUDE_SCENARIO_FILE",
        file.to_str().expect("utf-8"),
    );
    let backend = Backend::new(settings);

    std::fs::write(&file, "not_logged_in\n").expect("write");
    let (_, out) = collect(backend.start(req("hi"))).await;
    assert_eq!(
        out.expect_err("logged out").assistant_error.as_deref(),
        Some("authentication_failed")
    );

    std::fs::write(&file, "").expect("write");
    let (_, out) = collect(backend.start(req("hi"))).await;
    out.expect("empty file: env scenario (success)");

    std::fs::write(&file, "success").expect("write");
    let (_, out) = collect(backend.start(req("please [[scenario:rate_limit]] now"))).await;
    assert_eq!(out.expect_err("token wins").api_error_status, Some(429));
}

// ------------------------------------------------------------------ failure scenarios

#[tokio::test]
async fn api_error_scenarios_give_the_right_facts() {
    struct Want {
        scenario: &'static str,
        assistant_error: &'static str,
        status: Option<u16>,
        api_error_type: Option<&'static str>,
        text_prefix: &'static str,
        retries: usize,
    }
    let cases = [
        Want {
            scenario: "not_logged_in",
            assistant_error: "authentication_failed",
            status: None,
            api_error_type: None,
            text_prefix: "Not logged in · Please run /login",
            retries: 0,
        },
        Want {
            scenario: "invalid_api_key",
            assistant_error: "authentication_failed",
            status: Some(401),
            api_error_type: Some("authentication_error"),
            text_prefix: "Invalid API key",
            retries: 2,
        },
        Want {
            scenario: "network_error",
            assistant_error: "server_error",
            status: None,
            api_error_type: None,
            text_prefix: "API Error: Can't reach the API server",
            retries: 2,
        },
        Want {
            scenario: "rate_limit",
            assistant_error: "rate_limit",
            status: Some(429),
            api_error_type: Some("rate_limit_error"),
            text_prefix: "API Error: Request rejected (429)",
            retries: 2,
        },
        Want {
            scenario: "overloaded",
            assistant_error: "server_error",
            status: Some(529),
            api_error_type: Some("overloaded_error"),
            text_prefix: "API Error: Repeated 529",
            retries: 2,
        },
        Want {
            scenario: "server_error",
            assistant_error: "server_error",
            status: Some(500),
            api_error_type: Some("api_error"),
            text_prefix: "API Error: 500",
            retries: 2,
        },
        Want {
            scenario: "usage_limit",
            assistant_error: "rate_limit",
            status: Some(429),
            api_error_type: Some("rate_limit_error"),
            text_prefix: "You've hit your session limit · resets 1pm (Europe/Lisbon)",
            retries: 0,
        },
        Want {
            scenario: "model_not_found",
            assistant_error: "model_not_found",
            status: Some(404),
            api_error_type: Some("not_found_error"),
            text_prefix: "There's an issue with the selected model (claude-opus-5-5)",
            retries: 0,
        },
        Want {
            scenario: "permission_403",
            assistant_error: "authentication_failed",
            status: Some(403),
            api_error_type: Some("permission_error"),
            text_prefix: "Failed to authenticate. API Error: 403",
            retries: 0,
        },
    ];
    for w in cases {
        let (events, f) = failure(w.scenario).await;
        let s = w.scenario;
        assert!(
            matches!(events[0], CliEvent::Started { .. }),
            "{s}: {events:?}"
        );
        assert_eq!(f.assistant_error.as_deref(), Some(w.assistant_error), "{s}");
        assert!(
            f.assistant_error_text
                .as_deref()
                .unwrap_or("")
                .starts_with(w.text_prefix),
            "{s}: {f:?}"
        );
        assert!(f.result_seen && f.result_is_error, "{s}");
        assert_eq!(f.result_subtype.as_deref(), Some("success"), "{s}");
        assert!(
            f.result_text
                .as_deref()
                .unwrap_or("")
                .starts_with(w.text_prefix),
            "{s}"
        );
        assert_eq!(f.terminal_reason.as_deref(), Some("api_error"), "{s}");
        assert_eq!(f.api_error_status, w.status, "{s}");
        assert_eq!(f.api_error_type.as_deref(), w.api_error_type, "{s}");
        assert_eq!(f.retry_errors.len(), w.retries, "{s}");
        assert_eq!(
            f.retry_statuses,
            vec![w.status.unwrap_or(0); if w.status.is_some() { w.retries } else { 0 }],
            "{s}"
        );
        assert_eq!(f.exit_code, Some(1), "{s}");
        assert_eq!(f.signal, None, "{s}");
        assert_eq!(f.timeout, None, "{s}");
        assert_eq!(f.condition, None, "{s}");
        assert!(
            f.stderr_tail.is_empty(),
            "{s}: API errors print nothing on stderr"
        );
        assert!(deltas(&events).is_empty(), "{s}");
    }
    let (_, f) = failure("network_error").await;
    assert_eq!(f.api_error.as_deref(), Some("connection_failed"));
    assert_eq!(f.retry_errors, vec!["unknown", "unknown"]);
}

#[tokio::test]
async fn result_error_subtypes_and_process_failures() {
    let (_, f) = failure("max_turns").await;
    assert_eq!(f.result_subtype.as_deref(), Some("error_max_turns"));
    assert_eq!(f.result_errors, vec!["Reached maximum number of turns (1)"]);
    assert_eq!(f.result_text, None, "error subtypes have no result key");
    assert_eq!(f.terminal_reason.as_deref(), Some("max_turns"));
    assert_eq!(f.exit_code, Some(1));

    let (events, f) = failure("resume_not_found").await;
    assert!(
        !events.iter().any(|e| matches!(e, CliEvent::Started { .. })),
        "no init"
    );
    assert_eq!(f.result_subtype.as_deref(), Some("error_during_execution"));
    assert!(f.result_errors[0].starts_with("No conversation found with session ID: "));
    assert!(f
        .stderr_tail
        .contains("No conversation found with session ID"));

    let (events, f) = failure("interrupted").await;
    assert_eq!(deltas(&events), vec!["Hello", " from"]);
    assert_eq!(f.result_subtype.as_deref(), Some("error_during_execution"));
    assert_eq!(f.terminal_reason.as_deref(), Some("aborted_streaming"));

    let (events, f) = failure("usage_error").await;
    assert_eq!(events.len(), 1, "only Done");
    assert!(!f.result_seen);
    assert_eq!(f.exit_code, Some(1));
    assert_eq!(f.stderr_tail, "error: unknown option '--bogus'\n");
    assert_eq!(f.condition, Some(GatewayCondition::NoResult));

    let (_, f) = failure("garbage").await;
    assert_eq!(f.exit_code, Some(0));
    assert_eq!(f.condition, Some(GatewayCondition::BadJson));

    let (_, f) = failure("crash").await;
    assert_eq!(f.exit_code, Some(3));
    assert!(
        f.stderr_tail.starts_with("TypeError: "),
        "{:?}",
        f.stderr_tail
    );
    assert!(f.stderr_tail.contains("/$bunfs/root/claude:1:1"));
    assert_eq!(f.condition, Some(GatewayCondition::NoResult));

    let (_, f) = failure("killed").await;
    assert_eq!((f.exit_code, f.signal), (None, Some(9)));
    assert_eq!(f.condition, Some(GatewayCondition::NoResult));

    let (events, f) = failure("exit0_no_output").await;
    assert_eq!(events.len(), 1);
    assert_eq!(f.exit_code, Some(0));
    assert_eq!(f.condition, Some(GatewayCondition::NoResult));
}

#[tokio::test]
async fn stderr_tail_keeps_only_the_last_bytes() {
    let mut settings = fake_settings("crash");
    settings.stderr_tail_bytes = 16;
    let (_, out) = collect(Backend::new(settings).start(req("hi"))).await;
    let f = out.expect_err("crash");
    let full = "TypeError: undefined is not an object (evaluating 'H.content')\n    at <anonymous> (/$bunfs/root/claude:1:1)\n";
    assert_eq!(f.stderr_tail, &full[full.len() - 16..]);
    assert!(f.stderr_tail.len() <= 16);
    assert!(f.stderr_tail.ends_with("claude:1:1)\n"));
}

#[tokio::test]
async fn oversized_stdout_line_is_a_protocol_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("big-line-cli");
    // 1.2 MB JSON line, then a perfectly good success result.
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r line\nprintf '{\"type\":\"system\",\"subtype\":\"init\",\"pad\":\"'\n\
         head -c 1200000 /dev/zero | sed 's/\\x0/a/g'\nprintf '\"}\\n'\n\
         printf '%s\\n' '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\"}'\n",
    )
    .expect("write script");
    let mut perms = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    let mut settings = fake_settings("success");
    settings.command = script;
    let (_, out) = collect(Backend::new(settings).start(req("hi"))).await;
    let f = out.expect_err("an over-long line makes the run fail");
    assert_eq!(f.condition, Some(GatewayCondition::BadJson));
    assert_eq!(f.exit_code, Some(0));
}

// ------------------------------------------------------------------ spawn errors

#[tokio::test]
async fn spawn_errors_are_classified() {
    let mut settings = fake_settings("success");
    settings.command = "/nonexistent/dir/claude".into();
    let (events, out) = collect(Backend::new(settings.clone()).start(req("hi"))).await;
    assert_eq!(events.len(), 1);
    let f = out.expect_err("missing");
    assert_eq!(f.spawn_error, Some(SpawnErrorKind::NotFound));
    assert!(
        f.spawn_error_message
            .as_deref()
            .unwrap_or("")
            .contains("No such file"),
        "{f:?}"
    );

    settings.command = "ccgate-no-such-claude-binary".into();
    let (_, out) = collect(Backend::new(settings.clone()).start(req("hi"))).await;
    assert_eq!(
        out.expect_err("not on PATH").spawn_error,
        Some(SpawnErrorKind::NotFound)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let not_exec = dir.path().join("claude");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    settings.command = not_exec;
    let (_, out) = collect(Backend::new(settings.clone()).start(req("hi"))).await;
    assert_eq!(
        out.expect_err("not executable").spawn_error,
        Some(SpawnErrorKind::PermissionDenied)
    );

    let mut settings = fake_settings("success");
    settings.workdir = dir.path().join("missing-workdir");
    let (_, out) = collect(Backend::new(settings).start(req("hi"))).await;
    let f = out.expect_err("bad workdir");
    assert_eq!(f.spawn_error, Some(SpawnErrorKind::Other));
    assert!(f
        .spawn_error_message
        .as_deref()
        .unwrap_or("")
        .contains("missing-workdir"));
}

// ------------------------------------------------------------------ timeouts

#[tokio::test]
async fn start_timeout_kills_a_silent_cli() {
    let mut settings = fake_settings("hang");
    settings.start_timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    let run = Backend::new(settings).start(req("hi"));
    let (events, out) = collect(run).await;
    let f = out.expect_err("timeout");
    assert_eq!(f.timeout, Some(TimeoutKind::Start));
    assert_eq!(f.signal, Some(9), "killed by us");
    assert_eq!(events.len(), 1);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn inactivity_timeout_after_first_output() {
    let mut settings = fake_settings("hang_after_init");
    settings.inactivity_timeout = Duration::from_millis(500);
    let backend = Backend::new(settings);
    let run = backend.start(req("hi"));
    let t0 = Instant::now();
    let (events, out) = collect(run).await;
    let f = out.expect_err("timeout");
    assert_eq!(f.timeout, Some(TimeoutKind::Inactivity));
    assert!(matches!(events[0], CliEvent::Started { .. }));
    assert_eq!(
        deltas(&events),
        vec!["Hello"],
        "output before the stall was forwarded"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(backend.stats().snapshot().timeouts_total, 1);
}

#[tokio::test]
async fn total_timeout_while_streaming() {
    let mut settings = fake_settings("slow");
    set_env(&mut settings, "FAKE_CLAUDE_DELAY", "0.2");
    set_env(&mut settings, "FAKE_CLAUDE_TEXT", "a b c d e f g h i j k l");
    let request = CliRequest {
        timeout: Some(Duration::from_millis(1000)),
        ..req("hi")
    };
    let t0 = Instant::now();
    let (events, out) = collect(Backend::new(settings).start(request)).await;
    let f = out.expect_err("timeout");
    assert_eq!(f.timeout, Some(TimeoutKind::Total));
    assert!(!deltas(&events).is_empty());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

// ------------------------------------------------------------------ cancellation

#[tokio::test]
async fn dropping_the_run_kills_the_whole_group() {
    let backend = Backend::new(fake_settings("hang_after_init"));
    let mut run = backend.start(req("hi"));
    tokio::time::timeout(TEST_LIMIT, async {
        while let Some(ev) = run.recv().await {
            if matches!(ev, CliEvent::TextDelta(_)) {
                return;
            }
        }
    })
    .await
    .expect("first delta");
    let pid = run.pid().expect("pid");
    assert!(!group_gone(pid), "running before the drop");
    drop(run);
    // The fake sleeps in `sleep 1` children: the group check proves no orphan survives.
    assert_group_gone(pid).await;
    let t0 = Instant::now();
    // The driver counts the run once its process is reaped; on a loaded 2-core CI machine
    // that took over 2 s once, so wait as long as every other step of this file may.
    loop {
        let stats = backend.stats().snapshot();
        if (stats.in_flight, stats.cancelled_total) == (0, 1) || t0.elapsed() > TEST_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = backend.stats().snapshot();
    assert_eq!(
        (stats.in_flight, stats.cancelled_total),
        (0, 1),
        "{stats:?}"
    );
}

// ------------------------------------------------------------------ concurrency limiter

#[tokio::test]
async fn queue_full_and_queue_wait() {
    let mut settings = fake_settings("hang_after_init");
    settings.max_concurrent = 1;
    settings.queue_size = 0;
    let backend = Backend::new(settings.clone());
    let mut busy = backend.start(req("hi"));
    let (events, out) = collect(backend.start(req("hi"))).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        out.expect_err("refused").condition,
        Some(GatewayCondition::QueueFull)
    );
    assert_eq!(backend.stats().snapshot().queue_full_total, 1);

    // The health probe bypasses the limiter.
    let mut probe_settings = settings.clone();
    set_env(&mut probe_settings, "FAKE_CLAUDE_SCENARIO", "success");
    let probe_backend = Backend::new(probe_settings);
    let _probe_busy = probe_backend.start(CliRequest {
        prompt: "[[scenario:hang_after_init]]".into(),
        ..req("")
    });
    let probe = CliRequest {
        bypass_queue: true,
        ..req("hi")
    };
    let (_, out) = collect(probe_backend.start(probe)).await;
    out.expect("bypass_queue skips the limiter");

    // A queued request's wait counts against its total timeout.
    settings.queue_size = 1;
    let backend2 = Backend::new(settings);
    let _busy2 = backend2.start(req("hi"));
    let queued = CliRequest {
        timeout: Some(Duration::from_millis(300)),
        ..req("hi")
    };
    let run = backend2.start(queued);
    assert_eq!(backend2.stats().snapshot().queued, 1);
    let (events, out) = collect(run).await;
    let f = out.expect_err("timed out in the queue");
    assert_eq!(f.timeout, Some(TimeoutKind::Total));
    assert_eq!(events.len(), 1);
    assert_eq!(backend2.stats().snapshot().queued, 0);

    // Make sure `busy` really was running the whole time.
    assert!(matches!(busy.recv().await, Some(CliEvent::Started { .. })));
}

#[tokio::test]
async fn queued_run_starts_when_a_slot_frees() {
    let mut settings = fake_settings("slow");
    set_env(&mut settings, "FAKE_CLAUDE_DELAY", "0.1");
    settings.max_concurrent = 1;
    settings.queue_size = 2;
    let backend = Backend::new(settings);
    let runs: Vec<CliRun> = (0..3).map(|_| backend.start(req("hi"))).collect();
    assert_eq!(backend.stats().snapshot().queued, 2);
    for run in runs {
        let (_, out) = collect(run).await;
        out.expect("every queued run eventually succeeds");
    }
    assert_eq!(backend.stats().snapshot().spawned_total, 3);
}

// ------------------------------------------------------------------ no zombies / orphans

/// Children of this process that are zombies.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let ppid = fields.next();
        if state == Some("Z") && ppid == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_zombies_after_many_sequential_and_concurrent_runs() {
    let mut settings = fake_settings("success");
    settings.max_concurrent = 50;
    let backend = Backend::new(settings);
    let mut pids = Vec::new();
    let t0 = Instant::now();
    for i in 0..200 {
        let prompt = if i % 10 == 3 {
            "[[scenario:crash]]"
        } else {
            "hi"
        };
        let run = backend.start(req(prompt));
        let (_, out) = collect(run).await;
        assert_eq!(out.is_ok(), i % 10 != 3, "run {i}");
    }
    let runs: Vec<CliRun> = (0..50).map(|_| backend.start(req("hi"))).collect();
    let handles: Vec<_> = runs
        .into_iter()
        .map(|run| {
            tokio::spawn(async move {
                let mut run = run;
                let mut pid = None;
                loop {
                    match run.recv().await {
                        Some(CliEvent::Done(r)) => return (pid, r.is_ok()),
                        Some(_) => pid = pid.or(run.pid()),
                        None => return (pid, false),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let (pid, ok) = h.await.expect("join");
        assert!(ok);
        pids.extend(pid);
    }
    let elapsed = t0.elapsed();
    let stats = backend.stats().snapshot();
    assert_eq!(stats.spawned_total, 250);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.first_line_count, 250);
    // None of our concurrent runs left a process or zombie behind …
    for pid in pids {
        if let Some(state) = proc_state(pid) {
            panic!("pid {pid} still present in state {state}");
        }
    }
    // … and no zombie child of this process lingers (other tests' runs reap within ms).
    let t1 = Instant::now();
    while !zombie_children().is_empty() && t1.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(zombie_children(), Vec::<u32>::new());
    eprintln!("250 runs in {elapsed:?}");
}

// ------------------------------------------------------------------ the fake CLI itself

const STREAM_ARGS: [&str; 7] = [
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

fn run_fake_directly(scenario: &str, args: &[&str]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(crate::support::fake_cli_path())
        .args(args)
        .env("FAKE_CLAUDE_SCENARIO", scenario)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fake");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin
            .write_all(b"{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"hi\"}}\n");
    }
    child.wait_with_output().expect("wait fake")
}

#[test]
fn fake_cli_prints_valid_json_on_every_line() {
    let scenarios = [
        "success",
        "not_logged_in",
        "invalid_api_key",
        "network_error",
        "rate_limit",
        "overloaded",
        "server_error",
        "usage_limit",
        "model_not_found",
        "permission_403",
        "max_turns",
        "resume_not_found",
        "abandoned_stream",
        "interrupted",
        "crash",
        "killed",
    ];
    for scenario in scenarios {
        let out = run_fake_directly(scenario, &STREAM_ARGS);
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let mut types = Vec::new();
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{scenario}: bad JSON line {line:?}: {e}"));
            types.push(v["type"].as_str().unwrap_or("?").to_string());
            if v["type"] != "result" {
                assert!(
                    v["session_id"].is_string() && v["uuid"].is_string(),
                    "{scenario}: {line}"
                );
            }
        }
        let expect_result = !matches!(scenario, "crash" | "killed");
        assert_eq!(
            types.last().map(String::as_str) == Some("result"),
            expect_result,
            "{scenario}: {types:?}"
        );
    }
}

#[test]
fn fake_cli_requires_verbose_like_the_real_one() {
    let out = run_fake_directly("success", &["-p", "--output-format", "stream-json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: When using --print, --output-format=stream-json requires --verbose\n"
    );
    let out = run_fake_directly("success", &["-p", "--output-format", "xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("argument 'xml' is invalid"));
}

#[test]
fn fake_cli_exits_143_on_sigterm_within_a_second() {
    for scenario in ["hang", "hang_after_init"] {
        let mut child = std::process::Command::new(crate::support::fake_cli_path())
            .args(STREAM_ARGS)
            .env("FAKE_CLAUDE_SCENARIO", scenario)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn fake");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(
                    b"{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"hi\"}}\n",
                )
                .expect("write");
        }
        std::thread::sleep(Duration::from_millis(300));
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let t0 = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(143), "{scenario}");
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{scenario}: {:?}",
            t0.elapsed()
        );
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, after)| after.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
    }
}

#[tokio::test]
async fn a_descendant_that_calls_setsid_does_not_outlive_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let mut settings = fake_settings("setsid_child");
    settings.tools = true;
    set_env(
        &mut settings,
        "FAKE_CLAUDE_ESCAPEE_PIDFILE",
        &pidfile.display().to_string(),
    );
    let backend = Backend::new(settings);
    let (_, out) = collect(backend.start(req("hi"))).await;
    assert!(out.is_ok(), "{out:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // It really left the run's group and session.
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still = alive(pid);
    if still {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(!still, "the setsid'd descendant {pid} survived its run");
}
