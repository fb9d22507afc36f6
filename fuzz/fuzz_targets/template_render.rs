//! Fuzz target `template_render`: the embedded default rules, arbitrary failure facts and
//! template values → classify → render both body flavours and the headers.
//!
//! Checks the template safety promise of `rules::template`: whatever the values (quotes,
//! braces, `{{placeholders}}`, control characters, huge strings), the rendered body
//! serializes to valid JSON that parses back unchanged and has exactly the same key
//! structure as the same verdict rendered with empty values (no key injection, no broken
//! JSON); header values stay valid HTTP header values.
#![no_main]

use arbitrary::Arbitrary;
use ccgate::rules::{
    FailureFacts, Flavour, GatewayCondition, Rules, SpawnErrorKind, TemplateValues, TimeoutKind,
    Verdict,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
struct Input {
    assistant_error: Option<String>,
    assistant_error_text: Option<String>,
    result_seen: bool,
    result_subtype: Option<String>,
    result_is_error: bool,
    result_text: Option<String>,
    result_errors: Vec<String>,
    api_error_status: Option<u16>,
    api_error_type: Option<String>,
    api_error: Option<String>,
    terminal_reason: Option<String>,
    retry_statuses: Vec<u16>,
    retry_errors: Vec<String>,
    rate_limit_resets_at: Option<u64>,
    now_unix: Option<u64>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    spawn_error: Option<u8>,
    spawn_error_message: Option<String>,
    timeout: Option<u8>,
    condition: Option<u8>,
    stderr_tail: String,
    request_id: String,
    model: Option<String>,
    last_probed_at: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
    /// Also render the verdict the health gate would use for this kind name.
    gate_kind: Option<String>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(Rules::embedded)
}

/// The key structure of a body: objects keep their keys, arrays their length, scalars
/// (where placeholder values land) collapse to null.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        _ => Value::Null,
    }
}

fn check(rules: &Rules, verdict: &Verdict, values: &TemplateValues) {
    let empty = TemplateValues::default();
    for flavour in [Flavour::Openai, Flavour::Anthropic] {
        let body = rules.render_body(verdict, flavour, values);
        let wire = serde_json::to_string(&body).expect("body serializes");
        let back: Value = serde_json::from_str(&wire).expect("body parses back");
        assert_eq!(back, body, "body changed in a JSON round trip");
        let baseline = rules.render_body(verdict, flavour, &empty);
        assert!(baseline.is_object(), "body is not a JSON object");
        assert_eq!(
            shape(&back),
            shape(&baseline),
            "placeholder values changed the body's keys"
        );
    }
    for (name, value) in rules.render_headers(verdict, values) {
        assert!(
            http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            "bad header name {name:?}"
        );
        assert!(
            http::HeaderValue::from_str(&value).is_ok(),
            "header {name} value {value:?} is not a valid header value"
        );
    }
}

fuzz_target!(|input: Input| {
    let rules = rules();
    let facts = FailureFacts {
        assistant_error: input.assistant_error,
        assistant_error_text: input.assistant_error_text,
        result_seen: input.result_seen,
        result_subtype: input.result_subtype,
        result_is_error: input.result_is_error,
        result_text: input.result_text,
        result_errors: input.result_errors,
        api_error_status: input.api_error_status,
        api_error_type: input.api_error_type,
        api_error: input.api_error,
        terminal_reason: input.terminal_reason,
        retry_statuses: input.retry_statuses,
        retry_errors: input.retry_errors,
        rate_limit_resets_at: input.rate_limit_resets_at,
        exit_code: input.exit_code,
        signal: input.signal,
        spawn_error: input.spawn_error.map(|b| match b % 3 {
            0 => SpawnErrorKind::NotFound,
            1 => SpawnErrorKind::PermissionDenied,
            _ => SpawnErrorKind::Other,
        }),
        spawn_error_message: input.spawn_error_message,
        timeout: input.timeout.map(|b| match b % 3 {
            0 => TimeoutKind::Start,
            1 => TimeoutKind::Inactivity,
            _ => TimeoutKind::Total,
        }),
        condition: input.condition.map(|b| match b % 5 {
            0 => GatewayCondition::QueueFull,
            1 => GatewayCondition::NoResult,
            2 => GatewayCondition::BadJson,
            3 => GatewayCondition::ShuttingDown,
            _ => GatewayCondition::StreamAbandoned,
        }),
        stderr_tail: input.stderr_tail,
    };
    let values = TemplateValues {
        request_id: input.request_id,
        model: input.model,
        last_probed_at: input.last_probed_at,
        error_kind: input.error_kind,
        error_message: input.error_message,
        now_unix: input.now_unix,
    };
    let verdict = rules.classify(&facts);
    assert!(rules.kind_names().any(|k| k == verdict.kind));
    check(rules, &verdict, &values);
    if let Some(name) = input.gate_kind {
        if let Some(v) = rules.verdict_for_kind(&name) {
            check(rules, &v, &values);
        }
        // A verdict naming a kind these rules don't have renders with the fallback.
        let stale = Verdict {
            kind: name,
            ..verdict
        };
        check(rules, &stale, &values);
    }
});
