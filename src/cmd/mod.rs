//! The subcommands (`ccgate serve | check | classify | test | schema | doctor | keys | usage`)
//! as library functions: each rules subcommand takes its clap args plus stdout/stderr writers and
//! returns the process exit code, so `main.rs` only dispatches. `serve` runs the gateway.

mod check;
mod classify;
mod doctor;
mod keys;
pub mod log;
mod schema;
pub mod serve;
mod test;
mod usage;

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, LoadedConfig, Overrides};
use crate::reload::{load_rules_file, IfMissing, LoadedRules, RulesSource};

pub use crate::capture::{classify_json, is_capture, parse_capture, parse_input, Outcome};
pub use check::{check, CheckArgs};
pub use classify::{classify, ClassifyArgs};
pub use doctor::{doctor, run_checks, Check, DoctorArgs, Status};
pub use keys::{keys, KeysArgs, KeysCommand};
pub use schema::{schema, schema_json, SchemaArgs, SchemaOf};
pub use serve::ServeArgs;
pub use test::{json_contains, run_test_file, test, Expect, TestArgs, TestCase, TestFile};
pub use usage::{usage, UsageArgs};

/// Default rule test files.
pub const DEFAULT_TESTS_DIR: &str = "rules/tests";

/// The flags through which `check` and `classify` find the rules exactly as `serve` does:
/// `config/ccgate.yaml` < `--config` < `CCGATE_RULES` < `--rules`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RulesSourceArgs {
    /// Process config file (YAML) whose `rules:` key names the rules file, as for `serve`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Rules file (overrides `rules` / CCGATE_RULES), as for `serve`: the embedded rules
    /// are used if it does not exist.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

/// The process config from the real environment, with the documented precedence.
pub fn load_config(
    config: Option<&Path>,
    overrides: &Overrides,
) -> Result<LoadedConfig, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    Config::load(config, overrides, &env)
}

/// The rules `serve` would start with for these flags (rules path from the process config;
/// the embedded rules if that file does not exist). Errors are fully rendered.
pub fn serve_rules(args: &RulesSourceArgs) -> Result<LoadedRules, String> {
    let overrides = Overrides {
        rules: args.rules.clone(),
        ..Overrides::default()
    };
    let loaded = load_config(args.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    load_rules_file(&loaded.config.rules, IfMissing::Embedded).map_err(|e| e.to_string())
}

/// Loads the rules of a file named explicitly (it must exist). Errors are fully rendered.
pub fn explicit_rules(path: &Path) -> Result<LoadedRules, String> {
    load_rules_file(path, IfMissing::Fail).map_err(|e| e.to_string())
}

/// One line naming the rules used: `rules: PATH (file)`, or that PATH does not exist and
/// the embedded rules are used.
pub fn rules_used(loaded: &LoadedRules) -> String {
    match loaded.source {
        RulesSource::File => format!("rules: {} (file)", loaded.path.display()),
        RulesSource::Embedded => format!(
            "rules: {} not found: using the embedded rules",
            loaded.path.display()
        ),
    }
}
