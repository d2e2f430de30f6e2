//! End-to-end tests of the queue sinks against real brokers: the real `hookgate` binary, a
//! private `redis-server` / `nats-server -js` per test (free port, killed on drop), and the
//! RabbitMQ node started by `scripts/rabbitmq.sh start` (`HOOKGATE_TEST_AMQP_URL`).
//!
//! Each sink: raw body and metadata arrive as SPEC §6 says; a broker outage makes attempts
//! fail and retry, and everything arrives once it is back; 1,000 events arrive, none missing,
//! none doubled; the permanent misconfigurations dead-letter with a clear detail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sinks_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sinks_support::*;

fn gateway(forward: &str) -> Gateway {
    Gateway::start(Path::new(env!("CARGO_BIN_EXE_hookgate")), forward)
}
/// Non-ASCII, invalid UTF-8, NUL and odd whitespace: must arrive byte for byte.
const ODD_BODY: &[u8] = b"  {\"caf\xc3\xa9\": \"\xe2\x82\xac\"}\r\n\t \x00\xff\xfe  \n";

// ---------------------------------------------------------------- Redis Streams

async fn xrange(r: &Redis, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    xrange_with(&r.url(), stream).await
}

async fn xrange_with(url: &str, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(&v).unwrap()))
                .collect()
        })
        .collect()
}

fn field(e: &std::collections::HashMap<String, Vec<u8>>, k: &str) -> String {
    String::from_utf8(e.get(k).cloned().unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn redis_body_and_metadata() {
    let r = Redis::start().await;
    let gw = gateway(&format!(
        "url = {:?}\nstream = \"hooks\"\nmaxlen = 10000",
        r.url()
    ));
    let id = gw.post(ODD_BODY.to_vec()).await;
    let entries = wait_for("the XADD", || async {
        let e = xrange(&r, "hooks").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["body"], ODD_BODY);
    assert_eq!(field(e, "event_id"), id);
    assert_eq!(field(e, "route"), "events");
    assert_eq!(field(e, "content_type"), "application/octet-stream");
    assert_eq!(field(e, "attempt"), "1");
    assert_eq!(field(e, "verified"), "none");
    assert!(humantime::parse_rfc3339(&field(e, "received_at")).is_ok());
    let headers: Value = serde_json::from_slice(&e["headers"]).unwrap();
    let pairs = headers.as_array().unwrap();
    assert!(pairs.iter().any(|p| p[0] == "x-custom"), "{headers}");
    assert!(
        !pairs.iter().any(|p| p[0] == "hookgate-event-id"),
        "forged header kept"
    );
    gw.wait_outcome(&id, "delivered").await;
}

#[tokio::test]
async fn redis_outage_retries_then_delivers_all() {
    let mut r = Redis::start().await;
    let gw = gateway(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    r.stop();
    let mut ids = gw.post_many(20).await;
    let ev = gw.wait_any_outcome(&ids, "retry").await;
    assert_eq!(ev["state"], "pending", "{ev}");
    r.restart().await; // empty: --save "" --appendonly no
    let got = wait_for("all 20 events after the outage", || async {
        let e = xrange(&r, "hooks").await;
        (e.len() >= ids.len()).then_some(e)
    })
    .await;
    let got: Vec<String> = got.iter().map(|e| field(e, "event_id")).collect();
    ids.remove(&first);
    assert_no_dup(&got, &ids);
}

#[tokio::test]
async fn redis_down_at_startup_does_not_block_and_delivers_later() {
    let mut r = Redis::start().await;
    r.stop();
    let gw = gateway(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let id = gw.post(b"early".to_vec()).await;
    gw.wait_outcome(&id, "retry").await;
    r.restart().await;
    gw.wait_outcome(&id, "delivered").await;
    assert_eq!(xrange(&r, "hooks").await.len(), 1);
}

#[tokio::test]
async fn redis_thousand_events_none_missing_none_doubled() {
    let r = Redis::start().await;
    let gw = gateway(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let ids = gw.post_many(1000).await;
    let got = wait_for("1000 entries", || async {
        let e = xrange(&r, "hooks").await;
        (e.len() >= 1000).then_some(e)
    })
    .await;
    let got: Vec<String> = got.iter().map(|e| field(e, "event_id")).collect();
    assert_no_dup(&got, &ids);
}

#[tokio::test]
async fn redis_wrongtype_is_permanent_and_says_why() {
    let r = Redis::start().await;
    let mut c = r.conn().await;
    let _: () = redis::cmd("SET")
        .arg("hooks")
        .arg("not a stream")
        .query_async(&mut c)
        .await
        .unwrap();
    let gw = gateway(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let id = gw.post(b"x".to_vec()).await;
    let ev = gw.wait_outcome(&id, "dead").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"hooks\"") && detail.contains("not a stream"),
        "{detail}"
    );
    assert!(detail.contains("\"events\""), "names the route: {detail}");
}

#[tokio::test]
async fn redis_reconnect_refused_by_the_server_does_not_stick() {
    let r = Redis::start_with(&["--requirepass", "pw-one"]).await;
    let url = |pw: &str| format!("redis://:{pw}@127.0.0.1:{}/0", r.port);
    let gw = gateway(&format!("url = {:?}\nstream = \"hooks\"", url("pw-one")));
    let first = gw.post(b"first".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    // The password changes and the sink's connection is cut: its connection manager
    // reconnects by itself, and the server refuses that reconnect.
    let mut admin = redis::Client::open(url("pw-one"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let set_password = |pw: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("requirepass").arg(pw);
        cmd
    };
    let _: () = set_password("pw-two")
        .query_async(&mut admin)
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "the sink's connection was not cut");
    let second = gw.post(b"second".to_vec()).await;
    wait_for("an attempt refused for its password", || async {
        let ev = gw.event(&second).await;
        let refused = ev["attempt_log"].as_array()?.iter().any(|a| {
            a["detail"]
                .as_str()
                .is_some_and(|d| d.to_ascii_lowercase().contains("authentication failed"))
        });
        refused.then_some(())
    })
    .await;
    // Fixed: the next attempts must connect afresh instead of repeating the refused reconnect.
    let _: () = set_password("pw-one")
        .query_async(&mut admin)
        .await
        .unwrap();
    gw.wait_outcome(&second, "delivered").await;
    let got: Vec<String> = xrange_with(&url("pw-one"), "hooks")
        .await
        .iter()
        .map(|e| field(e, "event_id"))
        .collect();
    assert_eq!(got, vec![first, second]);
}

/// A primary that goes silent (its connection open, nothing answered: a network cut, a frozen
/// VM) while the address moves to a new primary: the attempt that gets no answer drops the
/// connection, and the next one reaches the new primary, long before the old one would answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_silent_primary_is_left_for_the_new_one() {
    let old = Redis::start_with(&["--enable-debug-command", "yes"]).await;
    let new = Redis::start().await;
    let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(old.port));
    let port = proxy(target.clone()).await;
    let gw = gateway(&format!(
        "url = \"redis://127.0.0.1:{port}/0\"\nstream = \"hooks\"" // timeout = "2s"
    ));
    let first = gw.post(b"first".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    // The old primary stops answering for 60 s (its socket stays open); new connections now
    // lead to the new primary.
    let mut c = old.conn().await;
    let sleeper = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(60)
            .query_async(&mut c)
            .await;
    });
    // DEBUG SLEEP has begun once the old primary stops answering a PING.
    wait_for("the old primary silent", || async {
        let ping = async {
            let mut probe = old.conn().await;
            redis::cmd("PING").query_async::<String>(&mut probe).await
        };
        tokio::time::timeout(Duration::from_secs(1), ping)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    target.store(new.port, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    let second = gw.post(b"second".to_vec()).await;
    let ev = gw.wait_outcome(&second, "delivered").await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "{:?} {ev:#}",
        t0.elapsed()
    );
    // The first attempt timed out (inside forward.timeout, so the sink saw it) and dropped
    // the connection; the second went to the new primary.
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{ev:#}");
    let detail = log[0]["detail"].as_str().unwrap();
    assert!(detail.contains("no answer within"), "{detail}");
    let got: Vec<String> = xrange(&new, "hooks")
        .await
        .iter()
        .map(|e| field(e, "event_id"))
        .collect();
    assert_eq!(got, vec![second], "{ev:#}");
    sleeper.abort();
}

/// A TCP proxy on a free port: each new connection goes to the port `target` holds then
/// (connections already made stay where they are), as a DNS name or virtual IP moved by a
/// failover does.
async fn proxy(target: std::sync::Arc<std::sync::atomic::AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = target.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_reaches_the_new_primary() {
    let old = Redis::start().await;
    let new = Redis::start().await;
    let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(old.port));
    let port = proxy(target.clone()).await;
    let gw = gateway(&format!(
        "url = \"redis://127.0.0.1:{port}/0\"\nstream = \"hooks\""
    ));
    let first = gw.post(b"first".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    // Failover: the old primary becomes a replica of the new one (answering READONLY to the
    // sink's connection, which stays open) and the address now leads to the new primary.
    let mut c = old.conn().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port)
        .query_async(&mut c)
        .await
        .unwrap();
    target.store(new.port, std::sync::atomic::Ordering::SeqCst);
    let second = gw.post(b"second".to_vec()).await;
    let ev = gw.wait_outcome(&second, "delivered").await;
    let refused = ev["attempt_log"].as_array().unwrap()[0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(refused.to_ascii_lowercase().contains("readonly"), "{ev:#}");
    let got: Vec<String> = xrange(&new, "hooks")
        .await
        .iter()
        .map(|e| field(e, "event_id"))
        .collect();
    assert_eq!(got, vec![second]);
}

// ---------------------------------------------------------------- NATS JetStream

async fn nats_stream(n: &Nats) -> async_nats::jetstream::stream::Stream {
    let js = n.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HOOKS".into(),
        subjects: vec!["hooks.in".into()],
        duplicate_window: Duration::from_secs(120),
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Every message of the stream, read by a JetStream pull consumer: fetches until `want`
/// arrived (or the deadline), then once more briefly, so a duplicate would show up too.
async fn nats_read_all(n: &Nats, want: usize) -> Vec<async_nats::jetstream::Message> {
    use futures_util::StreamExt;
    let js = n.js().await;
    let stream = js.get_stream("HOOKS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            // Unacknowledged messages must not come back while the test is still reading.
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut last = false;
    loop {
        last |= out.len() >= want || Instant::now() >= end;
        let (max, expires) = if last {
            (10, Duration::from_millis(500))
        } else {
            (want - out.len(), Duration::from_secs(2))
        };
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .expires(expires)
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap());
        }
        if last {
            return out;
        }
    }
}

async fn nats_count(n: &Nats) -> Option<u64> {
    let js = n.js().await;
    let mut s = js.get_stream("HOOKS").await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

fn nats_ids(msgs: &[async_nats::jetstream::Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| {
            m.headers
                .as_ref()
                .unwrap()
                .get("Hookgate-Event-Id")
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn nats_body_and_metadata() {
    let n = Nats::start().await;
    nats_stream(&n).await;
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let id = gw.post(ODD_BODY.to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    let msgs = nats_read_all(&n, 1).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.payload.as_ref(), ODD_BODY);
    let h = m.headers.as_ref().unwrap();
    let get = |k: &str| h.get(k).map(|v| v.to_string());
    assert_eq!(get("Hookgate-Event-Id").as_deref(), Some(id.as_str()));
    let msg_id = h
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.to_string());
    assert_eq!(msg_id.as_deref(), Some(id.as_str()), "{h:?}");
    assert_eq!(get("Hookgate-Route").as_deref(), Some("events"));
    assert_eq!(get("Hookgate-Attempt").as_deref(), Some("1"));
    assert_eq!(get("Hookgate-Verified").as_deref(), Some("none"));
    assert!(humantime::parse_rfc3339(&get("Hookgate-Received-At").unwrap()).is_ok());
    assert_eq!(
        get("Content-Type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(get("X-Custom").as_deref(), Some("Ünïcode-free value"));
    let repeated: Vec<String> = h.get_all("X-Repeated").map(|v| v.to_string()).collect();
    assert_eq!(repeated, ["one", "two"], "{h:?}");
    assert_eq!(get("Connection"), None, "hop-by-hop header forwarded");
    // Sender-set `Nats-*` headers would steer JetStream (Nats-Rollup purges the stream).
    let nats_named: Vec<String> = h
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| k.to_ascii_lowercase().starts_with("nats-"))
        .collect();
    assert_eq!(nats_named, vec!["Nats-Msg-Id".to_string()], "{h:?}");
}

/// A replay is "deliver it again": inside the stream's duplicate window too, its message is
/// stored again (a new `Nats-Msg-Id` per delivery cycle), with the same `Hookgate-Event-Id`.
#[tokio::test]
async fn nats_replay_inside_the_duplicate_window_is_stored_again() {
    let n = Nats::start().await;
    nats_stream(&n).await;
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let id = gw.post(b"once".to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    let resp = gw
        .http
        .post(format!("http://{}/admin/events/{id}/replay", gw.admin))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let ev = wait_for("the replayed attempt", || async {
        let ev = gw.event(&id).await;
        (ev["attempt_log"].as_array()?.len() >= 2 && ev["state"] == "delivered").then_some(ev)
    })
    .await;
    let detail = ev["attempt_log"][1]["detail"].as_str().unwrap();
    assert!(!detail.contains("duplicate"), "{detail}");
    let msgs = nats_read_all(&n, 2).await;
    assert_eq!(nats_ids(&msgs), [id.clone(), id.clone()]);
    let attempts: Vec<String> = msgs
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Hookgate-Attempt"))
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(attempts, ["1", "2"], "the original, then the replay");
}

#[tokio::test]
async fn nats_outage_retries_then_delivers_all_once() {
    let mut n = Nats::start().await;
    nats_stream(&n).await;
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    n.stop();
    let mut ids = gw.post_many(20).await;
    gw.wait_any_outcome(&ids, "retry").await;
    n.restart().await; // same store dir: the stream and its dedupe state come back
    ids.insert(first);
    wait_for("every event delivered after the outage", || async {
        let mut all = true;
        for id in &ids {
            all &= gw.event(id).await["state"] == "delivered";
        }
        all.then_some(())
    })
    .await;
    let msgs = nats_read_all(&n, ids.len()).await;
    assert_no_dup(&nats_ids(&msgs), &ids);
}

#[tokio::test]
async fn nats_thousand_events_none_missing_none_doubled() {
    let n = Nats::start().await;
    nats_stream(&n).await;
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let ids = gw.post_many(1000).await;
    wait_for("1000 messages", || async {
        (nats_count(&n).await? >= 1000).then_some(())
    })
    .await;
    let msgs = nats_read_all(&n, 1000).await;
    assert_no_dup(&nats_ids(&msgs), &ids);
}

#[tokio::test]
async fn nats_no_stream_is_permanent_and_says_why() {
    let n = Nats::start().await;
    let gw = gateway(&format!(
        "url = {:?}\nsubject = \"nobody.listens\"",
        n.url()
    ));
    let id = gw.post(b"x".to_vec()).await;
    let ev = gw.wait_outcome(&id, "dead").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("no JetStream stream") && detail.contains("nobody.listens"),
        "{detail}"
    );
}

#[tokio::test]
async fn nats_down_at_startup_does_not_block_and_delivers_later() {
    let mut n = Nats::start().await;
    nats_stream(&n).await;
    n.stop();
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let id = gw.post(b"early".to_vec()).await;
    gw.wait_outcome(&id, "retry").await;
    n.restart().await;
    gw.wait_outcome(&id, "delivered").await;
}

#[tokio::test]
async fn nats_user_and_password_in_the_url_are_used() {
    let n = Nats::start_with(
        &["--user", "hook", "--pass", "s3cr:t/pw"],
        NatsAuth::UserPassword("hook".into(), "s3cr:t/pw".into()),
    )
    .await;
    nats_stream(&n).await;
    // Percent-encoded in the URL, as a URL's password must be.
    let gw = gateway(&format!(
        "url = \"nats://hook:s3cr%3At%2Fpw@127.0.0.1:{}\"\nsubject = \"hooks.in\"",
        n.port
    ));
    let id = gw.post(b"with a password".to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    assert_eq!(nats_ids(&nats_read_all(&n, 1).await), vec![id]);

    // A wrong password: retried, with a detail that says why and does not repeat it.
    let wrong = gateway(&format!(
        "url = \"nats://hook:not-the-pw@127.0.0.1:{}\"\nsubject = \"hooks.in\"",
        n.port
    ));
    let id = wrong.post(b"x".to_vec()).await;
    let ev = wrong.wait_outcome(&id, "retry").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("authorization violation") && detail.contains("redacted"),
        "{detail}"
    );
    assert!(!detail.contains("not-the-pw"), "{detail}");
}

#[tokio::test]
async fn nats_token_in_the_url_is_used() {
    let n = Nats::start_with(&["--auth", "t0ken"], NatsAuth::Token("t0ken".into())).await;
    nats_stream(&n).await;
    let gw = gateway(&format!(
        "url = \"nats://t0ken@127.0.0.1:{}\"\nsubject = \"hooks.in\"",
        n.port
    ));
    let id = gw.post(b"with a token".to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    assert_eq!(nats_ids(&nats_read_all(&n, 1).await), vec![id]);

    let wrong = gateway(&format!(
        "url = \"nats://not-the-token@127.0.0.1:{}\"\nsubject = \"hooks.in\"",
        n.port
    ));
    let id = wrong.post(b"x".to_vec()).await;
    let ev = wrong.wait_outcome(&id, "retry").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("authorization violation"), "{detail}");
    assert!(!detail.contains("not-the-token"), "{detail}");
}

#[tokio::test]
async fn nats_message_over_max_payload_is_permanent_and_the_route_goes_on() {
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("nats.conf");
    std::fs::write(&path, "max_payload: 4096\n").unwrap();
    let n = Nats::start_with(&["-c", path.to_str().unwrap()], NatsAuth::None).await;
    nats_stream(&n).await;
    let gw = gateway(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let small = gw.post(b"small".to_vec()).await;
    gw.wait_outcome(&small, "delivered").await;
    let big = gw.post(vec![b'x'; 5000]).await;
    let ev = gw.wait_outcome(&big, "dead").await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "dead at the first attempt: {ev:#}");
    let detail = log[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("exceeds the NATS server's max_payload of 4096"),
        "{detail}"
    );
    // The connection is still good: the next event goes through at its first attempt.
    let next = gw.post(b"next".to_vec()).await;
    let ev = gw.wait_outcome(&next, "delivered").await;
    assert_eq!(ev["attempt_log"].as_array().unwrap().len(), 1, "{ev:#}");
    assert_eq!(nats_ids(&nats_read_all(&n, 2).await), vec![small, next]);
}

// ---------------------------------------------------------------- RabbitMQ

/// The AMQP tests share one node and one of them stops its broker app: one at a time.
static AMQP_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> String {
    std::env::var("HOOKGATE_TEST_AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "HOOKGATE_TEST_AMQP_URL is not set: run `eval \"$(scripts/rabbitmq.sh start)\"` first \
             (and `scripts/rabbitmq.sh stop` after)"
        )
    })
}

/// The node behind `HOOKGATE_TEST_AMQP_URL`, as named by `scripts/rabbitmq.sh`.
fn amqp_node() -> String {
    let url = amqp_url();
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    format!("hookgate-test-{port}@localhost")
}

/// Starts the broker app again when dropped.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        let st = Command::new("rabbitmqctl")
            .args(["-q", "-n", &amqp_node(), "start_app"])
            .stdout(Stdio::null())
            .status();
        // No panic here: this may run while a failed assertion unwinds.
        if !st.is_ok_and(|s| s.success()) && !std::thread::panicking() {
            panic!("rabbitmqctl start_app failed");
        }
    }
}

fn rabbitmqctl(args: &[&str]) {
    let st = Command::new("rabbitmqctl")
        .args(["-q", "-n", &amqp_node()])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "rabbitmqctl {args:?} failed");
}

async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let c = lapin::Connection::connect(&amqp_url(), props)
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    (c, ch)
}

/// A durable direct exchange and a durable queue bound to it, both named `name`.
async fn amqp_declare(name: &str) {
    use lapin::options::*;
    let (_c, ch) = amqp_channel().await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        name,
        lapin::ExchangeKind::Direct,
        durable,
        Default::default(),
    )
    .await
    .unwrap();
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name, q, Default::default()).await.unwrap();
    ch.queue_bind(name, name, "rk", Default::default(), Default::default())
        .await
        .unwrap();
}

/// Drains the queue with `basic.get` until it has `want` messages (or the deadline).
async fn amqp_drain(queue: &str, want: usize) -> Vec<lapin::message::BasicGetMessage> {
    let (_c, ch) = amqp_channel().await;
    let mut out = Vec::new();
    let end = Instant::now() + DEADLINE;
    while out.len() < want && Instant::now() < end {
        let opts = lapin::options::BasicGetOptions { no_ack: true };
        match ch.basic_get(queue, opts).await.unwrap() {
            Some(m) => out.push(m),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Anything more (a duplicate) would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(m) = ch
        .basic_get(queue, lapin::options::BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m);
    }
    out
}

fn amqp_header(m: &lapin::message::BasicGetMessage, k: &str) -> Option<String> {
    let t = m.delivery.properties.headers().as_ref()?;
    match t.inner().get(k)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8(s.as_bytes().to_vec()).unwrap())
        }
        other => panic!("{k}: {other:?}"),
    }
}

fn amqp_ids(msgs: &[lapin::message::BasicGetMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| amqp_header(m, "Hookgate-Event-Id").unwrap())
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn amqp_body_and_metadata() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("meta");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    let id = gw.post(ODD_BODY.to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    let msgs = amqp_drain(&name, 1).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.delivery.data, ODD_BODY);
    let p = &m.delivery.properties;
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        amqp_header(m, "Hookgate-Event-Id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(amqp_header(m, "Hookgate-Route").as_deref(), Some("events"));
    assert_eq!(amqp_header(m, "Hookgate-Attempt").as_deref(), Some("1"));
    assert_eq!(amqp_header(m, "Hookgate-Verified").as_deref(), Some("none"));
    assert!(amqp_header(m, "Hookgate-Received-At").is_some());
    assert_eq!(
        amqp_header(m, "X-Custom").as_deref(),
        Some("Ünïcode-free value")
    );
    assert_eq!(
        amqp_header(m, "X-Repeated").as_deref(),
        Some("one, two"),
        "every value of a repeated header"
    );
    assert_eq!(amqp_header(m, "Connection"), None);
    assert_eq!(
        amqp_header(m, "Cc"),
        None,
        "CC would route copies elsewhere"
    );
}

#[tokio::test]
async fn amqp_forward_sign_adds_signature_headers() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("signed");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"\n\
         [route.forward.sign]\nscheme = \"hmac\"\nsecret = \"internal-secret\"",
        amqp_url()
    ));
    let id = gw.post(b"signed".to_vec()).await;
    gw.wait_outcome(&id, "delivered").await;
    let msgs = amqp_drain(&name, 1).await;
    assert_eq!(msgs.len(), 1);
    assert!(amqp_header(&msgs[0], "X-Signature").is_some());
    assert!(amqp_header(&msgs[0], "X-Timestamp").is_some());
}

#[tokio::test]
async fn amqp_unroutable_is_retried_then_delivered_once_bound() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("unbound");
    let (_c, ch) = amqp_channel().await;
    ch.exchange_declare(
        &name,
        lapin::ExchangeKind::Direct,
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    let id = gw.post(b"x".to_vec()).await;
    let ev = gw.wait_outcome(&id, "retry").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("unroutable") && detail.contains("\"rk\""),
        "{detail}"
    );
    ch.queue_declare(&name, Default::default(), Default::default())
        .await
        .unwrap();
    ch.queue_bind(&name, &name, "rk", Default::default(), Default::default())
        .await
        .unwrap();
    gw.wait_outcome(&id, "delivered").await;
    assert_eq!(amqp_ids(&amqp_drain(&name, 1).await), vec![id]);
}

#[tokio::test]
async fn amqp_missing_exchange_is_permanent_and_says_why() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("absent");
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    let id = gw.post(b"x".to_vec()).await;
    let ev = gw.wait_outcome(&id, "dead").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&name) && detail.contains("does not exist"),
        "{detail}"
    );
    // The broken channel is replaced: the next event on a good exchange goes through.
    amqp_declare(&name).await;
    let id2 = gw.post(b"y".to_vec()).await;
    gw.wait_outcome(&id2, "delivered").await;
}

/// An IPv6 address in an AMQP URL is the address connected to: lapin's parser dropped it and
/// connected to `localhost` instead (in a sidecar, the pod itself). The URL names a listener on
/// 127.0.0.3 by its v4-mapped IPv6 address, which `localhost` never reaches, so the test tells
/// the two apart whatever `localhost` resolves to here; the listener sees the AMQP greeting.
#[tokio::test]
async fn amqp_ipv6_address_in_the_url_is_the_one_connected_to() {
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A kernel without IPv6 (booted with ipv6.disable=1) cannot make the connection at all:
    // that is the machine, not hookgate. Anywhere else this connection must work.
    match tokio::net::TcpStream::connect(("::ffff:127.0.0.3", port)).await {
        Err(e) if e.raw_os_error() == Some(97) => {
            eprintln!("not run: this machine has no IPv6 sockets ({e})");
            return;
        }
        probe => drop((probe.unwrap(), listener.accept().await.unwrap())),
    }
    let gw = gateway(&format!(
        "url = \"amqp://guest:guest@[::ffff:127.0.0.3]:{port}/%2f\"\nexchange = \"\"\nrouting_key = \"q\""
    ));
    gw.post(b"x".to_vec()).await;
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
        .await
        .expect("no connection to the URL's address within 15 s")
        .unwrap();
    let mut greeting = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut conn, &mut greeting)
        .await
        .unwrap();
    assert_eq!(&greeting, b"AMQP\x00\x00\x09\x01");
}

#[tokio::test]
async fn amqp_thousand_events_and_outage() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    // One test for both, since the outage stops the shared node's broker app.
    let name = unique("bulk");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    let mut ids = gw.post_many(1000).await;
    wait_for("1000 delivered", || async {
        let v: Value = gw
            .http
            .get(format!("http://{}/admin/routes", gw.admin))
            .send()
            .await
            .ok()?
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        (v["routes"][0]["delivered"].as_u64()? >= 1000).then_some(())
    })
    .await;
    // Outage: the broker app stops (connections drop), events pile up and are retried.
    rabbitmqctl(&["stop_app"]);
    // Started again even if an assertion below fails, so the other AMQP tests still run.
    let broker = BrokerBack;
    let during = gw.post_many(20).await;
    gw.wait_any_outcome(&during, "retry").await;
    drop(broker);
    ids.extend(during);
    let msgs = amqp_drain(&name, ids.len()).await;
    assert_no_dup(&amqp_ids(&msgs), &ids);
}

#[tokio::test]
async fn amqp_header_names_and_content_type_past_255_bytes_are_left_out() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("long");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    // AMQP field names and content_type are short strings (a one-byte length).
    let long_name = format!("x-{}", "n".repeat(298));
    let long_type = format!("application/{}", "t".repeat(288));
    let resp = gw
        .http
        .post(format!("http://{}/hook", gw.ingress))
        .header(long_name.as_str(), "v")
        .header("content-type", long_type.as_str())
        .header("x-short", "kept")
        .body("long")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let id = v["event_id"].as_str().unwrap().to_string();
    let ev = gw.wait_outcome(&id, "delivered").await;
    assert_eq!(
        ev["attempt_log"].as_array().unwrap().len(),
        1,
        "delivered at the first attempt: {ev:#}"
    );
    // The connection is still good: the next event goes through at its first attempt.
    let id2 = gw.post(b"next".to_vec()).await;
    let ev2 = gw.wait_outcome(&id2, "delivered").await;
    assert_eq!(ev2["attempt_log"].as_array().unwrap().len(), 1, "{ev2:#}");
    let msgs = amqp_drain(&name, 2).await;
    assert_eq!(amqp_ids(&msgs), vec![id, id2]);
    let m = &msgs[0];
    assert_eq!(m.delivery.data, b"long");
    assert_eq!(amqp_header(m, "X-Short").as_deref(), Some("kept"));
    let names = m.delivery.properties.headers().as_ref().unwrap().inner();
    assert!(names.keys().all(|k| k.as_str().len() <= 255), "{names:?}");
    assert_eq!(*m.delivery.properties.content_type(), None);
    assert_eq!(
        amqp_header(m, "Content-Type").as_deref(),
        Some(long_type.as_str()),
        "still in the header table"
    );
}

/// Raises a memory alarm on the node (high watermark 0, so every publishing connection is
/// blocked) and puts the watermark back as it was when dropped, even while a test unwinds.
struct MemoryAlarm(String);

fn rabbitmq_eval(expr: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "-n", &amqp_node(), "eval", expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl eval {expr} failed: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let was = rabbitmq_eval("vm_memory_monitor:get_vm_memory_high_watermark().");
        let alarm = MemoryAlarm(was);
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        // The memory monitor raises the alarm on its own time: wait for it.
        let end = Instant::now() + DEADLINE;
        while !rabbitmq_eval("rabbit_alarm:get_alarms().").contains("memory") {
            assert!(Instant::now() < end, "the memory alarm was not raised");
            std::thread::sleep(Duration::from_millis(50));
        }
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let st = Command::new("rabbitmqctl")
            .args(["-q", "-n", &amqp_node(), "eval"])
            .arg(format!(
                "vm_memory_monitor:set_vm_memory_high_watermark({}).",
                self.0
            ))
            .stdout(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) && !std::thread::panicking() {
            panic!("could not restore the memory high watermark to {}", self.0);
        }
    }
}

#[tokio::test]
async fn amqp_resource_alarm_does_not_queue_a_copy_per_attempt() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("alarm");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    let alarm = MemoryAlarm::raise();
    // Its publish blocks the connection (RabbitMQ blocks a connection when it publishes
    // during an alarm) and is never confirmed while the alarm lasts.
    let during = gw.post(b"during".to_vec()).await;
    let attempts = |n: usize, id: String| {
        let gw = &gw;
        async move {
            wait_for(&format!("{n} attempts during the alarm"), || async {
                let ev = gw.event(&id).await;
                (ev["attempt_log"].as_array()?.len() >= n).then_some(())
            })
            .await
        }
    };
    attempts(4, during.clone()).await;
    // Posted once the connection is blocked: never published while it is.
    let blocked = gw.post(b"blocked".to_vec()).await;
    attempts(3, blocked.clone()).await;
    drop(alarm);
    let ev = gw.wait_outcome(&during, "delivered").await;
    let ev_blocked = gw.wait_outcome(&blocked, "delivered").await;
    // Each once: nothing queued per attempt, and the publish in flight when the broker
    // blocked the connection was not published again.
    let ids = amqp_ids(&amqp_drain(&name, 3).await);
    assert_no_dup(&ids, &[first, during, blocked].into_iter().collect());
    let log = ev["attempt_log"].as_array().unwrap();
    assert!(
        log[1..log.len() - 1].iter().all(|a| a["detail"]
            .as_str()
            .unwrap()
            .contains("not publishing another copy")),
        "later attempts waited for the first one's confirm: {ev:#}"
    );
    let ev = ev_blocked;
    let log = ev["attempt_log"].as_array().unwrap();
    assert!(
        log[..log.len() - 1].iter().all(|a| a["detail"]
            .as_str()
            .unwrap()
            .contains("broker blocked (resource alarm)")),
        "attempts on the blocked connection did not publish: {ev:#}"
    );
}

/// Waits until the event is delivered or dead; returns it.
async fn settled(gw: &Gateway, id: &str) -> Value {
    wait_for("the event's attempt", || async {
        let ev = gw.event(id).await;
        (ev["state"] == "delivered" || ev["state"] == "dead").then_some(ev)
    })
    .await
}

#[tokio::test]
async fn amqp_returns_are_paired_with_their_own_publish_under_concurrency() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let _one_at_a_time = AMQP_LOCK.lock().await;
    // A headers exchange routes by the message's headers: on one route, events with
    // `X-Kind: ok` are routable and the others are returned, published concurrently.
    let name = unique("pairs");
    let (_c, ch) = amqp_channel().await;
    ch.exchange_declare(
        &name,
        lapin::ExchangeKind::Headers,
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(&name, Default::default(), Default::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-match".into(),
        AMQPValue::LongString(LongString::from("all")),
    );
    args.insert(
        "X-Kind".into(),
        AMQPValue::LongString(LongString::from("ok")),
    );
    ch.queue_bind(&name, &name, "", Default::default(), args)
        .await
        .unwrap();
    // One attempt each (a returned event is dead at once), so no retry mixes in.
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"\"\nconcurrency = 16\nmax_attempts = 1",
        amqp_url()
    ));
    let post = |kind: &'static str| {
        let req = gw
            .http
            .post(format!("http://{}/hook", gw.ingress))
            .header("x-kind", kind)
            .body(kind);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 202);
            let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            v["event_id"].as_str().unwrap().to_string()
        }
    };
    let (mut ok, mut returned) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        // 12 routable and 4 returned at once; then a lone routable one, which closes the
        // route's circuit (never 5 failures in a row, so it never holds attempts back).
        let kinds: Vec<&str> = (0..16)
            .map(|i| if i % 4 == 3 { "no" } else { "ok" })
            .collect();
        let ids = futures_util::future::join_all(kinds.iter().map(|k| post(k))).await;
        for (kind, id) in kinds.iter().zip(ids) {
            let ev = settled(&gw, &id).await;
            let log = ev["attempt_log"].as_array().unwrap();
            assert_eq!(log.len(), 1, "{ev:#}");
            let detail = log[0]["detail"].as_str().unwrap();
            if *kind == "ok" {
                assert_eq!(
                    ev["state"], "delivered",
                    "a routable event was taken for returned: {ev:#}"
                );
                ok.push(id);
            } else {
                assert!(
                    ev["state"] == "dead" && detail.contains("unroutable"),
                    "a returned event was taken for delivered: {ev:#}"
                );
                returned.push(id);
            }
        }
        let lone = post("ok").await;
        assert_eq!(settled(&gw, &lone).await["state"], "delivered");
        ok.push(lone);
    }
    let got = amqp_ids(&amqp_drain(&name, ok.len()).await);
    assert_no_dup(&got, &ok.into_iter().collect());
}

/// A TCP proxy to `to` on a free port. Bumping the returned epoch freezes every connection
/// made before: it stays open but forwards nothing more (a broker host gone, a NAT entry
/// lost), while new connections work.
async fn freezable_proxy(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let e = epoch.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let mine = e.load(SeqCst);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(ri) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(ro), Box::new(wi)),
            ] {
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if e.load(SeqCst) != mine {
                            // Frozen: hold both sockets open, forward nothing.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_connection_that_stops_answering_is_dropped_and_made_again() {
    let n = Nats::start().await;
    nats_stream(&n).await;
    let (port, epoch) = freezable_proxy(n.port).await;
    let gw = gateway(&format!(
        "url = \"nats://127.0.0.1:{port}\"\nsubject = \"hooks.in\""
    ));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let second = gw.post(b"after".to_vec()).await;
    // async-nats alone notices such a connection only after missed pings, which every
    // publish puts off: minutes. The sink drops it after an attempt with no ack.
    let ev = tokio::time::timeout(
        Duration::from_secs(20),
        gw.wait_outcome(&second, "delivered"),
    )
    .await
    .expect("delivered over a new connection within 20 s");
    let log = ev["attempt_log"].as_array().unwrap();
    assert!(log.len() >= 2, "{ev:#}");
    let msgs = nats_read_all(&n, 2).await;
    assert_eq!(nats_ids(&msgs), [first, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_connection_that_stops_answering_is_noticed_and_made_again() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("frozen");
    amqp_declare(&name).await;
    let url = amqp_url();
    let broker: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (port, epoch) = freezable_proxy(broker).await;
    let via = url.replace(&format!(":{broker}/"), &format!(":{port}/"));
    let gw = gateway(&format!(
        "url = {via:?}\nexchange = {name:?}\nrouting_key = \"rk\""
    ));
    let t0 = Instant::now();
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let second = gw.post(b"after".to_vec()).await;
    // With RabbitMQ's default heartbeat (60 s) this took minutes; hookgate asks for 5 s, and
    // the unconfirmed publish is made again once the dead connection's channel closes.
    tokio::time::timeout(
        Duration::from_secs(45),
        gw.wait_outcome(&second, "delivered"),
    )
    .await
    .expect("delivered over a new connection within 45 s");
    eprintln!("delivered {:?} after the freeze began", t0.elapsed());
    let msgs = amqp_drain(&name, 2).await;
    let ids: Vec<String> = msgs
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, [first, second], "each once");
}

/// A message larger than the stream's own `max_msg_size` is refused by a healthy server:
/// permanent at once (each retry gets the same answer, and counted as the sink being down it
/// opened the route's circuit, holding the route's other events back for minutes), and the
/// route's next event is delivered.
#[tokio::test]
async fn nats_a_message_over_the_streams_max_msg_size_is_permanent_and_holds_nothing_back() {
    let n = Nats::start().await;
    n.js()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "SMALL".into(),
            subjects: vec!["small.in".into()],
            max_message_size: 1024,
            ..Default::default()
        })
        .await
        .unwrap();
    let gw = gateway(&format!("url = {:?}\nsubject = \"small.in\"", n.url()));
    too_large_is_dead_at_once_and_the_next_delivered(&gw, 4096, "max_msg_size").await;
}

/// An event of `size` bytes dies at its first attempt, the detail naming `setting`, and a
/// small one after it on the route is delivered.
async fn too_large_is_dead_at_once_and_the_next_delivered(
    gw: &Gateway,
    size: usize,
    setting: &str,
) {
    let big = gw.post(vec![b'x'; size]).await;
    let ev = gw.wait_outcome(&big, "dead").await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "permanent at once: {ev:#}");
    let detail = log[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("too large") && detail.contains(setting),
        "{detail}"
    );
    let small = gw.post(b"small".to_vec()).await;
    gw.wait_outcome(&small, "delivered").await;
}

/// A message over RabbitMQ's `max_message_size` (512 KiB on the test node) is refused by a
/// healthy broker: permanent at once, saying what to raise, and the route's next event is
/// delivered (retried, each refusal counted as the broker being down and opened the route's
/// circuit: a helper saw the next event wait 19 minutes).
#[tokio::test]
async fn amqp_a_message_over_max_message_size_is_permanent_and_holds_nothing_back() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let name = unique("big");
    amqp_declare(&name).await;
    let gw = gateway(&format!(
        "url = {:?}\nexchange = {name:?}\nrouting_key = \"rk\"",
        amqp_url()
    ));
    too_large_is_dead_at_once_and_the_next_delivered(&gw, 600 * 1024, "max_message_size").await;
}

/// A peer that accepts AMQP connections but never answers (a proxy with nothing behind it):
/// lapin's connect blocks a thread that an attempt's timeout does not stop. Attempts wait for
/// the connect under way instead of starting another (before: one more connection and thread
/// per attempt, and with `amqps://` enough of them filled tokio's blocking pool, stalling the
/// embedded store), and say so.
#[tokio::test]
async fn amqp_a_peer_that_never_answers_gets_one_connect_not_one_per_attempt() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            held.lock().unwrap().push(s); // kept open, never answered
        }
    });
    let gw = gateway(&format!(
        "url = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\nexchange = \"\"\nrouting_key = \"q\""
    ));
    let id = gw.post(b"x".to_vec()).await;
    let ev = wait_for("three attempts", || async {
        let ev = gw.event(&id).await;
        (ev["attempt_log"].as_array().map_or(0, |a| a.len()) >= 3).then_some(ev)
    })
    .await;
    assert_eq!(
        accepted.lock().unwrap().len(),
        1,
        "one connect for all the attempts: {ev:#}"
    );
    let detail = ev["attempt_log"][2]["detail"].as_str().unwrap();
    assert!(detail.contains("the connect goes on"), "{detail}");
}

/// No acknowledgement because nothing JetStream captures the subject (only a plain NATS
/// subscriber listens), or because the stream has `no_ack`: permanent at once, saying which
/// (before: retried until dead as "timed out", the plain subscriber getting a copy each time,
/// and a stored message recorded as never delivered).
#[tokio::test]
async fn nats_no_acknowledgement_from_a_plain_subscriber_or_a_no_ack_stream_is_permanent() {
    let n = Nats::start().await;
    let client = async_nats::connect(n.url()).await.unwrap();
    let mut plain = client.subscribe("plain.in").await.unwrap();
    client.flush().await.unwrap();
    n.js()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "NOACK".into(),
            subjects: vec!["noack.in".into()],
            no_ack: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for (subject, says) in [
        ("plain.in", "plain NATS subscriber"),
        ("noack.in", "no_ack"),
    ] {
        let gw = gateway(&format!("url = {:?}\nsubject = {subject:?}", n.url()));
        let id = gw.post(b"x".to_vec()).await;
        let ev = gw.wait_outcome(&id, "dead").await;
        let log = ev["attempt_log"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{subject}: permanent at once: {ev:#}");
        let detail = log[0]["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{subject}: {detail}");
    }
    // The plain subscriber got the one attempt's copy, not one per retry.
    let mut copies = 0;
    while let Ok(Some(_)) = tokio::time::timeout(
        Duration::from_millis(300),
        futures_util::StreamExt::next(&mut plain),
    )
    .await
    {
        copies += 1;
    }
    assert_eq!(copies, 1);
}

/// The default exchange takes no bindings: a message it cannot route (no queue of the routing
/// key's name) says to declare that queue, not to bind one.
#[tokio::test]
async fn amqp_unroutable_on_the_default_exchange_says_to_declare_the_queue() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    let queue = unique("noqueue");
    let gw = gateway(&format!(
        "url = {:?}\nexchange = \"\"\nrouting_key = {queue:?}",
        amqp_url()
    ));
    let id = gw.post(b"x".to_vec()).await;
    let detail = wait_for("a first attempt", || async {
        gw.event(&id).await["attempt_log"][0]["detail"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    assert!(
        detail.contains(&format!("no queue named {queue:?} exists; declare it")),
        "{detail}"
    );
}
