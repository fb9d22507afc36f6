//! The rules subcommands through the real `ccgate` binary (assert_cmd) and the library.

use assert_cmd::Command;

fn ccgate() -> Command {
    let mut c = Command::cargo_bin("ccgate").unwrap();
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CCGATE_RULES");
    // The suite's own CCGATE_* variables (CCGATE_REAL_CLAUDE, set by .ci/run) are no
    // config keys: `check` would warn of them.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CCGATE_") {
            c.env_remove(name);
        }
    }
    c
}

fn stderr_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

fn stdout_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stdout).to_string()
}

/// The default rules with one typo (`unhealthy_`), written to `dir/name`; returns the path
/// and the typo's line.
fn rules_with_typo(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, usize) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("unhealthy: true"))
        .unwrap()
        + 1;
    let path = dir.join(name);
    std::fs::write(
        &path,
        text.replacen("unhealthy: true", "unhealthy_: true", 1),
    )
    .unwrap();
    (path, line)
}

#[test]
fn check_default_rules_ok() {
    let out = ccgate()
        .args(["check", "rules/rules.yaml"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.starts_with("rules/rules.yaml: ok ("), "{stdout}");
}

#[test]
fn check_typo_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, line) = rules_with_typo(dir.path(), "rules.yaml");
    let out = ccgate().arg("check").arg(&path).assert().code(1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains(&format!("rules.yaml:{line}:")), "{stderr}");
    assert!(stderr.contains("unknown field `unhealthy_`"), "{stderr}");
}

/// `docker exec … ccgate check` in the image: no rules/ in the working directory, the
/// mounted file named by `CCGATE_RULES`. `check` must validate that file, as `serve` would
/// load it, not the embedded rules.
#[test]
fn check_validates_the_file_named_by_ccgate_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, line) = rules_with_typo(dir.path(), "mounted.yaml");
    let out = ccgate()
        .current_dir(dir.path())
        .arg("check")
        .env("CCGATE_RULES", &bad)
        .assert()
        .code(1);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("{}:{line}:", bad.display())),
        "{stderr}"
    );
    // A good file there: ok, naming it.
    let good = dir.path().join("good.yaml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml"),
        &good,
    )
    .unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .arg("check")
        .env("CCGATE_RULES", &good)
        .assert()
        .success();
    assert!(
        stdout_of(&out).starts_with(&format!("{}: ok (", good.display())),
        "{}",
        stdout_of(&out)
    );
    // The positional file wins over CCGATE_RULES, like `--rules`.
    ccgate()
        .current_dir(dir.path())
        .arg("check")
        .arg(&good)
        .env("CCGATE_RULES", &bad)
        .assert()
        .success();
    // `--rules` wins over CCGATE_RULES too.
    ccgate()
        .current_dir(dir.path())
        .args(["check", "--rules"])
        .arg(&good)
        .env("CCGATE_RULES", &bad)
        .assert()
        .success();
}

#[test]
fn check_honours_the_rules_key_of_config() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, line) = rules_with_typo(dir.path(), "r.yaml");
    let config = dir.path().join("ccgate.yaml");
    std::fs::write(&config, format!("rules: {}\n", bad.display())).unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .args(["check", "--config"])
        .arg(&config)
        .assert()
        .code(1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains(&format!("r.yaml:{line}:")), "{stderr}");
    // CCGATE_RULES beats the config file, as for `serve`.
    ccgate()
        .current_dir(dir.path())
        .args(["check", "--config"])
        .arg(&config)
        .env(
            "CCGATE_RULES",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml"),
        )
        .assert()
        .success();
}

#[test]
fn check_says_when_the_embedded_rules_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .arg("check")
        .assert()
        .success();
    assert!(
        stderr_of(&out).contains("rules/rules.yaml not found: using the embedded rules"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        stdout_of(&out).starts_with("<embedded>: ok ("),
        "{}",
        stdout_of(&out)
    );
    // A positional file must exist: it is the file to check.
    let out = ccgate()
        .current_dir(dir.path())
        .args(["check", "missing.yaml"])
        .assert()
        .code(1);
    assert!(
        stderr_of(&out).contains("cannot read rules file missing.yaml"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn classify_names_the_rules_it_used() {
    let facts = "api_error_status: 529\nexit_code: 1\n";
    let out = ccgate()
        .arg("classify")
        .write_stdin(facts)
        .assert()
        .success();
    assert_eq!(stderr_of(&out).trim(), "rules: rules/rules.yaml (file)");
    let dir = tempfile::tempdir().unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .arg("classify")
        .write_stdin(facts)
        .assert()
        .success();
    assert_eq!(
        stderr_of(&out).trim(),
        "rules: rules/rules.yaml not found: using the embedded rules"
    );
    let (bad, _) = rules_with_typo(dir.path(), "bad.yaml");
    let out = ccgate()
        .current_dir(dir.path())
        .arg("classify")
        .env("CCGATE_RULES", &bad)
        .write_stdin(facts)
        .assert()
        .code(1);
    assert!(stderr_of(&out).contains("bad.yaml:"), "{}", stderr_of(&out));
}

#[test]
fn one_loader_file_embedded_and_errors() {
    use ccgate::reload::{load_rules_file, IfMissing, RulesLoadError, RulesSource};
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let l = load_rules_file(&missing, IfMissing::Embedded).unwrap();
    assert_eq!(l.source, RulesSource::Embedded);
    assert_eq!(l.path, missing);
    assert_eq!(l.sha256(), ccgate::rules::Rules::embedded().sha256());
    assert!(matches!(
        load_rules_file(&missing, IfMissing::Fail),
        Err(RulesLoadError::Read { .. })
    ));
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, " \n").unwrap();
    assert!(matches!(
        load_rules_file(&empty, IfMissing::Embedded),
        Err(RulesLoadError::Empty { .. })
    ));
    let (bad, line) = rules_with_typo(dir.path(), "bad.yaml");
    let e = load_rules_file(&bad, IfMissing::Embedded).unwrap_err();
    assert!(matches!(e, RulesLoadError::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("bad.yaml:{line}:")), "{e}");
    let good = dir.path().join("good.yaml");
    let text = ccgate::rules::Rules::embedded_source();
    std::fs::write(&good, text).unwrap();
    let l = load_rules_file(&good, IfMissing::Fail).unwrap();
    assert_eq!(l.source, RulesSource::File);
    assert_eq!(l.sha256(), ccgate::rules::sha256_hex(text.as_bytes()));
}

#[test]
fn test_subcommand_runs_default_files() {
    let out = ccgate().arg("test").assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("PASS not logged in"), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn test_subcommand_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, "cases:\n  - name: wrong\n    facts: {stderr_tail: upstream took 4013ms}\n    expect: {kind: auth_failure}\n").unwrap();
    let out = ccgate().arg("test").arg(&path).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains("FAIL wrong: expected kind auth_failure, got cli_error"),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

#[test]
fn classify_capture_from_stdin() {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/not_logged_in.jsonl"
    ))
    .unwrap();
    let out = ccgate()
        .args(["classify", "--flavour", "anthropic", "-"])
        .write_stdin(format!("{capture}#exit: 1\n"))
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["kind"], "auth_failure");
    assert_eq!(v["status"], 401);
    assert_eq!(v["body"]["error"]["type"], "authentication_error");
    assert_eq!(v["matched"], "assistant_error=authentication_failed");
}

#[test]
fn classify_facts_yaml() {
    let out = ccgate()
        .arg("classify")
        .write_stdin("api_error_status: 529\nexit_code: 1\n")
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["kind"], "overloaded");
    assert_eq!(v["status"], 503);
    assert_eq!(v["headers"]["retry-after"], "5");
}

#[test]
fn schema_prints_json() {
    let out = ccgate().arg("schema").assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["title"], "ccgate rules");
}

#[test]
fn capture_directives() {
    use ccgate::cmd::{parse_capture, Outcome};
    let o = parse_capture("#stderr: a\n#stderr: b\n#exit: 3\n#condition: queue_full\n").unwrap();
    let Outcome::Failure(f) = o else {
        panic!("expected failure")
    };
    assert_eq!(f.stderr_tail, "a\nb");
    assert_eq!(f.exit_code, Some(3));
    assert_eq!(
        f.condition,
        Some(ccgate::rules::GatewayCondition::QueueFull)
    );
    assert!(parse_capture("#exit: x\n").is_err());
    assert!(parse_capture("#bogus: 1\n").is_err());
}

/// Captures conclude like live runs (`RunAccumulator::conclude`): a success result wins
/// over a watchdog that fired after it, and a failure keeps the stderr tail.
#[test]
fn captures_conclude_like_live_runs() {
    use ccgate::cmd::{parse_capture, Outcome};
    use ccgate::rules::{GatewayCondition, TimeoutKind};
    const INIT: &str = r#"{"type":"system","subtype":"init","session_id":"s","model":"m"}"#;
    let result = |is_error: bool| {
        format!(
            r#"{{"type":"result","subtype":"success","is_error":{is_error},"result":"Hello","num_turns":1}}"#
        )
    };
    let failure = |capture: String| match parse_capture(&capture).unwrap() {
        Outcome::Failure(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    };

    // A success result, then the inactivity watchdog: the live backend answers it.
    let o = parse_capture(&format!(
        "{INIT}\n{}\n#timeout: inactivity\n#signal: 9\n#stderr: late noise\n",
        result(false)
    ))
    .unwrap();
    assert_eq!(
        o,
        Outcome::Success {
            text: "Hello".into()
        }
    );

    // A failure result and a watchdog: the facts keep stderr, the timeout and the result.
    let f = failure(format!(
        "{INIT}\n{}\n#timeout: inactivity\n#stderr: first\n#stderr: second\n#signal: 9\n",
        result(true)
    ));
    assert_eq!(f.stderr_tail, "first\nsecond");
    assert_eq!(f.timeout, Some(TimeoutKind::Inactivity));
    assert!(f.result_seen && f.result_is_error);
    assert_eq!(f.signal, Some(9));

    // A success voided by a gateway condition: a failure that still keeps its stderr
    // and what the result said.
    let f = failure(format!(
        "{INIT}\n{}\n#condition: bad_json\n#timeout: total\n#stderr: Invalid API key\n",
        result(false)
    ));
    assert_eq!(f.stderr_tail, "Invalid API key");
    assert_eq!(f.condition, Some(GatewayCondition::BadJson));
    assert_eq!(f.timeout, Some(TimeoutKind::Total));
    assert!(f.result_seen && !f.result_is_error);
}

#[test]
fn classify_a_success_result_with_a_late_watchdog_is_success() {
    let out = ccgate()
        .arg("classify")
        .write_stdin(concat!(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Hi","num_turns":1}"#,
            "\n#timeout: inactivity\n#signal: 9\n"
        ))
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["kind"], "success", "{v}");
    assert_eq!(v["text"], "Hi", "{v}");
}

#[test]
fn check_refuses_a_100k_character_marker_fast() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml")).unwrap();
    let marker = "x".repeat(100_000);
    let text = text.replacen(
        "markers: [\"claude native binary not installed\"]",
        &format!("markers: [\"claude native binary not installed\", \"{marker}\"]"),
        1,
    );
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    let t = std::time::Instant::now();
    let out = ccgate()
        .arg("check")
        .arg(&path)
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(1);
    let took = t.elapsed();
    let err = stderr_of(&out);
    assert!(
        err.contains("rules.yaml:") && err.contains("is 100000 characters long; the limit is 256"),
        "{err}"
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "check took {took:?}"
    );
}

/// The typed matchers: an entry that is not an identifier could never match (error, with
/// its line); a `startup_failure_reason` no tested CLI reports loads but `check` warns;
/// a `rate_limit_status` outside the CLI's three is a typed error; the default rules
/// name no unknown reason and carry both built-in kinds, so `check` is quiet about them.
#[test]
fn check_typed_matchers() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("rules/rules.yaml").unwrap();
    let with = |matcher: &str| {
        text.replacen(
            "      condition: [queue_full]",
            &format!("      condition: [queue_full]\n      {matcher}"),
            1,
        )
    };
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, with("startup_failure_reason: [Consumer-Terms]")).unwrap();
    let stderr = stderr_of(&ccgate().arg("check").arg(&path).assert().code(1));
    assert!(
        stderr.contains("match.startup_failure_reason `Consumer-Terms` is not an identifier"),
        "{stderr}"
    );
    std::fs::write(&path, with("api_error_code: [\"has space\"]")).unwrap();
    let stderr = stderr_of(&ccgate().arg("check").arg(&path).assert().code(1));
    assert!(stderr.contains("match.api_error_code"), "{stderr}");
    std::fs::write(&path, with("rate_limit_status: [exhausted]")).unwrap();
    let stderr = stderr_of(&ccgate().arg("check").arg(&path).assert().code(1));
    assert!(stderr.contains("exhausted"), "{stderr}");
    std::fs::write(
        &path,
        with("startup_failure_reason: [consumer_terms_accept_on_wbe]"),
    )
    .unwrap();
    let out = ccgate().arg("check").arg(&path).assert().success();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("warning: match.startup_failure_reason `consumer_terms_accept_on_wbe` is not a reason the tested CLI versions report"),
        "{stderr}"
    );
    let out = ccgate()
        .args(["check", "rules/rules.yaml"])
        .assert()
        .success();
    assert!(!stderr_of(&out).contains("warning"), "{}", stderr_of(&out));
    // A rules file without the built-in kinds loads, with a warning for each.
    let bare =
        "kinds: []\nfallback: {name: fb, status: 502, templates: {openai: {}, anthropic: {}}}\n";
    std::fs::write(&path, bare).unwrap();
    let stderr = stderr_of(&ccgate().arg("check").arg(&path).assert().success());
    assert!(
        stderr.contains("no kind `account_action_required`"),
        "{stderr}"
    );
    assert!(stderr.contains("no kind `session_not_found`"), "{stderr}");
}

#[test]
fn check_validates_the_upstream_proxy_of_web_fetch_without_showing_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ccgate.yaml");
    let check = |yaml: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, yaml).unwrap();
        let mut c = ccgate();
        c.current_dir(dir.path())
            .args(["check", "--config"])
            .arg(&config)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy");
        for (k, v) in env {
            c.env(k, v);
        }
        c.assert()
    };
    let out = check(
        "web:\n  fetch: true\n  upstream_proxy: https://ops:hunter2@proxy.corp:3128\n",
        &[],
    )
    .code(1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("web.upstream_proxy"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    check(
        "web:\n  fetch: true\n  upstream_proxy: http://ops:hunter2@proxy.corp:3128\n",
        &[],
    )
    .success();
    // With web fetch on, the HTTPS_PROXY `serve` would use is checked too.
    let out = check(
        "web:\n  fetch: true\n",
        &[("HTTPS_PROXY", "socks5://ops:hunter2@proxy.corp:1080")],
    )
    .code(1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("HTTPS_PROXY"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    check("web:\n  fetch: false\n", &[("HTTPS_PROXY", "socks5://x:1")]).success();
}

/// `check` compiles the configuration as `serve` does: a bound out of range, in the file
/// or in the environment, is an error naming it (exit 1), and a `CCGATE_*` variable that
/// is no key is a warning; a good configuration passes.
#[test]
fn check_compiles_the_configuration_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ccgate.yaml");
    std::fs::write(&config, "state:\n  retention_days: 0\n").unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .args(["check", "--config"])
        .arg(&config)
        .assert()
        .code(1);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("state.retention_days must be at least 1"),
        "{stderr}"
    );
    // The same through the environment, with a rules file named explicitly.
    std::fs::write(&config, "state:\n  retention_days: 30\n").unwrap();
    let out = ccgate()
        .current_dir(dir.path())
        .args(["check", "--config"])
        .arg(&config)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml"))
        .env("CCGATE_STATE__RETENTION_DAYS", "0")
        .assert()
        .code(1);
    assert!(
        stderr_of(&out).contains("state.retention_days must be at least 1"),
        "{}",
        stderr_of(&out)
    );
    let out = ccgate()
        .current_dir(dir.path())
        .args(["check", "--config"])
        .arg(&config)
        .env("CCGATE_NO_SUCH_KEY", "1")
        .assert()
        .success();
    assert!(
        stderr_of(&out).contains("CCGATE_NO_SUCH_KEY"),
        "{}",
        stderr_of(&out)
    );
}
