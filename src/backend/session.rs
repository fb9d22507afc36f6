//! Synthesized sessions: a conversation's earlier turns written as a session file the CLI
//! resumes (`--resume <id> --fork-session`), so a fresh process sees them as real user and
//! assistant turns. The file lives where the CLI looks for it,
//! `$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric character as '-'>/<id>.jsonl`,
//! and is deleted when the run ends; `--no-session-persistence` keeps the fork off disk.
//!
//! - The file holds a whole earlier conversation: it is created with mode 0600 (as the
//!   system-prompt file), whatever the umask.
//! - It is written through one buffer (a 30k-turn history is a few dozen `write(2)`s, not
//!   one per JSON token), and off the async workers ([`crate::offload`]).
//! - The project directory the file needed is removed with the last session file in it
//!   (`serve` runs the CLI in a new private directory on each start, so each start would
//!   otherwise leave one more `projects/-tmp-…` directory behind).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::present::{SessionBlock, SessionTurn};
use super::request::CliSettings;

/// The CLI version the entries claim (the pinned CLI's; it accepts its own format).
const ENTRY_VERSION: &str = "2.1.332";

/// The write buffer: a history of any size costs a few dozen system calls per MiB.
const WRITE_BUFFER: usize = 64 * 1024;

/// Serialises creating a project directory with a file in it against removing it when
/// empty, so one session's end never removes the directory another is being created in.
static PROJECT_DIRS: Mutex<()> = Mutex::new(());

/// A written session file; deleted on drop, with its project directory when that is left
/// empty.
#[derive(Debug)]
pub(super) struct SessionFile {
    pub(super) id: String,
    path: PathBuf,
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        let _dirs = PROJECT_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            // Fails (and stays) while another session file is in it, or the CLI wrote there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The CLI's configuration directory for these settings: `CLAUDE_CONFIG_DIR` from the
/// configured CLI environment, else from ccgate's own, else `$HOME/.claude`.
fn config_dir(settings: &CliSettings) -> Option<PathBuf> {
    let from_settings = settings
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "CLAUDE_CONFIG_DIR")
        .map(|(_, v)| PathBuf::from(v));
    from_settings
        .or_else(|| std::env::var_os("CLAUDE_CONFIG_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".claude")))
}

/// Where session files go for these settings (for the log when they cannot be written).
pub(super) fn session_dir(settings: &CliSettings) -> PathBuf {
    config_dir(settings).map_or_else(|| PathBuf::from("$HOME/.claude"), |d| d.join("projects"))
}

/// The CLI's project directory name for a working directory.
fn project_dir_name(cwd: &str) -> String {
    cwd.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// One line of the session file (the CLI's transcript entry), borrowing the turn.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    parent_uuid: Option<&'a str>,
    is_sidechain: bool,
    #[serde(rename = "type")]
    kind: &'static str,
    message: EntryMessage<'a>,
    uuid: &'a str,
    timestamp: &'a str,
    cwd: &'a str,
    session_id: &'a str,
    version: &'static str,
    user_type: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EntryMessage<'a> {
    User {
        role: &'static str,
        content: &'a [SessionBlock],
    },
    Assistant {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        model: &'a str,
        content: &'a [SessionBlock],
        stop_reason: &'static str,
        stop_sequence: Option<()>,
        usage: ZeroUsage,
    },
}

#[derive(Serialize)]
struct ZeroUsage {
    input_tokens: u32,
    output_tokens: u32,
}

/// Writes `turns` as a session for a CLI running in `settings.workdir`. Blocking file IO:
/// call it off the async workers.
pub(super) fn write_session(
    settings: &CliSettings,
    model: Option<&str>,
    turns: &[SessionTurn],
) -> std::io::Result<SessionFile> {
    let missing = || std::io::Error::other("no CLAUDE_CONFIG_DIR and no HOME");
    let cwd = std::fs::canonicalize(&settings.workdir)?;
    let cwd = cwd.to_string_lossy().into_owned();
    let dir = config_dir(settings)
        .ok_or_else(missing)?
        .join("projects")
        .join(project_dir_name(&cwd));
    let id = uuid::Uuid::new_v4().to_string();
    let path = dir.join(format!("{id}.jsonl"));
    let out = {
        let _dirs = PROJECT_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
    };
    // From here on the file exists: deleted (with an empty directory) on any error.
    let file = SessionFile {
        id: id.clone(),
        path,
    };
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let timestamp = crate::clock::now_rfc3339();
    let model = model.unwrap_or("claude");
    let mut parent: Option<String> = None;
    for turn in turns {
        let uuid = uuid::Uuid::new_v4().to_string();
        let message = if turn.assistant {
            EntryMessage::Assistant {
                id: format!("msg_{}", uuid.replace('-', "")),
                kind: "message",
                role: "assistant",
                model,
                content: &turn.content,
                stop_reason: "end_turn",
                stop_sequence: None,
                usage: ZeroUsage {
                    input_tokens: 0,
                    output_tokens: 0,
                },
            }
        } else {
            EntryMessage::User {
                role: "user",
                content: &turn.content,
            }
        };
        let entry = Entry {
            parent_uuid: parent.as_deref(),
            is_sidechain: false,
            kind: if turn.assistant { "assistant" } else { "user" },
            message,
            uuid: &uuid,
            timestamp: &timestamp,
            cwd: &cwd,
            session_id: &id,
            version: ENTRY_VERSION,
            user_type: "external",
        };
        serde_json::to_writer(&mut out, &entry)?;
        out.write_all(b"\n")?;
        parent = Some(uuid);
    }
    out.into_inner().map_err(|e| e.into_error())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn project_dirs_replace_every_non_alphanumeric_character() {
        // Checked with the real CLI: `/work/t3/.tmp_x.y/work` → `-work-t3--tmp-x-y-work`.
        assert_eq!(
            project_dir_name("/work/t3/.tmp_x.y/work"),
            "-work-t3--tmp-x-y-work"
        );
    }

    fn settings(config: &Path, workdir: &Path) -> CliSettings {
        let d = std::time::Duration::from_secs(1);
        CliSettings {
            command: "claude".into(),
            extra_args: Vec::new(),
            workdir: workdir.to_path_buf(),
            env: vec![("CLAUDE_CONFIG_DIR".into(), config.display().to_string())],
            tools: false,
            start_timeout: d,
            inactivity_timeout: d,
            total_timeout: d,
            max_concurrent: 1,
            queue_size: 1,
            stderr_tail_bytes: 1024,
            prewarm: 0,
            prewarm_model: None,
            prewarm_max_idle: d,
            keep_conversations: 0,
            conversation_idle_timeout: d,
            max_held_runs: 0,
            tool_hold_timeout: d,
            max_held_runs_per_key: None,
            keep_conversations_per_key: None,
            temp_dir: std::env::temp_dir(),
        }
    }

    fn turns() -> Vec<SessionTurn> {
        let text = |t: &str| vec![serde_json::json!({"type": "text", "text": t}).into()];
        vec![
            SessionTurn {
                assistant: false,
                content: text("hi"),
            },
            SessionTurn {
                assistant: true,
                content: text("hello"),
            },
        ]
    }

    #[test]
    fn session_files_are_private_entries_and_leave_no_directory() {
        let config = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let s = settings(config.path(), work.path());
        let a = write_session(&s, Some("sonnet"), &turns()).unwrap();
        let b = write_session(&s, None, &turns()).unwrap();
        let mode = std::fs::metadata(&a.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "whatever the umask");
        let text = std::fs::read_to_string(&a.path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["parentUuid"], serde_json::Value::Null);
        assert_eq!(lines[0]["type"], "user");
        assert_eq!(lines[0]["message"]["content"][0]["text"], "hi");
        assert_eq!(lines[1]["parentUuid"], lines[0]["uuid"]);
        assert_eq!(lines[1]["sessionId"], a.id.as_str());
        assert_eq!(lines[1]["message"]["role"], "assistant");
        assert_eq!(lines[1]["message"]["model"], "sonnet");
        assert_eq!(
            lines[1]["message"]["stop_sequence"],
            serde_json::Value::Null
        );
        assert_eq!(lines[1]["message"]["usage"]["output_tokens"], 0);
        assert_eq!(lines[1]["userType"], "external");
        let dir = a.path.parent().unwrap().to_path_buf();
        drop(a);
        assert!(dir.is_dir(), "another session file is still in it");
        drop(b);
        assert!(
            !dir.exists(),
            "the last session file takes its directory along"
        );
        assert!(config.path().join("projects").is_dir());
    }

    #[test]
    fn a_tool_call_input_is_written_as_the_client_sent_it() {
        let config = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let s = settings(config.path(), work.path());
        let input = r#"{ "x" : [0, 0, 0], "b": 1, "a": 2 }"#;
        let mut t = turns();
        t[1].content.push(SessionBlock::ToolUse {
            id: "toolu_1".into(),
            name: "mcp__cg__t".into(),
            input: crate::conversation::RawJson::parse(input).unwrap(),
        });
        let f = write_session(&s, None, &t).unwrap();
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert!(
            text.contains(&format!(
                r#"{{"type":"tool_use","id":"toolu_1","name":"mcp__cg__t","input":{input}}}"#
            )),
            "{text}"
        );
    }

    #[test]
    fn an_unwritable_config_dir_is_an_error_and_leaves_nothing() {
        let config = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        // A file where the directory should be: create_dir_all fails.
        std::fs::write(config.path().join("projects"), b"x").unwrap();
        let s = settings(config.path(), work.path());
        assert!(write_session(&s, None, &turns()).is_err());
    }
}
