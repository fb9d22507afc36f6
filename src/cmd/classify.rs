//! `ccgate classify`: classify a failure given as a facts document or a stream-json capture
//! (the formats and the verdict document live in `crate::capture`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{rules_used, serve_rules, RulesSourceArgs};
use crate::capture::{classify_json, parse_input};
use crate::rules::Flavour;

/// `ccgate classify`: classify a failure (facts document or stream-json capture).
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// Where the rules come from: as for `serve`.
    #[command(flatten)]
    pub source: RulesSourceArgs,
    /// Which API's body shape and status to show.
    #[arg(long, default_value = "openai", value_parser = parse_flavour)]
    pub flavour: Flavour,
    /// Input file, or `-` / nothing for stdin.
    pub input: Option<PathBuf>,
}

fn parse_flavour(s: &str) -> Result<Flavour, String> {
    s.parse()
}

/// `ccgate classify`. Names the rules used on stderr. Reads stdin when the input is absent or `-`.
pub fn classify(args: &ClassifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let rules = match serve_rules(&args.source) {
        Ok(l) => {
            let _ = writeln!(err, "{}", rules_used(&l));
            l.rules
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    let text = match args.input.as_deref() {
        None => read_stdin(),
        Some(p) if p == Path::new("-") => read_stdin(),
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())),
    };
    let outcome = match text.and_then(|t| parse_input(&t)) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let json = classify_json(&rules, &outcome, args.flavour);
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    0
}

fn read_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(s)
}
