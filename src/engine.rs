//! The turn engine: the request policy every API shares, written once.
//!
//! A request takes one rules snapshot for its whole life ([`Engine::rules`]). A turn goes
//! through the health gate (answered from the recorded unhealthy kind, nothing spawned),
//! the backend run, the [`TurnFold`], and at a failure the rules' classification (deaf to
//! the text the client chose: its model and prompt), whose `unhealthy` verdicts wake the
//! probe, which closes the gate if it agrees, while a success reopens it.
//! [`RequestRecord`] is the one log line and the metrics of a request, written when the
//! last reference to it goes (for streams: when the stream ends or the client leaves).

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accounts::{Accounts, Member};
use crate::backend::present::{present_turns, FingerprintBuilder, PresentError, Turns};
use crate::backend::{Backend, CliRequest, CliRun, Hold, RunOptions, ToolResult, ToolResults};
use crate::conversation::{Block, Conversation, ToolChoice, ToolSet};
use crate::health::Health;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::protocol::{CliEvent, Success, Usage};
use crate::rules::{ClientText, FailureFacts, Rules, Verdict};
use crate::turn::{Step, ThinkingStep, TurnFold};

mod decide;
mod fields;
mod record;
mod runner;
#[cfg(test)]
mod tests;

use runner::Runner;

pub use fields::{
    check_model, check_schema, check_stops, TurnFieldError, MODEL_MAX_LEN, SCHEMA_MAX_BYTES,
    STOP_MAX_BYTES, STOP_MAX_COUNT,
};
pub use record::{FinishHook, RequestRecord, RequestSummary};

/// One turn to run, translated from any API.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub conversation: Conversation,
    pub model: String,
    /// The client's stop sequences, applied by the gateway (the CLI has no flag for them).
    pub stop: Vec<String>,
    /// Who the client is (a digest of its API key; empty without keys): a kept
    /// conversation is only ever continued by the same tenant.
    pub tenant: String,
    /// The client's tools (None: no tools offered).
    pub tools: Option<ToolSet>,
    /// Structured output (`--json-schema`), effort and thinking: flags of the CLI process.
    /// With a schema the answer is the model's structured output (see `turn`).
    pub options: RunOptions,
    /// Whether the client gets the model's thinking (streamed, and as blocks on the
    /// answer); otherwise it is dropped here.
    pub show_thinking: bool,
    /// The accounts that may serve this request (its API key's `accounts:`); None: any.
    pub accounts: Option<Vec<String>>,
}

impl TurnRequest {
    /// The field checks every API applies ([`check_model`], [`check_stops`]).
    pub fn validate(&self) -> Result<(), TurnFieldError> {
        check_model(&self.model)?;
        check_stops(&self.stop)?;
        if let Some(t) = &self.tools {
            t.validate()?;
        }
        Ok(())
    }

    /// The tool choice, if tools are offered.
    fn choice(&self) -> Option<&ToolChoice> {
        self.tools.as_ref().map(|t| &t.choice)
    }

    /// The texts of the conversation the client wrote or sent back (for [`ClientText`]).
    fn texts(&self) -> Vec<&str> {
        fn block_texts<'a>(b: &'a crate::conversation::Block, out: &mut Vec<&'a str>) {
            use crate::conversation::Block;
            match b {
                Block::Text(t) | Block::Thinking { text: t, .. } => out.push(t),
                Block::ToolResult { content, .. } => {
                    content.iter().for_each(|b| block_texts(b, out))
                }
                Block::Image(_) | Block::Document(_) | Block::ToolUse { .. } => {}
            }
        }
        let mut out: Vec<&str> = self.conversation.system.as_deref().into_iter().collect();
        for m in &self.conversation.messages {
            m.blocks.iter().for_each(|b| block_texts(b, &mut out));
        }
        out
    }
}

/// Why a turn produced no answer.
#[derive(Debug)]
pub enum TurnError {
    /// The conversation cannot be presented to the CLI (a client error).
    Present(PresentError),
    /// A field fails the checks every API applies (a client error).
    Invalid(TurnFieldError),
    /// A classified CLI failure, or the closed health gate.
    Verdict(Box<Verdict>),
}

/// The shared services a turn needs. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    rules: Arc<ArcSwap<Rules>>,
    /// The backend, behind the seam the engine's tests fake.
    backend: Arc<dyn Runner>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The accounts runs are spread over (the implicit one without `accounts`).
    accounts: Arc<Accounts>,
}

impl Engine {
    /// An engine over `accounts` (the implicit one, or the configured ones).
    pub fn new(
        rules: Arc<ArcSwap<Rules>>,
        backend: Backend,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        accounts: Arc<Accounts>,
    ) -> Engine {
        Engine::with_runner(rules, Arc::new(backend), health, metrics, accounts)
    }

    /// An engine over any [`Runner`] (the engine's tests give it a fake).
    pub(crate) fn with_runner(
        rules: Arc<ArcSwap<Rules>>,
        backend: Arc<dyn Runner>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        accounts: Arc<Accounts>,
    ) -> Engine {
        Engine {
            rules,
            backend,
            health,
            metrics,
            accounts,
        }
    }

    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// The rules snapshot a request uses from start to end.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A new request's record (its log line and metrics when it ends).
    pub fn record(&self, endpoint: &'static str, request_id: &str) -> Arc<RequestRecord> {
        Arc::new(RequestRecord::new(
            Arc::clone(&self.metrics),
            endpoint,
            request_id.to_string(),
        ))
    }

    /// The health gate: while the CLI is known unhealthy, the verdict of the recorded kind,
    /// without spawning anything. A recorded kind the current rules no longer mark
    /// `unhealthy` (a reload changed them) opens the gate and asks the probe to decide
    /// again; the gate never answers with another kind's template.
    pub async fn gate(&self, rules: &Rules) -> Result<(), Box<Verdict>> {
        self.health.await_startup_probe().await;
        let Some(h) = self.health.gate() else {
            return Ok(());
        };
        let verdict = h
            .error_kind
            .as_deref()
            .and_then(|k| rules.verdict_for_kind(k))
            .filter(|v| v.unhealthy);
        match verdict {
            Some(mut v) => {
                v.message = h.error_message.clone().unwrap_or_default();
                Err(Box::new(v))
            }
            None => {
                self.health.probe_wakeup.notify_one();
                Ok(())
            }
        }
    }

    /// Starts a turn: the gate, then the CLI run. Returns at once with the run in progress.
    /// The run keeps the request: its model and texts are what classification must not
    /// listen to.
    pub async fn start(
        &self,
        rules: Arc<Rules>,
        record: Arc<RequestRecord>,
        req: TurnRequest,
    ) -> Result<TurnRun, TurnError> {
        // The APIs check these already; checked here too, so no API can forget.
        req.validate().map_err(TurnError::Invalid)?;
        // The gate first: while it is closed, the answer is the same for every request and
        // costs nothing more (the presentation hashes and copies the conversation).
        self.gate(&rules).await.map_err(TurnError::Verdict)?;
        let tools = req.tools.clone().map(Arc::new);
        // Presenting and hashing a long conversation is CPU work: off the async workers.
        let turns = crate::offload::blocking(|| {
            present_turns(
                &req.conversation,
                &req.tenant,
                &req.model,
                tools.as_deref(),
                &req.options,
            )
        })
        .map_err(TurnError::Present)?;
        let refuse = req.choice() == Some(&ToolChoice::None);
        let keep = turns.keep.clone();
        if decide::may_continue_held(tools.is_some(), turns.resume_results) {
            // The client returns the results of calls a held run waits in: that run goes on,
            // on the account it runs on. Results the held run cannot take (other calls,
            // content MCP cannot carry) end it, and a fresh run gets the whole history.
            let held = self
                .backend
                .continue_held(&turns.history_fingerprint, &mut |calls| {
                    Some(ToolResults {
                        results: decide::held_results(&req.conversation, calls)?,
                        keep: Some(keep.clone()),
                        refuse_calls: refuse,
                    })
                });
            if let Some(run) = held {
                let account = self.accounts.member_of(run.account_name());
                record.set_account(account.name());
                record.set_round("held");
                return Ok(TurnRun {
                    engine: self.clone(),
                    rules,
                    record,
                    run: Some(run),
                    fold: fold_for(TurnFold::continuation(req.stop.clone()), &req),
                    ready: VecDeque::new(),
                    fallback: false,
                    keep: Some(keep),
                    req,
                    account,
                    failover: false,
                });
            }
        }
        // A held run of this conversation whose results this request does not carry (text
        // observations, an edited history, a retry) is not coming back: end it now rather
        // than at `tool_hold_timeout`.
        self.backend
            .end_held_asked(&turns.asked.iter().copied().collect());
        // The account: the conversation's own while it can serve, else the next in turn.
        let sticky = (!turns.history.is_empty()).then_some(&turns.history_fingerprint);
        if let Some(fp) = sticky {
            // Answered on another replica: its account, from the shared state store.
            self.accounts.recall(fp).await;
        }
        let account = self
            .accounts
            .select_among(&req.model, sticky, None, req.accounts.as_deref())
            .map_err(|why| {
                let v = self.accounts.unavailable_verdict(&rules, &why, &req.model);
                TurnError::Verdict(Box::new(v))
            })?;
        record.set_account(account.name());
        // Earlier turns go to a fresh CLI as a synthesized session; should the CLI refuse
        // it, the transcript of the same conversation answers instead.
        let fallback = !turns.history.is_empty();
        record.set_round("fresh");
        let cli = fresh_request(&req, turns, tools, &account);
        Ok(TurnRun {
            engine: self.clone(),
            rules,
            record,
            run: Some(self.backend.start(cli)),
            fold: fold_for(TurnFold::new(req.stop.clone()), &req),
            ready: VecDeque::new(),
            fallback,
            keep: Some(keep),
            req,
            account,
            failover: true,
        })
    }

    /// Classifies a request's failure facts with `rules` (deaf to what `req`'s client
    /// chose: see `rules::client_text`) and updates health and metrics.
    fn classify(
        &self,
        rules: &Rules,
        record: &RequestRecord,
        req: &TurnRequest,
        facts: &FailureFacts,
        account: &Member,
    ) -> Verdict {
        record.record_exit(facts);
        let verdict = classify_blind(rules, req, facts);
        tracing::debug!(request_id = record.request_id.as_str(), kind = %verdict.kind,
            matched = ?verdict.matched, stderr_tail = %facts.stderr_tail, "CLI failure classified");
        self.count_run(&verdict.kind, account);
        // `unhealthy`: only a suspicion: this request is answered with its kind, but the
        // account (the gate, for the implicit one) closes only when the probe (the
        // operator's prompt and model) agrees. `cooldown`: the account is out until then.
        self.accounts.failed(account, &verdict);
        verdict
    }

    fn succeeded(&self, account: &Member) {
        self.count_run("success", account);
        // A real request just worked: recovery need not wait for the next probe.
        self.accounts.succeeded(account);
    }

    fn count_run(&self, outcome: &str, account: &Member) {
        self.metrics
            .cli_runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.metrics.count_account_run(account.name(), outcome);
    }
}

/// The fresh run of `req`, presented as `turns`, on `account`, with the client's tools.
fn fresh_request(
    req: &TurnRequest,
    turns: Turns,
    tools: Option<Arc<ToolSet>>,
    account: &Member,
) -> CliRequest {
    let resume = turns.resume_results;
    let mut cli = CliRequest::for_turns(turns, &req.model, &req.options);
    if let Some(note) = req.tools.as_ref().and_then(choice_note).filter(|_| !resume) {
        // The CLI has no tool_choice: the model is asked in the turn itself (and the
        // answer checked, see `TurnRun::conclude`).
        cli.prompt.push_str("\n\n");
        cli.prompt.push_str(&note);
    }
    with_tools(&mut cli, req, tools);
    cli.account = account.backend_account();
    cli.tenant = req.tenant.clone();
    cli
}

/// Offers `req`'s tools (`tools`, shared) to the run of `cli`, refusing every call under
/// `tool_choice: none`.
fn with_tools(cli: &mut CliRequest, req: &TurnRequest, tools: Option<Arc<ToolSet>>) {
    cli.tools = tools;
    cli.refuse_calls = req.choice() == Some(&ToolChoice::None);
}

/// The fold for `req`'s tool settings.
fn tool_fold(fold: TurnFold, req: &TurnRequest) -> TurnFold {
    match &req.tools {
        Some(t) if t.choice == ToolChoice::None => fold.without_calls(),
        Some(t) if !t.parallel => fold.single_call(),
        _ => fold,
    }
}

/// The instruction that asks the model for what `tool_choice` demands (None for `auto`).
fn choice_note(tools: &ToolSet) -> Option<String> {
    let one = if tools.parallel {
        ""
    } else {
        " Call at most one tool in this answer."
    };
    let note = match &tools.choice {
        ToolChoice::Auto if tools.parallel => return None,
        ToolChoice::Auto => one.trim_start().to_string(),
        ToolChoice::None => "Do not call any tool in this answer; answer in text.".to_string(),
        ToolChoice::Required => {
            format!("You must call at least one of the tools in this answer.{one}")
        }
        ToolChoice::Named(n) => format!("You must call the tool `{n}` in this answer.{one}"),
    };
    Some(format!("<system-reminder>{note}</system-reminder>"))
}

/// `req`'s failure classified deaf to what its client chose (see `rules::client_text`).
fn classify_blind(rules: &Rules, req: &TurnRequest, facts: &FailureFacts) -> Verdict {
    let texts = req.texts();
    let client = ClientText {
        model: &req.model,
        prompt: &texts,
    };
    rules.classify_request(facts, &client)
}

/// The fold of a request's run (`fold`: a fresh one or a held run's continuation) with its
/// tool settings and structured output or not.
fn fold_for(fold: TurnFold, req: &TurnRequest) -> TurnFold {
    tool_fold(fold, req).structured(req.options.json_schema.is_some())
}

/// What a turn in progress yields.
#[derive(Debug)]
pub enum TurnStep {
    Text(String),
    /// A tool call began: its index among the answer's calls, id and name.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of the arguments of the call at `index`.
    ToolArgs {
        index: usize,
        fragment: String,
    },
    /// The model's thinking (only for requests that show it).
    Thinking(ThinkingStep),
    /// One of the CLI's web searches or fetches completed.
    Web(Box<crate::protocol::WebCall>),
    Finish(Box<Success>),
    /// The run failed (classified); nothing follows.
    Fail(Box<Verdict>),
}

/// A turn in progress: the CLI run folded into steps. Dropping it ends the run.
pub struct TurnRun {
    engine: Engine,
    rules: Arc<Rules>,
    record: Arc<RequestRecord>,
    run: Option<CliRun>,
    fold: TurnFold,
    ready: VecDeque<Step>,
    /// The request (its model and texts are what classification must not listen to).
    req: TurnRequest,
    /// While true, a session the CLI refuses may still fall back to the transcript.
    fallback: bool,
    /// The conversation up to the request's last message; with the answer, the key the
    /// account is remembered under for the conversation's next request (and an answer with
    /// tool calls holds the run under it). None for a transcript run, which is not kept.
    keep: Option<FingerprintBuilder>,
    /// The account the run is on (held and kept processes belong to it).
    account: Arc<Member>,
    /// While true, an account-scoped failure before the first byte may still be retried
    /// on another account (once).
    failover: bool,
}

impl TurnRun {
    /// The next step, or None after the last one.
    pub async fn next(&mut self) -> Option<TurnStep> {
        loop {
            if let Some(step) = self.ready.pop_front() {
                return Some(self.conclude(step));
            }
            if self.fold.ended().is_some() {
                return None;
            }
            self.pull().await;
        }
    }

    /// Waits until the answer's first text (or its end) is ready, so that a failure known
    /// before the first byte keeps its real status.
    pub async fn first_content(&mut self) -> Result<(), Box<Verdict>> {
        while self.ready.is_empty() && self.fold.ended().is_none() {
            self.pull().await;
        }
        if let Some(Step::Fail(_)) = self.ready.front() {
            if let Some(TurnStep::Fail(v)) = self.next().await {
                return Err(v);
            }
        }
        Ok(())
    }

    /// Folds the run's next event (or its loss) into the ready steps. A stop sequence ends
    /// the run (the rest of it is not wanted); a session the CLI refused restarts it as a
    /// transcript.
    async fn pull(&mut self) {
        let steps = match self.run.as_mut() {
            Some(run) => match run.recv().await {
                Some(event) => {
                    if let CliEvent::Done(Err(facts)) = &event {
                        self.record.record_exit(facts);
                    }
                    self.fold.push(event)
                }
                None => self.fold.lost(),
            },
            None => self.fold.lost(),
        };
        if steps
            .first()
            .is_some_and(|s| self.fall_back(s) || self.fail_over(s))
        {
            return;
        }
        let show_thinking = self.req.show_thinking;
        self.ready.extend(
            steps
                .into_iter()
                .filter(|s| show_thinking || !matches!(s, Step::Thinking(_))),
        );
        if self.fold.wants_stop() {
            if let Some(run) = self.run.take() {
                run.stop();
            }
        }
    }

    /// Runs to the end (non-streaming): the complete answer or the failure.
    pub async fn complete(mut self) -> Result<Success, Box<Verdict>> {
        while let Some(step) = self.next().await {
            match step {
                TurnStep::Text(_)
                | TurnStep::Web(_)
                | TurnStep::Thinking(_)
                | TurnStep::ToolStart { .. }
                | TurnStep::ToolArgs { .. } => {}
                TurnStep::Finish(s) => return Ok(*s),
                TurnStep::Fail(v) => return Err(v),
            }
        }
        // The fold always ends with a finish or a failure; be defensive anyway.
        let facts = FailureFacts {
            condition: Some(crate::rules::GatewayCondition::NoResult),
            ..FailureFacts::default()
        };
        Err(Box::new(self.engine.classify(
            &self.rules,
            &self.record,
            &self.req,
            &facts,
            &self.account,
        )))
    }

    /// The account the run is on (held tool-call runs belong to it, like kept ones).
    pub fn account(&self) -> &Arc<Member> {
        &self.account
    }

    /// A failure of an `account_scoped` kind before any answer text: the failure counts
    /// for this account (suspicion, cooldown), and the same turn starts again on another
    /// account that can serve, once. After the first byte never (nothing is repeated).
    fn fail_over(&mut self, step: &Step) -> bool {
        let Step::Fail(facts) = step else {
            return false;
        };
        if !self.failover || self.fold.released_any() {
            return false;
        }
        let verdict = classify_blind(&self.rules, &self.req, facts);
        if !decide::fails_over(self.failover, self.fold.released_any(), &verdict) {
            return false;
        }
        let Ok(next) = self.engine.accounts.select_among(
            &self.req.model,
            None,
            Some(&self.account),
            self.req.accounts.as_deref(),
        ) else {
            return false;
        };
        let tools = self.req.tools.clone().map(Arc::new);
        let Ok(turns) = present_turns(
            &self.req.conversation,
            &self.req.tenant,
            &self.req.model,
            tools.as_deref(),
            &self.req.options,
        ) else {
            return false;
        };
        self.failover = false;
        // The failed run counts, and its verdict applies to its account.
        self.engine
            .classify(&self.rules, &self.record, &self.req, facts, &self.account);
        tracing::warn!(request_id = %self.record.request_id, kind = %verdict.kind,
            from = self.account.name(), to = next.name(),
            "account-scoped failure before the first byte; retrying on another account");
        self.engine.metrics.count_failover(self.account.name());
        self.keep = Some(turns.keep.clone());
        let cli = fresh_request(&self.req, turns, tools, &next);
        self.record.set_account(next.name());
        self.account = next;
        self.run = Some(self.engine.backend.start(cli));
        self.fold = fold_for(TurnFold::new(self.req.stop.clone()), &self.req);
        self.ready.clear();
        true
    }

    /// The prompt's usage from the run's first upstream `message_start`.
    pub fn prompt_usage(&self) -> Option<&Usage> {
        self.fold.prompt_usage()
    }

    pub fn record(&self) -> &Arc<RequestRecord> {
        &self.record
    }

    /// A failure before any answer text of a run that resumed a synthesized session, which
    /// the CLI refused: the same conversation as a transcript, in a new run.
    fn fall_back(&mut self, step: &Step) -> bool {
        let Step::Fail(facts) = step else {
            return false;
        };
        let armed = std::mem::take(&mut self.fallback);
        if !armed || self.fold.released_any() {
            return false;
        }
        // The CLI names the session ccgate wrote; blinding client text here could hide
        // that (a prompt containing "conversation"), and the worst a client's own text can
        // do is cost its own request one more run.
        if !decide::falls_back(armed, self.fold.released_any(), &self.rules.classify(facts)) {
            return false;
        }
        let Ok(mut cli) = CliRequest::for_conversation(
            &self.req.conversation,
            &self.req.model,
            &self.req.options,
        ) else {
            return false;
        };
        with_tools(&mut cli, &self.req, self.req.tools.clone().map(Arc::new));
        cli.account = self.account.backend_account();
        cli.tenant = self.req.tenant.clone();
        // A transcript run is not kept: no conversation key to hold, keep or remember.
        self.keep = None;
        tracing::warn!(request_id = %self.record.request_id,
            "the CLI did not resume the conversation as a session; answering from a transcript");
        self.engine.metrics.conversation_fallbacks.inc();
        self.run = Some(self.engine.backend.start(cli));
        self.fold = fold_for(TurnFold::new(self.req.stop.clone()), &self.req);
        self.ready.clear();
        true
    }

    fn conclude(&mut self, step: Step) -> TurnStep {
        match step {
            Step::Text(t) => TurnStep::Text(t),
            Step::ToolStart { index, id, name } => TurnStep::ToolStart { index, id, name },
            Step::ToolArgs { index, fragment } => TurnStep::ToolArgs { index, fragment },
            Step::Thinking(t) => TurnStep::Thinking(t),
            Step::Web(c) => TurnStep::Web(c),
            Step::Finish(mut s) => {
                if !self.req.show_thinking {
                    s.thinking.clear();
                }
                for call in &s.web {
                    let n = match call.kind {
                        crate::protocol::WebKind::Search => call.searches,
                        crate::protocol::WebKind::Fetch => u64::from(call.error.is_none()),
                    };
                    self.engine.metrics.count_web_calls(call.kind.label(), n);
                }
                let run = self.run.take();
                if !decide::choice_met(self.req.choice(), &s) {
                    drop(run);
                    let facts = FailureFacts {
                        condition: Some(crate::rules::GatewayCondition::ToolChoiceUnmet),
                        ..FailureFacts::default()
                    };
                    return TurnStep::Fail(Box::new(self.engine.classify(
                        &self.rules,
                        &self.record,
                        &self.req,
                        &facts,
                        &self.account,
                    )));
                }
                let keep = self.keep.take();
                if let (Some(run), Some(keep)) = (run, keep.as_ref()) {
                    if !s.tool_calls.is_empty() {
                        // Calls beyond what the client allowed get an error result.
                        let refused: Vec<ToolResult> = self
                            .fold
                            .suppressed()
                            .iter()
                            .map(|id| ToolResult {
                                tool_use_id: id.clone(),
                                content: vec![Block::Text(
                                    "Not run: one tool call per answer is allowed here.".into(),
                                )],
                                is_error: true,
                            })
                            .collect();
                        if !refused.is_empty() {
                            run.send_results(ToolResults {
                                results: refused,
                                keep: None,
                                refuse_calls: false,
                            });
                        }
                        // The CLI waits inside the calls: hold it for the client's results.
                        let key = keep.after_calls(&s.text, &s.tool_calls);
                        self.engine.backend.hold(Hold {
                            key,
                            asked: keep.current(),
                            tenant: self.req.tenant.clone(),
                            run,
                            calls: s.tool_calls.iter().map(|c| c.id.clone()).collect(),
                        });
                        // The continuation stays on this account.
                        self.engine.accounts.remember(key, &self.account);
                    }
                }
                self.engine.succeeded(&self.account);
                self.engine
                    .accounts
                    .observe_windows(&self.account, s.plan_windows.as_ref());
                if let Some(key) = keep.filter(|_| s.tool_calls.is_empty()) {
                    let answered = key.after_answer(&s.text);
                    self.engine.accounts.remember(answered, &self.account);
                }
                TurnStep::Finish(s)
            }
            Step::Fail(facts) => {
                self.run = None;
                TurnStep::Fail(Box::new(self.engine.classify(
                    &self.rules,
                    &self.record,
                    &self.req,
                    &facts,
                    &self.account,
                )))
            }
        }
    }
}
