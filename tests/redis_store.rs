//! The Redis store through the `Store` trait, in-process, against a private redis-server:
//! the parts the end-to-end tests cannot reach quickly (retention purge, replay during an
//! attempt, one lease per event across two store instances).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use hookgate::config::{StoreBackend, StoreConfig};
use hookgate::store::{
    self, Attempt, DedupeKey, Event, ListQuery, NewEvent, Next, State, Store, StoreError,
    StoredHeaders,
};
use support::{wait_until, RedisServer};

const RETENTION: Duration = Duration::from_secs(3600);

async fn open(redis: &RedisServer, prefix: &str) -> Arc<dyn Store> {
    open_with(redis, prefix, Duration::from_secs(30)).await
}

async fn open_with(redis: &RedisServer, prefix: &str, visibility: Duration) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        backend: StoreBackend::Redis {
            url: redis.url(),
            key_prefix: prefix.into(),
            visibility_timeout: visibility,
        },
        retention: RETENTION,
    })
    .await
    .unwrap()
}

fn event(n: u32, at: i64) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        route: "r".into(),
        received_at_ms: at,
        method: "POST".into(),
        query: Some("a=1".into()),
        headers: StoredHeaders::default(),
        body: bytes::Bytes::from(format!("body {n} \u{0}\u{ff}")),
        scheme: "hmac",
        dedupe_key: None,
        keep: Default::default(),
    }
}

fn attempt(n: u32, at: i64, outcome: &'static str) -> Attempt {
    Attempt {
        n,
        started_at_ms: at,
        outcome,
        status: Some(200),
        latency_ms: 3,
        detail: "ok".into(),
    }
}

/// Settles `ev`'s first attempt, made at `at`, as dead.
async fn die(s: &dyn Store, ev: &Event, at: i64) {
    s.settle(
        ev,
        attempt(1, at, "dead"),
        Next::Dead { reason: "x".into() },
    )
    .await
    .unwrap();
}

async fn accept(s: &dyn Store, ev: NewEvent) -> String {
    match s.accept(ev, None).await.unwrap() {
        store::Accept::Accepted(id) => id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn delivered_events_are_purged_after_retention_others_kept() {
    let redis = RedisServer::start();
    let s = open(&redis, "p").await;
    let t = 1_700_000_000_000;
    // With a dedupe key that outlives the event.
    let key = DedupeKey {
        key: "k".into(),
        also: None,
        expires_at_ms: t + 3 * RETENTION.as_millis() as i64,
    };
    let Ok(store::Accept::Accepted(delivered)) = s.accept(event(1, t), Some(key.clone())).await
    else {
        panic!()
    };
    let dead = accept(&*s, event(2, t)).await;
    let dup = s.accept(event(1, t + 7), Some(key.clone())).await.unwrap();
    assert_eq!(dup, store::Accept::Duplicate(delivered.clone()));
    let ev = s.get(&delivered).await.unwrap().unwrap();
    assert_eq!(ev.duplicates, 1);
    assert_eq!(
        ev.last_duplicate_at,
        Some("2023-11-14T22:13:20.007Z".into())
    );
    let leased = s.lease("r", 10, t).await.unwrap();
    assert_eq!(leased.len(), 2);
    for ev in &leased {
        let next = if ev.id == delivered {
            Next::Delivered
        } else {
            Next::Dead {
                reason: "gone".into(),
            }
        };
        s.settle(ev, attempt(1, t, "delivered"), next)
            .await
            .unwrap();
    }
    s.purge(t + 1000).await.unwrap();
    assert!(
        s.get(&delivered).await.unwrap().is_some(),
        "kept within retention"
    );
    s.purge(t + RETENTION.as_millis() as i64 + 10_000)
        .await
        .unwrap();
    assert!(s.get(&delivered).await.unwrap().is_none(), "purged");
    // A duplicate of it still names it, and leaves nothing behind in its place.
    let late = t + RETENTION.as_millis() as i64 + 20_000;
    let dup = s.accept(event(1, late), Some(key)).await.unwrap();
    assert_eq!(dup, store::Accept::Duplicate(delivered.clone()));
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let left: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("*{delivered}*"))
        .query(&mut con)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        s.get(&dead).await.unwrap().unwrap().summary.state,
        State::Dead
    );
    let c = s.counts("r").await.unwrap();
    assert_eq!((c.pending, c.delivered, c.dead), (0, 0, 1));
}

#[tokio::test]
async fn two_instances_lease_each_event_once_and_dedupe_together() {
    let redis = RedisServer::start();
    let (a, b) = (open(&redis, "two").await, open(&redis, "two").await);
    let now = hookgate::forward::worker::now_ms();
    let key = DedupeKey {
        key: "k".into(),
        also: None,
        expires_at_ms: now + 60_000,
    };
    let first = a.accept(event(0, now), Some(key.clone())).await.unwrap();
    let second = b.accept(event(0, now), Some(key)).await.unwrap();
    let store::Accept::Accepted(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(second, store::Accept::Duplicate(id));
    for i in 1..50 {
        accept(&*a, event(i, now)).await;
    }
    let (la, lb) = (
        a.lease("r", 30, now).await.unwrap(),
        b.lease("r", 30, now).await.unwrap(),
    );
    assert_eq!(la.len() + lb.len(), 50);
    let mut ids: Vec<_> = la.iter().chain(&lb).map(|e| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "no event leased twice");
    assert!(a.lease("r", 30, now).await.unwrap().is_empty());
    assert_eq!(a.next_due("r").await.unwrap(), None);
    // Bodies come back byte for byte.
    let ev = la
        .iter()
        .chain(&lb)
        .find(|e| e.body.ends_with(b"\0\xc3\xbf"))
        .unwrap();
    assert_eq!(ev.query.as_deref(), Some("a=1"));
}

#[tokio::test]
async fn retry_is_due_later_and_replay_during_an_attempt_wins() {
    let redis = RedisServer::start();
    let s = open(&redis, "rp").await;
    let t = hookgate::forward::worker::now_ms();
    let id = accept(&*s, event(1, t)).await;
    let ev = s.lease("r", 1, t).await.unwrap().remove(0);
    s.settle(&ev, attempt(1, t, "retry"), Next::Retry { at_ms: t + 5000 })
        .await
        .unwrap();
    assert_eq!(s.next_due("r").await.unwrap(), Some(t + 5000));
    assert!(
        s.lease("r", 1, t + 10).await.unwrap().is_empty(),
        "not due yet"
    );
    let ev = s.lease("r", 1, t + 5000).await.unwrap().remove(0);
    assert_eq!((ev.attempts, ev.cycle_attempts), (1, 1));
    // Replayed while attempt 2 runs: attempt 2's failure must not bury the replay.
    assert!(s.replay(&id, t + 5001).await.unwrap());
    s.settle(
        &ev,
        attempt(2, t, "dead"),
        Next::Dead { reason: "x".into() },
    )
    .await
    .unwrap();
    let again = s.lease("r", 1, t + 5002).await.unwrap();
    assert_eq!(again.len(), 1, "the replay is delivered");
    assert_eq!((again[0].attempts, again[0].cycle_attempts), (2, 0));
    let d = s.get(&id).await.unwrap().unwrap();
    assert_eq!(d.attempt_log.len(), 2);
    assert!(!s.replay("no-such-event", t).await.unwrap());
}

/// A settle whose reply is lost (Redis paused past the call's timeout: the script runs later)
/// is retried, as the worker does until it sticks: the attempt is logged once and the event
/// settled once, not logged again and taken for "replayed or taken over".
#[tokio::test]
async fn a_settle_retried_after_its_reply_was_lost_is_recorded_once() {
    let redis = RedisServer::start();
    let s = open(&redis, "lost").await;
    let t = hookgate::forward::worker::now_ms();
    let warm = accept(&*s, event(0, t)).await;
    let id = accept(&*s, event(1, t)).await;
    let leased = s.lease("r", 2, t).await.unwrap();
    let (ev, other): (Vec<_>, Vec<_>) = leased.into_iter().partition(|e| e.id == id);
    let (ev, other) = (&ev[0], &other[0]);
    assert_eq!(other.id, warm);
    // Redis has the script cached (a first call's `NOSCRIPT` would not run it at all).
    s.settle(other, attempt(1, t, "delivered"), Next::Delivered)
        .await
        .unwrap();
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Longer than the settle's 2 s timeout: the first call is sent, then given up, and runs
    // once the pause ends.
    let _: () = ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query(&mut con)
        .unwrap();
    let settle = || s.settle(ev, attempt(1, t, "delivered"), Next::Delivered);
    assert!(
        settle().await.is_err(),
        "the first reply is not seen in time"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = settle().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the retry sticks: {e}"
        );
    }
    let d = s.get(&id).await.unwrap().unwrap();
    assert_eq!(d.summary.state, State::Delivered);
    assert_eq!(d.attempt_log.len(), 1, "the attempt is logged once");
    assert_eq!(s.counts("r").await.unwrap().delivered, 2);
}

#[tokio::test]
async fn a_replay_before_the_attempt_began_is_answered_by_its_delivery() {
    let redis = RedisServer::start();
    let s = open(&redis, "rb").await;
    let t = hookgate::forward::worker::now_ms();
    // Leased, then replayed before its attempt began, which delivers: not sent again.
    let id = accept(&*s, event(1, t)).await;
    let ev = s.lease("r", 1, t).await.unwrap().remove(0);
    assert!(s.replay(&id, t + 10).await.unwrap());
    s.settle(&ev, attempt(1, t + 11, "delivered"), Next::Delivered)
        .await
        .unwrap();
    let d = s.get(&id).await.unwrap().unwrap();
    assert_eq!(d.summary.state, State::Delivered, "not to be sent again");
    assert!(s.lease("r", 10, t + 20).await.unwrap().is_empty());
    // An attempt that began at the replay's millisecond or before: the replay wins.
    let id = accept(&*s, event(2, t)).await;
    let ev = s.lease("r", 1, t).await.unwrap().remove(0);
    assert!(s.replay(&id, t + 10).await.unwrap());
    s.settle(&ev, attempt(1, t + 10, "delivered"), Next::Delivered)
        .await
        .unwrap();
    let again = s.lease("r", 10, t + 20).await.unwrap();
    assert_eq!(again.len(), 1, "the replay is delivered");
    assert_eq!(again[0].id, id);
}

/// Two replicas: a replay that reaches one while the other is delivering the event does not
/// start a second, concurrent delivery; the event is delivered again after that attempt.
#[tokio::test]
async fn a_replay_on_another_replica_waits_for_the_attempt_under_way() {
    let redis = RedisServer::start();
    let a = open(&redis, "rx").await;
    let b = open(&redis, "rx").await;
    let t = hookgate::forward::worker::now_ms();
    let id = accept(&*a, event(1, t)).await;
    let ev = a.lease("r", 1, t).await.unwrap().remove(0);
    assert!(b.replay(&id, t + 10).await.unwrap());
    assert!(
        b.lease("r", 10, t + 20).await.unwrap().is_empty(),
        "replica b must not deliver while a's attempt is out"
    );
    assert!(a.lease("r", 10, t + 20).await.unwrap().is_empty());
    // a's attempt began before the replay: the replay is not answered by it.
    a.settle(&ev, attempt(1, t + 5, "delivered"), Next::Delivered)
        .await
        .unwrap();
    let again = b.lease("r", 10, t + 30).await.unwrap();
    assert_eq!(again.len(), 1, "the replay is delivered after the attempt");
    assert_eq!(
        (again[0].id.as_str(), again[0].cycle_attempts),
        (id.as_str(), 0)
    );
    b.settle(&again[0], attempt(2, t + 31, "delivered"), Next::Delivered)
        .await
        .unwrap();
    assert_eq!(
        a.get(&id).await.unwrap().unwrap().summary.state,
        State::Delivered
    );
    assert!(a.lease("r", 10, t + 40).await.unwrap().is_empty());
}

/// A redrive replays the events that died before it began, each once, and counts them; one
/// that died after it began (as one it replayed and that died again would) is left dead.
#[tokio::test]
async fn replay_dead_replays_what_died_before_it_began() {
    let redis = RedisServer::start();
    let s = open(&redis, "rd").await;
    let t = hookgate::forward::worker::now_ms();
    for n in 0..4 {
        accept(&*s, event(n, t)).await;
    }
    // Three die at about t, the fourth at about t + 1000.
    for (i, ev) in s.lease("r", 10, t).await.unwrap().into_iter().enumerate() {
        let at = if i == 3 { t + 1_000 } else { t };
        die(&*s, &ev, at).await;
    }
    assert_eq!(s.replay_dead("r", t + 500).await.unwrap(), 3);
    let c = s.counts("r").await.unwrap();
    assert_eq!((c.pending, c.dead), (3, 1));
    assert_eq!(s.replay_dead("r", t + 2_000).await.unwrap(), 1);
    assert_eq!(
        s.replay_dead("r", t + 3_000).await.unwrap(),
        0,
        "none dead now"
    );
}

/// A redrive pages through a dead set larger than one page whose events all share one score
/// (received in the same millisecond): each page starts after the last event the one before
/// looked at, so every event is looked at once. Every seventh died after the redrive began
/// and stays dead.
#[tokio::test]
async fn replay_dead_pages_through_events_of_one_score() {
    let redis = RedisServer::start();
    let s = open(&redis, "rdp").await;
    let t = hookgate::forward::worker::now_ms();
    const N: usize = 1_100; // three pages of the script's 500
    for n in 0..N {
        accept(&*s, event(n as u32, t)).await;
    }
    let mut late = 0;
    let mut settled = 0;
    while settled < N {
        let leased = s.lease("r", 200, t).await.unwrap();
        assert!(
            !leased.is_empty(),
            "{settled} of {N} settled, none left to lease"
        );
        for ev in leased {
            let at = if settled % 7 == 0 { t + 1_000 } else { t };
            late += usize::from(at > t);
            die(&*s, &ev, at).await;
            settled += 1;
        }
    }
    let replayed = s.replay_dead("r", t + 500).await.unwrap();
    assert_eq!(replayed as usize, N - late);
    let c = s.counts("r").await.unwrap();
    assert_eq!((c.pending as usize, c.dead as usize), (N - late, late));
}

/// A replay of an event whose entry a replica read and then stopped renewing (it died) is not
/// held for that replica: once the entry is idle past the visibility timeout, the replay gives
/// the event a new entry at once.
#[tokio::test]
async fn a_replay_of_an_abandoned_entry_is_delivered_at_once() {
    let redis = RedisServer::start();
    let visibility = Duration::from_secs(1);
    let t = hookgate::forward::worker::now_ms();
    let id = {
        let dead = open_with(&redis, "ra", visibility).await;
        let id = accept(&*dead, event(1, t)).await;
        assert_eq!(dead.lease("r", 1, t).await.unwrap().len(), 1);
        id
        // `dead` is dropped with the event leased: its heartbeats stop.
    };
    let b = open_with(&redis, "ra", visibility).await;
    // Past the visibility timeout without a renewal (polled, not slept: the idle time is
    // Redis's own).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = redis::Client::open(redis.url()).unwrap();
        let mut con = c.get_multiplexed_async_connection().await.unwrap();
        let key: String = redis::cmd("KEYS")
            .arg("*ra*stream*")
            .query_async::<Vec<String>>(&mut con)
            .await
            .unwrap()
            .remove(0);
        let p: redis::Value = redis::cmd("XPENDING")
            .arg(&key)
            .arg("hookgate")
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(&mut con)
            .await
            .unwrap();
        let idle = match p {
            redis::Value::Array(rows) => match rows.first() {
                Some(redis::Value::Array(r)) => match r.get(2) {
                    Some(redis::Value::Int(i)) => *i,
                    _ => 0,
                },
                _ => 0,
            },
            _ => 0,
        };
        if idle > 1_100 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "entry never idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.replay(&id, t + 10).await.unwrap());
    let c = redis::Client::open(redis.url()).unwrap();
    let mut con = c.get_multiplexed_async_connection().await.unwrap();
    let ev_key: String = redis::cmd("KEYS")
        .arg(format!("*ra*ev:{id}"))
        .query_async::<Vec<String>>(&mut con)
        .await
        .unwrap()
        .remove(0);
    let flagged: bool = redis::cmd("HEXISTS")
        .arg(&ev_key)
        .arg("replay_pending")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!flagged, "an abandoned entry is not waited for");
    // The XADDed entry is new, so XREADGROUP hands it out at once (no reclaim needed).
    let got = b.lease("r", 10, t + 20).await.unwrap();
    assert_eq!(got.len(), 1, "the replay is delivered at once");
    assert_eq!(
        (got[0].id.as_str(), got[0].cycle_attempts),
        (id.as_str(), 0)
    );
}

/// After an outage, the store's connections are made again without a request failing on
/// them first: the first ping (what `/readyz` asks) and the first accept after Redis is back
/// succeed. Before, a connection was re-made only by a command that failed on it, so the
/// first request on each connection answered 503, however long after Redis came back.
#[tokio::test]
async fn connections_come_back_with_redis_before_any_request_fails() {
    let mut redis = RedisServer::start();
    let s = open(&redis, "rc").await;
    accept(s.as_ref(), event(1, 1_000)).await;
    // An outage with no request meanwhile (a quiet route at night): nothing told the
    // connections they were broken.
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    // Redis's own count of client connections: the store's two come back by themselves.
    let clients = || {
        let mut con = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
        list.lines().count() - 1 // this one
    };
    wait_until(Duration::from_secs(10), "the store reconnected", || async {
        clients() >= 2
    })
    .await;
    s.ping().await.expect("the first ping after Redis is back");
    s.accept(event(2, 2_000), None)
        .await
        .expect("the first accept after Redis is back");
}

fn redis_cmd(redis: &RedisServer, args: &[&str]) {
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut con).unwrap();
}

#[tokio::test]
async fn a_redis_that_evicts_any_key_is_refused_at_start_and_stops_acknowledgements_at_runtime() {
    let redis = RedisServer::start();
    redis_cmd(
        &redis,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    );
    let err = store::open(&StoreConfig {
        backend: StoreBackend::Redis {
            url: redis.url(),
            key_prefix: "ev".into(),
            visibility_timeout: Duration::from_secs(30),
        },
        retention: RETENTION,
    })
    .await
    .err()
    .expect("an allkeys-lru Redis is refused");
    assert!(
        err.to_string()
            .contains("maxmemory-policy allkeys-lru: under memory pressure it evicts any key"),
        "{err}"
    );

    redis_cmd(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let s = open(&redis, "ev").await;
    let t = 1_700_000_000_000;
    accept(&*s, event(1, t)).await;
    // Switched at runtime: noticed within the periodic check, then every accept is refused
    // (503 at the ingress) and the store is not ready.
    redis_cmd(
        &redis,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-random"],
    );
    let mut n = 1;
    wait_until(
        Duration::from_secs(15),
        "accepts refused under allkeys-random",
        async || {
            n += 1;
            match s.accept(event(n, t), None).await {
                Err(StoreError::Unavailable(e)) => e.contains("allkeys-random"),
                _ => false,
            }
        },
    )
    .await;
    assert!(s.ping().await.is_err(), "ready while Redis may evict");
    redis_cmd(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    wait_until(
        Duration::from_secs(15),
        "accepts resumed once the policy is noeviction again",
        async || {
            n += 1;
            s.accept(event(n, t), None).await.is_ok()
        },
    )
    .await;
    assert!(s.ping().await.is_ok());
}

#[tokio::test]
async fn events_are_found_by_id_again_after_redis_lost_its_data() {
    let redis = RedisServer::start();
    let s = open(&redis, "lost").await;
    let t = 1_700_000_000_000;
    accept(&*s, event(1, t)).await;
    // A restart without persistence, a FLUSHALL, a failover to a lagging replica: the set of
    // routes goes with the rest. Events accepted afterwards must be found by id again.
    redis_cmd(&redis, &["FLUSHALL"]);
    let mut n = 1;
    wait_until(
        Duration::from_secs(10),
        "an event accepted after the data loss found by id",
        async || {
            n += 1;
            let id = accept(&*s, event(n, t)).await;
            s.get(&id).await.unwrap().is_some()
        },
    )
    .await;
}

#[tokio::test]
async fn a_dead_replica_s_deliveries_are_taken_over_behind_long_live_attempts() {
    let redis = RedisServer::start();
    let visibility = Duration::from_secs(3);
    let t = hookgate::forward::worker::now_ms();
    let a = open_with(&redis, "tk", visibility).await;
    for n in 0..35 {
        accept(&*a, event(n, t)).await;
    }
    // A holds the first 30 (its heartbeats keep them alive: long attempts under way); C takes
    // the last 5 and dies.
    assert_eq!(a.lease("r", 30, t).await.unwrap().len(), 30);
    let abandoned: std::collections::HashSet<String> = {
        let c = open_with(&redis, "tk", visibility).await;
        c.lease("r", 5, t)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(abandoned.len(), 5);
    // B, with few free slots, must reach C's entries once they are idle past the visibility
    // timeout, although A's 30 live entries come first in the pending list.
    let b = open_with(&redis, "tk", visibility).await;
    let mut taken = Vec::new();
    wait_until(
        Duration::from_secs(15),
        "C's abandoned deliveries taken over",
        async || {
            taken.extend(b.lease("r", 2, t).await.unwrap().into_iter().map(|e| e.id));
            !taken.is_empty()
        },
    )
    .await;
    assert!(
        taken.iter().all(|id| abandoned.contains(id)),
        "B took a live attempt of A: {taken:?}"
    );
    drop(a);
}

/// Ids whose events are gone from Redis (expired, or deleted between a listing's two reads)
/// are skipped and their place filled: pages stay full until the end, and following them
/// lists every event left once.
#[tokio::test]
async fn pages_are_filled_past_events_gone_from_under_their_ids() {
    let redis = RedisServer::start();
    let s = open(&redis, "pg").await;
    let t = 1_700_000_000_000;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(accept(&*s, event(i, t + i64::from(i))).await);
    }
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // The 12 newest but one, as a TTL would leave them: hash gone, id still indexed.
    for id in &ids[17..29] {
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("*ev:{id}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(keys.len(), 1);
        let _: i64 = ::redis::cmd("DEL").arg(&keys[0]).query(&mut con).unwrap();
    }
    let mut left: Vec<String> = ids[..17].iter().chain(&ids[29..]).cloned().collect();
    left.reverse();
    let (mut listed, mut before) = (Vec::new(), None);
    loop {
        let q = ListQuery {
            route: None,
            state: None,
            limit: 5,
            key: None,
            before: before.clone(),
        };
        let page: Vec<String> = s
            .list(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        let full = page.len() == 5;
        before = page.last().cloned();
        listed.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(listed, left);
}

/// A Redis that refuses writes (maxmemory reached with `noeviction`) still answers a
/// duplicate as one: its count on the original is best effort. A new event is refused.
/// A key recorded beside the event's own (`DedupeKey::also`): a request matching either is a
/// duplicate of the original; matching neither, a new event.
#[tokio::test]
async fn either_of_two_dedupe_keys_makes_a_duplicate() {
    let redis = RedisServer::start();
    let s = open(&redis, "also").await;
    let now = hookgate::forward::worker::now_ms();
    let key = |key: &str, also: &str| {
        Some(DedupeKey {
            key: key.into(),
            also: Some(also.into()),
            expires_at_ms: now + 60_000,
        })
    };
    let store::Accept::Accepted(original) =
        s.accept(event(0, now), key("id:1", "b")).await.unwrap()
    else {
        panic!("the first is new")
    };
    for (k, also) in [("id:2", "b"), ("id:1", "c")] {
        assert_eq!(
            s.accept(event(0, now), key(k, also)).await.unwrap(),
            store::Accept::Duplicate(original.clone()),
            "{k} {also}"
        );
    }
    assert!(matches!(
        s.accept(event(1, now), key("id:3", "d")).await.unwrap(),
        store::Accept::Accepted(_)
    ));
}

#[tokio::test]
async fn a_duplicate_is_answered_while_redis_refuses_writes() {
    let redis = RedisServer::start();
    let s = open(&redis, "oom").await;
    let now = hookgate::forward::worker::now_ms();
    let key = DedupeKey {
        key: "k".into(),
        also: None,
        expires_at_ms: now + 60_000,
    };
    let store::Accept::Accepted(id) = s.accept(event(0, now), Some(key.clone())).await.unwrap()
    else {
        panic!()
    };
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let _: () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut con)
            .unwrap();
    }
    let dup = s.accept(event(0, now + 1), Some(key)).await;
    assert_eq!(dup.unwrap(), store::Accept::Duplicate(id));
    assert!(s.accept(event(1, now + 2), None).await.is_err());
}

/// Keys stamped with a newer layout (a replica rolled back to an older binary while the others
/// run a newer one) are refused at open and left as they are; a fresh prefix is stamped.
#[tokio::test]
async fn keys_of_a_newer_layout_are_refused_unchanged() {
    let redis = RedisServer::start();
    drop(open(&redis, "lay").await);
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let get = |con: &mut ::redis::Connection| -> Option<String> {
        ::redis::cmd("GET").arg("lay:layout").query(con).unwrap()
    };
    assert_eq!(get(&mut con).as_deref(), Some("1"), "stamped");

    let _: () = ::redis::cmd("SET")
        .arg("lay:layout")
        .arg(2)
        .query(&mut con)
        .unwrap();
    let cfg = StoreConfig {
        backend: StoreBackend::Redis {
            url: redis.url(),
            key_prefix: "lay".into(),
            visibility_timeout: Duration::from_secs(30),
        },
        retention: RETENTION,
    };
    let err = match store::open(&cfg).await {
        Ok(_) => panic!("opened keys of a newer layout"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("written by a newer hookgate (key layout 2; this build reads up to 1)"),
        "{err}"
    );
    assert_eq!(get(&mut con).as_deref(), Some("2"), "left as it was");

    // A Redis refusing writes (over maxmemory, noeviction) still lets a replica start, as
    // before the stamp: accepts get 503 until it takes writes again.
    let config_set = |con: &mut ::redis::Connection, v: &str| {
        let _: () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(v)
            .query(con)
            .unwrap();
    };
    config_set(&mut con, "1");
    let full = std::panic::AssertUnwindSafe(open(&redis, "full"));
    let opened = futures_util::FutureExt::catch_unwind(full).await;
    config_set(&mut con, "0");
    assert!(
        opened.is_ok(),
        "a store on a Redis refusing writes did not open"
    );
    let stamp: Option<String> = ::redis::cmd("GET")
        .arg("full:layout")
        .query(&mut con)
        .unwrap();
    assert_eq!(stamp, None, "not stamped while Redis refused writes");
}

/// A `store.url` asking for RESP3 (`?protocol=resp3`) gets maps, not arrays, from `HGETALL`
/// and `XINFO`: every route is still purged (the purge stopped after the first route's
/// consumer check, every minute, and later routes' delivered sets grew for good).
#[tokio::test]
async fn with_resp3_every_route_is_purged() {
    let redis = RedisServer::start();
    let s = store::open(&StoreConfig {
        backend: StoreBackend::Redis {
            url: format!("{}?protocol=resp3", redis.url()),
            key_prefix: "r3".into(),
            visibility_timeout: Duration::from_secs(30),
        },
        retention: RETENTION,
    })
    .await
    .unwrap();
    let t = 1_700_000_000_000;
    for route in ["a", "b"] {
        let mut ev = event(1, t);
        ev.route = route.into();
        let id = accept(&*s, ev).await;
        let leased = s.lease(route, 10, t).await.unwrap();
        assert_eq!(leased.len(), 1);
        s.settle(&leased[0], attempt(1, t, "delivered"), Next::Delivered)
            .await
            .unwrap();
        assert!(s.get(&id).await.unwrap().is_some());
    }
    s.purge(t + RETENTION.as_millis() as i64 + 10_000)
        .await
        .unwrap();
    for route in ["a", "b"] {
        let c = s.counts(route).await.unwrap();
        assert_eq!((c.pending, c.delivered, c.dead), (0, 0, 0), "route {route}");
    }
}

/// Script calls Redis has run so far (`EVALSHA`, and `EVAL` after a script cache miss).
fn script_calls(con: &mut ::redis::Connection) -> u64 {
    let info: String = ::redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A lease's script call stops taking events once their bodies pass its byte budget (Redis
/// builds the reply while every replica's accepts wait), and the lease calls it again while
/// that cut it short: 40 events of 1 MiB come in one lease of several calls, each event once.
#[tokio::test]
async fn a_lease_of_large_events_is_bounded_by_bytes() {
    let redis = RedisServer::start();
    let s = open(&redis, "big").await;
    let mut con = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let t = 1_700_000_000_000;
    let mut ids = std::collections::HashSet::new();
    for n in 0..40 {
        let mut ev = event(n, t);
        ev.body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        ids.insert(accept(&*s, ev).await);
    }
    let before = script_calls(&mut con);
    let leased = s.lease("r", 40, t).await.unwrap();
    let calls = script_calls(&mut con) - before;
    // At most 16 past the 8 MiB budget a call: 40 need three calls at least.
    assert!(calls >= 3, "40 events of 1 MiB in {calls} script calls");
    assert_eq!(leased.len(), 40, "a worker gets all it has room for");
    assert_eq!(
        leased
            .into_iter()
            .map(|e| e.id)
            .collect::<std::collections::HashSet<_>>(),
        ids,
        "each event leased once"
    );
    assert!(s.lease("r", 40, t).await.unwrap().is_empty());

    // The same bound when a replica takes over a dead one's 40 large events.
    let dead = open_with(&redis, "big", Duration::from_secs(1)).await;
    let mut _held = Vec::new();
    for n in 0..40 {
        let mut ev = event(100 + n, t);
        ev.body = bytes::Bytes::from(vec![b'y'; 1 << 20]);
        accept(&*dead, ev).await;
    }
    for _ in 0..40 {
        let got = dead.lease("r", 40, t).await.unwrap();
        if got.is_empty() {
            break;
        }
        _held.extend(got);
    }
    assert_eq!(_held.len(), 40);
    drop(dead); // its heartbeat stops: its leases lapse after the 1 s visibility timeout
    wait_until(Duration::from_secs(10), "all 40 leases lapsed", || {
        let lapsed: Vec<::redis::Value> = ::redis::cmd("XPENDING")
            .arg("{big:r}:stream")
            .arg("hookgate")
            .arg("IDLE")
            .arg(1100)
            .arg("-")
            .arg("+")
            .arg(100)
            .query(&mut con)
            .unwrap();
        async move { lapsed.len() == 40 }
    })
    .await;
    let taker = open_with(&redis, "big", Duration::from_secs(1)).await;
    let before = script_calls(&mut con);
    let got = taker.lease("r", 40, t).await.unwrap();
    let calls = script_calls(&mut con) - before;
    assert!(calls >= 3, "40 taken over in {calls} script calls");
    assert_eq!(got.len(), 40, "each taken over once");
}
