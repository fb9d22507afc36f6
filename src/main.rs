//! The `ccgate` binary: a thin clap dispatcher over the library. `serve` is the default.
#![forbid(unsafe_code)]

use ccgate::cmd;
use std::io::Write;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ccgate",
    version,
    about = "OpenAI/Anthropic-compatible gateway for the Claude Code CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(cmd::ServeArgs),
    /// Validate the rules `serve` would load (or a given file) and report every problem.
    Check(cmd::CheckArgs),
    /// Classify a failure (facts YAML/JSON or a stream-json capture).
    Classify(cmd::ClassifyArgs),
    /// Run rule test files.
    Test(cmd::TestArgs),
    /// Print the rules file's (or the keys file's) JSON Schema.
    Schema(cmd::SchemaArgs),
    /// Check whether this host can serve: the CLI and its version, capabilities, each
    /// account's login and state directory, temp dir, rules, listen address.
    Doctor(cmd::DoctorArgs),
    /// Manage API keys: `keys new NAME [--role admin]`.
    Keys(cmd::KeysArgs),
    /// Show the usage ledger: `usage --by key,model --since 24h`.
    Usage(cmd::UsageArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Default::default()));
    let code = match &command {
        Command::Serve(args) => return Ok(cmd::serve::serve(args)?),
        Command::Check(a) => with_stdio(|out, err| cmd::check(a, out, err)),
        Command::Classify(a) => with_stdio(|out, err| cmd::classify(a, out, err)),
        Command::Test(a) => with_stdio(|out, err| cmd::test(a, out, err)),
        Command::Schema(a) => with_stdio(|out, err| cmd::schema(a, out, err)),
        Command::Doctor(a) => with_stdio(|out, err| cmd::doctor(a, out, err)),
        Command::Keys(a) => with_stdio(|out, err| cmd::keys(a, out, err)),
        Command::Usage(a) => with_stdio(|out, err| cmd::usage(a, out, err)),
    };
    std::process::exit(code)
}

/// Runs a rules subcommand on locked stdout / stderr (released before `exit`).
fn with_stdio(f: impl FnOnce(&mut dyn Write, &mut dyn Write) -> i32) -> i32 {
    f(&mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}
