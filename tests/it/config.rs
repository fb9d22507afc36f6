//! Process config precedence and validation: file < `--config` < `CCGATE_*` < flags, and
//! its compilation into typed `Settings` (every problem reported at once).

use std::time::Duration;

use ccgate::config::{Config, ConfigError, Overrides, Settings};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What `serve` does: load, then compile.
fn settings(
    explicit: Option<&std::path::Path>,
    overrides: &Overrides,
    env: &[(String, String)],
) -> Result<Settings, ConfigError> {
    Config::load(explicit, overrides, env)?.config.compile()
}

#[test]
fn defaults_are_loopback_and_embedded_friendly() {
    let s = settings(None, &Overrides::default(), &[]).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(s.cli.command.to_str(), Some("claude"));
    assert!(!s.cli.tools);
    assert!(s.api_keys.is_empty());
    assert_eq!(s.cli.total_timeout, Duration::from_secs(600));
    assert_eq!(s.sse_keepalive, Some(Duration::from_secs(15)));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(s.cli_workdir, None);
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:9001\ncli:\n  command: /opt/claude\n  max_concurrent: 3\n",
    )
    .unwrap();
    let loaded = Config::load(
        Some(&file),
        &Overrides::default(),
        &env(&[
            ("CCGATE_CLI__MAX_CONCURRENT", "7"),
            ("CCGATE_API_KEYS", "[k1,k2]"),
            ("CCGATE_CLI__ENV__MY_VAR", "Value"),
            ("CCGATE_OPENAI__REASONING_CONTENT", "true"),
            ("CCGATE_STATE__RETENTION_DAYS", "7"),
            ("CCGATE_PORT", "tcp://10.0.0.1:8000"),
            ("CCGATE_SERVICE_HOST", "10.0.0.1"),
        ]),
    )
    .unwrap();
    let c = loaded.config.compile().unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
    assert_eq!(c.cli.command.to_str(), Some("/opt/claude"));
    assert_eq!(c.cli.max_concurrent, 7);
    assert_eq!(c.api_keys, vec!["k1", "k2"]);
    assert!(c.cli.env.contains(&("MY_VAR".into(), "Value".into())));
    // Every top-level section takes its environment variables.
    assert!(c.openai_reasoning_content);
    assert_eq!(c.state.retention_days, 7);
    assert_eq!(
        loaded.ignored_env,
        vec!["CCGATE_PORT", "CCGATE_SERVICE_HOST"]
    );

    let c = settings(
        Some(&file),
        &Overrides {
            listen: Some("127.0.0.1:9002".parse().unwrap()),
            ..Overrides::default()
        },
        &env(&[("CCGATE_LISTEN", "127.0.0.1:9003")]),
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9002");
    let c = settings(
        Some(&file),
        &Overrides::default(),
        &env(&[("CCGATE_LISTEN", "127.0.0.1:9003")]),
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9003");
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:9001\nlisten_adress: x\n").unwrap();
    let err = settings(Some(&file), &Overrides::default(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_adress"), "{err}");
    std::fs::write(&file, "cli:\n  comand: claude\n").unwrap();
    let err = settings(Some(&file), &Overrides::default(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("comand"), "{err}");
    let err = settings(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_CLI__TOTAL_TIMEOUT", "-1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("total_timeout"), "{err}");
    let err = settings(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_SHUTDOWN_TIMEOUT", "-0.5")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shutdown_timeout"), "{err}");
    let ok = settings(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_SHUTDOWN_TIMEOUT", "0")]),
    )
    .expect("0 = end requests at once");
    assert_eq!(ok.shutdown_timeout, Duration::ZERO);
    let err = settings(
        Some(&dir.path().join("missing.yaml")),
        &Overrides::default(),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn non_loopback_needs_keys_or_explicit_opt_out() {
    let public = env(&[("CCGATE_LISTEN", "0.0.0.0:8000")]);
    let err = settings(None, &Overrides::default(), &public)
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing"), "{err}");
    let mut with_keys = public.clone();
    with_keys.push(("CCGATE_API_KEYS".into(), "[secret]".into()));
    assert!(settings(None, &Overrides::default(), &with_keys).is_ok());
    let mut opt_out = public;
    opt_out.push(("CCGATE_ALLOW_UNAUTHENTICATED".into(), "true".into()));
    assert!(settings(None, &Overrides::default(), &opt_out).is_ok());
}

#[test]
fn documented_default_config_is_the_built_in_default() {
    // config/ccgate.yaml is the operator's reference: every key, at its default value.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ccgate.yaml");
    let loaded = Config::load(Some(&path), &Overrides::default(), &[]).expect("loads");
    let file = serde_json::to_value(&loaded.config).unwrap();
    let built_in = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(file, built_in);
    loaded
        .config
        .compile()
        .expect("the documented config is valid");
    // And it spells out every key (not just the ones that differ from nothing).
    let text: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).expect("yaml");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            match v.as_object() {
                Some(inner) if k == "cli" => {
                    out.extend(inner.keys().map(|c| format!("cli.{c}")));
                }
                _ => out.push(k.clone()),
            }
        }
        out.sort();
        out
    };
    assert_eq!(keys(&text), keys(&built_in));
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = settings(
        None,
        &Overrides::default(),
        &env(&[
            ("CCGATE_CLI__TOTAL_TIMEOUT", "-1"),
            ("CCGATE_REQUEST_BODY_LIMIT", "10"),
            ("CCGATE_CORS_ORIGINS", "[https://app.example/]"),
        ]),
    )
    .unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "invalid configuration (3 problems):", "{text}");
    assert!(lines[1].contains("cli.total_timeout"), "{text}");
    assert!(lines[2].contains("request_body_limit"), "{text}");
    assert!(lines[3].contains("https://app.example/"), "{text}");
}

#[test]
fn durations_are_typed_and_zero_keepalive_is_off() {
    let s = settings(
        None,
        &Overrides::default(),
        &env(&[
            ("CCGATE_SSE_KEEPALIVE", "0"),
            ("CCGATE_CLI__START_TIMEOUT", "0.25"),
        ]),
    )
    .unwrap();
    assert_eq!(s.sse_keepalive, None);
    assert_eq!(s.cli.start_timeout, Duration::from_millis(250));
    // Too large for a Duration: a problem, not a panic.
    let err = settings(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_CLI__TOTAL_TIMEOUT", "1e30")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cli.total_timeout"), "{err}");
}

#[test]
fn cors_origins_must_be_origins() {
    let with = |origins: &[&str]| {
        Config {
            cors_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Config::default()
        }
        .compile()
    };
    for ok in [
        "*",
        "https://app.example",
        "http://localhost:3000",
        "http://127.0.0.1",
        "http://[::1]:8080",
        "chrome-extension://abcdef",
    ] {
        let s = with(&[ok]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(s.cors_origins, vec![ok.to_string()]);
    }
    for bad in [
        "https://app.example/",
        "https://app.example/path",
        "app.example",
        "https://",
        "https://user@app.example",
        "https://app.example:99999",
        "https://app.example:",
        "https://app.example?x=1",
        "https://app example",
        "http://[::1]x",
        "http://[zz]",
        "null",
        "",
    ] {
        let err = with(&["https://fine.example", bad])
            .map(|_| ())
            .expect_err(bad)
            .to_string();
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        assert!(!err.contains("fine.example"), "{err}");
    }
}

/// An origin that is no valid origin stops `serve` at start, naming it (it used to be
/// dropped silently, so CORS requests from it failed without a word in the logs).
#[test]
fn serve_refuses_an_invalid_cors_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env(
            "CCGATE_CORS_ORIGINS",
            "[https://app.example,https://typo.example/]",
        )
        .env("CCGATE_WATCH_RULES", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ccgate serve started despite an invalid CORS origin");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"https://typo.example/\" is not an origin"),
        "{err}"
    );
}

#[test]
fn durations_too_large_for_the_clock_are_refused_not_a_panic_later() {
    // 1e12 s fits a Duration but overflowed `Instant + Duration` and `Duration * 1000`
    // inside the run tasks.
    let err = settings(
        None,
        &Overrides::default(),
        &env(&[
            ("CCGATE_CLI__TOOL_HOLD_TIMEOUT", "1000000000000"),
            ("CCGATE_CLI__TOTAL_TIMEOUT", "1000000000000"),
            ("CCGATE_SHUTDOWN_TIMEOUT", "1000000000000"),
        ]),
    )
    .unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems
        .iter()
        .all(|p| p.contains("up to") || p.contains("from 0 to")));
    // A year is still fine.
    settings(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_CLI__TOOL_HOLD_TIMEOUT", "31536000")]),
    )
    .expect("a year");
}
