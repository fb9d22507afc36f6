//! The engine's decisions, pure (no process, no backend, no clock), so each is unit-tested
//! on its own: whether a request may continue a held run and with which results, whether
//! an answer meets the tool choice, whether a failure falls back to a transcript or fails
//! over to another account. `engine.rs` acts on them.

use crate::backend::ToolResult;
use crate::conversation::{Block, Conversation, Role, ToolChoice};
use crate::protocol::Success;
use crate::rules::Verdict;

/// The kind the rules give a CLI that could not resume a session.
pub(super) const SESSION_NOT_FOUND: &str = "session_not_found";

/// Whether a request may continue a held run: it offers tools (a held run's process has
/// them) and its last user turn holds tool results.
pub(super) fn may_continue_held(offers_tools: bool, ends_in_results: bool) -> bool {
    offers_tools && ends_in_results
}

/// The request's tool results for exactly the `calls` a held run waits in, if its last
/// user turn (every user message after the last assistant one: OpenAI sends one `tool`
/// message per result, Responses one `function_call_output` item, an Anthropic client may
/// split them over user messages) is those results and nothing else, each deliverable
/// through MCP. The ids decide.
pub(super) fn held_results(
    conversation: &Conversation,
    calls: &[String],
) -> Option<Vec<ToolResult>> {
    let turns: Vec<&crate::conversation::Message> = conversation.turns().collect();
    let first = turns
        .iter()
        .rposition(|m| m.role != Role::User)
        .map_or(0, |i| i + 1);
    let blocks = turns[first..].iter().flat_map(|m| m.blocks.iter());
    let mut results = Vec::with_capacity(calls.len());
    for b in blocks {
        match b {
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => results.push(ToolResult {
                tool_use_id: tool_use_id.clone(),
                content: content.clone(),
                is_error: *is_error,
            }),
            // Text the client adds after its results has no place in a tool result.
            _ => return None,
        }
    }
    let mut ids: Vec<&str> = results.iter().map(|r| r.tool_use_id.as_str()).collect();
    let mut want: Vec<&str> = calls.iter().map(String::as_str).collect();
    ids.sort_unstable();
    want.sort_unstable();
    (ids == want && results.iter().all(crate::backend::mcp::deliverable)).then_some(results)
}

/// Whether `answer` satisfies `choice` (an answer stopped at a stop sequence or cut by a
/// length limit is not held to it).
pub(super) fn choice_met(choice: Option<&ToolChoice>, answer: &Success) -> bool {
    let complete = !matches!(
        answer.stop_reason.as_deref(),
        Some("stop_sequence" | "max_tokens" | "max_turns")
    );
    match choice {
        Some(ToolChoice::Required) if complete => !answer.tool_calls.is_empty(),
        Some(ToolChoice::Named(n)) if complete => answer.tool_calls.iter().any(|c| &c.name == n),
        _ => true,
    }
}

/// Whether a failed run that resumed a synthesized session is answered again from a
/// transcript: once (`armed`), before any answer text, when the CLI refused the session.
pub(super) fn falls_back(armed: bool, released_any: bool, verdict: &Verdict) -> bool {
    armed && !released_any && verdict.kind == SESSION_NOT_FOUND
}

/// Whether a failed run starts again on another account: once (`armed`), before any
/// answer text, for a kind scoped to the account.
pub(super) fn fails_over(armed: bool, released_any: bool, verdict: &Verdict) -> bool {
    armed && !released_any && verdict.account_scoped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Message, ToolCall};

    fn result(id: &str, text: &str) -> Block {
        Block::ToolResult {
            tool_use_id: id.into(),
            content: vec![Block::Text(text.into())],
            is_error: false,
        }
    }

    fn conversation(tail: Vec<Message>) -> Conversation {
        let call = |id: &str| Block::ToolUse {
            id: id.into(),
            name: "t".into(),
            input: crate::conversation::RawJson::empty_object(),
        };
        let mut messages = vec![
            Message::text(Role::User, "q"),
            Message::new(Role::Assistant, vec![call("a"), call("b")]),
        ];
        messages.extend(tail);
        Conversation {
            system: None,
            messages,
        }
    }

    fn ids(r: Option<Vec<ToolResult>>) -> Option<Vec<String>> {
        r.map(|v| v.into_iter().map(|r| r.tool_use_id).collect())
    }

    const CALLS: [&str; 2] = ["a", "b"];

    fn calls() -> Vec<String> {
        CALLS.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn results_in_one_message_or_several_continue_the_held_run() {
        let one = conversation(vec![Message::new(
            Role::User,
            vec![result("b", "2"), result("a", "1")],
        )]);
        assert_eq!(
            ids(held_results(&one, &calls())),
            Some(vec!["b".into(), "a".into()])
        );
        // OpenAI `tool` messages / Responses items / Anthropic split results.
        let several = conversation(vec![
            Message::new(Role::User, vec![result("a", "1")]),
            Message::new(Role::User, vec![result("b", "2")]),
        ]);
        assert_eq!(
            ids(held_results(&several, &calls())),
            Some(vec!["a".into(), "b".into()])
        );
        // System messages in between do not count.
        let mut with_system = several.clone();
        with_system
            .messages
            .insert(3, Message::text(Role::System, "note"));
        assert!(held_results(&with_system, &calls()).is_some());
    }

    #[test]
    fn other_ids_missing_results_or_added_text_do_not_continue_it() {
        let missing = conversation(vec![Message::new(Role::User, vec![result("a", "1")])]);
        assert_eq!(ids(held_results(&missing, &calls())), None);
        let other = conversation(vec![Message::new(
            Role::User,
            vec![result("a", "1"), result("c", "3")],
        )]);
        assert_eq!(ids(held_results(&other, &calls())), None);
        let text = conversation(vec![
            Message::new(Role::User, vec![result("a", "1"), result("b", "2")]),
            Message::text(Role::User, "and also"),
        ]);
        assert_eq!(
            ids(held_results(&text, &calls())),
            None,
            "text has no place in a result"
        );
        // Results of an earlier round (before the last assistant turn) are not this round's.
        let mut earlier = conversation(vec![Message::new(
            Role::User,
            vec![result("a", "1"), result("b", "2")],
        )]);
        earlier
            .messages
            .push(Message::text(Role::Assistant, "done"));
        earlier.messages.push(Message::text(Role::User, "next"));
        assert_eq!(ids(held_results(&earlier, &calls())), None);
    }

    #[test]
    fn a_held_run_is_only_tried_with_tools_and_results() {
        assert!(may_continue_held(true, true));
        assert!(!may_continue_held(false, true));
        assert!(!may_continue_held(true, false));
    }

    fn answer(stop: &str, calls: &[&str]) -> Success {
        Success {
            stop_reason: Some(stop.into()),
            tool_calls: calls
                .iter()
                .map(|n| ToolCall {
                    id: format!("id_{n}"),
                    name: n.to_string(),
                    input: serde_json::json!({}),
                })
                .collect(),
            ..Success::default()
        }
    }

    #[test]
    fn the_tool_choice_is_met_or_excused_by_a_cut_answer() {
        let required = Some(&ToolChoice::Required);
        assert!(!choice_met(required, &answer("end_turn", &[])));
        assert!(choice_met(required, &answer("tool_use", &["x"])));
        assert!(
            choice_met(required, &answer("max_tokens", &[])),
            "cut short"
        );
        let named = ToolChoice::Named("x".into());
        assert!(!choice_met(Some(&named), &answer("tool_use", &["y"])));
        assert!(choice_met(Some(&named), &answer("tool_use", &["y", "x"])));
        assert!(choice_met(
            Some(&ToolChoice::Auto),
            &answer("end_turn", &[])
        ));
        assert!(choice_met(None, &answer("end_turn", &[])));
    }

    fn verdict(kind: &str, account_scoped: bool) -> Verdict {
        Verdict {
            kind: kind.into(),
            status: 503,
            unhealthy: false,
            matched: None,
            message: String::new(),
            retry_after: None,
            resets_at: None,
            stderr_tail: String::new(),
            account_scoped,
            cooldown: None,
        }
    }

    #[test]
    fn fallback_once_before_any_text_for_a_refused_session_only() {
        let refused = verdict(SESSION_NOT_FOUND, false);
        assert!(falls_back(true, false, &refused));
        assert!(!falls_back(false, false, &refused), "once");
        assert!(!falls_back(true, true, &refused), "never after text");
        assert!(!falls_back(true, false, &verdict("overloaded", false)));
    }

    #[test]
    fn failover_once_before_any_text_for_an_account_scoped_kind_only() {
        let scoped = verdict("usage_limit", true);
        assert!(fails_over(true, false, &scoped));
        assert!(!fails_over(false, false, &scoped), "once");
        assert!(!fails_over(true, true, &scoped), "never after text");
        assert!(!fails_over(true, false, &verdict("overloaded", false)));
    }
}
