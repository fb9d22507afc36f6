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

#[test]
fn documented_default_config_is_the_built_in_default() {
    // config/ccgate.yaml is the operator's reference: every key, at its default value.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ccgate.yaml");
    let loaded = Config::load(Some(&path), &Overrides::default(), &[]).expect("loads");
    let file = serde_json::to_value(&loaded.config).unwrap();
    let built_in = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(file, built_in);
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
