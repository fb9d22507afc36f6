//! Loading: parse `rules.yaml` text with serde-saphyr into [`RulesFile`], validate it
//! (collecting EVERY problem with its `file:line:column` and a source snippet), and compile
//! it into [`Rules`]: one Aho-Corasick automaton for all markers, case-insensitive regexes
//! with a size limit, and parsed body/header templates.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexBuilder};
use serde_saphyr::{Location, Spanned};

use super::model::{
    CooldownDef, CooldownKeyword, FallbackDef, KindDef, MatchDef, RateLimitStatus, RulesFile,
    TemplateNode, TemplatesDef, STARTUP_FAILURE_REASONS,
};
use super::template::{PlaceholderError, Template, TemplateString};
use super::{ProbeSettings, Rules};
use crate::rules::facts::{GatewayCondition, SpawnErrorKind, TimeoutKind};

mod templates;
use templates::{compile_headers, compile_templates};

/// Kinds the gateway acts on by name, and what is lost without them (`check` warns).
pub const BUILT_IN_KINDS: &[(&str, &str)] = &[
    (
        super::ACCOUNT_ACTION_REQUIRED,
        "failures that need a person (updated Consumer Terms, an ended organization sign-in, a revoked login) do not take the account out of selection",
    ),
    (
        super::SESSION_NOT_FOUND,
        "a conversation the CLI cannot resume fails instead of being answered from a transcript",
    ),
];

/// Compiled size limit of one regex (bytes); larger ones are a `check` error.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Minimum marker length in characters (after trimming).
pub const MIN_MARKER_CHARS: usize = 4;
/// Size caps: together they bound how long (well under a second) and how much memory
/// (tens of MB) parsing and compiling any rules file can take, so a hostile or mistaken
/// file is rejected quickly instead of hanging `check` or a reload.
///
/// Largest rules file (bytes).
pub const MAX_RULES_BYTES: usize = 1024 * 1024;
/// Longest marker (characters).
pub const MAX_MARKER_CHARS: usize = 256;
/// Longest regex source (characters; checked before the regex is parsed, since parsing
/// alone of a multi-megabyte pattern takes gigabytes).
pub const MAX_REGEX_CHARS: usize = 1024;
/// Most kinds (not counting the fallback).
pub const MAX_KINDS: usize = 256;
/// Most markers in the whole file.
pub const MAX_MARKERS: usize = 4096;
/// Most regexes in the whole file.
pub const MAX_REGEXES: usize = 256;
/// Lazy-DFA cache of one regex (bytes), allocated per searching thread.
pub const REGEX_DFA_SIZE_LIMIT: usize = 512 * 1024;
/// Source lines longer than this are cut around the problem's column in snippets.
const SNIPPET_CHARS: usize = 120;

/// One problem in a rules file, with its position (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The offending source line with a caret under the column (empty when unknown).
    pub snippet: String,
}

/// Why a rules file could not be loaded: every problem found, in source order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    /// Where the text came from (a path or `<embedded>`), printed before each problem.
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: {}", self.origin, p.message)?;
            } else {
                write!(f, "{}:{}:{}: {}", self.origin, p.line, p.column, p.message)?;
            }
            if !p.snippet.is_empty() {
                write!(f, "\n{}", p.snippet)?;
            }
        }
        Ok(())
    }
}

/// Collects problems with snippets taken from the source text (also for the keys file).
pub(crate) struct Problems<'a> {
    lines: Vec<&'a str>,
    pub(crate) list: Vec<Problem>,
    /// Not errors: the file loads, but `ccgate check` shows these.
    warnings: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Problems {
            lines: text.lines().collect(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn warn(&mut self, loc: Location, message: impl Into<String>) {
        let p = self.problem(loc, message.into());
        self.warnings.push(p);
    }

    fn problem(&self, loc: Location, message: String) -> Problem {
        let (line, column) = (loc.line(), loc.column());
        Problem {
            line,
            column,
            message,
            snippet: self.snippet(line, column),
        }
    }

    pub(crate) fn at(&mut self, loc: Location, message: impl Into<String>) {
        let p = self.problem(loc, message.into());
        self.list.push(p);
    }

    fn snippet(&self, line: u64, column: u64) -> String {
        if line == 0 {
            return String::new();
        }
        let Some(src) = usize::try_from(line - 1)
            .ok()
            .and_then(|i| self.lines.get(i))
        else {
            return String::new();
        };
        let num = line.to_string();
        let pad = " ".repeat(num.len());
        let col = usize::try_from(column.saturating_sub(1)).unwrap_or(0);
        // A very long line (a 100k-character marker) is shown as a window around the column.
        let (src, col) = if src.chars().count() > SNIPPET_CHARS {
            let start = col.saturating_sub(SNIPPET_CHARS / 4);
            let window: String = src.chars().skip(start).take(SNIPPET_CHARS).collect();
            let (head, shift) = if start > 0 { ("…", 1) } else { ("", 0) };
            (format!("{head}{window}…"), col - start + shift)
        } else {
            (src.to_string(), col)
        };
        // Column is in characters; keep tabs so the caret lines up in a terminal.
        let lead: String = src
            .chars()
            .take(col)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("{pad} |\n{num} | {src}\n{pad} | {lead}^")
    }
}

/// Compiled matchers of one kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    /// Lowercased string lists.
    pub assistant_error: Vec<String>,
    pub result_subtype: Vec<String>,
    pub terminal_reason: Vec<String>,
    pub api_error: Vec<String>,
    pub api_error_type: Vec<String>,
    /// Identifiers, compared exactly.
    pub startup_failure_reason: Vec<String>,
    pub api_error_code: Vec<String>,
    pub rate_limit_status: Vec<RateLimitStatus>,
    pub api_error_status: Vec<u16>,
    pub retry_status: Vec<u16>,
    pub exit_code: Vec<i32>,
    pub signal: Vec<i32>,
    pub spawn_error: Vec<SpawnErrorKind>,
    pub timeout: Vec<TimeoutKind>,
    pub condition: Vec<GatewayCondition>,
    /// Markers as written (for `Verdict::matched`); their automaton ids live in `Rules`.
    pub markers: Vec<String>,
    pub regex: Vec<Regex>,
}

/// One compiled kind (the fallback has an empty matcher).
#[derive(Debug, Clone)]
pub(crate) struct CompiledKind {
    pub name: String,
    pub description: Option<String>,
    pub status: u16,
    pub openai_status: Option<u16>,
    pub anthropic_status: Option<u16>,
    pub unhealthy: bool,
    pub retry_after: Option<u64>,
    pub account_scoped: bool,
    pub cooldown: Option<super::Cooldown>,
    pub headers: Vec<(String, TemplateString)>,
    pub matcher: Matcher,
    pub openai: Template,
    pub anthropic: Template,
}

/// The marker automaton: pattern id → every (kind index, marker index) using it.
#[derive(Debug, Clone)]
pub(crate) struct MarkerIndex {
    pub automaton: AhoCorasick,
    pub owners: Vec<Vec<(usize, usize)>>,
}

/// Parses and compiles a rules file. `origin` names it in problems (a path or `<embedded>`).
pub fn load(text: &str, origin: &str) -> Result<Rules, LoadError> {
    if text.len() > MAX_RULES_BYTES {
        return Err(too_big(origin, text.len()));
    }
    let mut problems = Problems::new(text);
    let file: RulesFile = match serde_saphyr::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let loc = e.location().unwrap_or(Location::UNKNOWN);
            let msg = e.without_snippet().to_string();
            // The library appends its own position; ours is in the prefix.
            let msg = strip_position_suffix(&msg);
            problems.at(loc, msg);
            return Err(LoadError {
                origin: origin.to_string(),
                problems: problems.list,
            });
        }
    };
    let compiled = compile(file, &mut problems);
    if problems.list.is_empty() {
        if let Some(mut rules) = compiled {
            rules.sha256 = super::sha256_hex(text.as_bytes());
            rules.origin = origin.to_string();
            rules.warnings = std::mem::take(&mut problems.warnings);
            return Ok(rules);
        }
    }
    problems.list.sort_by_key(|p| (p.line, p.column));
    Err(LoadError {
        origin: origin.to_string(),
        problems: problems.list,
    })
}

/// The error for a rules file over [`MAX_RULES_BYTES`] (`len`: its size, or a lower bound).
pub fn too_big(origin: &str, len: usize) -> LoadError {
    LoadError {
        origin: origin.to_string(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            message: format!(
                "rules file is {len} bytes or more; the limit is {MAX_RULES_BYTES} bytes"
            ),
            snippet: String::new(),
        }],
    }
}

/// The first `n` characters of `s`, with `…` when cut (long values in messages).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).chain(std::iter::once('…')).collect()
    }
}

/// Running totals against the file-wide caps.
#[derive(Default)]
struct Counts {
    markers: usize,
    regexes: usize,
}

pub(crate) fn strip_position_suffix(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    // e.g. "unknown field `x`, expected ... at line 3 column 5"
    match first.rfind(" at line ") {
        Some(i) if first[i..].contains("column") => first[..i].trim_end_matches(',').to_string(),
        _ => first.to_string(),
    }
}

fn seconds(p: &mut Problems, field: &str, v: Option<&Spanned<f64>>, default: f64) -> Duration {
    let Some(v) = v else {
        return Duration::from_secs_f64(default);
    };
    match Duration::try_from_secs_f64(v.value) {
        Ok(d) if v.value.is_finite() => d,
        _ => {
            p.at(
                v.referenced,
                format!(
                    "probe.{field} must be a finite, non-negative number of seconds (got {})",
                    v.value
                ),
            );
            Duration::ZERO
        }
    }
}

fn compile(file: RulesFile, p: &mut Problems) -> Option<Rules> {
    // Probe.
    let probe = match &file.probe {
        Some(def) => {
            let interval = seconds(p, "interval", def.interval.as_ref(), 600.0);
            let unhealthy_interval = seconds(
                p,
                "unhealthy_interval",
                def.unhealthy_interval.as_ref(),
                30.0,
            );
            let timeout = seconds(p, "timeout", def.timeout.as_ref(), 30.0);
            if let Some(t) = &def.timeout {
                if t.value == 0.0 {
                    p.at(t.referenced, "probe.timeout must be greater than 0");
                }
            }
            ProbeSettings {
                interval,
                unhealthy_interval,
                timeout,
                prompt: def.prompt.clone().unwrap_or_else(default_prompt),
                model: def.model.clone(),
            }
        }
        None => ProbeSettings {
            interval: Duration::from_secs(600),
            unhealthy_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            prompt: default_prompt(),
            model: None,
        },
    };

    let mut seen_names: HashMap<String, Location> = HashMap::new();
    let mut kinds = Vec::new();
    let mut pattern_ids: HashMap<String, usize> = HashMap::new();
    let mut patterns: Vec<String> = Vec::new();
    let mut owners: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut counts = Counts::default();

    if let Some(def) = file.kinds.get(MAX_KINDS) {
        p.at(
            def.name.referenced,
            format!(
                "too many kinds: {} (the limit is {MAX_KINDS})",
                file.kinds.len()
            ),
        );
    }
    for (ki, def) in file.kinds.iter().enumerate().take(MAX_KINDS) {
        let KindDef {
            name,
            description,
            status,
            openai_status,
            anthropic_status,
            unhealthy,
            retry_after,
            account_scoped,
            cooldown,
            headers,
            match_,
            templates,
        } = def;
        let fields = KindFields {
            name,
            description,
            status,
            openai_status,
            anthropic_status,
            unhealthy: *unhealthy,
            retry_after: *retry_after,
            account_scoped: *account_scoped,
            cooldown: cooldown.as_ref(),
            headers,
            templates,
        };
        kinds.push(compile_kind(p, &mut seen_names, fields, |p| match match_ {
            None => {
                p.at(
                    name.referenced,
                    format!("kind `{}` has no `match`", name.value),
                );
                Matcher::default()
            }
            Some(m) => compile_match(
                p,
                &name.value,
                m,
                ki,
                &mut counts,
                &mut pattern_ids,
                &mut patterns,
                &mut owners,
            ),
        }));
    }

    for (name, why) in BUILT_IN_KINDS {
        if !file.kinds.iter().any(|k| k.name.value == *name) {
            p.warn(Location::UNKNOWN, format!("no kind `{name}`: {why}"));
        }
    }

    let fallback = match &file.fallback {
        None => {
            p.list.push(Problem {
                line: 1,
                column: 1,
                message: "missing `fallback`: a rules file must define the kind used when nothing matches".into(),
                snippet: String::new(),
            });
            None
        }
        Some(def) => {
            let FallbackDef {
                name,
                description,
                status,
                openai_status,
                anthropic_status,
                unhealthy,
                retry_after,
                headers,
                templates,
            } = def;
            let fields = KindFields {
                name,
                description,
                status,
                openai_status,
                anthropic_status,
                unhealthy: *unhealthy,
                retry_after: *retry_after,
                account_scoped: false,
                cooldown: None,
                headers,
                templates,
            };
            Some(compile_kind(p, &mut seen_names, fields, |_| {
                Matcher::default()
            }))
        }
    };

    let markers_count = owners.iter().map(Vec::len).sum();
    let automaton = if patterns.is_empty() {
        None
    } else {
        // Patterns are ASCII-lowercased and searched in ASCII-lowercased text (same result
        // as `ascii_case_insensitive`, but lets the SIMD "packed" prefilter run). Leftmost-first
        // with pattern order = (kind, marker) order; see `classify` for how overlaps are handled.
        // A contiguous NFA: its build is linear in the patterns' total length (the default
        // picks a DFA for few patterns, whose build took seconds for one 10k-character
        // marker and did not finish for a 100k one).
        match AhoCorasickBuilder::new()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
        {
            Ok(a) => Some(MarkerIndex {
                automaton: a,
                owners,
            }),
            Err(e) => {
                p.at(
                    Location::UNKNOWN,
                    format!("markers could not be compiled: {e}"),
                );
                None
            }
        }
    };

    let aliases = compile_aliases(file.aliases.as_ref(), &file.models, p);
    let fallback = fallback?;
    Some(Rules {
        origin: String::new(),
        sha256: String::new(),
        warnings: Vec::new(),
        probe,
        models: file.models,
        aliases,
        kinds,
        fallback,
        markers: automaton,
        markers_count,
    })
}

/// Most model aliases.
pub const MAX_ALIASES: usize = 1000;

/// Checks `aliases:`: an alias is a valid model name, never a real model id (one of
/// `models`, or a `claude-…` id), unique regardless of case, and its target is no alias.
fn compile_aliases(
    def: Option<&Spanned<BTreeMap<String, String>>>,
    models: &[String],
    p: &mut Problems,
) -> Vec<(String, String)> {
    let Some(def) = def else {
        return Vec::new();
    };
    let at = def.referenced;
    if def.value.len() > MAX_ALIASES {
        p.at(at, format!("more than {MAX_ALIASES} aliases"));
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (alias, target) in &def.value {
        let lower = alias.trim().to_ascii_lowercase();
        let (alias_s, target_s) = (clip(alias, 80), clip(target, 80));
        if lower.is_empty() || alias.len() > 256 || alias.chars().any(char::is_control) {
            p.at(
                at,
                format!("alias `{alias_s}` must be 1-256 characters without controls"),
            );
        } else if models.iter().any(|m| m.eq_ignore_ascii_case(&lower))
            || lower.starts_with("claude-")
        {
            p.at(
                at,
                format!(
                    "alias `{alias_s}` shadows a real model id; an alias needs a name of its own"
                ),
            );
        } else if out.iter().any(|(a, _)| *a == lower) {
            p.at(
                at,
                format!("alias `{alias_s}` is given twice (aliases ignore case)"),
            );
        } else if target.trim().is_empty() || target.len() > 256 {
            p.at(
                at,
                format!("alias `{alias_s}`: its target must be a model name (1-256 characters)"),
            );
        } else if def
            .value
            .keys()
            .any(|a| a.eq_ignore_ascii_case(target.trim()))
        {
            p.at(
                at,
                format!("alias `{alias_s}` points to another alias (`{target_s}`); name the model"),
            );
        } else {
            out.push((lower, target.trim().to_string()));
        }
    }
    out.sort();
    out
}

/// The fields a kind and the fallback share (serde's `deny_unknown_fields` does not work
/// with `flatten`, so the two definitions cannot share a struct in the model).
struct KindFields<'a> {
    name: &'a Spanned<String>,
    description: &'a Option<String>,
    status: &'a Spanned<u16>,
    openai_status: &'a Option<Spanned<u16>>,
    anthropic_status: &'a Option<Spanned<u16>>,
    unhealthy: bool,
    retry_after: Option<u64>,
    account_scoped: bool,
    cooldown: Option<&'a Spanned<CooldownDef>>,
    headers: &'a BTreeMap<String, Spanned<String>>,
    templates: &'a Option<Spanned<TemplatesDef>>,
}

/// Checks and compiles one kind (the fallback too); `matcher` compiles its `match`,
/// reporting problems in file order (name, match, templates, statuses, headers).
fn compile_kind(
    p: &mut Problems,
    seen_names: &mut HashMap<String, Location>,
    f: KindFields<'_>,
    matcher: impl FnOnce(&mut Problems) -> Matcher,
) -> CompiledKind {
    check_name(p, f.name, seen_names);
    let matcher = matcher(p);
    let (openai, anthropic) =
        compile_templates(p, &f.name.value, f.name.referenced, f.templates.as_ref());
    CompiledKind {
        name: f.name.value.clone(),
        description: f.description.clone(),
        status: check_status(p, "status", f.status),
        openai_status: f
            .openai_status
            .as_ref()
            .map(|s| check_status(p, "openai_status", s)),
        anthropic_status: f
            .anthropic_status
            .as_ref()
            .map(|s| check_status(p, "anthropic_status", s)),
        unhealthy: f.unhealthy,
        retry_after: f.retry_after,
        account_scoped: f.account_scoped,
        cooldown: f
            .cooldown
            .and_then(|c| check_cooldown(p, &f.name.value, f.account_scoped, c)),
        headers: compile_headers(p, f.headers),
        matcher,
        openai,
        anthropic,
    }
}

/// A kind's `cooldown`: seconds in range, and only on an `account_scoped` kind (it takes
/// the account out, so the failure must be the account's).
fn check_cooldown(
    p: &mut Problems,
    kind: &str,
    account_scoped: bool,
    c: &Spanned<CooldownDef>,
) -> Option<super::Cooldown> {
    if !account_scoped {
        p.at(
            c.referenced,
            format!("kind `{kind}` has `cooldown` but is not `account_scoped: true`: a cooldown takes the failing account out, so the failure must be the account's"),
        );
        return None;
    }
    match c.value {
        CooldownDef::Keyword(CooldownKeyword::UntilReset) => Some(super::Cooldown::UntilReset),
        CooldownDef::Seconds(s) if (1..=super::COOLDOWN_MAX_SECS).contains(&s) => {
            Some(super::Cooldown::Seconds(s))
        }
        CooldownDef::Seconds(s) => {
            p.at(
                c.referenced,
                format!(
                    "kind `{kind}`: cooldown must be `until_reset` or 1-{} seconds, got {s}",
                    super::COOLDOWN_MAX_SECS
                ),
            );
            None
        }
    }
}

fn default_prompt() -> String {
    "Reply with the single word OK.".to_string()
}

fn check_name(p: &mut Problems, name: &Spanned<String>, seen: &mut HashMap<String, Location>) {
    let n = &name.value;
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        p.at(
            name.referenced,
            format!(
                "kind name `{n}` must be non-empty and use only letters, digits, `_`, `-`, `.`"
            ),
        );
    }
    if let Some(first) = seen.get(n) {
        let msg = format!(
            "duplicate kind name `{n}` (first defined at line {}:{})",
            first.line(),
            first.column()
        );
        p.at(name.referenced, msg);
    } else {
        seen.insert(n.clone(), name.referenced);
    }
}

fn check_status(p: &mut Problems, field: &str, s: &Spanned<u16>) -> u16 {
    if !(400..=599).contains(&s.value) {
        p.at(
            s.referenced,
            format!("{field} {} is outside 400-599", s.value),
        );
    }
    s.value
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

fn http_statuses(p: &mut Problems, field: &str, v: &[Spanned<u16>]) -> Vec<u16> {
    v.iter()
        .map(|s| {
            if !(100..=599).contains(&s.value) {
                p.at(
                    s.referenced,
                    format!("match.{field} {} is not an HTTP status (100-599)", s.value),
                );
            }
            s.value
        })
        .collect()
}

/// Whether `s` is an identifier as the CLI writes its codes: `^[a-z][a-z0-9_]{0,63}$`.
fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// A typed matcher's identifiers (compared exactly): anything else could never match, so
/// it is an error; a `startup_failure_reason` the tested CLIs do not report is a warning
/// (a newer CLI may add one, and a typo would never match).
fn identifiers(p: &mut Problems, field: &str, v: &[Spanned<String>]) -> Vec<String> {
    let mut out = Vec::new();
    for id in v {
        if !is_identifier(&id.value) {
            p.at(
                id.referenced,
                format!(
                    "match.{field} `{}` is not an identifier (lowercase letters, digits and `_`, starting with a letter, at most 64): the CLI reports no other",
                    clip(&id.value, 40)
                ),
            );
            continue;
        }
        if field == "startup_failure_reason"
            && !STARTUP_FAILURE_REASONS.contains(&id.value.as_str())
        {
            p.warn(
                id.referenced,
                format!(
                    "match.startup_failure_reason `{}` is not a reason the tested CLI versions report (a typo never matches; known: {})",
                    id.value,
                    STARTUP_FAILURE_REASONS.join(", ")
                ),
            );
        }
        out.push(id.value.clone());
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn compile_match(
    p: &mut Problems,
    kind: &str,
    m: &Spanned<MatchDef>,
    kind_index: usize,
    counts: &mut Counts,
    pattern_ids: &mut HashMap<String, usize>,
    patterns: &mut Vec<String>,
    owners: &mut Vec<Vec<(usize, usize)>>,
) -> Matcher {
    let d = &m.value;
    let empty = d.assistant_error.is_empty()
        && d.result_subtype.is_empty()
        && d.terminal_reason.is_empty()
        && d.api_error.is_empty()
        && d.api_error_type.is_empty()
        && d.startup_failure_reason.is_empty()
        && d.api_error_code.is_empty()
        && d.rate_limit_status.is_empty()
        && d.api_error_status.is_empty()
        && d.retry_status.is_empty()
        && d.exit_code.is_empty()
        && d.signal.is_empty()
        && d.spawn_error.is_empty()
        && d.timeout.is_empty()
        && d.condition.is_empty()
        && d.markers.is_empty()
        && d.regex.is_empty();
    if empty {
        p.at(
            m.referenced,
            format!("kind `{kind}` has an empty `match` (it could never match)"),
        );
    }
    let mut markers = Vec::new();
    for mk in &d.markers {
        let t = mk.value.trim();
        let chars = t.chars().count();
        if chars > MAX_MARKER_CHARS {
            p.at(
                mk.referenced,
                format!(
                    "marker \"{}\" is {chars} characters long; the limit is {MAX_MARKER_CHARS}",
                    clip(t, 40)
                ),
            );
            continue;
        }
        counts.markers += 1;
        if counts.markers == MAX_MARKERS + 1 {
            p.at(
                mk.referenced,
                format!(
                    "too many markers: this is marker {} of the file (the limit is {MAX_MARKERS})",
                    counts.markers
                ),
            );
        }
        if counts.markers > MAX_MARKERS {
            continue;
        }
        if t.is_empty() {
            p.at(mk.referenced, "empty marker (it would match every failure)");
            continue;
        }
        if t.chars().all(|c| c.is_ascii_digit()) {
            p.at(
                mk.referenced,
                format!(
                    "marker \"{}\" is only digits: it would match request ids and timings; use `api_error_status` or a regex with context like 'API Error: 401\\b'",
                    mk.value
                ),
            );
            continue;
        }
        if t.chars().count() < MIN_MARKER_CHARS {
            p.at(
                mk.referenced,
                format!(
                    "marker \"{}\" is shorter than {MIN_MARKER_CHARS} characters",
                    mk.value
                ),
            );
            continue;
        }
        let key = mk.value.to_ascii_lowercase();
        let id = *pattern_ids.entry(key.clone()).or_insert_with(|| {
            patterns.push(key);
            owners.push(Vec::new());
            patterns.len() - 1
        });
        if let Some(o) = owners.get_mut(id) {
            o.push((kind_index, markers.len()));
        }
        markers.push(mk.value.clone());
    }
    let mut regex = Vec::new();
    for r in &d.regex {
        let chars = r.value.chars().count();
        if chars > MAX_REGEX_CHARS {
            p.at(
                r.referenced,
                format!(
                    "regex /{}/ is {chars} characters long; the limit is {MAX_REGEX_CHARS}",
                    clip(&r.value, 40)
                ),
            );
            continue;
        }
        counts.regexes += 1;
        if counts.regexes == MAX_REGEXES + 1 {
            p.at(
                r.referenced,
                format!(
                    "too many regexes: this is regex {} of the file (the limit is {MAX_REGEXES})",
                    counts.regexes
                ),
            );
        }
        if counts.regexes > MAX_REGEXES {
            continue;
        }
        match RegexBuilder::new(&r.value)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
        {
            Ok(re) => {
                if re.is_match("") {
                    p.at(
                        r.referenced,
                        format!(
                            "regex /{}/ matches the empty string (it would match every failure)",
                            r.value
                        ),
                    );
                } else {
                    regex.push(re);
                }
            }
            Err(regex::Error::CompiledTooBig(limit)) => p.at(
                r.referenced,
                format!(
                    "regex /{}/ is too big (compiled size exceeds {limit} bytes)",
                    r.value
                ),
            ),
            Err(e) => {
                let msg = e.to_string();
                let last = msg
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or(&msg);
                let last = last.trim();
                let last = last.strip_prefix("error: ").unwrap_or(last);
                p.at(r.referenced, format!("invalid regex /{}/: {last}", r.value));
            }
        }
    }
    Matcher {
        assistant_error: lower(&d.assistant_error),
        result_subtype: lower(&d.result_subtype),
        terminal_reason: lower(&d.terminal_reason),
        api_error: lower(&d.api_error),
        api_error_type: lower(&d.api_error_type),
        startup_failure_reason: identifiers(p, "startup_failure_reason", &d.startup_failure_reason),
        api_error_code: identifiers(p, "api_error_code", &d.api_error_code),
        rate_limit_status: d.rate_limit_status.clone(),
        api_error_status: http_statuses(p, "api_error_status", &d.api_error_status),
        retry_status: http_statuses(p, "retry_status", &d.retry_status),
        exit_code: d.exit_code.clone(),
        signal: d.signal.clone(),
        spawn_error: d.spawn_error.clone(),
        timeout: d.timeout.clone(),
        condition: d.condition.clone(),
        markers,
        regex,
    }
}
