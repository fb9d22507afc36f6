//! Rules engine: default rules, `check` problems (insta snapshots), template safety
//! (proptest), match order, case-insensitivity, and the committed schema.

use ccgate::rules::{FailureFacts, Flavour, Rules, TemplateValues};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::shape;

fn load(text: &str) -> Rules {
    match Rules::from_yaml(text, "t.yaml") {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn problems(text: &str) -> String {
    match Rules::from_yaml(text, "t.yaml") {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.to_string(),
    }
}

const TEMPLATES: &str = r#"
    templates:
      openai: {error: {message: "{{message}}", type: t, code: "{{kind}}"}}
      anthropic: {type: error, error: {type: t, message: "{{message}}"}}"#;

fn kind(name: &str, matcher: &str) -> String {
    format!("  - name: {name}\n    status: 400\n    match: {matcher}{TEMPLATES}\n")
}

fn file(kinds: &str) -> String {
    format!(
        "kinds:\n{kinds}fallback:\n  name: fb\n  status: 502\n  templates:\n    openai: {{error: {{message: x}}}}\n    anthropic: {{type: error}}\n"
    )
}

#[test]
fn embedded_rules_load() {
    let r = Rules::embedded();
    assert!(r.kinds_count() > 20);
    assert_eq!(r.sha256().len(), 64);
    assert_eq!(r.probe().interval.as_secs(), 600);
    assert_eq!(r.models(), ["sonnet", "opus", "haiku"]);
    assert_eq!(
        r.first_unhealthy_kind().map(|v| v.kind),
        Some("auth_failure".into())
    );
}

#[test]
fn embedded_matches_file_on_disk() {
    let disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/rules.yaml")).unwrap();
    assert_eq!(disk, ccgate::rules::EMBEDDED_RULES);
}

#[test]
fn default_rule_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/tests");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    let code = ccgate::cmd::test(
        &ccgate::cmd::TestArgs { files },
        &mut out,
        &mut std::io::sink(),
    );
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
    // every default kind is covered by at least one case
    let mut covered = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        covered.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    for name in Rules::embedded().kind_names() {
        assert!(
            covered.contains(&format!("kind: {name}")),
            "no rule test expects kind {name}"
        );
    }
}

#[test]
fn status_override_per_flavour() {
    let r = Rules::embedded();
    let v = r.classify(&FailureFacts {
        api_error_status: Some(529),
        ..Default::default()
    });
    assert_eq!(v.kind, "overloaded");
    assert_eq!(v.status, 529);
    assert_eq!(r.status_for(&v, Flavour::Openai), 503);
    assert_eq!(r.status_for(&v, Flavour::Anthropic), 529);
}

#[test]
fn auth_body_matches_health_contract() {
    let r = Rules::embedded();
    let v = r.verdict_for_kind("auth_failure").unwrap();
    let vals = TemplateValues {
        request_id: "req_1".into(),
        last_probed_at: Some("2026-11-28T18:02:20.750607+00:00".into()),
        error_kind: Some("auth_failure".into()),
        error_message: Some("Not logged in · Please run /login".into()),
        ..Default::default()
    };
    let body = r.render_body(&v, Flavour::Openai, &vals);
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "message": "Claude CLI authentication is not healthy. Run `claude /login` on the gateway host, or set ANTHROPIC_API_KEY.",
            "type": "authentication_error", "param": null, "code": "claude_cli_not_authenticated",
            "last_probed_at": "2026-11-28T18:02:20.750607+00:00", "error_kind": "auth_failure",
            "error_message": "Not logged in · Please run /login",
            "request_id": "req_1"}})
    );
    let body = r.render_body(&v, Flavour::Anthropic, &vals);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["request_id"], "req_1");
}

#[test]
fn first_match_wins_in_file_order() {
    let text = file(
        &(kind("first", r#"{markers: ["boom time"]}"#)
            + &kind("second", r#"{markers: ["boom"], exit_code: [1]}"#)),
    );
    let r = load(&text);
    let f = FailureFacts {
        stderr_tail: "a boom time b".into(),
        exit_code: Some(1),
        ..Default::default()
    };
    let v = r.classify(&f);
    assert_eq!(v.kind, "first");
    assert_eq!(v.matched.as_deref(), Some("marker=\"boom time\""));
    // swap order: second wins, with its structured evidence first
    let text = file(
        &(kind("second", r#"{markers: ["boom"], exit_code: [1]}"#)
            + &kind("first", r#"{markers: ["boom time"]}"#)),
    );
    let v = load(&text).classify(&f);
    assert_eq!(v.kind, "second");
    assert_eq!(v.matched.as_deref(), Some("exit_code=1"));
}

#[test]
fn overlapping_markers_of_different_kinds_are_all_found() {
    // "abcdef" contains the later kind's "bcde" starting after the earlier kind's "abcdef" start;
    // the early kind must not be hidden by a leftmost/shorter match of the later kind.
    let text = file(
        &(kind("early", r#"{markers: ["cdefgh"]}"#)
            + &kind("late", r#"{markers: ["abcdefg", "bcde"]}"#)),
    );
    let r = load(&text);
    let v = r.classify(&FailureFacts {
        stderr_tail: "xxabcdefghxx".into(),
        ..Default::default()
    });
    assert_eq!(v.kind, "early");
    // same marker text in two kinds
    let text = file(
        &(kind("one", r#"{markers: ["same text"], exit_code: [7]}"#)
            + &kind("two", r#"{markers: ["SAME TEXT"]}"#)),
    );
    let r = load(&text);
    assert_eq!(
        r.classify(&FailureFacts {
            stderr_tail: "Same Text".into(),
            ..Default::default()
        })
        .kind,
        "one"
    );
}

#[test]
fn matching_is_case_insensitive() {
    let text = file(&kind(
        "k",
        r#"{assistant_error: [Authentication_Failed], result_subtype: [ERROR_MAX_TURNS], markers: ["Not Logged In"], regex: ['api error: 401\b']}"#,
    ));
    let r = load(&text);
    let cases = [
        (
            FailureFacts {
                assistant_error: Some("authentication_failed".into()),
                ..Default::default()
            },
            "assistant_error=authentication_failed",
        ),
        (
            FailureFacts {
                result_subtype: Some("error_max_turns".into()),
                ..Default::default()
            },
            "result_subtype=error_max_turns",
        ),
        (
            FailureFacts {
                stderr_tail: "NOT LOGGED IN".into(),
                ..Default::default()
            },
            "marker=\"Not Logged In\"",
        ),
        (
            FailureFacts {
                result_text: Some("API ERROR: 401 x".into()),
                ..Default::default()
            },
            "regex=/api error: 401\\b/",
        ),
    ];
    for (f, m) in cases {
        let v = r.classify(&f);
        assert_eq!((v.kind.as_str(), v.matched.as_deref()), ("k", Some(m)));
    }
    assert_eq!(
        r.classify(&FailureFacts {
            stderr_tail: "API Error: 4013".into(),
            ..Default::default()
        })
        .kind,
        "fb"
    );
}

#[test]
fn headers_render_and_skip_empty() {
    let r = Rules::embedded();
    let v = r.verdict_for_kind("usage_limit").unwrap();
    let h = r.render_headers(&v, &TemplateValues::default());
    assert!(h.contains(&("retry-after".into(), "3600".into())));
    assert!(h.contains(&("x-should-retry".into(), "false".into())));
}

// ---- check problems, one snapshot per class ----

macro_rules! snap {
    ($name:ident, $text:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), problems(&$text));
        }
    };
}

snap!(check_yaml_syntax, "kinds: [\n  - name: a\n");
snap!(
    check_unknown_field,
    file(&kind("a", "{exit_code: [1]}")).replace("status: 400", "statsu: 400")
);
snap!(
    check_wrong_type,
    file(&kind("a", "{exit_code: [1]}")).replace("status: 400", "status: abc")
);
snap!(
    check_bad_markers,
    file(&kind(
        "a",
        r#"{markers: ["", "   ", "401", "abc", " ok "]}"#
    ))
);
snap!(
    check_bad_regexes,
    file(&kind(
        "a",
        r#"{regex: ['(unclosed', 'x*', '(\w{50}){50}', '\B']}"#
    ))
);
snap!(
    check_placeholders,
    file(&kind("a", "{exit_code: [1]}"))
        .replace("{{kind}}", "{{knd}}")
        .replace("type: t, message", "\"{{kind}}\": t, message")
);
snap!(
    check_missing_flavour,
    file(&kind("a", "{exit_code: [1]}")).replace(
        "      anthropic: {type: error, error: {type: t, message: \"{{message}}\"}}",
        ""
    )
);
snap!(
    check_duplicate_names,
    file(
        &(kind("a", "{exit_code: [1]}")
            + &kind("a", "{exit_code: [2]}")
            + &kind("fb", "{exit_code: [3]}"))
    )
);
snap!(
    check_status_range,
    file(&kind("a", "{exit_code: [1]}"))
        .replace("status: 400", "status: 200\n    openai_status: 600")
);
snap!(
    check_missing_fallback,
    format!("kinds:\n{}", kind("a", "{exit_code: [1]}"))
);
snap!(
    check_probe_values,
    format!(
        "probe:\n  interval: -1\n  unhealthy_interval: .nan\n  timeout: 0\n{}",
        file(&kind("a", "{exit_code: [1]}"))
    )
);
snap!(check_empty_match, file(&kind("a", "{}")));
snap!(
    check_many_at_once,
    file(&(kind("a", r#"{markers: ["401"]}"#) + &kind("a", "{}")))
        .replace("status: 502", "status: 302")
);

// ---- schema ----

#[test]
fn committed_schema_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/rules.schema.json"
    ))
    .unwrap_or_default();
    assert!(
        committed == ccgate::cmd::schema_json(),
        "schema/rules.schema.json is stale: run `cargo run -- schema > schema/rules.schema.json`"
    );
}

// ---- template safety ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn placeholder_values_never_change_structure(
        s1 in any::<String>(), s2 in any::<String>(), s3 in any::<String>(),
        s4 in any::<String>(), s5 in any::<String>(), s6 in "\\PC*",
    ) {
        let text = file(&kind("k", r#"{markers: ["trigger"]}"#)).replace(
            r#"openai: {error: {message: "{{message}}", type: t, code: "{{kind}}"}}"#,
            r#"openai: {error: {message: "{{message}} / {{stderr_tail}}", all: ["{{kind}}", "{{status}}", "{{request_id}}", "{{model}}", "{{marker}}", "{{retry_after}}", "{{last_probed_at}}", "{{error_kind}}", "{{error_message}}", "x {{stderr_tail}} y", "{{ message }}"]}}"#,
        );
        let r = load(&text);
        let facts = FailureFacts { stderr_tail: format!("trigger {s1}"), result_text: Some(s2.clone()), ..Default::default() };
        let v = r.classify(&facts);
        prop_assert_eq!(v.kind.as_str(), "k");
        let vals = TemplateValues { request_id: s3, model: Some(s4), last_probed_at: Some(s5), error_kind: Some(s6.clone()), error_message: Some(s6), now_unix: None };
        let nulls = TemplateValues::default();
        for flavour in [Flavour::Openai, Flavour::Anthropic] {
            let a = r.render_body(&v, flavour, &vals);
            let b = r.render_body(&v, flavour, &nulls);
            prop_assert_eq!(shape(&a), shape(&b));
            // round-trips as JSON with the same keys
            let reparsed: Value = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
            prop_assert_eq!(&reparsed, &a);
        }
        let body = r.render_body(&v, Flavour::Openai, &vals);
        prop_assert_eq!(body["error"].as_object().unwrap().len(), 2);
        prop_assert_eq!(body["error"]["all"].as_array().unwrap().len(), 11);
    }
}

/// Regexes are case-insensitive with Unicode case folding, honour inline flags, and see
/// alternations and patterns without a literal prefix.
#[test]
fn regex_matching_cases() {
    let text = file(&kind(
        "k",
        r#"{regex: ['API Error: 4\d\d\b|\(429\)', 'stoK\b', '\d+ms timeout', '(?-i)CASE']}"#,
    ));
    let r = load(&text);
    let cases = [
        ("xx api ERROR: 429 yy", true),
        ("rejected (429) now", true),
        ("é first, then Api Error: 404!", true),
        ("no upstream here", false),
        ("API Error: 4013", false),
        // The Kelvin sign (U+212A) case-folds to `k`: only the full regex sees that.
        ("sto\u{212A} here", true),
        ("stok", true),
        ("waited 500ms timeout", true),
        ("CASE sensitive", true),
        ("case sensitive", false),
    ];
    for (stderr, expect) in cases {
        let v = r.classify(&FailureFacts {
            stderr_tail: stderr.into(),
            ..Default::default()
        });
        assert_eq!(v.kind == "k", expect, "{stderr:?}: {:?}", v.matched);
    }
}

#[test]
fn retry_after_counts_down_to_the_cli_reported_reset() {
    let r = Rules::embedded();
    let facts = FailureFacts {
        assistant_error: Some("rate_limit".into()),
        api_error: Some("usage_limit_reached".into()),
        rate_limit_resets_at: Some(10_000),
        ..FailureFacts::default()
    };
    let v = r.classify(&facts);
    assert_eq!(v.kind, "usage_limit");
    let at = |now: Option<u64>| {
        let vals = TemplateValues {
            now_unix: now,
            ..TemplateValues::default()
        };
        r.render_headers(&v, &vals)
            .into_iter()
            .find(|(k, _)| k == "retry-after")
            .map(|(_, v)| v)
    };
    assert_eq!(at(Some(9_000)).as_deref(), Some("1000"));
    // Reset already passed, or no clock: the kind's static value.
    assert_eq!(at(Some(10_000)).as_deref(), Some("3600"));
    assert_eq!(at(None).as_deref(), Some("3600"));
    // A kind without retry_after ignores the reset time.
    let auth = r.classify(&FailureFacts {
        assistant_error: Some("authentication_failed".into()),
        rate_limit_resets_at: Some(10_000),
        ..FailureFacts::default()
    });
    assert_eq!(auth.resets_at, None);
}

// Size caps (issue 17, finding 4): hostile or mistaken files are refused fast, with a
// position, instead of hanging `check` and reloads or exhausting memory.

/// Loads `text` and returns its problems and how long that took.
fn timed_problems(text: &str) -> (String, std::time::Duration) {
    let t = std::time::Instant::now();
    let out = match Rules::from_yaml(text, "t.yaml") {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.to_string(),
    };
    (out, t.elapsed())
}

snap!(
    check_size_caps,
    file(&kind(
        "a",
        &format!(
            "{{markers: [\"{}\"], regex: ['{}']}}",
            "m".repeat(300),
            "r".repeat(1100)
        )
    ))
);

#[test]
fn a_100k_character_marker_fails_fast_with_the_cap() {
    let text = file(&kind(
        "a",
        &format!("{{markers: [\"{}\"]}}", "x".repeat(100_000)),
    ));
    let (out, took) = timed_problems(&text);
    assert!(
        out.contains("t.yaml:4:23: marker \"xxxx")
            && out.contains("is 100000 characters long; the limit is 256"),
        "{out}"
    );
    assert!(
        out.len() < 2_000,
        "the message does not echo the marker: {out}"
    );
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_9_mb_regex_is_refused_by_the_caps() {
    // In a file: the file-size cap, before any parsing.
    let text = file(&kind(
        "a",
        &format!("{{regex: ['{}']}}", "(a|b)".repeat(9 * 1024 * 1024 / 5)),
    ));
    let (out, took) = timed_problems(&text);
    assert!(
        out.contains("rules file is 9437") && out.contains("the limit is 1048576 bytes"),
        "{out}"
    );
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    // Under the file cap: the regex-length cap, before the regex is parsed.
    let text = file(&kind(
        "a",
        &format!("{{regex: ['{}']}}", "(a|b)".repeat(200_000)),
    ));
    let (out, took) = timed_problems(&text);
    assert!(
        out.contains("is 1000000 characters long; the limit is 1024"),
        "{out}"
    );
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
}

#[test]
fn kind_marker_and_regex_counts_are_capped() {
    let kinds: String = (0..257)
        .map(|i| kind(&format!("k{i}"), "{exit_code: [1]}"))
        .collect();
    let out = problems(&file(&kinds));
    assert!(
        out.contains("too many kinds: 257 (the limit is 256)"),
        "{out}"
    );
    assert_eq!(out.matches("too many").count(), 1, "{out}");

    let markers: Vec<String> = (0..4097).map(|i| format!("\"mark{i:05}\"")).collect();
    let out = problems(&file(&kind(
        "a",
        &format!("{{markers: [{}]}}", markers.join(", ")),
    )));
    assert!(
        out.contains("too many markers: this is marker 4097 of the file (the limit is 4096)"),
        "{out}"
    );
    let regexes: Vec<String> = (0..257).map(|i| format!("'re{i:04}'")).collect();
    let out = problems(&file(&kind(
        "a",
        &format!("{{regex: [{}]}}", regexes.join(", ")),
    )));
    assert!(
        out.contains("too many regexes: this is regex 257 of the file (the limit is 256)"),
        "{out}"
    );
}

#[test]
fn the_largest_allowed_markers_compile_fast() {
    // ~1 MB of 256-character markers (the file cap): the automaton's build is linear.
    let markers: Vec<String> = (0..3800)
        .map(|i| format!("\"{i:06}{}\"", "y".repeat(250)))
        .collect();
    let text = file(&kind(
        "a",
        &format!("{{markers: [{}]}}", markers.join(", ")),
    ));
    assert!(text.len() < 1024 * 1024);
    let t = std::time::Instant::now();
    let r = load(&text);
    eprintln!("3800 markers of 256 characters: {:?}", t.elapsed());
    assert_eq!(r.markers_count(), 3800);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn marker_automaton_kind_builds_long_markers_linearly() {
    // The setting `load` uses, measured beyond the cap: 10k and 100k characters.
    use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
    for n in [10_000, 100_000] {
        let t = std::time::Instant::now();
        let a = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .match_kind(MatchKind::LeftmostFirst)
            .build([
                "claude native binary not installed".to_string(),
                "x".repeat(n),
            ])
            .unwrap();
        eprintln!("contiguous NFA, {n}-character marker: {:?}", t.elapsed());
        assert!(a.is_match(&"x".repeat(n)));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
