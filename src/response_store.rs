//! Stored responses: what `previous_response_id` (the Responses API) refers to. An answered
//! response's whole conversation (its input messages after the earlier ones, and the
//! answer) is kept under its response id and the tenant that got it, so a follow-up naming
//! the id becomes an ordinary full conversation, which continues a kept CLI process when
//! one holds exactly it (the same fingerprint: tenant, model, system prompt, messages,
//! answer) and is presented as a synthesized session otherwise.
//!
//! The Anthropic Threads beta lives here too: a thread's conversation (its system prompt
//! as a leading system message, and its tools) under its last answer's id, found only as
//! a thread (never as a Responses id).
//!
//! A response's output items (`msg_…`, `fc_…`) are kept with it, found by id for the
//! Responses API's `item_reference` input items under the same rules.
//!
//! Rules:
//! - **Per tenant.** An id is found only by the tenant (API key digest) it was answered to;
//!   for any other key it does not exist.
//! - **Shared by replicas** when a state store is attached ([`ResponseStore::attach_store`]):
//!   each stored entry is also written to it (in the background, by the store's bounded
//!   write-behind helper, tried again for [`WRITE_RETRY`] while the store is unreachable;
//!   beyond the helper's bound an entry stays on this replica, said in a warning), and a
//!   follow-up whose id this replica does not hold
//!   is looked up there first ([`ResponseStore::hydrate`], before the request is
//!   prepared). The memory below is then this replica's cache; the store's table has the
//!   same bounds over all replicas. A store that does not answer means "not found": the
//!   client is told to send the full input.
//! - **Bounded by cost, per replica.** At most [`MAX_ENTRIES`] responses and [`MAX_BYTES`]
//!   of memory in all, counted as what the entries really hold ([`conversation_bytes`]:
//!   JSON trees at their node cost, not their text's length); a conversation larger than
//!   that is not stored. An entry unused for the idle timeout (`cli.conversation_idle_timeout`,
//!   as kept processes) is gone. Nothing survives a restart, and replicas share nothing.
//! - **Fair between tenants.** When the store is full, the entry evicted is the least
//!   recently used one of the tenant holding the most: one key's flood evicts its own
//!   responses, never another key's while it holds more than that key.
//! - Entries hold full copies: a chain of follow-ups costs its conversations' sizes, and
//!   the byte bound evicts the oldest links first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conversation::{Block, Message, RawJson};

mod codec;

/// How long a response's write to the shared store is tried again while the store is
/// unreachable: one answered during a short outage is shared once the store is back.
pub const WRITE_RETRY: Duration = Duration::from_secs(60);

/// What a request refers to in the stored state, for [`ResponseStore::hydrate`].
#[derive(Debug, Default, Clone)]
pub struct StoredRefs {
    /// Responses' `previous_response_id`.
    pub response: Option<String>,
    /// Responses' `item_reference` ids.
    pub items: Vec<String>,
    /// An Anthropic thread's `previous_message_id`.
    pub thread: Option<String>,
}

/// The most responses kept per replica.
pub const MAX_ENTRIES: usize = 1024;
/// The most conversation bytes (text, base64 attachments, tool JSON) kept per replica.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// A stored response's conversation: what a follow-up's input continues.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConversation {
    pub model: String,
    /// Every message of the conversation, the answer last (the top-level system prompt,
    /// Responses' `instructions`, is not carried over, as OpenAI's API does not).
    pub messages: Vec<Message>,
}

/// An output item of a stored response (`msg_…`, `fc_…`) as the message it stands for:
/// what a Responses `item_reference` input item names.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub id: String,
    pub message: Message,
}

struct Entry {
    id: String,
    tenant: String,
    used: Instant,
    bytes: usize,
    conversation: Arc<StoredConversation>,
    /// The response's output items, found by id with the same tenant scoping and bounds.
    items: Vec<StoredItem>,
    /// An Anthropic thread's last answer (not a Responses response): the thread's tools
    /// (the request's `tools` JSON, as text), which a `continue` does not repeat.
    thread: Option<Option<RawJson>>,
}

/// The stored responses of one replica.
pub struct ResponseStore {
    idle_timeout: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// The shared state store, when attached.
    shared: std::sync::OnceLock<crate::store::Store>,
    pending_writes: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    /// Least recently used first.
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Inner {
    /// The entry to evict: the least recently used one of the tenant holding the most
    /// (entries when the count bound is exceeded, else bytes). A key that floods the store
    /// evicts its own responses before anyone else's.
    fn fullest_tenants_oldest(&self, by_count: bool) -> Option<usize> {
        let mut held: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for e in &self.entries {
            *held.entry(e.tenant.as_str()).or_default() += if by_count { 1 } else { e.bytes };
        }
        let fullest = held.into_iter().max_by_key(|(_, n)| *n)?.0;
        self.entries.iter().position(|e| e.tenant == fullest)
    }
}

impl ResponseStore {
    pub fn new(idle_timeout: Duration) -> ResponseStore {
        ResponseStore::with_bounds(idle_timeout, MAX_ENTRIES, MAX_BYTES)
    }

    pub fn with_bounds(idle_timeout: Duration, max_entries: usize, max_bytes: usize) -> Self {
        ResponseStore {
            idle_timeout,
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
            shared: std::sync::OnceLock::new(),
            pending_writes: Arc::default(),
        }
    }

    /// Shares the stored entries through `store` (once; later calls are ignored).
    pub fn attach_store(&self, store: crate::store::Store) {
        let _ = self.shared.set(store);
    }

    /// Writes to the shared store not finished yet.
    pub fn pending_writes(&self) -> usize {
        self.pending_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bounds(&self) -> crate::store::StoredBounds {
        crate::store::StoredBounds {
            max_entries: self.max_entries as u64,
            max_bytes: self.max_bytes as u64,
            idle_ms: self.idle_timeout.as_millis().max(1) as i64,
        }
    }

    /// Writes `entry` to the shared store in the background, through the store's one
    /// bounded write-behind helper (`Store::write_behind`), tried again for up to
    /// [`WRITE_RETRY`] while the store is unreachable.
    fn write_through(&self, entry: &Entry) {
        use std::sync::atomic::Ordering;
        let Some(store) = self.shared.get() else {
            return;
        };
        let body: Arc<str> =
            codec::encode(&entry.conversation, &entry.items, entry.thread.as_ref()).into();
        let bounds = self.bounds();
        let (tenant, id, bytes): (Arc<str>, Arc<str>, u64) = (
            entry.tenant.as_str().into(),
            entry.id.as_str().into(),
            entry.bytes as u64,
        );
        let kind = if entry.thread.is_some() {
            "thread"
        } else {
            "response"
        };
        let item_ids: Arc<[String]> = entry.items.iter().map(|i| i.id.clone()).collect();
        let write = {
            let id = Arc::clone(&id);
            move |store: crate::store::Store| {
                let (tenant, id, body, item_ids) = (
                    Arc::clone(&tenant),
                    Arc::clone(&id),
                    Arc::clone(&body),
                    Arc::clone(&item_ids),
                );
                async move {
                    let row = crate::store::StoredRow {
                        tenant: &tenant,
                        kind,
                        id: &id,
                        body: &body,
                        bytes,
                        item_ids: &item_ids,
                    };
                    let now = (crate::clock::unix_now_f64() * 1000.0) as i64;
                    store.put_stored(&row, bounds, now).await
                }
            }
        };
        let pending = Arc::clone(&self.pending_writes);
        pending.fetch_add(1, Ordering::Relaxed);
        let done = {
            let (pending, id) = (Arc::clone(&pending), Arc::clone(&id));
            move |r: Result<(), crate::store::StoreError>| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, response_id = %id, "stored responses: not written to the state store; it stays on this replica");
                }
                pending.fetch_sub(1, Ordering::Relaxed);
            }
        };
        let started = store.write_behind(
            "store a response",
            crate::store::Retry::For(WRITE_RETRY),
            write,
            done,
        );
        if !started {
            pending.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                response_id = %id,
                "stored responses: too many writes to the state store waiting; this one stays on this replica"
            );
        }
    }

    /// Brings what `refs` names for `tenant` from the shared store into this replica,
    /// when it is not here already (a follow-up that landed on another replica than its
    /// answer). On PostgreSQL a miss is asked again for up to the statement timeout: the
    /// answering replica writes in the background, and its client can be quicker.
    pub async fn hydrate(&self, refs: &StoredRefs, tenant: &str) {
        let Some(store) = self.shared.get() else {
            return;
        };
        if let Some(id) = &refs.response {
            if self.get(id, tenant).is_none() {
                self.load(store, "response", id, tenant).await;
            }
        }
        if let Some(id) = &refs.thread {
            if self.get_thread(id, tenant).is_none() {
                self.load(store, "thread", id, tenant).await;
            }
        }
        for item in &refs.items {
            if self.item(item, tenant).is_some() {
                continue;
            }
            let owner = store
                .bounded("read a stored item", store.stored_item_owner(tenant, item))
                .await;
            match owner {
                Ok(Some(id)) => {
                    self.load(store, "response", &id, tenant).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stored responses: the state store did not answer")
                }
            }
        }
    }

    async fn load(&self, store: &crate::store::Store, kind: &str, id: &str, tenant: &str) {
        let deadline = std::time::Instant::now() + store.statement_timeout();
        let mut pause = Duration::from_millis(25);
        loop {
            let now = (crate::clock::unix_now_f64() * 1000.0) as i64;
            let got = store
                .bounded(
                    "read a stored response",
                    store.get_stored(tenant, kind, id, self.bounds(), now),
                )
                .await;
            match got {
                Ok(Some(body)) => {
                    let Some(d) = codec::decode(&body) else {
                        tracing::warn!(
                            response_id = id,
                            "stored responses: an entry of the state store does not parse"
                        );
                        return;
                    };
                    let bytes = conversation_bytes(&d.conversation)
                        + d.items.iter().map(|i| i.id.len()).sum::<usize>();
                    self.insert_local(Entry {
                        id: id.to_string(),
                        tenant: tenant.to_string(),
                        used: Instant::now(),
                        bytes,
                        conversation: Arc::new(d.conversation),
                        items: d.items,
                        thread: d.thread,
                    });
                    return;
                }
                Ok(None) if store.is_shared() && std::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "stored responses: the state store did not answer");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `conversation` under `id` for `tenant` (returns false when it is too large).
    pub fn put(&self, id: &str, tenant: &str, conversation: StoredConversation) -> bool {
        self.put_with_items(id, tenant, conversation, Vec::new())
    }

    /// [`ResponseStore::put`], with the response's output items (for `item_reference`).
    pub fn put_with_items(
        &self,
        id: &str,
        tenant: &str,
        conversation: StoredConversation,
        items: Vec<StoredItem>,
    ) -> bool {
        let item_bytes = conversation_bytes(&StoredConversation {
            model: String::new(),
            messages: items.iter().map(|i| i.message.clone()).collect(),
        }) + items.iter().map(|i| i.id.len()).sum::<usize>();
        let bytes = conversation_bytes(&conversation) + item_bytes;
        self.insert(Entry {
            id: id.to_string(),
            tenant: tenant.to_string(),
            used: Instant::now(),
            bytes,
            conversation: Arc::new(conversation),
            items,
            thread: None,
        })
    }

    /// Stores an Anthropic thread's conversation under its last answer's id (what the
    /// next `continue` names as `previous_message_id`), with the thread's `tools`.
    pub fn put_thread(
        &self,
        id: &str,
        tenant: &str,
        conversation: StoredConversation,
        tools: Option<RawJson>,
    ) -> bool {
        let bytes = conversation_bytes(&conversation) + tools.as_ref().map_or(0, RawJson::cost);
        self.insert(Entry {
            id: id.to_string(),
            tenant: tenant.to_string(),
            used: Instant::now(),
            bytes,
            conversation: Arc::new(conversation),
            items: Vec::new(),
            thread: Some(tools),
        })
    }

    /// The thread stored under `id` for `tenant` (its conversation and tools), if it is
    /// still kept (its use renews it).
    pub fn get_thread(
        &self,
        id: &str,
        tenant: &str,
    ) -> Option<(Arc<StoredConversation>, Option<RawJson>)> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let i = inner
            .entries
            .iter()
            .position(|e| e.id == id && e.tenant == tenant && e.thread.is_some())?;
        let mut e = inner.entries.remove(i)?;
        e.used = Instant::now();
        let found = (Arc::clone(&e.conversation), e.thread.clone().flatten());
        inner.entries.push_back(e);
        Some(found)
    }

    fn insert(&self, entry: Entry) -> bool {
        if entry.bytes > self.max_bytes || self.max_entries == 0 {
            return false;
        }
        self.write_through(&entry);
        self.insert_local(entry)
    }

    /// Keeps `entry` in this replica's memory.
    fn insert_local(&self, entry: Entry) -> bool {
        let bytes = entry.bytes;
        if bytes > self.max_bytes || self.max_entries == 0 {
            return false;
        }
        let mut inner = self.lock();
        self.expire(&mut inner);
        inner.bytes += bytes;
        inner.entries.push_back(entry);
        while inner.entries.len() > self.max_entries || inner.bytes > self.max_bytes {
            let by_count = inner.entries.len() > self.max_entries;
            match inner.fullest_tenants_oldest(by_count) {
                Some(i) => {
                    if let Some(e) = inner.entries.remove(i) {
                        inner.bytes -= e.bytes;
                    }
                }
                None => break,
            }
        }
        true
    }

    /// The conversation stored under `id` for `tenant`, if it is still kept (its use
    /// renews it).
    pub fn get(&self, id: &str, tenant: &str) -> Option<Arc<StoredConversation>> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let i = inner
            .entries
            .iter()
            .position(|e| e.id == id && e.tenant == tenant && e.thread.is_none())?;
        let mut e = inner.entries.remove(i)?;
        e.used = Instant::now();
        let found = Arc::clone(&e.conversation);
        inner.entries.push_back(e);
        Some(found)
    }

    /// The output item `item_id` of a response stored for `tenant`, if it is still kept
    /// (its use renews the response).
    pub fn item(&self, item_id: &str, tenant: &str) -> Option<Message> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let (i, message) = inner.entries.iter().enumerate().rev().find_map(|(i, e)| {
            (e.tenant == tenant)
                .then(|| e.items.iter().find(|it| it.id == item_id))
                .flatten()
                .map(|it| (i, it.message.clone()))
        })?;
        if let Some(mut e) = inner.entries.remove(i) {
            e.used = Instant::now();
            inner.entries.push_back(e);
        }
        Some(message)
    }

    /// How many responses are stored (tests, debugging).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner) {
        while inner
            .entries
            .front()
            .is_some_and(|e| e.used.elapsed() >= self.idle_timeout)
        {
            if let Some(e) = inner.entries.pop_front() {
                inner.bytes -= e.bytes;
            }
        }
    }
}

/// What one JSON value costs in memory as a tree (`serde_json::Value` with
/// `preserve_order`), before its string bytes.
const VALUE_COST: usize = std::mem::size_of::<serde_json::Value>();

/// What a JSON tree costs in memory: each value's node, strings' and keys' bytes, an
/// object entry's index slot. (A megabyte of `[0,0,…]` is about 40 MB as a tree, not 1 MB.)
pub fn value_cost(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    VALUE_COST
        + match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value_cost).sum(),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| k.len() + 3 * std::mem::size_of::<usize>() + value_cost(v))
                .sum(),
        }
}

/// The memory a stored conversation holds: its texts, attachments and tool JSON as the
/// trees they are, plus a little per block and message.
pub fn conversation_bytes(c: &StoredConversation) -> usize {
    fn block(b: &Block) -> usize {
        std::mem::size_of::<Block>()
            + match b {
                Block::Text(t) => t.len(),
                Block::Image(v) | Block::Document(v) => value_cost(v),
                Block::ToolUse { id, name, input } => id.len() + name.len() + input.cost(),
                Block::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } => tool_use_id.len() + content.iter().map(block).sum::<usize>(),
                Block::Thinking {
                    text, signature, ..
                } => text.len() + signature.as_ref().map_or(0, String::len),
            }
    }
    c.model.len()
        + c.messages
            .iter()
            .map(|m| std::mem::size_of::<Message>() + m.blocks.iter().map(block).sum::<usize>())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Role;

    fn conv(text: &str) -> StoredConversation {
        StoredConversation {
            model: "sonnet".into(),
            messages: vec![
                Message::text(Role::User, text),
                Message::text(Role::Assistant, "ok"),
            ],
        }
    }

    #[test]
    fn only_the_tenant_finds_its_responses() {
        let s = ResponseStore::new(Duration::from_secs(60));
        assert!(s.put("resp_1", "a", conv("hi")));
        assert_eq!(s.get("resp_1", "a").unwrap().messages.len(), 2);
        assert!(s.get("resp_1", "b").is_none());
        assert!(s.get("resp_2", "a").is_none());
    }

    #[test]
    fn threads_are_found_as_threads_for_their_tenant_only() {
        let s = ResponseStore::new(Duration::from_secs(60));
        let tools = RawJson::parse(r#"[{"name": "t"}]"#).unwrap();
        assert!(s.put_thread("msg_1", "a", conv("hi"), Some(tools.clone())));
        let (c, t) = s.get_thread("msg_1", "a").unwrap();
        assert_eq!((c.messages.len(), t), (2, Some(tools)));
        assert!(s.get_thread("msg_1", "b").is_none());
        assert!(s.get("msg_1", "a").is_none(), "not a Responses id");
        assert!(s.put("resp_1", "a", conv("hi")));
        assert!(s.get_thread("resp_1", "a").is_none(), "not a thread");
    }

    #[test]
    fn output_items_are_found_by_id_for_their_tenant_only() {
        let s = ResponseStore::new(Duration::from_secs(60));
        let item = StoredItem {
            id: "msg_1".into(),
            message: Message::text(Role::Assistant, "ok"),
        };
        assert!(s.put_with_items("resp_1", "a", conv("hi"), vec![item.clone()]));
        assert_eq!(s.item("msg_1", "a"), Some(item.message.clone()));
        assert!(s.item("msg_1", "b").is_none());
        assert!(s.item("msg_2", "a").is_none());
        let s = ResponseStore::with_bounds(Duration::from_millis(30), 8, 1_000);
        assert!(s.put_with_items("r", "a", conv("x"), vec![item]));
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.item("msg_1", "a").is_none(), "expired with its response");
    }

    #[test]
    fn one_tenants_flood_evicts_its_own_responses_first() {
        let s = ResponseStore::with_bounds(Duration::from_secs(60), 8, 1 << 20);
        assert!(s.put("b1", "b", conv("keep me")));
        for i in 0..1_030 {
            assert!(s.put(&format!("a{i}"), "a", conv("cheap")));
        }
        assert_eq!(s.len(), 8);
        assert!(s.get("b1", "b").is_some(), "the other key's response stays");
        assert!(s.get("a1029", "a").is_some());
        assert!(s.get("a0", "a").is_none());
        // By bytes too: a tenant's big conversations push out its own older ones.
        let s = ResponseStore::with_bounds(Duration::from_secs(60), 100, 4_000);
        assert!(s.put("b1", "b", conv("small")));
        for i in 0..10 {
            assert!(s.put(&format!("a{i}"), "a", conv(&"y".repeat(900))));
        }
        assert!(s.get("b1", "b").is_some());
        assert!(s.get("a9", "a").is_some());
    }

    #[test]
    fn trees_count_at_their_node_cost() {
        let arrays = StoredConversation {
            model: "sonnet".into(),
            messages: vec![Message::new(
                Role::Assistant,
                vec![Block::ToolUse {
                    id: "t".into(),
                    name: "n".into(),
                    input: crate::conversation::RawJson::from_value(
                        &serde_json::json!({"x": vec![0; 10_000]}),
                    ),
                }],
            )],
        };
        // 20 KB of JSON text, ten thousand values: a tool input is kept as its text, and
        // counts as that (a tree of it would be ten thousand nodes).
        let bytes = conversation_bytes(&arrays);
        assert!((20_000..10_000 * VALUE_COST).contains(&bytes), "{bytes}");
    }

    #[test]
    fn bounded_by_count_bytes_and_idle_time() {
        let s = ResponseStore::with_bounds(Duration::from_secs(60), 2, 2_000);
        for id in ["r1", "r2", "r3"] {
            assert!(s.put(id, "", conv("x")));
        }
        assert_eq!(s.len(), 2);
        assert!(
            s.get("r1", "").is_none(),
            "the least recently used went first"
        );
        // r2 is used, so r3 goes when a big one comes in.
        assert!(s.get("r2", "").is_some());
        assert!(s.put("big", "", conv(&"y".repeat(1_200))));
        assert!(s.get("r3", "").is_none());
        assert!(s.get("big", "").is_some());
        assert!(
            !s.put("huge", "", conv(&"z".repeat(3_000))),
            "over the byte bound"
        );
        let s = ResponseStore::with_bounds(Duration::from_millis(30), 8, 1_000);
        assert!(s.put("r1", "", conv("x")));
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get("r1", "").is_none(), "expired");
        assert!(s.is_empty());
    }
}
