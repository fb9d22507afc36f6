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
    /// Structured output, effort and thinking: flags of the process (so part of the
    /// kept-process fingerprint, and only default options use the pre-warmed pool).
    pub options: RunOptions,
}

impl CliRequest {
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
