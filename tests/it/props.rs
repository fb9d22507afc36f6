//! Property tests (proptest) for the surfaces the fuzz targets in `fuzz/` cover, kept in
//! the normal suite so every `cargo test` exercises them: rules loading never panics on
//! YAML-ish text; the stream-json accumulator never panics and passes deltas through
//! unchanged; request parsing never panics and valid requests round-trip to the turn's
//! prompt and system text; every embedded kind's templates keep their key structure and
//! valid headers whatever the placeholder values. Case counts are modest (the whole
//! module runs in a few seconds).

use ccgate::backend::CliEvent;
use ccgate::protocol::{RunAccumulator, RunEnd};
use ccgate::rules::{FailureFacts, Flavour, Rules, TemplateValues, Verdict};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::support::shape;

// ---- rules loading ----

/// Fragments that steer generated text towards the rules file's own vocabulary, so
/// generated inputs get past the YAML parser into validation and compilation.
const YAML_BITS: &[&str] = &[
    "kinds:\n",
    "fallback:\n",
    "probe:\n",
    "models: [a, b]\n",
    "  - name: k\n",
    "    name: fb\n",
    "    status: 401\n",
    "    status: 99999\n",
    "    openai_status: 503\n",
    "    unhealthy: true\n",
    "    retry_after: 5\n",
    "    headers: {x-a: \"{{kind}}\", \"bad name\": v}\n",
    "    match: {markers: [\"Not logged in\", \"401\", \"\"], regex: ['a+(', '(?i)x{1000}{1000}', '.*']}\n",
    "    match: {exit_code: [1], timeout: [start], condition: [bad_json], api_error_status: [42]}\n",
    "    templates:\n",
    "      openai: {error: {message: \"{{message}}\", \"{{kind}}\": 1}}\n",
    "      anthropic: [\"{{nope}}\", \"{{unterminated\", .nan, ~, true, 1e400]\n",
    "  interval: -1\n",
    "  timeout: 0\n",
    "  unhealthy_interval: .inf\n",
    "&a [*a]\n",
    "!!binary aGk=\n",
    "? [x]\n: y\n",
    "- \n",
    "  ",
    "\t",
    "\n",
    "'",
    "\"",
    "{",
    "}",
    "[",
    "]",
    ":",
    "#",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
];

fn yamlish() -> impl Strategy<Value = String> {
    let bit = prop_oneof![
        4 => proptest::sample::select(YAML_BITS).prop_map(str::to_string),
        1 => any::<String>(),
        1 => "[a-z_]{1,8}: [^\\n]{0,12}\n",
    ];
    proptest::collection::vec(bit, 0..40).prop_map(|v| v.concat())
}

/// The embedded rules with one span replaced by generated text.
fn mutated_embedded() -> impl Strategy<Value = String> {
    let src = Rules::embedded_source();
    (0..src.len(), 0..200usize, yamlish()).prop_map(move |(at, len, insert)| {
        let mut start = at;
        while !src.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + len).min(src.len());
        while !src.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{}{}", &src[..start], insert, &src[end..])
    })
}

/// What `ccgate check` and a reload do with a file, plus what a request does with rules
/// that loaded: classify, pick a status, render both flavours and the headers.
fn load_and_use(text: &str) -> Result<(), TestCaseError> {
    match Rules::from_yaml(text, "prop.yaml") {
        Ok(rules) => {
            let v = rules.classify(&FailureFacts::default());
            for flavour in [Flavour::Openai, Flavour::Anthropic] {
                prop_assert!((400..=599).contains(&rules.status_for(&v, flavour)));
                let body = rules.render_body(&v, flavour, &TemplateValues::default());
                let wire = serde_json::to_string(&body).unwrap();
                let back: Value = serde_json::from_str(&wire).unwrap();
                prop_assert_eq!(back, body);
            }
            let _ = rules.render_headers(&v, &TemplateValues::default());
        }
        Err(e) => {
            prop_assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rules_loading_never_panics_on_yamlish_text(text in yamlish()) {
        load_and_use(&text)?;
    }

    #[test]
    fn rules_loading_never_panics_on_mutated_default_rules(text in mutated_embedded()) {
        load_and_use(&text)?;
    }
}

/// Deep nesting is a load problem, never a stack overflow, and the depth that loads stays
/// far below serde_json's parse recursion limit (128) for rendered bodies. Guards the
/// parser's depth budget across dependency upgrades (checked by hand next to the fuzz runs).
#[test]
fn deeply_nested_yaml_is_a_problem_not_a_crash() {
    let fallback = |body: &str| {
        format!("kinds: []\nfallback:\n  name: fb\n  status: 502\n  templates:\n    openai: {body}\n    anthropic: {{}}\n")
    };
    for depth in [100, 3000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let e = Rules::from_yaml(&fallback(&nested), "deep.yaml").unwrap_err();
        assert!(!e.problems.is_empty());
    }
    let e = Rules::from_yaml(&"[".repeat(100_000), "deep.yaml").unwrap_err();
    assert!(!e.problems.is_empty());
    let ok = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let rules = Rules::from_yaml(&fallback(&ok), "deep.yaml").unwrap();
    let v = rules.classify(&FailureFacts::default());
    let wire = rules
        .render_body(&v, Flavour::Openai, &TemplateValues::default())
        .to_string();
    assert!(serde_json::from_str::<Value>(&wire).is_ok());
}

// ---- stream-json accumulator ----

/// Lines shaped like the CLI's stream-json, with generated field values (including wrong
/// types), mixed with arbitrary text.
fn cli_line() -> impl Strategy<Value = String> {
    let text = any::<String>();
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    let kind = proptest::sample::select(vec![
        "system",
        "assistant",
        "stream_event",
        "result",
        "rate_limit_event",
        "user",
        "",
    ]);
    prop_oneof![
        2 => text,
        1 => "\\{[^\\n]{0,40}",
        4 => (kind, scalar.clone(), scalar.clone(), scalar.clone(), scalar).prop_map(|(k, a, b, c, d)| {
            let v = match k {
                "system" => json!({"type": k, "subtype": "api_retry", "error_status": a, "error": b, "session_id": c, "model": d}),
                "assistant" => json!({"type": k, "error": a, "api_error_status": b, "parent_tool_use_id": c,
                    "message": {"model": d, "content": [{"type": "text", "text": b}, {"type": "text"}, a]}}),
                "stream_event" => json!({"type": k, "parent_tool_use_id": c, "abandoned_blocks": d,
                    "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": a}}}),
                "result" => json!({"type": k, "subtype": a, "is_error": b, "result": c, "errors": [d, a],
                    "api_error_status": d, "usage": {"input_tokens": a, "output_tokens": b}, "total_cost_usd": c}),
                _ => json!({"type": k, "status": a, "rate_limit_info": {"status": b}}),
            };
            v.to_string()
        }),
    ]
}

fn delta_line(text: &str, parent: Option<&str>) -> String {
    json!({"type": "stream_event", "parent_tool_use_id": parent, "session_id": "s",
           "event": {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": text}}})
    .to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn accumulator_never_panics(lines in proptest::collection::vec(cli_line(), 0..24), code in any::<i32>()) {
        let mut acc = RunAccumulator::new();
        for l in &lines {
            let _ = acc.push_line(l);
        }
        if let Err(facts) = acc.conclude(RunEnd { exit_code: Some(code), stderr_tail: "tail".into(), ..RunEnd::default() }) {
            prop_assert_eq!(facts.exit_code, Some(code));
            prop_assert_eq!(facts.stderr_tail.as_str(), "tail");
            let _ = facts.summary();
        }
    }

    /// A successful streamed run: the top-level deltas come out as `TextDelta` events in
    /// order and unchanged (sub-agent deltas and stray debug lines don't), and the final
    /// text is their concatenation.
    #[test]
    fn success_text_is_the_concatenation_of_deltas(
        deltas in proptest::collection::vec(any::<String>(), 0..12),
        noise in proptest::collection::vec((any::<bool>(), "[^{\\r\\n][^\\r\\n]{0,20}"), 0..12),
        crlf in any::<bool>(),
    ) {
        let whole: String = deltas.concat();
        let mut lines = vec![json!({"type": "system", "subtype": "init", "session_id": "s", "model": "m"}).to_string()];
        for (i, d) in deltas.iter().enumerate() {
            if let Some((subagent, stray)) = noise.get(i) {
                lines.push(if *subagent { delta_line(stray, Some("toolu_1")) } else { stray.clone() });
            }
            lines.push(delta_line(d, None));
        }
        lines.push(json!({"type": "assistant", "parent_tool_use_id": null,
            "message": {"model": "m", "content": [{"type": "text", "text": whole}]}}).to_string());
        lines.push(json!({"type": "result", "subtype": "success", "is_error": false,
            "result": whole, "session_id": "s", "usage": {"input_tokens": 1, "output_tokens": 2}}).to_string());
        let mut acc = RunAccumulator::new();
        let mut streamed = Vec::new();
        for l in &lines {
            let l = if crlf { format!("{l}\r\n") } else { l.clone() };
            for ev in acc.push_line(&l) {
                if let CliEvent::TextDelta(t) = ev {
                    streamed.push(t);
                }
            }
        }
        prop_assert_eq!(&streamed, &deltas);
        let ok = acc.conclude(RunEnd { exit_code: Some(0), ..RunEnd::default() }).expect("a success run");
        prop_assert_eq!(ok.text, whole);
        prop_assert_eq!(ok.usage.output_tokens, 2);
    }
}

// ---- request bodies ----

fn json_value() -> impl Strategy<Value = Value> {
    let key = proptest::sample::select(vec![
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "system",
        "max_tokens",
        "n",
        "tools",
        "stream",
        "stream_options",
        "include_usage",
        "user",
        "assistant",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..3).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        proptest::sample::select(vec![
            "user",
            "assistant",
            "system",
            "developer",
            "text",
            "image",
            "sonnet",
            " "
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// What the CLI receives for a parsed request.
fn presented(
    t: Result<ccgate::engine::TurnRequest, ccgate::http::errors::ApiError>,
) -> ccgate::backend::present::Presented {
    ccgate::backend::present::present(&t.expect("a valid request").conversation)
        .expect("a presentable conversation")
}

fn model() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_parsing_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ccgate::http::openai::parse_request(&bytes);
        let _ = ccgate::http::anthropic::parse_request(&bytes);
        let _ = ccgate::http::responses::parse_request(&bytes);
        let _ = ccgate::http::count_tokens::count_body(&bytes);
    }

    #[test]
    fn request_parsing_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(t) = ccgate::http::openai::parse_request(&bytes) {
            prop_assert!(!t.model.trim().is_empty());
        }
        if let Ok(t) = ccgate::http::anthropic::parse_request(&bytes) {
            prop_assert!(!t.model.trim().is_empty());
        }
        if let Ok(t) = ccgate::http::responses::parse_request(&bytes) {
            prop_assert!(t.validate().is_ok());
        }
        let _ = ccgate::http::count_tokens::count_body(&bytes);
    }

    /// A Responses string `input` is the prompt; `instructions` the system prompt.
    #[test]
    fn responses_string_input_is_the_prompt(model in model(), content in any::<String>(), system in "[^\\x00]{1,20}") {
        let body = json!({"model": model, "input": content, "instructions": system});
        let t = presented(ccgate::http::responses::parse_request(body.to_string().as_bytes()));
        prop_assert_eq!(&t.prompt, &content);
        prop_assert_eq!(t.system_prompt, Some(system));
    }

    /// The token estimate: at least one token for any text, at most one per byte, and
    /// never less for more text.
    #[test]
    fn token_estimate_is_bounded_and_grows(a in any::<String>(), b in any::<String>()) {
        use ccgate::http::count_tokens::estimate_text;
        let n = estimate_text(&a);
        prop_assert!(n <= a.len() as u64);
        prop_assert_eq!(n == 0, a.is_empty());
        prop_assert!(estimate_text(&format!("{a}{b}")) >= n, "{:?} + {:?}", a, b);
    }

    #[test]
    fn single_user_message_is_the_prompt(model in model(), content in any::<String>(), parts in any::<bool>()) {
        let c = if parts { json!([{"type": "text", "text": content}]) } else { json!(content) };
        let body = json!({"model": model, "messages": [{"role": "user", "content": c}]});
        let r = ccgate::http::openai::parse_request(body.to_string().as_bytes());
        prop_assert_eq!(&r.as_ref().unwrap().model, &model);
        let t = presented(r);
        prop_assert_eq!(&t.prompt, &content);
        prop_assert_eq!(t.system_prompt, None);
        let body = json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": c}]});
        let r = ccgate::http::anthropic::parse_request(body.to_string().as_bytes());
        prop_assert_eq!(&r.as_ref().unwrap().model, &model);
        let t = presented(r);
        prop_assert_eq!(&t.prompt, &content);
        prop_assert_eq!(t.system_prompt, None);
    }

    /// System text goes to the system prompt (OpenAI: system/developer messages joined by a
    /// blank line; Anthropic: `system` string or text blocks joined by a newline) and never
    /// into the prompt; text parts are joined by a newline.
    #[test]
    fn system_and_parts_round_trip(
        model in model(),
        systems in proptest::collection::vec("[^\\x00]{1,20}", 1..4),
        parts in proptest::collection::vec(any::<String>(), 1..4),
    ) {
        let mut messages: Vec<Value> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"role": if i % 2 == 0 { "system" } else { "developer" }, "content": s}))
            .collect();
        let blocks: Vec<Value> = parts.iter().map(|p| json!({"type": "text", "text": p})).collect();
        messages.push(json!({"role": "user", "content": blocks}));
        let body = json!({"model": model, "messages": messages});
        let t = presented(ccgate::http::openai::parse_request(body.to_string().as_bytes()));
        prop_assert_eq!(t.system_prompt, Some(systems.join("\n\n")));
        prop_assert_eq!(t.prompt, parts.join("\n"));

        let sys_blocks: Vec<Value> = systems.iter().map(|s| json!({"type": "text", "text": s})).collect();
        let body = json!({"model": model, "max_tokens": 8, "system": sys_blocks,
                          "messages": [{"role": "user", "content": blocks}]});
        let t = presented(ccgate::http::anthropic::parse_request(body.to_string().as_bytes()));
        prop_assert_eq!(t.system_prompt, Some(systems.join("\n")));
        prop_assert_eq!(t.prompt, parts.join("\n"));
        let body = json!({"model": model, "max_tokens": 8, "system": systems[0],
                          "messages": [{"role": "user", "content": "q"}]});
        let t = presented(ccgate::http::anthropic::parse_request(body.to_string().as_bytes()));
        prop_assert_eq!(t.system_prompt.as_deref(), Some(systems[0].as_str()));
    }

    /// Multi-turn: the last user message ends the prompt and every earlier turn appears in
    /// the transcript in order.
    #[test]
    fn multi_turn_prompt_keeps_every_turn_in_order(
        model in model(),
        turns in proptest::collection::vec("[a-zA-Z0-9 ]{1,16}", 1..6),
    ) {
        let n = turns.len();
        let messages: Vec<Value> = turns
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"role": if (n - 1 - i) % 2 == 0 { "user" } else { "assistant" }, "content": t}))
            .collect();
        for flavour in [Flavour::Openai, Flavour::Anthropic] {
            let body = json!({"model": model, "max_tokens": 8, "messages": messages});
            let bytes = body.to_string();
            let t = presented(match flavour {
                Flavour::Openai => ccgate::http::openai::parse_request(bytes.as_bytes()),
                Flavour::Anthropic => ccgate::http::anthropic::parse_request(bytes.as_bytes()),
            });
            prop_assert!(t.prompt.ends_with(&turns[n - 1]));
            let mut from = 0;
            for turn in &turns {
                let at = t.prompt[from..].find(turn.as_str());
                prop_assert!(at.is_some(), "turn {:?} missing from {:?}", turn, t.prompt);
                from += at.unwrap() + turn.len();
            }
        }
    }
}

// ---- templates of the embedded rules ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `rules.rs` checks a hand-written template; this covers every kind of the default
    /// rules, the health fields and the headers: values never change the body's keys,
    /// bodies survive a JSON round trip, header values stay valid.
    #[test]
    fn embedded_templates_keep_structure(
        kind_index in any::<proptest::sample::Index>(),
        message in any::<String>(), stderr in any::<String>(),
        request_id in any::<String>(), model in proptest::option::of(any::<String>()),
        health in proptest::option::of((any::<String>(), any::<String>(), any::<String>())),
    ) {
        let rules = Rules::embedded();
        let names: Vec<String> = rules.kind_names().map(str::to_string).collect();
        let base = rules.verdict_for_kind(kind_index.get(names.as_slice()).as_str()).unwrap();
        let v = Verdict { message, stderr_tail: stderr, matched: Some("marker=\"x\"".into()), ..base };
        let (last_probed_at, error_kind, error_message) = match health {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        };
        let values = TemplateValues { request_id, model, last_probed_at, error_kind, error_message, now_unix: None };
        for flavour in [Flavour::Openai, Flavour::Anthropic] {
            let body = rules.render_body(&v, flavour, &values);
            let back: Value = serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
            prop_assert_eq!(&back, &body);
            prop_assert_eq!(shape(&body), shape(&rules.render_body(&v, flavour, &TemplateValues::default())));
        }
        for (name, value) in rules.render_headers(&v, &values) {
            prop_assert!(axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok());
            prop_assert!(axum::http::HeaderValue::from_str(&value).is_ok(), "{}: {:?}", name, value);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Streaming with stop sequences releases exactly what the non-streaming cut keeps,
    /// however the answer is split into deltas (multi-byte characters included), and
    /// reports the same sequence.
    #[test]
    fn stop_filter_matches_the_whole_text_cut(
        text in "[ab é✓\n]{0,40}",
        stops in proptest::collection::vec("[ab é✓]{1,4}", 1..4),
        cuts in proptest::collection::vec(0usize..50, 0..8),
    ) {
        use ccgate::turn::{earliest_stop, StopFilter};
        let want = earliest_stop(&text, &stops);
        // Split at char boundaries chosen by `cuts`.
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut points: Vec<usize> = cuts
            .iter()
            .filter_map(|c| bounds.get(c % bounds.len().max(1)).copied())
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for p in points.into_iter().chain([text.len()]) {
            if p > from {
                pieces.push(&text[from..p]);
                from = p;
            }
        }
        let mut filter = StopFilter::new(stops.clone());
        let mut released = String::new();
        let mut got_stop = None;
        for piece in pieces {
            let (out, stop) = filter.push(piece);
            released.push_str(&out);
            if stop.is_some() {
                got_stop = stop;
                break;
            }
        }
        if got_stop.is_none() {
            let (rest, stop) = filter.finish();
            released.push_str(&rest);
            got_stop = stop;
        }
        match want {
            Some((at, _)) => {
                prop_assert_eq!(&released, &text[..at]);
                // The same position; with several sequences at one offset any may be named.
                let stop = got_stop.expect("a stop sequence");
                prop_assert!(text[at..].starts_with(stop.as_str()));
            }
            None => {
                prop_assert_eq!(&released, &text);
                prop_assert!(got_stop.is_none());
            }
        }
    }
}
