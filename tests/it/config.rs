//! Process config precedence and validation: file < `--config` < `CCGATE_*` < flags.

use ccgate::config::{Config, Overrides};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_loopback_and_embedded_friendly() {
    let c = Config::load(None, &Overrides::default(), &[])
        .unwrap()
        .config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(c.cli.command.to_str(), Some("claude"));
    assert!(!c.cli.tools);
    assert!(c.api_keys.is_empty());
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
            ("CCGATE_PORT", "tcp://10.0.0.1:8000"),
            ("CCGATE_SERVICE_HOST", "10.0.0.1"),
        ]),
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
    assert_eq!(c.cli.command.to_str(), Some("/opt/claude"));
    assert_eq!(c.cli.max_concurrent, 7);
    assert_eq!(c.api_keys, vec!["k1", "k2"]);
    assert_eq!(c.cli.env.get("MY_VAR").map(String::as_str), Some("Value"));
    assert_eq!(
        loaded.ignored_env,
        vec!["CCGATE_PORT", "CCGATE_SERVICE_HOST"]
    );

    let c = Config::load(
        Some(&file),
        &Overrides {
            listen: Some("127.0.0.1:9002".parse().unwrap()),
            ..Overrides::default()
        },
        &env(&[("CCGATE_LISTEN", "127.0.0.1:9003")]),
    )
    .unwrap()
    .config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:9002");
    let c = Config::load(
        Some(&file),
        &Overrides::default(),
        &env(&[("CCGATE_LISTEN", "127.0.0.1:9003")]),
    )
    .unwrap()
    .config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:9003");
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:9001\nlisten_adress: x\n").unwrap();
    let err = Config::load(Some(&file), &Overrides::default(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_adress"), "{err}");
    std::fs::write(&file, "cli:\n  comand: claude\n").unwrap();
    let err = Config::load(Some(&file), &Overrides::default(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("comand"), "{err}");
    let err = Config::load(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_CLI__TOTAL_TIMEOUT", "-1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("total_timeout"), "{err}");
    let err = Config::load(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_SHUTDOWN_TIMEOUT", "-0.5")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shutdown_timeout"), "{err}");
    let ok = Config::load(
        None,
        &Overrides::default(),
        &env(&[("CCGATE_SHUTDOWN_TIMEOUT", "0")]),
    )
    .expect("0 = end requests at once");
    assert_eq!(ok.config.shutdown_timeout(), std::time::Duration::ZERO);
    let err = Config::load(
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
    let err = Config::load(None, &Overrides::default(), &public)
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing"), "{err}");
    let mut with_keys = public.clone();
    with_keys.push(("CCGATE_API_KEYS".into(), "[secret]".into()));
    assert!(Config::load(None, &Overrides::default(), &with_keys).is_ok());
    let mut opt_out = public;
    opt_out.push(("CCGATE_ALLOW_UNAUTHENTICATED".into(), "true".into()));
    assert!(Config::load(None, &Overrides::default(), &opt_out).is_ok());
}
