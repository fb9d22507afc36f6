//! `ccgate check`: validate a rules file, reporting every problem.

use std::io::Write;
use std::path::PathBuf;

use super::load_rules;

/// `ccgate check [RULES]`: validate a rules file, reporting every problem.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Rules file (default: rules/rules.yaml if it exists, else the embedded rules).
    pub rules: Option<PathBuf>,
}

/// `ccgate check`.
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match load_rules(args.rules.as_deref()) {
        Ok(r) => {
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
