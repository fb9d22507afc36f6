//! The rules subcommands (`ccgate check | classify | test | schema`) as library functions:
//! each takes its clap args plus stdout/stderr writers and returns the process exit code,
//! so `main.rs` only dispatches. Also owns the capture format (`parse_capture`) and the
//! rule-test file format (`TestFile`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::protocol::{RunAccumulator, RunEnd};
use crate::rules::model::RulesFile;
use crate::rules::{FailureFacts, Flavour, Rules, TemplateValues};

/// Default rules path, relative to the working directory.
pub const DEFAULT_RULES_PATH: &str = "rules/rules.yaml";
/// Default rule test files.
pub const DEFAULT_TESTS_DIR: &str = "rules/tests";

/// `ccgate check [RULES]`: validate a rules file, reporting every problem.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Rules file (default: rules/rules.yaml if it exists, else the embedded rules).
    pub rules: Option<PathBuf>,
}

/// `ccgate classify`: classify a failure (facts document or stream-json capture).
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// Rules file (default: rules/rules.yaml if it exists, else the embedded rules).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Which API's body shape and status to show.
    #[arg(long, default_value = "openai", value_parser = parse_flavour)]
    pub flavour: Flavour,
    /// Input file, or `-` / nothing for stdin.
    pub input: Option<PathBuf>,
}

/// `ccgate test [FILES…]`: run rule test files.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TestArgs {
    /// Test files (default: rules/tests/*.yaml).
    pub files: Vec<PathBuf>,
}

/// `ccgate schema`: print the rules file's JSON Schema.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchemaArgs {}

fn parse_flavour(s: &str) -> Result<Flavour, String> {
    s.parse()
}

/// Loads the rules at `path`, or the default (`rules/rules.yaml` if present, else embedded).
/// Errors are fully rendered problem lists.
pub fn load_rules(path: Option<&Path>) -> Result<Rules, String> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_RULES_PATH);
            if !p.exists() {
                return Ok(Rules::embedded());
            }
            p
        }
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
    Rules::from_yaml(&text, &origin).map_err(|e| e.to_string())
}

/// `ccgate check`.
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match load_rules(args.rules.as_deref()) {
        Ok(r) => {
            let _ = writeln!(
                out,
                "{}: ok ({} kinds, {} markers)",
                r.origin(),
                r.kinds_count(),
                r.markers_count()
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            1
        }
    }
}

/// What a classify input turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The capture is a successful run (nothing to classify).
    Success {
        text: String,
    },
    Failure(Box<FailureFacts>),
}

/// Whether `text` is a capture (first non-blank line starts with `{` or `#`) rather than
/// a YAML/JSON facts document.
pub fn is_capture(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with('{') || l.starts_with('#'))
}

/// Parses a capture: stream-json stdout lines plus `#directive: value` lines
/// (`#stderr:` repeatable and joined with newlines, `#exit:`, `#signal:`, `#spawn_error:`,
/// `#spawn_error_message:`, `#timeout:`, `#condition:`; `# ` followed by text is a comment).
pub fn parse_capture(text: &str) -> Result<Outcome, String> {
    let mut acc = RunAccumulator::new();
    let mut stderr: Vec<&str> = Vec::new();
    let (mut exit, mut signal) = (None, None);
    let (mut spawn_error, mut spawn_msg, mut timeout, mut condition) = (None, None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let Some(directive) = line.trim_start().strip_prefix('#') else {
            acc.push_line(line);
            continue;
        };
        let Some((key, value)) = directive.split_once(':') else {
            continue; // comment
        };
        let key = key.trim();
        let v = value.strip_prefix(' ').unwrap_or(value);
        let bad = |what: &str| format!("capture line {}: bad {what} value `{}`", n + 1, v.trim());
        match key {
            "stderr" => stderr.push(v),
            "exit" => exit = Some(v.trim().parse::<i32>().map_err(|_| bad("exit"))?),
            "signal" => signal = Some(v.trim().parse::<i32>().map_err(|_| bad("signal"))?),
            "spawn_error" => spawn_error = Some(enum_val(v).map_err(|_| bad("spawn_error"))?),
            "spawn_error_message" => spawn_msg = Some(v.to_string()),
            "timeout" => timeout = Some(enum_val(v).map_err(|_| bad("timeout"))?),
            "condition" => condition = Some(enum_val(v).map_err(|_| bad("condition"))?),
            k if k.contains(' ') => {} // a comment containing a colon
            other => {
                return Err(format!(
                    "capture line {}: unknown directive `#{other}:`",
                    n + 1
                ))
            }
        }
    }
    let tail = stderr.join("\n");
    if spawn_error.is_some() {
        // Nothing ran: the facts are the spawn error alone.
        return Ok(Outcome::Failure(Box::new(FailureFacts {
            spawn_error,
            spawn_error_message: spawn_msg,
            stderr_tail: tail,
            ..FailureFacts::default()
        })));
    }
    let mut facts = match acc.conclude(RunEnd {
        exit_code: exit,
        signal,
        stderr_tail: tail,
        timeout,
        condition,
    }) {
        Ok(s) => return Ok(Outcome::Success { text: s.text }),
        Err(f) => f,
    };
    facts.spawn_error_message = spawn_msg.or(facts.spawn_error_message.take());
    Ok(Outcome::Failure(facts))
}

fn enum_val<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::String(v.trim().to_string()))
}

/// Parses a classify input: a capture or a YAML/JSON `FailureFacts` document.
pub fn parse_input(text: &str) -> Result<Outcome, String> {
    if is_capture(text) {
        parse_capture(text)
    } else {
        serde_saphyr::from_str::<FailureFacts>(text)
            .map(|f| Outcome::Failure(Box::new(f)))
            .map_err(|e| format!("facts: {e}"))
    }
}

/// The JSON `classify` prints: `{kind, status, headers, unhealthy, matched, message, body}`
/// (or `{kind: "success", text}` for a successful capture).
pub fn classify_json(rules: &Rules, outcome: &Outcome, flavour: Flavour) -> Value {
    match outcome {
        Outcome::Success { text } => json!({"kind": "success", "text": text}),
        Outcome::Failure(facts) => {
            let v = rules.classify(facts);
            let values = TemplateValues {
                request_id: "req_classify".into(),
                ..TemplateValues::default()
            };
            let headers: serde_json::Map<String, Value> = rules
                .render_headers(&v, &values)
                .into_iter()
                .map(|(k, val)| (k, Value::String(val)))
                .collect();
            json!({
                "kind": v.kind,
                "status": rules.status_for(&v, flavour),
                "headers": headers,
                "unhealthy": v.unhealthy,
                "matched": v.matched,
                "message": v.message,
                "body": rules.render_body(&v, flavour, &values),
            })
        }
    }
}

/// `ccgate classify`. Reads stdin when the input is absent or `-`.
pub fn classify(args: &ClassifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let rules = match load_rules(args.rules.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    let text = match args.input.as_deref() {
        None => read_stdin(),
        Some(p) if p == Path::new("-") => read_stdin(),
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())),
    };
    let outcome = match text.and_then(|t| parse_input(&t)) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let json = classify_json(&rules, &outcome, args.flavour);
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    0
}

fn read_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(s)
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

/// One test case: `facts` or `capture`, and what to expect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(default)]
    pub facts: Option<FailureFacts>,
    #[serde(default)]
    pub capture: Option<String>,
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

fn run_case(rules: &Rules, case: &TestCase) -> Result<(), String> {
    let outcome = match (&case.facts, &case.capture) {
        (Some(f), None) => Outcome::Failure(Box::new(f.clone())),
        (None, Some(c)) => parse_capture(c)?,
        _ => return Err("a case needs exactly one of `facts` or `capture`".into()),
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
            load_rules(Some(&p))?
        }
    };
    let (mut pass, mut fail) = (0, 0);
    for case in &file.cases {
        match run_case(&rules, case) {
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

/// The JSON Schema of the rules file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RulesFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// `ccgate schema`.
pub fn schema(_args: &SchemaArgs, out: &mut dyn Write, _err: &mut dyn Write) -> i32 {
    match out.write_all(schema_json().as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
