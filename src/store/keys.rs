//! The embedded store's dedupe keys in memory: the writer thread's own index of the
//! `dedupe_keys` table, which is only appended to (and purged by expiry).
//!
//! Why: with random keys (UUIDs, provider ids) a B-tree keyed by key puts every new key on a
//! different page, so each request cost one whole page in the WAL and again at checkpoint.
//! Appending puts a batch's keys on the table's last page or two. The map is rebuilt from the
//! table at start, so the table stays the truth; memory is 38–75 bytes per key still within
//! its `ttl` (a hash of route and key, the key's row, its expiry). The map also stands in for
//! an index on expiry: a purge deletes expired keys by their row, so an accept appends to one
//! B-tree for its key, not two.
//!
//! Only the writer thread touches the map, and only inside a transaction: every change made
//! while a transaction is open is remembered, and undone if the transaction rolls back, so the
//! map never holds a key the database does not.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// A route and key, as the first 128 bits of SHA-256 over both: fixed size, whatever the
/// key's length (collisions need ~2^64 live keys).
type KeyHash = u128;

/// The key's row in `dedupe_keys` (its `seq`, where the original's id is), and when the key
/// stops counting.
type Entry = (i64, i64);

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

/// The writer's index of live dedupe keys: 38–75 bytes per key, by the hash table's fill
/// (1 M keys ≈ 38–75 MB).
#[derive(Default)]
pub(super) struct Keys {
    live: HashMap<KeyHash, Entry>,
    /// Changes of the open transaction: the key and what it held before.
    undo: Vec<(KeyHash, Option<Entry>)>,
    /// The expired keys the first chunk of a purge found, for the chunks after it to take
    /// (one walk over the map a purge, not one a chunk).
    expired: Vec<(KeyHash, Entry)>,
}

impl Keys {
    /// Every key of `dedupe_keys` still within its window at `now_ms`; the rows of the others
    /// are deleted (a purge only finds keys that are in the map).
    pub(super) fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Keys> {
        conn.execute(
            "DELETE FROM dedupe_keys WHERE expires_at <= ?1",
            params![now_ms],
        )?;
        let mut keys = Keys::default();
        let mut stmt = conn.prepare(
            "SELECT seq, route, key, expires_at FROM dedupe_keys
             WHERE expires_at > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![now_ms])?;
        let mut superseded = Vec::new();
        while let Some(r) = rows.next()? {
            let hash = key_hash(&r.get::<_, String>(1)?, &r.get::<_, String>(2)?);
            if let Some(old) = keys.live.insert(hash, (r.get(0)?, r.get(3)?)) {
                superseded.push(old);
            }
        }
        drop(rows);
        drop(stmt);
        // Only rows written before this index deleted the row a key replaced.
        for entry in superseded {
            delete_row(conn, entry)?;
        }
        Ok(keys)
    }

    /// The original's id, if `key` was seen on `route` and still counts at `at_ms` (read from
    /// the key's row, in the open transaction `tx`).
    pub(super) fn seen(
        &self,
        tx: &Connection,
        route: &str,
        key: &str,
        at_ms: i64,
    ) -> rusqlite::Result<Option<String>> {
        let Some((seq, expires)) = self.live.get(&key_hash(route, key)) else {
            return Ok(None);
        };
        if *expires <= at_ms {
            return Ok(None);
        }
        // Route and key too: a row number alone could name another key's row if the map
        // were ever out of step with the table.
        let id = tx
            .prepare_cached(
                "SELECT event_id FROM dedupe_keys WHERE seq = ?1 AND route = ?2 AND key = ?3",
            )?
            .query_row(params![seq, route, key], |r| r.get::<_, String>(0))
            .optional()?;
        if id.is_none() {
            // The map and the table disagree; taking the event again is the safe side.
            tracing::warn!(
                route,
                seq,
                "store: a live dedupe key has no row; accepting the event as new"
            );
        }
        Ok(id)
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
        let old = self
            .live
            .insert(hash, (tx.last_insert_rowid(), expires_at_ms));
        // Noted before anything else can fail, so a rollback puts the old entry back.
        self.undo.push((hash, old));
        if let Some(entry) = old {
            // An expired key taken again: its old row goes now, as no purge will find it.
            delete_row(tx, entry)?;
        }
        Ok(())
    }

    /// Forgets up to `limit` keys expired at `now_ms`, in the open transaction (by row) and
    /// in the index. The `first` chunk of a purge walks the live keys (a few ns each) for the
    /// expired ones; the chunks after it take from that list, skipping a key taken again
    /// meanwhile. True when more are left.
    pub(super) fn purge(
        &mut self,
        tx: &Connection,
        now_ms: i64,
        limit: usize,
        first: bool,
    ) -> rusqlite::Result<bool> {
        if first {
            self.expired = self
                .live
                .iter()
                .filter(|(_, (_, expires))| *expires <= now_ms)
                .map(|(hash, entry)| (*hash, *entry))
                .collect();
        }
        let mut done = 0;
        while done < limit {
            let Some((hash, entry)) = self.expired.pop() else {
                break;
            };
            if self.live.get(&hash) != Some(&entry) {
                continue;
            }
            delete_row(tx, entry)?;
            self.live.remove(&hash);
            self.undo.push((hash, Some(entry)));
            done += 1;
        }
        Ok(!self.expired.is_empty())
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

/// Deletes a key's row by its `seq` and expiry both: were the index ever out of step with the
/// table (a `seq` SQLite gave again to a newer row), another key's row stays.
fn delete_row(tx: &Connection, (seq, expires_at): Entry) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM dedupe_keys WHERE seq = ?1 AND expires_at = ?2")?
        .execute(params![seq, expires_at])?;
    Ok(())
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

    fn seen(keys: &Keys, conn: &Connection, key: &str, at: i64) -> Option<String> {
        keys.seen(conn, "r", key, at).unwrap()
    }

    /// The table's rows, as (key, event id), by `seq`.
    fn rows(conn: &Connection) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare("SELECT key, event_id FROM dedupe_keys ORDER BY seq")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn row(key: &str, id: &str) -> (String, String) {
        (key.to_string(), id.to_string())
    }

    /// Inserts `(key, event id, expiry)` on route "r" in one committed transaction.
    fn insert_committed(conn: &mut Connection, keys: &mut Keys, rows: &[(&str, &str, i64)]) {
        let tx = conn.transaction().unwrap();
        for (key, id, expires) in rows {
            keys.insert(&tx, "r", key, id, *expires).unwrap();
        }
        tx.commit().unwrap();
        keys.committed();
    }

    #[test]
    fn a_rolled_back_transaction_leaves_the_index_as_it_was() {
        let mut conn = db();
        let mut keys = Keys::default();
        insert_committed(&mut conn, &mut keys, &[("a", E1, 100)]);

        // A new key, and a purge that forgets the expired "a"; then a rollback.
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "b", E3, 200).unwrap();
        keys.purge(&tx, 150, usize::MAX, true).unwrap();
        assert_eq!(
            seen(&keys, &tx, "a", 50),
            None,
            "purged inside the transaction"
        );
        drop(tx); // rolls back
        keys.rolled_back();
        assert_eq!(
            seen(&keys, &conn, "a", 50).as_deref(),
            Some(E1),
            "the purge is undone"
        );
        assert_eq!(seen(&keys, &conn, "b", 50), None, "the insert is undone");

        // A key taken over after it expired, then a rollback: the old entry comes back.
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", E2, 300).unwrap();
        assert_eq!(seen(&keys, &tx, "a", 150).as_deref(), Some(E2));
        drop(tx);
        keys.rolled_back();
        assert_eq!(seen(&keys, &conn, "a", 50).as_deref(), Some(E1));
        assert_eq!(rows(&conn), [row("a", E1)], "the table as the index says");

        let reloaded = Keys::load(&conn, 50).unwrap();
        assert_eq!(seen(&reloaded, &conn, "a", 50).as_deref(), Some(E1));
        assert_eq!(seen(&reloaded, &conn, "b", 50), None);
    }

    #[test]
    fn load_keeps_the_newest_row_of_a_key_and_deletes_expired_and_replaced_ones() {
        let conn = db();
        // As earlier versions left it: a key's replaced row stays until it expires.
        for (key, id, expires) in [("a", OLD, 200), ("a", NEW, 300), ("gone", X, 120)] {
            conn.execute(
                "INSERT INTO dedupe_keys (route, key, event_id, expires_at) VALUES ('r', ?1, ?2, ?3)",
                params![key, id, expires],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO dedupe_keys (route, key, event_id, expires_at) VALUES ('other', 'a', ?1, 300)",
            params![O],
        )
        .unwrap();
        let loaded = Keys::load(&conn, 150).unwrap();
        assert_eq!(seen(&loaded, &conn, "a", 150).as_deref(), Some(NEW));
        assert_eq!(
            seen(&loaded, &conn, "gone", 110),
            None,
            "expired before the load"
        );
        assert_eq!(
            loaded.seen(&conn, "other", "a", 299).unwrap().as_deref(),
            Some(O)
        );
        assert_eq!(
            loaded.seen(&conn, "other", "a", 300).unwrap(),
            None,
            "a key counts until it expires"
        );
        assert_eq!(
            rows(&conn),
            [row("a", NEW), row("a", O)],
            "the expired and the replaced rows are gone"
        );
    }

    #[test]
    fn a_purge_deletes_the_rows_of_expired_keys_and_a_key_taken_again_its_old_row() {
        let mut conn = db();
        let mut keys = Keys::default();
        insert_committed(
            &mut conn,
            &mut keys,
            &[("a", E1, 100), ("b", E2, 200), ("c", E3, 300)],
        );

        let tx = conn.transaction().unwrap();
        keys.purge(&tx, 150, usize::MAX, true).unwrap();
        // "b" expired without a purge since, and is taken again.
        assert_eq!(seen(&keys, &tx, "b", 250), None);
        keys.insert(&tx, "r", "b", X, 400).unwrap();
        tx.commit().unwrap();
        keys.committed();
        assert_eq!(rows(&conn), [row("c", E3), row("b", X)]);
        assert_eq!(seen(&keys, &conn, "b", 250).as_deref(), Some(X));
        assert_eq!(seen(&keys, &conn, "c", 250).as_deref(), Some(E3));
    }

    #[test]
    fn a_key_taken_again_whose_old_row_cannot_be_deleted_leaves_nothing_behind() {
        let mut conn = db();
        let mut keys = Keys::default();
        insert_committed(&mut conn, &mut keys, &[("a", E1, 100)]);
        // "a" expired and comes again, but its old row cannot be deleted (an I/O error, say):
        // the transaction rolls back and the sender is told to retry.
        conn.execute_batch(
            "CREATE TRIGGER fail BEFORE DELETE ON dedupe_keys BEGIN SELECT RAISE(ABORT, 'io'); END",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        assert_eq!(seen(&keys, &tx, "a", 150), None);
        assert!(keys.insert(&tx, "r", "a", E2, 500).is_err());
        drop(tx);
        keys.rolled_back();
        conn.execute_batch("DROP TRIGGER fail").unwrap();
        // Another key takes the row number the rolled-back row had.
        insert_committed(&mut conn, &mut keys, &[("b", E3, 500)]);
        assert_eq!(
            seen(&keys, &conn, "a", 200),
            None,
            "the retry of \"a\" is new"
        );
        assert_eq!(seen(&keys, &conn, "b", 200).as_deref(), Some(E3));
        insert_committed(&mut conn, &mut keys, &[("a", X, 600)]);
        assert_eq!(
            rows(&conn),
            [row("b", E3), row("a", X)],
            "b's row untouched"
        );
    }
}
