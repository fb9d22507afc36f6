//! `ccgate schema`: print the rules file's JSON Schema.

use std::io::Write;

use crate::rules::model::RulesFile;

/// `ccgate schema`: print the rules file's JSON Schema.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchemaArgs {}

/// The JSON Schema of the rules file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RulesFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// `ccgate schema`.
pub fn schema(_args: &SchemaArgs, out: &mut dyn Write, _err: &mut dyn Write) -> i32 {
    match out.write_all(schema_json().as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
