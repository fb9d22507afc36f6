//! The engine's decisions through a fake [`Runner`]: no process, the runs are scripted
//! events. Each test checks what the engine asked of the backend (which runs it started,
//! held, continued or ended, on which account) for one decision: fresh, kept, held,
//! fallback, failover.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::json;

use super::runner::Runner;
use super::{Engine, TurnRequest};
use crate::accounts::Accounts;
use crate::backend::present::Fingerprint;
use crate::backend::{Backend, CliRequest, CliRun, Hold, RunOptions, ToolResults};
use crate::config::AccountSettings;
use crate::conversation::ToolSpec;
use crate::conversation::{Block, Conversation, Message, Role, ToolCall, ToolChoice, ToolSet};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::protocol::{CliEvent, Success};
use crate::rules::{FailureFacts, Rules, EMBEDDED_RULES};

/// A backend that records what the engine asks and answers with scripted runs.
#[derive(Default)]
struct Fake {
    /// The events of the next runs started or continued, in order.
    script: Mutex<VecDeque<Vec<CliEvent>>>,
    /// Every run started.
    started: Mutex<Vec<CliRequest>>,
    /// The runs held, with their keys.
    held: Mutex<Vec<Hold>>,
    /// The tool-use ids of the results each continuation carried.
    continued: Mutex<Vec<Vec<String>>>,
    /// Held runs ended because their conversation went on without their results.
    abandoned: Mutex<usize>,
}

impl Fake {
    fn script(&self, events: Vec<CliEvent>) {
        self.script.lock().unwrap().push_back(events);
    }

    fn next_run(&self, account: Option<Arc<crate::backend::Account>>) -> CliRun {
        let events = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted run");
        CliRun::scripted(events, account).0
    }

    fn started(&self) -> Vec<CliRequest> {
        self.started.lock().unwrap().clone()
    }
}

impl Runner for Fake {
    fn start(&self, req: CliRequest) -> CliRun {
        let run = self.next_run(req.account.clone());
        self.started.lock().unwrap().push(req);
        run
    }

    fn hold(&self, held: Hold) {
        self.held.lock().unwrap().push(held);
    }

    fn continue_held(
        &self,
        key: &Fingerprint,
        accept: &mut dyn FnMut(&[String]) -> Option<ToolResults>,
    ) -> Option<CliRun> {
        let mut held = self.held.lock().unwrap();
        let i = held.iter().position(|h| h.key == *key)?;
        let h = held.remove(i);
        let results = accept(&h.calls)?;
        self.continued.lock().unwrap().push(
            results
                .results
                .iter()
                .map(|r| r.tool_use_id.clone())
                .collect(),
        );
        Some(self.next_run(None))
    }

    fn end_held_asked(&self, asked: &HashSet<Fingerprint>) -> usize {
        let mut held = self.held.lock().unwrap();
        let before = held.len();
        held.retain(|h| !asked.contains(&h.asked));
        let n = before - held.len();
        *self.abandoned.lock().unwrap() += n;
        n
    }
}

/// An engine over `fake`, on the implicit account or on accounts `names`.
fn engine(fake: &Arc<Fake>, names: &[&str]) -> Engine {
    let rules = Arc::new(ArcSwap::from_pointee(
        Rules::from_yaml(EMBEDDED_RULES, "built-in").expect("the built-in rules load"),
    ));
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    // The probers are never woken here; their backend spawns nothing unless they are.
    let settings = crate::config::Config::default()
        .compile()
        .expect("the defaults compile")
        .cli_settings(std::env::temp_dir());
    let backend = Backend::new(settings);
    let accounts = if names.is_empty() {
        let prober = Arc::new(Prober::new(
            rules.clone(),
            backend.clone(),
            health.clone(),
            metrics.clone(),
        ));
        Accounts::implicit(health.clone(), prober, metrics.clone())
    } else {
        let list: Vec<AccountSettings> = names
            .iter()
            .map(|n| AccountSettings {
                name: n.to_string(),
                env: Vec::new(),
                models: None,
                weight: 1,
                extra_usage: Default::default(),
            })
            .collect();
        Accounts::from_settings(
            &list,
            rules.clone(),
            &backend,
            health.clone(),
            metrics.clone(),
        )
    };
    let runner: Arc<dyn Runner> = fake.clone();
    Engine::with_runner(rules, runner, health, metrics, accounts)
}

fn tools() -> ToolSet {
    ToolSet {
        tools: vec![ToolSpec {
            name: "lookup".into(),
            description: None,
            input_schema: crate::conversation::RawJson::parse(r#"{"type":"object"}"#).unwrap(),
        }],
        choice: ToolChoice::Auto,
        parallel: true,
    }
}

fn request(messages: Vec<Message>, tools: Option<ToolSet>) -> TurnRequest {
    TurnRequest {
        conversation: Conversation {
            system: None,
            messages,
        },
        model: "sonnet".into(),
        stop: Vec::new(),
        tenant: "tenant-a".into(),
        tools,
        options: RunOptions::default(),
        show_thinking: false,
        accounts: None,
    }
}

fn answer(text: &str, calls: &[&str]) -> Vec<CliEvent> {
    vec![
        CliEvent::TextDelta(text.into()),
        CliEvent::Done(Ok(Success {
            text: text.into(),
            stop_reason: Some(
                if calls.is_empty() {
                    "end_turn"
                } else {
                    "tool_use"
                }
                .into(),
            ),
            tool_calls: calls
                .iter()
                .map(|id| ToolCall {
                    id: id.to_string(),
                    name: "lookup".into(),
                    input: json!({}),
                })
                .collect(),
            ..Success::default()
        })),
    ]
}

fn failure(facts: FailureFacts) -> Vec<CliEvent> {
    vec![CliEvent::Done(Err(Box::new(facts)))]
}

async fn run(engine: &Engine, req: TurnRequest) -> Result<Success, String> {
    let record = engine.record("test", "req-1");
    let turn = engine
        .start(engine.rules(), record, req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    turn.complete().await.map_err(|v| v.kind.clone())
}

#[tokio::test]
async fn a_first_turn_runs_fresh_with_nothing_to_continue() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    fake.script(answer("hello", &[]));
    let got = run(
        &engine,
        request(vec![Message::text(Role::User, "hi")], None),
    )
    .await;
    assert_eq!(got.unwrap().text, "hello");
    let started = fake.started();
    assert_eq!(started.len(), 1);
    assert!(started[0].continue_from.is_none() && started[0].history.is_empty());
}

#[tokio::test]
async fn a_next_turn_asks_for_the_kept_process_of_its_conversation() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    fake.script(answer("one", &[]));
    fake.script(answer("two", &[]));
    let first = vec![Message::text(Role::User, "hi")];
    run(&engine, request(first.clone(), None)).await.unwrap();
    let mut next = first;
    next.push(Message::text(Role::Assistant, "one"));
    next.push(Message::text(Role::User, "and?"));
    run(&engine, request(next, None)).await.unwrap();
    let started = fake.started();
    assert_eq!(started.len(), 2);
    // The backend continues the kept process under exactly the key the first turn's
    // answer was kept under (its own fingerprint of the same conversation).
    let key = started[1]
        .continue_from
        .expect("a continuation asks for a kept process");
    let kept = started[0].keep.as_ref().unwrap().after_answer("one");
    assert_eq!(key, kept);
    assert_eq!(
        started[1].history.len(),
        2,
        "the history goes along should it be gone"
    );
}

#[tokio::test]
async fn tool_results_continue_the_held_run_and_start_nothing() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    fake.script(answer("", &["toolu_1", "toolu_2"]));
    let first = vec![Message::text(Role::User, "look two things up")];
    let got = run(&engine, request(first.clone(), Some(tools())))
        .await
        .unwrap();
    assert_eq!(got.tool_calls.len(), 2);
    assert_eq!(fake.held.lock().unwrap().len(), 1, "the run is held");
    // The results come back as two user messages (OpenAI: one `tool` message each).
    let mut next = first;
    next.push(Message::new(
        Role::Assistant,
        ["toolu_1", "toolu_2"]
            .iter()
            .map(|id| Block::ToolUse {
                id: id.to_string(),
                name: "lookup".into(),
                input: crate::conversation::RawJson::empty_object(),
            })
            .collect(),
    ));
    for id in ["toolu_2", "toolu_1"] {
        next.push(Message::new(
            Role::User,
            vec![Block::ToolResult {
                tool_use_id: id.into(),
                content: vec![Block::Text("found".into())],
                is_error: false,
            }],
        ));
    }
    fake.script(answer("both found", &[]));
    let got = run(&engine, request(next, Some(tools()))).await.unwrap();
    assert_eq!(got.text, "both found");
    assert_eq!(fake.started().len(), 1, "no second run started");
    assert_eq!(
        *fake.continued.lock().unwrap(),
        [vec!["toolu_2".to_string(), "toolu_1".to_string()]]
    );
    assert!(fake.held.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_text_follow_up_ends_the_held_run_and_runs_fresh() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    fake.script(answer("", &["toolu_1"]));
    let first = vec![Message::text(Role::User, "look it up")];
    run(&engine, request(first.clone(), Some(tools())))
        .await
        .unwrap();
    // The client (smolagents, say) records the call as text and sends an observation.
    let mut next = first;
    next.push(Message::text(Role::Assistant, "Action: lookup"));
    next.push(Message::text(Role::User, "Observation: found it"));
    fake.script(answer("ok", &[]));
    run(&engine, request(next, Some(tools()))).await.unwrap();
    assert_eq!(
        *fake.abandoned.lock().unwrap(),
        1,
        "the held run ended at once"
    );
    assert!(fake.continued.lock().unwrap().is_empty());
    assert_eq!(fake.started().len(), 2, "the follow-up ran fresh");
}

#[tokio::test]
async fn a_refused_session_falls_back_to_a_transcript_once() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    let refused = FailureFacts {
        startup_failure_reason: Some("resume_target_not_found".into()),
        ..FailureFacts::default()
    };
    fake.script(failure(refused));
    fake.script(answer("from the transcript", &[]));
    let history = vec![
        Message::text(Role::User, "hi"),
        Message::text(Role::Assistant, "hello"),
        Message::text(Role::User, "again"),
    ];
    let got = run(&engine, request(history, None)).await.unwrap();
    assert_eq!(got.text, "from the transcript");
    let started = fake.started();
    assert_eq!(started.len(), 2);
    assert!(
        !started[0].history.is_empty(),
        "the first run resumes a session"
    );
    assert!(
        started[1].history.is_empty() && started[1].keep.is_none(),
        "the fallback is a transcript run, not kept"
    );
}

#[tokio::test]
async fn a_first_turn_without_history_does_not_fall_back() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &[]);
    let refused = FailureFacts {
        startup_failure_reason: Some("resume_target_not_found".into()),
        ..FailureFacts::default()
    };
    fake.script(failure(refused));
    let got = run(
        &engine,
        request(vec![Message::text(Role::User, "hi")], None),
    )
    .await;
    assert_eq!(got.unwrap_err(), "session_not_found");
    assert_eq!(fake.started().len(), 1);
}

#[tokio::test]
async fn an_account_scoped_failure_before_the_first_byte_fails_over_once() {
    let fake = Arc::new(Fake::default());
    let engine = engine(&fake, &["first", "second"]);
    let billing = || FailureFacts {
        result_seen: true,
        result_is_error: true,
        api_error_status: Some(402),
        result_text: Some("Credit balance is too low".into()),
        ..FailureFacts::default()
    };
    fake.script(failure(billing()));
    fake.script(answer("served", &[]));
    let got = run(
        &engine,
        request(vec![Message::text(Role::User, "hi")], None),
    )
    .await;
    assert_eq!(got.unwrap().text, "served");
    let accounts: Vec<_> = fake
        .started()
        .iter()
        .map(|r| r.account.as_ref().map(|a| a.name().to_string()))
        .collect();
    assert_eq!(accounts.len(), 2);
    assert_ne!(
        accounts[0], accounts[1],
        "the retry runs on the other account"
    );

    // Both fail: the failover happens once, then the failure is the answer.
    fake.script(failure(billing()));
    fake.script(failure(billing()));
    let got = run(
        &engine,
        request(vec![Message::text(Role::User, "hi")], None),
    )
    .await;
    assert!(got.is_err());
}
