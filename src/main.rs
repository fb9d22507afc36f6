//! `ccgate` binary: a thin clap dispatcher. The rules subcommands live in `ccgate::cmd`.
//! (The integrator adds `serve` and the rest.)

use ccgate::cmd;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ccgate",
    version,
    about = "OpenAI/Anthropic-compatible gateway for the Claude Code CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a rules file and report every problem.
    Check(cmd::CheckArgs),
    /// Classify a failure (facts YAML/JSON or a stream-json capture).
    Classify(cmd::ClassifyArgs),
    /// Run rule test files.
    Test(cmd::TestArgs),
    /// Print the rules file's JSON Schema.
    Schema(cmd::SchemaArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let code = match &cli.command {
        Command::Check(a) => cmd::check(a, &mut out, &mut err),
        Command::Classify(a) => cmd::classify(a, &mut out, &mut err),
        Command::Test(a) => cmd::test(a, &mut out, &mut err),
        Command::Schema(a) => cmd::schema(a, &mut out, &mut err),
    };
    drop((out, err));
    std::process::exit(code)
}
