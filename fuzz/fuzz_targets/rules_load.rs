//! Fuzz target `rules_load`: arbitrary bytes → UTF-8 (lossy) → `Rules::from_yaml`, exactly
//! what `ccgate check` and a reload run on an operator's file. Must never panic (or blow
//! the stack); a file that loads must classify a default failure and render both body
//! flavours and the headers; a file that doesn't must print its problems.
#![no_main]

use ccgate::rules::{FailureFacts, Flavour, Rules, TemplateValues};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Rules::from_yaml(&text, "fuzz") {
        Ok(rules) => {
            let verdict = rules.classify(&FailureFacts::default());
            let values = TemplateValues::default();
            for flavour in [Flavour::Openai, Flavour::Anthropic] {
                let status = rules.status_for(&verdict, flavour);
                assert!(
                    (400..=599).contains(&status),
                    "status {status} out of range"
                );
                let body = rules.render_body(&verdict, flavour, &values);
                // What the HTTP layer sends must be JSON a client can parse back.
                let wire = serde_json::to_string(&body).expect("body serializes");
                let back: serde_json::Value =
                    serde_json::from_str(&wire).expect("rendered body parses back as JSON");
                assert_eq!(back, body);
            }
            let _ = rules.render_headers(&verdict, &values);
            let _ = rules.first_unhealthy_kind();
            let _ = rules.kind_names().count();
        }
        Err(e) => {
            assert!(
                !e.problems.is_empty(),
                "a load error lists at least one problem"
            );
            let _ = e.to_string();
        }
    }
});
