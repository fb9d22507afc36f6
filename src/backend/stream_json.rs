//! Parsing of the CLI's stream-json stdout lines into typed events (pure, no IO).
