//! Compiling a kind's response: its headers and its OpenAI and Anthropic body templates,
//! each placeholder checked with its line and column.

use super::*;

pub(super) fn compile_headers(
    p: &mut Problems,
    headers: &BTreeMap<String, Spanned<String>>,
) -> Vec<(String, TemplateString)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            p.at(value.referenced, format!("invalid header name `{name}`"));
        }
        if value.value.chars().any(|c| c.is_control()) {
            p.at(
                value.referenced,
                format!("header `{name}` value contains control characters"),
            );
        }
        if let Some(t) = template_string(p, value.referenced, &value.value) {
            out.push((name.to_ascii_lowercase(), t));
        }
    }
    out
}

fn template_string(p: &mut Problems, loc: Location, text: &str) -> Option<TemplateString> {
    match TemplateString::parse(text) {
        Ok(t) => Some(t),
        Err(errors) => {
            for e in errors {
                match e {
                    PlaceholderError::Unknown(name) => p.at(
                        loc,
                        format!(
                            "unknown placeholder `{{{{{name}}}}}` (known: {})",
                            crate::rules::template::Placeholder::names()
                        ),
                    ),
                    PlaceholderError::Unterminated => {
                        p.at(loc, "unterminated placeholder: `{{` without `}}`")
                    }
                }
            }
            None
        }
    }
}

pub(super) fn compile_templates(
    p: &mut Problems,
    kind: &str,
    kind_loc: Location,
    t: Option<&Spanned<TemplatesDef>>,
) -> (Template, Template) {
    let (loc, def) = match t {
        Some(t) => (t.referenced, Some(&t.value)),
        None => (kind_loc, None),
    };
    let mut one = |node: Option<&Spanned<TemplateNode>>, flavour: &str| match node {
        Some(n) => compile_node(p, &n.value, n.referenced),
        None => {
            p.at(
                loc,
                format!("kind `{kind}` has no `templates.{flavour}` body"),
            );
            Template::Null
        }
    };
    let openai = one(def.and_then(|d| d.openai.as_ref()), "openai");
    let anthropic = one(def.and_then(|d| d.anthropic.as_ref()), "anthropic");
    (openai, anthropic)
}

fn compile_node(p: &mut Problems, node: &TemplateNode, loc: Location) -> Template {
    match node {
        TemplateNode::Null => Template::Null,
        TemplateNode::Bool(b) => Template::Bool(*b),
        TemplateNode::Number(n) => Template::Number(n.clone()),
        TemplateNode::String(s) => template_string(p, loc, s)
            .map(Template::String)
            .unwrap_or(Template::Null),
        TemplateNode::Array(items) => Template::Array(
            items
                .iter()
                .map(|i| compile_node(p, &i.value, i.referenced))
                .collect(),
        ),
        TemplateNode::Object(entries) => {
            let mut out = Vec::new();
            for (k, v) in entries {
                if TemplateString::has_placeholder_syntax(&k.value) {
                    p.at(
                        k.referenced,
                        format!("placeholder in key `{}`: placeholders are only allowed in string values", k.value),
                    );
                }
                out.push((k.value.clone(), compile_node(p, &v.value, v.referenced)));
            }
            Template::Object(out)
        }
    }
}
