//! Classification (facts → [`Verdict`]) and rendering (verdict → body / headers).
//!
//! Order: kinds in file order, first match wins; within a kind the structured matchers
//! are checked first (spawn_error, timeout, condition, startup_failure_reason,
//! assistant_error, api_error_code, api_error_status, api_error_type, api_error,
//! result_subtype, terminal_reason, retry_status, rate_limit_status, exit_code, signal),
//! then markers, then regexes, so `Verdict::matched` names the strongest evidence.
//! All markers of all kinds live in ONE Aho-Corasick automaton, searched once per text in a
//! way that never lets an overlapping marker of a later kind hide an early kind's marker
//! (see `best_marker`).

use serde_json::Value;

use super::load::{CompiledKind, Matcher};
use super::redact::redact;
use super::template::{PValue, Placeholder};
use super::{ClientText, FailureFacts, Flavour, Rules, TemplateValues, Verdict};

fn any_ci(list: &[String], v: Option<&str>) -> Option<String> {
    let v = v?;
    list.iter().find(|x| x.eq_ignore_ascii_case(v)).cloned()
}

/// Typed identifiers (`startup_failure_reason`, `api_error_code`) compare exactly.
fn exact(list: &[String], v: Option<&str>) -> Option<String> {
    let v = v?;
    list.iter().find(|x| x.as_str() == v).cloned()
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// Structured evidence of one kind, strongest first.
fn structured(m: &Matcher, f: &FailureFacts) -> Option<String> {
    if let Some(s) = f.spawn_error.filter(|s| m.spawn_error.contains(s)) {
        return Some(format!("spawn_error={}", enum_name(&s)));
    }
    if let Some(t) = f.timeout.filter(|t| m.timeout.contains(t)) {
        return Some(format!("timeout={}", enum_name(&t)));
    }
    if let Some(c) = f.condition.filter(|c| m.condition.contains(c)) {
        return Some(format!("condition={}", enum_name(&c)));
    }
    if let Some(v) = exact(
        &m.startup_failure_reason,
        f.startup_failure_reason.as_deref(),
    ) {
        return Some(format!("startup_failure_reason={v}"));
    }
    if let Some(v) = any_ci(&m.assistant_error, f.assistant_error.as_deref()) {
        return Some(format!("assistant_error={v}"));
    }
    if let Some(v) = exact(&m.api_error_code, f.api_error_code.as_deref()) {
        return Some(format!("api_error_code={v}"));
    }
    if let Some(s) = f
        .api_error_status
        .filter(|s| m.api_error_status.contains(s))
    {
        return Some(format!("api_error_status={s}"));
    }
    if let Some(v) = any_ci(&m.api_error_type, f.api_error_type.as_deref()) {
        return Some(format!("api_error_type={v}"));
    }
    if let Some(v) = any_ci(&m.api_error, f.api_error.as_deref()) {
        return Some(format!("api_error={v}"));
    }
    if let Some(v) = any_ci(&m.result_subtype, f.result_subtype.as_deref()) {
        return Some(format!("result_subtype={v}"));
    }
    if let Some(v) = any_ci(&m.terminal_reason, f.terminal_reason.as_deref()) {
        return Some(format!("terminal_reason={v}"));
    }
    if let Some(s) = f.retry_statuses.iter().find(|s| m.retry_status.contains(s)) {
        return Some(format!("retry_status={s}"));
    }
    if let Some(s) = m
        .rate_limit_status
        .iter()
        .find(|s| f.rate_limit_status.as_deref() == Some(s.as_str()))
    {
        return Some(format!("rate_limit_status={}", s.as_str()));
    }
    if let Some(c) = f.exit_code.filter(|c| m.exit_code.contains(c)) {
        return Some(format!("exit_code={c}"));
    }
    if let Some(s) = f.signal.filter(|s| m.signal.contains(s)) {
        return Some(format!("signal={s}"));
    }
    None
}

impl Rules {
    /// Classifies one failure. Never fails: the fallback catches everything.
    pub fn classify(&self, facts: &FailureFacts) -> Verdict {
        let texts: Vec<&str> = facts.texts().collect();
        // The first kind with structured evidence bounds the work: markers of later kinds
        // cannot win.
        let first_structured = self
            .kinds
            .iter()
            .position(|k| structured(&k.matcher, facts).is_some());
        let bound = first_structured.unwrap_or(self.kinds.len());
        let best_marker = if bound == 0 {
            None
        } else {
            self.best_marker(&texts, bound)
        };
        for (i, kind) in self.kinds.iter().enumerate() {
            let m = &kind.matcher;
            let matched = structured(m, facts)
                .or_else(|| {
                    best_marker
                        .filter(|(k, _)| *k == i)
                        .and_then(|(_, mi)| m.markers.get(mi))
                        .map(|mk| format!("marker={mk:?}"))
                })
                .or_else(|| {
                    m.regex
                        .iter()
                        .find(|re| texts.iter().any(|t| re.is_match(t)))
                        .map(|re| format!("regex=/{}/", re.as_str()))
                });
            if let Some(matched) = matched {
                return self.verdict(kind, Some(matched), facts);
            }
        }
        self.verdict(&self.fallback, None, facts)
    }

    /// Classifies a request's failure without the text its client chose: the kind is
    /// decided on the facts with every echo of the request's model and prompt blanked out
    /// ([`FailureFacts::blind_to`]), so no client can name its model or word its prompt
    /// into a verdict; the message is the run's own (redacted), for this client's answer.
    pub fn classify_request(&self, facts: &FailureFacts, client: &ClientText<'_>) -> Verdict {
        let mut verdict = self.classify(&facts.blind_to(client));
        verdict.message = redact(&facts.summary()).into_owned();
        verdict.stderr_tail = redact(&facts.stderr_tail).into_owned();
        verdict
    }

    /// The lowest (kind, marker) pair with a marker occurrence in any text, considering
    /// kinds before `bound` only.
    ///
    /// The automaton is leftmost-first with patterns in (kind, marker) order, so at any
    /// start position it reports the highest-priority pattern starting there. Restarting
    /// one byte after each match start (instead of after its end) therefore visits every
    /// start position that has an occurrence: an early kind's marker overlapped by a later
    /// kind's marker is never skipped, and the minimum over the reports is the minimum over
    /// all occurrences.
    fn best_marker(&self, texts: &[&str], bound: usize) -> Option<(usize, usize)> {
        let index = self.markers.as_ref()?;
        let mut best: Option<(usize, usize)> = None;
        let mut lowered = Vec::new();
        for text in texts {
            lowered.clear();
            lowered.extend(text.bytes().map(|b| b.to_ascii_lowercase()));
            let mut at = 0;
            while at < lowered.len() {
                let input = aho_corasick::Input::new(&lowered).span(at..lowered.len());
                let Some(m) = index.automaton.find(input) else {
                    break;
                };
                let owner = index
                    .owners
                    .get(m.pattern().as_usize())
                    .and_then(|o| o.first())
                    .copied();
                if let Some(owner) = owner.filter(|(k, _)| *k < bound) {
                    if best.is_none_or(|b| owner < b) {
                        best = Some(owner);
                    }
                }
                if best.is_some_and(|(k, _)| k == 0) {
                    return best;
                }
                at = m.start() + 1;
            }
        }
        best
    }

    fn verdict(&self, k: &CompiledKind, matched: Option<String>, facts: &FailureFacts) -> Verdict {
        Verdict {
            kind: k.name.clone(),
            status: k.status,
            unhealthy: k.unhealthy,
            matched,
            // Redacted once here, so bodies, logs and the health state all get the same.
            message: redact(&facts.summary()).into_owned(),
            retry_after: k.retry_after,
            resets_at: facts
                .rate_limit_resets_at
                .filter(|_| k.retry_after.is_some() || k.cooldown.is_some()),
            stderr_tail: redact(&facts.stderr_tail).into_owned(),
            account_scoped: k.account_scoped,
            cooldown: k.cooldown,
        }
    }

    fn lookup<'a>(
        &'a self,
        v: &'a Verdict,
        status: u16,
        values: &'a TemplateValues,
    ) -> impl Fn(Placeholder) -> PValue + 'a {
        let opt = |o: &Option<String>| o.clone().map_or(PValue::Null, PValue::Text);
        move |p| match p {
            Placeholder::Kind => PValue::Text(v.kind.clone()),
            Placeholder::Status => PValue::Number(u64::from(status)),
            Placeholder::RequestId => PValue::Text(values.request_id.clone()),
            Placeholder::Model => opt(&values.model),
            Placeholder::Marker => opt(&v.matched),
            Placeholder::Message => PValue::Text(v.message.clone()),
            Placeholder::RetryAfter => {
                let until_reset = v
                    .resets_at
                    .zip(values.now_unix)
                    .and_then(|(reset, now)| reset.checked_sub(now))
                    .filter(|&s| s > 0);
                until_reset
                    .or(v.retry_after)
                    .map_or(PValue::Null, PValue::Number)
            }
            Placeholder::LastProbedAt => opt(&values.last_probed_at),
            Placeholder::ErrorKind => {
                PValue::Text(values.error_kind.clone().unwrap_or_else(|| v.kind.clone()))
            }
            Placeholder::ErrorMessage => PValue::Text(
                values
                    .error_message
                    .clone()
                    .unwrap_or_else(|| v.message.clone()),
            ),
            Placeholder::StderrTail => PValue::Text(v.stderr_tail.trim_end().to_string()),
        }
    }

    /// Renders the verdict's body for `flavour`. A verdict whose kind no longer exists in
    /// these rules is rendered with the fallback's template.
    pub fn render_body(
        &self,
        verdict: &Verdict,
        flavour: Flavour,
        values: &TemplateValues,
    ) -> Value {
        let k = self.kind(&verdict.kind).unwrap_or(&self.fallback);
        let status = self.status_for(verdict, flavour);
        let lookup = self.lookup(verdict, status, values);
        match flavour {
            Flavour::Openai => k.openai.render(&lookup),
            Flavour::Anthropic => k.anthropic.render(&lookup),
        }
    }

    /// Renders the kind's headers (lowercase names). Control characters in values are
    /// replaced by spaces; headers that render empty are omitted. `{{status}}` here is
    /// `Verdict::status`.
    pub fn render_headers(
        &self,
        verdict: &Verdict,
        values: &TemplateValues,
    ) -> Vec<(String, String)> {
        let k = self.kind(&verdict.kind).unwrap_or(&self.fallback);
        let lookup = self.lookup(verdict, verdict.status, values);
        k.headers
            .iter()
            .filter_map(|(name, t)| {
                let v: String = t
                    .render_string(&lookup)
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let v = v.trim().to_string();
                (!v.is_empty()).then(|| (name.clone(), v))
            })
            .collect()
    }
}
