//! `ccgate check`: validate a rules file, reporting every problem.

use std::io::Write;
use std::path::PathBuf;

use super::{explicit_rules, rules_used, serve_rules, RulesSourceArgs};
use crate::reload::RulesSource;

/// `ccgate check [RULES]`: validate the rules `serve` would load (or the file given),
/// reporting every problem.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Rules file to check; it must exist. Without it: the file `serve` would load
    /// (`--rules`, CCGATE_RULES, the config's `rules:`, default rules/rules.yaml), or the
    /// embedded rules if that file does not exist.
    #[arg(value_name = "RULES", conflicts_with = "rules")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub source: RulesSourceArgs,
}

/// `ccgate check`: prints `PATH: ok (N kinds, M markers)` (exit 0; warnings, such as a
/// `startup_failure_reason` no tested CLI reports, on stderr) or every problem (exit 1).
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let loaded = match &args.file {
        Some(path) => explicit_rules(path),
        None => serve_rules(&args.source),
    };
    match loaded {
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
    }
}
