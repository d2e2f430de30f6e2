//! The Redis store: shared dedupe and shared delivery for several gateway replicas.
//!
//! **Acknowledged.** `accept` is one Lua script (`scripts::ACCEPT`): check the dedupe key,
//! write the event's hash, add its delivery entry to the route's stream, then mark the key —
//! atomically, so a key is never marked without its event and two replicas racing on one key
//! get one `Accepted`. `accept` returns (and the ingress answers 202) only after Redis replied
//! to that script. What the reply guarantees is Redis's persistence setting: with
//! `appendonly yes` + `appendfsync always` the event is fsync'd before the reply; with
//! `everysec` (Redis's default) a crash of the Redis *host*, or of the process while a slow
//! background fsync holds back its AOF writes, can lose up to about the last 2 seconds of
//! acknowledged events (docs/REDIS.md); with `appendonly no` a Redis restart loses everything,
//! and with `appendfsync no` a host crash can, and startup and `hookgate check` warn about
//! both. Replication to replicas is asynchronous; a failover can
//! lose the last writes. If the reply does not arrive within `OP_TIMEOUT` the request is
//! answered 503 and the sender retries; if Redis did apply the script, the retry is a
//! duplicate (same key) or a second event (no key): at least once, never lost.
//!
//! **Delivery.** Each route has a stream with the consumer group `hookgate`; each process is
//! one consumer (host-pid-random). `lease` (`scripts::LEASE`) moves due retries from the
//! route's `retry` zset into the stream, reclaims entries idle longer than the visibility
//! timeout (`XAUTOCLAIM`: a replica that died mid-attempt), and reads new entries
//! (`XREADGROUP`). Entries of events in flight here are kept fresh by a heartbeat
//! (`XCLAIM … JUSTID` every visibility/4), so a slow attempt is never taken over while its
//! replica lives. `settle` logs the attempt, moves the event to its new state, and `XACK`s +
//! `XDEL`s the entry, in one script. Under normal operation each event is delivered by one
//! replica, once; a replica killed mid-attempt leaves its entries to be reclaimed after the
//! visibility timeout, and those events are delivered again (at least once).
//!
//! **Visibility timeout** (`store.visibility_timeout`, default 30 s): how long an entry may go
//! without a heartbeat before another replica takes it. Shorter recovers a dead replica's
//! events sooner; longer tolerates longer stalls (GC-less, but a frozen VM, a partition from
//! Redis) without a second delivery. 30 s is SQS's default and ~120 heartbeats of margin.
//!
//! **Failure.** Every call is bounded (`OP_TIMEOUT`, `SLOW_OP_TIMEOUT`): Redis down → errors
//! within seconds (ingress 503 + Retry-After, `/readyz` 503, workers pause and retry). The
//! connections (`ConnectionManager`) reconnect by themselves once Redis is back.
//!
//! Key layout: see `keys`. Retention: delivered events (hash + attempt log) get a TTL of
//! `store.retention` and are dropped from the indexes by `purge`; pending and dead events are
//! kept. Dedupe keys expire by themselves (`PX`).

mod codec;
mod keys;
mod probe;
mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisResult, Value};
use async_trait::async_trait;

pub use probe::{check, redact};

use super::*;
use codec::{array, bad, hash, int, string};
use keys::Keys;

/// The consumer group every replica joins on every route's stream.
const GROUP: &str = "hookgate";
/// Requests on the ingress path (accept, ping) and small reads and writes.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Leases (bodies of up to `concurrency` events), admin scans, purge batches.
const SLOW_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the retention a delivered event's keys live: the purge (every
/// minute) deletes them, with their ids in the indexes, at the retention; the TTL only
/// catches what no replica purged. Were it the retention itself, an event's hash could expire
/// while its id is still listed (a listing would skip it and its page come back short).
const TTL_MARGIN_MS: i64 = 10 * 60 * 1000;
/// Most pages of ids one listing reads to fill its page past events gone since they were
/// indexed (see `list`).
const LIST_ROUNDS: usize = 8;
/// Attempts (and replay marks) kept per event (the newest); older ones are trimmed. The
/// replay script trims to the same number, spelled out there.
const LOG_CAP: usize = 100;
/// Events per purge / redrive script call, so no script blocks Redis for long.
const BATCH: usize = 500;
/// A consumer with nothing pending and idle this long is a replica that is gone.
const STALE_CONSUMER: Duration = Duration::from_secs(3600);

pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Accepts and pings only, so a large lease reply never delays a 202.
    ingress: ConnectionManager,
    /// Leases, settles, admin.
    work: ConnectionManager,
    keys: Keys,
    consumer: String,
    retention_ms: i64,
    visibility: Duration,
    /// Event id → (route, stream entry) of every event leased here and not yet settled.
    leased: Mutex<HashMap<String, (String, String)>>,
    /// Routes added to the `routes` set by this process, and when: added again after
    /// [`ROUTES_REFRESH`], so a Redis that lost its data (restart without AOF, FLUSHALL, a
    /// failover to a lagging replica) lists them again for admin lookups and purges.
    known_routes: Mutex<HashMap<String, Instant>>,
    /// Set while Redis's `maxmemory-policy` may evict pending events (checked every
    /// [`POLICY_CHECK`]): accepts answer 503 and `/readyz` is not ready meanwhile.
    evicting: Mutex<Option<String>>,
    shown: String,
}

const ROUTES_REFRESH: Duration = Duration::from_secs(2);
/// Body bytes a lease takes at most, past its first event (see `scripts::LEASE`); the rest
/// stay due for the next lease.
const LEASE_BYTES: usize = 8 << 20;
const POLICY_CHECK: Duration = Duration::from_secs(5);
/// How often both connections are pinged, so a broken one is re-made without waiting for a
/// request to fail on it.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

fn unavailable(e: ::redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// Bounds a Redis call: an unreachable Redis is an error within `limit`, never a hang.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis: no answer within {}ms",
            limit.as_millis()
        ))),
    }
}

fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookgate".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl RedisStore {
    /// Connects (failing within seconds if Redis cannot be reached) and warns when Redis is
    /// not set up to keep acknowledged events.
    pub async fn open(
        url: &str,
        key_prefix: &str,
        retention: Duration,
        visibility: Duration,
    ) -> anyhow::Result<Self> {
        let shown = redact(url);
        let client = ::redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("store.url: invalid Redis URL {shown}: {e}"))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(SLOW_OP_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let connect = || async {
            match tokio::time::timeout(
                Duration::from_secs(5),
                ConnectionManager::new_with_config(client.clone(), cfg.clone()),
            )
            .await
            {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(anyhow::anyhow!("{}", probe::connect_error(&shown, &e))),
                Err(_) => Err(anyhow::anyhow!(
                    "store.url: cannot reach Redis at {shown}: no answer within 5s"
                )),
            }
        };
        let mut ingress = connect().await?;
        let work = connect().await?;
        check_layout(&mut ingress, &Keys::new(key_prefix), &shown).await?;
        if let Some(p) = probe::evicting_policy(&mut ingress).await {
            anyhow::bail!("{}", probe::evicting_error(&shown, &p));
        }
        for w in probe::persistence_warnings(&mut ingress, &shown).await {
            tracing::warn!("{w}");
        }
        let inner = Arc::new(Inner {
            ingress,
            work,
            keys: Keys::new(key_prefix),
            consumer: consumer_name(),
            retention_ms: (retention.as_millis() as i64).max(1),
            visibility,
            leased: Mutex::default(),
            known_routes: Mutex::default(),
            evicting: Mutex::default(),
            shown: shown.clone(),
        });
        tokio::spawn(policy_loop(Arc::downgrade(&inner)));
        tokio::spawn(reconnect_loop(Arc::downgrade(&inner)));
        tracing::info!(redis = %shown, consumer = %inner.consumer, visibility_ms = visibility.as_millis() as u64, "redis store connected");
        tokio::spawn(heartbeat_loop(
            Arc::downgrade(&inner),
            (visibility / 4).max(Duration::from_millis(100)),
        ));
        Ok(RedisStore { inner })
    }
}

/// The layout of the keys this build reads and writes (see `keys`). A build that changes it
/// raises this; keys stamped higher are refused at open, so a replica rolled back to an older
/// binary does not misread (or write into) a newer layout that other replicas use.
const LAYOUT_VERSION: i64 = 1;

/// Refuses a key space stamped newer than [`LAYOUT_VERSION`]; stamps an unstamped one. Only
/// the read must succeed: a Redis refusing writes (over `maxmemory` with `noeviction`, a
/// failed background save) starts as it did before the stamp (accepts then get 503 until it
/// takes writes again), with a warning; failing the start there would crash-loop every
/// replica, and nothing would be delivered to free the memory.
async fn check_layout(
    conn: &mut ConnectionManager,
    keys: &Keys,
    shown: &str,
) -> anyhow::Result<()> {
    let key = keys.layout();
    let get = ::redis::cmd("GET").arg(&key).clone();
    let was: Option<String> = bounded(OP_TIMEOUT, get.query_async(conn))
        .await
        .map_err(|e| anyhow::anyhow!("store.url: cannot read {key} at {shown}: {e}"))?;
    match was.map(|v| v.parse::<i64>()) {
        Some(Ok(v)) if v <= LAYOUT_VERSION => Ok(()),
        Some(Ok(v)) => anyhow::bail!(
            "store.url: the keys under prefix {:?} at {shown} were written by a newer hookgate (key layout {v}; this build reads up to {LAYOUT_VERSION}); nothing was changed. Run the newer version",
            key.trim_end_matches(":layout")
        ),
        Some(Err(_)) => anyhow::bail!(
            "store.url: {key} at {shown} does not hold a hookgate layout version; is store.key_prefix shared with another application?"
        ),
        None => {
            let set = ::redis::cmd("SET")
                .arg(&key)
                .arg(LAYOUT_VERSION)
                .arg("NX")
                .clone();
            if let Err(e) = bounded(OP_TIMEOUT, set.query_async::<()>(conn)).await {
                tracing::warn!(key = %key, error = %e, "store: cannot stamp the key layout version now (Redis refuses writes?); tried again at the next start");
            }
            Ok(())
        }
    }
}

/// Keeps the stream entries of attempts in flight here from looking abandoned.
async fn heartbeat_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let by_route: HashMap<String, Vec<String>> = match inner.leased.lock() {
            Ok(l) => l.values().fold(HashMap::new(), |mut m, (route, entry)| {
                m.entry(route.clone()).or_default().push(entry.clone());
                m
            }),
            Err(_) => return,
        };
        for (route, entries) in by_route {
            let mut inv = scripts::HEARTBEAT.key(inner.keys.stream(&route));
            inv.arg(GROUP).arg(&inner.consumer).arg(&entries);
            let mut conn = inner.work.clone();
            if let Err(e) = bounded(OP_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await {
                tracing::warn!(route = %route, error = %e, "cannot renew leases of attempts in flight");
            }
        }
    }
}

/// A connection manager reconnects when a command finds its connection broken, and a
/// command that meets a failed reconnect fails too. Without this, once Redis was back the
/// first request on each connection still answered 503 (and `/readyz` failed once), however
/// long after. A `PING` on both connections every second reconnects them within a second or
/// two of Redis coming back, traffic or not; while Redis is up it is one round trip each.
async fn reconnect_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(RECONNECT_CHECK).await;
        let Some(inner) = inner.upgrade() else { return };
        let ping = |mut conn: ConnectionManager| async move {
            let cmd = ::redis::cmd("PING");
            let _ = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<()>(&mut conn)).await;
        };
        // Both at once: a Redis dropping packets holds each ping for its whole timeout.
        futures_util::future::join(ping(inner.ingress.clone()), ping(inner.work.clone())).await;
    }
}

/// Re-reads `maxmemory-policy`: a `CONFIG SET` at runtime to an evicting policy stops
/// acknowledgements (503) until it is set back, loudly, instead of losing events silently.
async fn policy_loop(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(POLICY_CHECK).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut conn = inner.work.clone();
        // No answer (a blip, CONFIG refused): keep what was known.
        let Ok(Ok(now)) =
            tokio::time::timeout(OP_TIMEOUT, probe::read_evicting_policy(&mut conn)).await
        else {
            continue;
        };
        let Ok(mut cur) = inner.evicting.lock() else {
            return;
        };
        match (&*cur, &now) {
            (None, Some(p)) => tracing::error!(
                "{}; not acknowledging events until it is changed",
                probe::evicting_error(&inner.shown, p)
            ),
            (Some(_), None) => {
                tracing::info!("store: Redis no longer evicts; acknowledging events again")
            }
            _ => {}
        }
        *cur = now;
    }
}

impl Inner {
    /// The summaries of these `(event id, route)`s, in that order; an event Redis no longer
    /// holds is skipped.
    async fn summaries(
        &self,
        conn: &mut ConnectionManager,
        ids: &[(String, String)],
    ) -> Result<Vec<EventSummary>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = ::redis::pipe();
        for (id, r) in ids {
            p.cmd("HMGET")
                .arg(self.keys.event(r, id))
                .arg(&codec::SUMMARY_FIELDS[..]);
        }
        let rows: Vec<Vec<Value>> = bounded(SLOW_OP_TIMEOUT, p.query_async(conn)).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|((id, _), vals)| codec::summary(id, &vals))
            .collect())
    }

    /// `Err` while Redis may evict pending events (see [`policy_loop`]).
    fn durable(&self) -> Result<(), StoreError> {
        match self.evicting.lock().ok().and_then(|e| e.clone()) {
            Some(p) => Err(StoreError::Unavailable(format!(
                "Redis has maxmemory-policy {p}, which may evict acknowledged events"
            ))),
            None => Ok(()),
        }
    }

    /// Adds the route to the `routes` set (admin lookups by id need it), again every
    /// [`ROUTES_REFRESH`] in case Redis lost it.
    async fn remember_route(&self, route: &str) -> Result<(), StoreError> {
        if self
            .known_routes
            .lock()
            .map(|k| k.get(route).is_some_and(|t| t.elapsed() < ROUTES_REFRESH))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let mut conn = self.ingress.clone();
        bounded(
            OP_TIMEOUT,
            ::redis::cmd("SADD")
                .arg(self.keys.routes())
                .arg(route)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        if let Ok(mut k) = self.known_routes.lock() {
            k.insert(route.to_string(), Instant::now());
        }
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.work.clone();
        let mut r: Vec<String> = bounded(
            OP_TIMEOUT,
            ::redis::cmd("SMEMBERS")
                .arg(self.keys.routes())
                .query_async(&mut conn),
        )
        .await?;
        r.sort();
        Ok(r)
    }

    /// The route an event id belongs to, if it exists.
    /// Up to `limit` ids of `states` events of `routes`, newest first (by receipt time, the
    /// sets' score, then id), after `cursor`: `(score, id, route)`.
    async fn list_ids(
        &self,
        conn: &mut ConnectionManager,
        routes: &[String],
        states: &[State],
        limit: usize,
        cursor: Option<&(i64, String)>,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        // MULTI/EXEC: an event that changes state meanwhile is listed once, not twice.
        let mut p = ::redis::pipe();
        p.atomic();
        let mut sources = Vec::new();
        for r in routes {
            for st in states {
                let key = self.keys.state(r, *st);
                match cursor {
                    None => {
                        p.cmd("ZREVRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(limit - 1)
                            .arg("WITHSCORES");
                    }
                    Some((score, _)) => {
                        // Older than the cursor's time, then the ties at that time (events
                        // received in one millisecond: few), sorted out below.
                        p.cmd("ZREVRANGEBYSCORE")
                            .arg(&key)
                            .arg(format!("({score}"))
                            .arg("-inf")
                            .arg("WITHSCORES")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(limit);
                        p.cmd("ZRANGEBYSCORE")
                            .arg(&key)
                            .arg(score)
                            .arg(score)
                            .arg("WITHSCORES");
                        sources.push(r.clone());
                    }
                }
                sources.push(r.clone());
            }
        }
        let found: Vec<Vec<(String, f64)>> = bounded(SLOW_OP_TIMEOUT, p.query_async(conn)).await?;
        let mut rows: Vec<(i64, String, String)> = sources
            .into_iter()
            .zip(found)
            .flat_map(|(r, page)| {
                page.into_iter()
                    .map(move |(id, score)| (score as i64, id, r.clone()))
            })
            .collect();
        if let Some((score, before)) = cursor {
            rows.retain(|(sc, id, _)| *sc < *score || (*sc == *score && id < before));
        }
        rows.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        rows.truncate(limit);
        Ok(rows)
    }

    /// When the event was received, if Redis still holds it.
    async fn received_at(&self, id: &str) -> Result<Option<i64>, StoreError> {
        let Some(route) = self.find(id).await? else {
            return Ok(None);
        };
        let mut conn = self.work.clone();
        let at: Option<i64> = bounded(
            OP_TIMEOUT,
            ::redis::cmd("HGET")
                .arg(self.keys.event(&route, id))
                .arg("received_at")
                .query_async(&mut conn),
        )
        .await?;
        Ok(at)
    }

    async fn find(&self, id: &str) -> Result<Option<String>, StoreError> {
        let routes = self.routes().await?;
        if routes.is_empty() {
            return Ok(None);
        }
        let mut p = ::redis::pipe();
        for r in &routes {
            p.cmd("EXISTS").arg(self.keys.event(r, id));
        }
        let mut conn = self.work.clone();
        let found: Vec<i64> = bounded(OP_TIMEOUT, p.query_async(&mut conn)).await?;
        Ok(routes
            .into_iter()
            .zip(found)
            .find(|(_, n)| *n > 0)
            .map(|(r, _)| r))
    }

    fn route_keys<'a>(
        &self,
        inv: &mut ::redis::ScriptInvocation<'a>,
        route: &str,
        id: &str,
    ) -> Vec<String> {
        let k = &self.keys;
        let keys = vec![
            k.event(route, id),
            k.log(route, id),
            k.stream(route),
            k.retry(route),
            k.state(route, State::Pending),
            k.state(route, State::Delivered),
            k.state(route, State::Dead),
            k.gc(route),
        ];
        for key in &keys {
            inv.key(key);
        }
        keys
    }

    /// Forgets consumers of replicas that are gone (nothing pending, long idle).
    async fn drop_stale_consumers(&self, route: &str) -> Result<(), StoreError> {
        let stream = self.keys.stream(route);
        let mut conn = self.work.clone();
        let info: Value = match bounded(
            OP_TIMEOUT,
            ::redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(GROUP)
                .query_async(&mut conn),
        )
        .await
        {
            Ok(v) => v,
            Err(_) => return Ok(()), // no stream or group yet
        };
        for c in array(info)? {
            let h = hash(c)?;
            let name = h.get("name").and_then(string).unwrap_or_default();
            let pending = h.get("pending").and_then(int).unwrap_or(1);
            let idle = h.get("idle").and_then(int).unwrap_or(0);
            if name != self.consumer && pending == 0 && idle > STALE_CONSUMER.as_millis() as i64 {
                bounded(
                    OP_TIMEOUT,
                    ::redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg(&name)
                        .query_async::<i64>(&mut conn),
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl RedisStore {
    /// One call of the lease script: the events leased, and whether the byte budget cut the
    /// call short (more may be due).
    async fn lease_once(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let s = &self.inner;
        let mut inv = scripts::LEASE.key(s.keys.stream(route));
        inv.key(s.keys.retry(route))
            .key(s.keys.claim_cursor(route))
            .arg(GROUP)
            .arg(&s.consumer)
            .arg(now_ms)
            .arg(limit)
            .arg(s.visibility.as_millis() as u64)
            .arg(s.keys.tag(route))
            .arg(LEASE_BYTES);
        let mut conn = s.work.clone();
        let reply: Value = bounded(SLOW_OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        // The whole reply is read before anything is noted as leased here: an item that
        // cannot be read part-way must not leave the ones before it leased but never
        // attempted (renewed by the heartbeat, so no replica would take them over).
        let (mut read, mut bytes) = (Vec::new(), 0);
        for item in array(reply)? {
            let mut pair = array(item)?.into_iter();
            let (Some(entry), Some(fields)) = (pair.next(), pair.next()) else {
                return Err(bad("lease entry"));
            };
            let reclaimed = pair.next().as_ref().and_then(int) == Some(1);
            let entry = string(&entry).ok_or_else(|| bad("entry id"))?;
            if let Some(id) = string(&fields) {
                // Dropped by the script: nothing can deliver it. Said loudly, never silently.
                metrics::counter!("hookgate_store_errors_total").increment(1);
                tracing::error!(route = %route, event_id = %id, entry = %entry, "event lost: its stream entry is due but Redis no longer holds the event (evicted, flushed, or a failover to a replica that lacked it)");
                continue;
            }
            let ev = match hash(fields).and_then(|h| codec::event(&h)) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(route = %route, entry = %entry, error = %e, "unreadable event in redis; left for an operator");
                    continue;
                }
            };
            bytes += ev.body.len();
            read.push((entry, ev, reclaimed));
        }
        let mut out = Vec::new();
        let mut leased = s
            .leased
            .lock()
            .map_err(|_| StoreError::Unavailable("lease table poisoned".into()))?;
        for (entry, ev, reclaimed) in read {
            // Reclaimed from ourselves (a late heartbeat): the attempt is still running here.
            // So is any other entry of an event leased here: never two attempts of one event
            // in this process. (An entry its settle added, read in the instant before the
            // attempt released its lease, is left unrenewed and reclaimed after the
            // visibility timeout: a delay, not a second delivery.)
            if leased.contains_key(&ev.id) {
                continue;
            }
            if reclaimed {
                // Its lease went unrenewed for the visibility timeout: the replica that held it
                // died or lost Redis, perhaps mid-attempt. Said, since the upstream may now get
                // the event a second time, with the lost attempt's `Hookgate-Attempt` number.
                metrics::counter!("hookgate_leases_taken_over_total", "route" => route.to_string())
                    .increment(1);
                tracing::warn!(route = %route, event_id = %ev.id, attempts = ev.attempts, visibility_timeout_ms = s.visibility.as_millis() as u64, "taking over an event whose lease lapsed (not renewed for the visibility timeout: the replica that held it was killed or cut off from Redis, or a lease's reply was lost); if an attempt of it was under way, the upstream may get it a second time");
            }
            leased.insert(ev.id.clone(), (route.to_string(), entry));
            out.push(ev);
        }
        Ok((out, bytes >= LEASE_BYTES))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn accept(&self, ev: NewEvent, dedupe: Option<DedupeKey>) -> Result<Accept, StoreError> {
        let s = &self.inner;
        s.durable()?;
        s.remember_route(&ev.route).await?;
        let k = &s.keys;
        let mut inv = scripts::ACCEPT.key(k.event(&ev.route, &ev.id));
        inv.key(k.stream(&ev.route))
            .key(k.state(&ev.route, State::Pending));
        let ttl = match &dedupe {
            Some(d) => {
                for key in d.keys() {
                    inv.key(k.dedupe(&ev.route, key));
                }
                (d.expires_at_ms - ev.received_at_ms).max(1)
            }
            None => 0,
        };
        inv.arg(&ev.id).arg(ev.received_at_ms).arg(ttl);
        for (f, v) in codec::event_fields(&ev) {
            inv.arg(f).arg(v);
        }
        let mut conn = s.ingress.clone();
        let reply: Value = bounded(OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        let reply = array(reply)?;
        let (flag, id) = match (reply.first().and_then(int), reply.get(1).and_then(string)) {
            (Some(f), Some(id)) => (f, id),
            _ => return Err(bad("accept")),
        };
        Ok(if flag == 1 {
            Accept::Accepted(id)
        } else {
            Accept::Duplicate(id)
        })
    }

    async fn lease(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        // One script call stops at LEASE_BYTES of bodies, to hold Redis briefly; the calls go
        // on while that cut one short, so a worker gets as many events as it has room for
        // (one call's worth alone looked like "nothing more is due": large events were
        // delivered ~8 at a time whatever the route's concurrency).
        while out.len() < limit {
            let (more, cut_short) = match self.lease_once(route, limit - out.len(), now_ms).await {
                Ok(r) => r,
                // The events of the calls before are leased here already: returned, they are
                // attempted; dropped with the error, they would stay leased (renewed by the
                // heartbeat, taken over by no replica) and never attempted.
                Err(e) if !out.is_empty() => {
                    tracing::warn!(route = %route, leased = out.len(), error = %e, "cannot lease more events; delivering those leased");
                    break;
                }
                Err(e) => return Err(e),
            };
            if !cut_short || more.is_empty() {
                out.extend(more);
                break;
            }
            out.extend(more);
        }
        Ok(out)
    }

    async fn next_due(&self, route: &str) -> Result<Option<i64>, StoreError> {
        let s = &self.inner;
        let mut inv = scripts::NEXT_DUE.key(s.keys.stream(route));
        inv.key(s.keys.retry(route))
            .arg(GROUP)
            .arg(crate::forward::worker::now_ms());
        let mut conn = s.work.clone();
        let v: Value = bounded(OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        Ok(int(&v))
    }

    async fn settle(&self, ev: &Event, attempt: Attempt, next: Next) -> Result<(), StoreError> {
        let s = &self.inner;
        let entry = s
            .leased
            .lock()
            .ok()
            .and_then(|l| l.get(&ev.id).map(|(_, e)| e.clone()))
            .unwrap_or_default();
        let now = attempt.started_at_ms + attempt.latency_ms as i64;
        let (state, next_at, error) = match &next {
            Next::Delivered => ("delivered", 0, String::new()),
            Next::Retry { at_ms } => ("pending", *at_ms, attempt.detail.clone()),
            Next::Dead { reason } => ("dead", 0, reason.clone()),
        };
        let mut inv = scripts::SETTLE.prepare_invoke();
        s.route_keys(&mut inv, &ev.route, &ev.id);
        inv.arg(GROUP)
            .arg(&entry)
            .arg(codec::attempt_json(&attempt))
            .arg(LOG_CAP)
            .arg(state)
            .arg(next_at)
            .arg(error)
            .arg(now)
            .arg(attempt.n)
            .arg(s.retention_ms + TTL_MARGIN_MS)
            .arg(&ev.id)
            .arg(ev.cycle_started_at_ms)
            .arg(attempt.started_at_ms);
        let mut conn = s.work.clone();
        let r: i64 = bounded(OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        if r == 0 {
            // Redis no longer holds the event (restart without AOF, a failover to a replica
            // that lacked it, FLUSHALL): this attempt's outcome had nowhere to go, and no
            // retry will come. Said as loudly as the lease does.
            metrics::counter!("hookgate_store_errors_total").increment(1);
            let what = match next {
                Next::Delivered => "the upstream has it (this attempt delivered it), but its record is gone",
                _ => "its outcome is not recorded and nothing more will be attempted: the event is lost",
            };
            tracing::error!(route = %ev.route, event_id = %ev.id, attempt = attempt.n, "Redis no longer holds the event this attempt settles (evicted, flushed, or a failover to a replica that lacked it); {what}");
        } else if r == 2 {
            tracing::info!(route = %ev.route, event_id = %ev.id, "event was replayed or taken over during the attempt; its newer delivery decides its state");
        } else if r == 3 {
            tracing::debug!(route = %ev.route, event_id = %ev.id, attempt = attempt.n, "the attempt was recorded already (a settle retried after its reply was lost)");
        }
        // Released only once the new state is recorded, as in the embedded store.
        if let Ok(mut l) = s.leased.lock() {
            l.remove(&ev.id);
        }
        Ok(())
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventDetail>, StoreError> {
        let s = &self.inner;
        let Some(route) = s.find(event_id).await? else {
            return Ok(None);
        };
        let mut p = ::redis::pipe();
        p.cmd("HMGET")
            .arg(s.keys.event(&route, event_id))
            .arg(&codec::SUMMARY_FIELDS[..])
            .cmd("HMGET")
            .arg(s.keys.event(&route, event_id))
            .arg(&[
                "method",
                "query",
                "headers",
                "duplicates",
                "last_duplicate_at",
            ])
            .cmd("LRANGE")
            .arg(s.keys.log(&route, event_id))
            .arg(0)
            .arg(-1);
        let mut conn = s.work.clone();
        let (summary, detail, log): (Vec<Value>, Vec<Value>, Vec<Vec<u8>>) =
            bounded(OP_TIMEOUT, p.query_async(&mut conn)).await?;
        let Some(summary) = codec::summary(event_id, &summary) else {
            return Ok(None);
        };
        let text = |i: usize| detail.get(i).and_then(string);
        Ok(Some(EventDetail {
            summary,
            method: text(0).unwrap_or_default(),
            query: text(1),
            headers: text(2)
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or(serde_json::Value::Null),
            duplicates: text(3).and_then(|n| n.parse().ok()).unwrap_or(0),
            last_duplicate_at: text(4)
                .and_then(|t| t.parse().ok())
                .map(crate::store::rfc3339_ms),
            attempt_log: log
                .iter()
                .filter_map(|a| codec::attempt_from_json(a))
                .collect(),
            replays: log
                .iter()
                .filter_map(|a| codec::replay_from_json(a))
                .collect(),
        }))
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<EventSummary>, StoreError> {
        let s = &self.inner;
        let routes = match &q.route {
            Some(r) => vec![r.clone()],
            None => s.routes().await?,
        };
        let states = match q.state {
            Some(st) => vec![st],
            None => vec![State::Pending, State::Delivered, State::Dead],
        };
        if routes.is_empty() || q.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = s.work.clone();
        if let Some(key) = &q.key {
            // Through the dedupe keys: an event is found by its key while the key is kept
            // (the route's dedupe `ttl`), with no scan.
            let mut p = ::redis::pipe();
            let mut sources = Vec::new();
            for r in &routes {
                for k in crate::dedupe::keys_matching(key) {
                    p.cmd("GET").arg(s.keys.dedupe(r, &k));
                    sources.push(r.clone());
                }
            }
            let found: Vec<Option<String>> =
                bounded(SLOW_OP_TIMEOUT, p.query_async(&mut conn)).await?;
            let mut ids: Vec<(String, String)> = sources
                .into_iter()
                .zip(found)
                .filter_map(|(r, id)| Some((id?, r)))
                .collect();
            ids.sort_by(|a, b| b.0.cmp(&a.0));
            ids.dedup();
            let mut events = s.summaries(&mut conn, &ids).await?;
            events.retain(|e| q.state.is_none() || q.state == Some(e.state));
            if let Some(before) = &q.before {
                events.retain(|e| &e.event_id < before);
            }
            events.truncate(q.limit);
            return Ok(events);
        }
        // The state sets are scored by the time received: newest first is by score, then id.
        // `before` continues after an event: where it sits in that order (its receipt time,
        // or the time in its UUIDv7 id once it is gone).
        // (An event received within a millisecond of a cursor event that is gone may be
        // listed again: its id's time can be a little later than its receipt.)
        let mut cursor = match &q.before {
            Some(b) => Some((
                s.received_at(b).await?.or_else(|| uuid7_ms(b)).unwrap_or(0),
                b.clone(),
            )),
            None => None,
        };
        // An id whose event is gone (purged or discarded since) is skipped: the next ids
        // fill its place, so a short page means the end of the list. A few rounds at most.
        let mut events = Vec::new();
        for _ in 0..LIST_ROUNDS {
            let rows = s
                .list_ids(&mut conn, &routes, &states, q.limit, cursor.as_ref())
                .await?;
            let full = rows.len() == q.limit;
            cursor = rows.last().map(|(sc, id, _)| (*sc, id.clone()));
            let ids: Vec<(String, String)> = rows.into_iter().map(|(_, id, r)| (id, r)).collect();
            let got = s.summaries(&mut conn, &ids).await?;
            events.extend(got.into_iter().take(q.limit - events.len()));
            if !full || events.len() == q.limit {
                break;
            }
        }
        Ok(events)
    }

    async fn counts(&self, route: &str) -> Result<RouteCounts, StoreError> {
        let s = &self.inner;
        // MULTI/EXEC: one snapshot, no settle between the three counts.
        let mut p = ::redis::pipe();
        p.atomic();
        for st in [State::Pending, State::Delivered, State::Dead] {
            p.cmd("ZCARD").arg(s.keys.state(route, st));
        }
        let mut conn = s.work.clone();
        let (pending, delivered, dead): (u64, u64, u64) =
            bounded(OP_TIMEOUT, p.query_async(&mut conn)).await?;
        Ok(RouteCounts {
            pending,
            delivered,
            dead,
        })
    }

    async fn routes_with_undelivered(&self) -> Result<Vec<String>, StoreError> {
        let s = &self.inner;
        let routes = s.routes().await?;
        let mut p = ::redis::pipe();
        for r in &routes {
            p.cmd("ZCARD").arg(s.keys.state(r, State::Pending));
            p.cmd("ZCARD").arg(s.keys.state(r, State::Dead));
        }
        let mut conn = s.work.clone();
        let n: Vec<u64> = bounded(OP_TIMEOUT, p.query_async(&mut conn)).await?;
        Ok(routes
            .into_iter()
            .zip(n.chunks(2))
            .filter(|(_, c)| c.iter().any(|&x| x > 0))
            .map(|(r, _)| r)
            .collect())
    }

    async fn replay(&self, event_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let s = &self.inner;
        let Some(route) = s.find(event_id).await? else {
            return Ok(false);
        };
        let mut inv = scripts::REPLAY.prepare_invoke();
        s.route_keys(&mut inv, &route, event_id);
        inv.arg(s.keys.tag(&route))
            .arg(event_id)
            .arg(now_ms)
            .arg(GROUP)
            .arg(s.visibility.as_millis() as u64);
        let mut conn = s.work.clone();
        let n: i64 = bounded(OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn discard_dead(&self, event_id: &str) -> Result<bool, StoreError> {
        let s = &self.inner;
        let Some(route) = s.find(event_id).await? else {
            return Ok(false);
        };
        let mut inv = scripts::DISCARD_DEAD.key(s.keys.event(&route, event_id));
        inv.key(s.keys.log(&route, event_id))
            .key(s.keys.state(&route, State::Dead))
            .arg(event_id);
        let mut conn = s.work.clone();
        let n: i64 = bounded(OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn bring_forward(
        &self,
        route: &str,
        beyond_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let s = &self.inner;
        let mut conn = s.work.clone();
        let mut total = 0u64;
        loop {
            let mut inv = scripts::BRING_FORWARD.key(s.keys.retry(route));
            inv.arg(s.keys.tag(route))
                .arg(beyond_ms)
                .arg(now_ms)
                .arg(BATCH);
            let n: u64 = bounded(SLOW_OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn replay_dead(&self, route: &str, now_ms: i64) -> Result<u64, StoreError> {
        let s = &self.inner;
        let k = &s.keys;
        let mut conn = s.work.clone();
        // Pages of the dead set from its head, each after the last event the previous one
        // looked at. Only events that died before `now_ms` are replayed: each at most once.
        let (mut total, mut score, mut after) = (0u64, String::new(), String::new());
        loop {
            let mut inv = scripts::REPLAY_DEAD.key(k.stream(route));
            inv.key(k.retry(route))
                .key(k.state(route, State::Pending))
                .key(k.state(route, State::Delivered))
                .key(k.state(route, State::Dead))
                .key(k.gc(route))
                .arg(k.tag(route))
                .arg(now_ms)
                .arg(GROUP)
                .arg(s.visibility.as_millis() as u64)
                .arg(&score)
                .arg(&after)
                .arg(BATCH);
            let (n, looked, last_score, last_id): (u64, u64, String, String) =
                bounded(SLOW_OP_TIMEOUT, inv.invoke_async(&mut conn))
                    .await
                    .map_err(|e| replay_stopped(route, total, e))?;
            total += n;
            if looked < BATCH as u64 {
                return Ok(total);
            }
            (score, after) = (last_score, last_id);
        }
    }

    async fn purge(&self, now_ms: i64) -> Result<(), StoreError> {
        let s = &self.inner;
        let cutoff = now_ms - s.retention_ms;
        for route in s.routes().await? {
            loop {
                let mut inv = scripts::PURGE.key(s.keys.gc(&route));
                inv.key(s.keys.state(&route, State::Delivered))
                    .arg(cutoff)
                    .arg(BATCH)
                    .arg(s.keys.tag(&route));
                let mut conn = s.work.clone();
                let n: u64 = bounded(SLOW_OP_TIMEOUT, inv.invoke_async(&mut conn)).await?;
                if n < BATCH as u64 {
                    break;
                }
            }
            // Housekeeping: a failure here must not stop the next routes' purge.
            if let Err(e) = s.drop_stale_consumers(&route).await {
                tracing::warn!(route = %route, error = %e, "cannot remove stale stream consumers");
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let s = &self.inner;
        s.durable()?;
        let mut conn = s.ingress.clone();
        bounded(
            OP_TIMEOUT,
            ::redis::cmd("SET")
                .arg(s.keys.ping())
                .arg(crate::forward::worker::now_ms())
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut conn),
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::{parse, StoreBackend};

    const ROUTE: &str = "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.verify]\nscheme = \"none\"\n[route.forward]\nurl = \"http://127.0.0.1:9/\"\n";

    #[test]
    fn visibility_timeout_is_a_redis_key_with_a_sane_default() {
        let (cfg, _) = parse(&format!("[store]\nbackend = \"redis\"\n{ROUTE}")).unwrap();
        let StoreBackend::Redis {
            visibility_timeout,
            key_prefix,
            ..
        } = cfg.store.backend
        else {
            panic!("not redis")
        };
        assert_eq!(visibility_timeout, super::DEFAULT_VISIBILITY_TIMEOUT);
        assert_eq!(key_prefix, "hookgate");
        for (store, err) in [
            ("visibility_timeout = \"5s\"", "store.visibility_timeout: only used with backend = \"redis\""),
            ("backend = \"redis\"\nvisibility_timeout = \"10ms\"", "store.visibility_timeout: must be at least 1s"),
            ("backend = \"redis\"\nkey_prefix = \"a{b}\"", "store.key_prefix: \"a{b}\" must be non-empty and contain no braces (they are the key's hash tag)"),
        ] {
            let problems = parse(&format!("[store]\n{store}\n{ROUTE}")).unwrap_err();
            assert_eq!(problems.errors, vec![err.to_string()], "{store}");
        }
    }
}
