//! The per-request process flags beyond the model and the system prompt: structured
//! output (`--json-schema`), effort (`--effort`) and thinking (`--thinking`,
//! `--max-thinking-tokens`, `--thinking-display`), and the CLI's web tools a request
//! enables for its run ([`WebTools`]).

/// The CLI's `--effort` levels (what `claude --help` and the CLI's own check accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effort {
    Low,
    Medium,
    High,
    Xhigh,
    Max,
}

impl Effort {
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::Xhigh => "xhigh",
            Effort::Max => "max",
        }
    }
}

/// How the model thinks: `--thinking disabled`, `--thinking adaptive`, or a budget
/// (`--max-thinking-tokens N`, honoured by models that take a budget; adaptive-only
/// models think adaptively whatever it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Thinking {
    Disabled,
    Adaptive,
    Budget(u32),
}

/// Per-request process flags beyond the model and system prompt. The default adds no flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RunOptions {
    /// `--json-schema`: the compact JSON text of the schema the answer must satisfy.
    pub json_schema: Option<String>,
    pub effort: Option<Effort>,
    pub thinking: Option<Thinking>,
    /// `--thinking-display` (`summarized` / `omitted`).
    pub thinking_display: Option<&'static str>,
    /// The CLI's WebSearch / WebFetch for this run (and none of its other tools).
    pub web: Option<WebTools>,
}

/// The CLI's own web tools a request enables for its run: `--tools` names exactly them,
/// `--allowedTools` pre-approves them, and the environment bounds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct WebTools {
    /// `WebSearch`: the CLI asks the Messages API to search (Anthropic's side).
    pub search: bool,
    /// `WebFetch`: the CLI fetches the URL itself, from this host.
    pub fetch: bool,
    /// At most this many WebSearch calls in the run
    /// (`CLAUDE_CODE_MAX_WEB_SEARCHES_PER_SESSION`; each call may run several searches
    /// on the API's side).
    pub max_searches: Option<u32>,
    /// The egress proxy every connection of a fetching run goes through (`http://…`):
    /// it refuses loopback, private and link-local destinations. A fetching run without
    /// one is never started.
    pub fetch_proxy: Option<String>,
    /// The egress proxy goes on through the operator's proxy: the run's API traffic goes
    /// to it too (over `https://`; a plain `http://` API is reached directly), so that it
    /// keeps going through the operator's proxy.
    pub api_through_proxy: bool,
}

impl WebTools {
    /// The CLI tool names, in a fixed order (`--tools`, `--allowedTools`).
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.search {
            out.push("WebSearch");
        }
        if self.fetch {
            out.push("WebFetch");
        }
        out
    }
}

impl RunOptions {
    /// The flags these options add to the argv, in a fixed order.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(schema) = &self.json_schema {
            out.push("--json-schema".to_string());
            out.push(schema.clone());
        }
        if let Some(e) = self.effort {
            out.push("--effort".to_string());
            out.push(e.as_str().to_string());
        }
        match self.thinking {
            Some(Thinking::Disabled) => out.extend(["--thinking".into(), "disabled".into()]),
            Some(Thinking::Adaptive) => out.extend(["--thinking".into(), "adaptive".into()]),
            Some(Thinking::Budget(n)) => {
                out.extend(["--max-thinking-tokens".into(), n.to_string()])
            }
            None => {}
        }
        if let Some(d) = self.thinking_display {
            out.push("--thinking-display".to_string());
            out.push(d.to_string());
        }
        out
    }

    /// The environment these options add to the run's process. `api_base` is the
    /// run's `ANTHROPIC_BASE_URL` (None: the CLI's default). Everything goes to the fetch
    /// proxy (`HTTPS_PROXY`, `HTTP_PROXY`); `NO_PROXY` replaces the operator's (whose
    /// hosts a fetch must not reach directly) and names only the API, reached directly,
    /// unless the fetch proxy goes on through the operator's proxy: then an `https://`
    /// API is tunnelled through both (the CLI's API client sends `CONNECT` for it) and
    /// `NO_PROXY` is empty. (A plain `http://` API would be sent as absolute-form requests,
    /// which the fetch proxy does not forward: it stays direct.)
    pub fn env(&self, api_base: Option<&str>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(web) = &self.web else {
            return out;
        };
        if let Some(n) = web.max_searches.filter(|_| web.search) {
            out.push((
                "CLAUDE_CODE_MAX_WEB_SEARCHES_PER_SESSION".to_string(),
                n.to_string(),
            ));
        }
        if !web.fetch {
            out.push(("CLAUDE_CODE_DISABLE_WEB_FETCH".to_string(), "1".to_string()));
        }
        if let Some(proxy) = web.fetch_proxy.as_deref().filter(|_| web.fetch) {
            for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                out.push((k.to_string(), proxy.to_string()));
            }
            let plain_http = api_base.is_some_and(|b| {
                b.get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            });
            let direct = if web.api_through_proxy && !plain_http {
                String::new()
            } else {
                api_base
                    .and_then(api_host_port)
                    .unwrap_or_else(|| "api.anthropic.com".to_string())
            };
            for k in ["NO_PROXY", "no_proxy"] {
                out.push((k.to_string(), direct.clone()));
            }
        }
        out
    }

    pub fn is_default(&self) -> bool {
        *self == RunOptions::default()
    }
}

/// `host:port` of a base URL (`http://127.0.0.1:8080/x` → `127.0.0.1:8080`; the scheme's
/// port when none is given), for `NO_PROXY`.
pub(crate) fn api_host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        Some(authority.to_string())
    } else {
        let port = if scheme.eq_ignore_ascii_case("http") {
            80
        } else {
            443
        };
        Some(format!("{authority}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_env_bounds_searches_and_routes_fetches_through_the_proxy() {
        let o = RunOptions {
            web: Some(WebTools {
                search: true,
                fetch: true,
                max_searches: Some(2),
                fetch_proxy: Some("http://127.0.0.1:9".into()),
                api_through_proxy: false,
            }),
            ..RunOptions::default()
        };
        let env = o.env(Some("http://127.0.0.1:8080/s/ok"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CLAUDE_CODE_MAX_WEB_SEARCHES_PER_SESSION"), Some("2"));
        assert_eq!(get("HTTPS_PROXY"), Some("http://127.0.0.1:9"));
        assert_eq!(get("NO_PROXY"), Some("127.0.0.1:8080"));
        assert_eq!(get("CLAUDE_CODE_DISABLE_WEB_FETCH"), None);
        assert_eq!(
            o.env(None)
                .iter()
                .find(|(n, _)| n == "NO_PROXY")
                .map(|(_, v)| v.as_str()),
            Some("api.anthropic.com")
        );
        // Behind the operator's proxy an https API goes through the fetch proxy too.
        let mut through = o.clone();
        if let Some(w) = through.web.as_mut() {
            w.api_through_proxy = true;
        }
        let no_proxy = |env: Vec<(String, String)>| {
            env.into_iter()
                .find(|(n, _)| n == "NO_PROXY")
                .map(|(_, v)| v)
        };
        assert_eq!(
            no_proxy(through.env(Some("https://api.example.com"))).as_deref(),
            Some("")
        );
        assert_eq!(no_proxy(through.env(None)).as_deref(), Some(""));
        assert_eq!(
            no_proxy(through.env(Some("http://127.0.0.1:8080"))).as_deref(),
            Some("127.0.0.1:8080")
        );
        let search_only = RunOptions {
            web: Some(WebTools {
                search: true,
                ..WebTools::default()
            }),
            ..RunOptions::default()
        };
        let env = search_only.env(None);
        assert!(env.iter().all(|(k, _)| !k.ends_with("PROXY")), "{env:?}");
        assert!(env
            .iter()
            .any(|(k, v)| k == "CLAUDE_CODE_DISABLE_WEB_FETCH" && v == "1"));
        assert!(RunOptions::default().env(None).is_empty());
        assert_eq!(
            api_host_port("https://api.example.com/v1").as_deref(),
            Some("api.example.com:443")
        );
        assert_eq!(
            api_host_port("http://[::1]:81").as_deref(),
            Some("[::1]:81")
        );
    }
}
