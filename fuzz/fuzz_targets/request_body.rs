//! Fuzz target `request_body`: arbitrary bytes → the OpenAI Chat Completions, Responses and
//! Anthropic request parsers (`parse_request`), i.e. what every `POST /v1/chat/completions`,
//! `/v1/responses` and `/v1/messages` body goes through before a CLI is spawned, and the
//! token estimate of `/v1/messages/count_tokens`. Must never panic; an accepted body must name a
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
    if let Ok(turn) = ccgate::http::responses::parse_request(data) {
        assert!(turn.validate().is_ok());
    }
    let _ = ccgate::http::count_tokens::count_body(data);
});
