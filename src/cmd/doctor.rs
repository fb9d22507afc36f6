//! `ccgate doctor`: whether this host can serve, one line per check (`✓`, `⚠` for a
//! warning, `✗` with its remedy), exit 0 only when serving would work (warnings allowed).
//!
//! It reads the configuration exactly as `serve` does (same flags) and checks, in order:
//! the config; the CLI (found, its version against the tested range); the capabilities
//! ccgate relies on (one CLI process, no model call: `backend::capabilities`); per account
//! whether it is logged in (`claude auth status`, which reads the stored credentials and
//! makes no model call, so a revoked or expired login still shows as logged in; the
//! start-up probe finds those), its state directory (writable, its size) and the CLI's
//! working directory; the temp dir; the rules file (as `check`); the listen address (free).
//! Per account also its plan windows (the CLI's `get_usage`, no model call; never a
//! failure). Then the keys file (the loader `serve` uses) and the state store (opened as
//! `serve` opens it, and writable) in [`extra_checks`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::serve::{load_settings, ServeArgs};
use super::{rules_used, serve_rules, RulesSourceArgs};
use crate::backend::capabilities::{self, tested_range, Version};
use crate::backend::CliSettings;
use crate::config::Settings;

/// `ccgate doctor`: the flags of `serve`, whose configuration it checks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Serving works, but something deserves a look.
    Warn,
    /// Serving would not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    /// What was checked (`cli`, `account default: logged in`, …).
    pub name: String,
    pub detail: String,
    /// What to do (for a warning or a failure).
    pub remedy: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            name: name.into(),
            detail: detail.into(),
            remedy: None,
        }
    }

    fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            name: name.into(),
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }

    fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warn,
            ..Check::fail(name, detail, remedy)
        }
    }

    fn write(&self, out: &mut dyn Write) {
        let mark = match self.status {
            Status::Ok => "✓",
            Status::Warn => "⚠",
            Status::Fail => "✗",
        };
        let _ = writeln!(out, "{mark} {}: {}", self.name, self.detail);
        if let Some(r) = &self.remedy {
            let _ = writeln!(out, "    remedy: {r}");
        }
    }
}

/// `ccgate doctor`: prints the checks; 0 when serving would work, else 1.
pub fn doctor(args: &DoctorArgs, out: &mut dyn Write, _err: &mut dyn Write) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(out, "✗ runtime: {e}");
            return 1;
        }
    };
    let checks = rt.block_on(run_checks(args));
    for c in &checks {
        c.write(out);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    if failed == 0 {
        let _ = writeln!(
            out,
            "ready to serve ({} checks, {warned} warnings)",
            checks.len()
        );
        0
    } else {
        let _ = writeln!(out, "not ready: {failed} of {} checks failed", checks.len());
        1
    }
}

/// Every check, in order (a broken config stops after it: nothing else can be known).
pub async fn run_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let settings = match load_settings(&args.serve) {
        Ok((s, _, warnings)) => {
            checks.push(Check::ok("config", "loaded"));
            for w in warnings {
                checks.push(Check::warn(
                    "shared login",
                    w.trim_start_matches("warning: "),
                    "docs/scaling.md: long-lived tokens for replicas",
                ));
            }
            s
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                e.to_string(),
                "fix the config file or the CCGATE_* variables it names",
            ));
            return checks;
        }
    };
    let workdir_tmp = tempfile::Builder::new().prefix("ccgate-doctor-").tempdir();
    let workdir = match (&settings.cli_workdir, &workdir_tmp) {
        (Some(dir), _) => dir.clone(),
        (None, Ok(t)) => t.path().to_path_buf(),
        (None, Err(_)) => std::env::temp_dir(),
    };
    let cli = settings.cli_settings(workdir);
    let found = cli_checks(&cli, &mut checks).await;
    if let Some(dir) = &settings.cli_workdir {
        checks.push(dir_check("cli.workdir", dir, false));
    }
    checks.push(dir_check("temp dir (cli.temp_dir)", &cli.temp_dir, false));
    for (name, env) in accounts(&settings) {
        let mut account = cli.clone();
        account.env.extend(env);
        account_checks(&name, &account, found, &mut checks).await;
        if found {
            checks.push(windows_check(&name, &account).await);
        }
    }
    checks.push(rules_check(&args.serve));
    checks.extend(extra_checks(&settings).await);
    checks.push(listen_check(&settings).await);
    checks
}

/// The accounts to check: the configured ones, or the implicit `default`.
fn accounts(settings: &Settings) -> Vec<(String, Vec<(String, String)>)> {
    if settings.accounts.is_empty() {
        vec![(crate::accounts::IMPLICIT_NAME.to_string(), Vec::new())]
    } else {
        settings
            .accounts
            .iter()
            .map(|a| (a.name.clone(), a.env.clone()))
            .collect()
    }
}

/// The CLI and its capabilities; returns whether the CLI runs at all.
async fn cli_checks(cli: &CliSettings, checks: &mut Vec<Check>) -> bool {
    let command = cli.command.display().to_string();
    match capabilities::version(cli).await {
        Err(e) => {
            checks.push(Check::fail(
                "cli",
                e,
                "install the Claude CLI (`npm install -g @anthropic-ai/claude-code`, or scripts/install-claude.sh) or point cli.command / CCGATE_CLI__COMMAND at it",
            ));
            false
        }
        Ok(v) => {
            checks.push(version_check(&command, v));
            let report = capabilities::check(cli).await;
            let missing: Vec<&str> = report
                .capabilities
                .list()
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| *n)
                .collect();
            if missing.is_empty() {
                checks.push(Check::ok(
                    "capabilities",
                    format!(
                        "control protocol, sdk MCP servers, --json-schema, resume (no model call, {} ms)",
                        report.duration_ms
                    ),
                ));
            } else {
                let why: Vec<&str> = report
                    .problems
                    .iter()
                    .map(String::as_str)
                    .filter(|p| !p.contains("outside the tested range"))
                    .collect();
                checks.push(Check::fail(
                    "capabilities",
                    format!("missing {}: {}", missing.join(", "), why.join("; ")),
                    format!("install a CLI in the tested range {}", tested_range()),
                ));
            }
            true
        }
    }
}

fn version_check(command: &str, v: Version) -> Check {
    if v.tested() {
        Check::ok(
            "cli",
            format!("{command} {v} (tested range {})", tested_range()),
        )
    } else {
        Check::warn(
            "cli",
            format!("{command} {v} is outside the tested range {}", tested_range()),
            format!(
                "it may behave differently; install a tested version (scripts/install-claude.sh, or --platform {})",
                capabilities::TESTED_MAX
            ),
        )
    }
}

/// `claude auth status` of one account, its state directory.
async fn account_checks(name: &str, cli: &CliSettings, found: bool, checks: &mut Vec<Check>) {
    let label = format!("account {name}");
    let state_dir = if found {
        match auth_status(cli).await {
            Ok(v) => {
                let method = v["authMethod"].as_str().unwrap_or("unknown").to_string();
                if v["loggedIn"] == true {
                    checks.push(Check::ok(
                        format!("{label}: logged in"),
                        format!("{method} (from the stored credentials; no model call)"),
                    ));
                } else {
                    checks.push(Check::fail(
                        format!("{label}: logged in"),
                        "not logged in",
                        "run `claude /login` as the user ccgate runs as (with the account's CLAUDE_CONFIG_DIR), or set ANTHROPIC_API_KEY / CLAUDE_CODE_OAUTH_TOKEN in the account's env",
                    ));
                }
                v["configDirectory"].as_str().map(PathBuf::from)
            }
            Err(e) => {
                checks.push(Check::fail(
                    format!("{label}: logged in"),
                    e,
                    "run `claude auth status` by hand to see why",
                ));
                None
            }
        }
    } else {
        None
    };
    let dir = state_dir.or_else(|| config_dir(cli));
    match dir {
        Some(dir) => checks.push(dir_check(&format!("{label}: state dir"), &dir, true)),
        None => checks.push(Check::fail(
            format!("{label}: state dir"),
            "neither CLAUDE_CONFIG_DIR nor HOME is set",
            "set HOME or CLAUDE_CONFIG_DIR for the CLI",
        )),
    }
}

/// `claude auth status --json` under `cli`'s environment.
async fn auth_status(cli: &CliSettings) -> Result<Value, String> {
    let out =
        capabilities::run_subcommand(cli, &["auth", "status", "--json"], Duration::from_secs(15))
            .await?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "`claude auth status --json` printed no JSON (exit {:?})",
            out.status.code()
        )
    })
}

/// The CLI's state directory without asking it: `CLAUDE_CONFIG_DIR`, else `$HOME/.claude`.
fn config_dir(cli: &CliSettings) -> Option<PathBuf> {
    let var = |name: &str| {
        cli.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::ffi::OsString::from(v))
            .or_else(|| std::env::var_os(name))
    };
    var("CLAUDE_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".claude")))
}

/// Most entries [`dir_size`] visits (a huge projects tree must not stall the doctor).
const SIZE_WALK_LIMIT: usize = 200_000;

/// A directory's total file size (bytes) and whether the walk stopped at the limit.
fn dir_size(dir: &Path) -> (u64, bool) {
    let (mut total, mut seen) = (0u64, 0usize);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > SIZE_WALK_LIMIT {
                return (total, true);
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    (total, false)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Whether `dir` is (or can be made) a writable directory: a file is created in it and
/// removed. `size`: also report its size. A missing directory whose parent is writable is
/// fine (the CLI creates it).
fn dir_check(name: &str, dir: &Path, size: bool) -> Check {
    let shown = dir.display();
    if !dir.exists() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        return match parent.map(|p| (p, tempfile::tempfile_in(p))) {
            Some((_, Ok(_))) => Check::ok(
                name,
                format!("{shown} (not created yet; its parent is writable)"),
            ),
            Some((p, Err(e))) => Check::fail(
                name,
                format!(
                    "{shown} does not exist and {} is not writable: {e}",
                    p.display()
                ),
                format!("create {shown} writable for the user ccgate runs as"),
            ),
            None => Check::fail(
                name,
                format!("{shown} does not exist"),
                format!("create {shown}"),
            ),
        };
    }
    if !dir.is_dir() {
        return Check::fail(
            name,
            format!("{shown} is not a directory"),
            format!("point it at a directory (or remove the file {shown})"),
        );
    }
    match tempfile::tempfile_in(dir) {
        Ok(_) => {
            let detail = if size {
                let (bytes, cut) = dir_size(dir);
                let more = if cut { " or more" } else { "" };
                format!("{shown} writable, {}{more}", human(bytes))
            } else {
                format!("{shown} writable")
            };
            Check::ok(name, detail)
        }
        Err(e) => Check::fail(
            name,
            format!("{shown} is not writable: {e}"),
            format!("make {shown} writable for the user ccgate runs as (or point the setting elsewhere)"),
        ),
    }
}

/// The rules `serve` would load, checked as `ccgate check` does.
fn rules_check(args: &ServeArgs) -> Check {
    let source = RulesSourceArgs {
        config: args.config.clone(),
        rules: args.rules.clone(),
    };
    match serve_rules(&source) {
        Ok(loaded) => {
            let warnings = loaded.rules.warnings();
            let detail = format!(
                "{} ({} kinds, {} markers)",
                rules_used(&loaded),
                loaded.rules.kinds_count(),
                loaded.rules.markers_count()
            );
            if warnings.is_empty() {
                Check::ok("rules", detail)
            } else {
                Check::warn(
                    "rules",
                    format!("{detail}; {} warning(s)", warnings.len()),
                    format!("see `ccgate check`: {}", warnings.join(" | ")),
                )
            }
        }
        Err(e) => Check::fail(
            "rules",
            e.lines().next().unwrap_or("invalid").to_string(),
            "run `ccgate check` for every problem and fix the rules file",
        ),
    }
}

/// Checks of state other parts of ccgate keep: the keys file (loaded by the loader
/// `serve`, reloads and `check` use) and the state store (opened as `serve` opens it,
/// then its file and directory written to).
async fn extra_checks(settings: &Settings) -> Vec<Check> {
    let store = match settings.state.url {
        Some(_) => shared_state_check(settings).await,
        None => state_check(&settings.state.path).await,
    };
    vec![keys_check(settings), store]
}

/// With `state.url`: the shared store reached, migrated and its schema known, as `serve`
/// opens it (the URL's password never shown).
async fn shared_state_check(settings: &Settings) -> Check {
    let name = "state store (state.url)";
    let remedy = "start PostgreSQL or fix state.url (CCGATE_STATE__URL); docs/scaling.md";
    match crate::store::Store::open_with(settings.state.store_options()).await {
        Ok(store) => {
            let detail = match store.version().await {
                Ok(v) => format!("{}: reachable, schema version {v}", store.url()),
                Err(e) => format!("{}: reachable, version unread: {e}", store.url()),
            };
            store.close().await;
            Check::ok(name, detail)
        }
        Err(e) => Check::fail(name, e.to_string(), remedy),
    }
}

/// The keys file, as `serve` loads it.
fn keys_check(settings: &Settings) -> Check {
    let Some(path) = &settings.keys else {
        return Check::ok(
            "keys",
            format!(
                "no keys file; {} api_keys (client keys)",
                settings.api_keys.len()
            ),
        );
    };
    let accounts: Vec<String> = settings.accounts.iter().map(|a| a.name.clone()).collect();
    let now = crate::clock::unix_now() as i64;
    match crate::keys::load_keys_file(path, &settings.api_keys, &accounts, now) {
        Ok(set) => {
            let admins = set
                .keys()
                .iter()
                .filter(|k| k.role == crate::keys::Role::Admin)
                .count();
            Check::ok(
                "keys",
                format!(
                    "{}: {} keys ({admins} admin)",
                    path.display(),
                    set.keys().len()
                ),
            )
        }
        Err(e) => Check::fail(
            "keys",
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid")
                .to_string(),
            "run `ccgate check --keys FILE` for every problem and fix the keys file",
        ),
    }
}

/// The state store: opened (created when missing, migrated) as `serve` opens it, and its
/// database file and directory writable (SQLite writes a journal beside the file).
async fn state_check(path: &Path) -> Check {
    let name = "state store (state.path)";
    let remedy = "make state.path (CCGATE_STATE__PATH) a writable file in a writable directory for the user ccgate runs as";
    let opened = match crate::store::Store::open_sqlite(path).await {
        Ok(store) => {
            let version = store.version().await;
            store.close().await;
            version
        }
        Err(e) => Err(e),
    };
    let version = match opened {
        Ok(v) => v,
        Err(e) => return Check::fail(name, format!("{}: {e}", path.display()), remedy),
    };
    let file = std::fs::OpenOptions::new().append(true).open(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = tempfile::Builder::new()
        .prefix(".ccgate-doctor-")
        .tempfile_in(dir);
    match (file, probe) {
        (Ok(_), Ok(_)) => Check::ok(
            name,
            format!(
                "{} (SQLite, schema version {version}, writable)",
                path.display()
            ),
        ),
        (Err(e), _) => Check::fail(
            name,
            format!("{} is not writable: {e}", path.display()),
            remedy,
        ),
        (_, Err(e)) => Check::fail(
            name,
            format!("{} is not writable: {e}", dir.display()),
            remedy,
        ),
    }
}

/// The account's plan windows through the CLI's `get_usage` (one process, no model call).
/// Never a failure: serving works without them.
async fn windows_check(name: &str, cli: &CliSettings) -> Check {
    let label = format!("account {name}: plan windows");
    match crate::backend::usage::read_windows(cli, None).await {
        Ok(r) => match (r.available, r.windows) {
            (true, Some(w)) => {
                let shown: Vec<String> = w
                    .windows
                    .iter()
                    .map(|w| {
                        let reset = w
                            .resets_at
                            .map(|t| format!(", resets {}", crate::clock::rfc3339_of_unix(t)))
                            .unwrap_or_default();
                        format!("{} {:.0} %{reset}", w.name, w.utilization * 100.0)
                    })
                    .collect();
                Check::ok(label, format!("{} (get_usage, no model call)", shown.join("; ")))
            }
            (true, None) => Check::ok(
                label,
                format!(
                    "reported by the {} plan, no numbers now (the claude.ai usage endpoint did not answer); answers will bring them",
                    r.subscription_type.as_deref().unwrap_or("subscription")
                ),
            ),
            (false, _) => Check::ok(
                label,
                "not available through get_usage for this login (an environment token, an API key): ccgate reads them from the answers",
            ),
        },
        Err(e) => Check::warn(
            label,
            e,
            "serving does not need them; see docs/accounts.md#plan-windows",
        ),
    }
}

/// The listen address is free (bound and released at once).
async fn listen_check(settings: &Settings) -> Check {
    let addr = settings.listen;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            drop(l);
            Check::ok("listen", format!("{addr} is free"))
        }
        Err(e) => Check::fail(
            "listen",
            format!("cannot listen on {addr}: {e}"),
            "stop what listens there (another ccgate?) or choose another address (listen / --listen / CCGATE_LISTEN)",
        ),
    }
}
