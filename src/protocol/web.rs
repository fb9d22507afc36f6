//! The CLI's web searches and fetches as the APIs report them (pure): a top-level
//! `WebSearch` / `WebFetch` call of the model and its result in the CLI's `user` line
//! become one [`WebCall`]; [`citations`] finds where an answer's text cites one of the
//! sources (the CLI tells the model to cite them as markdown links).

use serde_json::Value;

/// The CLI tool names of its web tools.
pub const WEB_SEARCH_TOOL: &str = "WebSearch";
pub const WEB_FETCH_TOOL: &str = "WebFetch";

/// At most this many sources per call, and calls per answer, are kept.
const MAX_SOURCES: usize = 50;
pub const MAX_WEB_CALLS: usize = 64;
/// Bytes of a title, URL or query kept.
const MAX_FIELD: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebKind {
    Search,
    Fetch,
}

impl WebKind {
    /// The kind of a CLI tool name (None: not a web tool).
    pub fn of_tool(name: &str) -> Option<WebKind> {
        match name {
            WEB_SEARCH_TOOL => Some(WebKind::Search),
            WEB_FETCH_TOOL => Some(WebKind::Fetch),
            _ => None,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            WebKind::Search => "search",
            WebKind::Fetch => "fetch",
        }
    }
}

/// One source a search found (or the page a fetch read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebSource {
    pub url: String,
    pub title: String,
}

/// One web search or fetch of the CLI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebCall {
    /// The CLI's tool-use id (`toolu_…`).
    pub id: String,
    pub kind: WebKind,
    /// The search query, or the fetched URL.
    pub query: String,
    pub sources: Vec<WebSource>,
    /// Searches the API ran for it (the CLI's `searchCount`; 0 for a fetch).
    pub searches: u64,
    /// What went wrong (the tool's error text, bounded), if it failed.
    pub error: Option<String>,
    /// For a fetch: the text the CLI gave the model (bounded).
    pub text: Option<String>,
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The text of a `tool_result` block's content (a string or text blocks).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl WebCall {
    /// The call `id` of `kind` with its input, answered by the CLI's tool result.
    pub fn from_outcome(
        id: String,
        kind: WebKind,
        input: &Value,
        outcome: &super::ToolOutcome,
    ) -> WebCall {
        let key = match kind {
            WebKind::Search => "query",
            WebKind::Fetch => "url",
        };
        let query = bounded(input.get(key).and_then(Value::as_str).unwrap_or(""));
        let text = content_text(&outcome.content);
        let mut call = WebCall {
            id,
            kind,
            query,
            sources: Vec::new(),
            searches: 0,
            error: outcome.is_error.then(|| bounded(&text)),
            text: None,
        };
        if outcome.is_error {
            return call;
        }
        match kind {
            WebKind::Search => {
                let d = &outcome.detail;
                call.searches = d.get("searchCount").and_then(Value::as_u64).unwrap_or(1);
                for r in d
                    .get("results")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for hit in r
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if call.sources.len() >= MAX_SOURCES {
                            break;
                        }
                        if let Some(url) = hit.get("url").and_then(Value::as_str) {
                            call.sources.push(WebSource {
                                url: bounded(url),
                                title: bounded(
                                    hit.get("title").and_then(Value::as_str).unwrap_or(""),
                                ),
                            });
                        }
                    }
                }
                // The budget refusal and other non-results come as a result text.
                if call.sources.is_empty() && text.contains("Web search was not performed") {
                    call.searches = 0;
                    call.error = Some(bounded(&text));
                }
            }
            WebKind::Fetch => {
                call.sources.push(WebSource {
                    url: call.query.clone(),
                    title: String::new(),
                });
                call.text = Some(bounded(&text));
            }
        }
        call
    }
}

/// One place where `text` cites a source: the byte range of the URL (or of the markdown
/// link `[title](url)` holding it) and the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation<'a> {
    pub start: usize,
    pub end: usize,
    pub source: &'a WebSource,
    /// The link text of a markdown link, else the URL.
    pub cited_text: &'a str,
}

/// Where `text` cites the sources of `calls` (each occurrence of a source's URL), in
/// text order.
pub fn citations<'a>(text: &'a str, calls: &'a [WebCall]) -> Vec<Citation<'a>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for source in calls.iter().flat_map(|c| &c.sources) {
        if source.url.is_empty() || !seen.insert(source.url.as_str()) {
            continue;
        }
        for (at, _) in text.match_indices(source.url.as_str()) {
            let end = at + source.url.len();
            // A longer URL that merely starts with this one is not a citation of it.
            let mut after = text[end..].chars();
            let longer = match after.next() {
                Some('.') => after.next().is_some_and(char::is_alphanumeric),
                Some(c) => c.is_alphanumeric() || "/-_~%?#=&".contains(c),
                None => false,
            };
            if longer {
                continue;
            }
            // `[label](url)`: the whole link.
            let link = text[..at].strip_suffix("](").and_then(|before| {
                let open = before.rfind('[')?;
                text[end..]
                    .starts_with(')')
                    .then(|| (open, end + 1, &before[open + 1..]))
            });
            out.push(match link {
                Some((start, end, label)) => Citation {
                    start,
                    end,
                    source,
                    cited_text: label,
                },
                None => Citation {
                    start: at,
                    end,
                    source,
                    cited_text: &text[at..end],
                },
            });
        }
    }
    out.sort_by_key(|c| c.start);
    out
}

/// A byte offset of `text` as a character offset (what the OpenAI APIs count).
pub fn char_index(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outcome(detail: Value, content: &str, is_error: bool) -> super::super::ToolOutcome {
        super::super::ToolOutcome {
            id: "toolu_1".into(),
            is_error,
            content: Value::String(content.into()),
            detail,
        }
    }

    #[test]
    fn a_search_result_becomes_its_sources() {
        // The CLI 2.1.332's `tool_use_result` of WebSearch (captured against the mock).
        let detail = json!({"query": "rust", "results": [
            {"tool_use_id": "srvtoolu_mock1", "content": [
                {"title": "Rust Lang", "url": "https://www.rust-lang.org/"},
                {"title": "The Book", "url": "https://doc.rust-lang.org/book/"}]},
            "Rust is a language."], "durationSeconds": 0.02, "searchCount": 1});
        let call = WebCall::from_outcome(
            "toolu_1".into(),
            WebKind::Search,
            &json!({"query": "rust"}),
            &outcome(detail, "Web search results for query: \"rust\"", false),
        );
        assert_eq!(call.query, "rust");
        assert_eq!(call.searches, 1);
        assert_eq!(call.sources.len(), 2);
        assert_eq!(call.sources[1].url, "https://doc.rust-lang.org/book/");
        assert_eq!(call.error, None);

        let refused = WebCall::from_outcome(
            "toolu_2".into(),
            WebKind::Search,
            &json!({"query": "again"}),
            &outcome(
                json!({"query": "again", "results": ["Web search was not performed: budget"]}),
                "Web search results for query: \"again\"\n\nWeb search was not performed: this turn's web search budget is used up",
                false,
            ),
        );
        assert_eq!(refused.searches, 0);
        assert!(refused.error.is_some());
    }

    #[test]
    fn citations_are_the_links_to_sources() {
        let calls = vec![WebCall {
            id: "t".into(),
            kind: WebKind::Search,
            query: "rust".into(),
            sources: vec![
                WebSource {
                    url: "https://www.rust-lang.org/".into(),
                    title: "Rust".into(),
                },
                WebSource {
                    url: "https://doc.rust-lang.org/book/".into(),
                    title: "Book".into(),
                },
            ],
            searches: 1,
            error: None,
            text: None,
        }];
        let text = "Read [the book](https://doc.rust-lang.org/book/) — ünd https://www.rust-lang.org/. Not https://www.rust-lang.org/learn";
        let c = citations(text, &calls);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            &text[c[0].start..c[0].end],
            "[the book](https://doc.rust-lang.org/book/)"
        );
        assert_eq!(c[0].cited_text, "the book");
        assert_eq!(&text[c[1].start..c[1].end], "https://www.rust-lang.org/");
        assert_eq!(
            char_index(text, c[1].start),
            text[..c[1].start].chars().count()
        );
    }
}
