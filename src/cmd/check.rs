//! `ccgate check`: validate a rules file, the configuration and the keys file, reporting
//! every problem: each loaded and compiled as `serve` loads it.

use std::io::Write;
use std::path::PathBuf;

use super::{explicit_rules, load_config, rules_used, serve_rules, RulesSourceArgs};
use crate::config::Overrides;
use crate::reload::RulesSource;

/// `ccgate check [RULES]`: validate the rules `serve` would load (or the file given), and
/// the keys file `serve` would load (or `--keys FILE`), reporting every problem.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Rules file to check; it must exist. Without it: the file `serve` would load
    /// (`--rules`, CCGATE_RULES, the config's `rules:`, default rules/rules.yaml), or the
    /// embedded rules if that file does not exist.
    #[arg(value_name = "RULES", conflicts_with = "rules")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub source: RulesSourceArgs,
    /// Keys file to check (default: the config's `keys:` / CCGATE_KEYS, if set).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

/// `ccgate check`: prints `PATH: ok (N kinds, M markers)` (and `PATH: ok (N keys)` for a
/// keys file) with exit 0 (warnings, such as a `startup_failure_reason` no tested CLI
/// reports, on stderr), or every problem with exit 1.
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let loaded = match &args.file {
        Some(path) => explicit_rules(path),
        None => serve_rules(&args.source),
    };
    let mut code = match loaded {
        Ok(l) => {
            if l.source == RulesSource::Embedded {
                let _ = writeln!(err, "{}", rules_used(&l));
            }
            let r = &l.rules;
            for w in r.warnings() {
                let _ = writeln!(err, "{w}");
            }
            let _ = writeln!(
                out,
                "{}: ok ({} kinds, {} markers)",
                r.origin(),
                r.kinds_count(),
                r.markers_count()
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            1
        }
    };
    // The keys file, exactly as `serve` loads it (with the config's api_keys and accounts).
    let config = load_config(args.source.config.as_deref(), &Overrides::default());
    let (keys_path, api_keys, accounts) = match &config {
        Ok(c) => (
            args.keys.clone().or_else(|| c.config.keys.clone()),
            c.config.api_keys.clone(),
            c.config.accounts.iter().map(|a| a.name.clone()).collect(),
        ),
        Err(_) => (args.keys.clone(), Vec::new(), Vec::new()),
    };
    match &config {
        // The whole configuration, compiled as `serve` compiles it (every bound, the
        // accounts, the state store's settings, the upstream proxy of web fetches).
        Ok(c) => {
            if let Err(e) = c.config.compile() {
                let _ = writeln!(err, "{e}");
                code = 1;
            }
            for name in &c.ignored_env {
                let _ = writeln!(
                    err,
                    "warning: ignoring environment variable {name}: not a ccgate config key"
                );
            }
        }
        // Without a rules file named, `serve_rules` above already said it.
        Err(e) if args.file.is_some() => {
            let _ = writeln!(err, "{e}");
            code = 1;
        }
        Err(_) => {}
    }
    if let Ok(c) = &config {
        for w in c
            .config
            .shared_login_warnings(&|k| std::env::var_os(k).is_some())
        {
            let _ = writeln!(err, "{w}");
        }
    }
    if let Some(path) = keys_path {
        let now = crate::clock::unix_now() as i64;
        match crate::keys::load_keys_file(&path, &api_keys, &accounts, now) {
            Ok(set) => {
                let _ = writeln!(out, "{}: ok ({} keys)", path.display(), set.len());
            }
            Err(e) => {
                let _ = writeln!(err, "{e}");
                code = 1;
            }
        }
    }
    code
}
