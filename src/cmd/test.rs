//! `ccgate test`: run rule test files (the `TestFile` format).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{explicit_rules, DEFAULT_TESTS_DIR};
use crate::capture::{classify_json, parse_capture, Outcome};
use crate::rules::{FailureFacts, Flavour, Rules};

/// `ccgate test [FILES…]`: run rule test files.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TestArgs {
    /// Test files (default: rules/tests/*.yaml).
    pub files: Vec<PathBuf>,
}

/// A rule test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Rules to test, relative to the test file; default: the embedded rules.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    pub cases: Vec<TestCase>,
}

/// One test case: `facts`, or a capture (`capture`, `capture_file` or both), and what to
/// expect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(default)]
    pub facts: Option<FailureFacts>,
    #[serde(default)]
    pub capture: Option<String>,
    /// A capture file (a real CLI's stdout, e.g. `tests/fixtures/real/*.jsonl`), relative
    /// to the test file; `capture`, if given too, is appended (its `#exit:` and other
    /// directives describe how the captured run ended).
    #[serde(default)]
    pub capture_file: Option<PathBuf>,
    pub expect: Expect,
}

/// Expectations; every field given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Kind name, or `success` for a capture that did not fail.
    pub kind: String,
    /// Status for `flavour`.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub flavour: Option<Flavour>,
    #[serde(default)]
    pub unhealthy: Option<bool>,
    /// The kind's `account_scoped`.
    #[serde(default)]
    pub account_scoped: Option<bool>,
    /// The kind's `cooldown`: `until_reset` or seconds (`none` for a kind without).
    #[serde(default)]
    pub cooldown: Option<Value>,
    /// Exact `Verdict::matched`.
    #[serde(default)]
    pub matched: Option<String>,
    /// Subset of the rendered body: objects by key, strings by substring, rest exact.
    #[serde(default)]
    pub body_contains: Option<Value>,
    /// Subset of the rendered headers (name → exact value).
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// Whether `expected` is contained in `actual` (see [`Expect::body_contains`]).
pub fn json_contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| json_contains(av, ev))),
        (Value::String(a), Value::String(e)) => a.contains(e.as_str()),
        _ => actual == expected,
    }
}

fn run_case(rules: &Rules, case: &TestCase, dir: &Path) -> Result<(), String> {
    let file = match &case.capture_file {
        Some(f) => {
            let p = dir.join(f);
            Some(std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let capture = match (file, &case.capture) {
        (Some(f), Some(c)) => Some(format!("{}\n{c}", f.trim_end())),
        (Some(f), None) => Some(f),
        (None, c) => c.clone(),
    };
    let outcome = match (&case.facts, capture) {
        (Some(f), None) => Outcome::Failure(Box::new(f.clone())),
        (None, Some(c)) => parse_capture(&c)?,
        _ => {
            return Err(
                "a case needs exactly one of `facts` or a capture (`capture` / `capture_file`)"
                    .into(),
            )
        }
    };
    let e = &case.expect;
    let flavour = e.flavour.unwrap_or(Flavour::Openai);
    let got = classify_json(rules, &outcome, flavour);
    let mut fails = Vec::new();
    let kind = got["kind"].as_str().unwrap_or("");
    if kind != e.kind {
        fails.push(format!(
            "expected kind {}, got {} (matched {})",
            e.kind, kind, got["matched"]
        ));
    }
    if let Some(s) = e.status {
        if got["status"] != json!(s) {
            fails.push(format!(
                "expected status {s} ({flavour}), got {}",
                got["status"]
            ));
        }
    }
    if let Some(u) = e.unhealthy {
        if got["unhealthy"] != json!(u) {
            fails.push(format!("expected unhealthy {u}, got {}", got["unhealthy"]));
        }
    }
    if let Some(a) = e.account_scoped {
        if got["account_scoped"] != json!(a) {
            fails.push(format!(
                "expected account_scoped {a}, got {}",
                got["account_scoped"]
            ));
        }
    }
    if let Some(c) = &e.cooldown {
        let want = if c == "none" { &Value::Null } else { c };
        if &got["cooldown"] != want {
            fails.push(format!("expected cooldown {c}, got {}", got["cooldown"]));
        }
    }
    if let Some(m) = &e.matched {
        if got["matched"].as_str() != Some(m.as_str()) {
            fails.push(format!("expected matched {m:?}, got {}", got["matched"]));
        }
    }
    if let Some(b) = &e.body_contains {
        if !json_contains(&got["body"], b) {
            fails.push(format!("expected body containing {b}, got {}", got["body"]));
        }
    }
    if let Some(h) = &e.headers {
        for (k, v) in h {
            if got["headers"][k.to_ascii_lowercase()].as_str() != Some(v.as_str()) {
                fails.push(format!("expected header {k}: {v}, got {}", got["headers"]));
            }
        }
    }
    if fails.is_empty() {
        Ok(())
    } else {
        Err(fails.join("; "))
    }
}

/// Runs one test file; returns (passed, failed).
pub fn run_test_file(path: &Path, out: &mut dyn Write) -> Result<(usize, usize), String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
    let file: TestFile = serde_saphyr::from_str(&text).map_err(|e| format!("{origin}: {e}"))?;
    let rules = match &file.rules {
        None => Rules::embedded(),
        Some(r) => {
            let p = path.parent().unwrap_or(Path::new(".")).join(r);
            explicit_rules(&p)?.rules
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut pass, mut fail) = (0, 0);
    for case in &file.cases {
        match run_case(&rules, case, dir) {
            Ok(()) => {
                pass += 1;
                let _ = writeln!(out, "PASS {}", case.name);
            }
            Err(why) => {
                fail += 1;
                let _ = writeln!(out, "FAIL {}: {why}", case.name);
            }
        }
    }
    Ok((pass, fail))
}

/// `ccgate test`.
pub fn test(args: &TestArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let files = if args.files.is_empty() {
        match std::fs::read_dir(DEFAULT_TESTS_DIR) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                v.sort();
                v
            }
            Err(e) => {
                let _ = writeln!(err, "{DEFAULT_TESTS_DIR}: {e}");
                return 1;
            }
        }
    } else {
        args.files.clone()
    };
    let (mut pass, mut fail, mut broken) = (0, 0, 0);
    for f in &files {
        let _ = writeln!(out, "# {}", f.display());
        match run_test_file(f, out) {
            Ok((p, fl)) => {
                pass += p;
                fail += fl;
            }
            Err(e) => {
                broken += 1;
                let _ = writeln!(err, "{e}");
            }
        }
    }
    let _ = writeln!(out, "{pass} passed, {fail} failed");
    if fail > 0 || broken > 0 || files.is_empty() {
        1
    } else {
        0
    }
}
