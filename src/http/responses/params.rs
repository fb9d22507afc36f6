//! The request's settings: `text` and `reasoning` as run options, and the fields that
//! promise what the CLI cannot do (refused with a 400 naming them).

use serde_json::{Map, Value};

use super::request::ResponsesRequest;
use crate::backend::RunOptions;
use crate::http::errors::ApiError;
use crate::http::openai::{json_schema_format, output_format, reasoning_effort};

fn refuse(param: &str, message: impl Into<String>) -> Result<(), ApiError> {
    Err(ApiError::invalid_param(message, param))
}

fn present(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

/// `text` and `reasoning` as run options: `text.format` `json_schema` / `json_object` →
/// `--json-schema` (the answer's text is the JSON), `reasoning.effort` → `--effort` (as
/// Chat Completions' `reasoning_effort`). `text.verbosity` other than the default and
/// `reasoning.summary` (the CLI gives no summaries) are promises it cannot keep.
pub(super) fn run_options(req: &ResponsesRequest) -> Result<RunOptions, ApiError> {
    let mut options = RunOptions::default();
    if let Some(text) = req.text.as_ref().filter(|t| !t.is_null()) {
        if let Some(format) = text.get("format").filter(|f| !f.is_null()) {
            options.json_schema = match format.get("type").and_then(Value::as_str) {
                Some("json_schema") => Some(json_schema_format(
                    format.as_object().unwrap_or(&Map::new()),
                    "text.format",
                    &["type"],
                )?),
                _ => output_format(format, "text.format")?,
            };
        }
        if let Some(v) = text.get("verbosity").filter(|v| !v.is_null()) {
            if v.as_str() != Some("medium") {
                refuse(
                    "text.verbosity",
                    "only `text.verbosity: \"medium\"` is supported by this gateway",
                )?;
            }
        }
    }
    if let Some(r) = req.reasoning.as_ref().filter(|r| !r.is_null()) {
        // Summaries are the model's thinking ([`super::reasoning`]).
        for field in ["summary", "generate_summary"] {
            if let Some(v) = r.get(field).filter(|v| !v.is_null()) {
                if !matches!(v.as_str(), Some("auto" | "concise" | "detailed" | "none")) {
                    refuse(
                        &format!("reasoning.{field}"),
                        format!("`reasoning.{field}` must be one of auto, concise, detailed, none"),
                    )?;
                }
            }
        }
        if let Some(e) = r.get("effort").filter(|e| !e.is_null()) {
            options.effort = Some(reasoning_effort(e, "reasoning.effort")?);
        }
    }
    Ok(options)
}

/// Fields that promise what the CLI cannot do: refused with a 400 naming the field.
/// (Sampling knobs like `temperature`, bookkeeping like `metadata`, `user` or
/// `prompt_cache_key` promise nothing checkable and are accepted.)
pub(super) fn refuse_unsupported(req: &ResponsesRequest) -> Result<(), ApiError> {
    if req.background == Some(true) {
        return refuse(
            "background",
            "background responses are not supported by this gateway",
        );
    }
    if present(&req.conversation) {
        return refuse(
            "conversation",
            "conversations are not stored by this gateway; send `input` (and `previous_response_id`)",
        );
    }
    if present(&req.prompt) {
        return refuse(
            "prompt",
            "prompt templates are not supported by this gateway; send `instructions` and `input`",
        );
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("top_logprobs", "logprobs are not supported by this gateway");
    }
    if let Some(i) = req
        .include
        .iter()
        .flatten()
        .position(|s| s == "message.output_text.logprobs")
    {
        return refuse(
            &format!("include[{i}]"),
            "logprobs are not supported by this gateway",
        );
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return refuse(
            "truncation",
            "only `truncation: \"disabled\"` is supported by this gateway",
        );
    }
    if let Some(n) = req.max_output_tokens {
        if n < 1 {
            return refuse(
                "max_output_tokens",
                "`max_output_tokens` must be at least 1",
            );
        }
    }
    Ok(())
}
