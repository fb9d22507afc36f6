//! The one reload path. SIGHUP, the file watcher and `POST /admin/reload` all call
//! [`Reloader::reload`]: read the file, parse and compile off the async workers, and swap
//! the new rules in atomically — or keep the running rules and record why not.
//!
//! The keys file (if configured) is reloaded by the same call, through the one keys
//! loader ([`crate::keys::load_keys_file`]); a bad keys file keeps the running keys, as a
//! bad rules file keeps the running rules, and neither blocks the other.
//!
//! Invariants: bad rules never replace good ones; identical content (same SHA-256) is not
//! reloaded; reloads are serialized; each request keeps the snapshot it started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::clock::{now_rfc3339, unix_now};
use crate::health::Health;
use crate::keys::KeySet;
use crate::metrics::{Metrics, ResultLabels};
use crate::rules::Rules;
use crate::shutdown::Shutdown;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Startup,
    Sighup,
    FileChange,
    Admin,
}

/// The outcome of one reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadAttempt {
    pub at: String,
    pub trigger: Trigger,
    /// True when the running rules are the file's current content (swapped or unchanged).
    pub ok: bool,
    /// True when new rules were swapped in.
    pub changed: bool,
    /// Why the file was not loaded (with line and column), if it was not.
    pub error: Option<String>,
    pub duration_ms: f64,
}

/// What `/admin/rules` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RulesStatus {
    pub path: String,
    /// `file` or `embedded` (the file did not exist at load time).
    pub source: &'static str,
    pub sha256: String,
    pub kinds: usize,
    pub markers: usize,
    pub loaded_at: String,
    pub last_attempt: Option<ReloadAttempt>,
    /// The keys file in force, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysStatus>,
}

/// What `/admin/rules` shows of the keys file (never a digest).
#[derive(Debug, Clone, Serialize)]
pub struct KeysStatus {
    pub path: String,
    /// SHA-256 of the file's text.
    pub sha256: String,
    /// Keys in force (the process config's `api_keys` included).
    pub keys: usize,
    pub loaded_at: String,
}

/// The keys file a [`Reloader`] reloads with the rules.
pub struct KeysReload {
    pub path: PathBuf,
    /// The process config's `api_keys`, part of every set.
    pub api_keys: Vec<String>,
    /// The configured account names (what `accounts:` may name).
    pub accounts: Vec<String>,
    pub keys: Arc<ArcSwap<KeySet>>,
}

/// Owns reloading the rules file into the shared [`ArcSwap`].
pub struct Reloader {
    path: PathBuf,
    rules: Arc<ArcSwap<Rules>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Called after new rules were swapped in (the backend drains its pre-warmed pool, so
    /// no process started under the old settings is handed out).
    on_swap: Box<dyn Fn() + Send + Sync>,
    status: Mutex<RulesStatus>,
    serial: tokio::sync::Mutex<()>,
    keys: Option<KeysReload>,
}

/// Where loaded rules came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesSource {
    /// The rules file.
    File,
    /// The compiled-in defaults: the file did not exist.
    Embedded,
}

impl RulesSource {
    /// `file` or `embedded`, as `/admin/rules` and the logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RulesSource::File => "file",
            RulesSource::Embedded => "embedded",
        }
    }
}

/// What [`load_rules_file`] does when the file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Use the embedded rules (`serve` at start, and `check` / `classify`, which load what
    /// `serve` would).
    Embedded,
    /// Fail: a reload keeps the running rules, and a file named explicitly must exist.
    Fail,
}

/// Rules read and compiled by [`load_rules_file`].
#[derive(Debug, Clone)]
pub struct LoadedRules {
    /// The path asked for (also when the embedded rules were used instead).
    pub path: PathBuf,
    pub rules: Rules,
    pub source: RulesSource,
}

impl LoadedRules {
    /// SHA-256 of the rules text (the file's bytes, or the embedded source).
    pub fn sha256(&self) -> &str {
        self.rules.sha256()
    }
}

/// Why a rules file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesLoadError {
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Empty or whitespace only. At a reload this is usually the first half of a
    /// truncate-then-write save; the write that follows brings the content (and an event).
    #[error("rules file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// Every problem of the file, with line and column.
    #[error("{0}")]
    Invalid(#[from] crate::rules::LoadError),
}

/// The one rules loader (`serve`, reloads, `check`, `classify`, `test`): reads `path` and
/// compiles it, or uses the embedded rules when it does not exist and `if_missing` says so.
/// CPU work (regexes, automaton): call it off the async workers.
pub fn load_rules_file(path: &Path, if_missing: IfMissing) -> Result<LoadedRules, RulesLoadError> {
    let text = match read_capped(path) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Err(RulesLoadError::Invalid(crate::rules::load::too_big(
                &path.display().to_string(),
                crate::rules::load::MAX_RULES_BYTES + 1,
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && if_missing == IfMissing::Embedded => {
            return Ok(LoadedRules {
                path: path.to_path_buf(),
                rules: Rules::embedded(),
                source: RulesSource::Embedded,
            });
        }
        Err(source) => {
            return Err(RulesLoadError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if text.trim().is_empty() {
        return Err(RulesLoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let rules = Rules::from_yaml(&text, &path.display().to_string())?;
    Ok(LoadedRules {
        path: path.to_path_buf(),
        rules,
        source: RulesSource::File,
    })
}

/// Reads at most [`MAX_RULES_BYTES`](crate::rules::load::MAX_RULES_BYTES) + 1 bytes of the
/// file (a huge file is never read whole); None when it is larger than the cap.
fn read_capped(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let cap = crate::rules::load::MAX_RULES_BYTES;
    let mut bytes = Vec::new();
    // Opened without blocking and refused unless it is a regular file: opening a FIFO for
    // reading blocks until a writer comes, and each reload attempt would leave one more
    // blocked thread behind.
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)?
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    file.take(u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The longest a reload may read and compile before it is given up (the running rules
/// stay). The rules' size caps keep a real compile far below this; the bound is for what
/// they did not foresee (the blocking thread then finishes on its own, off the workers).
pub const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a reload attempt ended before the swap.
enum Loaded {
    /// New rules to swap in.
    New(Box<Rules>),
    /// The file's content is already running.
    Unchanged,
    /// The file is empty right after a change: most likely the first half of a
    /// truncate-then-write save. Not a failed reload: the write brings another event.
    Pending,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        rules: Arc<ArcSwap<Rules>>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        on_swap: Box<dyn Fn() + Send + Sync>,
    ) -> Reloader {
        let current = rules.load();
        let source = if path.is_file() { "file" } else { "embedded" };
        metrics.reload_success_timestamp.set(unix_now() as f64);
        let status = RulesStatus {
            path: path.display().to_string(),
            source,
            sha256: current.sha256().to_string(),
            kinds: current.kinds_count(),
            markers: current.markers_count(),
            loaded_at: now_rfc3339(),
            last_attempt: None,
            keys: None,
        };
        Reloader {
            path,
            rules,
            metrics,
            health,
            on_swap,
            status: Mutex::new(status),
            serial: tokio::sync::Mutex::new(()),
            keys: None,
        }
    }

    /// Also reloads this keys file (whose current set is already in `keys.keys`).
    pub fn with_keys(mut self, keys: KeysReload) -> Reloader {
        let current = keys.keys.load();
        self.status_lock().keys = Some(KeysStatus {
            path: keys.path.display().to_string(),
            sha256: current.sha256().to_string(),
            keys: current.len(),
            loaded_at: now_rfc3339(),
        });
        drop(current);
        self.keys = Some(keys);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files a reload reads: the rules file and the keys file, if any.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        if let Some(k) = &self.keys {
            v.push(k.path.clone());
        }
        v
    }

    /// Reloads the keys file: Ok(changed), or why the running keys stay.
    async fn reload_keys(&self) -> Result<bool, String> {
        let Some(k) = &self.keys else {
            return Ok(false);
        };
        let (path, api_keys, accounts) = (k.path.clone(), k.api_keys.clone(), k.accounts.clone());
        let task = tokio::task::spawn_blocking(move || {
            crate::keys::load_keys_file(&path, &api_keys, &accounts, unix_now() as i64)
        });
        let set = match tokio::time::timeout(RELOAD_TIMEOUT, task).await {
            Err(_) => {
                return Err("reading the keys file took too long; keeping the running keys".into())
            }
            Ok(Err(e)) => return Err(format!("keys reload task failed: {e}")),
            Ok(Ok(Err(e))) => return Err(format!("{e}; keeping the running keys")),
            Ok(Ok(Ok(set))) => set,
        };
        if set.sha256() == k.keys.load().sha256() {
            return Ok(false);
        }
        let (sha, count) = (set.sha256().to_string(), set.len());
        k.keys.store(Arc::new(set));
        if let Some(st) = self.status_lock().keys.as_mut() {
            st.sha256 = sha;
            st.keys = count;
            st.loaded_at = now_rfc3339();
        }
        Ok(true)
    }

    fn status_lock(&self) -> std::sync::MutexGuard<'_, RulesStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> RulesStatus {
        self.status_lock().clone()
    }

    /// Reads, validates and swaps in the rules file. Never leaves the running rules broken.
    pub async fn reload(&self, trigger: Trigger) -> ReloadAttempt {
        let _serial = self.serial.lock().await;
        let started = std::time::Instant::now();
        let path = self.path.clone();
        let current_sha = self.rules.load().sha256().to_string();
        // Reading and compiling (regexes, automaton) is CPU work: keep it off the workers.
        // A deleted file is an error here: the running rules stay.
        let task = tokio::task::spawn_blocking(move || load_rules_file(&path, IfMissing::Fail));
        let loaded = match tokio::time::timeout(RELOAD_TIMEOUT, task).await {
            Err(_) => Err(format!(
                "reading and compiling the rules took longer than {} s; keeping the running rules",
                RELOAD_TIMEOUT.as_secs()
            )),
            Ok(joined) => joined
                .map_err(|e| format!("reload task failed: {e}"))
                .and_then(|r| match r {
                    Err(RulesLoadError::Empty { .. }) if trigger == Trigger::FileChange => {
                        Ok(Loaded::Pending)
                    }
                    Err(e @ RulesLoadError::Empty { .. }) => {
                        Err(format!("{e}; keeping the running rules"))
                    }
                    Err(e) => Err(e.to_string()),
                    // Identical content is not swapped in again.
                    Ok(l) if l.sha256() == current_sha => Ok(Loaded::Unchanged),
                    Ok(l) => Ok(Loaded::New(Box::new(l.rules))),
                }),
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(Loaded::Pending) = loaded {
            tracing::info!(
                path = %self.path.display(),
                "rules file is empty after a change (a save in progress?); keeping the running rules until it has content"
            );
            return ReloadAttempt {
                at: now_rfc3339(),
                trigger,
                ok: true,
                changed: false,
                error: None,
                duration_ms,
            };
        }
        let attempt = match loaded {
            Ok(Loaded::Unchanged | Loaded::Pending) => ReloadAttempt {
                at: now_rfc3339(),
                trigger,
                ok: true,
                changed: false,
                error: None,
                duration_ms,
            },
            Ok(Loaded::New(rules)) => {
                let rules = *rules;
                let (sha, kinds, markers) = (
                    rules.sha256().to_string(),
                    rules.kinds_count(),
                    rules.markers_count(),
                );
                for w in rules.warnings() {
                    tracing::warn!(warning = %w, "rules loaded with a warning (see `ccgate check`)");
                }
                self.rules.store(Arc::new(rules));
                let mut st = self.status_lock();
                st.sha256 = sha;
                st.kinds = kinds;
                st.markers = markers;
                st.source = "file";
                st.loaded_at = now_rfc3339();
                drop(st);
                if self.health.is_ok() {
                    // The probe interval may have changed: let the probe re-time itself.
                    self.health.settings_changed.notify_one();
                } else {
                    // The gate was closed by the old rules' idea of `unhealthy`: probe now,
                    // so the new rules decide it (the probe re-times itself afterwards).
                    self.health.probe_wakeup.notify_one();
                }
                (self.on_swap)();
                ReloadAttempt {
                    at: now_rfc3339(),
                    trigger,
                    ok: true,
                    changed: true,
                    error: None,
                    duration_ms,
                }
            }
            Err(error) => ReloadAttempt {
                at: now_rfc3339(),
                trigger,
                ok: false,
                changed: false,
                error: Some(error),
                duration_ms,
            },
        };
        let mut attempt = attempt;
        match self.reload_keys().await {
            Ok(changed) => attempt.changed |= changed,
            Err(e) => {
                attempt.ok = false;
                attempt.error = Some(match attempt.error.take() {
                    Some(rules_error) => format!("{rules_error}\n{e}"),
                    None => e,
                });
            }
        }
        let result = match (attempt.ok, attempt.changed) {
            (true, true) => "success",
            (true, false) => "unchanged",
            _ => "failure",
        };
        self.metrics
            .reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.metrics.reload_successful.set(i64::from(attempt.ok));
        if attempt.ok {
            self.metrics.reload_success_timestamp.set(unix_now() as f64);
            tracing::info!(
                ?trigger,
                changed = attempt.changed,
                duration_ms,
                "rules reloaded"
            );
        } else {
            tracing::error!(
                ?trigger,
                error = attempt.error.as_deref().unwrap_or(""),
                "rules reload failed; keeping the running rules"
            );
        }
        self.status_lock().last_attempt = Some(attempt.clone());
        attempt
    }
}

/// Installs the SIGHUP handler now (so a SIGHUP right after `serve` starts can't kill the
/// process with the default action) and returns the task body that reloads on each one
/// until `shutdown` (a reload in progress finishes first).
pub fn sighup_reloads(
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let hup = signal(SignalKind::hangup());
    async move {
        let mut hup = match hup {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload via file changes or POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => match got {
                    Some(()) => {
                        reloader.reload(Trigger::Sighup).await;
                    }
                    None => break,
                },
                () = shutdown.triggered() => break,
            }
        }
    }
}

type FileDebouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Keeps the file watcher alive. Dropping it stops watching; the watcher's task then ends
/// on its own (after a reload in progress). [`WatchGuard::stop`] also waits for that.
pub struct WatchGuard {
    /// The only strong reference: the task holds a `Weak` (to add directories), so
    /// dropping the guard drops the debouncer, whose event handler owns the sender the
    /// task listens on.
    debouncer: Arc<Mutex<FileDebouncer>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchGuard {
    /// Stops watching and waits until the watcher's task has ended.
    pub async fn stop(self) {
        let WatchGuard { debouncer, task } = self;
        drop(debouncer);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "rules file watcher task failed");
        }
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard")
            .field("task_finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

/// The directories to watch for `path`: its own directory (catches rename-over, delete +
/// recreate, and the Kubernetes `..data` symlink swap) and, if it is a symlink, the
/// directory of its resolved target (catches in-place edits of the target).
fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dirs.push(parent);
    if let Ok(target) = std::fs::canonicalize(path) {
        if let Some(tp) = target.parent() {
            if !dirs
                .iter()
                .any(|d| std::fs::canonicalize(d).ok().as_deref() == Some(tp))
            {
                dirs.push(tp.to_path_buf());
            }
        }
    }
    dirs
}

/// [`watch_dirs`] of every file a reload reads, without repeats.
fn watch_dirs_all(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in paths.iter().flat_map(|p| watch_dirs(p)) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// [`watched_names`] of every file a reload reads.
fn watched_names_all(paths: &[PathBuf]) -> std::collections::HashSet<std::ffi::OsString> {
    paths.iter().flat_map(|p| watched_names(p)).collect()
}

/// File names whose events matter: the rules file's own name, the Kubernetes `..data`
/// link, and the name of the symlink's resolved target.
fn watched_names(path: &Path) -> std::collections::HashSet<std::ffi::OsString> {
    let mut names = std::collections::HashSet::new();
    if let Some(n) = path.file_name() {
        names.insert(n.to_os_string());
    }
    names.insert(std::ffi::OsString::from("..data"));
    if let Some(n) = std::fs::canonicalize(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_os_string()))
    {
        names.insert(n);
    }
    names
}

/// Starts watching the rules file's directory; each debounced burst of changes feeds one
/// [`Reloader::reload`] with [`Trigger::FileChange`], until `shutdown` or until the
/// returned guard is dropped. Returns None (after logging why) if the watcher cannot be
/// set up: SIGHUP and `/admin/reload` still work.
pub fn spawn_watcher(
    reloader: Arc<Reloader>,
    debounce: std::time::Duration,
    shutdown: Shutdown,
) -> Option<WatchGuard> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    use notify::RecursiveMode;
    use notify_debouncer_full::{new_debouncer, DebounceEventResult};

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let names = Arc::new(Mutex::new(watched_names_all(&reloader.paths())));
    let names_for_handler = names.clone();
    let handler = move |res: DebounceEventResult| {
        let wanted = names_for_handler
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        let relevant = match res {
            Ok(events) => events.iter().any(|e| {
                let kind_counts = match e.event.kind {
                    // Our own reads (open/close-nowrite) must never trigger a reload.
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => true,
                };
                // Only the rules file (or the ConfigMap's `..data` link) counts: other
                // files in the directory (a log, an editor's swap file) must not cause
                // reloads, least of all ccgate's own log.
                kind_counts
                    && e.event
                        .paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| wanted.contains(n)))
            }),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    };
    let mut debouncer = match new_debouncer(debounce, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the rules file watcher; SIGHUP and POST /admin/reload still reload");
            return None;
        }
    };
    let dirs = watch_dirs_all(&reloader.paths());
    let (mut watching, mut failed) = (0, 0);
    for dir in &dirs {
        if matches!(std::fs::metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            // Normal when running on the embedded rules without a rules directory.
            tracing::info!(dir = %dir.display(), "rules directory does not exist, not watching it; SIGHUP and POST /admin/reload still reload");
            continue;
        }
        match debouncer.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watching += 1,
            Err(e) => {
                failed += 1;
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
            }
        }
    }
    if watching == 0 {
        if failed > 0 {
            tracing::error!(
                "rules file watcher watches nothing; SIGHUP and POST /admin/reload still reload"
            );
        }
        return None;
    }
    let debouncer = Arc::new(Mutex::new(debouncer));
    let for_task = Arc::downgrade(&debouncer);
    let mut watched = dirs;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() {
                    // The guard dropped the debouncer and with it the sender.
                    break;
                },
                () = shutdown.triggered() => break,
            }
            // Drain a burst that arrived while we were reloading: one reload covers it.
            while rx.try_recv().is_ok() {}
            reloader.reload(Trigger::FileChange).await;
            // A symlinked rules file may now point into a new directory (ConfigMap swap).
            if let Ok(mut n) = names.lock() {
                *n = watched_names_all(&reloader.paths());
            }
            let Some(debouncer) = for_task.upgrade() else {
                break;
            };
            for dir in watch_dirs_all(&reloader.paths()) {
                if !watched.contains(&dir) {
                    if let Ok(mut d) = debouncer.lock() {
                        if d.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
                            watched.push(dir);
                        }
                    }
                }
            }
        }
    });
    Some(WatchGuard { debouncer, task })
}
