//! An account's identity as the backend sees it: its name and the CLI settings its
//! processes are spawned with (the base `cli:` settings plus the account's `env`, which
//! may hold its own `CLAUDE_CONFIG_DIR`, `ANTHROPIC_API_KEY`, `CLAUDE_CODE_OAUTH_TOKEN`…).
//!
//! A run carries its account ([`super::CliRequest::account`]; `None` is the implicit
//! account of a gateway without `accounts`, spawned with the base settings). The account
//! decides the spawn environment, the directory a synthesized session is written to (its
//! `CLAUDE_CONFIG_DIR`), the key a kept conversation process is stored under and which
//! pre-warmed processes a run may take: a process never serves another account.
//!
//! The `Debug` form names the account and its variables, never their values (secrets).

use std::sync::Arc;

use super::request::CliSettings;

/// One configured account, shared by every run on it.
pub struct Account {
    name: String,
    settings: Arc<CliSettings>,
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
            settings: Arc::new(settings),
            env_keys: env.iter().map(|(k, _)| k.clone()).collect(),
        }
    }

    /// The configured name (a metric label, shown in `/v1/auth/status`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings this account's processes are spawned with.
    pub(super) fn settings(&self) -> &Arc<CliSettings> {
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
pub(super) fn name_of(account: Option<&Arc<Account>>) -> Option<&str> {
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
