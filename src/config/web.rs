//! The `web:` section, and the egress proxy's route it and the environment give.

use serde::{Deserialize, Serialize};

use super::Settings;

/// The `web:` section: the CLI's own web tools, served for requests that ask for web
/// search (Anthropic `web_search_*`, Responses `web_search`, Chat `web_search_options`) or
/// web fetch (Anthropic `web_fetch_*`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Web search: the CLI asks the Messages API to search (it runs on Anthropic's side;
    /// this host fetches nothing). Off: such requests get a 400 naming `web.search`.
    pub search: bool,
    /// Web fetch: the CLI fetches a URL the model picks, from this host, through
    /// ccgate's egress proxy (no loopback, private or link-local address). Off by
    /// default: such requests get a 400 naming `web.fetch`.
    pub fetch: bool,
    /// `http://[user:password@]host:port`: the operator's proxy the egress proxy tunnels
    /// fetches (after its address check) and the fetching runs' API traffic through.
    /// Unset: `HTTPS_PROXY` / `https_proxy` of ccgate's environment, if any. ccgate's
    /// `NO_PROXY` names hosts reached directly. Only used with `fetch: true`.
    pub upstream_proxy: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            search: true,
            fetch: false,
            upstream_proxy: None,
        }
    }
}

/// Without the proxy URL (it may hold a password).
impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("search", &self.search)
            .field("fetch", &self.fetch)
            .field(
                "upstream_proxy",
                &self.upstream_proxy.as_deref().map(|u| {
                    match crate::backend::egress::UpstreamProxy::parse(u) {
                        Ok(p) => p.shown(),
                        Err(_) => "(invalid)".into(),
                    }
                }),
            )
            .finish()
    }
}

impl WebConfig {
    /// The upstream proxy of web fetches, checked: the setting, or with `fetch` on, the
    /// `HTTPS_PROXY` of ccgate's environment (what `serve` would use). Never repeats
    /// the URL (it may hold a password).
    pub fn check_route(&self) -> Result<(), String> {
        if self.upstream_proxy.is_none() && !self.fetch {
            return Ok(());
        }
        let env = |k: &str| std::env::var(k).ok();
        crate::backend::egress::EgressRoute::new(self.upstream_proxy.as_deref(), &env, &[])
            .map(|_| ())
    }
}

impl Settings {
    /// The egress proxy's route: the operator's proxy (`web.upstream_proxy`, else
    /// `HTTPS_PROXY` of ccgate's environment), `NO_PROXY`, and the API hosts the runs use
    /// (`ANTHROPIC_BASE_URL` of `cli.env`, the accounts' `env`, or ccgate's environment).
    pub fn web_route(&self) -> Result<crate::backend::egress::EgressRoute, String> {
        let bases: Vec<String> = self
            .cli
            .env
            .iter()
            .chain(self.accounts.iter().flat_map(|a| a.env.iter()))
            .filter(|(k, _)| k == "ANTHROPIC_BASE_URL")
            .map(|(_, v)| v.clone())
            .chain(std::env::var("ANTHROPIC_BASE_URL").ok())
            .collect();
        let env = |k: &str| std::env::var(k).ok();
        crate::backend::egress::EgressRoute::new(self.web.upstream_proxy.as_deref(), &env, &bases)
    }
}
