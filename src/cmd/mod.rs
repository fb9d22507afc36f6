//! The subcommands (`ccgate serve | check | classify | test | schema`) as library
//! functions: each rules subcommand takes its clap args plus stdout/stderr writers and
//! returns the process exit code, so `main.rs` only dispatches. `serve` runs the gateway.

mod check;
mod classify;
mod schema;
pub mod serve;
mod test;

use std::path::Path;

use crate::reload::{load_rules_file, IfMissing};
use crate::rules::Rules;

pub use check::{check, CheckArgs};
pub use classify::{
    classify, classify_json, is_capture, parse_capture, parse_input, ClassifyArgs, Outcome,
};
pub use schema::{schema, schema_json, SchemaArgs};
pub use serve::ServeArgs;
pub use test::{json_contains, run_test_file, test, Expect, TestArgs, TestCase, TestFile};

/// Default rules path, relative to the working directory.
pub const DEFAULT_RULES_PATH: &str = "rules/rules.yaml";
/// Default rule test files.
pub const DEFAULT_TESTS_DIR: &str = "rules/tests";

/// Loads the rules at `path` (which must exist), or the default (`rules/rules.yaml` if
/// present, else embedded). Errors are fully rendered problem lists.
pub fn load_rules(path: Option<&Path>) -> Result<Rules, String> {
    let loaded = match path {
        Some(p) => load_rules_file(p, IfMissing::Fail),
        None => load_rules_file(Path::new(DEFAULT_RULES_PATH), IfMissing::Embedded),
    };
    loaded.map(|l| l.rules).map_err(|e| e.to_string())
}
