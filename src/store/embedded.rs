//! The embedded store: SQLite in WAL mode (rusqlite, bundled), one file under `store.path`.
//!
//! Durability: `PRAGMA synchronous = FULL` makes every commit fsync the WAL, so an event is on
//! disk when `accept` returns. Group commit: one writer thread owns the write connection and
//! drains every queued write into a single transaction, so concurrent requests share one
//! fsync. Replies are sent only after COMMIT returned; if the transaction fails it is rolled
//! back and each write is run again in its own, so one bad write fails alone (→ 503).
//!
//! Crash behaviour: a `kill -9` loses at most writes whose transaction had not committed, and
//! none of those were answered. Leases live in memory, so after a restart every pending event
//! is due again: delivery is at least once. Reads (leases, admin) use a separate connection;
//! WAL lets them run beside the writer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::keys::{self, Keys};
use super::*;

/// Indexes are chosen so a request touches few pages: accepts append to `events_by_route`,
/// `events_pending` and `dedupe_keys` (ids, times and sequence numbers only grow), a settle
/// deletes from `events_pending`'s front, and only dead letters touch `events_dead`.
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
DROP INDEX IF EXISTS events_due;
DROP INDEX IF EXISTS events_by_state;
DROP INDEX IF EXISTS events_by_age;
CREATE INDEX IF NOT EXISTS events_pending ON events(route, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_dead ON events(route, id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS events_by_route ON events(route, id);
CREATE TABLE IF NOT EXISTS dedupe_keys (
    seq INTEGER PRIMARY KEY,
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
DROP INDEX IF EXISTS dedupe_keys_expiry;
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
CREATE TABLE IF NOT EXISTS replays (
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    after_attempts INTEGER NOT NULL,
    was TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS replays_by_event ON replays(event_id);
CREATE TABLE IF NOT EXISTS duplicates (
    event_id TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    last_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (
    pid INTEGER PRIMARY KEY,
    raw_headers TEXT NOT NULL,
    raw_body BLOB NOT NULL
);
";

/// Events with what they carry. Since layout 2 an event's headers and body are in `payloads`,
/// written once, and its `events` row (state, attempts, times) is all a settle rewrites: with
/// the body in the row, every settle wrote the whole body to the WAL again, and draining a
/// backlog of large events after an outage filled the disk past `min_free_space` (a 40 MiB
/// disk and 50 KB bodies: 0 bytes free, checkpoints failing, deliveries never recorded). Rows
/// written before keep theirs in `events` (`headers`, `body`; empty in rows written since).
///
/// A payload is found by its `pid`, kept in the event's row (`events.payload`): rowids only
/// grow, so an accept appends to one B-tree, and a row of a few KiB stays in its page (a
/// table keyed by the event's id would need a second index, or, without a rowid, put every
/// body over ~1 KB on an overflow page of its own).
const EVENTS: &str = "events LEFT JOIN payloads ON pid = payload";

/// A new store's tables, or an older one's new tables and columns: a few pages.
fn make_tables(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    add_payload_column(conn)?;
    keys::migrate(conn)
}

/// Gives `events` its `payload` column (layout 2) where it has none yet.
fn add_payload_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'payload'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE events ADD COLUMN payload INTEGER")?;
    }
    Ok(())
}

/// The layout of the tables this build reads and writes, stamped in the file's header
/// (`PRAGMA user_version`; 0 in a store written before the stamp, read as 1). A build that
/// changes the layout raises it and migrates older stores; a store stamped higher than this
/// build knows is refused at open, before anything is written: a rollback to an older binary
/// (at 3 a.m., after a bad deploy) must not read a newer layout wrongly or write into it.
const SCHEMA_VERSION: i64 = 2;
/// `PRAGMA application_id`: "hkgt", marking the file as a hookgate store (`file(1)` shows it).
const APPLICATION_ID: i64 = 0x686b_6774;

/// Refuses a store this build cannot read (see [`SCHEMA_VERSION`]), on a read-only connection
/// opened before anything else (the writer's own sets WAL mode, which would change another
/// application's file). Returns whether the file needs stamping.
fn check_stamp(file: &Path) -> anyhow::Result<bool> {
    if !file.exists() {
        return Ok(true);
    }
    // Reading a store in WAL mode may need its shared-memory file written: on a full disk
    // that fails as an I/O error, which says nothing of the cause.
    let full = || match file.parent().map(rustix::fs::statvfs) {
        Some(Ok(s)) if s.f_bavail == 0 => {
            "; the disk under it has no space available: free some (a few MiB) and start again"
        }
        _ => "",
    };
    let conn = Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| {
            anyhow::anyhow!("store.path: cannot open {}: {e}{}", file.display(), full())
        })?;
    let header = |pragma: &str| -> anyhow::Result<i64> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(|e| {
                anyhow::anyhow!("store.path: cannot read {}: {e}{}", file.display(), full())
            })
    };
    let (app, version) = (header("application_id")?, header("user_version")?);
    // Every build that stamps a layout stamps the application id with it.
    if (app != 0 && app != APPLICATION_ID) || (app == 0 && version != 0) {
        anyhow::bail!(
            "store.path: {} is not a hookgate store (application_id {app:#x}, user_version {version}); nothing was changed",
            file.display()
        );
    }
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "store.path: {} was written by a newer hookgate (store layout {version}; this build reads up to {SCHEMA_VERSION}); nothing was changed. Run the newer version, or restore a backup made by this one (`hookgate backup`)",
            file.display()
        );
    }
    Ok(app != APPLICATION_ID || version != SCHEMA_VERSION)
}

/// Longest an accept waits for the writer to take it up before the request is answered 503.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(3);

/// Gives an accept up when its caller goes away before the writer took it up.
struct GiveUpOnDrop(Claim);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.give_up();
    }
}

/// Who has an accept: still queued, taken up by the writer (its transaction has begun: the
/// caller waits for the outcome, whatever the deadline), or given up by its caller at the
/// deadline (answered 503; the writer skips it). One compare-and-swap decides, so a 503
/// always means "not recorded".
#[derive(Clone, Default)]
struct Claim(Arc<std::sync::atomic::AtomicU8>);

impl Claim {
    const QUEUED: u8 = 0;
    const TAKEN: u8 = 1;
    const GIVEN_UP: u8 = 2;

    /// The writer's side: false if the caller gave up first.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        match self
            .0
            .compare_exchange(Self::QUEUED, Self::TAKEN, AcqRel, Acquire)
        {
            Ok(_) => true,
            Err(now) => now == Self::TAKEN,
        }
    }

    /// The caller's side: false if the writer took it first.
    fn give_up(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.0
            .compare_exchange(Self::QUEUED, Self::GIVEN_UP, AcqRel, Acquire)
            .is_ok()
    }
}
/// Most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 1024;
/// Writes queued before `accept` answers busy (→ 503).
const QUEUE: usize = 16 * 1024;

enum Write {
    /// The event, its headers already as JSON (serialized on the caller's task, not on the
    /// single writer thread), who has it ([`Claim`]), and its key.
    Accept(
        Box<(NewEvent, String, Claim)>,
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
    /// Event id, now: replays that event, whatever its state; replies how many (0 or 1).
    Replay(String, i64, oneshot::Sender<Result<u64, String>>),
    /// Route, after, now: one chunk of a route's replay-dead, up to `REPLAY_CHUNK` of its dead
    /// events with ids after `after`; replies how many and the last one's id.
    ReplayDead(
        String,
        String,
        i64,
        oneshot::Sender<Result<(u64, Option<String>), String>>,
    ),
    /// One chunk of a purge at `now`: up to `PURGE_CHUNK` expired keys and delivered events
    /// past the retention, the events after the id given (where the last chunk stopped).
    /// Replies whether more may be left, and where this chunk stopped.
    Purge(
        i64,
        Option<String>,
        oneshot::Sender<Result<(bool, Option<String>), String>>,
    ),
    /// Deletes the event and its attempts if it is dead; replies how many (0 or 1).
    Discard(String, oneshot::Sender<Result<u64, String>>),
    /// Route, beyond, now: the route's pending events scheduled after `beyond` become due at
    /// `now`; replies how many.
    BringForward(String, i64, i64, oneshot::Sender<Result<u64, String>>),
}

pub struct EmbeddedStore {
    /// Dropped with the store, which stops the checkpoint thread.
    _alive: Arc<()>,
    /// The exclusive lock on `hookgate.lock`, held while the store is open (see `lock_dir`).
    _lock: Option<std::fs::File>,
    /// `store.min_free_space`, read by the writer before each batch; set again on reload.
    min_free: Arc<AtomicU64>,
    /// Transactions committed by the writer (each one fsync): fewer than writes under load.
    commits: Arc<std::sync::atomic::AtomicU64>,
    tx: mpsc::SyncSender<Write>,
    /// The writer thread: `/readyz` is not ready once it has ended (every write would fail).
    writer: std::thread::JoinHandle<()>,
    reader: Arc<Mutex<Connection>>,
    /// The database file was deleted or replaced under the open store (see `DiskGuard`).
    gone: Arc<AtomicBool>,
    /// New events are refused for want of disk space (`DiskGuard`'s `low`, as of its last
    /// batch or look): `/readyz` is not ready meanwhile.
    refusing: Arc<AtomicBool>,
    /// The writer's last batch failed as a whole (`DiskGuard::failing`).
    failing: Arc<AtomicBool>,
    /// The database file, for connections of their own (`scan`).
    file: std::path::PathBuf,
    leases: Arc<Leases>,
}

/// Which events are out for delivery, and where fresh ones are handed over. Leases live in
/// memory only: a restart releases them all.
#[derive(Default)]
struct Leases {
    leased: Mutex<HashSet<String>>,
    /// Per route: where fresh events go, and the flag raised when one could not go there.
    handoffs: Mutex<HashMap<String, HandoffEnd>>,
}

/// The store's end of a route's handoff: the sender, and the state it shares with the worker.
type HandoffEnd = (tokio::sync::mpsc::Sender<Event>, Arc<HandoffState>);

/// Fresh events a route's worker may hold before new ones wait for `lease` instead (see also
/// `HANDOFF_BYTES`).
const HANDOFF_QUEUE: usize = 1024;

impl Leases {
    fn release(&self, id: &str) {
        if let Ok(mut l) = self.leased.lock() {
            l.remove(id);
        }
    }

    /// After its commit: leases the new event and hands it to its route's worker, unless a
    /// `lease` got to it first or the worker has enough waiting (then its id is spilled, for
    /// `lease_ids`).
    /// Holds the handoffs lock throughout, so a detached handoff gets nothing more.
    fn hand_off(&self, ev: NewEvent) {
        let Ok(handoffs) = self.handoffs.lock() else {
            return;
        };
        let Some((tx, state)) = handoffs.get(&ev.route) else {
            return;
        };
        let bytes = ev.body.len();
        if !state.reserve(bytes) {
            state.spill(ev.id);
            return;
        }
        let id = ev.id.clone();
        let fresh = match self.leased.lock() {
            Ok(mut l) => l.insert(id.clone()),
            Err(_) => false,
        };
        if !fresh {
            state.unreserve(bytes);
            return;
        }
        if tx.try_send(ev.into_event()).is_err() {
            state.unreserve(bytes);
            self.release(&id);
            state.spill(id);
        }
    }
}

/// Page size of a new store unless `store.page_size` says otherwise: SQLite's default. A commit
/// writes every page it touched to the WAL in full, so the page size sets how many bytes a
/// commit of a few events writes: at one sender, one event per commit, ~31 KB per 1 KiB event
/// with 4 KiB pages and ~92 KB with 16 KiB. Under saturating load (~20 events per commit) 16 KiB
/// pages write about as many bytes in fewer, larger frames (two `pwrite`s each; 0.7 instead of
/// 3.5 `pwrite`s per event): ~9 % less CPU per event at 64 connections (docs/PERFORMANCE.md, session 5). Webhook traffic is mostly
/// the first kind, so the default keeps the disk's load low; `store.page_size = "16KiB"` is for
/// a store that runs near its CPU limit. A store keeps the page size it was created with:
/// changing it needs a VACUUM outside WAL mode, which rewrites the whole file.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// `store.min_free_space` unless the config says otherwise. Below it new events get `503`
/// (the sender retries) while settles, purges and checkpoints, which need little room, go on,
/// so the backlog keeps draining and the filesystem never fills up under the store, where
/// every write, settles included, would fail. About what the WAL takes between two resets at
/// this machine's highest rates; ~3 % of the 2 GiB volume in deploy/kubernetes.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// How often an idle writer looks at the disk, so the free-space gauge stays current.
const DISK_CHECK_IDLE: Duration = Duration::from_secs(5);

/// How an embedded store is opened (`[store]`).
#[derive(Debug, Clone)]
pub struct Options {
    /// How long delivered and dead events are kept.
    pub retention: Duration,
    /// Page size of a new store; an existing store keeps its own.
    pub page_size: u32,
    /// See [`DEFAULT_MIN_FREE_SPACE`]; 0 turns the check off.
    pub min_free_space: u64,
    /// See [`WAL_SIZE_LIMIT`].
    pub wal_size_limit: u64,
}

impl Options {
    pub fn new(retention: Duration) -> Options {
        Options {
            retention,
            page_size: DEFAULT_PAGE_SIZE,
            min_free_space: DEFAULT_MIN_FREE_SPACE,
            wal_size_limit: WAL_SIZE_LIMIT,
        }
    }
}

/// The size the WAL file is cut back to when it starts over (`PRAGMA journal_size_limit`,
/// applied by SQLite at the first commit after a restart). The WAL normally stays well below
/// it (~40-80 MB between two restarts at this machine's highest rates, so no cycle pays for
/// regrowing it), but one that grew while something kept it from starting over (a long read,
/// a disk that was full) would otherwise keep that size, and the disk space, for good.
pub const WAL_SIZE_LIMIT: u64 = 128 << 20;

/// How long the writer trusts its last look at the disk before it looks again (at most 10
/// `statvfs` a second under load, so a network filesystem does not cost a round trip per
/// commit); what it accepts meanwhile is subtracted from the room it saw.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Bytes a new event may add to the store, counted for `store.min_free_space`: its body,
/// headers and 512 bytes for the row's other columns and index entries, twice: once as a WAL
/// frame, once as its copy in the database.
fn disk_cost(ev: &NewEvent, headers_json: &str) -> u64 {
    2 * (ev.body.len() as u64 + headers_json.len() as u64 + 512)
}

/// The database file, opened to watch its link count (`DiskGuard::file_gone`); `None`, said
/// once, where that cannot work: it cannot be opened, or the filesystem reports no links for a
/// file that is there (some FUSE and network filesystems do).
fn open_for_link_count(file: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(file);
    match f.as_ref().map(|f| f.metadata().map(|m| m.nlink())) {
        Ok(Ok(n)) if n > 0 => f.ok(),
        _ => {
            tracing::warn!(path = %file.display(), "store: cannot watch the database file's link count here; a store deleted under the running process would not be noticed");
            None
        }
    }
}

/// The room new events have before `store.min_free_space`, from what the filesystem has
/// available (`fs`) and the database's free pages (`free_pages`: purges free them and SQLite
/// reuses them before it grows the file, which never shrinks). An event's copy in the
/// database may go to free pages; its WAL frame needs the filesystem (the WAL grows into new
/// space whenever it cannot start over), so that half is bounded by the filesystem alone.
fn room_above(fs: u64, free_pages: u64, min: u64) -> u64 {
    let total = fs.saturating_add(free_pages).saturating_sub(min);
    let wal_half = fs.saturating_sub(min).saturating_mul(2);
    total.min(wal_half)
}

/// The writer's view of the room the store has left (see `room_above`).
struct DiskGuard {
    dir: std::path::PathBuf,
    min_free: Arc<AtomicU64>,
    /// Bytes new events may still add: as of `checked`, minus what was accepted since.
    room: u64,
    /// When the disk was last looked at, and the reserve then.
    checked: Option<(Instant, u64)>,
    /// Refusing new events, since a batch had to refuse one. While refusing, an eighth of the
    /// reserve more is held back, so it ends only once that much is free again, not with
    /// every event's worth a purge frees.
    low: bool,
    /// A failed `statvfs` is logged once; new events then pass (SQLite still fails a commit
    /// it cannot write, and that answers 503).
    failed: bool,
    /// The database file, open: its link count says whether it is still in the directory.
    file: Option<std::fs::File>,
    /// Set for good once the database file was deleted or replaced under the open store: new
    /// events are refused and `/readyz` fails (`EmbeddedStore::ping`).
    gone: Arc<AtomicBool>,
    /// `low`, for `/readyz` (`EmbeddedStore::ping`).
    refusing: Arc<AtomicBool>,
    /// The last batch failed as a whole (disk full, I/O error): every write fails until one
    /// commits again, so `/readyz` is not ready meanwhile, whatever `min_free_space` says (0
    /// turns the reserve off, not the failures).
    failing: Arc<AtomicBool>,
    /// What the failed batch's new events needed (at least 1 MiB): the idle probe ends
    /// `failing` only once the disk has that much room again (one page fitting proves little).
    needs: u64,
}

impl DiskGuard {
    fn new(
        dir: &Path,
        min_free: Arc<AtomicU64>,
        gone: Arc<AtomicBool>,
        refusing: Arc<AtomicBool>,
    ) -> DiskGuard {
        DiskGuard {
            dir: dir.to_path_buf(),
            min_free,
            room: u64::MAX,
            checked: None,
            low: false,
            failed: false,
            file: open_for_link_count(&dir.join("hookgate.db")),
            gone,
            refusing,
            failing: Arc::default(),
            needs: 0,
        }
    }

    /// What the filesystem under the store has available now (`statvfs`; 0 if unreadable).
    /// Not `room`: with `min_free_space = 0` that is unbounded, and the idle probe's one page
    /// fits in space SQLite already holds, so a full disk looked writable again.
    fn available(&self) -> u64 {
        rustix::fs::statvfs(&self.dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0)
    }

    /// Whether the last batch that wrote failed as a whole (`needs`: what its new events
    /// needed); said once when it starts and when it ends.
    fn batch_failed(&mut self, failed: bool, needs: u64) {
        if failed {
            self.needs = needs.max(1 << 20);
        }
        if self.failing.swap(failed, Ordering::Relaxed) != failed {
            if failed {
                tracing::error!("store: writes fail (see the 'batch failed' line): new events get 503 and /readyz is not ready until one commits");
            } else {
                tracing::warn!("store: writes commit again");
            }
        }
    }

    /// Whether the database file is no longer the one the store has open: deleted (with or
    /// without its directory) or replaced. Everything recorded from then on would live only in
    /// the open, unlinked file and be gone at the next start, which makes a new, empty store.
    fn file_gone(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        // The open file's own link count, not a lookup of its path: a path that is briefly
        // missing (a rename and back, a network filesystem's hiccup) is no deletion, and a
        // file deleted or replaced by another (renamed over it) has no link left.
        let unlinked = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.nlink() == 0);
        if !unlinked {
            return false;
        }
        self.gone.store(true, Ordering::Relaxed);
        tracing::error!(
            path = %self.dir.join("hookgate.db").display(),
            "store: the database file was deleted or replaced while hookgate has it open; refusing new events (503) and not ready. Pending events are still delivered from the open file, but what it holds — pending and dead events, their history — is lost when hookgate stops, as the next start makes a new, empty store: let hookgate_pending_events reach 0 (and replay or note the dead events) before restarting"
        );
        true
    }

    /// The room for the next batch's new events; looks at the disk again when the last look
    /// is older than `DISK_CHECK_EVERY` or the reserve was changed (reload).
    fn room(&mut self, conn: &Connection) -> u64 {
        self.look_if_older(conn, DISK_CHECK_EVERY);
        self.room
    }

    /// Looks at the disk if the last look is older than `age` or the reserve changed; keeps
    /// the gauges current while only deliveries are recorded.
    fn look_if_older(&mut self, conn: &Connection, age: Duration) {
        let min = self.min_free.load(Ordering::Relaxed);
        let fresh = matches!(self.checked, Some((at, m)) if m == min && at.elapsed() < age);
        if !fresh {
            self.look(conn, min);
        }
    }

    /// What a batch's new events took of the room, and whether it had to refuse one.
    fn spent(&mut self, bytes: u64, refused: bool) {
        self.room = self.room.saturating_sub(bytes);
        if refused {
            // Not left at the last look's figure until the next one.
            metrics::gauge!("hookgate_store_room_bytes").set(0.0);
        }
        if refused && !self.low && !self.gone.load(Ordering::Relaxed) {
            self.low = true;
            // Before the log line: `/readyz` agrees with it from then on.
            self.refusing.store(true, Ordering::Relaxed);
            tracing::error!(
                path = %self.dir.display(),
                min_free_space = self.min_free.load(Ordering::Relaxed),
                "store: refusing new events: the disk space available to the store is down to store.min_free_space; they get 503 and /readyz is not ready until space is freed (deliveries go on)"
            );
        }
    }

    fn look(&mut self, conn: &Connection, min: u64) {
        self.checked = Some((Instant::now(), min));
        metrics::gauge!("hookgate_store_min_free_space_bytes").set(min as f64);
        if self.file_gone() {
            self.room = 0;
            self.low = true;
            self.refusing.store(true, Ordering::Relaxed);
            metrics::gauge!("hookgate_store_room_bytes").set(0.0);
            return;
        }
        let fs = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                if !self.failed {
                    self.failed = true;
                    tracing::warn!(path = %self.dir.display(), error = %e, "store: cannot read the free disk space; store.min_free_space is not enforced");
                }
                metrics::gauge!("hookgate_store_room_bytes").set(f64::NAN);
                self.room = u64::MAX;
                self.low = false;
                self.refusing.store(false, Ordering::Relaxed);
                return;
            }
        };
        if self.failed {
            self.failed = false;
            tracing::warn!(path = %self.dir.display(), "store: reading the free disk space again; store.min_free_space is enforced");
        }
        let (growth, free_pages) = pending_growth_and_free_pages(conn, &self.dir);
        let fs = fs.saturating_sub(growth);
        if self.decide(fs, free_pages, min) {
            tracing::warn!(
                filesystem_available = fs,
                free_pages,
                min_free_space = min,
                "store: accepting new events again: the store has room above store.min_free_space"
            );
        }
        metrics::gauge!("hookgate_store_room_bytes").set(if min == 0 {
            f64::NAN
        } else {
            self.room as f64
        });
    }

    /// Sets the room from what the disk has, and ends refusing once an eighth of the reserve
    /// is free beyond it (then the whole room is there again). True when refusing ended.
    fn decide(&mut self, fs: u64, free_pages: u64, min: u64) -> bool {
        let ended = if min == 0 {
            self.room = u64::MAX;
            std::mem::take(&mut self.low)
        } else {
            let above = room_above(fs, free_pages, min);
            let ended = self.low && above > min / 8;
            if ended {
                self.low = false;
            }
            self.room = if self.low { 0 } else { above };
            ended
        };
        // Before the caller logs the end: `/readyz` agrees with the log from then on. No room
        // at all (a reload raised the reserve above what is free) is not ready either, before
        // an event comes to be refused.
        self.refusing
            .store(self.low || (min != 0 && self.room == 0), Ordering::Relaxed);
        ended
    }
}

/// What the next checkpoint will still add to the database file (pages committed to the WAL
/// beyond the file's end, which the filesystem does not show yet), and the bytes of the
/// database's free pages.
fn pending_growth_and_free_pages(conn: &Connection, dir: &Path) -> (u64, u64) {
    let (pages, free_pages) = conn
        .query_row(
            "SELECT c.page_count * p.page_size, f.freelist_count * p.page_size
             FROM pragma_page_count() AS c, pragma_freelist_count() AS f, pragma_page_size() AS p",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .map(|(a, b)| (a.max(0) as u64, b.max(0) as u64))
        .unwrap_or((0, 0));
    let file = std::fs::metadata(dir.join("hookgate.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    (pages.saturating_sub(file), free_pages)
}

/// A reserve the disk cannot meet (at least the filesystem's size, likely a typo such as
/// `64GiB` for `64MiB`, or more than it has free) is said at start, as `hookgate check` says it.
fn warn_if_reserve_exceeds_disk(dir: &Path, min_free: u64) {
    for w in check(dir, min_free) {
        tracing::warn!("store: {w}");
    }
}

/// Why `store.path` cannot hold the store, if it cannot: not a directory, or one this user
/// cannot write to (a volume mounted without the pod's `fsGroup`), or, before the first start,
/// a nearest existing parent that is either. `hookgate check` says it as `serve` would.
pub fn unusable(path: &Path) -> Option<String> {
    use rustix::fs::{access, Access};
    // A dangling symlink exists too (creating the directory would fail on it).
    let there = |p: &Path| p.as_os_str().is_empty() || p.symlink_metadata().is_ok();
    let (at, exists) = match path.ancestors().find(|p| there(p)) {
        Some(p) if p.as_os_str().is_empty() => (Path::new("."), false),
        Some(p) => (p, p == path),
        None => return None,
    };
    let whose = if exists {
        String::new()
    } else {
        format!(" (it does not exist yet, and is made in {})", at.display())
    };
    if !at.is_dir() {
        return Some(format!(
            "store.path: {} is not a directory{whose}",
            at.display()
        ));
    }
    match access(at, Access::WRITE_OK | Access::EXEC_OK) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "store.path: {} is not writable by this process (uid {}){whose}: {e}",
            at.display(),
            rustix::process::getuid().as_raw()
        )),
    }
}

/// For `hookgate check`: warnings about the disk under `store.path` (or its nearest existing
/// parent, before the first start), each starting with the key's path.
pub fn check(path: &Path, min_free: u64) -> Vec<String> {
    let Some(s) = path.ancestors().find_map(|p| {
        rustix::fs::statvfs(if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        })
        .ok()
    }) else {
        return Vec::new();
    };
    let size = s.f_blocks.saturating_mul(s.f_frsize);
    let available = s.f_bavail.saturating_mul(s.f_frsize);
    let mib = |b: u64| b / (1 << 20);
    // Free pages inside an existing store are not counted here: a store that refuses for
    // want of room should be looked at anyway.
    if min_free == 0 {
        Vec::new()
    } else if min_free >= size {
        vec![format!(
            "store.min_free_space: {} MiB is at least the size of the filesystem under {} ({} MiB): every new event would get 503",
            mib(min_free),
            path.display(),
            mib(size)
        )]
    } else if available < min_free {
        vec![format!(
            "store.min_free_space: the filesystem under {} has {} MiB available, less than the {} MiB reserve: new events get 503 until space is freed",
            path.display(),
            mib(available),
            mib(min_free)
        )]
    } else {
        Vec::new()
    }
}

/// What `backup` wrote.
#[derive(Debug)]
pub struct Backup {
    pub source: PathBuf,
    pub bytes: u64,
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
}

/// Writes a consistent copy of the store under `dir` to `to` (a new file), also while a
/// gateway runs on it: SQLite's `VACUUM INTO` reads one snapshot on a read-only connection, so
/// it takes no lock the gateway waits for and sees every event committed before it began
/// (each one acknowledged with a 2xx before it). Copying `hookgate.db` with `cp` while the
/// gateway runs is not a backup: the newest events are in `hookgate.db-wal`, and the two files
/// are read at different moments. The copy is synced to disk before this returns.
pub fn backup(dir: &Path, to: &Path) -> Result<Backup, String> {
    let source = dir.join("hookgate.db");
    if !source.is_file() {
        return Err(format!(
            "no store at {} (store.path): nothing to back up",
            source.display()
        ));
    }
    if to.exists() || to.symlink_metadata().is_ok() {
        return Err(format!(
            "{} exists already: choose a new file (a backup never overwrites)",
            to.display()
        ));
    }
    let target = to
        .to_str()
        .ok_or_else(|| format!("{}: the path is not UTF-8", to.display()))?;
    let conn = Connection::open_with_flags(
        &source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", source.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    conn.execute("VACUUM INTO ?1", params![target])
        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    drop(conn);
    // VACUUM INTO does not sync what it wrote: a crash right after could leave a torn copy.
    let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
    sync(to).map_err(|e| format!("cannot sync {}: {e}", to.display()))?;
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = sync(parent);
    }
    let copy = Connection::open_with_flags(to, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot read back {}: {e}", to.display()))?;
    let count = |state: &str| -> Result<u64, String> {
        copy.query_row(
            "SELECT count(*) FROM events WHERE state = ?1",
            params![state],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
        .map_err(|e| format!("cannot read back {}: {e}", to.display()))
    };
    Ok(Backup {
        bytes: std::fs::metadata(to).map(|m| m.len()).unwrap_or(0),
        pending: count("pending")?,
        delivered: count("delivered")?,
        dead: count("dead")?,
        source,
    })
}

fn open_conn(file: &Path, page_size: u32) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    // A locked database answers 503 after this long instead of holding the request.
    conn.busy_timeout(Duration::from_secs(2))?;
    // Takes effect only while the file is still empty, so before `journal_mode` writes its
    // first page; a no-op on an existing store.
    conn.pragma_update(None, "page_size", page_size)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Takes an exclusive `flock` on `dir/hookgate.lock`, so a second process cannot open the same
/// store: SQLite would let both write, but leases and the dedupe index live in each process's
/// memory, so both would deliver every pending event and each would let through duplicates of
/// keys the other recorded. The lock goes with the process (also on SIGKILL). `None` where
/// the filesystem has no locks (logged; nothing then stops a second process).
fn lock_dir(dir: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let path = dir.join("hookgate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("store.path: cannot open {}: {e}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(anyhow::anyhow!(
            "store.path: {} is in use by another hookgate process (it holds {}); each process needs its own store.path (replicas that share work use backend = \"redis\")",
            dir.display(),
            path.display()
        )),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "store: cannot lock the store directory; nothing stops a second process from opening the same store");
            Ok(None)
        }
    }
}

impl EmbeddedStore {
    /// With the default options and `retention`.
    pub fn open(dir: &Path, retention: Duration) -> anyhow::Result<Self> {
        Self::open_with(dir, &Options::new(retention))
    }

    /// `opts.page_size` applies only if the store does not exist yet.
    pub fn open_with(dir: &Path, opts: &Options) -> anyhow::Result<Self> {
        let page_size = opts.page_size;
        if let Some(problem) = unusable(dir) {
            anyhow::bail!("{problem}");
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("store.path: cannot create {}: {e}", dir.display()))?;
        let lock = lock_dir(dir)?;
        let file = dir.join("hookgate.db");
        if !file.exists() {
            tracing::info!(path = %file.display(), "store: no database file here yet: making a new, empty store");
        }
        let unstamped = check_stamp(&file)?;
        let writer = open_conn(&file, page_size)
            .map_err(|e| anyhow::anyhow!("store.path: cannot open {}: {e}", file.display()))?;
        let mut writer = writer;
        let actual: u32 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        if actual != page_size {
            tracing::info!(
                page_size = actual,
                configured = page_size,
                "store: keeps the page size it was created with (store.page_size applies to new stores)"
            );
        }
        let migrated = (|| -> rusqlite::Result<()> {
            make_tables(&mut writer)?;
            if unstamped {
                writer.execute_batch(&format!(
                    "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
                ))?;
            }
            Ok(())
        })();
        if let Err(e) = migrated {
            anyhow::bail!(
                "store.path: cannot make or update the store's tables in {} (store layout {SCHEMA_VERSION}): {e}{}",
                file.display(),
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
                    "; free a few MiB on its disk and start again (nothing was lost)"
                } else {
                    ""
                }
            );
        }
        let keys = Keys::load(&writer, crate::forward::worker::now_ms())?;
        // Checkpoints run on their own thread, so no group commit waits for one.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(opts.wal_size_limit).unwrap_or(i64::MAX),
        )?;
        let alive = Arc::new(());
        let checkpointer = open_conn(&file, page_size)?;
        let token = Arc::downgrade(&alive);
        let caught_up = Arc::new(AtomicBool::new(false));
        let signal = caught_up.clone();
        std::thread::Builder::new()
            .name("hookgate-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, token, &signal))?;
        let reader = open_conn(&file, page_size)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let retention_ms = opts.retention.as_millis() as i64;
        let min_free = Arc::new(AtomicU64::new(opts.min_free_space));
        let gone = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let disk = DiskGuard::new(dir, min_free.clone(), gone.clone(), refusing.clone());
        let failing = disk.failing.clone();
        warn_if_reserve_exceeds_disk(dir, opts.min_free_space);
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        let leases = Arc::new(Leases::default());
        let shared = leases.clone();
        let writer = std::thread::Builder::new()
            .name("hookgate-store".into())
            .spawn(move || {
                let writer = Writer {
                    conn: writer,
                    keys,
                    disk,
                    retention_ms,
                };
                writer_loop(writer, rx, &counter, &shared, &caught_up)
            })?;
        Ok(EmbeddedStore {
            writer,
            _alive: alive,
            _lock: lock,
            min_free,
            commits,
            tx,
            reader: Arc::new(Mutex::new(reader)),
            gone,
            refusing,
            failing,
            file,
            leases,
        })
    }

    /// Transactions committed so far (each one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An accept that the writer has not taken up within `deadline` (its queue is stuck
    /// behind a locked, slow or failing store) is given up: `Unavailable` (503 +
    /// Retry-After), and never recorded. One already taken up is waited for, as its
    /// transaction is under way and may commit.
    async fn accept_within(
        &self,
        ev: NewEvent,
        headers: String,
        dedupe: Option<DedupeKey>,
        deadline: Duration,
    ) -> Result<Accept, StoreError> {
        let claim = Claim::default();
        // A caller dropped before an answer (the client hung up, shutdown's grace ran out)
        // gives up too: nobody would be told the event was recorded.
        let _gone = GiveUpOnDrop(claim.clone());
        let c = claim.clone();
        let answer = self.write(|r| Write::Accept(Box::new((ev, headers, c)), dedupe, r));
        tokio::pin!(answer);
        match tokio::time::timeout(deadline, &mut answer).await {
            Ok(r) => r,
            Err(_) if claim.give_up() => Err(StoreError::Unavailable(format!(
                "the store did not take the event up within {} s",
                deadline.as_secs_f64()
            ))),
            Err(_) => answer.await,
        }
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Write,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => StoreError::Busy,
            mpsc::TrySendError::Disconnected(_) => StoreError::Unavailable("writer stopped".into()),
        })?;
        match rx.await {
            Ok(r) => r.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Unavailable("writer stopped".into())),
        }
    }

    /// A read on a connection opened for it alone (for a scan that may take seconds).
    async fn scan<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let file = self.file.clone();
        blocking(move || {
            let conn = Connection::open_with_flags(
                &file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(unavailable)?;
            conn.busy_timeout(Duration::from_secs(2))
                .map_err(unavailable)?;
            f(&conn).map_err(unavailable)
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| StoreError::Unavailable("reader poisoned".into()))?;
            f(&conn).map_err(unavailable)
        })
        .await
    }
}

/// Runs a read on the blocking pool; a task that failed is `Unavailable`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// What the writer thread owns.
struct Writer {
    conn: Connection,
    keys: Keys,
    disk: DiskGuard,
    retention_ms: i64,
}

fn writer_loop(
    writer: Writer,
    rx: mpsc::Receiver<Write>,
    commits: &std::sync::atomic::AtomicU64,
    leases: &Leases,
    caught_up: &AtomicBool,
) {
    let Writer {
        mut conn,
        mut keys,
        mut disk,
        retention_ms,
    } = writer;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut synchronous_full = true;
    let mut last_checkpoint = Instant::now();
    let mut checkpoint_warnings = crate::telemetry::Throttle::default();
    let mut counts = DupCounts::default();
    disk.room(&conn);
    loop {
        let idle = if counts.pending.is_empty() {
            DISK_CHECK_IDLE
        } else {
            DUP_COUNT_LAG
        };
        let first = match rx.recv_timeout(idle) {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                counts.flush(&mut conn);
                disk.look_if_older(&conn, DISK_CHECK_IDLE);
                // Not ready, so maybe nothing comes to find out that writes work again (space
                // freed): once the disk has room for what failed, a durable write of the file's
                // header is tried instead.
                if disk.failing.load(Ordering::Relaxed) && disk.available() >= disk.needs {
                    if !synchronous_full && conn.pragma_update(None, "synchronous", "FULL").is_ok()
                    {
                        synchronous_full = true;
                    }
                    let probe =
                        format!("BEGIN IMMEDIATE; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;");
                    let ok = synchronous_full && conn.execute_batch(&probe).is_ok();
                    if !ok {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    let needs = disk.needs;
                    disk.batch_failed(!ok, needs);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        batch.push(first);
        gather(&rx, &mut batch);
        // A batch of settles (and purges) only need not wait for its fsync: losing it in a
        // crash means an attempt is made again, which at-least-once allows; it is made durable
        // by the next fsync'd commit or checkpoint (the WAL is synced in order).
        let full = batch.iter().any(|w| {
            matches!(
                w,
                Write::Accept(..) | Write::Replay(..) | Write::ReplayDead(..)
            )
        });
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
                    leases,
                );
            }
            continue;
        }
        let room = if batch.iter().any(|w| matches!(w, Write::Accept(..))) {
            disk.room(&conn)
        } else {
            u64::MAX
        };
        let needs: u64 = batch
            .iter()
            .map(|w| match w {
                Write::Accept(b, ..) => disk_cost(&b.0, &b.1),
                _ => 0,
            })
            .sum();
        let (left, refused, failed, wrote) = commit_batch(
            &mut conn,
            &mut batch,
            retention_ms,
            leases,
            &mut keys,
            room,
            &mut counts,
        );
        // Only a durable (synchronous = FULL) batch that wrote proves writes work again: a
        // settles-only one skips the fsync that may be what fails.
        if failed || (wrote && full) {
            disk.batch_failed(failed, needs);
        }
        disk.spent(room.saturating_sub(left), refused);
        disk.look_if_older(&conn, DISK_CHECK_IDLE);
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The checkpoint thread has just copied all but the last few frames; copying those
        // here, between transactions, lets the next transaction start the WAL over instead
        // of growing it (a WAL that only grows costs the kernel a zeroed page per frame and
        // slows every read). Done only then, this holds commits up for about one fsync of a
        // few pages, not for a whole checkpoint. The fallback covers a checkpoint thread
        // that cannot catch up.
        if caught_up.swap(false, Ordering::AcqRel)
            || last_checkpoint.elapsed() >= WRITER_CHECKPOINT_FALLBACK
        {
            last_checkpoint = Instant::now();
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                if checkpoint_warnings.ready() {
                    tracing::warn!(error = %e, "store: WAL checkpoint failed (said at most every 10 s)");
                }
            }
        }
    }
}

/// Adds what is queued to `batch`. A batch without an accept or replay (nobody waits on its
/// fsync, only on its commit) waits up to `SETTLE_LINGER` for more writes, so settles share
/// transactions instead of each rewriting the same pages.
fn gather(rx: &mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    let urgent = |w: &Write| {
        matches!(
            w,
            Write::Accept(..) | Write::Replay(..) | Write::ReplayDead(..)
        )
    };
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    if batch.iter().any(urgent) {
        return;
    }
    let deadline = Instant::now() + SETTLE_LINGER;
    while batch.len() < SETTLE_BATCH {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        match rx.recv_timeout(left) {
            Ok(w) => {
                let stop = urgent(&w);
                batch.push(w);
                if stop {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Events a write of `bring_forward` moves at most: accepts are committed between chunks.
const BRING_FORWARD_CHUNK: u64 = 500;
/// Dead events a write of `replay_dead` replays at most. One transaction over a route's whole
/// dead-letter backlog (100k events of 8 KiB) held the writer 4–5 s, so every route's senders
/// got 503 meanwhile, and grew the WAL by ~900 MB, which the writer then copied back at once.
const REPLAY_CHUNK: usize = 500;

/// How long a batch of settles waits for company, and how many end the wait.
const SETTLE_LINGER: Duration = Duration::from_millis(2);
const SETTLE_BATCH: usize = 256;
/// Most expired keys one purge write deletes, and most events past the retention it looks at
/// (deleting the delivered ones): a few milliseconds of the writer's time.
const PURGE_CHUNK: usize = 500;
/// The longest the writer goes without finishing a checkpoint itself (see `writer_loop`).
const WRITER_CHECKPOINT_FALLBACK: Duration = Duration::from_secs(5);

/// Copies committed WAL frames into the database every `CHECKPOINT_EVERY` (PASSIVE: never
/// blocks the writer or readers). About every `WAL_RESET_EVERY` it then catches up with the
/// writer (each pass copies what was committed during the one before, so passes get
/// shorter) and tells the writer, which copies the last few frames and starts the WAL over.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>, caught_up: &AtomicBool) {
    // A full disk fails every pass (every 100 ms): said at most every 10 s.
    let mut throttle = crate::telemetry::Throttle::default();
    let mut checkpoint = || {
        let t = Instant::now();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            if throttle.ready() {
                tracing::warn!(error = %e, "store: WAL checkpoint failed (said at most every 10 s)");
            }
        }
        t.elapsed()
    };
    let mut last_reset = Instant::now();
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        let mut took = checkpoint();
        if last_reset.elapsed() >= WAL_RESET_EVERY {
            for _ in 0..CATCH_UP_PASSES {
                if took <= CAUGHT_UP {
                    break;
                }
                took = checkpoint();
            }
            last_reset = Instant::now();
            caught_up.store(true, Ordering::Release);
        }
    }
}

const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
const WAL_RESET_EVERY: Duration = Duration::from_millis(500);
/// A pass this short left little for the writer to copy.
const CAUGHT_UP: Duration = Duration::from_millis(2);
const CATCH_UP_PASSES: usize = 4;

/// What a write produced, before it is sent to its caller.
enum Out {
    Accept(Accept),
    /// A new event refused because the disk is below `store.min_free_space`.
    DiskLow,
    Unit,
    Count(u64),
    /// A replay-dead chunk: how many, and the last event id it replayed.
    Replayed(u64, Option<String>),
    /// A purge chunk: whether more may be left, and the last event id it deleted.
    Purged(bool, Option<String>),
    /// An accept whose caller stopped waiting before its transaction began: not recorded.
    Abandoned,
}

/// `room`: bytes new events may still add (`disk_cost`); a new event that does not fit is
/// refused, a duplicate is still answered as one.
fn run(
    tx: &Connection,
    w: &Write,
    retention_ms: i64,
    keys: &mut Keys,
    room: &mut u64,
    dups: &mut Vec<(String, i64)>,
) -> rusqlite::Result<Out> {
    Ok(match w {
        // Its request was already answered 503 (ACCEPT_DEADLINE): recording it now would
        // only turn the sender's retry into a duplicate.
        Write::Accept(ev, _, _) if !ev.2.take() => Out::Abandoned,
        Write::Accept(ev, key, _) => {
            match accept_tx(tx, &ev.0, &ev.1, key.as_ref(), keys, room, dups)? {
                Some(a) => Out::Accept(a),
                None => Out::DiskLow,
            }
        }
        Write::Settle((id, cycle), attempt, next, _) => {
            settle_tx(tx, id, *cycle, attempt, next)?;
            Out::Unit
        }
        Write::Replay(id, now, _) => Out::Count(replay_tx(tx, id, *now)?),
        Write::ReplayDead(route, after, now, _) => {
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM events WHERE route = ?1 AND state = 'dead' AND id > ?2
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![route, after, REPLAY_CHUNK as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                replay_tx(tx, id, *now)?;
            }
            Out::Replayed(ids.len() as u64, ids.last().cloned())
        }
        Write::Discard(id, _) => Out::Count(discard_tx(tx, id)?),
        // A chunk at a time (the caller loops): one transaction over a backlog of 100k
        // rewrote every row at once, held accepts up for seconds and grew the WAL by GBs.
        Write::BringForward(route, beyond, now, _) => Out::Count(
            tx.prepare_cached(
                "UPDATE events SET next_attempt_at = ?3
             WHERE id IN (SELECT id FROM events
                          WHERE route = ?1 AND state = 'pending' AND next_attempt_at > ?2
                          LIMIT ?4)",
            )?
            .execute(params![route, beyond, now, BRING_FORWARD_CHUNK as i64])? as u64,
        ),
        Write::Purge(now, after, _) => {
            let keys_left = keys.purge(tx, *now, PURGE_CHUNK, after.is_none())?;
            let (n, last) = purge_tx(tx, *now, retention_ms, after.as_deref(), PURGE_CHUNK)?;
            // Once fewer than a chunk's worth of events were left to look at, the cursor goes
            // to the end of the range, so the chunks that only purge keys do not read the old
            // events (pending and dead ones, kept) again.
            let cursor = if n < PURGE_CHUNK {
                id_prefix(*now - retention_ms)
            } else {
                last.unwrap_or_default()
            };
            Out::Purged(keys_left || n == PURGE_CHUNK, Some(cursor))
        }
    })
}

/// Answers a write's caller; hands a newly accepted event to its worker first.
fn reply(w: Write, r: Result<Out, String>, leases: &Leases) {
    match w {
        Write::Accept(ev, _, tx) => {
            let r = r.and_then(|o| match o {
                Out::Accept(a) => Ok(a),
                Out::DiskLow => Err(
                    "new events are refused: the free disk space is below store.min_free_space (until space is freed), or the database file was deleted (the log says which)".into(),
                ),
                _ => Err("internal: wrong result".into()),
            });
            if let Ok(Accept::Accepted(_)) = r {
                leases.hand_off(ev.0);
            }
            drop(tx.send(r))
        }
        Write::Settle(_, _, _, tx) => drop(tx.send(r.map(|_| ()))),
        Write::Purge(_, after, tx) => drop(tx.send(r.map(|o| match o {
            Out::Purged(more, last) => (more, last),
            _ => (false, after),
        }))),
        Write::ReplayDead(_, after, _, tx) => drop(tx.send(r.map(|o| match o {
            Out::Replayed(n, last) => (n, last),
            _ => (0, Some(after)),
        }))),
        Write::Replay(_, _, tx) | Write::Discard(_, tx) | Write::BringForward(_, _, _, tx) => {
            drop(tx.send(r.map(|o| match o {
                Out::Count(n) => n,
                _ => 0,
            })))
        }
    }
}

/// Requests answered as duplicates, counted with their originals (`duplicates`, shown by the
/// admin API) off the answer's path: a batch of duplicates alone writes nothing (no WAL
/// frame, no fsync, and a full disk still answers them), so their counts wait for a batch
/// that writes anyway, or at most `DUP_COUNT_LAG` (then the next batch, or the idle writer,
/// writes them). Best effort: a count that cannot be written is dropped, never an answer.
#[derive(Default)]
struct DupCounts {
    /// Original id → (copies, latest receipt), committed duplicates not written yet.
    pending: HashMap<String, (u64, i64)>,
    since: Option<Instant>,
}

/// Longest a duplicate's count waits for a batch that writes anyway.
const DUP_COUNT_LAG: Duration = Duration::from_secs(1);
/// Most originals with counts waiting; past it, further counts are dropped.
const DUP_COUNTS_MAX: usize = 100_000;

impl DupCounts {
    /// Whether this batch writes the waiting counts (and its own): it writes anyway, or
    /// they have waited long enough.
    fn due(&self, wrote: bool, batch: &[(String, i64)]) -> bool {
        (!self.pending.is_empty() || !batch.is_empty())
            && (wrote || self.since.is_some_and(|t| t.elapsed() >= DUP_COUNT_LAG))
    }

    /// Upserts the waiting counts and `batch`'s in `tx`, only while the original is kept
    /// (its key may outlive it). A statement that fails loses its count, not the batch.
    fn apply(&self, tx: &Connection, batch: &[(String, i64)]) {
        let Ok(mut stmt) = tx.prepare_cached(
            "INSERT INTO duplicates (event_id, n, last_at) SELECT id, ?2, ?3 FROM events WHERE id = ?1
             ON CONFLICT (event_id) DO UPDATE SET n = n + excluded.n, last_at = MAX(last_at, excluded.last_at)",
        ) else {
            return;
        };
        let waiting = self
            .pending
            .iter()
            .map(|(id, &(n, at))| (id.as_str(), n, at));
        for (id, n, at) in waiting.chain(batch.iter().map(|(id, at)| (id.as_str(), 1, *at))) {
            if let Err(e) = stmt.execute(params![id, n as i64, at]) {
                tracing::debug!(error = %e, "store: a duplicate's count was not written");
            }
        }
    }

    /// After a commit: the counts were written with it (`written`), or `batch`'s wait.
    fn committed(&mut self, written: bool, batch: Vec<(String, i64)>) {
        if written {
            self.pending.clear();
            self.since = None;
            return;
        }
        for (id, at) in batch {
            if self.pending.len() >= DUP_COUNTS_MAX && !self.pending.contains_key(&id) {
                continue;
            }
            let e = self.pending.entry(id).or_insert((0, at));
            e.0 += 1;
            e.1 = e.1.max(at);
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// The idle writer's flush: the waiting counts in a transaction of their own.
    fn flush(&mut self, conn: &mut Connection) {
        if self.pending.is_empty() {
            return;
        }
        let written = conn.transaction().and_then(|tx| {
            self.apply(&tx, &[]);
            tx.commit()
        });
        if written.is_ok() {
            self.committed(true, Vec::new());
        }
    }
}

/// One transaction for the whole batch (group commit); replies go out only after COMMIT.
/// If any write fails, the whole transaction is rolled back and each write is run again in a
/// transaction of its own, so one bad write cannot fail or half-apply the others. `room` is
/// what new events may add (see `DiskGuard`); returns what is left of it and whether a new
/// event had to be refused for want of it.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Write>,
    retention_ms: i64,
    leases: &Leases,
    keys: &mut Keys,
    room: u64,
    counts: &mut DupCounts,
) -> (u64, bool, bool, bool) {
    let mut left = room;
    let mut refused = false;
    let mut failed = false;
    let changes = conn.total_changes();
    let mut dups = Vec::new();
    let fast = (|| -> rusqlite::Result<(Vec<Out>, bool)> {
        let tx = conn.transaction()?;
        let outs = batch
            .iter()
            .map(|w| run(&tx, w, retention_ms, keys, &mut left, &mut dups))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let wrote = outs.iter().any(|o| {
            !matches!(
                o,
                Out::Accept(Accept::Duplicate(_)) | Out::DiskLow | Out::Abandoned
            )
        });
        let counted = counts.due(wrote, &dups);
        if counted {
            counts.apply(&tx, &dups);
        }
        tx.commit()?;
        Ok((outs, counted))
    })();
    match fast {
        Ok((outs, counted)) => {
            counts.committed(counted, dups);
            keys.committed();
            refused = outs.iter().any(|o| matches!(o, Out::DiskLow));
            for (w, o) in batch.drain(..).zip(outs) {
                reply(w, Ok(o), leases);
            }
        }
        Err(e) if whole_store(&e) => {
            // Locked by another process, disk full, I/O error: every write would fail the same
            // way, each after its own busy wait, while the requests behind them wait too. All
            // fail now (accepts answer 503 + Retry-After; the worker retries its records).
            keys.rolled_back();
            left = room;
            failed = true;
            tracing::warn!(error = %e, writes = batch.len(), "store: batch failed");
            let e = e.to_string();
            for w in batch.drain(..) {
                reply(w, Err(e.clone()), leases);
            }
        }
        Err(e) => {
            keys.rolled_back();
            left = room;
            tracing::warn!(error = %e, writes = batch.len(), "store: batch failed; retrying its writes one by one");
            // Once the store itself fails (see above), the writes left fail with it at once.
            let mut store_failed: Option<String> = None;
            for w in batch.drain(..) {
                if let Some(e) = &store_failed {
                    reply(w, Err(e.clone()), leases);
                    continue;
                }
                let before = left;
                let mut dups = Vec::new();
                let r = (|| -> rusqlite::Result<Out> {
                    let tx = conn.transaction()?;
                    let o = run(&tx, &w, retention_ms, keys, &mut left, &mut dups)?;
                    tx.commit()?;
                    Ok(o)
                })();
                match r {
                    Ok(ref o) => {
                        counts.committed(false, dups);
                        keys.committed();
                        refused |= matches!(o, Out::DiskLow);
                    }
                    Err(ref e) => {
                        keys.rolled_back();
                        left = before;
                        if whole_store(e) {
                            store_failed = Some(e.to_string());
                        }
                    }
                }
                reply(w, r.map_err(|e| e.to_string()), leases);
            }
            failed = store_failed.is_some();
        }
    }
    // Whether a row was written (a batch of duplicates, an empty purge or a replay of an
    // unknown id commits without writing, which says nothing about the disk).
    let wrote = conn.total_changes() > changes;
    (left, refused, failed, wrote)
}

/// Whether an error is the store's, not one write's: retrying the batch's writes one by one
/// would meet it again for each.
fn whole_store(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | ReadOnly | CannotOpen)
    )
}

fn accept_tx(
    tx: &Connection,
    ev: &NewEvent,
    headers_json: &str,
    key: Option<&DedupeKey>,
    keys: &mut Keys,
    room: &mut u64,
    dups: &mut Vec<(String, i64)>,
) -> rusqlite::Result<Option<Accept>> {
    if let Some(k) = key {
        for key in k.keys() {
            if let Some(original) = keys.seen(tx, &ev.route, key, ev.received_at_ms)? {
                dups.push((original.clone(), ev.received_at_ms));
                return Ok(Some(Accept::Duplicate(original)));
            }
        }
    }
    let cost = disk_cost(ev, headers_json);
    if *room < cost {
        return Ok(None);
    }
    *room -= cost;
    if let Some(k) = key {
        for key in k.keys() {
            keys.insert(tx, &ev.route, key, &ev.id, k.expires_at_ms)?;
        }
    }
    tx.prepare_cached("INSERT INTO payloads (raw_headers, raw_body) VALUES (?1, ?2)")?
        .execute(params![headers_json, &ev.body[..]])?;
    let payload = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO events (id, route, received_at, method, query, headers, body, scheme, dedupe_key,
                             state, cycle_started_at, next_attempt_at, updated_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, '', x'', ?6, ?7, 'pending', ?3, ?3, ?3, ?8)",
    )?
    .execute(params![
        ev.id,
        ev.route,
        ev.received_at_ms,
        ev.method,
        ev.query,
        ev.scheme,
        key.map(|k| k.key.as_str()),
        payload,
    ])?;
    Ok(Some(Accept::Accepted(ev.id.clone())))
}

/// Records the attempt; moves the event to its next state only if it was not replayed while
/// the attempt ran (a replay starts a new cycle, and the replay wins). A replay made after the
/// lease but before the attempt began (a fresh event waiting in its worker's handoff, say)
/// is answered by that attempt when it delivered: it sent the event after the replay, so the
/// event is delivered, not sent a second time. A failed attempt was judged against the old
/// cycle's budget, so it leaves the replayed event as it is.
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
    // Past this start of its cycle, the event was replayed before a delivering attempt began.
    let delivering_start = matches!(next, Next::Delivered).then_some(a.started_at_ms);
    // One statement (each UPDATE rewrites the whole row; the body is in `payloads`, but for
    // events written before layout 2): the attempt count
    // always moves; the state only if the event is still in the cycle the attempt began in
    // (or the attempt delivered it after it was replayed).
    tx.prepare_cached(
        "UPDATE events SET
            attempts = MAX(attempts, ?7),
            state = IIF(cycle_started_at = ?6 OR cycle_started_at < ?8, ?2, state),
            next_attempt_at = IIF(cycle_started_at = ?6 OR cycle_started_at < ?8, ?3, next_attempt_at),
            last_error = IIF(cycle_started_at = ?6 OR cycle_started_at < ?8, ?4, last_error),
            updated_at = IIF(cycle_started_at = ?6 OR cycle_started_at < ?8, ?5, updated_at),
            cycle_attempts = IIF(cycle_started_at = ?6 OR cycle_started_at < ?8, cycle_attempts + 1, cycle_attempts)
         WHERE id = ?1",
    )?
    .execute(params![id, state, next_at, err, now, cycle, a.n, delivering_start])?;
    Ok(())
}

/// Makes the event pending and due at `now` with a fresh retry budget, marking its history.
fn replay_tx(tx: &Connection, id: &str, now: i64) -> rusqlite::Result<u64> {
    // The mark in the event's history first, from the state the update is about to change.
    tx.prepare_cached(
        "INSERT INTO replays (event_id, at, after_attempts, was)
         SELECT id, ?1, attempts, state FROM events WHERE id = ?2",
    )?
    .execute(params![now, id])?;
    let n = tx
        .prepare_cached(
            "UPDATE events SET state = 'pending', next_attempt_at = ?1, cycle_attempts = 0,
                    cycle_started_at = ?1, updated_at = ?1, last_error = NULL
             WHERE id = ?2",
        )?
        .execute(params![now, id])?;
    Ok(n as u64)
}

/// Deletes a dead event and its attempt log (its dedupe key stays: a redelivery of it is
/// still a duplicate). 0 when it is not dead (a replay may have come first) or not there.
fn discard_tx(tx: &Connection, id: &str) -> rusqlite::Result<u64> {
    let deleted: Option<Option<i64>> = tx
        .query_row(
            "DELETE FROM events WHERE id = ?1 AND state = 'dead' RETURNING payload",
            params![id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(payload) = deleted else {
        return Ok(0);
    };
    tx.execute("DELETE FROM attempts WHERE event_id = ?1", params![id])?;
    tx.execute("DELETE FROM replays WHERE event_id = ?1", params![id])?;
    tx.execute("DELETE FROM duplicates WHERE event_id = ?1", params![id])?;
    tx.execute("DELETE FROM payloads WHERE pid = ?1", params![payload])?;
    Ok(1)
}

/// Deletes delivered events last updated before the retention. An event is updated after it
/// is received and ids are UUIDv7 (their text starts with the receipt time in hex), so only
/// ids below the cutoff's prefix need looking at: a range of the primary key, not a scan.
/// Looks at up to `limit` events of that range, in id order after `after` (where the previous
/// chunk stopped), deleting the delivered ones among them. A bound on what is looked at, not
/// on what is deleted: pending and dead events at the front of the range are kept, and a
/// chunk that had to read past a million dead letters (their bodies too, to reach `state`,
/// before layout 2 and in rows written before it) held the writer for seconds. Returns how many it looked at and the last one's id.
fn purge_tx(
    tx: &Connection,
    now: i64,
    retention_ms: i64,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<(usize, Option<String>)> {
    let cutoff = now - retention_ms;
    let below = id_prefix(cutoff);
    let looked: Vec<(String, bool)> = tx
        .prepare_cached(
            "SELECT id, state = 'delivered' AND updated_at < ?1 FROM events
             WHERE id > ?3 AND id < ?2 ORDER BY id LIMIT ?4",
        )?
        .query_map(
            params![cutoff, below, after.unwrap_or(""), limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut attempts = tx.prepare_cached("DELETE FROM attempts WHERE event_id = ?1")?;
    let mut replays = tx.prepare_cached("DELETE FROM replays WHERE event_id = ?1")?;
    let mut duplicates = tx.prepare_cached("DELETE FROM duplicates WHERE event_id = ?1")?;
    let mut payloads = tx.prepare_cached("DELETE FROM payloads WHERE pid = ?1")?;
    let mut events = tx.prepare_cached("DELETE FROM events WHERE id = ?1 RETURNING payload")?;
    for (id, _) in looked.iter().filter(|(_, expired)| *expired) {
        attempts.execute(params![id])?;
        replays.execute(params![id])?;
        duplicates.execute(params![id])?;
        let payload: Option<Option<i64>> =
            events.query_row(params![id], |r| r.get(0)).optional()?;
        payloads.execute(params![payload.flatten()])?;
    }
    Ok((looked.len(), looked.last().map(|(id, _)| id.clone())))
}

/// The events with these ids, in that order (an id no longer there is skipped).
/// Gives back the leases of `ids` that were not read (gone, not due, or the read failed).
fn release_unread(leases: &Leases, ids: &[String], got: &[Event]) {
    for id in ids {
        if !got.iter().any(|e| &e.id == id) {
            leases.release(id);
        }
    }
}

/// The events with these ids; with `due_at`, only those pending and due by then.
fn read_events(
    conn: &Connection,
    ids: &[String],
    due_at: Option<i64>,
) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, route, received_at, method, query, COALESCE(raw_headers, headers),
                COALESCE(raw_body, body), scheme, attempts, cycle_attempts, cycle_started_at,
                payload IS NOT NULL AND pid IS NULL
         FROM {EVENTS} WHERE id = ?1
           AND (?2 IS NULL OR (state = 'pending' AND next_attempt_at <= ?2))"
    ))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let ev = stmt
            .query_row(params![id, due_at], |r| {
                // A row naming a payload that is not there (the file changed outside hookgate,
                // or by a build from before layout stamps): not delivered as an empty event.
                if r.get::<_, bool>(11)? {
                    tracing::error!(event_id = %id, "store: the event's headers and body are missing from the store; it is not delivered (stays pending)");
                    return Ok(None);
                }
                Ok(Some(Event {
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
                }))
            })
            .optional()?;
        out.extend(ev.flatten());
    }
    Ok(out)
}

/// Read `FROM {EVENTS}`.
const SUMMARY_COLS: &str = "id, route, state, received_at, attempts, next_attempt_at, last_error, dedupe_key, scheme, COALESCE(length(raw_body), length(body))";

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
    fn set_min_free_space(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
    }

    async fn accept(&self, ev: NewEvent, dedupe: Option<DedupeKey>) -> Result<Accept, StoreError> {
        let headers = ev.headers.to_json();
        self.accept_within(ev, headers, dedupe, ACCEPT_DEADLINE)
            .await
    }

    async fn lease(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.lease_from(route, limit, now_ms, &mut ScanCursor::default())
            .await
    }

    async fn lease_from(
        &self,
        route: &str,
        limit: usize,
        now_ms: i64,
        from: &mut ScanCursor,
    ) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let leases = self.leases.clone();
        let route = route.to_string();
        let start = from.0.clone();
        let (read, reached) = self
            .read(move |conn| {
                // Ids first, from the index alone (most pending events may be leased already),
                // leased under the lock; the rows are read after it is released, so the
                // writer's handoffs never wait on body reads.
                let (ids, reached) = {
                    let mut leased = leases
                        .leased
                        .lock()
                        .map_err(|_| rusqlite::Error::InvalidQuery)?;
                    let most = (limit + leased.len()) as i64;
                    let mut stmt;
                    let mut rows = match &start {
                        None => {
                            stmt = conn.prepare_cached(
                                "SELECT id, next_attempt_at FROM events
                                 WHERE route = ?1 AND state = 'pending' AND next_attempt_at <= ?2
                                 ORDER BY next_attempt_at, id LIMIT ?3",
                            )?;
                            stmt.query(params![route, now_ms, most])?
                        }
                        Some((at, id)) => {
                            stmt = conn.prepare_cached(
                                "SELECT id, next_attempt_at FROM events
                                 WHERE route = ?1 AND state = 'pending' AND next_attempt_at <= ?2
                                   AND (next_attempt_at, id) > (?4, ?5)
                                 ORDER BY next_attempt_at, id LIMIT ?3",
                            )?;
                            stmt.query(params![route, now_ms, most, at, id])?
                        }
                    };
                    let mut ids = Vec::new();
                    let mut reached = start.clone();
                    while let Some(r) = rows.next()? {
                        let id: String = r.get(0)?;
                        reached = Some((r.get(1)?, id.clone()));
                        if !leased.contains(&id) {
                            ids.push(id);
                            if ids.len() == limit {
                                break;
                            }
                        }
                    }
                    leased.extend(ids.iter().cloned());
                    (ids, reached)
                };
                let read = read_events(conn, &ids, None);
                release_unread(&leases, &ids, read.as_deref().unwrap_or_default());
                Ok((read?, reached))
            })
            .await?;
        from.0 = reached;
        Ok(read)
    }

    async fn lease_ids(&self, ids: Vec<String>, now_ms: i64) -> Result<Vec<Event>, StoreError> {
        let leases = self.leases.clone();
        self.read(move |conn| {
            let ids: Vec<String> = {
                let mut leased = leases
                    .leased
                    .lock()
                    .map_err(|_| rusqlite::Error::InvalidQuery)?;
                ids.into_iter()
                    .filter(|id| leased.insert(id.clone()))
                    .collect()
            };
            // A scan may have delivered (or rescheduled) one meanwhile: only what is still
            // pending and due is leased.
            let read = read_events(conn, &ids, Some(now_ms));
            release_unread(&leases, &ids, read.as_deref().unwrap_or_default());
            read
        })
        .await
    }

    async fn next_due(&self, route: &str) -> Result<Option<i64>, StoreError> {
        let leases = self.leases.clone();
        let route = route.to_string();
        self.read(move |conn| {
            let leased = leases
                .leased
                .lock()
                .map_err(|_| rusqlite::Error::InvalidQuery)?;
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
            self.leases.release(&ev.id);
        }
        r
    }

    async fn get(&self, event_id: &str) -> Result<Option<EventDetail>, StoreError> {
        let id = event_id.to_string();
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!("SELECT {SUMMARY_COLS}, method, query, COALESCE(raw_headers, headers) FROM {EVENTS} WHERE id = ?1"),
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
            let mut stmt = conn.prepare_cached(
                "SELECT at, after_attempts, was FROM replays WHERE event_id = ?1 ORDER BY rowid",
            )?;
            let replays = stmt
                .query_map(params![id], |r| {
                    Ok(Replay {
                        at_ms: r.get(0)?,
                        after_attempts: r.get(1)?,
                        was: State::parse(&r.get::<_, String>(2)?).unwrap_or(State::Dead),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (duplicates, last_duplicate_at) = conn
                .prepare_cached("SELECT n, last_at FROM duplicates WHERE event_id = ?1")?
                .query_row(params![id], |r| Ok((r.get(0)?, Some(rfc3339_ms(r.get(1)?)))))
                .optional()?
                .unwrap_or((0, None));
            let headers = serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null);
            Ok(Some(EventDetail {
                summary,
                method,
                query,
                headers,
                duplicates,
                last_duplicate_at,
                attempt_log,
                replays,
            }))
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<EventSummary>, StoreError> {
        let q = q.clone();
        if let Some(key) = q.key.clone() {
            // Through the dedupe keys (small rows; the events' rows of layout 1 hold their
            // bodies, which a scan of them would read whole), on a connection of its own so the scan does not
            // hold up the reads deliveries make. An event is found while its key is kept (the
            // route's dedupe `ttl`), as with Redis.
            return self
                .scan(move |conn| {
                    let [k0, k1, k2, k3] = crate::dedupe::keys_matching(&key);
                    // Rows of keys expired but not purged yet are not the window's.
                    let now = crate::forward::worker::now_ms();
                    let ids: Vec<String> = conn
                        .prepare(
                            "SELECT event_id FROM dedupe_keys WHERE (?1 IS NULL OR route = ?1)
                             AND key IN (?2, ?3, ?4, ?5) AND expires_at > ?6",
                        )?
                        .query_map(params![q.route, k0, k1, k2, k3, now], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut events = Vec::new();
                    let mut stmt = conn.prepare(&format!(
                        "SELECT {SUMMARY_COLS} FROM {EVENTS} WHERE id = ?1"
                    ))?;
                    for id in ids {
                        if let Some(e) = stmt.query_row(params![id], summary).optional()? {
                            if q.state.is_none() || q.state == Some(e.state) {
                                events.push(e);
                            }
                        }
                    }
                    if let Some(before) = &q.before {
                        events.retain(|e| &e.event_id < before);
                    }
                    events.sort_by(|a, b| b.event_id.cmp(&a.event_id));
                    events.dedup_by(|a, b| a.event_id == b.event_id);
                    events.truncate(q.limit);
                    Ok(events)
                })
                .await;
        }
        self.read(move |conn| {
            // The state is spelled out (it comes from an enum) so SQLite can use the partial
            // index of pending or dead events.
            let state = q
                .state
                .map(|s| format!("AND state = '{}'", s.as_str()))
                .unwrap_or_default();
            let route = if q.route.is_some() {
                "route = ?1"
            } else {
                "?1 IS NULL"
            };
            // Spelled out only when given, so the index's range starts there.
            let before = if q.before.is_some() { "AND id < ?3" } else { "AND ?3 IS NULL" };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLS} FROM {EVENTS} WHERE {route} {state} {before} ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![q.route, q.limit as i64, q.before], summary)?;
            rows.collect()
        })
        .await
    }

    async fn counts(&self, route: &str) -> Result<RouteCounts, StoreError> {
        let route = route.to_string();
        self.read(move |conn| {
            // Each count from an index alone; delivered is what is neither pending nor dead.
            let count = |sql: &str| -> rusqlite::Result<u64> {
                let n: i64 = conn
                    .prepare_cached(sql)?
                    .query_row(params![route], |r| r.get(0))?;
                Ok(n as u64)
            };
            // One snapshot for the three: between separate statements, accepts and settles
            // would make delivered too low or too high.
            let tx = conn.unchecked_transaction()?;
            let all = count("SELECT COUNT(*) FROM events WHERE route = ?1")?;
            let pending =
                count("SELECT COUNT(*) FROM events WHERE route = ?1 AND state = 'pending'")?;
            let dead = count("SELECT COUNT(*) FROM events WHERE route = ?1 AND state = 'dead'")?;
            tx.finish()?;
            Ok(RouteCounts {
                pending,
                dead,
                delivered: all.saturating_sub(pending + dead),
            })
        })
        .await
    }

    async fn routes_with_undelivered(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            // A skip scan of each partial index (which holds only pending, or only dead,
            // events): one seek per route, however many events wait.
            let mut routes = std::collections::BTreeSet::new();
            for sql in [
                "SELECT MIN(route) FROM events WHERE state = 'pending' AND route > ?1",
                "SELECT MIN(route) FROM events WHERE state = 'dead' AND route > ?1",
            ] {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut after = String::new();
                while let Some(next) =
                    stmt.query_row(params![after], |r| r.get::<_, Option<String>>(0))?
                {
                    routes.insert(next.clone());
                    after = next;
                }
            }
            Ok(routes.into_iter().collect())
        })
        .await
    }

    async fn replay(&self, event_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        Ok(self.write(|r| Write::Replay(id, now_ms, r)).await? > 0)
    }

    /// In chunks, each a write of its own (see `REPLAY_CHUNK`), in id order: an event that
    /// dies again while the replay goes on (a permanent failure) is not replayed twice.
    async fn replay_dead(&self, route: &str, now_ms: i64) -> Result<u64, StoreError> {
        let (mut total, mut after) = (0, String::new());
        loop {
            let route = route.to_string();
            let (n, last) = match self
                .write(|r| Write::ReplayDead(route.clone(), after, now_ms, r))
                .await
            {
                Ok(chunk) => chunk,
                Err(e) => return Err(super::replay_stopped(&route, total, e)),
            };
            total += n;
            match last {
                Some(last) if n == REPLAY_CHUNK as u64 => after = last,
                _ => return Ok(total),
            }
        }
    }

    async fn bring_forward(
        &self,
        route: &str,
        beyond_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        // A seek at the top of the pending index on a reader first: the writer is asked only
        // when there is something to move, which is almost never.
        let r = route.to_string();
        let any = self
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM events
                     WHERE route = ?1 AND state = 'pending' AND next_attempt_at > ?2)",
                )?
                .query_row(params![r, beyond_ms], |row| row.get::<_, bool>(0))
            })
            .await?;
        if !any {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let route = route.to_string();
            let n = self
                .write(|r| Write::BringForward(route, beyond_ms, now_ms, r))
                .await?;
            total += n;
            if n < BRING_FORWARD_CHUNK {
                return Ok(total);
            }
        }
    }

    /// In chunks, each a write of its own: accepts that come meanwhile are committed between
    /// them instead of waiting for a whole minute's deletions (a purge of one transaction held
    /// every request up for 100–800 ms once a minute in a soak at 500 events/s).
    async fn purge(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let (more, last) = self.write(|r| Write::Purge(now_ms, after, r)).await?;
            if !more {
                return Ok(());
            }
            after = last;
        }
    }

    async fn discard_dead(&self, event_id: &str) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        Ok(self.write(|r| Write::Discard(id, r)).await? > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_finished() {
            return Err(StoreError::Unavailable("writer stopped".into()));
        }
        if self.gone.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the database file was deleted or replaced while open".into(),
            ));
        }
        if self.refusing.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "new events are refused: the disk space available to the store is down to store.min_free_space".into(),
            ));
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the store's last write failed (disk full or an I/O error: see the log's 'store: batch failed' line); new events get 503 until one commits".into(),
            ));
        }
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    fn handoff(&self, route: &str) -> Option<Handoff> {
        let (tx, rx) = tokio::sync::mpsc::channel(HANDOFF_QUEUE);
        let state = Arc::new(HandoffState::default());
        self.leases
            .handoffs
            .lock()
            .ok()?
            .insert(route.to_string(), (tx, state.clone()));
        let (leases, detach_from) = (self.leases.clone(), self.leases.clone());
        let (route, mine) = (route.to_string(), state.clone());
        let detach = move || {
            if let Ok(mut h) = detach_from.handoffs.lock() {
                // Only its own entry: a newer handoff for the route (a reload) stays.
                if h.get(&route).is_some_and(|(_, s)| Arc::ptr_eq(s, &mine)) {
                    h.remove(&route);
                }
            }
        };
        Some(Handoff::new(
            rx,
            state,
            move |id| leases.release(id),
            detach,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verified;

    /// A first attempt that delivered.
    fn delivered_attempt(started_at_ms: i64, latency_ms: u64) -> Attempt {
        Attempt {
            n: 1,
            started_at_ms,
            outcome: "delivered",
            status: Some(200),
            latency_ms,
            detail: String::new(),
        }
    }

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
            replay_key: None,
        };
        NewEvent::new(
            route,
            &parts,
            Bytes::from_static(body.as_bytes()),
            &v,
            1_000,
        )
    }

    /// A store holding `n` pending events of route `r` and one of route `other`.
    async fn n_events_and_one_other(n: u64) -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        for _ in 0..n {
            store.accept(event("r", "x"), None).await.unwrap();
        }
        store.accept(event("other", "y"), None).await.unwrap();
        (dir, store)
    }

    /// Retries scheduled too far ahead are moved in chunks (one write each), all of them, and
    /// only those of the route asked about.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bring_forward_moves_every_stranded_retry_in_chunks_and_no_other_routes() {
        let n = BRING_FORWARD_CHUNK * 2 + 100;
        let (_dir, store) = n_events_and_one_other(n).await;
        // Every event is due at 1,000 (its receipt): "too far ahead" of a clock at 0. More
        // than two chunks' worth: all of them moved, not just the first chunk.
        assert_eq!(store.bring_forward("r", 500, 0).await.unwrap(), n);
        assert_eq!(store.next_due("r").await.unwrap(), Some(0));
        assert_eq!(
            store.next_due("other").await.unwrap(),
            Some(1_000),
            "untouched"
        );
        assert_eq!(
            store.bring_forward("r", 500, 0).await.unwrap(),
            0,
            "none left"
        );
    }

    #[tokio::test]
    async fn replay_dead_goes_in_chunks_and_replays_each_dead_event_once() {
        let n = REPLAY_CHUNK * 2 + 7;
        let (dir, store) = n_events_and_one_other(n as u64).await;
        let db = Connection::open(dir.path().join("hookgate.db")).unwrap();
        db.execute_batch("UPDATE events SET state = 'dead', next_attempt_at = NULL")
            .unwrap();
        let before = store.commits();
        assert_eq!(store.replay_dead("r", 5_000).await.unwrap(), n as u64);
        // Three chunks; the last one's commit may be counted just after its answer.
        assert!(
            store.commits() - before >= 2,
            "a write per chunk of {REPLAY_CHUNK}, not one over the backlog"
        );
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM events WHERE route = 'r' AND state = 'pending' AND next_attempt_at = 5000"),
            n as i64
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE route = 'other' AND state = 'dead'"),
            1,
            "another route's dead letters stay"
        );
        assert_eq!(
            count("SELECT count(*) FROM replays"),
            n as i64,
            "one mark each"
        );
        assert_eq!(
            count("SELECT count(DISTINCT event_id) FROM replays"),
            n as i64
        );
        assert_eq!(store.replay_dead("r", 6_000).await.unwrap(), 0, "none left");
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
                    also: None,
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

    /// The WAL's checkpoint sequence number (bytes 12..16 of its header) goes up each time
    /// the WAL starts over from its beginning.
    fn wal_restarts(dir: &Path) -> u32 {
        use std::io::Read;
        let mut head = [0u8; 16];
        std::fs::File::open(dir.join("hookgate.db-wal"))
            .and_then(|mut f| f.read_exact(&mut head))
            .map(|()| u32::from_be_bytes([head[12], head[13], head[14], head[15]]))
            .unwrap_or(0)
    }

    /// A reader that holds its snapshot keeps the WAL from starting over, so it grows; once
    /// it is let go, the WAL starts over and the first commit after that cuts the file back
    /// to the limit instead of keeping the space.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wal_that_grew_past_its_limit_is_cut_back_once_it_starts_over() {
        const LIMIT: u64 = 256 << 10;
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            wal_size_limit: LIMIT,
            min_free_space: 0,
            ..Options::new(Duration::from_secs(60))
        };
        let store = EmbeddedStore::open_with(dir.path(), &opts).unwrap();
        let wal_size = || {
            std::fs::metadata(dir.path().join("hookgate.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let big: &'static str = Box::leak("b".repeat(4096).into_boxed_str());

        let reader = Connection::open(dir.path().join("hookgate.db")).unwrap();
        reader
            .execute_batch("BEGIN; SELECT COUNT(*) FROM events;")
            .unwrap();
        for _ in 0..300 {
            store.accept(event("r", big), None).await.unwrap();
        }
        let grown = wal_size();
        assert!(grown > 4 * LIMIT, "the WAL grew past the limit: {grown}");
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            store.accept(event("r", "small"), None).await.unwrap();
            if wal_size() <= LIMIT {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the WAL is still {} bytes (limit {LIMIT}, grown to {grown})",
                wal_size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_writes_never_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..8 {
            let (store, stop) = (store.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    store.accept(event("r", "x"), None).await.unwrap();
                }
            }));
        }
        // Every half second or so. The writer's fallback alone (every 5 s) starts it over at
        // most 3 times in 14 s, so 4 within 14 s still needs the regular restarts, and leaves
        // a loaded machine ten seconds to spare.
        let deadline = Instant::now() + Duration::from_secs(14);
        let start = wal_restarts(dir.path());
        while wal_restarts(dir.path()) < start + 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let restarts = wal_restarts(dir.path()).saturating_sub(start);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert!(
            restarts >= 4,
            "the WAL started over {restarts} times in 14 s"
        );
    }

    #[test]
    fn a_second_open_of_the_same_store_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let err = match EmbeddedStore::open(dir.path(), Duration::from_secs(60)) {
            Ok(_) => panic!("a second open of a store in use succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with("store.path: ") && err.contains("in use by another hookgate process"),
            "{err}"
        );
        drop(first);
        EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
    }

    /// A store stamped with a newer layout (a rollback after a bad deploy) or by another
    /// application is refused at open, unchanged; an unstamped one (written before the stamp)
    /// is stamped.
    #[test]
    fn a_store_of_a_newer_layout_or_another_application_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hookgate.db");
        drop(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        let header = |sql: &str| -> i64 {
            let c = Connection::open(&file).unwrap();
            c.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        assert_eq!(header("PRAGMA user_version"), SCHEMA_VERSION);
        assert_eq!(header("PRAGMA application_id"), APPLICATION_ID);

        let set = |sql: &str| Connection::open(&file).unwrap().execute_batch(sql).unwrap();
        let refused = || match EmbeddedStore::open(dir.path(), Duration::from_secs(60)) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        };
        set("PRAGMA user_version = 3");
        let err = refused();
        assert!(
            err.contains(
                "was written by a newer hookgate (store layout 3; this build reads up to 2)"
            ) && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(header("PRAGMA user_version"), 3, "left as it was");

        set("PRAGMA user_version = 1; PRAGMA application_id = 42");
        assert!(
            refused().contains("is not a hookgate store"),
            "{}",
            refused()
        );

        // Another application's file (rollback journal, its own user_version): refused with
        // its bytes untouched (the writer's connection would have turned it to WAL mode).
        let other = tempfile::tempdir().unwrap();
        let foreign = other.path().join("hookgate.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("PRAGMA user_version = 5; CREATE TABLE t (x);")
            .unwrap();
        let bytes = std::fs::read(&foreign).unwrap();
        let err = match EmbeddedStore::open(other.path(), Duration::from_secs(60)) {
            Ok(_) => panic!("opened another application's file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("is not a hookgate store"), "{err}");
        assert_eq!(std::fs::read(&foreign).unwrap(), bytes, "unchanged");

        // Written before the stamp: taken as layout 1 and stamped.
        set("PRAGMA user_version = 0; PRAGMA application_id = 0");
        drop(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        assert_eq!(header("PRAGMA user_version"), SCHEMA_VERSION);
        assert_eq!(header("PRAGMA application_id"), APPLICATION_ID);
    }

    /// Refusing starts with the first refused event and ends only once an eighth of the
    /// reserve is free beyond it; meanwhile the room is 0, so it does not flap with every
    /// event's worth a purge frees.
    #[test]
    fn refusing_ends_an_eighth_of_the_reserve_above_it_not_before() {
        const MIB: u64 = 1 << 20;
        let min = 64 * MIB;
        let mut g = DiskGuard::new(
            Path::new("."),
            Arc::new(AtomicU64::new(min)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        assert!(!g.decide(min + 10 * MIB, 0, min));
        assert_eq!(g.room, 10 * MIB);
        g.spent(10 * MIB, true);
        assert!(g.low, "a refused event starts refusing");
        assert!(!g.decide(min + MIB, 0, min), "one more MiB is not enough");
        assert_eq!(g.room, 0, "while refusing there is no room");
        assert!(!g.decide(min + min / 8, 0, min), "nor is exactly an eighth");
        assert_eq!(g.room, 0);
        assert!(g.decide(min + min / 8 + MIB, 0, min), "refusing ends");
        assert_eq!(g.room, min / 8 + MIB, "with the whole room");
        g.spent(0, true);
        assert!(g.decide(0, 0, 0), "a reserve of 0 ends refusing too");
        assert_eq!(g.room, u64::MAX);
    }

    /// Rows committed to the WAL grow the database file only at the checkpoint: until then
    /// the filesystem does not show that growth, so the room must.
    #[test]
    fn growth_still_in_the_wal_is_counted_until_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_conn(&dir.path().join("hookgate.db"), DEFAULT_PAGE_SIZE).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let (before, _) = pending_growth_and_free_pages(&conn, dir.path());
        assert_eq!(before, 0, "all checkpointed");
        let tx = conn.transaction().unwrap();
        for _ in 0..256 {
            tx.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                .unwrap();
        }
        tx.commit().unwrap();
        let (pending, _) = pending_growth_and_free_pages(&conn, dir.path());
        assert!(pending >= 256 * 4000, "pending growth {pending}");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let (after, free) = pending_growth_and_free_pages(&conn, dir.path());
        assert_eq!(after, 0, "the checkpoint grew the file");
        conn.execute("DELETE FROM t", []).unwrap();
        let (_, freed) = pending_growth_and_free_pages(&conn, dir.path());
        assert!(
            freed > free + 200 * 4000,
            "deleted rows free pages: {freed}"
        );
    }

    #[test]
    fn the_wal_half_of_the_room_comes_from_the_filesystem_alone() {
        const MIB: u64 = 1 << 20;
        assert_eq!(room_above(100 * MIB, 0, 64 * MIB), 36 * MIB);
        assert_eq!(
            room_above(100 * MIB, 10 * MIB, 64 * MIB),
            46 * MIB,
            "free pages take the database's copies"
        );
        assert_eq!(
            room_above(70 * MIB, 1024 * MIB, 64 * MIB),
            12 * MIB,
            "but the WAL frames still need the filesystem: twice its 6 MiB above the reserve"
        );
        assert_eq!(room_above(10 * MIB, 1024 * MIB, 64 * MIB), 0);
        assert_eq!(room_above(0, 0, 64 * MIB), 0);
    }

    /// A batch the database cannot take (disk full, here its page limit) fails whole and says
    /// so, which makes `/readyz` not ready (with `min_free_space = 0` it said ready while every
    /// event got 503); a batch that wrote ends it, one that committed nothing does not.
    #[tokio::test]
    async fn a_batch_the_disk_cannot_take_makes_the_store_not_ready_until_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_conn(&dir.path().join("hookgate.db"), DEFAULT_PAGE_SIZE).unwrap();
        make_tables(&mut conn).unwrap();
        let mut keys = Keys::load(&conn, 0).unwrap();
        let leases = Leases::default();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let body: &'static str = Box::leak("x".repeat(64 << 10).into_boxed_str());
        let mut attempt = |conn: &mut Connection| {
            let ev = event("r", body);
            let headers = ev.headers.to_json();
            let (tx, mut rx) = oneshot::channel();
            let mut batch = vec![Write::Accept(
                Box::new((ev, headers, Claim::default())),
                None,
                tx,
            )];
            let (_, _, failed, wrote) = commit_batch(
                conn,
                &mut batch,
                60_000,
                &leases,
                &mut keys,
                u64::MAX,
                &mut DupCounts::default(),
            );
            (failed, wrote, rx.try_recv().unwrap())
        };
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let (failed, _, answer) = attempt(&mut conn);
        assert!(failed && answer.is_err(), "{answer:?}");
        // A batch that commits without writing (a replay of an unknown id) says nothing of
        // the disk: it must not end `failing` (it made /readyz ready while accepts failed).
        let (tx, _rx) = oneshot::channel();
        let mut nothing = vec![Write::Replay("no-such-event".into(), 5, tx)];
        let mut other_keys = Keys::load(&conn, 0).unwrap();
        let (_, _, failed, wrote) = commit_batch(
            &mut conn,
            &mut nothing,
            60_000,
            &Leases::default(),
            &mut other_keys,
            u64::MAX,
            &mut DupCounts::default(),
        );
        assert!(!failed && !wrote, "an empty commit is no sign");
        conn.pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        let (failed, wrote, answer) = attempt(&mut conn);
        assert!(
            !failed && wrote && matches!(answer, Ok(Accept::Accepted(_))),
            "{answer:?}"
        );

        let store = EmbeddedStore::open(&dir.path().join("s"), Duration::from_secs(60)).unwrap();
        store.ping().await.unwrap();
        store.failing.store(true, Ordering::Relaxed);
        let Err(StoreError::Unavailable(why)) = store.ping().await else {
            panic!("ready while writes fail")
        };
        assert!(why.contains("last write failed"), "{why}");
    }

    /// The room is counted per event, not per batch: a batch of big events cannot take more
    /// than the room its writer saw.
    #[test]
    fn a_batch_takes_new_events_only_while_they_fit_in_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_conn(&dir.path().join("hookgate.db"), DEFAULT_PAGE_SIZE).unwrap();
        make_tables(&mut conn).unwrap();
        let mut keys = Keys::load(&conn, 0).unwrap();
        let leases = Leases::default();
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        let mut one = 0;
        for k in ["a", "b", "c", "a"] {
            let ev = event("r", "a body of some length");
            let headers = ev.headers.to_json();
            one = disk_cost(&ev, &headers);
            let key = Some(DedupeKey {
                key: k.into(),
                also: None,
                expires_at_ms: 10_000,
            });
            let (tx, rx) = oneshot::channel();
            batch.push(Write::Accept(
                Box::new((ev, headers, Claim::default())),
                key,
                tx,
            ));
            answers.push(rx);
        }
        let (left, refused, _, _) = commit_batch(
            &mut conn,
            &mut batch,
            60_000,
            &leases,
            &mut keys,
            2 * one + 7,
            &mut DupCounts::default(),
        );
        assert_eq!(left, 7, "two events took their cost");
        assert!(refused, "the writer is told an event was refused");
        let answers: Vec<_> = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        let Ok(Accept::Accepted(first)) = &answers[0] else {
            panic!("{:?}", answers[0])
        };
        assert!(matches!(answers[1], Ok(Accept::Accepted(_))));
        assert!(
            matches!(&answers[2], Err(e) if e.contains("store.min_free_space")),
            "the third does not fit: {:?}",
            answers[2]
        );
        assert_eq!(
            answers[3],
            Ok(Accept::Duplicate(first.clone())),
            "a duplicate takes no room"
        );
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    /// A key recorded beside the event's own (`DedupeKey::also`): a request matching either
    /// is a duplicate of the original; matching neither, a new event.
    #[tokio::test]
    async fn either_of_two_dedupe_keys_makes_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let key = |key: &str, also: &str| {
            Some(DedupeKey {
                key: key.into(),
                also: Some(also.into()),
                expires_at_ms: 10_000,
            })
        };
        let Accept::Accepted(original) = store
            .accept(event("r", "a"), key("id:1", "b"))
            .await
            .unwrap()
        else {
            panic!("the first is new")
        };
        for (k, also) in [("id:2", "b"), ("id:1", "c")] {
            assert_eq!(
                store.accept(event("r", "a"), key(k, also)).await.unwrap(),
                Accept::Duplicate(original.clone()),
                "{k} {also}"
            );
        }
        assert!(matches!(
            store
                .accept(event("r", "x"), key("id:3", "d"))
                .await
                .unwrap(),
            Accept::Accepted(_)
        ));
    }

    #[tokio::test]
    async fn below_min_free_space_new_events_are_refused_while_duplicates_and_settles_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            min_free_space: 0,
            ..Options::new(Duration::from_secs(60))
        };
        let store = EmbeddedStore::open_with(dir.path(), &opts).unwrap();
        let key = |k: &str| {
            Some(DedupeKey {
                key: k.into(),
                also: None,
                expires_at_ms: 10_000,
            })
        };
        let Accept::Accepted(first) = store.accept(event("r", "a"), key("a")).await.unwrap() else {
            panic!("the first event is new")
        };

        // More than any disk has free: the check refuses every new event.
        store.set_min_free_space(u64::MAX);
        let refused = store.accept(event("r", "b"), key("b")).await;
        match refused {
            Err(StoreError::Unavailable(msg)) => assert!(
                msg.contains("store.min_free_space"),
                "the reason names the key: {msg}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            store.accept(event("r", "c"), None).await.is_err(),
            "an event without a key is refused too"
        );
        assert_eq!(
            store.accept(event("r", "a"), key("a")).await.unwrap(),
            Accept::Duplicate(first.clone()),
            "a duplicate of a recorded event needs no room and is answered as one"
        );
        let leased = store.lease("r", 10, 2_000).await.unwrap();
        assert_eq!(leased.len(), 1, "nothing but the first event was recorded");
        let attempt = delivered_attempt(2_000, 5);
        store
            .settle(&leased[0], attempt, Next::Delivered)
            .await
            .unwrap();
        let c = store.counts("r").await.unwrap();
        assert_eq!((c.pending, c.delivered), (0, 1), "the settle was recorded");
        // Not ready while refusing (the settle came after the refusing batch on the writer).
        match store.ping().await {
            Err(StoreError::Unavailable(msg)) => assert!(
                msg.contains("store.min_free_space"),
                "/readyz says why: {msg}"
            ),
            other => panic!("not ready while refusing, got {other:?}"),
        }

        // Space again (here: the check turned off, as a reload does): the refused key was
        // never recorded, so the sender's retry is a new event.
        store.set_min_free_space(0);
        assert!(matches!(
            store.accept(event("r", "b"), key("b")).await.unwrap(),
            Accept::Accepted(_)
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "ready again once events are taken"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_pass_goes_on_after_the_rows_it_looked_at_and_a_fresh_pass_starts_at_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let mut ids = Vec::new();
        for _ in 0..10 {
            let Accept::Accepted(id) = store.accept(event("r", "x"), None).await.unwrap() else {
                panic!()
            };
            ids.push(id);
        }
        let held = store.lease("r", 4, 2_000).await.unwrap();
        let names = |evs: &[Event]| evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(names(&held), ids[..4]);

        let mut from = ScanCursor::default();
        let first = store.lease_from("r", 3, 2_000, &mut from).await.unwrap();
        assert_eq!(names(&first), ids[4..7], "the leased four are stepped over");
        assert_eq!(from, ScanCursor(Some((1_000, ids[6].clone()))));

        // The first event is due again, but behind where the pass got to.
        let attempt = Attempt {
            n: 1,
            started_at_ms: 2_000,
            outcome: "failed",
            status: Some(500),
            latency_ms: 5,
            detail: String::new(),
        };
        let retry = Next::Retry { at_ms: 1_000 };
        store.settle(&held[0], attempt, retry).await.unwrap();
        let next = store.lease_from("r", 3, 2_000, &mut from).await.unwrap();
        assert_eq!(
            names(&next),
            ids[7..10],
            "the pass goes on, it does not restart"
        );
        let end = store.lease_from("r", 3, 2_000, &mut from).await.unwrap();
        assert!(end.is_empty(), "the pass is over: {:?}", names(&end));

        let fresh = store.lease("r", 10, 2_000).await.unwrap();
        assert_eq!(names(&fresh), ids[..1], "a fresh pass finds it");
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
        let attempt = delivered_attempt(2_000, 5);
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
    async fn a_replay_before_a_handed_over_event_is_sent_is_answered_by_its_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let mut handoff = store.handoff("r").unwrap();
        let Accept::Accepted(id) = store.accept(event("r", "x"), None).await.unwrap() else {
            panic!()
        };
        // Handed over (leased) at once, then it waits in the queue (the circuit is open, say)
        // while the operator replays it.
        let queued = handoff.take(1).remove(0);
        assert!(store.replay(&id, 3_000).await.unwrap());
        // The worker sends the queued copy after the replay; the upstream takes it.
        store
            .settle(&queued, delivered_attempt(3_001, 5), Next::Delivered)
            .await
            .unwrap();
        let ev = store.get(&id).await.unwrap().unwrap();
        assert_eq!(ev.summary.state, State::Delivered, "not to be sent again");
        assert!(store.lease("r", 10, 10_000).await.unwrap().is_empty());
        // Sent at the replay's own millisecond or before: the replay still wins (it may have
        // come while the request was out).
        let Accept::Accepted(id) = store.accept(event("r", "y"), None).await.unwrap() else {
            panic!()
        };
        let queued = handoff.take(1).remove(0);
        assert!(store.replay(&id, 3_000).await.unwrap());
        store
            .settle(&queued, delivered_attempt(3_000, 5), Next::Delivered)
            .await
            .unwrap();
        let again = store.lease("r", 10, 10_000).await.unwrap();
        assert_eq!(again.len(), 1, "the replay is delivered");
        // A failed attempt after the replay leaves the replayed event due, its budget fresh.
        store
            .settle(&again[0], delivered_attempt(4_000, 5), Next::Delivered)
            .await
            .unwrap();
        let Accept::Accepted(id) = store.accept(event("r", "z"), None).await.unwrap() else {
            panic!()
        };
        let queued = handoff.take(1).remove(0);
        assert!(store.replay(&id, 3_000).await.unwrap());
        let failed = Attempt {
            outcome: "retry",
            ..delivered_attempt(3_001, 5)
        };
        let retry = Next::Retry { at_ms: 9_000 };
        store.settle(&queued, failed, retry).await.unwrap();
        let due = store.lease("r", 10, 3_000).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].attempts, due[0].cycle_attempts), (1, 0));
    }

    /// The accept deadline: one the writer has not taken up is given up (503) and never
    /// recorded, as is one whose caller went away; one whose transaction is under way (here:
    /// waiting on another process's lock) is waited for past the deadline and recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accept_given_up_at_its_deadline_is_never_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        let locker = Connection::open(dir.path().join("hookgate.db")).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let deadline = Duration::from_millis(500);
        let send = |k: &'static str| {
            let store = store.clone();
            let ev = event("r", k);
            let headers = ev.headers.to_json();
            let key = Some(DedupeKey {
                key: k.into(),
                also: None,
                expires_at_ms: 1_000_000,
            });
            tokio::spawn(async move { store.accept_within(ev, headers, key, deadline).await })
        };
        // The writer takes A up and waits on the lock (up to its 2 s busy timeout); B queues
        // behind it and passes its deadline; then the lock goes.
        let t0 = std::time::Instant::now();
        let a = send("a");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = send("b");
        // C's caller goes away (the client hung up) while C is still queued.
        let c = send("c");
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.abort();
        let b = b.await.unwrap();
        assert!(matches!(b, Err(StoreError::Unavailable(_))), "{b:?}");
        locker.execute_batch("ROLLBACK").unwrap();
        let a = a.await.unwrap();
        assert!(matches!(a, Ok(Accept::Accepted(_))), "{a:?}");
        assert!(
            t0.elapsed() > deadline,
            "A was waited for past its deadline"
        );
        // B was not recorded: its retry is a new event; A's is a duplicate.
        let again = |k: &'static str| {
            let ev = event("r", k);
            let key = Some(DedupeKey {
                key: k.into(),
                also: None,
                expires_at_ms: 1_000_000,
            });
            let store = store.clone();
            async move { store.accept(ev, key).await.unwrap() }
        };
        assert!(matches!(again("b").await, Accept::Accepted(_)));
        assert!(
            matches!(again("c").await, Accept::Accepted(_)),
            "C was not recorded"
        );
        assert!(matches!(again("a").await, Accept::Duplicate(_)));
    }

    #[tokio::test]
    async fn expired_keys_count_as_new_and_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let key = |exp| {
            Some(DedupeKey {
                key: "k".into(),
                also: None,
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
            .read(|c| c.query_row("SELECT COUNT(*) FROM dedupe_keys", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(left, 0, "expired keys purged");
    }
    #[tokio::test]
    async fn fresh_events_are_handed_over_leased_and_given_back_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let mut handoff = store.handoff("r").unwrap();
        let extra = 5;
        for _ in 0..HANDOFF_QUEUE + extra {
            store.accept(event("r", "b"), None).await.unwrap();
        }
        store.accept(event("other", "b"), None).await.unwrap();
        assert!(!handoff.missed(), "the overflow was spilled, not missed");
        let spilled = handoff.take_spilled(usize::MAX);
        assert_eq!(spilled.len(), extra, "the overflow's ids were spilled");
        assert!(handoff.take_spilled(usize::MAX).is_empty(), "once");
        let leased = store.lease("r", 10_000, i64::MAX).await.unwrap();
        assert_eq!(
            leased.len(),
            extra,
            "lease finds only what was not handed over"
        );
        assert!(leased.iter().all(|e| spilled.contains(&e.id)));
        assert!(
            store.lease_ids(spilled, i64::MAX).await.unwrap().is_empty(),
            "a spilled id the scan leased already is not leased twice"
        );
        let taken = handoff.take(3);
        assert_eq!(taken.len(), 3);
        drop(handoff);
        let back = store.lease("r", 10_000, i64::MAX).await.unwrap();
        assert_eq!(
            back.len(),
            HANDOFF_QUEUE - 3,
            "dropping the handoff gave back every event it still held"
        );
        assert!(back.iter().all(|e| !taken.iter().any(|t| t.id == e.id)));
        store.accept(event("r", "after"), None).await.unwrap();
        let after = store.lease("r", 10, i64::MAX).await.unwrap();
        assert_eq!(
            after.len(),
            1,
            "a dropped handoff is detached: nothing is sent to it"
        );
    }

    #[tokio::test]
    async fn spilled_ids_are_leased_by_id_only_while_pending_and_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let mut handoff = store.handoff("r").unwrap();
        for _ in 0..HANDOFF_QUEUE + 3 {
            store.accept(event("r", "b"), None).await.unwrap();
        }
        let ids = handoff.take_spilled(usize::MAX);
        assert_eq!(ids.len(), 3);
        let first = store.lease_ids(ids[..1].to_vec(), i64::MAX).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, ids[0]);
        assert_eq!(&first[0].body[..], b"b", "read back whole");
        let received = first[0].received_at_ms;
        store
            .settle(&first[0], delivered_attempt(received, 1), Next::Delivered)
            .await
            .unwrap();
        assert!(
            store
                .lease_ids(ids[..1].to_vec(), i64::MAX)
                .await
                .unwrap()
                .is_empty(),
            "a delivered event is not leased again"
        );
        assert!(
            store
                .lease_ids(ids[1..2].to_vec(), received - 1)
                .await
                .unwrap()
                .is_empty(),
            "not before it is due"
        );
        let rest = store.lease_ids(ids[1..].to_vec(), i64::MAX).await.unwrap();
        assert_eq!(rest.len(), 2, "a lease that found nothing was given back");
        assert!(
            store.lease("r", 10_000, i64::MAX).await.unwrap().is_empty(),
            "leased by id means leased: a scan skips them"
        );
    }

    #[test]
    fn spilled_ids_are_bounded_then_missed() {
        let s = HandoffState::default();
        for i in 0..crate::store::SPILL_IDS {
            s.spill(i.to_string());
        }
        assert!(!s.missed.load(std::sync::atomic::Ordering::Acquire));
        s.spill("one too many".into());
        assert!(
            s.missed.load(std::sync::atomic::Ordering::Acquire),
            "past the bound, a scan finds it"
        );
    }

    #[test]
    fn the_handoff_queue_is_bounded_by_bytes_but_always_takes_one() {
        let s = HandoffState::default();
        assert!(s.reserve(HANDOFF_BYTES * 2), "one event fits, however big");
        assert!(!s.reserve(1));
        s.unreserve(HANDOFF_BYTES * 2);
        assert!(s.reserve(HANDOFF_BYTES - 10));
        assert!(s.reserve(10));
        assert!(!s.reserve(1), "full");
    }

    #[test]
    fn ids_made_before_the_cutoff_sort_below_its_prefix() {
        let at = |ms: u64| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                (ms % 1000) as u32 * 1_000_000,
            );
            uuid::Uuid::new_v7(ts).to_string()
        };
        let cutoff = 1_763_900_000_123_i64;
        let prefix = id_prefix(cutoff);
        assert!(at(cutoff as u64 - 1) < prefix);
        assert!(at(cutoff as u64) > prefix);
        assert!(at(cutoff as u64 + 86_400_000) > prefix);
    }

    fn page_size(dir: &Path) -> i64 {
        let conn = Connection::open(dir.join("hookgate.db")).unwrap();
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_store_takes_the_configured_page_size_and_an_old_store_keeps_its_own() {
        let default = tempfile::tempdir().unwrap();
        drop(EmbeddedStore::open(default.path(), Duration::from_secs(60)).unwrap());
        assert_eq!(page_size(default.path()), DEFAULT_PAGE_SIZE as i64);

        let big = tempfile::tempdir().unwrap();
        drop(
            EmbeddedStore::open_with(
                big.path(),
                &Options {
                    page_size: 16384,
                    ..Options::new(Duration::from_secs(60))
                },
            )
            .unwrap(),
        );
        assert_eq!(page_size(big.path()), 16384);

        // A 4 KiB store with a pending event, opened again asking for 16 KiB pages.
        let old = tempfile::tempdir().unwrap();
        let id = {
            let store = EmbeddedStore::open_with(
                old.path(),
                &Options {
                    page_size: 4096,
                    ..Options::new(Duration::from_secs(60))
                },
            )
            .unwrap();
            let Accept::Accepted(id) = store.accept(event("r", "kept"), None).await.unwrap() else {
                panic!()
            };
            id
        };
        let store = EmbeddedStore::open_with(
            old.path(),
            &Options {
                page_size: 16384,
                ..Options::new(Duration::from_secs(60))
            },
        )
        .unwrap();
        assert_eq!(page_size(old.path()), 4096);
        let ev = store
            .get(&id)
            .await
            .unwrap()
            .expect("the event is still there");
        assert_eq!(ev.summary.state, State::Pending);
        let leased = store.lease("r", 10, i64::MAX / 2).await.unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(&leased[0].body[..], b"kept");
    }

    #[test]
    fn keys_of_the_old_dedupe_table_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("hookgate.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE dedupe (route TEXT NOT NULL, key TEXT NOT NULL, event_id TEXT NOT NULL,
                                      expires_at INTEGER NOT NULL, PRIMARY KEY (route, key)) WITHOUT ROWID;
                 INSERT INTO dedupe VALUES ('r', 'k', '01900000-0000-7000-8000-0000000000aa', 9000000000000);",
            )
            .unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let key = DedupeKey {
            key: "k".into(),
            also: None,
            expires_at_ms: 9_000_000_000_001,
        };
        let got = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store.accept(event("r", "x"), Some(key)))
            .unwrap();
        assert_eq!(
            got,
            Accept::Duplicate("01900000-0000-7000-8000-0000000000aa".into())
        );
    }
    #[tokio::test]
    async fn routes_with_undelivered_are_those_with_pending_or_dead_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        // Route "pending" keeps one pending; "dead" one dead; "done" only delivered ones;
        // "mixed" a delivered and a dead one.
        for (route, outcome) in [
            ("pending", "pending"),
            ("dead", "dead"),
            ("done", "delivered"),
            ("done", "delivered"),
            ("mixed", "delivered"),
            ("mixed", "dead"),
        ] {
            store.accept(event(route, outcome), None).await.unwrap();
        }
        for route in ["dead", "done", "mixed"] {
            for ev in store.lease(route, 10, t).await.unwrap() {
                let next = match &ev.body[..] {
                    b"delivered" => Next::Delivered,
                    _ => Next::Dead {
                        reason: "gone".into(),
                    },
                };
                store
                    .settle(&ev, delivered_attempt(t, 1), next)
                    .await
                    .unwrap();
            }
        }
        assert_eq!(
            store.routes_with_undelivered().await.unwrap(),
            ["dead", "mixed", "pending"]
        );
    }

    #[tokio::test]
    async fn delivered_events_are_purged_after_retention_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(60);
        let store = EmbeddedStore::open(dir.path(), retention).unwrap();
        let t = crate::forward::worker::now_ms();
        let mut ids = Vec::new();
        for body in ["delivered", "dead", "pending"] {
            let mut ev = event("r", body);
            ev.received_at_ms = t; // as the ingress sets it: when the id was made
            let Accept::Accepted(id) = store.accept(ev, None).await.unwrap() else {
                panic!()
            };
            ids.push(id);
        }
        let attempt = delivered_attempt(t, 1);
        for ev in store.lease("r", 10, t).await.unwrap() {
            let next = match &ev.body[..] {
                b"delivered" => Next::Delivered,
                b"dead" => Next::Dead {
                    reason: "gone".into(),
                },
                _ => continue,
            };
            store.settle(&ev, attempt.clone(), next).await.unwrap();
        }
        store.purge(t + 1_000).await.unwrap();
        assert!(
            store.get(&ids[0]).await.unwrap().is_some(),
            "kept within retention"
        );
        // Well past the retention: ids are minted as the events are accepted, which may take
        // seconds on a busy machine, and must all fall below the cutoff.
        store.purge(t + 3_600_000).await.unwrap();
        assert!(
            store.get(&ids[0]).await.unwrap().is_none(),
            "purged after it"
        );
        assert_eq!(
            store.get(&ids[1]).await.unwrap().unwrap().summary.state,
            State::Dead
        );
        assert_eq!(
            store.get(&ids[2]).await.unwrap().unwrap().summary.state,
            State::Pending
        );
        let c = store.counts("r").await.unwrap();
        assert_eq!((c.pending, c.delivered, c.dead), (1, 0, 1));
        let attempts: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(attempts, 1, "the purged event's attempts went with it");
    }

    /// Layout 2 keeps headers and body in `payloads`, so a settle rewrites a small row. A layout
    /// 1 store (both in the `events` row) is stamped 2 at open and its events read as before;
    /// new events leave the row's `headers` and `body` empty; a discard takes the payload too.
    #[tokio::test]
    async fn a_layout_1_store_is_read_as_before_and_new_payloads_stand_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hookgate.db");
        let old = {
            let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
            let Accept::Accepted(id) = store
                .accept(event("r", "written by 1"), None)
                .await
                .unwrap()
            else {
                panic!()
            };
            id
        };
        Connection::open(&file)
            .unwrap()
            .execute_batch(
                "UPDATE events SET headers = (SELECT raw_headers FROM payloads WHERE pid = payload),
                                   body = (SELECT raw_body FROM payloads WHERE pid = payload);
                 ALTER TABLE events DROP COLUMN payload;
                 DROP TABLE payloads; PRAGMA user_version = 1;",
            )
            .unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let db = Connection::open(&file).unwrap();
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("PRAGMA user_version"), 2);
        let Accept::Accepted(new) = store
            .accept(event("r", "written by 2"), None)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            count(&format!(
                "SELECT length(body) + length(headers) FROM events WHERE id = '{new}'"
            )),
            0
        );
        let leased = store.lease("r", 10, 2_000).await.unwrap();
        let bodies: Vec<&[u8]> = leased.iter().map(|e| &e.body[..]).collect();
        assert_eq!(bodies, vec![&b"written by 1"[..], &b"written by 2"[..]]);
        assert!(leased.iter().all(|e| e.query.as_deref() == Some("q=1")));
        for (id, len) in [(&old, 12), (&new, 12)] {
            let ev = store.get(id).await.unwrap().unwrap();
            assert_eq!(ev.summary.body_bytes, len, "{id}");
            assert!(ev.headers.is_array(), "{id}: {:?}", ev.headers);
        }
        assert_eq!(count("SELECT count(*) FROM payloads"), 1);
    }

    /// An event whose payload row is missing (the file changed outside hookgate) is not
    /// delivered as an empty event: it is not leased at all.
    #[tokio::test]
    async fn an_event_without_its_payload_is_not_leased_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        store.accept(event("r", "whole"), None).await.unwrap();
        store.accept(event("r", "lost"), None).await.unwrap();
        Connection::open(dir.path().join("hookgate.db"))
            .unwrap()
            .execute_batch("DELETE FROM payloads WHERE raw_body = CAST('lost' AS BLOB)")
            .unwrap();
        let store = {
            drop(store);
            EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap()
        };
        let leased = store.lease("r", 10, 2_000).await.unwrap();
        let bodies: Vec<&[u8]> = leased.iter().map(|e| &e.body[..]).collect();
        assert_eq!(bodies, vec![&b"whole"[..]]);
    }

    /// A store made before the history tables (`replays`, `duplicates`) gains them when it
    /// is opened, and its events get a history from then on.
    #[tokio::test]
    async fn an_older_store_gains_the_history_tables() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
            let Accept::Accepted(id) = store.accept(event("r", "x"), None).await.unwrap() else {
                panic!()
            };
            id
        };
        {
            let conn = Connection::open(dir.path().join("hookgate.db")).unwrap();
            conn.execute_batch("DROP TABLE replays; DROP TABLE duplicates;")
                .unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        assert!(store.replay(&id, t).await.unwrap());
        let ev = store.get(&id).await.unwrap().unwrap();
        assert_eq!(ev.replays.len(), 1);
        assert_eq!((ev.duplicates, ev.summary.state), (0, State::Pending));
    }

    /// A duplicate is counted with its original while the original is kept; one of an event
    /// already purged (its key outlives it) is still a duplicate and leaves no count behind.
    #[tokio::test]
    async fn duplicates_are_counted_with_the_original_while_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        let key = DedupeKey {
            key: "header:k".into(),
            also: None,
            expires_at_ms: t + 3_600_000,
        };
        let send = |at| {
            let mut ev = event("r", "x");
            ev.received_at_ms = at;
            store.accept(ev, Some(key.clone()))
        };
        let Accept::Accepted(id) = send(t).await.unwrap() else {
            panic!()
        };
        assert_eq!(send(t + 9).await.unwrap(), Accept::Duplicate(id.clone()));
        assert_eq!(send(t + 5).await.unwrap(), Accept::Duplicate(id.clone()));
        // Batches of duplicates alone write nothing: the counts wait for one that writes.
        let count = || async {
            store
                .read(|c| {
                    c.query_row("SELECT COUNT(*) FROM duplicates", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .await
                .unwrap()
        };
        assert_eq!(count().await, 0);
        let Accept::Accepted(other) = store.accept(event("r", "y"), None).await.unwrap() else {
            panic!()
        };
        let ev = store.get(&id).await.unwrap().unwrap();
        assert_eq!(ev.duplicates, 2);
        assert_eq!(ev.last_duplicate_at, Some(rfc3339_ms(t + 9)));
        // Or for the idle writer, within DUP_COUNT_LAG.
        assert_eq!(send(t + 20).await.unwrap(), Accept::Duplicate(id.clone()));
        let deadline = Instant::now() + DUP_COUNT_LAG * 5;
        while store.get(&id).await.unwrap().unwrap().duplicates != 3 {
            assert!(Instant::now() < deadline, "the idle writer wrote no count");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        for ev in store.lease("r", 10, t).await.unwrap() {
            let a = delivered_attempt(t, 1);
            store.settle(&ev, a, Next::Delivered).await.unwrap();
        }
        store
            .purge(crate::forward::worker::now_ms() + 61_000)
            .await
            .unwrap();
        assert!(store.get(&id).await.unwrap().is_none(), "purged");
        assert!(store.get(&other).await.unwrap().is_none(), "purged");
        assert_eq!(send(t + 70_000).await.unwrap(), Accept::Duplicate(id));
        // A write that would write the count of this duplicate of an event no longer kept.
        store.accept(event("r", "z"), None).await.unwrap();
        assert_eq!(
            count().await,
            0,
            "the count went with its event, and none came back"
        );
    }

    /// A replay is recorded with the event, from the state and after the attempt it found,
    /// and goes with the event when it is purged or discarded.
    #[tokio::test]
    async fn replays_are_kept_with_the_event_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        let mut ids = Vec::new();
        for body in ["purged", "discarded"] {
            let mut ev = event("r", body);
            ev.received_at_ms = t;
            let Accept::Accepted(id) = store.accept(ev, None).await.unwrap() else {
                panic!()
            };
            ids.push(id);
        }
        let dead = |n| Attempt {
            outcome: "dead",
            n,
            ..delivered_attempt(t, 1)
        };
        let die = Next::Dead {
            reason: "gone".into(),
        };
        for ev in store.lease("r", 10, t).await.unwrap() {
            store.settle(&ev, dead(1), die.clone()).await.unwrap();
        }
        for id in &ids {
            assert!(store.replay(id, t + 10).await.unwrap());
        }
        for ev in store.lease("r", 10, t + 10).await.unwrap() {
            let (attempt, next) = if &ev.body[..] == b"purged" {
                let a = Attempt {
                    n: 2,
                    ..delivered_attempt(t + 10, 1)
                };
                (a, Next::Delivered)
            } else {
                (dead(2), die.clone())
            };
            store.settle(&ev, attempt, next).await.unwrap();
        }
        // The delivered one replayed again: from delivered, after its second attempt.
        assert!(store.replay(&ids[0], t + 20).await.unwrap());
        let ev = store.get(&ids[0]).await.unwrap().unwrap();
        let mark = |at_ms, after_attempts, was| Replay {
            at_ms,
            after_attempts,
            was,
        };
        assert_eq!(
            ev.replays,
            [
                mark(t + 10, 1, State::Dead),
                mark(t + 20, 2, State::Delivered)
            ]
        );
        let gone = store.get(&ids[1]).await.unwrap().unwrap();
        assert_eq!(gone.replays, [mark(t + 10, 1, State::Dead)]);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["replays"][1]["was"], "delivered");
        assert_eq!(json["replays"][1]["after_attempts"], 2);

        for ev in store.lease("r", 10, t + 20).await.unwrap() {
            let a = Attempt {
                n: 3,
                ..delivered_attempt(t + 20, 1)
            };
            store.settle(&ev, a, Next::Delivered).await.unwrap();
        }
        assert!(store.discard_dead(&ids[1]).await.unwrap());
        store
            .purge(crate::forward::worker::now_ms() + 61_000)
            .await
            .unwrap();
        assert!(store.get(&ids[0]).await.unwrap().is_none(), "purged");
        let marks: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM replays", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(marks, 0, "the replays went with their events");
    }

    /// Dead letters piled up at the front of the purge's range are looked at a chunk at a time
    /// (each a write of its own), not all in the first chunk: that held the writer for seconds
    /// at a million of them, once a minute. The delivered events behind them still go.
    #[tokio::test]
    async fn a_purge_reads_past_dead_letters_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        let dead = 2 * PURGE_CHUNK + 200;
        for i in 0..dead + 10 {
            let mut ev = event("r", if i < dead { "dead" } else { "delivered" });
            ev.received_at_ms = t;
            store.accept(ev, None).await.unwrap();
        }
        let db = Connection::open(dir.path().join("hookgate.db")).unwrap();
        db.execute_batch(&format!(
            "UPDATE events SET state = CASE (SELECT raw_body FROM payloads WHERE pid = payload)
                                       WHEN x'{}' THEN 'dead' ELSE 'delivered' END,
                    next_attempt_at = NULL, updated_at = {t}",
            hex::encode("dead")
        ))
        .unwrap();
        let before = store.commits();
        // Well past the retention: ids are minted as the events are accepted, which may take
        // seconds on a busy machine, and must all fall below the cutoff.
        store.purge(t + 3_600_000).await.unwrap();
        assert!(store.commits() - before >= 2, "looked at in chunks");
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM events WHERE state = 'dead'"),
            dead as i64
        );
        assert_eq!(
            count("SELECT count(*) FROM events WHERE state = 'delivered'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM payloads"),
            dead as i64,
            "the purged events' payloads went with them"
        );
    }

    /// A purge goes in chunks of `PURGE_CHUNK` writes, each continuing where the last one
    /// stopped: all of a large batch goes, keys too, and what is not delivered stays.
    #[tokio::test]
    async fn a_purge_larger_than_a_chunk_deletes_everything_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let t = crate::forward::worker::now_ms();
        let n = 2 * PURGE_CHUNK + 300;
        for i in 0..n {
            let mut ev = event("r", if i == 0 { "dead" } else { "delivered" });
            ev.received_at_ms = t;
            let key = DedupeKey {
                key: format!("header:k{i}"),
                also: None,
                expires_at_ms: t + 10_000,
            };
            assert!(matches!(
                store.accept(ev, Some(key)).await.unwrap(),
                Accept::Accepted(_)
            ));
        }
        let events = store.lease("r", n + 10, t).await.unwrap();
        assert_eq!(events.len(), n);
        for ev in events {
            let next = if &ev.body[..] == b"dead" {
                Next::Dead {
                    reason: "gone".into(),
                }
            } else {
                Next::Delivered
            };
            store
                .settle(&ev, delivered_attempt(t, 1), next)
                .await
                .unwrap();
        }
        // Well past the retention: ids are minted as the events are accepted, which may take
        // seconds on a busy machine, and must all fall below the cutoff.
        store.purge(t + 3_600_000).await.unwrap();
        let count = |sql: &'static str| {
            let store = &store;
            async move {
                store
                    .read(move |c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            count("SELECT COUNT(*) FROM events").await,
            1,
            "the dead one stays"
        );
        assert_eq!(count("SELECT COUNT(*) FROM attempts").await, 1);
        assert_eq!(
            count("SELECT COUNT(*) FROM dedupe_keys").await,
            0,
            "every key expired"
        );
        let c = store.counts("r").await.unwrap();
        assert_eq!((c.pending, c.delivered, c.dead), (0, 0, 1));

        // Keys alone for more than a chunk, with events kept (pending, within the retention):
        // the chunks after the first take the keys the first one found.
        let t = t + 100_000;
        for i in 0..PURGE_CHUNK + 200 {
            let mut ev = event("r", "pending");
            ev.received_at_ms = t;
            let key = DedupeKey {
                key: format!("header:p{i}"),
                also: None,
                expires_at_ms: t + 10_000,
            };
            store.accept(ev, Some(key)).await.unwrap();
        }
        store.purge(t + 20_000).await.unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM dedupe_keys").await, 0);
        assert_eq!(
            count("SELECT COUNT(*) FROM events").await,
            1 + PURGE_CHUNK as i64 + 200
        );
    }
}
