//! The rules subcommands through the real `ccgate` binary (assert_cmd) and the library.

use assert_cmd::Command;

fn ccgate() -> Command {
    let mut c = Command::cargo_bin("ccgate").unwrap();
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
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
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("unhealthy: true"))
        .unwrap()
        + 1;
    let bad = text.replacen("unhealthy: true", "unhealthy_: true", 1);
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = ccgate().arg("check").arg(&path).assert().code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains(&format!("rules.yaml:{line}:")), "{stderr}");
    assert!(stderr.contains("unknown field `unhealthy_`"), "{stderr}");
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
