//! Redaction of the CLI's failure text before rules pass it on (pure).
//!
//! The CLI's error texts can carry the upstream's address (`check your inference gateway
//! (127.0.0.1:8787)`, a proxy URL) and secrets it echoed (an API key in an error, a bearer
//! token, `ANTHROPIC_API_KEY=…`). Verdict messages reach clients (`{{message}}`,
//! `{{error_message}}`) and the health state (`/v1/auth/status`), so [`redact`] is applied
//! where a verdict's message is made (`Rules::verdict`): every consumer gets the redacted
//! text. Each match becomes [`REDACTED`]. Regexes only (linear time in the text).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What a redacted address or secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The patterns, tried in this order (an earlier one's replacement is not matched again:
/// `[redacted]` contains nothing the later ones look for).
static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let re = |s: &str| Regex::new(s).expect("redaction patterns are valid");
    vec![
        // `NAME=value` / `NAME: value` of a secret-looking name (`ANTHROPIC_API_KEY`,
        // `x-api-key`, `CLAUDE_CODE_OAUTH_TOKEN`, `password`); the name stays.
        Pattern::KeepFirst(re(
            r#"(?i)(\b[a-z0-9_-]*(?:key|token|secret|password|passwd|credentials?)\b["']?\s*[=:]\s*)(?:"[^"]*"|'[^']*'|[^\s"',;)}\]]+)"#,
        )),
        // `Bearer <token>` / `Basic <token>`.
        Pattern::KeepFirst(re(r"(?i)(\b(?:bearer|basic)\s+)[a-z0-9._~+/=-]{8,}")),
        // Anthropic and OpenAI style keys: `sk-ant-api03-…`, `sk-proj-…`, `sk-…`.
        Pattern::Whole(re(r"\bsk-[A-Za-z0-9_-]{8,}")),
        // URLs (any scheme), with whatever host, port, path and query they carry; only
        // Anthropic's public remedy pages stay (see `remedy_url`).
        Pattern::Url(re(r#"(?i)\b[a-z][a-z0-9+.-]*://[^\s"'<>()\[\]{}]+"#)),
        // Bracketed IPv6, with an optional port: `[::1]:8787`.
        Pattern::Whole(re(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\](?::\d{1,5})?")),
        // IPv4, with an optional port.
        Pattern::Whole(re(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b")),
        // Full and compressed IPv6 (`fe80::1`, `2001:db8:0:0:0:0:0:1`); a bare `::`
        // (`std::io`) has no hex digit and stays.
        Pattern::HexDigit(re(
            r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|(?:\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*)?::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*\b)?",
        )),
        // `host:port` where host is `localhost` or a dotted name (`gateway.internal:8443`),
        // but not a source position (`cli.js:12:34`) or a Bedrock model version (`…-v1:0`).
        Pattern::HostPort(re(
            r"(?i)\b(localhost|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+):\d{2,5}\b(:\d+)?",
        )),
        // Long hex runs (key material, digests of secrets).
        Pattern::Whole(re(r"\b[0-9A-Fa-f]{32,}\b")),
        // Long base64 / base64url runs that mix upper case, lower case and digits (tokens,
        // JWT segments); paths and words rarely do.
        Pattern::Mixed(re(r"[A-Za-z0-9+/_-]{32,}={0,2}")),
    ]
});

enum Pattern {
    /// The whole match is replaced.
    Whole(Regex),
    /// A URL: replaced unless it is a public remedy page ([`remedy_url`]).
    Url(Regex),
    /// Group 1 (a name or a scheme word) stays, the rest is replaced.
    KeepFirst(Regex),
    /// `host:port` (group 1 the host, group 2 a `:column` that makes it a source position).
    HostPort(Regex),
    /// The whole match is replaced if it holds a hex digit.
    HexDigit(Regex),
    /// The whole match is replaced if it mixes upper case, lower case and digits.
    Mixed(Regex),
}

/// Hosts of Anthropic's public pages the CLI names as the fix for a failure that needs
/// a person (`accept them at https://claude.ai/settings/data-privacy-controls`).
const REMEDY_HOSTS: &[&str] = &[
    "claude.ai",
    "console.anthropic.com",
    "platform.claude.com",
    "code.claude.com",
    "docs.anthropic.com",
    "support.anthropic.com",
];

/// Whether `url` is a public remedy page: `https://` one of [`REMEDY_HOSTS`] with a plain
/// path (no port, credentials, query or fragment, which could carry a secret). Such a URL
/// is the fix the client's operator needs, and no address of this gateway's upstream.
fn remedy_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    REMEDY_HOSTS.contains(&host)
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

/// A file name of a script or source file (`cli.js`), whose `:line` is no port.
fn source_file(host: &str) -> bool {
    let ext = host.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "js" | "mjs" | "cjs" | "ts" | "tsx" | "jsx" | "py" | "rs" | "go" | "json" | "yaml" | "yml"
    )
}

fn mixed(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// `text` with upstream addresses (URLs, IPs, `host:port`) and secret-looking strings
/// (API keys, bearer tokens, `…_KEY=…` values, long hex or base64 runs) replaced by
/// [`REDACTED`]. Borrows when there is nothing to redact.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for p in PATTERNS.iter() {
        let replaced = match p {
            Pattern::Whole(re) => re.replace_all(&out, REDACTED),
            Pattern::Url(re) => re.replace_all(&out, |c: &Captures| {
                if remedy_url(&c[0]) {
                    c[0].to_string()
                } else {
                    REDACTED.to_string()
                }
            }),
            Pattern::KeepFirst(re) => {
                re.replace_all(&out, |c: &Captures| format!("{}{REDACTED}", &c[1]))
            }
            Pattern::HostPort(re) => re.replace_all(&out, |c: &Captures| {
                if c.get(2).is_some() || source_file(&c[1]) {
                    c[0].to_string()
                } else {
                    REDACTED.to_string()
                }
            }),
            Pattern::HexDigit(re) => re.replace_all(&out, |c: &Captures| {
                if c[0].bytes().any(|b| b.is_ascii_hexdigit()) {
                    REDACTED.to_string()
                } else {
                    c[0].to_string()
                }
            }),
            Pattern::Mixed(re) => re.replace_all(&out, |c: &Captures| {
                if mixed(&c[0]) {
                    REDACTED.to_string()
                } else {
                    c[0].to_string()
                }
            }),
        };
        // (A closure that kept every match still yields an owned copy: keep borrowing.)
        if let Cow::Owned(s) = replaced {
            if s != *out {
                out = Cow::Owned(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, want: &str) {
        assert_eq!(redact(input), want, "input: {input}");
    }

    #[test]
    fn upstream_addresses_are_redacted() {
        check(
            "API Error: Repeated 529 Overloaded errors. If it persists, check your inference gateway (127.0.0.1:8787).",
            "API Error: Repeated 529 Overloaded errors. If it persists, check your inference gateway ([redacted]).",
        );
        check(
            "connect ECONNREFUSED 10.0.3.7:443",
            "connect ECONNREFUSED [redacted]",
        );
        check(
            "gateway at 192.168.1.20 refused",
            "gateway at [redacted] refused",
        );
        check(
            "Unable to connect to API (https://proxy.corp.example:8443/v1/messages?beta=true)",
            "Unable to connect to API ([redacted])",
        );
        check(
            "upstream gateway.internal:8080 timed out",
            "upstream [redacted] timed out",
        );
        check(
            "localhost:8787 closed the connection",
            "[redacted] closed the connection",
        );
        check("dial [::1]:8787 failed", "dial [redacted] failed");
        check(
            "no route to fe80::1ff:fe23:4567:890a",
            "no route to [redacted]",
        );
        check(
            "host 2001:0db8:85a3:0000:0000:8a2e:0370:7334 down",
            "host [redacted] down",
        );
    }

    #[test]
    fn secrets_are_redacted() {
        check(
            "Invalid API key sk-ant-api03-AbC_dEf-123456789012345678901234567890 · Fix external API key",
            "Invalid API key [redacted] · Fix external API key",
        );
        check("bad key sk-proj-abcdEFGH1234", "bad key [redacted]");
        check(
            "env ANTHROPIC_API_KEY=sk-ant-xyz123456789 was rejected",
            "env ANTHROPIC_API_KEY=[redacted] was rejected",
        );
        check(
            "CLAUDE_CODE_OAUTH_TOKEN='abc def' unset",
            "CLAUDE_CODE_OAUTH_TOKEN=[redacted] unset",
        );
        check(
            r#"{"x-api-key": "hunter2", "password":"p4ss"}"#,
            r#"{"x-api-key": [redacted], "password":[redacted]}"#,
        );
        check(
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc",
            "Authorization: Bearer [redacted]",
        );
        check(
            "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 leaked",
            "digest [redacted] leaked",
        );
        check(
            "token dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZQ9xZ3 in text",
            "token [redacted] in text",
        );
    }

    #[test]
    fn ordinary_failure_text_is_untouched() {
        for text in [
            "Not logged in · Please run /login",
            "Invalid API key · Fix external API key",
            "API Error: 401 {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key\"}}",
            "API Error: Request rejected (429) · Number of request tokens has exceeded your per-minute rate limit",
            "There's an issue with the selected model (claude-opus-4-1@20250805). It may not exist or you may not have access to it.",
            "model us.anthropic.claude-sonnet-4-5-20250929-v1:0 is not available",
            "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for claude-sonnet-4-5",
            "No conversation found with session ID: 00000000-0000-4000-8000-000000000000",
            "You've hit your session limit · resets 1pm (Europe/Lisbon)",
            "at 2026-11-28T18:41:22.574Z, set CLAUDE_CODE_MAX_OUTPUT_TOKENS to raise it",
            "TypeError: undefined is not an object at std::io::read (/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js:12:34)",
            "request req_011CT429xyz failed after 4013ms",
        ] {
            assert_eq!(redact(text), text);
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn public_remedy_pages_stay_and_lookalikes_do_not() {
        let terms = "API Error: 400 We've updated our Consumer Terms and Privacy Policy. Please review and accept them at https://claude.ai/settings/data-privacy-controls to continue.";
        assert_eq!(redact(terms), terms);
        for input in [
            "see https://claude.ai/settings?token=abc",
            "see https://claude.ai:8443/x",
            "see http://claude.ai/x",
            "see https://user:pw@claude.ai/x",
            "see https://claude.ai.evil.example/x",
            "see https://claude.ai/x#frag",
        ] {
            let got = redact(input);
            assert!(
                got.starts_with("see [redacted]") && !got.contains("claude.ai"),
                "{input} -> {got}"
            );
        }
    }

    #[test]
    fn redaction_is_linear_on_hostile_input() {
        let big = "a1:".repeat(100_000) + &"9.".repeat(100_000) + &"k=".repeat(100_000);
        let started = std::time::Instant::now();
        let _ = redact(&big);
        // A quadratic scan of this input takes hours; 30 s is room for a loaded debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}
