//! The real CLI's typed failures (issue 26 item 2), offline against the mock API, on
//! whichever CLI `CCGATE_REAL_CLAUDE` names (CI runs 2.1.332 and 2.1.336): what each
//! version reports, and that the default rules classify the capture as intended.
//!
//! `CCGATE_UPDATE_FIXTURES=1` writes the captures to
//! `tests/fixtures/real/<case>-<version>.jsonl`, which `rules/tests/typed.yaml` classifies
//! with `ccgate test`.
//!
//! Not producible offline (the CLI asks api.anthropic.com, over TLS, whether the
//! account answered the Consumer Terms; an organization sign-in needs its service):
//! `consumer_terms_*` and `org_signin_ended` startup refusals. Their rule cases are
//! built from a real startup refusal's shape (`bypass_root.jsonl`) with the CLI's own
//! wording (read from the 2.1.336 binary).

use serde_json::Value;

use ccgate::cmd::{parse_capture, Outcome};
use ccgate::rules::{FailureFacts, Rules};

use crate::mock_api::{MockApi, TERMS_ERROR_CODE};
use crate::support_real::{cli_version, real_claude, CliOutput, RealCli};

/// Runs the real CLI against `scenario` with `env` and `args`; None: skipped.
async fn run(
    scenario: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Option<(MockApi, CliOutput, (u32, u32, u32))> {
    let exe = real_claude()?;
    let version = cli_version(&exe);
    let mock = MockApi::start().await;
    let mut cli = RealCli::new(&exe).base_url(&mock.url(scenario)).args(args);
    for (k, v) in env {
        cli = match *v {
            "" => cli.env_remove(k),
            v => cli.env(k, v),
        };
    }
    let out = cli.run().await;
    eprintln!("[real_typed] {scenario} {version:?}: {}", out.summary());
    Some((mock, out, version))
}

/// The capture as `ccgate test` reads it (stdout plus the exit status), concluded.
fn facts_of(out: &CliOutput) -> FailureFacts {
    let capture = format!("{}\n#exit: {}\n", out.stdout, out.exit_code.unwrap_or(-1));
    match parse_capture(&capture).expect("capture parses") {
        Outcome::Failure(f) => *f,
        Outcome::Success { text } => panic!("expected a failure, got {text:?}\n{}", out.describe()),
    }
}

fn save(out: &CliOutput, case: &str, v: (u32, u32, u32)) {
    out.save_fixture(&format!("{case}-{}.{}.{}", v.0, v.1, v.2));
}

/// An OAuth token the API says was revoked: a person must sign in again. 2.1.332 says
/// so in text only; 2.1.336 adds `api_error: token_revoked`. Both are
/// `account_action_required`.
#[tokio::test]
async fn real_typed_revoked_token_is_account_action_required() {
    let Some((_mock, out, v)) = run(
        "revoked403",
        &[
            ("ANTHROPIC_API_KEY", ""),
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-mock"),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let d = out.describe();
    let r = out.result();
    assert_eq!(r["api_error_status"], 403, "{d}");
    assert!(
        r["result"]
            .as_str()
            .is_some_and(|t| t.contains("OAuth token revoked")),
        "{d}"
    );
    let typed = v >= (2, 1, 336);
    assert_eq!(
        r["api_error"] == "token_revoked",
        typed,
        "2.1.336 (only) types a revoked token as api_error token_revoked\n{d}"
    );
    save(&out, "token_revoked", v);
    let verdict = Rules::embedded().classify(&facts_of(&out));
    assert_eq!(verdict.kind, "account_action_required", "{d}");
    assert_eq!(
        verdict.matched.as_deref(),
        Some(if typed {
            "api_error=token_revoked"
        } else {
            "marker=\"OAuth token revoked\""
        }),
        "{d}"
    );
    assert!(verdict.unhealthy && verdict.account_scoped);
    assert_eq!(verdict.status, 503);
}

/// The runtime form of unanswered Consumer Terms (a 400 with the remedy URL): the CLI
/// copies the error's `details.error_code` through as `api_error_code` (both versions);
/// the default rules make it `account_action_required` by its text, and the remedy URL
/// survives redaction.
#[tokio::test]
async fn real_typed_consumer_terms_400_carries_api_error_code_and_remedy() {
    let Some((_mock, out, v)) = run("terms400", &[], &[]).await else {
        return;
    };
    let d = out.describe();
    let r = out.result();
    assert_eq!(r["api_error_status"], 400, "{d}");
    assert_eq!(r["api_error_code"], TERMS_ERROR_CODE, "{d}");
    let a = out.synthetic_assistant().expect("synthetic assistant");
    assert_eq!(a["api_error_code"], TERMS_ERROR_CODE, "{d}");
    save(&out, "consumer_terms_400", v);
    let facts = facts_of(&out);
    assert_eq!(facts.api_error_code.as_deref(), Some(TERMS_ERROR_CODE));
    let verdict = Rules::embedded().classify(&facts);
    assert_eq!(verdict.kind, "account_action_required", "{d}");
    assert!(
        verdict
            .message
            .contains("https://claude.ai/settings/data-privacy-controls"),
        "the remedy URL reaches the client: {}",
        verdict.message
    );
    // The typed matcher, exact: an operator's rule on the code wins over the text.
    let rules = Rules::from_yaml(
        &format!(
            "kinds:\n  - name: terms\n    status: 451\n    match: {{api_error_code: [{TERMS_ERROR_CODE}]}}\n    templates: {{openai: {{}}, anthropic: {{}}}}\nfallback: {{name: other, status: 502, templates: {{openai: {{}}, anthropic: {{}}}}}}\n"
        ),
        "<test>",
    )
    .expect("rules load");
    let verdict = rules.classify(&facts);
    assert_eq!(verdict.kind, "terms");
    assert_eq!(
        verdict.matched.as_deref(),
        Some(format!("api_error_code={TERMS_ERROR_CODE}").as_str())
    );
}

/// `--resume` of a session that does not exist: 2.1.336 types it
/// (`startup_failure_reason: resume_target_not_found`), 2.1.332 says it in text; both
/// are `session_not_found`, the kind whose failure takes the fresh-run fallback.
#[tokio::test]
async fn real_typed_resume_target_not_found_is_session_not_found() {
    let Some((mock, out, v)) = run(
        "ok",
        &[],
        &["--resume", "11111111-1111-4111-8111-111111111111"],
    )
    .await
    else {
        return;
    };
    let d = out.describe();
    assert!(mock.message_requests().is_empty(), "no model call\n{d}");
    let r = out.result();
    assert_eq!(r["subtype"], "error_during_execution", "{d}");
    let typed = v >= (2, 1, 336);
    assert_eq!(
        r["startup_failure_reason"] == "resume_target_not_found",
        typed,
        "{d}"
    );
    save(&out, "resume_target_not_found", v);
    let verdict = Rules::embedded().classify(&facts_of(&out));
    assert_eq!(verdict.kind, "session_not_found", "{d}");
    if typed {
        assert_eq!(
            verdict.matched.as_deref(),
            Some("startup_failure_reason=resume_target_not_found")
        );
    }
}

/// A subscription window the API rejects: the CLI reports a `rate_limit_event` with
/// status `rejected`, which the typed matcher `rate_limit_status` sees.
#[tokio::test]
async fn real_typed_rejected_rate_limit_event_is_a_typed_status() {
    let reset = ccgate::clock::unix_now() + 3600;
    let Some((_mock, out, _)) = run(
        &format!("usage429:{reset}"),
        &[
            ("ANTHROPIC_API_KEY", ""),
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-mock"),
        ],
        &[],
    )
    .await
    else {
        return;
    };
    let d = out.describe();
    let statuses: Vec<&Value> = out
        .of_type("rate_limit_event")
        .into_iter()
        .map(|l| &l["rate_limit_info"]["status"])
        .collect();
    assert!(
        statuses.iter().any(|s| *s == "rejected"),
        "a rejected rate_limit_event: {statuses:?}\n{d}"
    );
    let facts = facts_of(&out);
    assert_eq!(facts.rate_limit_status.as_deref(), Some("rejected"), "{d}");
    assert_eq!(
        Rules::embedded().classify(&facts).kind,
        "usage_limit",
        "{d}"
    );
}
