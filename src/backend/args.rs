//! How a turn is presented to the CLI: the argv (flags only, never the prompt), the one
//! stream-json `user` line written to stdin, and the private system-prompt file.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;

use super::request::{CliRequest, CliSettings};

/// The argv after the program name (flags only; the prompt goes to stdin). Public so the
/// benchmarks and the real-CLI protocol tests run the CLI exactly as ccgate does.
pub fn cli_args(
    settings: &CliSettings,
    req: &CliRequest,
    system_prompt_file: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--no-session-persistence",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let web = req
        .options
        .web
        .as_ref()
        .map(|w| w.names())
        .unwrap_or_default();
    if !web.is_empty() {
        // The request's web tools and none other of the CLI's (its operator's `cli.tools`
        // aside): only these are offered and pre-approved.
        args.push("--tools".into());
        args.push(web.join(",").into());
    } else if !settings.tools {
        args.push("--tools".into());
        args.push("".into());
    }
    // No MCP server from the CLI's own configuration (user, project or plugin scope) is
    // started or offered: without this flag every run, a plain one too, spawned the
    // servers of the host's `.claude.json` (real CLI: `real_mcp_isolation`).
    args.push("--strict-mcp-config".into());
    let mut allowed: Vec<String> = web.iter().map(|s| s.to_string()).collect();
    if let Some(tools) = req.tools.as_deref() {
        // The client's tools, and only them: through the run's in-process MCP server,
        // each pre-approved (no permission prompt can appear).
        args.push("--mcp-config".into());
        args.push(super::mcp::mcp_config().into());
        allowed.extend(tools.tools.iter().map(|t| super::mcp::model_name(&t.name)));
    }
    if !allowed.is_empty() {
        args.push(format!("--allowedTools={}", allowed.join(",")).into());
    }
    if let Some(model) = req.model.as_deref().filter(|m| !m.is_empty()) {
        // Equals form: a value starting with `--` stays the value of --model.
        args.push(format!("--model={model}").into());
    }
    match system_prompt_file {
        Some(path) => {
            args.push("--system-prompt-file".into());
            args.push(path.as_os_str().to_owned());
        }
        // Without any system-prompt flag the CLI sends its own very large agent prompt
        // (tools, CLAUDE.md, environment …), which costs tokens and changes the model's
        // behaviour. An explicit empty prompt keeps the request clean, as the SDK does.
        None => {
            args.push("--system-prompt".into());
            args.push("".into());
        }
    }
    args.extend(req.options.flags().into_iter().map(OsString::from));
    args.extend(settings.extra_args.iter().map(OsString::from));
    args
}

/// The one stdin line: `{"type":"user","message":{"role":"user","content":<prompt>}}\n`;
/// with attachments, `content` is `[{"type":"text","text":<prompt>}, <image blocks>…]` (the
/// CLI passes content blocks to the API unchanged).
pub fn user_line(prompt: &str, attachments: &[serde_json::Value]) -> String {
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Content<'a> {
        Text(&'a str),
        Blocks(Vec<serde_json::Value>),
    }
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: Content<'a>,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        message: Message<'a>,
    }
    let line = Line {
        kind: "user",
        message: Message {
            role: "user",
            content: if attachments.is_empty() {
                Content::Text(prompt)
            } else {
                let mut blocks = vec![serde_json::json!({"type": "text", "text": prompt})];
                blocks.extend(attachments.iter().cloned());
                Content::Blocks(blocks)
            },
        },
    };
    // Serializing plain strings cannot fail.
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

pub(super) fn write_system_prompt(
    dir: &Path,
    text: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    // NamedTempFile is created with mode 0600 and deleted when dropped (end of the run).
    let mut file = tempfile::Builder::new()
        .prefix("ccgate-system-prompt-")
        .suffix(".txt")
        .tempfile_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_line_is_exactly_one_json_line() {
        assert_eq!(
            user_line("--model x\n\"q\"", &[]),
            "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"--model x\\n\\\"q\\\"\"}}\n"
        );
    }

    #[test]
    fn user_line_with_images_is_a_content_block_list() {
        let image = serde_json::json!({"type": "image", "source": {"type": "url", "url": "https://x/y.png"}});
        let line = user_line("look: [image 1]", std::slice::from_ref(&image));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            v["message"]["content"],
            serde_json::json!([{"type": "text", "text": "look: [image 1]"}, image])
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn system_prompt_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let f = write_system_prompt(&std::env::temp_dir(), "Be terse.").expect("temp file");
        let mode = std::fs::metadata(f.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(f.path()).expect("read"),
            "Be terse."
        );
        let path = f.path().to_path_buf();
        drop(f);
        assert!(!path.exists());
    }
}
