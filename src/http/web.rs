//! Web search and web fetch, served by the CLI's own WebSearch / WebFetch tools: what each
//! API's request asks for ([`anthropic_tool`], [`responses_tool`], [`chat_options`]) → the
//! run's [`WebTools`], checked against the operator's `web:` switches ([`admit`]); the
//! answers report the CLI's calls (`protocol::web`) in each API's own shape.
//!
//! Only the asked tools are enabled, for that run only. What the CLI cannot honour is
//! refused by name with a 400, never ignored: the CLI's WebSearch takes its domains from
//! the model (so `allowed_domains` / `blocked_domains` / user location cannot be
//! promised), and its WebFetch has no call budget. `max_uses` of a search bounds the
//! CLI's WebSearch calls in the run (each call may run several searches on the API's
//! side, reported in `usage.server_tool_use.web_search_requests`).

use serde_json::Value;

use crate::backend::{RunOptions, WebTools};
use crate::http::bounded::ToolDef;
use crate::http::errors::ApiError;
use crate::http::state::AppState;

/// A 400 naming `param` (`tools[0].max_uses`); the message starts with its dotted form,
/// as Anthropic's do (`tools.0.max_uses: …`).
fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    let dotted = param.replace('[', ".").replace(']', "");
    ApiError::invalid_param(format!("{dotted}: {message}"), param)
}

fn present(obj: &serde_json::Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

/// Adds search to `web`, bounded by `max_uses` at `at` (if given).
fn add_search(web: &mut WebTools, max_uses: Option<&Value>, at: &str) -> Result<(), ApiError> {
    web.search = true;
    if let Some(v) = max_uses.filter(|v| !v.is_null()) {
        let n = v
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                bad(
                    &format!("{at}.max_uses"),
                    "must be an integer from 1 to 1000",
                )
            })?;
        let n = u32::try_from(n).unwrap_or(1000);
        web.max_searches = Some(web.max_searches.map_or(n, |m| m.min(n)));
    }
    Ok(())
}

fn refuse_keys(
    obj: &serde_json::Map<String, Value>,
    at: &str,
    keys: &[(&str, &str)],
) -> Result<(), ApiError> {
    for (key, why) in keys {
        if present(obj, key) {
            return Err(bad(
                &format!("{at}.{key}"),
                format!("not supported by this gateway: {why}"),
            ));
        }
    }
    Ok(())
}

const DOMAINS_WHY: &str =
    "the CLI's web search takes its domains from the model, so a domain list cannot be promised";
const LOCATION_WHY: &str = "the CLI's web search has no user location";

/// An Anthropic server tool (`web_search_20250305`, `web_fetch_20250910`, …): Ok(true)
/// when it is a web tool (added to `web`), Ok(false) for any other type.
pub fn anthropic_tool(t: &ToolDef, i: usize, web: &mut WebTools) -> Result<bool, ApiError> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
    let at = format!("tools[{i}]");
    let obj = t.fields();
    if kind.starts_with("web_search_") {
        if obj.get("name").and_then(Value::as_str) != Some("web_search") {
            return Err(bad(&format!("{at}.name"), "must be `web_search`"));
        }
        refuse_keys(
            obj,
            &at,
            &[
                ("allowed_domains", DOMAINS_WHY),
                ("blocked_domains", DOMAINS_WHY),
                ("user_location", LOCATION_WHY),
            ],
        )?;
        add_search(web, obj.get("max_uses"), &at)?;
        return Ok(true);
    }
    if kind.starts_with("web_fetch_") {
        if obj.get("name").and_then(Value::as_str) != Some("web_fetch") {
            return Err(bad(&format!("{at}.name"), "must be `web_fetch`"));
        }
        refuse_keys(
            obj,
            &at,
            &[
                ("allowed_domains", "the CLI's web fetch takes its URLs from the model, so a domain list cannot be promised"),
                ("blocked_domains", "the CLI's web fetch takes its URLs from the model, so a domain list cannot be promised"),
                ("max_uses", "the CLI's web fetch has no call budget"),
                ("max_content_tokens", "the CLI's web fetch has its own content limit"),
            ],
        )?;
        if obj
            .get("citations")
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(bad(
                &format!("{at}.citations"),
                "not supported by this gateway: fetched documents carry no citations",
            ));
        }
        web.fetch = true;
        return Ok(true);
    }
    Ok(false)
}

/// A Responses hosted tool: Ok(true) when it is web search (`web_search`,
/// `web_search_preview` and their dated forms), added to `web`.
pub fn responses_tool(t: &ToolDef, i: usize, web: &mut WebTools) -> Result<bool, ApiError> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
    if !(kind == "web_search"
        || kind == "web_search_preview"
        || kind.starts_with("web_search_2")
        || kind.starts_with("web_search_preview_2"))
    {
        return Ok(false);
    }
    let at = format!("tools[{i}]");
    let obj = t.fields();
    refuse_keys(
        obj,
        &at,
        &[
            ("filters", DOMAINS_WHY),
            ("user_location", LOCATION_WHY),
            (
                "search_context_size",
                "the CLI's web search has no context size",
            ),
        ],
    )?;
    // `external_web_access` (Codex CLI sends `false`): the search runs on Anthropic's
    // side either way, and this host fetches nothing for it.
    web.search = true;
    Ok(true)
}

/// Chat Completions' `web_search_options`: web search for the run.
pub fn chat_options(v: &Value) -> Result<WebTools, ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(bad("web_search_options", "must be an object"));
    };
    refuse_keys(
        obj,
        "web_search_options",
        &[
            ("user_location", LOCATION_WHY),
            (
                "search_context_size",
                "the CLI's web search has no context size",
            ),
        ],
    )?;
    Ok(WebTools {
        search: true,
        ..WebTools::default()
    })
}

/// The operator's switches: a web tool turned off is a 400 naming its setting; a fetching
/// run gets the egress proxy. Counts the run.
pub fn admit(state: &AppState, options: &mut RunOptions) -> Result<(), ApiError> {
    let Some(web) = options.web.as_mut() else {
        return Ok(());
    };
    if web.search && !state.settings.web.search {
        return Err(ApiError::invalid_param(
            "tools: web search is turned off on this gateway (`web.search: false`)",
            "tools",
        ));
    }
    if web.fetch {
        let proxy = state.egress.as_ref().filter(|_| state.settings.web.fetch);
        let Some(proxy) = proxy else {
            return Err(ApiError::invalid_param(
                "tools: web fetch is turned off on this gateway (`web.fetch: false`; it makes the gateway's host fetch URLs)",
                "tools",
            ));
        };
        web.fetch_proxy = Some(proxy.url());
        web.api_through_proxy = proxy.has_upstream();
    }
    for (on, tool) in [(web.search, "search"), (web.fetch, "fetch")] {
        if on {
            state.metrics.count_web_run(tool);
        }
    }
    Ok(())
}
