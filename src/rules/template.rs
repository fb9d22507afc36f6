//! Body and header templates: compiled once at load time from the YAML tree into a
//! [`Template`] (a JSON tree whose string leaves are split into literal text and
//! placeholders), then rendered per response into a `serde_json::Value`.
//!
//! Because rendering builds a `Value` (never text), no placeholder value can break the JSON
//! or add keys: object keys are fixed at load time and placeholders are only allowed in
//! string leaves.

use serde_json::{Map, Value};

/// The fixed placeholder set. Unknown names are a `check` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// The kind's name (`auth_failure`, …).
    Kind,
    /// The HTTP status answered for the endpoint's flavour (a number when a whole leaf).
    Status,
    /// The gateway's request id.
    RequestId,
    /// The requested model (null when unknown).
    Model,
    /// The matched evidence (`Verdict::matched`, e.g. `assistant_error=authentication_failed`).
    Marker,
    /// The failure summary (`Verdict::message`); never stderr.
    Message,
    /// The kind's `retry_after` seconds (a number when a whole leaf, null when unset).
    RetryAfter,
    /// Health: RFC 3339 time of the last probe (null when never probed).
    LastProbedAt,
    /// Health: the kind that made the CLI unhealthy (defaults to this verdict's kind).
    ErrorKind,
    /// Health: the failure message behind `error_kind` (defaults to this verdict's message).
    ErrorMessage,
    /// The CLI's stderr tail: the ONLY way stderr reaches a body or header.
    StderrTail,
}

impl Placeholder {
    /// Every placeholder with its name, for docs and error messages.
    pub const ALL: [(&'static str, Placeholder); 11] = [
        ("kind", Placeholder::Kind),
        ("status", Placeholder::Status),
        ("request_id", Placeholder::RequestId),
        ("model", Placeholder::Model),
        ("marker", Placeholder::Marker),
        ("message", Placeholder::Message),
        ("retry_after", Placeholder::RetryAfter),
        ("last_probed_at", Placeholder::LastProbedAt),
        ("error_kind", Placeholder::ErrorKind),
        ("error_message", Placeholder::ErrorMessage),
        ("stderr_tail", Placeholder::StderrTail),
    ];

    /// Looks a placeholder up by name.
    pub fn from_name(name: &str) -> Option<Placeholder> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// Comma-separated list of all names.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A placeholder's value at render time.
#[derive(Debug, Clone, PartialEq)]
pub enum PValue {
    Null,
    Number(u64),
    Text(String),
}

impl PValue {
    fn into_json(self) -> Value {
        match self {
            PValue::Null => Value::Null,
            PValue::Number(n) => Value::from(n),
            PValue::Text(s) => Value::String(s),
        }
    }
    fn push_to(&self, out: &mut String) {
        match self {
            PValue::Null => {}
            PValue::Number(n) => out.push_str(&n.to_string()),
            PValue::Text(s) => out.push_str(s),
        }
    }
}

/// One piece of a string leaf.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    Placeholder(Placeholder),
}

/// A string with placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateString(pub Vec<Segment>);

/// Problems found while parsing a template string.
#[derive(Debug, Clone, PartialEq)]
pub enum PlaceholderError {
    /// `{{name}}` with a name outside the fixed set.
    Unknown(String),
    /// `{{` without a closing `}}`.
    Unterminated,
}

impl TemplateString {
    /// Parses `text`, splitting out `{{ name }}` placeholders (spaces inside the braces are
    /// allowed). Returns every problem found.
    pub fn parse(text: &str) -> Result<TemplateString, Vec<PlaceholderError>> {
        let mut segs = Vec::new();
        let mut errors = Vec::new();
        let mut rest = text;
        let mut lit = String::new();
        while let Some(start) = rest.find("{{") {
            lit.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    let name = after[..end].trim();
                    match Placeholder::from_name(name) {
                        Some(p) => {
                            if !lit.is_empty() {
                                segs.push(Segment::Literal(std::mem::take(&mut lit)));
                            }
                            segs.push(Segment::Placeholder(p));
                        }
                        None => errors.push(PlaceholderError::Unknown(name.to_string())),
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    errors.push(PlaceholderError::Unterminated);
                    rest = "";
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            segs.push(Segment::Literal(lit));
        }
        if errors.is_empty() {
            Ok(TemplateString(segs))
        } else {
            Err(errors)
        }
    }

    /// Whether the text contains anything that looks like a placeholder (`{{`).
    pub fn has_placeholder_syntax(text: &str) -> bool {
        text.contains("{{")
    }

    /// Renders as a JSON value: a string that is exactly one placeholder takes the
    /// value's JSON type; anything else is a string.
    pub fn render_value(&self, lookup: &dyn Fn(Placeholder) -> PValue) -> Value {
        match self.0.as_slice() {
            [Segment::Placeholder(p)] => lookup(*p).into_json(),
            _ => Value::String(self.render_string(lookup)),
        }
    }

    /// Renders as plain text (null renders empty).
    pub fn render_string(&self, lookup: &dyn Fn(Placeholder) -> PValue) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Placeholder(p) => lookup(*p).push_to(&mut out),
            }
        }
        out
    }

    /// Placeholders used, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.0.iter().filter_map(|s| match s {
            Segment::Placeholder(p) => Some(*p),
            Segment::Literal(_) => None,
        })
    }
}

/// A compiled body template: JSON structure fixed at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(TemplateString),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

impl Template {
    /// Renders the tree into a JSON value.
    pub fn render(&self, lookup: &dyn Fn(Placeholder) -> PValue) -> Value {
        match self {
            Template::Null => Value::Null,
            Template::Bool(b) => Value::Bool(*b),
            Template::Number(n) => Value::Number(n.clone()),
            Template::String(s) => s.render_value(lookup),
            Template::Array(items) => {
                Value::Array(items.iter().map(|t| t.render(lookup)).collect())
            }
            Template::Object(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.clone(), v.render(lookup));
                }
                Value::Object(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t = TemplateString::parse("a {{ kind }} b {{status}}").unwrap();
        let f = |p: Placeholder| match p {
            Placeholder::Kind => PValue::Text("k".into()),
            Placeholder::Status => PValue::Number(401),
            _ => PValue::Null,
        };
        assert_eq!(t.render_value(&f), Value::String("a k b 401".into()));
        let whole = TemplateString::parse("{{status}}").unwrap();
        assert_eq!(whole.render_value(&f), Value::from(401));
        let null = TemplateString::parse("{{model}}").unwrap();
        assert_eq!(null.render_value(&f), Value::Null);
    }

    #[test]
    fn reports_unknown_and_unterminated() {
        assert_eq!(
            TemplateString::parse("{{nope}} {{kind}} {{oops"),
            Err(vec![
                PlaceholderError::Unknown("nope".into()),
                PlaceholderError::Unterminated
            ])
        );
    }
}
