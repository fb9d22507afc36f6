//! `ccgate schema [rules|keys]`: print the rules file's or the keys file's JSON Schema.

use std::io::Write;

use crate::rules::model::RulesFile;

/// Which file's schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaOf {
    #[default]
    Rules,
    Keys,
}

/// `ccgate schema [rules|keys]`: print a file's JSON Schema (default: the rules file's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchemaArgs {
    /// The file whose schema to print.
    #[arg(value_enum, default_value_t = SchemaOf::Rules)]
    pub of: SchemaOf,
}

/// The JSON Schema of the rules file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RulesFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// `ccgate schema`.
pub fn schema(args: &SchemaArgs, out: &mut dyn Write, _err: &mut dyn Write) -> i32 {
    let text = match args.of {
        SchemaOf::Rules => schema_json(),
        SchemaOf::Keys => crate::keys::schema_json(),
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
