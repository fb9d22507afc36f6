mod api;
mod backend;
mod config;
mod harness;
mod health;
mod reload;
mod security;
mod support;
