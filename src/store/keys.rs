//! The embedded store's dedupe keys in memory: the writer thread's own index of the
//! `dedupe_keys` table, which is only appended to (and purged by expiry).
//!
//! Why: with random keys (UUIDs, provider ids) a B-tree keyed by key puts every new key on a
//! different page, so each request cost one whole page in the WAL and again at checkpoint.
//! Appending puts a batch's keys on the table's last page or two. The map is rebuilt from the
//! table at start, so the table stays the truth; memory is 60–100 bytes per key still within
//! its `ttl` (a hash of route and key, the event id as a number, the expiry).
//!
//! Only the writer thread touches the map, and only inside a transaction: every change made
//! while a transaction is open is remembered, and undone if the transaction rolls back, so the
//! map never holds a key the database does not.

use std::collections::HashMap;

use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

/// A route and key, as the first 128 bits of SHA-256 over both: fixed size, whatever the
/// key's length (collisions need ~2^64 live keys).
type KeyHash = u128;

/// The original event's id (a UUID, as a number), and when the key stops counting.
type Entry = (u128, i64);

fn key_hash(route: &str, key: &str) -> KeyHash {
    let digest = Sha256::new()
        .chain_update(route.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

fn id_number(event_id: &str) -> u128 {
    match uuid::Uuid::parse_str(event_id) {
        Ok(id) => id.as_u128(),
        Err(_) => {
            // Every id the store makes is a UUID; only a damaged row could get here.
            tracing::warn!(
                event_id,
                "store: dedupe key names an event id that is not a UUID"
            );
            0
        }
    }
}

/// The writer's index of live dedupe keys: 60–100 bytes per key, by the hash table's fill
/// (1 M keys ≈ 60–100 MB).
#[derive(Default)]
pub(super) struct Keys {
    live: HashMap<KeyHash, Entry>,
    /// Changes of the open transaction: the key and what it held before.
    undo: Vec<(KeyHash, Option<Entry>)>,
}

impl Keys {
    /// Every key of `dedupe_keys` still within its window at `now_ms`.
    pub(super) fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Keys> {
        let mut keys = Keys::default();
        let mut stmt = conn.prepare(
            "SELECT route, key, event_id, expires_at FROM dedupe_keys
             WHERE expires_at > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![now_ms])?;
        while let Some(r) = rows.next()? {
            let hash = key_hash(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?);
            let id = id_number(&r.get::<_, String>(2)?);
            keys.live.insert(hash, (id, r.get(3)?));
        }
        Ok(keys)
    }

    /// The original's id, if `key` was seen on `route` and still counts at `at_ms`.
    pub(super) fn seen(&self, route: &str, key: &str, at_ms: i64) -> Option<String> {
        let (id, expires) = self.live.get(&key_hash(route, key))?;
        (*expires > at_ms).then(|| uuid::Uuid::from_u128(*id).to_string())
    }

    /// Records the key in the open transaction (`tx`) and in the index.
    pub(super) fn insert(
        &mut self,
        tx: &Connection,
        route: &str,
        key: &str,
        event_id: &str,
        expires_at_ms: i64,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO dedupe_keys (route, key, event_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![route, key, event_id, expires_at_ms])?;
        let hash = key_hash(route, key);
        let old = self.live.insert(hash, (id_number(event_id), expires_at_ms));
        self.undo.push((hash, old));
        Ok(())
    }

    /// Forgets keys expired at `now_ms`, in the open transaction and in the index (a walk
    /// over every live key, a few ns each, once per purge).
    pub(super) fn purge(&mut self, tx: &Connection, now_ms: i64) -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM dedupe_keys WHERE expires_at <= ?1",
            params![now_ms],
        )?;
        let undo = &mut self.undo;
        self.live.retain(|hash, entry| {
            let keep = entry.1 > now_ms;
            if !keep {
                undo.push((*hash, Some(*entry)));
            }
            keep
        });
        Ok(())
    }

    /// The open transaction committed: its changes stay.
    pub(super) fn committed(&mut self) {
        self.undo.clear();
    }

    /// The open transaction rolled back: puts back what it changed, newest first.
    pub(super) fn rolled_back(&mut self) {
        while let Some((hash, old)) = self.undo.pop() {
            match old {
                Some(entry) => self.live.insert(hash, entry),
                None => self.live.remove(&hash),
            };
        }
    }
}

/// Moves keys from the table of earlier versions (a B-tree keyed by route and key) into
/// `dedupe_keys`, once.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dedupe')",
        [],
        |r| r.get(0),
    )?;
    if old {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "INSERT INTO dedupe_keys (route, key, event_id, expires_at)
                 SELECT route, key, event_id, expires_at FROM dedupe ORDER BY expires_at;
             DROP TABLE dedupe;",
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: &str = "01900000-0000-7000-8000-000000000001";
    const E2: &str = "01900000-0000-7000-8000-000000000002";
    const E3: &str = "01900000-0000-7000-8000-000000000003";
    const OLD: &str = "01900000-0000-7000-8000-00000000000a";
    const NEW: &str = "01900000-0000-7000-8000-00000000000b";
    const X: &str = "01900000-0000-7000-8000-00000000000c";
    const O: &str = "01900000-0000-7000-8000-00000000000d";

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE dedupe_keys (seq INTEGER PRIMARY KEY, route TEXT, key TEXT,
                                       event_id TEXT, expires_at INTEGER)",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_rolled_back_transaction_leaves_the_index_as_it_was() {
        let mut conn = db();
        let mut keys = Keys::default();
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", E1, 100).unwrap();
        tx.commit().unwrap();
        keys.committed();

        // A new key, and a purge that forgets the expired "a"; then a rollback.
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "b", E3, 200).unwrap();
        keys.purge(&tx, 150).unwrap();
        assert_eq!(
            keys.seen("r", "a", 50),
            None,
            "purged inside the transaction"
        );
        drop(tx); // rolls back
        keys.rolled_back();
        assert_eq!(
            keys.seen("r", "a", 50).as_deref(),
            Some(E1),
            "the purge is undone"
        );
        assert_eq!(keys.seen("r", "b", 50), None, "the insert is undone");

        // A key taken over after it expired, then a rollback: the old entry comes back.
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", E2, 300).unwrap();
        assert_eq!(keys.seen("r", "a", 150).as_deref(), Some(E2));
        drop(tx);
        keys.rolled_back();
        assert_eq!(keys.seen("r", "a", 50).as_deref(), Some(E1));

        let reloaded = Keys::load(&conn, 50).unwrap();
        assert_eq!(reloaded.seen("r", "a", 50).as_deref(), Some(E1));
        assert_eq!(reloaded.seen("r", "b", 50), None);
    }

    #[test]
    fn load_keeps_the_newest_row_of_a_key_and_skips_expired_ones() {
        let mut conn = db();
        let mut keys = Keys::default();
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", OLD, 100).unwrap();
        keys.insert(&tx, "r", "a", NEW, 300).unwrap();
        keys.insert(&tx, "r", "gone", X, 120).unwrap();
        keys.insert(&tx, "other", "a", O, 300).unwrap();
        tx.commit().unwrap();
        let loaded = Keys::load(&conn, 150).unwrap();
        assert_eq!(loaded.seen("r", "a", 150).as_deref(), Some(NEW));
        assert_eq!(
            loaded.seen("r", "gone", 110),
            None,
            "expired before the load"
        );
        assert_eq!(loaded.seen("other", "a", 299).as_deref(), Some(O));
        assert_eq!(
            loaded.seen("other", "a", 300),
            None,
            "a key counts until it expires"
        );
    }
}
