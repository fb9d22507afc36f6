//! Classifier inputs and the verdict document: a failure given as a stream-json capture
//! (stdout lines plus `#directive:` lines) or as a facts document, and the JSON every
//! classifier front end shows for it (`ccgate classify`, `ccgate test`, the operator page's
//! playground `POST /admin/classify`). Pure: no IO.

use serde_json::{json, Value};

use crate::protocol::{RunAccumulator, RunEnd};
use crate::rules::{FailureFacts, Flavour, Rules, TemplateValues};

/// What a classify input turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The capture is a successful run (nothing to classify).
    Success {
        text: String,
    },
    Failure(Box<FailureFacts>),
}

/// Whether `text` is a capture (first non-blank line starts with `{` or `#`) rather than
/// a YAML/JSON facts document.
pub fn is_capture(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with('{') || l.starts_with('#'))
}

/// Parses a capture: stream-json stdout lines plus `#directive: value` lines
/// (`#stderr:` repeatable and joined with newlines, `#exit:`, `#signal:`, `#spawn_error:`,
/// `#spawn_error_message:`, `#timeout:`, `#condition:`; `# ` followed by text is a comment).
pub fn parse_capture(text: &str) -> Result<Outcome, String> {
    let mut acc = RunAccumulator::new();
    let mut stderr: Vec<&str> = Vec::new();
    let (mut exit, mut signal) = (None, None);
    let (mut spawn_error, mut spawn_msg, mut timeout, mut condition) = (None, None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let Some(directive) = line.trim_start().strip_prefix('#') else {
            acc.push_line(line);
            continue;
        };
        let Some((key, value)) = directive.split_once(':') else {
            continue; // comment
        };
        let key = key.trim();
        let v = value.strip_prefix(' ').unwrap_or(value);
        let bad = |what: &str| format!("capture line {}: bad {what} value `{}`", n + 1, v.trim());
        match key {
            "stderr" => stderr.push(v),
            "exit" => exit = Some(v.trim().parse::<i32>().map_err(|_| bad("exit"))?),
            "signal" => signal = Some(v.trim().parse::<i32>().map_err(|_| bad("signal"))?),
            "spawn_error" => spawn_error = Some(enum_val(v).map_err(|_| bad("spawn_error"))?),
            "spawn_error_message" => spawn_msg = Some(v.to_string()),
            "timeout" => timeout = Some(enum_val(v).map_err(|_| bad("timeout"))?),
            "condition" => condition = Some(enum_val(v).map_err(|_| bad("condition"))?),
            k if k.contains(' ') => {} // a comment containing a colon
            other => {
                return Err(format!(
                    "capture line {}: unknown directive `#{other}:`",
                    n + 1
                ))
            }
        }
    }
    let tail = stderr.join("\n");
    if spawn_error.is_some() {
        // Nothing ran: the facts are the spawn error alone.
        return Ok(Outcome::Failure(Box::new(FailureFacts {
            spawn_error,
            spawn_error_message: spawn_msg,
            stderr_tail: tail,
            ..FailureFacts::default()
        })));
    }
    let mut facts = match acc.conclude(RunEnd {
        exit_code: exit,
        signal,
        stderr_tail: tail,
        timeout,
        condition,
    }) {
        Ok(s) => return Ok(Outcome::Success { text: s.text }),
        Err(f) => f,
    };
    facts.spawn_error_message = spawn_msg.or(facts.spawn_error_message.take());
    Ok(Outcome::Failure(facts))
}

fn enum_val<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::String(v.trim().to_string()))
}

/// Parses a classify input: a capture or a YAML/JSON `FailureFacts` document.
pub fn parse_input(text: &str) -> Result<Outcome, String> {
    if is_capture(text) {
        parse_capture(text)
    } else {
        serde_saphyr::from_str::<FailureFacts>(text)
            .map(|f| Outcome::Failure(Box::new(f)))
            .map_err(|e| format!("facts: {e}"))
    }
}

/// The JSON `classify` prints: `{kind, status, headers, unhealthy, matched, message, body}`
/// (or `{kind: "success", text}` for a successful capture).
pub fn classify_json(rules: &Rules, outcome: &Outcome, flavour: Flavour) -> Value {
    match outcome {
        Outcome::Success { text } => json!({"kind": "success", "text": text}),
        Outcome::Failure(facts) => {
            let v = rules.classify(facts);
            let values = TemplateValues {
                request_id: "req_classify".into(),
                ..TemplateValues::default()
            };
            let headers: serde_json::Map<String, Value> = rules
                .render_headers(&v, &values)
                .into_iter()
                .map(|(k, val)| (k, Value::String(val)))
                .collect();
            json!({
                "kind": v.kind,
                "status": rules.status_for(&v, flavour),
                "headers": headers,
                "unhealthy": v.unhealthy,
                "account_scoped": v.account_scoped,
                "cooldown": v.cooldown,
                "matched": v.matched,
                "message": v.message,
                "body": rules.render_body(&v, flavour, &values),
            })
        }
    }
}
