//! The request log line of the text format: client-chosen strings (`x-request-id`, path,
//! model) cannot forge or hide fields, and the non-blocking log writer still writes the
//! last lines before the process exits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// `ccgate serve` with text logs on 127.0.0.1:0 and the fake CLI; stderr lines on a channel.
fn spawn_text_serve(dir: &std::path::Path) -> (Child, Receiver<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .current_dir(dir)
        .env("CCGATE_CLI__COMMAND", crate::harness::fake_cli())
        .env("CCGATE_WATCH_RULES", "false")
        .env("CCGATE_LOG_LEVEL", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = next_line(&rx, |l| l.contains("ccgate listening"));
    let fields = logfmt(fields_of(&line, "ccgate listening")).expect("listening line parses");
    let addr = fields
        .iter()
        .find(|(k, _)| k == "listen")
        .map(|(_, v)| v.clone())
        .expect("listen field");
    (child, rx, addr)
}

fn next_line(rx: &Receiver<String>, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("expected log line");
        if want(&line) {
            return line;
        }
    }
}

/// The fields part of a text line `<time> <LEVEL> <target>: <message> k=v k=v…`.
fn fields_of<'a>(line: &'a str, message: &str) -> &'a str {
    let rest = &line[line.find(": ").expect("target") + 2..];
    rest.strip_prefix(message)
        .unwrap_or_else(|| panic!("not a {message:?} line: {line}"))
        .trim_start()
}

/// A strict logfmt reader: `key=value` pairs separated by one space; a value is bare (no
/// space, no `"`) or a double-quoted string with backslash escapes. Err on anything else,
/// as log pipelines' logfmt parsers do (or worse, they guess).
fn logfmt(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(format!("bad key char {c:?} after {key:?} in {s}"));
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(format!("expected key= in {s}"));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('r') => value.push('\r'),
                        Some(c) => value.push(c),
                        None => return Err(format!("dangling escape in {s}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quote in {s}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if c == '"' || c == '\\' {
                    return Err(format!("{c:?} in a bare value of {key} in {s}"));
                }
                value.push(c);
                chars.next();
            }
        }
        match chars.next() {
            None | Some(' ') => {}
            Some(c) => return Err(format!("{c:?} after the value of {key} in {s}")),
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Sends one raw HTTP/1.1 request and returns the response's status code.
fn raw_status(addr: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn one<'a>(fields: &'a [(String, String)], key: &str, line: &str) -> &'a str {
    let all: Vec<_> = fields.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(all.len(), 1, "{key} must appear exactly once in {line}");
    &all[0].1
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "ccgate did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Visible ASCII is all an `x-request-id` may hold, but that includes `"`, `\` and `=`.
/// Printed bare (`%`), an id of `"` opened a quote that swallowed the next field, and with
/// a naive quote-toggling reader the model's text after it read as fields (`status=200`).
/// Every client-chosen value must come out quoted and escaped, so a strict logfmt reader
/// gets back exactly what the client sent and each field once.
#[test]
fn text_log_quotes_client_chosen_request_id_path_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx, addr) = spawn_text_serve(dir.path());
    let hostile_id = r#""x=y\"#;
    let hostile_model = r#"m" status=200 kind="ok"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (s1, s2, s3) = rt.block_on(async {
        let c = crate::harness::client();
        let r1 = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-request-id", hostile_id)
            .json(&crate::harness::chat_body("[[scenario:rate_limit]]", false))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r1.headers()["x-request-id"],
            hostile_id,
            "the id is accepted (visible ASCII) and echoed"
        );
        let mut body = crate::harness::chat_body("[[scenario:rate_limit]]", false);
        body["model"] = hostile_model.into();
        let r2 = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-request-id", "\"")
            .json(&body)
            .send()
            .await
            .unwrap();
        // An unknown path with a quote and `=` in it is logged too (sent raw: a URL
        // library would percent-encode the quote).
        let s3 = raw_status(
            &addr,
            "POST /v1/x\"status=200 HTTP/1.1\r\nhost: localhost\r\nx-request-id: a=b\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
        (
            r1.status().as_u16(),
            r2.status().as_u16(),
            s3,
        )
    });
    assert_eq!(s1, 429);
    for (want_id, want_status, want_path) in [
        (hostile_id, s1, "/v1/chat/completions"),
        ("\"", s2, "/v1/chat/completions"),
        ("a=b", s3, "/v1/x\"status=200"),
    ] {
        let line = next_line(&rx, |l| l.contains(" request "));
        let fields = logfmt(fields_of(&line, "request"))
            .unwrap_or_else(|e| panic!("the request line does not parse as logfmt: {e}"));
        assert_eq!(one(&fields, "request_id", &line), want_id, "{line}");
        assert_eq!(
            one(&fields, "status", &line),
            want_status.to_string(),
            "{line}"
        );
        assert_eq!(one(&fields, "path", &line), want_path, "{line}");
        assert_eq!(one(&fields, "method", &line), "POST", "{line}");
        one(&fields, "kind", &line);
        one(&fields, "endpoint", &line);
        if want_id == "\"" {
            // Validated or not, a logged model comes back exactly as sent.
            let model = one(&fields, "model", &line);
            assert!(model.is_empty() || model == hostile_model, "{line}");
            assert_ne!(one(&fields, "kind", &line), "ok", "{line}");
        }
    }
    stop(child);
}

/// Log lines go through a buffer to a writer thread: the lines of the last moments (the
/// last request, "ccgate stopped") are still written when the process exits.
#[test]
fn text_log_keeps_the_last_lines_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx, addr) = spawn_text_serve(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = crate::harness::client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("x-request-id", "last-one")
            .json(&crate::harness::chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    stop(child);
    let rest: Vec<String> = rx.iter().collect();
    let all = rest.join("\n");
    assert!(
        rest.iter()
            .any(|l| l.contains(" request ") && l.contains("request_id=\"last-one\"")),
        "{all}"
    );
    assert!(
        rest.last().is_some_and(|l| l.contains("ccgate stopped")),
        "{all}"
    );
}

/// `/v1/responses` and `/v1/messages/count_tokens` write the request line with their own
/// `endpoint`.
#[test]
fn text_log_names_the_responses_and_count_tokens_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx, addr) = spawn_text_serve(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = rt.block_on(async {
        let c = crate::harness::client();
        let r1 = c
            .post(format!("http://{addr}/v1/responses"))
            .json(&serde_json::json!({"model": "sonnet", "input": "hi"}))
            .send()
            .await
            .unwrap();
        let r2 = c
            .post(format!("http://{addr}/v1/messages/count_tokens"))
            .json(&serde_json::json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        (r1.status().as_u16(), r2.status().as_u16())
    });
    assert_eq!(statuses, (200, 200));
    for (endpoint, path) in [
        ("responses", "/v1/responses"),
        ("count_tokens", "/v1/messages/count_tokens"),
    ] {
        let line = next_line(&rx, |l| l.contains(" request "));
        let fields = logfmt(fields_of(&line, "request")).unwrap();
        assert_eq!(one(&fields, "endpoint", &line), endpoint, "{line}");
        assert_eq!(one(&fields, "path", &line), path, "{line}");
        assert_eq!(one(&fields, "status", &line), "200", "{line}");
        assert_eq!(one(&fields, "kind", &line), "ok", "{line}");
        assert_eq!(one(&fields, "model", &line), "sonnet", "{line}");
    }
    stop(child);
}
