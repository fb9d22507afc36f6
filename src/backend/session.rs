//! Synthesized sessions: a conversation's earlier turns written as a session file the CLI
//! resumes (`--resume <id> --fork-session`), so a fresh process sees them as real user and
//! assistant turns. The file lives where the CLI looks for it,
//! `$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric character as '-'>/<id>.jsonl`,
//! and is deleted when the run ends; `--no-session-persistence` keeps the fork off disk.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::present::SessionTurn;
use super::request::CliSettings;

/// The CLI version the entries claim (the pinned CLI's; it accepts its own format).
const ENTRY_VERSION: &str = "2.1.332";

/// A written session file; deleted on drop.
#[derive(Debug)]
pub(super) struct SessionFile {
    pub(super) id: String,
    path: PathBuf,
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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

/// The CLI's project directory name for a working directory.
fn project_dir_name(cwd: &str) -> String {
    cwd.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Writes `turns` as a session for a CLI running in `settings.workdir`.
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
    std::fs::create_dir_all(&dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let path = dir.join(format!("{id}.jsonl"));
    let file = SessionFile {
        id: id.clone(),
        path: path.clone(),
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let timestamp = crate::clock::now_rfc3339();
    let mut parent: Option<String> = None;
    for turn in turns {
        let uuid = uuid::Uuid::new_v4().to_string();
        let message = if turn.assistant {
            json!({"id": format!("msg_{}", uuid.replace('-', "")), "type": "message",
                   "role": "assistant", "model": model.unwrap_or("claude"), "content": turn.content,
                   "stop_reason": "end_turn", "stop_sequence": null,
                   "usage": {"input_tokens": 0, "output_tokens": 0}})
        } else {
            json!({"role": "user", "content": turn.content})
        };
        let entry = json!({
            "parentUuid": parent, "isSidechain": false,
            "type": if turn.assistant { "assistant" } else { "user" },
            "message": message, "uuid": uuid, "timestamp": timestamp, "cwd": cwd,
            "sessionId": id, "version": ENTRY_VERSION, "userType": "external",
        });
        serde_json::to_writer(&mut out, &entry)?;
        out.write_all(b"\n")?;
        parent = Some(uuid);
    }
    out.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_dirs_replace_every_non_alphanumeric_character() {
        // Checked with the real CLI: `/work/t3/.tmp_x.y/work` → `-work-t3--tmp-x-y-work`.
        assert_eq!(
            project_dir_name("/work/t3/.tmp_x.y/work"),
            "-work-t3--tmp-x-y-work"
        );
    }
}
