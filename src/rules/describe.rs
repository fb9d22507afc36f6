//! The rules in force as a plain document for operators (the operator page's rules table,
//! `GET /admin/overview`): each kind in match order with its statuses, flags and what it
//! matches, the fallback last.

use serde_json::{json, Map, Value};

use super::load::{CompiledKind, Matcher};
use super::Rules;

impl Rules {
    /// Every kind in match order (the fallback last, `fallback: true`): name, description,
    /// statuses, `unhealthy`, `account_scoped`, `cooldown`, `retry_after` and `match` (only
    /// the matchers the kind uses, as written in the rules).
    pub fn describe(&self) -> Value {
        let kinds = self
            .kinds
            .iter()
            .map(|k| describe_kind(k, false))
            .chain(std::iter::once(describe_kind(&self.fallback, true)))
            .collect();
        Value::Array(kinds)
    }
}

fn describe_kind(k: &CompiledKind, fallback: bool) -> Value {
    json!({
        "name": k.name,
        "description": k.description,
        "status": k.status,
        "openai_status": k.openai_status,
        "anthropic_status": k.anthropic_status,
        "unhealthy": k.unhealthy,
        "account_scoped": k.account_scoped,
        "cooldown": k.cooldown,
        "retry_after": k.retry_after,
        "fallback": fallback,
        "match": describe_matcher(&k.matcher),
    })
}

fn describe_matcher(m: &Matcher) -> Value {
    let mut out = Map::new();
    let mut put = |name: &str, values: Vec<Value>| {
        if !values.is_empty() {
            out.insert(name.to_string(), Value::Array(values));
        }
    };
    let strings = |v: &[String]| v.iter().map(|s| json!(s)).collect::<Vec<_>>();
    put("assistant_error", strings(&m.assistant_error));
    put("result_subtype", strings(&m.result_subtype));
    put("terminal_reason", strings(&m.terminal_reason));
    put("api_error", strings(&m.api_error));
    put("api_error_type", strings(&m.api_error_type));
    put(
        "api_error_status",
        m.api_error_status.iter().map(|s| json!(s)).collect(),
    );
    put(
        "retry_status",
        m.retry_status.iter().map(|s| json!(s)).collect(),
    );
    put("exit_code", m.exit_code.iter().map(|s| json!(s)).collect());
    put("signal", m.signal.iter().map(|s| json!(s)).collect());
    put(
        "spawn_error",
        m.spawn_error.iter().map(|s| json!(s)).collect(),
    );
    put("timeout", m.timeout.iter().map(|s| json!(s)).collect());
    put("condition", m.condition.iter().map(|s| json!(s)).collect());
    put("markers", strings(&m.markers));
    put("regex", m.regex.iter().map(|r| json!(r.as_str())).collect());
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_rules_describe_every_kind_in_order_with_what_it_matches() {
        let rules = Rules::embedded();
        let doc = rules.describe();
        let kinds = doc.as_array().unwrap();
        let names: Vec<&str> = kinds.iter().map(|k| k["name"].as_str().unwrap()).collect();
        let expected: Vec<&str> = rules.kind_names().collect();
        assert_eq!(names, expected);
        let auth = kinds.iter().find(|k| k["name"] == "auth_failure").unwrap();
        assert_eq!(auth["status"], 401);
        assert_eq!(auth["unhealthy"], true);
        assert_eq!(auth["match"]["assistant_error"][0], "authentication_failed");
        let last = kinds.last().unwrap();
        assert_eq!(last["fallback"], true);
        assert_eq!(last["match"], json!({}));
    }
}
