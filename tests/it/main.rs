mod api;
mod config;
mod harness;
