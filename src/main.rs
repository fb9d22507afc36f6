//! The `ccgate` binary: parses the command line and dispatches to the library.
#![forbid(unsafe_code)]

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
    /// Run the gateway (the default).
    Serve(ccgate::serve_cmd::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(Default::default())) {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ccgate::serve_cmd::ServeArgs) -> anyhow::Result<()> {
    let loaded = ccgate::serve_cmd::load_config(&args)?;
    let config = loaded.config;
    ccgate::serve_cmd::init_logging(&config);
    for name in loaded.ignored_env {
        tracing::warn!(variable = %name, "ignoring environment variable: not a ccgate config key");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ccgate::serve_cmd::run(config))?;
    Ok(())
}
