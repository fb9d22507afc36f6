//! A ccgate server in-process over the REAL CLI against a mock Messages API (shared by the
//! benchmarks that measure the CLI's cost).

use ccgate::backend::Backend;
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;

pub struct Server {
    pub base: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

pub async fn start_server(
    cli: &std::path::Path,
    api_url: &str,
    tweak: impl FnOnce(&mut ccgate::config::CliConfig),
) -> Server {
    let home = tempfile::tempdir().expect("home");
    let work = tempfile::tempdir().expect("workdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        rules: home.path().join("no-rules.yaml"),
        watch_rules: false,
        ..Config::default()
    };
    let c = &mut config.cli;
    c.command = cli.to_path_buf();
    c.workdir = Some(work.path().to_path_buf());
    c.start_timeout = 20.0;
    c.total_timeout = 60.0;
    let home_path = home.path().display().to_string();
    for (k, v) in [
        ("HOME", home_path.clone()),
        ("CLAUDE_CONFIG_DIR", format!("{home_path}/.claude")),
        ("ANTHROPIC_BASE_URL", api_url.to_string()),
        ("ANTHROPIC_API_KEY", "test-key".into()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
    ] {
        c.env.insert(k.into(), v);
    }
    tweak(&mut config.cli);
    let settings = config.compile().expect("bench config is valid");
    let backend = Backend::new(settings.cli_settings(work.path().to_path_buf()));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = AppState::new(settings, Rules::embedded(), backend);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ccgate::serve(listener, state, async move {
        let _ = rx.await;
    }));
    Server {
        base,
        stop,
        task,
        _dirs: vec![home, work],
    }
}
