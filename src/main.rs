//! The `ccgate` binary: a thin clap dispatcher over the library. `serve` is the default.
#![forbid(unsafe_code)]

use ccgate::cmd;
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
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Default::default()));
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let code = match &command {
        Command::Serve(args) => {
            drop((out, err));
            return serve(args);
        }
        Command::Check(a) => cmd::check(a, &mut out, &mut err),
        Command::Classify(a) => cmd::classify(a, &mut out, &mut err),
        Command::Test(a) => cmd::test(a, &mut out, &mut err),
        Command::Schema(a) => cmd::schema(a, &mut out, &mut err),
    };
    drop((out, err));
    std::process::exit(code)
}

fn serve(args: &ccgate::cmd::serve::ServeArgs) -> anyhow::Result<()> {
    let loaded = ccgate::cmd::serve::load_config(args)?;
    let config = loaded.config;
    ccgate::cmd::serve::init_logging(&config);
    for name in loaded.ignored_env {
        tracing::warn!(variable = %name, "ignoring environment variable: not a ccgate config key");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ccgate::cmd::serve::run(config))?;
    Ok(())
}
