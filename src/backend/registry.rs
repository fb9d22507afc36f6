//! The bookkeeping of parked CLI processes (pure: no processes, no tasks, no clock of its
//! own; every call that needs the time is given `now`, so tests drive a fake clock).
//!
//! A parked process waits for input: a **pre-warmed** one for a first turn, a **kept** one
//! for its conversation's next turn, a **held** run for the results of the client's tool
//! calls. [`Registry`] holds the three kinds in one list in order of parking (the front is
//! the least recently parked: an entry is taken out when used, so that is the LRU order),
//! under one key type ([`Fingerprint`]), each owned by a tenant (kept and held: the digest
//! of the client's API key; pre-warmed: the account it was spawned for) and, through its
//! key, an account.
//!
//! Policy, in one place:
//! - **Caps.** Per kind, a total cap and a per-tenant cap. A tenant at its own cap gives
//!   up its own oldest entry of that kind. At the total cap, the entry that goes is the
//!   oldest of the tenant holding the most entries of that kind (the parking tenant's
//!   own on a tie): one key's flood evicts only its own entries while another key holds
//!   fewer.
//! - **One entry per key and kind** for kept and held processes: parking under a key
//!   already parked replaces it. Pre-warmed processes are interchangeable: any number
//!   share a key (the account and the spawn flags), and a take hands out the oldest.
//! - **Expiry.** An entry parked longer than its kind's timeout is expired
//!   ([`Registry::expire`]); [`Registry::next_expiry`] says when to look next.
//! - **Eviction for a slot** ([`Registry::evict_for_slot`]): pre-warmed, then kept, then
//!   held, oldest first (a pre-warmed process costs only its start-up; a kept one costs its
//!   conversation a respawn; a held run the same, plus a re-played tool round).
//! - **Closing** refuses new entries for good and hands every entry back to be ended; one
//!   kind can be closed alone ([`Registry::close_kind`]: the pool's end).
//!
//! The caller ends what comes out (each kind has its own end path, see `parked.rs`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::present::Fingerprint;

/// What a parked process waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A first turn (the pre-warmed pool).
    Prewarmed,
    /// Its conversation's next turn.
    Kept,
    /// The client's tool results.
    Held,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Prewarmed => 0,
            Kind::Kept => 1,
            Kind::Held => 2,
        }
    }

    /// Whether a key holds at most one entry of this kind (a conversation is in one
    /// process; pre-warmed processes are interchangeable).
    fn one_per_key(self) -> bool {
        !matches!(self, Kind::Prewarmed)
    }

    /// The order in which [`Registry::evict_for_slot`] gives entries up.
    const EVICTION_ORDER: [Kind; 3] = [Kind::Prewarmed, Kind::Kept, Kind::Held];
}

/// The bounds of one kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Entries of this kind at once (0: the kind is off).
    pub(super) cap: usize,
    /// Entries of this kind one tenant may hold at once.
    pub(super) per_tenant: usize,
    /// How long an entry may stay parked.
    pub(super) timeout: Duration,
}

/// One parked entry.
#[derive(Debug)]
pub(super) struct Entry<V> {
    pub(super) id: u64,
    pub(super) kind: Kind,
    pub(super) key: Fingerprint,
    pub(super) tenant: String,
    pub(super) since: Instant,
    pub(super) value: V,
}

fn fix(l: Limits) -> Limits {
    Limits {
        per_tenant: l.per_tenant.clamp(1, l.cap.max(1)),
        ..l
    }
}

/// The result of [`Registry::park`].
#[derive(Debug)]
pub(super) enum Parked<V> {
    /// Parked under this id; these entries went to make room.
    Yes { id: u64, ended: Vec<Entry<V>> },
    /// Not parked (the kind is off, or the registry is closed): end it.
    Refused(V),
}

/// Pre-warmed, kept and held processes, in order of parking.
#[derive(Debug)]
pub(super) struct Registry<V> {
    limits: [Limits; 3],
    entries: VecDeque<Entry<V>>,
    next_id: u64,
    closed: bool,
}

impl<V> Registry<V> {
    /// A registry for kept and held processes (pre-warmed ones are off until
    /// [`Registry::with_prewarmed`]).
    pub(super) fn new(kept: Limits, held: Limits) -> Registry<V> {
        let off = Limits {
            cap: 0,
            per_tenant: 0,
            timeout: Duration::ZERO,
        };
        Registry {
            limits: [fix(off), fix(kept), fix(held)],
            entries: VecDeque::new(),
            next_id: 1,
            closed: false,
        }
    }

    /// Takes pre-warmed processes too, within `limits`.
    pub(super) fn with_prewarmed(mut self, limits: Limits) -> Registry<V> {
        self.limits[Kind::Prewarmed.index()] = fix(limits);
        self
    }

    pub(super) fn limits(&self, kind: Kind) -> &Limits {
        &self.limits[kind.index()]
    }

    /// Whether entries of `kind` may be parked at all.
    pub(super) fn accepts(&self, kind: Kind) -> bool {
        !self.closed && self.limits(kind).cap > 0
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Entries of `kind`.
    pub(super) fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }

    /// Entries of `kind` owned by `tenant`.
    pub(super) fn count_of(&self, kind: Kind, tenant: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == kind && e.tenant == tenant)
            .count()
    }

    /// Parks `value` as `kind` under `key` for `tenant` at `now`, ending what the caps say
    /// must go (see the module docs).
    pub(super) fn park(
        &mut self,
        kind: Kind,
        key: Fingerprint,
        tenant: &str,
        value: V,
        now: Instant,
    ) -> Parked<V> {
        if !self.accepts(kind) {
            return Parked::Refused(value);
        }
        let limits = *self.limits(kind);
        let mut ended = Vec::new();
        if kind.one_per_key() {
            if let Some(i) = self.position(|e| e.kind == kind && e.key == key) {
                ended.extend(self.entries.remove(i));
            }
        }
        while self.count_of(kind, tenant) >= limits.per_tenant {
            let Some(i) = self.position(|e| e.kind == kind && e.tenant == tenant) else {
                break;
            };
            ended.extend(self.entries.remove(i));
        }
        while self.count(kind) >= limits.cap {
            let Some(i) = self.fairest_victim(kind, tenant) else {
                break;
            };
            ended.extend(self.entries.remove(i));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            kind,
            key,
            tenant: tenant.to_string(),
            since: now,
            value,
        });
        Parked::Yes { id, ended }
    }

    /// The oldest entry of `kind` of the tenant holding the most of them (`tenant`'s own
    /// on a tie).
    fn fairest_victim(&self, kind: Kind, tenant: &str) -> Option<usize> {
        let most = self
            .entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| self.count_of(kind, &e.tenant))
            .max()?;
        let own = self.count_of(kind, tenant);
        let owner = |e: &Entry<V>| {
            if own == most {
                e.tenant == tenant
            } else {
                self.count_of(kind, &e.tenant) == most
            }
        };
        self.position(|e| e.kind == kind && owner(e))
    }

    fn position(&self, f: impl Fn(&Entry<V>) -> bool) -> Option<usize> {
        self.entries.iter().position(f)
    }

    /// Takes the entry of `kind` parked under `key` (the oldest, for pre-warmed ones).
    pub(super) fn take(&mut self, kind: Kind, key: &Fingerprint) -> Option<Entry<V>> {
        let i = self.position(|e| e.kind == kind && e.key == *key)?;
        self.entries.remove(i)
    }

    /// Takes the entries of `kind` matching `f` (oldest first).
    pub(super) fn take_where(
        &mut self,
        kind: Kind,
        f: impl Fn(&Entry<V>) -> bool,
    ) -> Vec<Entry<V>> {
        let (out, keep) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.kind == kind && f(e));
        self.entries = keep;
        out.into()
    }

    /// Takes the entry with this id (whatever its kind), if it is still parked.
    pub(super) fn take_id(&mut self, id: u64) -> Option<Entry<V>> {
        let i = self.position(|e| e.id == id)?;
        self.entries.remove(i)
    }

    /// Takes every entry whose kind's timeout has passed at `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Entry<V>> {
        let limits = self.limits;
        self.take_all(|e| now.saturating_duration_since(e.since) >= limits[e.kind.index()].timeout)
    }

    /// When the next entry expires (None: nothing is parked).
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| e.since.checked_add(self.limits(e.kind).timeout))
            .min()
    }

    /// The entry to end so that a request need not wait for a slot: the oldest
    /// pre-warmed one, else the oldest kept one, else the oldest held one.
    pub(super) fn evict_for_slot(&mut self) -> Option<Entry<V>> {
        let i = Kind::EVICTION_ORDER
            .iter()
            .find_map(|&k| self.position(|e| e.kind == k))?;
        self.entries.remove(i)
    }

    /// Takes every entry matching `f`.
    pub(super) fn take_all(&mut self, f: impl Fn(&Entry<V>) -> bool) -> Vec<Entry<V>> {
        let (out, keep) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| f(e));
        self.entries = keep;
        out.into()
    }

    /// Refuses new entries of `kind` for good and takes every entry of it.
    pub(super) fn close_kind(&mut self, kind: Kind) -> Vec<Entry<V>> {
        self.limits[kind.index()].cap = 0;
        self.take_where(kind, |_| true)
    }

    /// Every entry, oldest first, to inspect the parked values in place.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry<V>> {
        self.entries.iter_mut()
    }

    /// Refuses new entries for good (what is parked stays).
    pub(super) fn refuse(&mut self) {
        self.closed = true;
    }

    /// Refuses new entries for good and takes every entry.
    pub(super) fn close(&mut self) -> Vec<Entry<V>> {
        self.refuse();
        self.entries.drain(..).collect()
    }

    /// Every entry, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry<V>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn limits(cap: usize, per_tenant: usize, secs: u64) -> Limits {
        Limits {
            cap,
            per_tenant,
            timeout: Duration::from_secs(secs),
        }
    }

    fn registry() -> Registry<&'static str> {
        Registry::new(limits(3, 3, 100), limits(3, 2, 10))
    }

    fn parked<V: std::fmt::Debug>(p: Parked<V>) -> Vec<Entry<V>> {
        match p {
            Parked::Yes { ended, .. } => ended,
            Parked::Refused(v) => panic!("refused {v:?}"),
        }
    }

    fn values<V: Copy>(r: &Registry<V>) -> Vec<V> {
        r.iter().map(|e| e.value).collect()
    }

    #[test]
    fn park_and_take_by_kind_and_key() {
        let mut r = registry();
        let t0 = Instant::now();
        assert!(parked(r.park(Kind::Kept, key(1), "a", "kept1", t0)).is_empty());
        assert!(parked(r.park(Kind::Held, key(1), "a", "held1", t0)).is_empty());
        assert!(r.take(Kind::Held, &key(2)).is_none());
        assert_eq!(r.take(Kind::Held, &key(1)).unwrap().value, "held1");
        assert!(r.take(Kind::Held, &key(1)).is_none(), "taken once");
        assert_eq!(r.take(Kind::Kept, &key(1)).unwrap().value, "kept1");
        assert_eq!(r.count(Kind::Kept), 0);
    }

    #[test]
    fn the_same_key_parked_again_replaces_the_first() {
        let mut r = registry();
        let t0 = Instant::now();
        parked(r.park(Kind::Held, key(1), "a", "first", t0));
        let ended = parked(r.park(Kind::Held, key(1), "a", "second", t0));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), ["first"]);
        assert_eq!(values(&r), ["second"]);
    }

    #[test]
    fn the_total_cap_ends_the_oldest_of_the_largest_tenant() {
        let mut r = registry();
        let t0 = Instant::now();
        parked(r.park(Kind::Kept, key(1), "b", "b1", t0));
        parked(r.park(Kind::Kept, key(2), "a", "a1", t0));
        parked(r.park(Kind::Kept, key(3), "a", "a2", t0));
        // Full (3): "a" holds the most, so its oldest goes, not b's older one.
        let ended = parked(r.park(Kind::Kept, key(4), "c", "c1", t0));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), ["a1"]);
        assert_eq!(values(&r), ["b1", "a2", "c1"]);
        // A tie (each holds one): the parking tenant's own oldest goes.
        let ended = parked(r.park(Kind::Kept, key(5), "c", "c2", t0));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), ["c1"]);
        // A tie without the parker among the largest is impossible here; the oldest of
        // the largest goes otherwise.
        assert_eq!(values(&r), ["b1", "a2", "c2"]);
    }

    #[test]
    fn one_tenants_flood_never_evicts_another_tenants_entry() {
        let mut r: Registry<u32> = Registry::new(limits(0, 0, 1), limits(3, 3, 10));
        let t0 = Instant::now();
        parked(r.park(Kind::Held, key(0), "victim", 0, t0));
        for n in 1..=50u8 {
            for e in parked(r.park(Kind::Held, key(n), "flood", u32::from(n), t0)) {
                assert_eq!(e.tenant, "flood", "only the flooder's own entries go");
            }
        }
        assert_eq!(r.count_of(Kind::Held, "victim"), 1);
        assert_eq!(r.count_of(Kind::Held, "flood"), 2);
    }

    #[test]
    fn the_per_tenant_cap_ends_the_tenants_own_oldest() {
        let mut r = registry();
        let t0 = Instant::now();
        parked(r.park(Kind::Held, key(1), "a", "a1", t0));
        parked(r.park(Kind::Held, key(2), "a", "a2", t0));
        // "a" may hold 2 held runs: its third ends its first, with room left in total.
        let ended = parked(r.park(Kind::Held, key(3), "a", "a3", t0));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), ["a1"]);
        assert_eq!(r.count(Kind::Held), 2);
        parked(r.park(Kind::Held, key(4), "b", "b1", t0));
        assert_eq!(values(&r), ["a2", "a3", "b1"]);
    }

    #[test]
    fn kinds_have_their_own_caps() {
        let mut r: Registry<u8> = Registry::new(limits(1, 1, 100), limits(2, 2, 10));
        let t0 = Instant::now();
        parked(r.park(Kind::Held, key(1), "a", 1, t0));
        parked(r.park(Kind::Held, key(2), "a", 2, t0));
        let ended = parked(r.park(Kind::Kept, key(3), "a", 3, t0));
        assert!(
            ended.is_empty(),
            "a kept entry never ends a held one for a cap"
        );
        let ended = parked(r.park(Kind::Kept, key(4), "a", 4, t0));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn expiry_follows_each_kinds_timeout_on_a_fake_clock() {
        let mut r = registry();
        let t0 = Instant::now();
        parked(r.park(Kind::Kept, key(1), "a", "kept", t0));
        parked(r.park(Kind::Held, key(2), "a", "held", t0 + Duration::from_secs(5)));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(15)));
        assert!(r.expire(t0 + Duration::from_secs(14)).is_empty());
        let gone = r.expire(t0 + Duration::from_secs(15));
        assert_eq!(gone.iter().map(|e| e.value).collect::<Vec<_>>(), ["held"]);
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(100)));
        let gone = r.expire(t0 + Duration::from_secs(100));
        assert_eq!(gone.iter().map(|e| e.value).collect::<Vec<_>>(), ["kept"]);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn eviction_for_a_slot_takes_prewarmed_then_kept_then_held_oldest_first() {
        let mut r = registry().with_prewarmed(limits(3, 3, 50));
        let t0 = Instant::now();
        parked(r.park(Kind::Held, key(1), "a", "held-old", t0));
        parked(r.park(Kind::Kept, key(2), "a", "kept-old", t0));
        parked(r.park(Kind::Prewarmed, key(9), "", "warm-old", t0));
        parked(r.park(Kind::Held, key(3), "b", "held-new", t0));
        parked(r.park(Kind::Kept, key(4), "b", "kept-new", t0));
        parked(r.park(Kind::Prewarmed, key(9), "", "warm-new", t0));
        let order: Vec<_> = std::iter::from_fn(|| r.evict_for_slot())
            .map(|e| e.value)
            .collect();
        assert_eq!(
            order,
            ["warm-old", "warm-new", "kept-old", "kept-new", "held-old", "held-new"]
        );
    }

    #[test]
    fn prewarmed_processes_share_a_key_and_are_taken_oldest_first() {
        let mut r = registry().with_prewarmed(limits(3, 3, 50));
        let t0 = Instant::now();
        let on = |acct: &str| key(7).on_account(Some(acct));
        assert!(parked(r.park(Kind::Prewarmed, on("x"), "x", "x1", t0)).is_empty());
        assert!(
            parked(r.park(Kind::Prewarmed, on("x"), "x", "x2", t0)).is_empty(),
            "interchangeable: a second one under the same key replaces nothing"
        );
        parked(r.park(Kind::Prewarmed, on("y"), "y", "y1", t0));
        assert_eq!(r.count(Kind::Prewarmed), 3);
        // An account only gets its own processes, the warmest (oldest) first.
        assert_eq!(r.take(Kind::Prewarmed, &on("y")).unwrap().value, "y1");
        assert!(r.take(Kind::Prewarmed, &on("y")).is_none());
        assert_eq!(r.take(Kind::Prewarmed, &on("x")).unwrap().value, "x1");
        // Nor does a kept lookup under the same key find a pre-warmed process.
        assert!(r.take(Kind::Kept, &on("x")).is_none());
        assert_eq!(values(&r), ["x2"]);
    }

    #[test]
    fn prewarmed_processes_have_a_cap_and_expire_on_their_own_timeout() {
        let mut r = registry().with_prewarmed(limits(2, 2, 30));
        let t0 = Instant::now();
        parked(r.park(Kind::Prewarmed, key(1), "", "w1", t0));
        parked(r.park(
            Kind::Prewarmed,
            key(1),
            "",
            "w2",
            t0 + Duration::from_secs(20),
        ));
        parked(r.park(Kind::Kept, key(2), "a", "k", t0));
        let ended = parked(r.park(
            Kind::Prewarmed,
            key(1),
            "",
            "w3",
            t0 + Duration::from_secs(25),
        ));
        assert_eq!(ended.iter().map(|e| e.value).collect::<Vec<_>>(), ["w1"]);
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(50)));
        let gone = r.expire(t0 + Duration::from_secs(50));
        assert_eq!(gone.iter().map(|e| e.value).collect::<Vec<_>>(), ["w2"]);
        let gone = r.expire(t0 + Duration::from_secs(55));
        assert_eq!(gone.iter().map(|e| e.value).collect::<Vec<_>>(), ["w3"]);
        assert_eq!(
            values(&r),
            ["k"],
            "kept processes live on their own timeout"
        );
    }

    #[test]
    fn the_pool_closing_drains_only_prewarmed_processes_and_refuses_more() {
        let mut r = registry().with_prewarmed(limits(3, 3, 50));
        let t0 = Instant::now();
        parked(r.park(Kind::Prewarmed, key(1), "", "w1", t0));
        parked(r.park(Kind::Kept, key(2), "a", "k", t0));
        parked(r.park(Kind::Prewarmed, key(1), "", "w2", t0));
        let drained: Vec<_> = r
            .close_kind(Kind::Prewarmed)
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert_eq!(drained, ["w1", "w2"]);
        assert!(!r.accepts(Kind::Prewarmed));
        assert!(matches!(
            r.park(Kind::Prewarmed, key(1), "", "late", t0),
            Parked::Refused("late")
        ));
        assert!(r.accepts(Kind::Kept), "the other kinds stay open");
        assert_eq!(values(&r), ["k"]);
    }

    #[test]
    fn prewarmed_processes_are_off_unless_configured() {
        let mut r = registry();
        assert!(matches!(
            r.park(Kind::Prewarmed, key(1), "", "w", Instant::now()),
            Parked::Refused("w")
        ));
    }

    #[test]
    fn closing_refuses_new_entries_and_hands_back_the_parked_ones() {
        let mut r = registry();
        let t0 = Instant::now();
        parked(r.park(Kind::Kept, key(1), "a", "k", t0));
        parked(r.park(Kind::Held, key(2), "a", "h", t0));
        let drained = r.close();
        assert_eq!(drained.len(), 2);
        assert!(matches!(
            r.park(Kind::Held, key(3), "a", "late", t0),
            Parked::Refused("late")
        ));
        assert!(!r.accepts(Kind::Kept));
    }

    #[test]
    fn a_kind_with_cap_zero_is_off() {
        let mut r: Registry<u8> = Registry::new(limits(0, 0, 1), limits(1, 1, 1));
        assert!(matches!(
            r.park(Kind::Kept, key(1), "a", 1, Instant::now()),
            Parked::Refused(1)
        ));
    }

    #[test]
    fn take_by_id_and_by_predicate() {
        let mut r = registry();
        let t0 = Instant::now();
        let Parked::Yes { id, .. } = r.park(Kind::Held, key(1), "a", "h1", t0) else {
            panic!()
        };
        parked(r.park(Kind::Held, key(2), "b", "h2", t0));
        parked(r.park(Kind::Kept, key(3), "b", "k", t0));
        assert_eq!(r.take_id(id).unwrap().value, "h1");
        assert!(r.take_id(id).is_none());
        let b: Vec<_> = r
            .take_where(Kind::Held, |e| e.tenant == "b")
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert_eq!(b, ["h2"]);
        assert_eq!(values(&r), ["k"]);
    }
}
