//! Fuzz target `request_body`: arbitrary bytes → the OpenAI and Anthropic request parsers
//! (`parse_request`), i.e. what every `POST /v1/chat/completions` and `/v1/messages` body
//! goes through before a CLI is spawned. Must never panic; an accepted body must name a
//! model that passes the shared checks (`engine::check_model`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(turn) = ccgate::http::openai::parse_request(data) {
        assert!(turn.validate().is_ok());
    }
    if let Ok(turn) = ccgate::http::anthropic::parse_request(data) {
        assert!(turn.validate().is_ok());
    }
});
