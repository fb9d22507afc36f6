//! Gateway overhead benchmark (issue 3): what ccgate adds on top of running the CLI.
//!
//! One run (`cargo bench --bench gateway`, ~30-45 s) measures, against the fake CLI
//! `tests/fake-claude` (scenario `success`):
//!
//! 1. **direct**: spawning the fake CLI with exactly the argv, environment and working
//!    directory ccgate uses, writing the one stream-json `user` line, reading stdout and
//!    stderr to EOF and reaping it;
//! 2. **ccgate**: the same request through an in-process `ccgate::serve` on 127.0.0.1:0
//!    (`POST /v1/chat/completions`, non-streaming and streaming, body read to the end over
//!    a keep-alive connection);
//!
//! interleaved round by round (HTTP-only `GET /health`, direct, non-streaming, streaming)
//! so that noise from other work on the machine hits all of them alike. It reports median / p95 / mean per mode and
//! the **added latency = ccgate median − direct median** (target < 2 ms). Then it measures
//! requests/s of non-streaming completions at concurrency 1, 8 and 32 (`cli.max_concurrent`
//! = 32) for a fixed time each and counts errors (any non-200 or malformed body).
//!
//! Knobs (environment): `BENCH_N` (sequential samples per mode, default 200),
//! `BENCH_SECS` (seconds per concurrency level, default 5), `BENCH_GOVERNANCE` (default 1:
//! the requests carry a key of a keys file with limits, and every request is a row of the
//! usage ledger in a SQLite store; 0: no keys, no store, as before issue 23),
//! `BENCH_STATE_URL` (with governance: the store on this PostgreSQL URL, `state.url`,
//! instead of SQLite: the key's limits are then checked against the shared counters).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ccgate::backend::{Backend, CliRequest};
use ccgate::config::Config;
use ccgate::rules::Rules;
use ccgate::AppState;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The prompt of every request (no scenario token: the server default is `success`).
const PROMPT: &str = "Say hello.";
/// The reply the fake CLI produces by default.
const REPLY: &str = "Hello from the fake CLI.";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Embedded rules with the health probe switched off (interval 0): no probe runs compete
/// with the measured requests.
fn rules_without_probe() -> String {
    let mut out = String::new();
    let mut in_probe = false;
    for line in Rules::embedded_source().lines() {
        if line.starts_with("probe:") {
            in_probe = true;
            out.push_str("probe:\n  interval: 0\n  unhealthy_interval: 0\n  timeout: 5\n  prompt: \"Reply with OK.\"\n");
            continue;
        }
        if in_probe && (line.starts_with(' ') || line.trim().is_empty()) {
            continue;
        }
        in_probe = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running in-process gateway.
struct Gateway {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The key the requests carry with `BENCH_GOVERNANCE` on.
const BENCH_KEY: &str = "bench-key";

async fn start_gateway(
    dir: &Path,
    cli: &Path,
    workdir: &Path,
    governance: bool,
) -> anyhow::Result<Gateway> {
    let rules_text = rules_without_probe();
    let rules_path = dir.join("rules.yaml");
    std::fs::write(&rules_path, &rules_text)?;
    let rules = Rules::from_yaml(&rules_text, "bench rules").context("bench rules")?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        rules: rules_path,
        watch_rules: false,
        ..Config::default()
    };
    config.cli.command = cli.to_path_buf();
    config.cli.workdir = Some(workdir.to_path_buf());
    config.cli.max_concurrent = 32;
    // One process per request, as the direct path runs it (continuing conversations in
    // kept processes is what benches/conversation.rs measures).
    config.cli.keep_conversations = 0;
    config.cli.queue_size = 256;
    config.cli.start_timeout = 10.0;
    config.cli.inactivity_timeout = 10.0;
    config.cli.total_timeout = 30.0;
    config
        .cli
        .env
        .insert("FAKE_CLAUDE_SCENARIO".into(), "success".into());
    if governance {
        let keys = dir.join("keys.yaml");
        std::fs::write(
            &keys,
            format!(
                "keys:\n  - name: bench\n    sha256: \"{}\"\n    limits:\n      requests_per_minute: 1000000000\n      tokens_per_day: 1000000000000\n",
                ccgate::rules::sha256_hex(BENCH_KEY.as_bytes())
            ),
        )?;
        config.keys = Some(keys);
        config.state.path = dir.join("state/ccgate.db");
        config.state.url = std::env::var("BENCH_STATE_URL").ok();
    }
    let settings = config.compile()?;
    let backend = Backend::new(settings.cli_settings(workdir.to_path_buf()));
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let store = if governance {
        Some(ccgate::store::Store::open_with(settings.state.store_options()).await?)
    } else {
        None
    };
    let state = AppState::build(settings, rules, backend, store).map_err(anyhow::Error::msg)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ccgate::serve(listener, state, async move {
        let _ = rx.await;
    }));
    Ok(Gateway {
        base,
        stop: Some(tx),
        task,
    })
}

/// What ccgate runs for the measured request (model `sonnet`, no system prompt, the default
/// config's flags): its argv and its one stdin line, from ccgate's own functions.
struct DirectRun {
    args: Vec<std::ffi::OsString>,
    line: String,
}

impl DirectRun {
    fn new(workdir: &Path) -> DirectRun {
        let settings = Config::default()
            .compile()
            .expect("the default config is valid")
            .cli_settings(workdir.to_path_buf());
        let request = CliRequest {
            model: Some("sonnet".into()),
            ..CliRequest::default()
        };
        DirectRun {
            args: ccgate::backend::cli_args(&settings, &request, None),
            line: ccgate::backend::user_line(PROMPT, &[]),
        }
    }
}

/// Runs the fake CLI once, as ccgate would, and returns how long it took.
async fn run_direct(cli: &Path, workdir: &Path, direct: &DirectRun) -> anyhow::Result<Duration> {
    let line = direct.line.clone();
    let start = Instant::now();
    let mut child = tokio::process::Command::new(cli)
        .args(&direct.args)
        .current_dir(workdir)
        .env_remove("CLAUDECODE")
        .env("CLAUDE_CODE_MAX_RETRIES", "2")
        .env("FAKE_CLAUDE_SCENARIO", "success")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .context("spawn fake CLI")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let write = async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.shutdown().await
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (w, o, e) = tokio::join!(
        write,
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err)
    );
    w?;
    o?;
    e?;
    let status = child.wait().await?;
    let elapsed = start.elapsed();
    let out = String::from_utf8_lossy(&out);
    if !status.success() || !out.contains("\"subtype\":\"success\"") || !out.contains(REPLY) {
        bail!("direct run failed: {status}, stdout {out:?}");
    }
    Ok(elapsed)
}

fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "sonnet",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    })
}

/// One chat completion through the gateway, body read to the end and checked.
async fn run_gateway(client: &reqwest::Client, url: &str, stream: bool) -> anyhow::Result<()> {
    let resp = client.post(url).json(&chat_body(stream)).send().await?;
    let status = resp.status();
    let body = resp.text().await?;
    if status != 200 {
        bail!("status {status}: {body}");
    }
    if stream {
        if !body.trim_end().ends_with("data: [DONE]") || body.contains("\"error\"") {
            bail!("bad stream: {body}");
        }
    } else {
        let v: serde_json::Value = serde_json::from_str(&body)?;
        if v["choices"][0]["message"]["content"] != REPLY {
            bail!("bad completion: {body}");
        }
    }
    Ok(())
}

/// Summary of one series of latencies.
struct Stats {
    median: f64,
    p95: f64,
    mean: f64,
    min: f64,
}

fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    Stats {
        median: at(0.5),
        p95: at(0.95),
        mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
        min: ms(samples[0]),
    }
}

fn ms_diff(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Requests/s of non-streaming completions with `conc` clients for `secs` seconds.
/// Returns (completed requests, errors, elapsed seconds).
async fn throughput(
    client: &reqwest::Client,
    url: &str,
    conc: usize,
    secs: u64,
) -> (u64, u64, f64) {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url) = (client.clone(), url.to_string());
        let (ok, errors) = (ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded in time (deadline) and, as a belt, in count.
            for _ in 0..100_000 {
                if Instant::now() >= deadline {
                    break;
                }
                match run_gateway(&client, &url, false).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  error at concurrency {conc}: {e:#}");
                        }
                        1
                    }
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n = env_num("BENCH_N", 200).max(10) as usize;
    let secs = env_num("BENCH_SECS", 5).max(1);
    let cli: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-claude");
    let dir = tempfile::tempdir()?;
    let workdir = dir.path().join("work");
    std::fs::create_dir_all(&workdir)?;
    let governance = env_num("BENCH_GOVERNANCE", 1) != 0;
    let mut gw = start_gateway(dir.path(), &cli, &workdir, governance).await?;
    let url = format!("{}/v1/chat/completions", gw.base);
    let mut headers = reqwest::header::HeaderMap::new();
    if governance {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_KEY}"))?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()?;

    println!(
        "ccgate gateway benchmark: fake CLI {}, {n} sequential samples per mode, {secs} s per concurrency level, keys with limits and the usage ledger {}",
        cli.display(),
        match (governance, std::env::var("BENCH_STATE_URL").is_ok()) {
            (false, _) => "off (BENCH_GOVERNANCE=0)",
            (true, false) => "on (SQLite)",
            (true, true) => "on (PostgreSQL, BENCH_STATE_URL)",
        }
    );
    let direct_run = DirectRun::new(&workdir);
    // Warm-up: page cache, connection pool, allocator.
    for _ in 0..10 {
        run_direct(&cli, &workdir, &direct_run).await?;
        run_gateway(&client, &url, false).await?;
        run_gateway(&client, &url, true).await?;
    }

    let (mut direct, mut plain, mut streamed) = (Vec::new(), Vec::new(), Vec::new());
    // Per-round differences (ccgate - direct of the same round): robust to slow drifts in
    // machine load, which move both sides of a round alike.
    let (mut plain_diff, mut stream_diff) = (Vec::new(), Vec::new());
    // The HTTP layer alone (client, loopback, axum routing, no CLI): `GET /health`.
    let mut http_only = Vec::new();
    let health_url = format!("{}/health", gw.base);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(&health_url).send().await?;
        let ok = r.status() == 200;
        r.bytes().await?;
        if !ok {
            bail!("GET /health failed");
        }
        http_only.push(t.elapsed());
        let d = run_direct(&cli, &workdir, &direct_run).await?;
        let t = Instant::now();
        run_gateway(&client, &url, false).await?;
        let p = t.elapsed();
        let t = Instant::now();
        run_gateway(&client, &url, true).await?;
        let s = t.elapsed();
        direct.push(d);
        plain.push(p);
        streamed.push(s);
        plain_diff.push(ms_diff(p, d));
        stream_diff.push(ms_diff(s, d));
    }
    let d = stats(&mut direct);
    let p = stats(&mut plain);
    let s = stats(&mut streamed);
    let h = stats(&mut http_only);

    println!();
    println!("sequential latency (ms)                    median     p95    mean     min   added: medians  paired");
    println!(
        "  ccgate GET /health (HTTP only, no CLI)   {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
        h.median, h.p95, h.mean, h.min
    );
    println!(
        "  direct fake CLI                          {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
        d.median, d.p95, d.mean, d.min
    );
    for (name, x, diffs) in [
        (
            "ccgate /v1/chat/completions              ",
            &p,
            &mut plain_diff,
        ),
        (
            "ccgate /v1/chat/completions stream=true  ",
            &s,
            &mut stream_diff,
        ),
    ] {
        println!(
            "  {name}{:>7.2} {:>7.2} {:>7.2} {:>7.2}   {:>+7.2} {:>+7.2}",
            x.median,
            x.p95,
            x.mean,
            x.min,
            x.median - d.median,
            median(diffs)
        );
    }
    let worst = (p.median - d.median).max(s.median - d.median);
    println!(
        "  added latency = ccgate median - direct median (worst of the two): {worst:+.2} ms -> target < 2 ms: {}",
        if worst < 2.0 { "MET" } else { "NOT MET" }
    );
    println!("  (paired = median over rounds of ccgate - direct in the same round)");

    println!();
    println!("throughput, non-streaming, cli.max_concurrent = 32");
    println!("  concurrency   requests   req/s   errors");
    let mut total_errors = 0;
    for conc in [1usize, 8, 32] {
        let (ok, errors, elapsed) = throughput(&client, &url, conc, secs).await;
        total_errors += errors;
        println!(
            "  {conc:>11} {:>10} {:>7.1} {errors:>8}",
            ok + errors,
            ok as f64 / elapsed
        );
    }

    if let Some(tx) = gw.stop.take() {
        let _ = tx.send(());
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut gw.task).await;
    if total_errors > 0 {
        bail!("{total_errors} request(s) failed during the throughput runs");
    }
    Ok(())
}
