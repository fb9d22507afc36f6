//! `ccgate keys new NAME [--role admin]`: a fresh random key, printed once, and the keys
//! file entry (with its digest) to paste.

use std::io::Write;

use crate::keys::Role;

/// `ccgate keys …`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key (once: only its digest is kept) and its keys file entry.
    New {
        /// The key's name (log, metric and ledger label).
        name: String,
        /// `client` or `admin`.
        #[arg(long, value_enum, default_value = "client")]
        role: RoleArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Client,
    Admin,
}

/// `ccgate keys`.
pub fn keys(args: &KeysArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match &args.command {
        KeysCommand::New { name, role } => {
            let role = match role {
                RoleArg::Client => Role::Client,
                RoleArg::Admin => Role::Admin,
            };
            let name = name.trim();
            if !crate::keys::valid_name(name) {
                let _ = writeln!(err, "name must be 1-64 letters, digits or `_ - . @`");
                return 2;
            }
            let (key, digest) = crate::keys::new_key();
            let role = match role {
                Role::Client => "client",
                Role::Admin => "admin",
            };
            let _ = writeln!(
                out,
                "# The key for {name} (shown only now; ccgate keeps its digest only):\n{key}\n\n# The entry for the keys file:\n  - name: {name}\n    sha256: \"{digest}\"\n    role: {role}"
            );
            0
        }
    }
}
