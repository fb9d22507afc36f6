//! The one integration-test binary; each area is a module.
mod api;
mod backend;
mod binary;
mod cli_cmds;
mod config;
mod harness;
mod health;
mod mock_api;
mod pool;
mod props;
mod real_cli;
mod real_gateway;
mod reload;
mod rules;
mod security;
mod support;
mod support_real;
