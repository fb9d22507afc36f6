//! Per-key limits, checked before anything runs: requests running at once, requests per
//! UTC minute, and tokens per UTC minute and day (as the answers' usage reported them; a
//! request may overshoot once, since its size is known only when it ends).
//!
//! Windows are fixed (each UTC minute, each UTC day), so a key's remaining budget and its
//! reset time are plain numbers for the rate-limit headers clients read. Counters live in
//! this process; they are kept per key name, so a reload that changes a key's limits keeps
//! what it already used. With a state store the cluster's counters (`store::counters`)
//! decide as well, and [`Limiter::observe`] takes their numbers in; these counters alone
//! decide when the store does not answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::keys::{Key, Limits};

/// Counters of one key.
#[derive(Debug, Default, Clone)]
struct Counters {
    in_flight: u64,
    /// The UTC minute (`unix / 60`) the per-minute counters are for.
    minute: i64,
    requests_minute: u64,
    tokens_minute: u64,
    /// The UTC day (`unix / 86400`) `tokens_day` is for.
    day: i64,
    tokens_day: u64,
}

impl Counters {
    fn roll(&mut self, now: i64) {
        let (minute, day) = (now.div_euclid(60), now.div_euclid(86_400));
        if minute != self.minute {
            self.minute = minute;
            self.requests_minute = 0;
            self.tokens_minute = 0;
        }
        if day != self.day {
            self.day = day;
            self.tokens_day = 0;
        }
    }
}

/// The limiter of every key.
#[derive(Debug, Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, Counters>>,
    /// Per account: the tokens its answers reported in its current 5-hour window, in all
    /// and per key (`limits.window_share`).
    windows: Mutex<HashMap<String, WindowTally>>,
}

/// The tokens of one account's current 5-hour window.
#[derive(Debug, Default)]
struct WindowTally {
    /// The window's reset (Unix seconds) the counts are for.
    resets_at: u64,
    total: u64,
    keys: HashMap<String, u64>,
}

/// Accounts whose 5-hour window are tallied (bounded like the accounts themselves).
const WINDOW_ACCOUNTS_MAX: usize = 256;
/// Keys tallied per account window.
const WINDOW_KEYS_MAX: usize = 4096;
/// Resets this close (seconds) are the same window (the CLI's clock may round).
const SAME_WINDOW_SLACK: u64 = 120;

/// One account's 5-hour window as last reported, for [`Limiter::window_share_refusal`].
#[derive(Debug, Clone, PartialEq)]
pub struct AccountWindow {
    pub account: String,
    /// 0-1.
    pub utilization: f64,
    /// Unix seconds.
    pub resets_at: Option<u64>,
}

/// Why a request was refused: which limit, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `concurrent`, `requests_per_minute`, `tokens_per_minute`, `tokens_per_day` or
    /// `window_share`.
    pub limit: &'static str,
    pub message: String,
    /// Seconds until the limit has room again (at least 1).
    pub retry_after: u64,
}

/// A request admitted under a key with a concurrency limit: its slot is given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut keys = self.limiter.lock();
        if let Some(c) = keys.get_mut(&self.key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

/// What the rate-limit headers say about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// (limit, remaining, seconds to reset) of requests per minute.
    pub requests: Option<(u64, u64, u64)>,
    /// (limit, remaining, seconds to reset) of the tightest token limit.
    pub tokens: Option<(u64, u64, u64)>,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counters>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request of `key` at `now` (Unix seconds) or says which limit refuses it.
    /// The request counts against `requests_per_minute` once admitted; its permit (when
    /// the key has a concurrency limit) must live as long as the request.
    pub fn admit(self: &Arc<Self>, key: &Key, now: i64) -> Result<Option<Permit>, Refusal> {
        let l = &key.limits;
        if !l.any() {
            return Ok(None);
        }
        let mut keys = self.lock();
        let c = keys.entry(key.name.clone()).or_default();
        c.roll(now);
        let to_minute = (60 - now.rem_euclid(60)).max(1) as u64;
        let to_day = (86_400 - now.rem_euclid(86_400)).max(1) as u64;
        if let Some(max) = l.concurrent {
            if c.in_flight >= max {
                return Err(Refusal {
                    limit: "concurrent",
                    message: format!(
                        "This key may run {max} request(s) at once; wait for one to finish."
                    ),
                    retry_after: 1,
                });
            }
        }
        if let Some(max) = l.requests_per_minute {
            if c.requests_minute >= max {
                return Err(Refusal {
                    limit: "requests_per_minute",
                    message: format!("This key's limit of {max} requests per minute is reached."),
                    retry_after: to_minute,
                });
            }
        }
        if let Some(max) = l.tokens_per_minute {
            if c.tokens_minute >= max {
                return Err(Refusal {
                    limit: "tokens_per_minute",
                    message: format!("This key's limit of {max} tokens per minute is reached."),
                    retry_after: to_minute,
                });
            }
        }
        if let Some(max) = l.tokens_per_day {
            if c.tokens_day >= max {
                return Err(Refusal {
                    limit: "tokens_per_day",
                    message: format!("This key's limit of {max} tokens per day is reached."),
                    retry_after: to_day,
                });
            }
        }
        c.requests_minute += 1;
        if l.concurrent.is_some() {
            c.in_flight += 1;
            return Ok(Some(Permit {
                limiter: Arc::clone(self),
                key: key.name.clone(),
            }));
        }
        Ok(None)
    }

    /// Counts the tokens an answer of `key` reported, at `now`.
    pub fn add_tokens(&self, key: &str, tokens: u64, now: i64) {
        if tokens == 0 {
            return;
        }
        let mut keys = self.lock();
        let c = keys.entry(key.to_string()).or_default();
        c.roll(now);
        c.tokens_minute = c.tokens_minute.saturating_add(tokens);
        c.tokens_day = c.tokens_day.saturating_add(tokens);
    }

    /// Counts `tokens` of an answer on `account` (of `key`, None: no key) against the
    /// account's 5-hour window that resets at `resets_at`; a new reset starts a new
    /// window.
    pub fn add_window_tokens(&self, account: &str, key: Option<&str>, tokens: u64, resets_at: u64) {
        if tokens == 0 {
            return;
        }
        let mut all = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(account) && all.len() >= WINDOW_ACCOUNTS_MAX {
            return;
        }
        let t = all.entry(account.to_string()).or_default();
        if t.resets_at.abs_diff(resets_at) > SAME_WINDOW_SLACK {
            *t = WindowTally {
                resets_at,
                ..WindowTally::default()
            };
        }
        t.total = t.total.saturating_add(tokens);
        if let Some(key) = key {
            if t.keys.contains_key(key) || t.keys.len() < WINDOW_KEYS_MAX {
                let n = t.keys.entry(key.to_string()).or_default();
                *n = n.saturating_add(tokens);
            }
        }
    }

    /// The share (0-1) of `account`'s 5-hour window `key` used: its part of the tokens
    /// ccgate saw on the account in the window times the window's utilization.
    pub fn window_share(&self, key: &str, window: &AccountWindow, now: u64) -> f64 {
        let all = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = all.get(&window.account) else {
            return 0.0;
        };
        let current = window
            .resets_at
            .is_none_or(|r| r > now && t.resets_at.abs_diff(r) <= SAME_WINDOW_SLACK);
        if !current || t.total == 0 {
            return 0.0;
        }
        let mine = t.keys.get(key).copied().unwrap_or(0);
        mine as f64 / t.total as f64 * window.utilization
    }

    /// `limits.window_share`: refused when `key` has used its share of the 5-hour window
    /// of every account it may run on (`windows`, the ones that reported a window);
    /// `retry_after` counts down to the earliest of those windows' resets.
    pub fn window_share_refusal(
        &self,
        key: &Key,
        windows: &[AccountWindow],
        now: u64,
    ) -> Option<Refusal> {
        let share = key.limits.window_share?;
        if windows.is_empty() {
            return None;
        }
        let mut earliest: Option<u64> = None;
        for w in windows {
            if self.window_share(&key.name, w, now) < share {
                return None;
            }
            if let Some(r) = w.resets_at {
                earliest = Some(earliest.map_or(r, |e| e.min(r)));
            }
        }
        Some(Refusal {
            limit: "window_share",
            message: format!(
                "This key's share of its account's 5-hour usage window ({}%) is used up.",
                (share * 1000.0).round() / 10.0
            ),
            retry_after: earliest.map_or(3600, |r| r.saturating_sub(now).max(1)),
        })
    }

    /// What is left of `key`'s limits at `now`, for the rate-limit headers.
    pub fn budget(&self, key: &str, limits: &Limits, now: i64) -> Budget {
        let mut keys = self.lock();
        let c = keys.entry(key.to_string()).or_default();
        c.roll(now);
        let to_minute = (60 - now.rem_euclid(60)).max(1) as u64;
        let to_day = (86_400 - now.rem_euclid(86_400)).max(1) as u64;
        let requests = limits
            .requests_per_minute
            .map(|max| (max, max.saturating_sub(c.requests_minute), to_minute));
        let minute = limits
            .tokens_per_minute
            .map(|max| (max, max.saturating_sub(c.tokens_minute), to_minute));
        let day = limits
            .tokens_per_day
            .map(|max| (max, max.saturating_sub(c.tokens_day), to_day));
        // The tightest token limit is the one a client must heed.
        let tokens = match (minute, day) {
            (Some(m), Some(d)) => Some(if d.1 < m.1 { d } else { m }),
            (m, d) => m.or(d),
        };
        Budget { requests, tokens }
    }

    /// Takes in what the shared store counted for `key` across replicas at `now` (each
    /// counter becomes the larger of the two), so the rate-limit headers show the
    /// cluster's numbers and a fallback to this replica alone starts from them.
    pub fn observe(
        &self,
        key: &str,
        requests_minute: u64,
        tokens_minute: u64,
        tokens_day: u64,
        now: i64,
    ) {
        let mut keys = self.lock();
        let c = keys.entry(key.to_string()).or_default();
        c.roll(now);
        c.requests_minute = c.requests_minute.max(requests_minute);
        c.tokens_minute = c.tokens_minute.max(tokens_minute);
        c.tokens_day = c.tokens_day.max(tokens_day);
    }

    /// In-flight requests, requests and tokens this minute, tokens today of `key`.
    pub fn usage(&self, key: &str, now: i64) -> (u64, u64, u64, u64) {
        let mut keys = self.lock();
        let Some(c) = keys.get_mut(key) else {
            return (0, 0, 0, 0);
        };
        c.roll(now);
        (
            c.in_flight,
            c.requests_minute,
            c.tokens_minute,
            c.tokens_day,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limits: Limits) -> Key {
        let text = format!(
            "keys:\n  - name: k\n    sha256: {}\n",
            crate::rules::sha256_hex(b"k")
        );
        let set = crate::keys::compile_keys(&text, "t", &[], &[], 0).unwrap();
        let mut k = (*set.keys()[0]).clone();
        k.limits = limits;
        k
    }

    #[test]
    fn concurrency_requests_and_tokens() {
        let l = Arc::new(Limiter::default());
        let k = key(Limits {
            concurrent: Some(1),
            requests_per_minute: Some(2),
            tokens_per_minute: Some(100),
            tokens_per_day: Some(150),
            window_share: None,
        });
        let now = 1_800_000_010;
        let p = l.admit(&k, now).unwrap();
        assert_eq!(l.admit(&k, now).unwrap_err().limit, "concurrent");
        drop(p);
        l.add_tokens("k", 120, now);
        // Over the minute's tokens: refused until the minute ends.
        let r = l.admit(&k, now).unwrap_err();
        assert_eq!((r.limit, r.retry_after), ("tokens_per_minute", 50));
        // Next minute: the day's budget (150) still has 30.
        let later = now + 60;
        let _p = l.admit(&k, later).unwrap();
        let b = l.budget("k", &k.limits, later);
        assert_eq!(b.requests, Some((2, 1, 50)));
        assert_eq!(b.tokens.map(|t| (t.0, t.1)), Some((150, 30)));
    }

    #[test]
    fn window_share_is_the_keys_part_of_the_tokens_times_the_utilization() {
        let l = Arc::new(Limiter::default());
        let k = key(Limits {
            window_share: Some(0.25),
            ..Limits::default()
        });
        let now = 1_800_000_000;
        let reset = now + 3600;
        let w = |u: f64| AccountWindow {
            account: "seat".into(),
            utilization: u,
            resets_at: Some(reset),
        };
        // Nothing seen yet: 0.
        assert_eq!(l.window_share("k", &w(0.9), now), 0.0);
        l.add_window_tokens("seat", Some("k"), 300, reset);
        l.add_window_tokens("seat", Some("other"), 600, reset + 30);
        l.add_window_tokens("seat", None, 100, reset);
        // 300 of 1000 tokens at 60 %: 18 % of the window.
        assert!((l.window_share("k", &w(0.6), now) - 0.18).abs() < 1e-9);
        assert_eq!(l.window_share_refusal(&k, &[w(0.6)], now), None);
        // At 90 %: 27 % ≥ 25 %: refused until the window resets.
        let r = l.window_share_refusal(&k, &[w(0.9)], now).unwrap();
        assert_eq!((r.limit, r.retry_after), ("window_share", 3600));
        // A second account where the key is under its share: admitted.
        let other = AccountWindow {
            account: "seat2".into(),
            utilization: 0.9,
            resets_at: Some(reset),
        };
        assert_eq!(l.window_share_refusal(&k, &[w(0.9), other], now), None);
        // A new window (another reset) starts from zero.
        l.add_window_tokens("seat", Some("other"), 10, reset + 18_000);
        let next = AccountWindow {
            resets_at: Some(reset + 18_000),
            ..w(0.9)
        };
        assert_eq!(l.window_share("k", &next, now), 0.0);
        // No window reported: nothing to enforce.
        assert_eq!(l.window_share_refusal(&k, &[], now), None);
    }

    #[test]
    fn requests_per_minute() {
        let l = Arc::new(Limiter::default());
        let k = key(Limits {
            requests_per_minute: Some(1),
            ..Limits::default()
        });
        assert!(l.admit(&k, 120).unwrap().is_none());
        let r = l.admit(&k, 130).unwrap_err();
        assert_eq!((r.limit, r.retry_after), ("requests_per_minute", 50));
        assert!(l.admit(&k, 180).is_ok());
    }
}
