//! The one integration-test binary; each area is a module.
mod cli_cmds;
mod rules;
