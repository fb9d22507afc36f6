//! Fuzz target `request_body`: arbitrary bytes → the OpenAI and Anthropic request parsers
//! (`parse_request`), i.e. what every `POST /v1/chat/completions` and `/v1/messages` body
//! goes through before a CLI is spawned. Must never panic; an accepted body must name a
//! non-blank model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(turn) = ccgate::http::openai::parse_request(data) {
        assert!(!turn.model.trim().is_empty());
    }
    if let Ok(turn) = ccgate::http::anthropic::parse_request(data) {
        assert!(!turn.model.trim().is_empty());
    }
});
