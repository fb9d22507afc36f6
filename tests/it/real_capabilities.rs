//! The start-up capability check (`backend::capabilities`) against the real CLI, offline:
//! it reports the version and all four capabilities without any model call.

use ccgate::backend::capabilities::{check, Version};
use ccgate::backend::CliSettings;

use crate::mock_api::MockApi;
use crate::support_real::{cli_version, real_claude};

/// ccgate's CLI settings for `exe`, isolated in `dir`, against `base_url`.
pub fn settings(exe: &std::path::Path, dir: &std::path::Path, base_url: &str) -> CliSettings {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut s = ccgate::config::Config::default()
        .compile()
        .expect("the default config is valid")
        .cli_settings(work);
    s.command = exe.to_path_buf();
    s.env = vec![
        ("HOME".into(), dir.join("home").display().to_string()),
        (
            "CLAUDE_CONFIG_DIR".into(),
            dir.join("config").display().to_string(),
        ),
        ("ANTHROPIC_API_KEY".into(), "test-key".into()),
        ("ANTHROPIC_BASE_URL".into(), base_url.into()),
    ];
    s
}

#[tokio::test]
async fn real_capability_check_sees_everything_without_a_model_call() {
    let Some(exe) = real_claude() else {
        return;
    };
    let mock = MockApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report = check(&settings(&exe, dir.path(), &mock.url("ok"))).await;
    let (a, b, c) = cli_version(&exe);
    assert_eq!(report.version, Some(Version(a, b, c)), "{report:?}");
    assert_eq!(report.in_tested_range, Some(true), "{report:?}");
    assert!(report.capabilities.all(), "{report:?}");
    assert!(report.usable() && report.problems.is_empty(), "{report:?}");
    assert!(
        mock.message_requests().is_empty(),
        "no model call: {:#?}",
        mock.message_requests()
    );
    // The synthesized session is gone.
    let projects = dir.path().join("config/projects");
    let left: Vec<_> = walk(&projects);
    assert!(left.is_empty(), "session files left: {left:?}");
    eprintln!(
        "[real_capabilities] {:?} in {} ms",
        report.version, report.duration_ms
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `ccgate doctor` with the real CLI: ready with an API key (no model call), not ready
/// without credentials (what `claude auth status` says).
#[tokio::test]
async fn real_doctor_reports_login_from_the_cli_without_a_model_call() {
    let Some(exe) = real_claude() else {
        return;
    };
    let mock = MockApi::start().await;
    let url = mock.url("ok");
    let run = |key: Option<&'static str>| {
        let (exe, url) = (exe.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = assert_cmd::Command::cargo_bin("ccgate").unwrap();
            cmd.args(["doctor", "--listen", "127.0.0.1:0"])
                .current_dir(dir.path())
                .env("CCGATE_CLI__COMMAND", &exe)
                .env("HOME", dir.path())
                .env("CLAUDE_CONFIG_DIR", dir.path().join("claude"))
                .env("ANTHROPIC_BASE_URL", &url)
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
                .env_remove("ANTHROPIC_AUTH_TOKEN");
            if let Some(k) = key {
                cmd.env("ANTHROPIC_API_KEY", k);
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    let (code, out) = run(Some("test-key")).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("✓ account default: logged in: api_key"),
        "{out}"
    );
    assert!(out.contains("✓ capabilities:"), "{out}");
    let (code, out) = run(None).await.unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ account default: logged in: not logged in"),
        "{out}"
    );
    assert!(mock.message_requests().is_empty(), "no model call");
}
