//! The embedded store's dedupe keys in memory: the writer thread's own index of the
//! `dedupe_keys` table, which is only appended to (and purged by expiry).
//!
//! Why: with random keys (UUIDs, provider ids) a B-tree keyed by key puts every new key on a
//! different page, so each request cost one whole page in the WAL and again at checkpoint.
//! Appending puts a batch's keys on the table's last page or two. The map is rebuilt from the
//! table at start, so the table stays the truth; memory is about 150 bytes per key still
//! within its `ttl`.
//!
//! Only the writer thread touches the map, and only inside a transaction: every change made
//! while a transaction is open is remembered, and undone if the transaction rolls back, so the
//! map never holds a key the database does not.

use std::collections::HashMap;

use rusqlite::{params, Connection};

/// The original event's id, and when the key stops counting (ms since the epoch).
type Entry = (String, i64);

#[derive(Default)]
pub(super) struct Keys {
    by_route: HashMap<String, HashMap<String, Entry>>,
    /// Changes of the open transaction: the key and what it held before.
    undo: Vec<(String, String, Option<Entry>)>,
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
            let (route, key): (String, String) = (r.get(0)?, r.get(1)?);
            keys.by_route
                .entry(route)
                .or_default()
                .insert(key, (r.get(2)?, r.get(3)?));
        }
        Ok(keys)
    }

    /// The original's id, if `key` was seen on `route` and still counts at `at_ms`.
    pub(super) fn seen(&self, route: &str, key: &str, at_ms: i64) -> Option<&str> {
        let (id, expires) = self.by_route.get(route)?.get(key)?;
        (*expires > at_ms).then_some(id.as_str())
    }

    /// Records the key in the open transaction (`tx`) and in the map.
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
        let old = self
            .by_route
            .entry(route.to_string())
            .or_default()
            .insert(key.to_string(), (event_id.to_string(), expires_at_ms));
        self.undo.push((route.to_string(), key.to_string(), old));
        Ok(())
    }

    /// Forgets keys expired at `now_ms`, in the open transaction and in the map.
    pub(super) fn purge(&mut self, tx: &Connection, now_ms: i64) -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM dedupe_keys WHERE expires_at <= ?1",
            params![now_ms],
        )?;
        for (route, keys) in &mut self.by_route {
            keys.retain(|key, (id, expires)| {
                let keep = *expires > now_ms;
                if !keep {
                    let old = Some((std::mem::take(id), *expires));
                    self.undo.push((route.clone(), key.clone(), old));
                }
                keep
            });
        }
        self.by_route.retain(|_, keys| !keys.is_empty());
        Ok(())
    }

    /// The open transaction committed: its changes stay.
    pub(super) fn committed(&mut self) {
        self.undo.clear();
    }

    /// The open transaction rolled back: puts back what it changed, newest first.
    pub(super) fn rolled_back(&mut self) {
        while let Some((route, key, old)) = self.undo.pop() {
            let keys = self.by_route.entry(route).or_default();
            match old {
                Some(entry) => keys.insert(key, entry),
                None => keys.remove(&key),
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
    fn a_rolled_back_transaction_leaves_the_map_as_it_was() {
        let mut conn = db();
        let mut keys = Keys::default();
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", "e1", 100).unwrap();
        tx.commit().unwrap();
        keys.committed();

        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", "e2", 200).unwrap(); // replaces an expired key
        keys.insert(&tx, "r", "b", "e3", 200).unwrap();
        keys.purge(&tx, 150).unwrap();
        drop(tx); // rolls back
        keys.rolled_back();
        assert_eq!(keys.seen("r", "a", 50), Some("e1"));
        assert_eq!(keys.seen("r", "b", 50), None);

        let reloaded = Keys::load(&conn, 50).unwrap();
        assert_eq!(reloaded.seen("r", "a", 50), Some("e1"));
        assert_eq!(reloaded.seen("r", "b", 50), None);
    }

    #[test]
    fn load_keeps_the_newest_row_of_a_key_and_skips_expired_ones() {
        let mut conn = db();
        let mut keys = Keys::default();
        let tx = conn.transaction().unwrap();
        keys.insert(&tx, "r", "a", "old", 100).unwrap();
        keys.insert(&tx, "r", "a", "new", 300).unwrap();
        keys.insert(&tx, "r", "gone", "x", 120).unwrap();
        keys.insert(&tx, "other", "a", "o", 300).unwrap();
        tx.commit().unwrap();
        let loaded = Keys::load(&conn, 150).unwrap();
        assert_eq!(loaded.seen("r", "a", 150), Some("new"));
        assert_eq!(
            loaded.seen("r", "gone", 110),
            None,
            "expired before the load"
        );
        assert_eq!(loaded.seen("other", "a", 299), Some("o"));
        assert_eq!(
            loaded.seen("other", "a", 300),
            None,
            "a key counts until it expires"
        );
    }
}
