//! End-to-end tests of the queue sinks against real brokers: the real `hookgate` binary, a
//! private `redis-server` / `nats-server -js` per test (free port, killed on drop), and the
//! RabbitMQ node started by `scripts/rabbitmq.sh start` (`HOOKGATE_TEST_AMQP_URL`).
//!
//! Each sink: raw body and metadata arrive as SPEC §6 says; a broker outage makes attempts
//! fail and retry, and everything arrives once it is back; 1,000 events arrive, none missing,
//! none doubled; the permanent misconfigurations dead-letter with a clear detail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// Non-ASCII, invalid UTF-8, NUL and odd whitespace: must arrive byte for byte.
const ODD_BODY: &[u8] = b"  {\"caf\xc3\xa9\": \"\xe2\x82\xac\"}\r\n\t \x00\xff\xfe  \n";

// ---------------------------------------------------------------- helpers

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Redis {
    port: u16,
    proc: Option<Proc>,
}

impl Redis {
    async fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
        };
        r.restart().await;
        r
    }

    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.proc = Some(Proc(child));
        let port = self.port;
        wait_for("redis-server to listen", || async move {
            port_open(port).await.then_some(())
        })
        .await;
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Nats {
    async fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        n.restart().await;
        n
    }

    async fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed");
        self.proc = Some(Proc(child));
        let port = self.port;
        wait_for("nats-server to listen", || async move {
            port_open(port).await.then_some(())
        })
        .await;
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.url()).await.unwrap())
    }
}

/// The gateway binary with one route (`scheme = "none"`, no dedupe) forwarding to `forward`.
struct Gateway {
    ingress: String,
    admin: String,
    http: reqwest::Client,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(forward: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
path = {data:?}

[[route]]
name = "events"
path = "/hook"

[route.verify]
scheme = "none"

[route.dedupe]
key = "none"

[route.forward]
timeout = "2s"
max_attempts = 1000
backoff_initial = "50ms"
backoff_max = "500ms"
{forward}
"#,
            data = dir.path().join("data").display().to_string()
        );
        let path = dir.path().join("hookgate.toml");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("hookgate.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["serve", "-c"])
            .arg(&path)
            .env("HOOKGATE_LOG", "hookgate=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let proc = Proc(child);
        let line = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("gateway did not start: {}", log_of(dir.path())));
        let mut ingress = String::new();
        let mut admin = String::new();
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("ingress=") {
                ingress = a.to_string();
            } else if let Some(a) = part.strip_prefix("admin=") {
                admin = a.to_string();
            }
        }
        assert!(
            !ingress.is_empty() && !admin.is_empty(),
            "bad line {line:?}"
        );
        // Keep draining stdout so the gateway never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Gateway {
            ingress,
            admin,
            http: reqwest::Client::new(),
            _proc: proc,
            _dir: dir,
        }
    }

    /// Posts one event; returns its event id (the answer must be 202).
    async fn post(&self, body: Vec<u8>) -> String {
        let resp = self
            .http
            .post(format!("http://{}/hook?x=1", self.ingress))
            .header("content-type", "application/octet-stream")
            .header("x-custom", "Ünïcode-free value")
            .header("hookgate-event-id", "forged")
            .header("connection", "keep-alive")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        v["event_id"].as_str().unwrap().to_string()
    }

    /// Posts `n` events, 16 at a time; returns their ids.
    async fn post_many(&self, n: usize) -> HashSet<String> {
        let mut ids = HashSet::new();
        let bodies: Vec<Vec<u8>> = (0..n).map(body_1k).collect();
        for chunk in bodies.chunks(16) {
            let futs = chunk.iter().map(|b| self.post(b.clone()));
            for id in futures_util::future::join_all(futs).await {
                assert!(ids.insert(id));
            }
        }
        ids
    }

    async fn event(&self, id: &str) -> Value {
        self.http
            .get(format!("http://{}/admin/events/{id}", self.admin))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap()
    }

    /// Waits until the event has an attempt with this outcome; returns the event.
    async fn wait_outcome(&self, id: &str, outcome: &str) -> Value {
        wait_for(
            &format!("an attempt with outcome {outcome} on {id}"),
            || async {
                let ev = self.event(id).await;
                let has = ev["attempt_log"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["outcome"] == outcome));
                has.then_some(ev)
            },
        )
        .await
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("hookgate.log")).unwrap_or_default()
}

fn body_1k(i: usize) -> Vec<u8> {
    let mut b = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
    b.resize(1000, b'x');
    b.extend_from_slice(b"\"}\n");
    b
}

fn assert_no_dup(ids: &[String], expected: &HashSet<String>) {
    let got: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(got.len(), ids.len(), "some event was delivered twice");
    let missing: Vec<_> = expected.difference(&got).collect();
    assert!(missing.is_empty(), "missing events: {missing:?}");
    assert_eq!(&got, expected);
}

// ---------------------------------------------------------------- Redis Streams

async fn xrange(r: &Redis, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let mut c = r.conn().await;
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
    let gw = Gateway::start(&format!(
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
    let gw = Gateway::start(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    r.stop();
    let mut ids = gw.post_many(20).await;
    let probe = ids.iter().next().unwrap().clone();
    let ev = gw.wait_outcome(&probe, "retry").await;
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
async fn redis_thousand_events_none_missing_none_doubled() {
    let r = Redis::start().await;
    let gw = Gateway::start(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
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
    let gw = Gateway::start(&format!("url = {:?}\nstream = \"hooks\"", r.url()));
    let id = gw.post(b"x".to_vec()).await;
    let ev = gw.wait_outcome(&id, "dead").await;
    let detail = ev["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"hooks\"") && detail.contains("not a stream"),
        "{detail}"
    );
    assert!(detail.contains("\"events\""), "names the route: {detail}");
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

/// Every message of the stream, read by a JetStream pull consumer.
async fn nats_read_all(n: &Nats, want: usize) -> Vec<async_nats::jetstream::Message> {
    use futures_util::StreamExt;
    let js = n.js().await;
    let stream = js.get_stream("HOOKS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(want + 10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(m) = batch.next().await {
        out.push(m.unwrap());
    }
    out
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
    let gw = Gateway::start(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
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
    assert_eq!(get("Connection"), None, "hop-by-hop header forwarded");
}

#[tokio::test]
async fn nats_outage_retries_then_delivers_all_once() {
    let mut n = Nats::start().await;
    nats_stream(&n).await;
    let gw = Gateway::start(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let first = gw.post(b"before".to_vec()).await;
    gw.wait_outcome(&first, "delivered").await;
    n.stop();
    let mut ids = gw.post_many(20).await;
    let probe = ids.iter().next().unwrap().clone();
    gw.wait_outcome(&probe, "retry").await;
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
    let gw = Gateway::start(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
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
    let gw = Gateway::start(&format!(
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
    let gw = Gateway::start(&format!("url = {:?}\nsubject = \"hooks.in\"", n.url()));
    let id = gw.post(b"early".to_vec()).await;
    gw.wait_outcome(&id, "retry").await;
    n.restart().await;
    gw.wait_outcome(&id, "delivered").await;
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
    let gw = Gateway::start(&format!(
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
    assert_eq!(amqp_header(m, "Connection"), None);
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
    let gw = Gateway::start(&format!(
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
    let gw = Gateway::start(&format!(
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

#[tokio::test]
async fn amqp_thousand_events_and_outage() {
    let _one_at_a_time = AMQP_LOCK.lock().await;
    // One test for both, since the outage stops the shared node's broker app.
    let name = unique("bulk");
    amqp_declare(&name).await;
    let gw = Gateway::start(&format!(
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
    let during = gw.post_many(20).await;
    let probe = during.iter().next().unwrap().clone();
    gw.wait_outcome(&probe, "retry").await;
    rabbitmqctl(&["start_app"]);
    ids.extend(during);
    let msgs = amqp_drain(&name, ids.len()).await;
    assert_no_dup(&amqp_ids(&msgs), &ids);
}
