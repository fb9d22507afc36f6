//! `POST /v1/responses`: an OpenAI Responses request → [`TurnRequest`], and the answer → a
//! `response` object or the Responses SSE sequence (`response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, then `response.completed` / `response.incomplete`, or
//! `error` + `response.failed` when the run fails after the stream began), every event
//! with its `sequence_number`.
//!
//! `input` is a string or items: messages (`input_text`, `input_image`, `input_file`
//! parts; assistant `output_text` / `refusal`), `reasoning` items (accepted and not shown
//! to the model again, like thinking blocks). `instructions` is the system prompt.
//! `previous_response_id` continues a stored response ([`crate::response_store`]) of the
//! same API key: its conversation, then this input. A response is stored unless
//! `store: false`; its output items too, so an `item_reference` input item (the Vercel AI
//! SDK sends earlier answers so) stands for the item it names. An unknown or expired
//! reference is the same 400 as an unknown `previous_response_id`.
//!
//! `tools` (function, `namespace` and `custom` tools, [`tools`]), `tool_choice` and
//! `parallel_tool_calls` go through the client-tools machinery: an answer with calls has
//! `function_call` output items (with their `namespace`; streamed with
//! `response.function_call_arguments.delta` / `.done`) or `custom_tool_call` items
//! (`response.custom_tool_call_input.delta` / `.done`), and the client's
//! `function_call_output` / `custom_tool_call_output` items (after its call items, or
//! after `previous_response_id`) continue the held run. `text.format` (`json_schema`,
//! `json_object`) and `reasoning.effort` are run options ([`params`]) as in Chat
//! Completions. `reasoning.summary` and `include: ["reasoning.encrypted_content"]` give
//! `reasoning` items ([`reasoning`]). Hosted tools and their items, `background`,
//! `conversation`, `prompt`, logprobs and `truncation: auto` are refused (400 naming the
//! field).

mod input;
mod output;
mod params;
mod reasoning;
mod request;
mod stream;
#[cfg(test)]
mod tests;
mod tools;

use std::sync::Arc;

use serde_json::Value;

use self::input::conversation;
use self::params::{refuse_unsupported, run_options};
use self::tools::tool_set;
use crate::backend::present::PresentError;
use crate::engine::{TurnError, TurnRequest};
use crate::http::errors::ApiError;
use crate::http::handler::Api;
use crate::http::state::AppState;
use crate::http::unix_now;
use crate::protocol::{Success, Usage};
use crate::rules::Flavour;

pub(crate) use request::shown_id;
use request::Input;
pub use request::ResponsesRequest;
pub use stream::ResponseFramer;

/// The Responses API.
pub struct Responses;

/// Parses and validates a request body into the turn it asks for (pure; fuzzed). A
/// `previous_response_id` is not found here (there is no store).
pub fn parse_request(body: &[u8]) -> Result<TurnRequest, ApiError> {
    let req: ResponsesRequest = crate::http::extract::parse_json_in(body, Flavour::Openai)?;
    Responses::translate(&req)
}

impl Api for Responses {
    type Request = ResponsesRequest;
    type Framer = ResponseFramer;
    const FLAVOUR: Flavour = Flavour::Openai;
    const ENDPOINT: &'static str = "responses";

    fn model(req: &ResponsesRequest) -> &str {
        &req.model
    }

    fn wants_stream(req: &ResponsesRequest) -> bool {
        req.stream.unwrap_or(false)
    }

    fn stored_refs(req: &ResponsesRequest) -> crate::response_store::StoredRefs {
        let items = match &req.input {
            Some(Input::Items(items)) => items
                .iter()
                .filter(|i| i.get("type").and_then(Value::as_str) == Some("item_reference"))
                .filter_map(|i| i.get("id").and_then(Value::as_str).map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        crate::response_store::StoredRefs {
            response: req.previous_response_id.clone(),
            items,
            thread: None,
        }
    }

    fn prepare(req: &mut ResponsesRequest, state: &AppState, tenant: &str) -> Result<(), ApiError> {
        if let Some(id) = &req.previous_response_id {
            let found = state
                .responses
                .get(id, tenant)
                .ok_or_else(|| ApiError::PreviousResponseNotFound(shown_id(id)))?;
            req.ctx.previous = Some(found);
        }
        // `item_reference` items: output items of this key's stored responses.
        if let Some(Input::Items(items)) = &req.input {
            for (i, item) in items.iter().enumerate() {
                if item.get("type").and_then(Value::as_str) != Some("item_reference") {
                    continue;
                }
                let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
                let found =
                    state
                        .responses
                        .item(id, tenant)
                        .ok_or_else(|| ApiError::StoredNotFound {
                            what: "Item",
                            id: shown_id(id),
                            param: format!("input[{i}].id"),
                        })?;
                req.ctx.references.insert(i, found);
            }
        }
        if req.store != Some(false) {
            req.ctx.store = Some((Arc::clone(&state.responses), tenant.to_string()));
        }
        Ok(())
    }

    fn translate(req: &ResponsesRequest) -> Result<TurnRequest, ApiError> {
        crate::engine::check_model(&req.model)
            .map_err(|e| ApiError::invalid_param(format!("`model` {e}"), "model"))?;
        refuse_unsupported(req)?;
        if req.previous_response_id.is_some() && req.ctx.previous.is_none() {
            let id = req.previous_response_id.as_deref().unwrap_or_default();
            return Err(ApiError::PreviousResponseNotFound(shown_id(id)));
        }
        let tools = tool_set(req)?;
        let (conversation, sources) =
            conversation(req, req.ctx.previous.as_deref(), &req.ctx.references)?;
        let _ = req.ctx.conversation.set(conversation.clone());
        let _ = req.ctx.sources.set(sources);
        let mut options = run_options(req)?;
        options.web = tools::web_tools(req)?;
        let mut turn = crate::http::handler::turn_request(conversation, &req.model, Vec::new())?;
        turn.tools = tools;
        turn.options = options;
        turn.show_thinking = req.shows_reasoning();
        Ok(turn)
    }

    /// A conversation the CLI cannot be shown is named by the input item it came from
    /// (`input[i]`), not by the neutral conversation's message index.
    fn start_error(req: &ResponsesRequest, e: TurnError) -> ApiError {
        match e {
            TurnError::Present(p) => {
                let param = match &p {
                    PresentError::Unsupported { message, .. } => req
                        .ctx
                        .sources
                        .get()
                        .and_then(|s| s.get(*message))
                        .cloned()
                        .unwrap_or_else(|| "input".into()),
                    PresentError::Shape(_) => "input".into(),
                };
                ApiError::invalid_param(p.to_string(), &param)
            }
            e => e.into(),
        }
    }

    fn answer_id() -> String {
        format!("resp_{}", uuid::Uuid::new_v4().simple())
    }

    /// The `response` object; the answer is stored for `previous_response_id` too.
    fn complete_body(req: &ResponsesRequest, id: &str, s: &Success) -> Value {
        let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let r = req.finished(id, unix_now(), &msg_id, s, &s.text);
        req.remember(id, &s.text, s, &r["output"]);
        r
    }

    fn framer(req: ResponsesRequest, id: String, _prompt_usage: Option<&Usage>) -> ResponseFramer {
        ResponseFramer::new(req, id)
    }
}
