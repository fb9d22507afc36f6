//! Account state shared by replicas through the state store: cooldowns
//! (`store::cooldowns`) — a cooldown this replica's verdict set is written there, and a
//! poll applies the ones other replicas wrote (a cooldown only ever lengthens, so applying
//! one twice is harmless); plan windows (`store::account_state`) — written when observed,
//! the newest taken by the same poll; and the conversation → account map — written when
//! an answer is remembered, read when a follow-up's conversation is unknown here. A store
//! that does not answer leaves each replica with its own state, as without a store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::present::Fingerprint;
use crate::health::{Cooldown, Source};
use crate::protocol::PlanWindows;
use crate::shutdown::Shutdown;
use crate::store::{Retry, SharedCooldown, SharedWindows, Store};

use super::{Accounts, Member};

/// How long a cooldown's write is retried after transient failures (at most until the
/// cooldown ends): an outage longer than this leaves it on this replica.
const COOLDOWN_RETRY: Duration = Duration::from_secs(3600);

/// The store cooldowns are shared through, and the latest reset this replica already
/// applied or published per account: a stored cooldown is applied once, so one this
/// replica's probe ended early is not imposed again by the next poll.
pub(super) struct SharedCooldowns {
    store: Store,
    seen: Mutex<HashMap<String, u64>>,
}

impl SharedCooldowns {
    /// Records `until` for `account`; false when it was seen already.
    fn first_sight(&self, account: &str, until: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(account) {
            Some(&s) if s >= until => false,
            _ => {
                // Bounded: one entry per configured account name.
                seen.insert(account.to_string(), until);
                true
            }
        }
    }
}

impl Accounts {
    /// Shares cooldowns through `store` (once; later calls are ignored).
    pub fn attach_store(&self, store: Store) {
        let _ = self.shared.set(SharedCooldowns {
            store,
            seen: Mutex::default(),
        });
    }

    /// Runs `write` on the shared store in the background (`store::write_behind`: bounded
    /// in number and each attempt by `state.statement_timeout`; `retry` after a transient
    /// failure); nothing without a store. A write not started (too many running) is
    /// counted in `ccgate_state_writes_skipped_total{write}`; a failure is logged as a
    /// warning when `loud` (a cooldown the others then miss), else at debug.
    fn write_behind<W, F>(
        &self,
        what: &'static str,
        label: &'static str,
        member: &Member,
        loud: bool,
        retry: Retry,
        write: W,
    ) where
        W: FnMut(Store) -> F + Send + 'static,
        F: std::future::Future<Output = Result<(), crate::store::StoreError>> + Send + 'static,
    {
        let Some(sharing) = self.shared.get() else {
            return;
        };
        let account = member.name.clone();
        let started = sharing.store.write_behind(what, retry, write, move |r| {
            if let Err(e) = r {
                if loud {
                    tracing::warn!(error = %e, account = %account, "{what}: not shared with the other replicas");
                } else {
                    tracing::debug!(error = %e, account = %account, "{what}: not shared with the other replicas");
                }
            }
        });
        if !started {
            self.metrics.count_state_write_skipped(label);
            tracing::debug!(account = %member.name, "{what}: too many state store writes running; not shared");
        }
    }

    /// Writes `c` (just set on `member`) for the other replicas, in the background.
    pub(super) fn publish_cooldown(&self, member: &Member, c: &Cooldown) {
        if let Some(sharing) = self.shared.get() {
            sharing.first_sight(&member.name, c.until_unix);
        }
        let shared = SharedCooldown {
            account: member.name.clone(),
            until: c.until_unix,
            kind: c.kind.clone(),
            message: c.message.clone(),
        };
        // Retried after a transient failure (PostgreSQL down or slow) until the cooldown
        // ends, at most COOLDOWN_RETRY: a cooldown found during an outage still reaches
        // the other replicas once the store is back. Writing it late is harmless: the
        // store keeps the later of two ends.
        let left = c.until_unix.saturating_sub(crate::clock::unix_now());
        let retry = Retry::For(Duration::from_secs(left).min(COOLDOWN_RETRY));
        self.write_behind(
            "share a cooldown",
            "cooldown",
            member,
            true,
            retry,
            move |store| {
                let shared = shared.clone();
                async move {
                    let now = crate::clock::unix_now() as i64;
                    store.put_cooldown(&shared, now).await
                }
            },
        );
    }

    /// Writes `w` (observed on `member` at `at`) for the other replicas, in the background.
    pub(super) fn publish_windows(&self, member: &Member, w: &PlanWindows, at: u64) {
        let Ok(body) = serde_json::to_string(w) else {
            return;
        };
        let shared = SharedWindows {
            account: member.name.clone(),
            observed_at: at as i64,
            body,
        };
        // Not retried: the next answer or scheduled read reports newer windows anyway.
        self.write_behind(
            "share plan windows",
            "windows",
            member,
            false,
            Retry::Never,
            move |store| {
                let shared = shared.clone();
                async move { store.put_windows(&shared).await }
            },
        );
    }

    /// Writes that `member` answered the conversation `fp`, in the background.
    pub(super) fn publish_conversation(&self, fp: &Fingerprint, member: &Member) {
        let (fp, account) = (fp.hex(), member.name.clone());
        // Not retried: a follow-up that misses it runs fresh from its messages, correct
        // but maybe on another account; the answer after it writes the map again.
        self.write_behind(
            "share a conversation's account",
            "conversation",
            member,
            false,
            Retry::Never,
            move |store| {
                let (fp, account) = (fp.clone(), account.clone());
                async move {
                    let now = crate::clock::unix_now() as i64;
                    store.put_conversation_account(&fp, &account, now).await
                }
            },
        );
    }

    /// The account another replica answered `fp` on (None: none, no store, or the store
    /// did not answer within `state.statement_timeout`).
    pub(super) async fn shared_conversation_account(&self, fp: &Fingerprint) -> Option<String> {
        let store = &self.shared.get()?.store;
        let now = crate::clock::unix_now() as i64;
        store
            .bounded(
                "read a conversation's account",
                store.conversation_account(&fp.hex(), now),
            )
            .await
            .ok()
            .flatten()
    }

    /// Takes the plan windows other replicas observed when newer than this replica's.
    async fn adopt_shared_windows(&self, store: &Store) {
        let Ok(rows) = store
            .bounded("read plan windows", store.shared_windows())
            .await
        else {
            return;
        };
        for row in rows {
            let Some(member) = self.members.iter().find(|m| m.name == row.account) else {
                continue;
            };
            if let Ok(w) = serde_json::from_str::<PlanWindows>(&row.body) {
                self.adopt_windows(member, w, row.observed_at.max(0) as u64);
            }
        }
    }

    /// Applies the cooldowns (and takes the plan windows) other replicas shared, every
    /// `every`, until `shutdown`.
    pub async fn poll_shared_cooldowns(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        let Some(sharing) = self.shared.get() else {
            return;
        };
        let store = sharing.store.clone();
        if !self.configured {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            self.adopt_shared_windows(&store).await;
            let now = crate::clock::unix_now();
            let active = store
                .bounded("read cooldowns", store.active_cooldowns(now as i64))
                .await;
            let active = match active {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "shared cooldowns not read");
                    continue;
                }
            };
            for c in active {
                let Some(member) = self.members.iter().find(|m| m.name == c.account) else {
                    continue;
                };
                if !sharing.first_sight(&c.account, c.until) {
                    continue;
                }
                if member
                    .health
                    .cooldown()
                    .is_some_and(|mine| mine.until_unix >= c.until)
                {
                    continue;
                }
                let cooldown = Cooldown::new(Source::Request, &c.kind, &c.message, c.until);
                self.impose_cooldown(
                    member,
                    cooldown,
                    "account cooling down (a verdict of another replica)",
                );
            }
        }
    }
}
