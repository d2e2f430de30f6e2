//! The durable record of every accepted event, its dedupe key, its delivery state and every
//! attempt. Two backends share this trait: `embedded` (SQLite, one node) and `redis` (shared
//! by replicas; see its module doc and docs/REDIS.md).
//!
//! Invariants every backend keeps:
//! - `accept` returns only once the event is durable (fsync'd / acknowledged); only then may
//!   the ingress answer 2xx.
//! - Recording and de-duplication are one atomic step: a key is never marked seen without its
//!   event recorded, and two concurrent requests with one key get one `Accepted`.
//! - An event is leased to at most one delivery at a time under normal operation; a crash
//!   releases every lease, so pending events are delivered again after restart (at least once).

pub mod embedded;
mod event;
mod keys;
pub mod redis;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use event::{is_gateway_header, Event, EventId, Keep, NewEvent, StoredHeaders};

use crate::config::{StoreBackend, StoreConfig};

/// A dedupe key scoped to its route, with the instant it stops counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeKey {
    pub key: String,
    /// A second key recorded beside `key`, for the same window (`dedupe::replay_key`): a
    /// request matching either is a duplicate.
    pub also: Option<String>,
    pub expires_at_ms: i64,
}

impl DedupeKey {
    /// The key, then `also` if there is one: each is checked, and each recorded.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.key).chain(&self.also)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    Accepted(EventId),
    /// The key was seen within its window; the original's id.
    Duplicate(EventId),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store busy: too many writes queued")]
    Busy,
}

/// A replay of a route's dead events that failed after `replayed` of them: the answer is an
/// error, so the log says what was done before it.
fn replay_stopped(route: &str, replayed: u64, e: StoreError) -> StoreError {
    if replayed > 0 {
        tracing::error!(route, replayed, error = %e, "replay-dead stopped part-way: the events counted were replayed, the rest are still dead; asking again replays the rest");
    }
    e
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Delivered,
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "delivered" => Some(State::Delivered),
            "dead" => Some(State::Dead),
            _ => None,
        }
    }
}

/// What one delivery attempt did, as logged and shown by the admin API (which adds
/// `started_at`, the same instant as RFC 3339 like the event's `received_at`).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based, counted over the event's whole life (replays continue the count).
    pub n: u32,
    pub started_at_ms: i64,
    /// `delivered`, `retry` or `dead`.
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Up to 1 KiB of the response body, or the error.
    pub detail: String,
}

impl Serialize for Attempt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Attempt", 7)?;
        st.serialize_field("n", &self.n)?;
        st.serialize_field("started_at", &rfc3339_ms(self.started_at_ms))?;
        st.serialize_field("started_at_ms", &self.started_at_ms)?;
        st.serialize_field("outcome", self.outcome)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("latency_ms", &self.latency_ms)?;
        st.serialize_field("detail", &self.detail)?;
        st.end()
    }
}

/// An operator's replay of the event (`POST /admin/events/{id}/replay` or a route's
/// `replay-dead`), shown beside its attempts: what it was before and after which attempt, so
/// a second delivery of a delivered event is accounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub at_ms: i64,
    /// Attempts made before it (the next attempt is `after_attempts + 1`).
    pub after_attempts: u32,
    /// The state it was replayed from: `dead`, `delivered` or `pending`.
    pub was: State,
}

impl Serialize for Replay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Replay", 4)?;
        st.serialize_field("at", &rfc3339_ms(self.at_ms))?;
        st.serialize_field("at_ms", &self.at_ms)?;
        st.serialize_field("after_attempts", &self.after_attempts)?;
        st.serialize_field("was", self.was.as_str())?;
        st.end()
    }
}

/// The state an attempt leaves the event in.
#[derive(Debug, Clone)]
pub enum Next {
    Delivered,
    Retry { at_ms: i64 },
    Dead { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub event_id: String,
    pub route: String,
    pub state: State,
    pub received_at: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub dedupe_key: Option<String>,
    pub verified: String,
    pub body_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub method: String,
    pub query: Option<String>,
    pub headers: serde_json::Value,
    /// Requests answered as duplicates of this event (`200 duplicate`: a sender's retry or
    /// redelivery within the dedupe window), and when the last one came.
    pub duplicates: u64,
    pub last_duplicate_at: Option<String>,
    pub attempt_log: Vec<Attempt>,
    /// Oldest first.
    pub replays: Vec<Replay>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteCounts {
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub route: Option<String>,
    pub state: Option<State>,
    pub limit: usize,
    /// Only events whose dedupe key is this: the value as the sender sent it (`evt_123`,
    /// matching a recorded `header:`, `json:` or `id:` key) or a recorded key spelled out
    /// (`sha256:…`).
    pub key: Option<String>,
    /// Only events older than this one (an event id; the last of the previous page).
    pub before: Option<String>,
}

/// The text every UUIDv7 made before `ms` sorts below (`xxxxxxxx-xxxx`, the 48-bit time).
pub fn id_prefix(ms: i64) -> String {
    let ms = ms.max(0) as u64 & 0xffff_ffff_ffff;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// The time in a UUIDv7 event id, in ms since the epoch.
pub fn uuid7_ms(id: &str) -> Option<i64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

/// How far a pass over a route's due events got: the due time and id of the last row
/// looked at (see `Store::lease_from`). An event made due behind it (a replay, a released
/// lease) is found by the next pass, which starts from `ScanCursor::default()`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanCursor(pub(crate) Option<(i64, String)>);

#[async_trait]
pub trait Store: Send + Sync {
    /// Durable when it returns: records the event and its key in one atomic step.
    async fn accept(&self, ev: NewEvent, dedupe: Option<DedupeKey>) -> Result<Accept, StoreError>;

    /// Up to `limit` pending events of `route` due at `now_ms`, leased to the caller until
    /// `settle`. A leased event is not returned again.
    async fn lease(&self, route: &str, limit: usize, now_ms: i64)
        -> Result<Vec<Event>, StoreError>;

    /// `lease`, continuing a pass over the route's due events where `from` left it (a fresh
    /// `ScanCursor` starts at the front) and moving `from` past every row it looked at, leased
    /// ones included. Continuing a pass reads each row once, however many of the events ahead
    /// are out for delivery. Stores without such an order ignore `from`.
    async fn lease_from(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
        _from: &mut ScanCursor,
    ) -> Result<Vec<Event>, StoreError> {
        self.lease(route, limit, now_ms).await
    }

    /// When the earliest pending, unleased event of `route` is due.
    async fn next_due(&self, route: &str) -> Result<Option<i64>, StoreError>;

    /// Records one attempt and the state it leaves the event in; releases the lease.
    async fn settle(&self, ev: &Event, attempt: Attempt, next: Next) -> Result<(), StoreError>;

    async fn get(&self, event_id: &str) -> Result<Option<EventDetail>, StoreError>;
    async fn list(&self, q: &ListQuery) -> Result<Vec<EventSummary>, StoreError>;
    async fn counts(&self, route: &str) -> Result<RouteCounts, StoreError>;
    /// Every route the store holds pending or dead events of, sorted: set against the
    /// configured routes, it finds events no worker will deliver (a route removed or renamed).
    async fn routes_with_undelivered(&self) -> Result<Vec<String>, StoreError>;

    /// Makes the event pending again, due now, with a fresh retry budget. `false`: no such event.
    async fn replay(&self, event_id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Replays every dead event of the route; returns how many.
    async fn replay_dead(&self, route: &str, now_ms: i64) -> Result<u64, StoreError>;

    /// Deletes a dead event and its attempt log, for good (its dedupe key stays until its
    /// `ttl`, so a redelivery is still a duplicate). `false`: no such event, or it is not
    /// dead (a replay may have come first).
    async fn discard_dead(&self, event_id: &str) -> Result<bool, StoreError>;

    /// Makes due at `now_ms` every pending event of `route` scheduled after `beyond_ms`; returns
    /// how many. A retry is never scheduled more than `backoff_max` ahead, so such events were
    /// scheduled by a wall clock that has since been set back (or by a replica whose clock is
    /// ahead); left alone, they would wait for the clock to catch up.
    async fn bring_forward(
        &self,
        route: &str,
        beyond_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Forgets expired dedupe keys and delivered events older than the retention.
    async fn purge(&self, now_ms: i64) -> Result<(), StoreError>;

    /// Reachable and writable, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Leases those of `ids` that are still pending, due at `now_ms` and not leased (events
    /// a `Handoff` spilled): a read by id, not a scan. Only stores that offer a handoff are
    /// asked.
    async fn lease_ids(&self, _ids: Vec<String>, _now_ms: i64) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }

    /// Events of `route` handed to its worker as soon as they are recorded, already leased,
    /// so the worker need not read them back. `None`: the backend has no such path (the
    /// worker leases everything). A second call for a route replaces the first receiver.
    fn handoff(&self, _route: &str) -> Option<Handoff> {
        None
    }

    /// Applies a reloaded `store.min_free_space`; backends without the check ignore it.
    fn set_min_free_space(&self, _bytes: u64) {}
}

/// Most body bytes a route's handoff queue holds; past it, fresh events are spilled: only
/// their ids wait, and the worker reads them back (`Store::lease_ids`). (Bounds memory when
/// the sink is slow or its circuit is open: 16 MiB, or 1,024 events.)
pub const HANDOFF_BYTES: usize = 16 << 20;

/// Most spilled ids a route keeps (about 20 MiB); past it, the store only raises `missed`
/// and the worker scans for what it did not hand over.
pub const SPILL_IDS: usize = 1 << 18;

/// What a store and a `Handoff` share: the queue's size in body bytes, the ids of recorded
/// events that did not fit, and whether the store recorded an event it could not even spill.
#[derive(Default)]
pub struct HandoffState {
    missed: AtomicBool,
    queued_bytes: AtomicUsize,
    /// Oldest first.
    spilled: Mutex<VecDeque<String>>,
}

impl HandoffState {
    /// Makes room for an event of `bytes`; `false` when the queue holds enough already (one
    /// event always fits, however big).
    pub fn reserve(&self, bytes: usize) -> bool {
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + bytes <= HANDOFF_BYTES).then_some(q + bytes)
            })
            .is_ok()
    }

    pub fn unreserve(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn miss(&self) {
        self.missed.store(true, Ordering::Release);
    }

    /// Keeps the id of a recorded event that did not fit in the queue, so the worker can
    /// read it back by id instead of scanning the store for it.
    pub fn spill(&self, id: String) {
        match self.spilled.lock() {
            Ok(mut s) if s.len() < SPILL_IDS => s.push_back(id),
            _ => self.miss(),
        }
    }
}

/// Receives fresh, already leased events for one route (see `Store::handoff`). Dropping it
/// detaches it from the store, then gives back the lease of every event it still holds, so
/// `lease` finds them again.
pub struct Handoff {
    rx: tokio::sync::mpsc::Receiver<Event>,
    /// Received by `wait`, not yet taken (still counted in the queue's bytes).
    waiting: Option<Event>,
    state: Arc<HandoffState>,
    release: Box<dyn Fn(&str) + Send + Sync>,
    /// Stops the store from sending more; no send is under way once it returned.
    detach: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Handoff {
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Event>,
        state: Arc<HandoffState>,
        release: impl Fn(&str) + Send + Sync + 'static,
        detach: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Handoff {
            rx,
            waiting: None,
            state,
            release: Box::new(release),
            detach: Some(Box::new(detach)),
        }
    }

    /// Whether the store recorded events it neither handed over nor spilled since the last
    /// call (they wait for `lease`).
    pub fn missed(&self) -> bool {
        self.state.missed.swap(false, Ordering::AcqRel)
    }

    /// Up to `limit` ids of spilled events (recorded, not handed over, not leased), oldest
    /// first; lease them with `Store::lease_ids`.
    pub fn take_spilled(&mut self, limit: usize) -> Vec<String> {
        match self.state.spilled.lock() {
            Ok(mut s) => {
                let n = limit.min(s.len());
                s.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Up to `limit` events that are waiting now.
    pub fn take(&mut self, limit: usize) -> Vec<Event> {
        let mut out = Vec::new();
        if limit > 0 {
            out.extend(self.waiting.take());
        }
        while out.len() < limit {
            match self.rx.try_recv() {
                Ok(ev) => out.push(ev),
                Err(_) => break,
            }
        }
        for ev in &out {
            self.state.unreserve(ev.body.len());
        }
        out
    }

    /// Returns once an event is waiting; never, once the sending side is gone.
    pub async fn wait(&mut self) {
        if self.waiting.is_some() {
            return;
        }
        match self.rx.recv().await {
            Some(ev) => self.waiting = Some(ev),
            None => std::future::pending().await,
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(detach) = self.detach.take() {
            detach();
        }
        self.rx.close();
        let left = self.waiting.take().into_iter();
        for ev in left.chain(std::iter::from_fn(|| self.rx.try_recv().ok())) {
            self.state.unreserve(ev.body.len());
            (self.release)(&ev.id);
        }
    }
}

/// Opens the configured backend; recovery (if any) is done when this returns.
pub async fn open(cfg: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    match &cfg.backend {
        StoreBackend::Embedded {
            path,
            page_size,
            min_free_space,
        } => {
            let opts = embedded::Options {
                page_size: *page_size,
                min_free_space: *min_free_space,
                ..embedded::Options::new(cfg.retention)
            };
            let store = embedded::EmbeddedStore::open_with(path, &opts)?;
            Ok(Arc::new(store))
        }
        StoreBackend::Redis {
            url,
            key_prefix,
            visibility_timeout,
        } => {
            let store =
                redis::RedisStore::open(url, key_prefix, cfg.retention, *visibility_timeout)
                    .await?;
            Ok(Arc::new(store))
        }
    }
}

/// For `hookgate check`: probes the configured store beyond what the config file shows.
/// Returns (warnings, errors), each line starting with the key's path.
pub fn check(cfg: &StoreConfig) -> (Vec<String>, Vec<String>) {
    match &cfg.backend {
        StoreBackend::Embedded {
            path,
            min_free_space,
            ..
        } => (
            embedded::check(path, *min_free_space),
            embedded::unusable(path).into_iter().collect(),
        ),
        StoreBackend::Redis { url, .. } => redis::check(url),
    }
}

/// Milliseconds since the Unix epoch → RFC 3339 (UTC, millisecond precision), clamped to
/// what RFC 3339 can write (years 1970–9999 here): a stored time past it (a tampered Redis
/// hash) is shown as the last millisecond of 9999 rather than failing the admin read.
pub fn rfc3339_ms(ms: i64) -> String {
    const LAST: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.clamp(0, LAST) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn rfc3339_ms_writes_any_stored_time() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        // Past year 9999 humantime refuses to format, and `to_string` would panic.
        assert_eq!(rfc3339_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
