mod api;
mod config;
mod harness;
mod health;
mod reload;
mod security;
