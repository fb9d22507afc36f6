//! What a run is asked to do: [`CliSettings`], how every CLI process of a backend is
//! started and bounded, and [`CliRequest`], the one turn a run carries.

use std::path::PathBuf;
use std::time::Duration;

pub use super::options::RunOptions;

/// Process-level settings for running the CLI (from the `cli:` section of the process config).
#[derive(Debug, Clone)]
pub struct CliSettings {
    /// Program to run (`claude` from PATH by default).
    pub command: PathBuf,
    /// Extra arguments appended after ccgate's own flags.
    pub extra_args: Vec<String>,
    /// Working directory for every CLI process.
    pub workdir: PathBuf,
    /// Extra environment for the CLI (on top of ccgate's own, which it inherits).
    pub env: Vec<(String, String)>,
    /// Enable the CLI's tools. When false, `--tools ""` is passed.
    pub tools: bool,
    pub start_timeout: Duration,
    pub inactivity_timeout: Duration,
    pub total_timeout: Duration,
    /// Max CLI processes at once.
    pub max_concurrent: usize,
    /// Max requests waiting for a slot; beyond that the request fails with QueueFull.
    pub queue_size: usize,
    /// Bytes of stderr kept (ring).
    pub stderr_tail_bytes: usize,
    /// Idle pre-warmed processes to keep (0 = no pool). Capped at `max_concurrent`.
    pub prewarm: usize,
    /// `--model` the pre-warmed processes are spawned with (None = the CLI's default);
    /// only requests for exactly this model (and without a system prompt) use them.
    pub prewarm_model: Option<String>,
    /// An idle pre-warmed process older than this is recycled.
    pub prewarm_max_idle: Duration,
    /// CLI processes kept alive after a turn for the conversation's next one (0 = none).
    pub keep_conversations: usize,
    /// A kept process idle this long is ended.
    pub conversation_idle_timeout: Duration,
    /// Runs held in a client tool call at once (0 = none: every tool-call answer ends its
    /// process and the continuation runs fresh). Capped below `max_concurrent`.
    pub max_held_runs: usize,
    /// A held run whose client has not returned its results within this is ended.
    pub tool_hold_timeout: Duration,
    /// Held runs one tenant (API key) may have at once (None: `max_held_runs`).
    pub max_held_runs_per_key: Option<usize>,
    /// Kept conversation processes one tenant may have at once (None:
    /// `keep_conversations`).
    pub keep_conversations_per_key: Option<usize>,
    /// Where the private system-prompt files are created (`cli.temp_dir`, default TMPDIR).
    pub temp_dir: PathBuf,
}

/// One turn to run.
#[derive(Debug, Clone, Default)]
pub struct CliRequest {
    /// The user prompt, written to stdin as one stream-json user message. Never argv.
    pub prompt: String,
    /// Anthropic image content blocks sent after the prompt text in that same message.
    pub attachments: Vec<serde_json::Value>,
    /// System prompt (passed via a private temp file, `--system-prompt-file`).
    pub system_prompt: Option<String>,
    /// `--model` value.
    pub model: Option<String>,
    /// Overrides `total_timeout` (the probe uses its own timeout).
    pub timeout: Option<Duration>,
    /// Skip the concurrency queue (the health probe must not be refused by load).
    pub bypass_queue: bool,
    /// Earlier turns, written as a synthesized session the CLI resumes (a fresh run).
    pub history: Vec<super::present::SessionTurn>,
    /// A kept process whose conversation is exactly the earlier turns continues this
    /// request instead (only `prompt` / `attachments` are written to it).
    pub continue_from: Option<super::present::Fingerprint>,
    /// Keep the process after a clean answer, under this fingerprint plus the answer.
    pub keep: Option<super::present::FingerprintBuilder>,
    /// The client's tools, offered through the run's in-process MCP server (the CLI's
    /// own tools stay off).
    pub tools: Option<std::sync::Arc<crate::conversation::ToolSet>>,
    /// The session ends with the client's tool results: the CLI re-runs that interrupted
    /// turn itself (`CLAUDE_CODE_RESUME_INTERRUPTED_TURN`), and no user line is written.
    pub resume_results: bool,
    /// Answer every tool call of the CLI with an error result at once, and tell the
    /// client of none (`tool_choice: none`).
    pub refuse_calls: bool,
    /// The account the run is on (its spawn environment, kept and pre-warmed processes);
    /// None: the implicit account (the base settings).
    pub account: Option<std::sync::Arc<Account>>,
    /// Structured output, effort and thinking: flags of the process (so part of the
    /// kept-process fingerprint, and only default options use the pre-warmed pool).
    pub options: RunOptions,
    /// Who the client is (a digest of its API key; empty without keys): the owner of the
    /// process once kept (per-tenant caps).
    pub tenant: String,
}

impl CliRequest {
    /// The name of the run's account (None: the implicit account).
    pub(super) fn account_name(&self) -> Option<&str> {
        name_of(self.account.as_ref())
    }

    /// The settings this run's process is spawned with: its account's, or `base`.
    pub(super) fn settings<'a>(
        &'a self,
        base: &'a std::sync::Arc<CliSettings>,
    ) -> &'a std::sync::Arc<CliSettings> {
        self.account.as_ref().map_or(base, |a| a.settings())
    }

    /// The request for one conversation as the backend presents it to the CLI
    /// ([`super::present::present`]).
    pub fn for_conversation(
        conversation: &crate::conversation::Conversation,
        model: &str,
        options: &RunOptions,
    ) -> Result<CliRequest, super::present::PresentError> {
        let p = super::present::present(conversation)?;
        Ok(CliRequest {
            prompt: p.prompt,
            attachments: p.attachments,
            system_prompt: p.system_prompt,
            model: Some(model.to_string()),
            options: options.clone(),
            ..CliRequest::default()
        })
    }
}

impl CliRequest {
    /// The request for one conversation as real turns ([`super::present::present_turns`]):
    /// continued in a kept process when one holds its earlier turns, else a fresh run
    /// resuming them as a synthesized session; kept for the next turn after a clean answer.
    pub fn for_turns(
        turns: super::present::Turns,
        model: &str,
        options: &RunOptions,
    ) -> CliRequest {
        CliRequest {
            prompt: turns.prompt,
            attachments: turns.attachments,
            system_prompt: turns.system_prompt,
            model: Some(model.to_string()),
            continue_from: (!turns.history.is_empty() && !turns.resume_results)
                .then_some(turns.history_fingerprint),
            history: turns.history,
            keep: Some(turns.keep),
            resume_results: turns.resume_results,
            options: options.clone(),
            ..CliRequest::default()
        }
    }
}

/// An account's identity as the backend sees it: its name and the CLI settings its
/// processes are spawned with (the base `cli:` settings plus the account's `env`, which
/// may hold its own `CLAUDE_CONFIG_DIR`, `ANTHROPIC_API_KEY`, `CLAUDE_CODE_OAUTH_TOKEN`…).
///
/// A run carries its account ([`super::CliRequest::account`]; `None` is the implicit
/// account of a gateway without `accounts`, spawned with the base settings). The account
/// decides the spawn environment, the directory a synthesized session is written to (its
/// `CLAUDE_CONFIG_DIR`), the key a kept conversation process is stored under and which
/// pre-warmed processes a run may take: a process never serves another account.
///
/// The `Debug` form names the account and its variables, never their values (secrets).
///
/// One configured account, shared by every run on it.
pub struct Account {
    name: String,
    settings: std::sync::Arc<CliSettings>,
    /// Names of the account's own variables (for `Debug`).
    env_keys: Vec<String>,
}

impl Account {
    /// An account named `name` whose processes get `env` on top of `base.env` (its
    /// values win over the base ones of the same name).
    pub fn new(base: &CliSettings, name: &str, env: &[(String, String)]) -> Account {
        let mut settings = base.clone();
        settings.env.extend(env.iter().cloned());
        Account {
            name: name.to_string(),
            settings: std::sync::Arc::new(settings),
            env_keys: env.iter().map(|(k, _)| k.clone()).collect(),
        }
    }

    /// The configured name (a metric label, shown in `/v1/auth/status`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings this account's processes are spawned with.
    pub(super) fn settings(&self) -> &std::sync::Arc<CliSettings> {
        &self.settings
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("env", &self.env_keys)
            .finish_non_exhaustive()
    }
}

/// The name of a run's account (`None`: the implicit one), for matching processes.
pub(super) fn name_of(account: Option<&std::sync::Arc<Account>>) -> Option<&str> {
    account.map(|a| a.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_never_values() {
        let base = CliSettings {
            command: "claude".into(),
            extra_args: Vec::new(),
            workdir: std::path::PathBuf::new(),
            env: vec![("DISABLE_TELEMETRY".into(), "1".into())],
            tools: false,
            start_timeout: std::time::Duration::from_secs(1),
            inactivity_timeout: std::time::Duration::from_secs(1),
            total_timeout: std::time::Duration::from_secs(1),
            max_concurrent: 1,
            queue_size: 1,
            stderr_tail_bytes: 1024,
            prewarm: 0,
            prewarm_model: None,
            prewarm_max_idle: std::time::Duration::from_secs(1),
            keep_conversations: 0,
            conversation_idle_timeout: std::time::Duration::from_secs(1),
            max_held_runs: 0,
            tool_hold_timeout: std::time::Duration::from_secs(1),
            max_held_runs_per_key: None,
            keep_conversations_per_key: None,
            temp_dir: std::env::temp_dir(),
        };
        let a = Account::new(
            &base,
            "team",
            &[("ANTHROPIC_API_KEY".into(), "sk-ant-secret-value".into())],
        );
        let shown = format!("{a:?}");
        assert!(
            shown.contains("team") && shown.contains("ANTHROPIC_API_KEY"),
            "{shown}"
        );
        assert!(!shown.contains("sk-ant-secret-value"), "{shown}");
        assert_eq!(
            a.settings().env.last(),
            Some(&("ANTHROPIC_API_KEY".into(), "sk-ant-secret-value".into()))
        );
    }
}

/// One client tool call's result as the client returned it (for a held run's call).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_use_id: String,
    pub content: Vec<crate::conversation::Block>,
    pub is_error: bool,
}
