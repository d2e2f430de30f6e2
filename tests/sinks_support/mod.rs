//! Self-contained helpers for `tests/sinks.rs` and `examples/bench_sinks.rs`: private
//! `redis-server` / `nats-server -js` instances on free ports (killed on drop), the real
//! gateway binary with one route, polling with a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
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

pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Redis {
    pub port: u16,
    pub proc: Option<Proc>,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
        };
        r.restart().await;
        r
    }

    pub async fn restart(&mut self) {
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

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

pub struct Nats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Option<Proc>,
}

impl Nats {
    pub async fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        n.restart().await;
        n
    }

    pub async fn restart(&mut self) {
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

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.url()).await.unwrap())
    }
}

/// The gateway binary with one route (`scheme = "none"`, no dedupe) forwarding to `forward`.
pub struct Gateway {
    pub ingress: String,
    pub admin: String,
    pub http: reqwest::Client,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(bin: &Path, forward: &str) -> Gateway {
        Gateway::start_in(bin, tempfile::tempdir().unwrap(), forward)
    }

    /// Starts on `dir` (config, store, log): a gateway restarted on the same dir finds the
    /// events its predecessor accepted.
    pub fn start_in(bin: &Path, dir: tempfile::TempDir, forward: &str) -> Gateway {
        Gateway::start_with(bin, dir, forward, ("50ms", "500ms"))
    }

    /// As `start_in`, with `(backoff_initial, backoff_max)`.
    pub fn start_with(
        bin: &Path,
        dir: tempfile::TempDir,
        forward: &str,
        backoff: (&str, &str),
    ) -> Gateway {
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
backoff_initial = "{initial}"
backoff_max = "{max}"
{forward}
"#,
            data = dir.path().join("data").display().to_string(),
            initial = backoff.0,
            max = backoff.1,
        );
        let path = dir.path().join("hookgate.toml");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("hookgate.log")).unwrap();
        let mut child = Command::new(bin)
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

    /// Kills the gateway (SIGKILL: accepted events are durable) and hands back its dir.
    pub fn kill(self) -> tempfile::TempDir {
        drop(self._proc);
        self._dir
    }

    /// Posts one event; returns its event id (the answer must be 202).
    pub async fn post(&self, body: Vec<u8>) -> String {
        let resp = self
            .http
            .post(format!("http://{}/hook?x=1", self.ingress))
            .header("content-type", "application/octet-stream")
            .header("x-custom", "Ünïcode-free value")
            .header("hookgate-event-id", "forged")
            .header("connection", "keep-alive")
            // Headers that would steer the broker if passed through (they must not be).
            .header("nats-expected-stream", "not-this-one")
            .header("nats-rollup", "all")
            .header("cc", "elsewhere")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        v["event_id"].as_str().unwrap().to_string()
    }

    /// Posts `n` events, 16 at a time; returns their ids.
    pub async fn post_many(&self, n: usize) -> HashSet<String> {
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

    pub async fn event(&self, id: &str) -> Value {
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

    /// The route's count of delivered events (`GET /admin/routes`).
    pub async fn delivered(&self) -> Option<u64> {
        let b = self
            .http
            .get(format!("http://{}/admin/routes", self.admin))
            .send()
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        v["routes"][0]["delivered"].as_u64()
    }

    /// Waits until one of the events has an attempt with this outcome; returns that event.
    /// (While a sink is down its route's circuit opens and holds the others back, so which
    /// events get an attempt depends on timing; some one of them always does.)
    pub async fn wait_any_outcome<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String> + Clone,
        outcome: &str,
    ) -> Value {
        wait_for(&format!("an attempt with outcome {outcome}"), || {
            let ids = ids.clone();
            async move {
                for id in ids {
                    let ev = self.event(id).await;
                    let has = ev["attempt_log"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x["outcome"] == outcome));
                    if has {
                        return Some(ev);
                    }
                }
                None
            }
        })
        .await
    }

    /// Waits until the event has an attempt with this outcome; returns the event.
    pub async fn wait_outcome(&self, id: &str, outcome: &str) -> Value {
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

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("hookgate.log")).unwrap_or_default()
}

pub fn body_1k(i: usize) -> Vec<u8> {
    let mut b = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
    b.resize(1000, b'x');
    b.extend_from_slice(b"\"}\n");
    b
}

pub fn assert_no_dup(ids: &[String], expected: &HashSet<String>) {
    let got: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(got.len(), ids.len(), "some event was delivered twice");
    let missing: Vec<_> = expected.difference(&got).collect();
    assert!(missing.is_empty(), "missing events: {missing:?}");
    assert_eq!(&got, expected);
}
