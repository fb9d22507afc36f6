//! The turn fields every API checks the same way (model, stop sequences, tools, a
//! structured-output schema): the bounds and the checks, once for all APIs.

use crate::conversation::ToolError;

/// The longest `model` accepted (Bedrock inference-profile ARNs are about 110 characters).
pub const MODEL_MAX_LEN: usize = 256;
/// The most stop sequences a request may give (OpenAI's own limit of 4 is its API's).
pub const STOP_MAX_COUNT: usize = 16;
/// The longest stop sequence, in bytes.
pub const STOP_MAX_BYTES: usize = 1024;

/// A turn field every API refuses with a 400 naming it: checked once for all APIs by
/// [`check_fields`] (each API words the message in its style and names its own field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnFieldError {
    /// `model`; the text says what is wrong ("must not be empty").
    #[error("{0}")]
    Model(String),
    /// The stop sequences (`stop`, `stop_sequences`).
    #[error("{0}")]
    Stop(String),
    /// The tool definitions or the tool choice.
    #[error(transparent)]
    Tools(#[from] ToolError),
}

/// The largest JSON Schema accepted for structured output, in bytes of compact JSON (it
/// is a CLI argument: `--json-schema`).
pub const SCHEMA_MAX_BYTES: usize = 64 * 1024;
/// How deep a JSON Schema may nest.
const SCHEMA_MAX_DEPTH: usize = 64;

/// The JSON Schema of a structured-output request, checked the way the CLI checks it
/// (a JSON object whose schema keywords have the meta-schema's shapes), bounded; its
/// compact text for `--json-schema`. The error says what is wrong.
pub fn check_schema(schema: &serde_json::Value) -> Result<String, String> {
    check_schema_at(schema, "", 0)?;
    let text = schema.to_string();
    if text.len() > SCHEMA_MAX_BYTES {
        return Err(format!(
            "the schema must be at most {SCHEMA_MAX_BYTES} bytes of JSON"
        ));
    }
    Ok(text)
}

fn check_schema_at(schema: &serde_json::Value, at: &str, depth: usize) -> Result<(), String> {
    use serde_json::Value;
    const TYPES: [&str; 7] = [
        "string", "number", "integer", "boolean", "object", "array", "null",
    ];
    let here = if at.is_empty() { "the schema" } else { at };
    if depth > SCHEMA_MAX_DEPTH {
        return Err(format!(
            "{here} nests deeper than {SCHEMA_MAX_DEPTH} levels"
        ));
    }
    let obj = match schema {
        Value::Object(o) => o,
        // `true` / `false` are schemas too, except at the top (the CLI wants an object).
        Value::Bool(_) if depth > 0 => return Ok(()),
        _ => return Err(format!("{here} must be a JSON Schema object")),
    };
    let sub = |key: &str| format!("{at}.{key}");
    let type_ok = |t: &Value| t.as_str().is_some_and(|t| TYPES.contains(&t));
    for (key, v) in obj {
        let ok = match key.as_str() {
            "type" => {
                type_ok(v)
                    || v.as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(type_ok))
            }
            "required" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "enum" => v.is_array(),
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                match v.as_object() {
                    Some(props) => {
                        for (name, p) in props {
                            check_schema_at(p, &format!("{}.{name}", sub(key)), depth + 1)?;
                        }
                        true
                    }
                    None => false,
                }
            }
            "items" if v.is_array() => {
                for (i, p) in v.as_array().into_iter().flatten().enumerate() {
                    check_schema_at(p, &format!("{}[{i}]", sub(key)), depth + 1)?;
                }
                true
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => match v.as_array() {
                Some(a) if !a.is_empty() => {
                    for (i, p) in a.iter().enumerate() {
                        check_schema_at(p, &format!("{}[{i}]", sub(key)), depth + 1)?;
                    }
                    true
                }
                _ => false,
            },
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "additionalItems" => {
                check_schema_at(v, &sub(key), depth + 1)?;
                true
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
            | "maxProperties" => v.as_u64().is_some(),
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                v.is_number()
            }
            "pattern" | "format" | "title" | "description" | "$ref" | "$schema" | "$id" => {
                v.is_string()
            }
            _ => true,
        };
        if !ok {
            return Err(format!(
                "{}: not a valid `{key}`",
                sub(key).trim_start_matches('.')
            ));
        }
    }
    Ok(())
}

/// Whether `c` may appear in a model name: what model ids and aliases use (`sonnet`,
/// `opus[1m]`, `claude-opus-4-1@20250805`, `us.anthropic.claude-…-v1:0`, ARNs with `/`).
fn model_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/' | '@' | '[' | ']')
}

/// The model name's rules. A model reaches the CLI's argv, the log line and the CLI's
/// error texts (which echo it); spaces, control characters and megabytes have no place
/// in any of them (a NUL used to fail the spawn as a 502).
pub fn check_model(model: &str) -> Result<(), TurnFieldError> {
    let problem = if model.is_empty() {
        "must not be empty".to_string()
    } else if model.len() > MODEL_MAX_LEN {
        format!("must be at most {MODEL_MAX_LEN} characters long")
    } else if let Some(c) = model.chars().find(|c| !model_char(*c)) {
        format!(
            "may contain only ASCII letters, digits and `.-_:/@[]` (found U+{:04X})",
            u32::from(c)
        )
    } else {
        return Ok(());
    };
    Err(TurnFieldError::Model(problem))
}

/// The stop sequences' bounds (count and length; each API checks emptiness its way).
pub fn check_stops(stops: &[String]) -> Result<(), TurnFieldError> {
    if stops.len() > STOP_MAX_COUNT {
        return Err(TurnFieldError::Stop(format!(
            "takes at most {STOP_MAX_COUNT} sequences"
        )));
    }
    if stops.iter().any(|s| s.len() > STOP_MAX_BYTES) {
        return Err(TurnFieldError::Stop(format!(
            "sequences must be at most {STOP_MAX_BYTES} bytes long"
        )));
    }
    Ok(())
}
