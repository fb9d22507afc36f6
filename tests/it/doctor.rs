//! `ccgate doctor` (the binary, assert_cmd) on a working host and on broken ones, with the
//! fake CLI (which answers `--version`, `auth status` and the capability check's
//! handshake like the real one): exit 0 only when serving would work.

use std::path::Path;

use assert_cmd::Command;

/// `ccgate doctor` in `dir` (no config file, embedded rules) with the fake CLI, the CLI's
/// state in `dir/claude`, listening on `listen` (port 0: always free).
fn doctor_at(dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::cargo_bin("ccgate").unwrap();
    cmd.args(["doctor", "--listen", listen])
        .current_dir(dir)
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env("CLAUDE_CONFIG_DIR", dir.join("claude"))
        .env_remove("CCGATE_RULES")
        .env_remove("FAKE_CLAUDE_SCENARIO")
        .env_remove("FAKE_CLAUDE_LOGGED_OUT")
        .env_remove("FAKE_CLAUDE_VERSION");
    cmd
}

fn doctor(dir: &Path) -> Command {
    doctor_at(dir, "127.0.0.1:0")
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// The report line of check `name` (`<mark> <name>: …`).
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
}

#[test]
fn a_working_host_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("claude")).unwrap();
    std::fs::write(dir.path().join("claude/.claude.json"), "{}").unwrap();
    let a = doctor(dir.path()).assert().code(0);
    let out = stdout(&a);
    for name in [
        "config:",
        "cli:",
        "capabilities:",
        "temp dir",
        "account default: logged in:",
        "account default: state dir:",
        "account default: plan windows:",
        "rules:",
        "keys:",
        "state store (state.path):",
        "listen:",
    ] {
        assert!(line(&out, name).starts_with('✓'), "{name}:\n{out}");
    }
    assert!(
        line(&out, "cli:").contains("2.1.332 (tested range 2.1.332-2.1.336)"),
        "{out}"
    );
    assert!(
        line(&out, "account default: state dir:").contains("writable, 2 B"),
        "{out}"
    );
    assert!(out.contains("ready to serve"), "{out}");
    assert!(!out.contains('✗'), "{out}");
    // The fake CLI's get_usage answers as for an environment token.
    assert!(
        line(&out, "account default: plan windows:").contains("not available through get_usage"),
        "{out}"
    );
    assert!(
        line(&out, "keys:").contains("no keys file; 0 api_keys"),
        "{out}"
    );
    assert!(
        line(&out, "state store (state.path):").contains("schema version"),
        "{out}"
    );
    assert!(dir.path().join("state/ccgate.db").is_file(), "{out}");
}

#[test]
fn plan_windows_keys_file_and_state_store_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("claude")).unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - name: ops\n    sha256: {}\n    role: admin\n  - name: app\n    sha256: {}\n",
            ccgate::rules::sha256_hex(b"a"),
            ccgate::rules::sha256_hex(b"b")
        ),
    )
    .unwrap();
    // A login whose get_usage reports its windows; a valid keys file.
    let a = doctor(dir.path())
        .env("FAKE_CLAUDE_USAGE", "42,10")
        .env("CCGATE_KEYS", &keys)
        .assert()
        .code(0);
    let out = stdout(&a);
    let l = line(&out, "account default: plan windows:");
    assert!(
        l.starts_with('✓') && l.contains("five_hour 42 %") && l.contains("seven_day 10 %"),
        "{out}"
    );
    assert!(line(&out, "keys:").contains("2 keys (1 admin)"), "{out}");
    // A broken keys file (a malformed digest) is not ready, with its line:column.
    std::fs::write(&keys, "keys:\n  - name: ops\n    sha256: abc\n").unwrap();
    let a = doctor(dir.path())
        .env("CCGATE_KEYS", &keys)
        .assert()
        .code(1);
    let out = stdout(&a);
    let l = line(&out, "keys:");
    assert!(l.starts_with('✗') && l.contains("keys.yaml:3:"), "{out}");
    assert!(out.contains("ccgate check"), "{out}");
    // A state store that cannot be created (under a regular file).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let a = doctor(dir.path())
        .env("CCGATE_STATE__PATH", file.join("ccgate.db"))
        .assert()
        .code(1);
    let out = stdout(&a);
    let l = line(&out, "state store (state.path):");
    assert!(l.starts_with('✗'), "{out}");
    assert!(out.contains("CCGATE_STATE__PATH"), "{out}");
    // A database file that is not SQLite.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a database, not at all, definitely not").unwrap();
    let a = doctor(dir.path())
        .env("CCGATE_STATE__PATH", &junk)
        .assert()
        .code(1);
    assert!(line(&stdout(&a), "state store (state.path):").starts_with('✗'));
}

#[test]
fn no_cli_is_not_ready_and_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = doctor(dir.path())
        .env("CCGATE_CLI__COMMAND", dir.path().join("no-such-claude"))
        .assert()
        .code(1);
    let out = stdout(&a);
    let cli = line(&out, "cli:");
    assert!(
        cli.starts_with('✗') && cli.contains("no-such-claude"),
        "{out}"
    );
    assert!(out.contains("remedy: install the Claude CLI"), "{out}");
    assert!(out.contains("not ready: 1 of"), "{out}");
}

#[test]
fn a_logged_out_account_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let a = doctor(dir.path())
        .env("FAKE_CLAUDE_LOGGED_OUT", "1")
        .assert()
        .code(1);
    let out = stdout(&a);
    let l = line(&out, "account default: logged in:");
    assert!(l.starts_with('✗') && l.ends_with("not logged in"), "{out}");
    assert!(out.contains("remedy: run `claude /login`"), "{out}");
    // The rest is fine: exactly one failure.
    assert!(out.contains("not ready: 1 of"), "{out}");
}

#[test]
fn an_unwritable_state_dir_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file: not creatable, whoever runs the test (root too).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let a = doctor(dir.path())
        .env("CLAUDE_CONFIG_DIR", file.join("claude"))
        .assert()
        .code(1);
    let out = stdout(&a);
    let l = line(&out, "account default: state dir:");
    assert!(l.starts_with('✗') && l.contains("is not writable"), "{out}");
}

#[test]
fn a_busy_listen_address_and_broken_rules_are_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "kinds: []\nfallbak: {}\n").unwrap();
    let a = doctor_at(dir.path(), &addr)
        .arg("--rules")
        .arg(&rules)
        .assert()
        .code(1);
    let out = stdout(&a);
    let l = line(&out, "listen:");
    assert!(l.starts_with('✗') && l.contains(&addr), "{out}");
    assert!(line(&out, "rules:").starts_with('✗'), "{out}");
    assert!(out.contains("remedy: run `ccgate check`"), "{out}");
    drop(busy);
}

#[test]
fn a_version_outside_the_tested_range_is_a_warning_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = doctor(dir.path())
        .env("FAKE_CLAUDE_VERSION", "2.1.400")
        .assert()
        .code(0);
    let out = stdout(&a);
    let l = line(&out, "cli:");
    assert!(
        l.starts_with('⚠') && l.contains("2.1.400 is outside the tested range 2.1.332-2.1.336"),
        "{out}"
    );
    assert!(
        out.contains("ready to serve") && out.contains("1 warnings"),
        "{out}"
    );
}

#[test]
fn each_configured_account_is_checked_with_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ccgate.yaml");
    std::fs::write(
        &config,
        "accounts:\n  - name: good\n    env: {CLAUDE_CONFIG_DIR: good-state}\n  - name: out\n    env: {FAKE_CLAUDE_LOGGED_OUT: \"1\"}\n",
    )
    .unwrap();
    let a = doctor(dir.path())
        .arg("--config")
        .arg(&config)
        .assert()
        .code(1);
    let out = stdout(&a);
    assert!(
        line(&out, "account good: logged in:").starts_with('✓'),
        "{out}"
    );
    assert!(
        line(&out, "account good: state dir:").contains("good-state"),
        "{out}"
    );
    assert!(
        line(&out, "account out: logged in:").starts_with('✗'),
        "{out}"
    );
}

#[test]
fn a_shared_store_is_checked_and_a_directory_login_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the store check fails, with the URL's password hidden.
    let a = doctor(dir.path())
        .env(
            "CCGATE_STATE__URL",
            "postgres://ccgate:s3cret@127.0.0.1:1/ccgate",
        )
        .env("CCGATE_STATE__CONNECT_TIMEOUT", "0.5")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .assert()
        .code(1);
    let out = stdout(&a);
    assert!(
        line(&out, "state store (state.url):").starts_with('✗'),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
    let w = line(&out, "shared login:");
    assert!(
        w.starts_with('⚠') && w.contains("claude setup-token"),
        "{out}"
    );
    if let Ok(url) = std::env::var("CCGATE_TEST_POSTGRES_URL") {
        let a = doctor(dir.path())
            .env("CCGATE_STATE__URL", url)
            .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-fake")
            .assert();
        let out = stdout(&a);
        assert!(
            line(&out, "state store (state.url):").starts_with('✓'),
            "{out}"
        );
        assert!(!out.contains("shared login:"), "{out}");
    }
}
