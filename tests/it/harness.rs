//! Runs the real ccgate server (`ccgate::serve`) on 127.0.0.1:0 against the fake CLI
//! (`tests/fake-claude`), with per-test config, rules and scenario control.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccgate::backend::Backend;
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;

/// Path of the fake CLI script.
pub fn fake_cli() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-claude")
}

/// Options for one test server.
pub struct Opts {
    /// Default scenario of the fake CLI (a request can override with `[[scenario:NAME]]`).
    pub scenario: &'static str,
    pub rules_yaml: Option<String>,
    pub api_keys: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
    pub watch_rules: bool,
    /// The keys file's text (written to `keys.yaml` and configured as `keys:`).
    pub keys_yaml: Option<String>,
    /// The usage ledger's database (default: a fresh one in the test's directory).
    pub state_path: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            scenario: "success",
            rules_yaml: None,
            api_keys: Vec::new(),
            env: Vec::new(),
            tweak: Box::new(|_| {}),
            watch_rules: false,
            keys_yaml: None,
            state_path: None,
        }
    }
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub base: String,
    pub state: AppState,
    /// Keeps the per-test files alive for the server's lifetime.
    _dir: tempfile::TempDir,
    /// File whose content overrides the fake CLI's scenario at run time.
    pub scenario_file: PathBuf,
    pub rules_path: PathBuf,
    pub log_file: PathBuf,
    /// The fake CLI's `CLAUDE_CONFIG_DIR` (synthesized sessions go under `projects/`).
    pub claude_config_dir: PathBuf,
    /// The keys file (written only with `Opts::keys_yaml`).
    pub keys_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Rules with probe disabled (interval 0) so tests control probes, unless they say otherwise.
pub fn default_rules_with_probe(interval: f64, unhealthy_interval: f64, timeout: f64) -> String {
    let text = Rules::embedded_source();
    let mut out = String::new();
    let mut in_probe = false;
    for line in text.lines() {
        if line.starts_with("probe:") {
            in_probe = true;
            out.push_str(&format!(
                "probe:\n  interval: {interval}\n  unhealthy_interval: {unhealthy_interval}\n  timeout: {timeout}\n  prompt: \"Reply with OK.\"\n"
            ));
            continue;
        }
        if in_probe {
            if line.starts_with(' ') || line.trim().is_empty() {
                continue;
            }
            in_probe = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl TestServer {
    pub async fn start(opts: Opts) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let scenario_file = dir.path().join("scenario");
        std::fs::write(&scenario_file, "").expect("scenario file");
        let rules_path = dir.path().join("rules.yaml");
        let rules_text = opts
            .rules_yaml
            .unwrap_or_else(|| default_rules_with_probe(0.0, 0.0, 5.0));
        std::fs::write(&rules_path, &rules_text).expect("write rules");
        let rules = Rules::from_yaml(&rules_text, "test rules").expect("test rules are valid");
        let log_file = dir.path().join("fake.log");
        let claude_config_dir = dir.path().join("claude-config");
        let workdir = dir.path().join("work");
        std::fs::create_dir_all(&workdir).expect("workdir");

        let keys_path = dir.path().join("keys.yaml");
        if let Some(k) = &opts.keys_yaml {
            std::fs::write(&keys_path, k).expect("write keys");
        }
        let state_path = opts
            .state_path
            .unwrap_or_else(|| dir.path().join("state/ccgate.db"));
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            rules: rules_path.clone(),
            watch_rules: opts.watch_rules,
            api_keys: opts.api_keys,
            keys: opts.keys_yaml.is_some().then(|| keys_path.clone()),
            ..Config::default()
        };
        config.state.path = state_path;
        config.cli.command = fake_cli();
        config.cli.workdir = Some(workdir.clone());
        config.cli.start_timeout = 5.0;
        config.cli.inactivity_timeout = 5.0;
        config.cli.total_timeout = 20.0;
        // No scheduled get_usage reads (each spawns a CLI): tests that want them opt in.
        config.cli.windows_refresh = 0.0;
        config
            .cli
            .env
            .insert("FAKE_CLAUDE_SCENARIO".into(), opts.scenario.into());
        config.cli.env.insert(
            "FAKE_CLAUDE_SCENARIO_FILE".into(),
            scenario_file.display().to_string(),
        );
        config
            .cli
            .env
            .insert("FAKE_CLAUDE_LOG".into(), log_file.display().to_string());
        config.cli.env.insert(
            "CLAUDE_CONFIG_DIR".into(),
            claude_config_dir.display().to_string(),
        );
        for (k, v) in opts.env {
            config.cli.env.insert(k.into(), v);
        }
        (opts.tweak)(&mut config);

        let settings = config.compile().expect("test config is valid");
        let backend = Backend::new(settings.cli_settings(workdir));
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let store = ccgate::store::Store::open_with(settings.state.store_options())
            .await
            .expect("state store");
        let state = AppState::build(settings, rules, backend, Some(store)).expect("state");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ccgate::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestServer {
            base,
            state,
            _dir: dir,
            scenario_file,
            rules_path,
            log_file,
            claude_config_dir,
            keys_path,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server gracefully and waits until `serve` has returned (in-flight
    /// requests drained, pre-warmed pool killed and reaped).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }

    /// Changes the fake CLI's scenario for every later run.
    pub fn set_scenario(&self, name: &str) {
        std::fs::write(&self.scenario_file, name).expect("write scenario");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// POSTs JSON and returns (status, headers, body text).
pub async fn post(
    s: &TestServer,
    path: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .post(s.url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

/// GETs `path` and parses the JSON body.
pub async fn get_text(s: &TestServer, path: &str) -> String {
    client()
        .get(s.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get_json(s: &TestServer, path: &str) -> serde_json::Value {
    send_for_json(client().get(s.url(path))).await
}

/// GETs `path` with `key` (as a Bearer token), asserts a 200 and parses the JSON body.
pub async fn get_json_as(s: &TestServer, path: &str, key: &str) -> serde_json::Value {
    let r = client()
        .get(s.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("JSON body")
}

/// POSTs an empty body to `path` and parses the JSON answer.
pub async fn post_empty_json(s: &TestServer, path: &str) -> serde_json::Value {
    send_for_json(
        client()
            .post(s.url(path))
            .header("content-type", "application/json"),
    )
    .await
}

async fn send_for_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A minimal OpenAI chat body.
pub fn chat_body(text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "sonnet",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    })
}

/// A minimal Anthropic messages body.
pub fn messages_body(text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "sonnet",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    })
}

/// Splits an SSE body into (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() || name.is_some() {
            out.push((name, data.join("\n")));
        }
    }
    out
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
