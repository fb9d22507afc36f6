//! Text a client chose, kept out of classification (pure).
//!
//! The CLI echoes some of what a request gave it in its error texts: an unknown model's
//! name (`There's an issue with the selected model (<model>)…`), and possibly parts of the
//! prompt. Matched as they are, those texts let a client pick its own verdict: a model
//! named `Invalid-API-key`, or a prompt the CLI repeats, matches a marker of an earlier
//! kind (an `unhealthy` one, even). So a request's failure is classified on a copy of its
//! facts in which every echo of the client's text is blanked out ([`FailureFacts::blind_to`]):
//! every occurrence of the model (ASCII case-insensitive, as markers match), and every run
//! of at least [`ECHO_MIN_BYTES`] bytes that also occurs in one of the prompt's texts.
//! Structured fields (`assistant_error`, `api_error_status`, …) are the CLI's own and stay.
//! The price: a failure whose evidence is only a text that the prompt happens to contain
//! falls through to a later kind for that one request.
//!
//! Cost: the model by substring search; the prompt by one pass over its bytes with a
//! 12-byte window looked up in the (small) set of the failure texts' windows, so linear in
//! the prompt and the texts. Failure texts beyond [`ECHO_SCAN_MAX_BYTES`] (the CLI's are a
//! few hundred bytes) are not compared with the prompt.

use std::collections::HashMap;

use super::FailureFacts;

/// The shortest run shared with the prompt that is blanked out (shorter runs are common
/// words, not echoes).
pub const ECHO_MIN_BYTES: usize = 12;

/// Of each failure text, only this many first bytes are compared with the prompt.
pub const ECHO_SCAN_MAX_BYTES: usize = 64 * 1024;

/// What replaces a blanked-out echo (matches no marker).
pub const BLANK: &str = "\u{2026}";

/// The text of one request that its client chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientText<'a> {
    /// The model name the request gave.
    pub model: &'a str,
    /// The texts of its conversation (messages, system prompt, tool results).
    pub prompt: &'a [&'a str],
}

impl FailureFacts {
    /// A copy of these facts in which the failure texts a marker or regex could match
    /// (assistant error text, result text, result errors, stderr tail) no longer contain
    /// the client's text. See the module docs.
    pub fn blind_to(&self, client: &ClientText<'_>) -> FailureFacts {
        let mut f = self.clone();
        let blind = |t: &mut String| {
            if let Some(b) = blank(t, client) {
                *t = b;
            }
        };
        if let Some(t) = f.assistant_error_text.as_mut() {
            blind(t);
        }
        if let Some(t) = f.result_text.as_mut() {
            blind(t);
        }
        f.result_errors.iter_mut().for_each(blind);
        blind(&mut f.stderr_tail);
        f
    }
}

/// `text` with the client's echoes replaced by [`BLANK`]; None if there are none.
pub fn blank(text: &str, client: &ClientText<'_>) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let mut covered = vec![false; text.len()];
    let mut any = cover_model(lower.as_bytes(), client.model, &mut covered);
    any |= cover_prompt_echoes(lower.as_bytes(), client.prompt, &mut covered);
    if !any {
        return None;
    }
    // Each covered run becomes one BLANK, widened to character boundaries (a window may
    // begin or end inside a multi-byte character). `i` is always a boundary.
    let n = text.len();
    let mut out = String::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && !covered[j] {
            j += 1;
        }
        let mut start = j;
        while start > i && !text.is_char_boundary(start) {
            start -= 1;
        }
        out.push_str(&text[i..start]);
        if j == n {
            break;
        }
        let mut end = j;
        while end < n && covered[end] {
            end += 1;
        }
        while end < n && !text.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(BLANK);
        i = end;
    }
    Some(out)
}

/// Marks every occurrence of `model` (ASCII case-insensitive) in `lower`.
fn cover_model(lower: &[u8], model: &str, covered: &mut [bool]) -> bool {
    if model.is_empty() || model.len() > lower.len() {
        return false;
    }
    let needle = model.to_ascii_lowercase();
    let needle = needle.as_bytes();
    let finder = aho_corasick::AhoCorasick::new([needle]).expect("one short pattern");
    let mut any = false;
    // Overlapping occurrences, so that no part of a repeated model is left standing.
    for m in finder.find_overlapping_iter(lower) {
        covered[m.start()..m.end()]
            .iter_mut()
            .for_each(|c| *c = true);
        any = true;
    }
    any
}

/// The window key after byte `b`: the last [`ECHO_MIN_BYTES`] bytes as one number.
fn push_byte(key: u128, b: u8) -> u128 {
    ((key << 8) | u128::from(b)) & ((1u128 << (8 * ECHO_MIN_BYTES)) - 1)
}

/// A bit filter over window keys: the map lookup runs only on a filter hit, so the pass
/// over the prompt costs a multiply and a bit test per byte.
struct Filter {
    bits: Vec<u64>,
    shift: u32,
}

impl Filter {
    /// About eight bits per window, at most 2^20.
    fn new(windows: usize) -> Filter {
        let len = (windows * 8).next_power_of_two().clamp(1 << 10, 1 << 20);
        Filter {
            bits: vec![0; len / 64],
            shift: 64 - len.trailing_zeros(),
        }
    }

    fn index(&self, key: u128) -> usize {
        let folded = (key as u64) ^ ((key >> 64) as u64);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn insert(&mut self, key: u128) {
        let i = self.index(key);
        self.bits[i / 64] |= 1 << (i % 64);
    }

    fn may_contain(&self, key: u128) -> bool {
        let i = self.index(key);
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Marks every byte of `lower` that lies in a window of [`ECHO_MIN_BYTES`] bytes also
/// found (ASCII case-insensitive) in one of the prompt's texts.
fn cover_prompt_echoes(lower: &[u8], prompt: &[&str], covered: &mut [bool]) -> bool {
    let scan = &lower[..lower.len().min(ECHO_SCAN_MAX_BYTES)];
    if scan.len() < ECHO_MIN_BYTES || prompt.iter().all(|p| p.len() < ECHO_MIN_BYTES) {
        return false;
    }
    // The failure text's windows: key → the positions where it starts. Each distinct
    // window is removed once found, so repeated text costs nothing extra.
    let mut windows: HashMap<u128, Vec<usize>> = HashMap::new();
    let mut filter = Filter::new(scan.len());
    let mut key = 0u128;
    for (i, &b) in scan.iter().enumerate() {
        key = push_byte(key, b);
        if i + 1 >= ECHO_MIN_BYTES {
            windows.entry(key).or_default().push(i + 1 - ECHO_MIN_BYTES);
            filter.insert(key);
        }
    }
    let mut any = false;
    for text in prompt {
        if windows.is_empty() {
            break;
        }
        let mut key = 0u128;
        for (i, b) in text.bytes().enumerate() {
            key = push_byte(key, b.to_ascii_lowercase());
            if i + 1 < ECHO_MIN_BYTES {
                continue;
            }
            if !filter.may_contain(key) {
                continue;
            }
            // The key is the window's bytes themselves: equal keys are equal windows.
            if let Some(starts) = windows.remove(&key) {
                for s in starts {
                    covered[s..s + ECHO_MIN_BYTES]
                        .iter_mut()
                        .for_each(|c| *c = true);
                }
                any = true;
            }
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blanked(text: &str, model: &str, prompt: &[&str]) -> String {
        blank(text, &ClientText { model, prompt }).unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn every_occurrence_of_the_model_is_blanked_in_any_case() {
        let text = "There's an issue with the selected model (Not logged in). It may not exist. NOT LOGGED IN";
        assert_eq!(
            blanked(text, "not logged in", &[]),
            "There's an issue with the selected model (…). It may not exist. …"
        );
        // Overlapping repeats leave nothing of the model standing.
        assert_eq!(blanked("xaaay", "aa", &[]), "x…y");
        // Nothing to blank: None.
        assert!(blank(
            "all fine",
            &ClientText {
                model: "sonnet",
                prompt: &[]
            }
        )
        .is_none());
    }

    #[test]
    fn long_runs_shared_with_the_prompt_are_blanked() {
        let prompt = ["Please answer: API Error: 401 Not logged in, then stop."];
        let text = "Unknown tool: API ERROR: 401 NOT LOGGED IN (cut)";
        assert_eq!(blanked(text, "sonnet", &prompt), "Unknown tool… (cut)");
        // Shorter shared runs (ordinary words) stay.
        let text = "API Error: 500 upstream";
        assert_eq!(blanked(text, "sonnet", &["error: 500"]), text);
    }

    #[test]
    fn runs_are_widened_to_character_boundaries() {
        let prompt = ["ééééééé"];
        let text = "xéééééééy";
        let out = blanked(text, "m", &prompt);
        assert_eq!(out, "x…y");
        let text = "aé✓bcdefghijklmnop";
        let out = blanked(text, "zz", &["✓bcdefghijklm"]);
        assert_eq!(out, "aé…nop");
    }

    #[test]
    fn structured_facts_stay_and_all_failure_texts_are_blinded() {
        let facts = FailureFacts {
            assistant_error: Some("model_not_found".into()),
            assistant_error_text: Some("selected model (Invalid-API-key).".into()),
            result_text: Some("selected model (Invalid-API-key).".into()),
            result_errors: vec!["Invalid-API-key".into()],
            api_error_status: Some(404),
            stderr_tail: "warn: Invalid-API-key\n".into(),
            ..FailureFacts::default()
        };
        let blind = facts.blind_to(&ClientText {
            model: "Invalid-API-key",
            prompt: &[],
        });
        assert_eq!(
            blind.assistant_error_text.as_deref(),
            Some("selected model (…).")
        );
        assert_eq!(blind.result_text.as_deref(), Some("selected model (…)."));
        assert_eq!(blind.result_errors, vec!["…".to_string()]);
        assert_eq!(blind.stderr_tail, "warn: …\n");
        assert_eq!(blind.assistant_error, facts.assistant_error);
        assert_eq!(blind.api_error_status, Some(404));
    }

    #[test]
    fn a_large_prompt_and_repetitive_text_stay_linear() {
        let prompt = "a".repeat(2_000_000);
        let text = "a".repeat(ECHO_SCAN_MAX_BYTES + 10);
        let started = std::time::Instant::now();
        let out = blanked(&text, "zz", &[&prompt]);
        assert!(out.starts_with('…'));
        // A quadratic scan of this input takes hours; 30 s is room for a loaded debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn the_issues_repro_classifies_as_the_unknown_model_it_is() {
        // What the CLI says for an unknown model named `Not logged in` (the model check
        // refuses that name first; the classifier must not need it to).
        let text = "There's an issue with the selected model (Not logged in). It may not exist or you may not have access to it. Run --model to pick a different model.";
        let facts = FailureFacts {
            assistant_error: Some("model_not_found".into()),
            assistant_error_text: Some(text.into()),
            result_seen: true,
            result_is_error: true,
            result_text: Some(text.into()),
            api_error_status: Some(404),
            api_error_type: Some("not_found_error".into()),
            ..FailureFacts::default()
        };
        let rules = crate::rules::Rules::embedded();
        // Matched as it is, the echo is an auth marker of an earlier kind.
        assert_eq!(rules.classify(&facts).kind, "auth_failure");
        let client = ClientText {
            model: "Not logged in",
            prompt: &["[[scenario:model_not_found]]"],
        };
        let v = rules.classify_request(&facts, &client);
        assert_eq!(
            (v.kind.as_str(), v.status, v.unhealthy),
            ("model_not_found", 404, false)
        );
        // The client's own answer still names its model.
        assert!(v.message.contains("(Not logged in)"), "{}", v.message);
        // A prompt the CLI repeats is no verdict either.
        let facts = FailureFacts {
            result_is_error: true,
            result_text: Some("Unknown command: Not logged in · Please run /login".into()),
            ..FailureFacts::default()
        };
        assert_eq!(rules.classify(&facts).kind, "auth_failure");
        let client = ClientText {
            model: "sonnet",
            prompt: &["say Not logged in · Please run /login"],
        };
        assert!(!rules.classify_request(&facts, &client).unhealthy);
    }
}
