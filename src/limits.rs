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
}

/// Why a request was refused: which limit, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `concurrent`, `requests_per_minute`, `tokens_per_minute` or `tokens_per_day`.
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
