//! The embedded store: SQLite in WAL mode (rusqlite, bundled), one file under `store.path`.
//!
//! Durability: `PRAGMA synchronous = FULL` makes every commit fsync the WAL, so an event is on
//! disk when `accept` returns. Group commit: one writer thread owns the write connection and
//! drains every queued write into a single transaction (each write in its own savepoint), so
//! concurrent requests share one fsync. Replies are sent only after COMMIT returned; if the
//! commit fails every write in the batch is answered with an error (→ 503), never accepted.
//!
//! Crash behaviour: a `kill -9` loses at most writes whose transaction had not committed, and
//! none of those were answered. Leases live in memory, so after a restart every pending event
//! is due again: delivery is at least once. Reads (leases, admin) use a separate connection;
//! WAL lets them run beside the writer.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    method TEXT NOT NULL,
    query TEXT,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    scheme TEXT NOT NULL,
    dedupe_key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cycle_attempts INTEGER NOT NULL DEFAULT 0,
    cycle_started_at INTEGER NOT NULL,
    next_attempt_at INTEGER,
    updated_at INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events(route, next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_by_state ON events(route, state, id);
CREATE INDEX IF NOT EXISTS events_by_age ON events(state, updated_at);
CREATE TABLE IF NOT EXISTS dedupe (
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (route, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe(expires_at);
CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (event_id, n)
) WITHOUT ROWID;
";

/// Most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 1024;
/// Writes queued before `accept` answers busy (→ 503).
const QUEUE: usize = 16 * 1024;

enum Write {
    /// The event, its headers already as JSON (serialized on the caller's task, not on the
    /// single writer thread), and its key.
    Accept(
        Box<(NewEvent, String)>,
        Option<DedupeKey>,
        oneshot::Sender<Result<Accept, String>>,
    ),
    /// Event id and the cycle (start of its retry budget) the attempt belongs to.
    Settle(
        (String, i64),
        Attempt,
        Next,
        oneshot::Sender<Result<(), String>>,
    ),
    Replay(
        Option<String>,
        Option<String>,
        i64,
        oneshot::Sender<Result<u64, String>>,
    ),
    Purge(i64, oneshot::Sender<Result<(), String>>),
}

pub struct EmbeddedStore {
    /// Dropped with the store, which stops the checkpoint thread.
    _alive: Arc<()>,
    /// Transactions committed by the writer (each one fsync): fewer than writes under load.
    commits: Arc<std::sync::atomic::AtomicU64>,
    tx: mpsc::Sender<Write>,
    reader: Arc<Mutex<Connection>>,
    leased: Arc<Mutex<HashSet<String>>>,
}

fn open_conn(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    // A locked database answers 503 after this long instead of holding the request.
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl EmbeddedStore {
    pub fn open(dir: &Path, retention: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("store.path: cannot create {}: {e}", dir.display()))?;
        let file = dir.join("hookgate.db");
        let writer = open_conn(&file)
            .map_err(|e| anyhow::anyhow!("store.path: cannot open {}: {e}", file.display()))?;
        writer.execute_batch(SCHEMA)?;
        // Checkpoints run on their own thread, so no group commit waits for one.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let alive = Arc::new(());
        let checkpointer = open_conn(&file)?;
        let token = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("hookgate-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, token))?;
        let reader = open_conn(&file)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let retention_ms = retention.as_millis() as i64;
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("hookgate-store".into())
            .spawn(move || writer_loop(writer, rx, retention_ms, &counter))?;
        Ok(EmbeddedStore {
            _alive: alive,
            commits,
            tx,
            reader: Arc::new(Mutex::new(reader)),
            leased: Arc::default(),
        })
    }

    /// Transactions committed so far (each one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Write,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("writer stopped".into())
            }
        })?;
        match rx.await {
            Ok(r) => r.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Unavailable("writer stopped".into())),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| StoreError::Unavailable("reader poisoned".into()))?;
            f(&conn).map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Write>,
    retention_ms: i64,
    commits: &std::sync::atomic::AtomicU64,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut synchronous_full = true;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // A batch of settles (and purges) only need not wait for its fsync: losing it in a
        // crash means an attempt is made again, which at-least-once allows; it is made durable
        // by the next fsync'd commit or checkpoint (the WAL is synced in order).
        let full = batch
            .iter()
            .any(|w| matches!(w, Write::Accept(..) | Write::Replay(..)));
        if full != synchronous_full {
            let mode = if full { "FULL" } else { "NORMAL" };
            if conn.pragma_update(None, "synchronous", mode).is_ok() {
                synchronous_full = full;
            }
        }
        if !synchronous_full && full {
            // Could not switch back to FULL: refuse rather than answer 2xx undurably.
            for w in batch.drain(..) {
                reply(
                    w,
                    Err("cannot make the commit durable (synchronous=FULL)".into()),
                );
            }
            continue;
        }
        commit_batch(&mut conn, &mut batch, retention_ms);
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies committed WAL frames into the database every `CHECKPOINT_EVERY` (PASSIVE: never
/// blocks the writer or readers); the writer then reuses the WAL from its start.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store: WAL checkpoint failed");
        }
    }
}

const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// What a write produced, before it is sent to its caller.
enum Out {
    Accept(Accept),
    Unit,
    Count(u64),
}

fn run(tx: &Connection, w: &Write, retention_ms: i64) -> rusqlite::Result<Out> {
    Ok(match w {
        Write::Accept(ev, key, _) => Out::Accept(accept_tx(tx, &ev.0, &ev.1, key.as_ref())?),
        Write::Settle((id, cycle), attempt, next, _) => {
            settle_tx(tx, id, *cycle, attempt, next)?;
            Out::Unit
        }
        Write::Replay(id, route, now, _) => {
            Out::Count(replay_tx(tx, id.as_deref(), route.as_deref(), *now)?)
        }
        Write::Purge(now, _) => {
            purge_tx(tx, *now, retention_ms)?;
            Out::Unit
        }
    })
}

fn reply(w: Write, r: Result<Out, String>) {
    match w {
        Write::Accept(_, _, tx) => drop(tx.send(r.and_then(|o| match o {
            Out::Accept(a) => Ok(a),
            _ => Err("internal: wrong result".into()),
        }))),
        Write::Settle(_, _, _, tx) | Write::Purge(_, tx) => drop(tx.send(r.map(|_| ()))),
        Write::Replay(_, _, _, tx) => drop(tx.send(r.map(|o| match o {
            Out::Count(n) => n,
            _ => 0,
        }))),
    }
}

/// One transaction for the whole batch (group commit); replies go out only after COMMIT.
/// If any write fails, the whole transaction is rolled back and each write is run again in a
/// transaction of its own, so one bad write cannot fail or half-apply the others.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Write>, retention_ms: i64) {
    let fast = (|| -> rusqlite::Result<Vec<Out>> {
        let tx = conn.transaction()?;
        let outs = batch
            .iter()
            .map(|w| run(&tx, w, retention_ms))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(outs)
    })();
    match fast {
        Ok(outs) => {
            for (w, o) in batch.drain(..).zip(outs) {
                reply(w, Ok(o));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "store: batch failed; retrying its writes one by one");
            for w in batch.drain(..) {
                let r = (|| -> rusqlite::Result<Out> {
                    let tx = conn.transaction()?;
                    let o = run(&tx, &w, retention_ms)?;
                    tx.commit()?;
                    Ok(o)
                })();
                if r.is_err() {
                    metrics::counter!("hookgate_store_errors_total").increment(1);
                }
                reply(w, r.map_err(|e| e.to_string()));
            }
        }
    }
}

fn accept_tx(
    tx: &Connection,
    ev: &NewEvent,
    headers_json: &str,
    key: Option<&DedupeKey>,
) -> rusqlite::Result<Accept> {
    if let Some(k) = key {
        let seen: Option<String> = tx
            .prepare_cached(
                "SELECT event_id FROM dedupe WHERE route = ?1 AND key = ?2 AND expires_at > ?3",
            )?
            .query_row(params![ev.route, k.key, ev.received_at_ms], |r| r.get(0))
            .optional()?;
        if let Some(original) = seen {
            return Ok(Accept::Duplicate(original));
        }
        tx.prepare_cached("INSERT OR REPLACE INTO dedupe (route, key, event_id, expires_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ev.route, k.key, ev.id, k.expires_at_ms])?;
    }
    tx.prepare_cached(
        "INSERT INTO events (id, route, received_at, method, query, headers, body, scheme, dedupe_key,
                             state, cycle_started_at, next_attempt_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?3, ?3, ?3)",
    )?
    .execute(params![
        ev.id,
        ev.route,
        ev.received_at_ms,
        ev.method,
        ev.query,
        headers_json,
        &ev.body[..],
        ev.scheme,
        key.map(|k| k.key.as_str()),
    ])?;
    Ok(Accept::Accepted(ev.id.clone()))
}

/// Records the attempt; moves the event to its next state only if it was not replayed while
/// the attempt ran (a replay starts a new cycle, and the replay wins).
fn settle_tx(
    tx: &Connection,
    id: &str,
    cycle: i64,
    a: &Attempt,
    next: &Next,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO attempts (event_id, n, started_at, outcome, status, latency_ms, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![id, a.n, a.started_at_ms, a.outcome, a.status, a.latency_ms as i64, a.detail])?;
    let now = a.started_at_ms + a.latency_ms as i64;
    let (state, next_at, err): (&str, Option<i64>, Option<&str>) = match next {
        Next::Delivered => ("delivered", None, None),
        Next::Retry { at_ms } => ("pending", Some(*at_ms), Some(a.detail.as_str())),
        Next::Dead { reason } => ("dead", None, Some(reason.as_str())),
    };
    tx.prepare_cached(
        "UPDATE events SET state = ?2, next_attempt_at = ?3, last_error = ?4, updated_at = ?5,
                cycle_attempts = cycle_attempts + 1
         WHERE id = ?1 AND cycle_started_at = ?6",
    )?
    .execute(params![id, state, next_at, err, now, cycle])?;
    tx.prepare_cached("UPDATE events SET attempts = MAX(attempts, ?2) WHERE id = ?1")?
        .execute(params![id, a.n])?;
    Ok(())
}

fn replay_tx(
    tx: &Connection,
    id: Option<&str>,
    route: Option<&str>,
    now: i64,
) -> rusqlite::Result<u64> {
    const SET: &str =
        "UPDATE events SET state = 'pending', next_attempt_at = ?1, cycle_attempts = 0,
                       cycle_started_at = ?1, updated_at = ?1, last_error = NULL";
    let n = match (id, route) {
        (Some(id), _) => tx.execute(&format!("{SET} WHERE id = ?2"), params![now, id])?,
        (None, Some(route)) => tx.execute(
            &format!("{SET} WHERE route = ?2 AND state = 'dead'"),
            params![now, route],
        )?,
        (None, None) => 0,
    };
    Ok(n as u64)
}

fn purge_tx(tx: &Connection, now: i64, retention_ms: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM dedupe WHERE expires_at <= ?1", params![now])?;
    let cutoff = now - retention_ms;
    tx.execute(
        "DELETE FROM attempts WHERE event_id IN
            (SELECT id FROM events WHERE state = 'delivered' AND updated_at < ?1)",
        params![cutoff],
    )?;
    tx.execute(
        "DELETE FROM events WHERE state = 'delivered' AND updated_at < ?1",
        params![cutoff],
    )?;
    Ok(())
}

const SUMMARY_COLS: &str = "id, route, state, received_at, attempts, next_attempt_at, last_error, dedupe_key, scheme, length(body)";

fn summary(r: &rusqlite::Row) -> rusqlite::Result<EventSummary> {
    let state: String = r.get(2)?;
    Ok(EventSummary {
        event_id: r.get(0)?,
        route: r.get(1)?,
        state: State::parse(&state).unwrap_or(State::Pending),
        received_at: rfc3339_ms(r.get(3)?),
        attempts: r.get(4)?,
        next_attempt_at: r.get::<_, Option<i64>>(5)?.map(rfc3339_ms),
        last_error: r.get(6)?,
        dedupe_key: r.get(7)?,
        verified: r.get(8)?,
        body_bytes: r.get::<_, i64>(9)? as usize,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn accept(&self, ev: NewEvent, dedupe: Option<DedupeKey>) -> Result<Accept, StoreError> {
        let headers = ev.headers.to_json();
        self.write(|r| Write::Accept(Box::new((ev, headers)), dedupe, r))
            .await
    }

    async fn lease(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let leased = self.leased.clone();
        let route = route.to_string();
        self.read(move |conn| {
            let mut leased = leased.lock().map_err(|_| rusqlite::Error::InvalidQuery)?;
            let mut stmt = conn.prepare_cached(
                "SELECT id, route, received_at, method, query, headers, body, scheme, attempts,
                        cycle_attempts, cycle_started_at
                 FROM events WHERE route = ?1 AND state = 'pending' AND next_attempt_at <= ?2
                 ORDER BY next_attempt_at LIMIT ?3",
            )?;
            let rows =
                stmt.query_map(params![route, now_ms, (limit + leased.len()) as i64], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        route: r.get(1)?,
                        received_at_ms: r.get(2)?,
                        method: r.get(3)?,
                        query: r.get(4)?,
                        headers: StoredHeaders::from_json(&r.get::<_, String>(5)?),
                        body: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                        scheme: r.get(7)?,
                        attempts: r.get(8)?,
                        cycle_attempts: r.get(9)?,
                        cycle_started_at_ms: r.get(10)?,
                    })
                })?;
            let mut out = Vec::new();
            for ev in rows {
                let ev = ev?;
                if out.len() < limit && leased.insert(ev.id.clone()) {
                    out.push(ev);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_due(&self, route: &str) -> Result<Option<i64>, StoreError> {
        let leased = self.leased.clone();
        let route = route.to_string();
        self.read(move |conn| {
            let leased = leased.lock().map_err(|_| rusqlite::Error::InvalidQuery)?;
            let mut stmt = conn.prepare_cached(
                "SELECT id, next_attempt_at FROM events WHERE route = ?1 AND state = 'pending'
                 ORDER BY next_attempt_at LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![route, (leased.len() + 1) as i64])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                if !leased.contains(&id) {
                    return r.get(1);
                }
            }
            Ok(None)
        })
        .await
    }

    async fn settle(&self, ev: &Event, attempt: Attempt, next: Next) -> Result<(), StoreError> {
        let id = (ev.id.clone(), ev.cycle_started_at_ms);
        let r = self.write(|r| Write::Settle(id, attempt, next, r)).await;
        // Released only once the new state is committed, so no second lease can see the old one.
        if r.is_ok() {
            if let Ok(mut l) = self.leased.lock() {
                l.remove(&ev.id);
            }
        }
        r
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventDetail>, StoreError> {
        let id = event_id.to_string();
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!("SELECT {SUMMARY_COLS}, method, query, headers FROM events WHERE id = ?1"),
                    params![id],
                    |r| Ok((summary(r)?, r.get::<_, String>(10)?, r.get::<_, Option<String>>(11)?, r.get::<_, String>(12)?)),
                )
                .optional()?;
            let Some((summary, method, query, headers)) = found else { return Ok(None) };
            let mut stmt = conn.prepare_cached(
                "SELECT n, started_at, outcome, status, latency_ms, detail FROM attempts WHERE event_id = ?1 ORDER BY n",
            )?;
            let attempt_log = stmt
                .query_map(params![id], |r| {
                    let outcome: String = r.get(2)?;
                    Ok(Attempt {
                        n: r.get(0)?,
                        started_at_ms: r.get(1)?,
                        outcome: match outcome.as_str() {
                            "delivered" => "delivered",
                            "dead" => "dead",
                            _ => "retry",
                        },
                        status: r.get(3)?,
                        latency_ms: r.get::<_, i64>(4)? as u64,
                        detail: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let headers = serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null);
            Ok(Some(EventDetail { summary, method, query, headers, attempt_log }))
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<EventSummary>, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLS} FROM events
                 WHERE (?1 IS NULL OR route = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![q.route, q.state.map(State::as_str), q.limit as i64],
                summary,
            )?;
            rows.collect()
        })
        .await
    }

    async fn counts(&self, route: &str) -> Result<RouteCounts, StoreError> {
        let route = route.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*) FROM events WHERE route = ?1 GROUP BY state",
            )?;
            let mut c = RouteCounts::default();
            let mut rows = stmt.query(params![route])?;
            while let Some(r) = rows.next()? {
                let n = r.get::<_, i64>(1)? as u64;
                match State::parse(&r.get::<_, String>(0)?) {
                    Some(State::Pending) => c.pending = n,
                    Some(State::Delivered) => c.delivered = n,
                    Some(State::Dead) => c.dead = n,
                    None => {}
                }
            }
            Ok(c)
        })
        .await
    }

    async fn replay(&self, event_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        Ok(self
            .write(|r| Write::Replay(Some(id), None, now_ms, r))
            .await?
            > 0)
    }

    async fn replay_dead(&self, route: &str, now_ms: i64) -> Result<u64, StoreError> {
        let route = route.to_string();
        self.write(|r| Write::Replay(None, Some(route), now_ms, r))
            .await
    }

    async fn purge(&self, now_ms: i64) -> Result<(), StoreError> {
        self.write(|r| Write::Purge(now_ms, r)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verified;

    fn event(route: &str, body: &'static str) -> NewEvent {
        let parts = http::Request::post("/x?q=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let v = Verified {
            scheme: "none",
            event_id: None,
            secret_index: None,
        };
        NewEvent::new(
            route,
            &parts,
            Bytes::from_static(body.as_bytes()),
            &v,
            1_000,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_accepts_share_commits_and_one_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        let before = store.commits();
        let mut tasks = Vec::new();
        for i in 0..400 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Every fourth request shares one key.
                let key = (i % 4 == 0).then(|| DedupeKey {
                    key: "same".into(),
                    expires_at_ms: 10_000,
                });
                store.accept(event("r", "b"), key).await.unwrap()
            }));
        }
        let mut accepted = 0;
        let mut originals = HashSet::new();
        for t in tasks {
            match t.await.unwrap() {
                Accept::Accepted(_) => accepted += 1,
                Accept::Duplicate(id) => {
                    originals.insert(id);
                }
            }
        }
        assert_eq!(accepted, 301, "300 unkeyed + one of the 100 keyed");
        assert_eq!(
            originals.len(),
            1,
            "every duplicate names the same original"
        );
        let commits = store.commits() - before;
        assert!(
            commits < 400,
            "group commit: {commits} transactions for 400 writes"
        );
        assert_eq!(store.counts("r").await.unwrap().pending, 301);
    }

    #[tokio::test]
    async fn a_replay_during_an_attempt_wins_over_its_settle() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let Accept::Accepted(id) = store.accept(event("r", "x"), None).await.unwrap() else {
            panic!()
        };
        let leased = store.lease("r", 10, 2_000).await.unwrap();
        assert_eq!(leased.len(), 1);
        assert!(store.replay(&id, 3_000).await.unwrap());
        let attempt = Attempt {
            n: 1,
            started_at_ms: 2_000,
            outcome: "delivered",
            status: Some(200),
            latency_ms: 5,
            detail: String::new(),
        };
        store
            .settle(&leased[0], attempt, Next::Delivered)
            .await
            .unwrap();
        let ev = store.get(&id).await.unwrap().unwrap();
        assert_eq!(ev.summary.state, State::Pending, "the replay is not lost");
        assert_eq!(
            (ev.summary.attempts, ev.attempt_log.len()),
            (1, 1),
            "the attempt is still recorded"
        );
        let again = store.lease("r", 10, 3_000).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1, "the next attempt is number 2");
    }

    #[tokio::test]
    async fn expired_keys_count_as_new_and_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let key = |exp| {
            Some(DedupeKey {
                key: "k".into(),
                expires_at_ms: exp,
            })
        };
        let mut first = event("r", "a");
        first.received_at_ms = 1_000;
        assert!(matches!(
            store.accept(first, key(2_000)).await.unwrap(),
            Accept::Accepted(_)
        ));
        let mut within = event("r", "a");
        within.received_at_ms = 1_999;
        assert!(matches!(
            store.accept(within, key(2_999)).await.unwrap(),
            Accept::Duplicate(_)
        ));
        let mut after = event("r", "a");
        after.received_at_ms = 2_000;
        assert!(
            matches!(
                store.accept(after, key(3_000)).await.unwrap(),
                Accept::Accepted(_)
            ),
            "a key counts only within its window"
        );
        store.purge(5_000).await.unwrap();
        let left: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM dedupe", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(left, 0, "expired keys purged");
    }
}
