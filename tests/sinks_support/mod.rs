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

/// Whether something listens on `port`. A connection to a port nothing listens on can
/// connect to itself (TCP simultaneous open, when the kernel picks that same port as the
/// source, which a free port from the ephemeral range can be): not counted as open.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with stdout and stderr to `log`, owned by a `Proc` from the start (so a panic
/// before the broker is up still kills it).
fn spawn_logged(mut cmd: Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{:?} must be installed: {e}", cmd.get_program()));
    Proc(child)
}

/// Waits until the broker says in its log that it is ready and its port answers. The log line
/// proves this process bound the port (one that could not would exit instead), so a test
/// never talks to another process that took the free port meanwhile; if it exits, panics
/// with its log.
async fn wait_ready(proc: &mut Proc, what: &str, log: &Path, ready: &str, port: u16) {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(st) = proc.0.try_wait().unwrap() {
            panic!(
                "{what} on port {port} exited ({st}) before it was ready; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let said = std::fs::read_to_string(log).is_ok_and(|l| l.contains(ready));
        if said && port_open(port).await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what} on port {port}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Redis {
    pub port: u16,
    pub proc: Option<Proc>,
    /// Extra `redis-server` arguments (e.g. `--requirepass`).
    pub args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart().await;
        r
    }

    pub async fn restart(&mut self) {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's full sync writes an RDB file even with --save "": keep it here.
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args);
        let mut proc = spawn_logged(cmd, &log);
        wait_ready(
            &mut proc,
            "redis-server",
            &log,
            "Ready to accept connections",
            self.port,
        )
        .await;
        self.proc = Some(proc);
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

/// How a test client authenticates to a `Nats` started with credentials.
#[derive(Clone)]
pub enum NatsAuth {
    None,
    UserPassword(String, String),
    Token(String),
}

pub struct Nats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Option<Proc>,
    /// Extra `nats-server` arguments (e.g. `--user`, `-c`).
    pub args: Vec<String>,
    pub auth: NatsAuth,
}

impl Nats {
    pub async fn start() -> Nats {
        Nats::start_with(&[], NatsAuth::None).await
    }

    /// With extra `nats-server` arguments; `auth` is what `js()` connects with.
    pub async fn start_with(args: &[&str], auth: NatsAuth) -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            proc: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            auth,
        };
        n.restart().await;
        n
    }

    pub async fn restart(&mut self) {
        let log = self.dir.path().join("nats.log");
        let mut cmd = Command::new("nats-server");
        cmd.args(&self.args)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"));
        let mut proc = spawn_logged(cmd, &log);
        wait_ready(&mut proc, "nats-server", &log, "Server is ready", self.port).await;
        self.proc = Some(proc);
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn js(&self) -> async_nats::jetstream::Context {
        let opts = match self.auth.clone() {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword(u, p) => {
                async_nats::ConnectOptions::with_user_and_password(u, p)
            }
            NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t),
        };
        async_nats::jetstream::new(opts.connect(self.url()).await.unwrap())
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
{max_attempts}
backoff_initial = "{initial}"
backoff_max = "{max}"
{forward}
"#,
            data = dir.path().join("data").display().to_string(),
            initial = backoff.0,
            max = backoff.1,
            // 1,000 unless `forward` sets it.
            max_attempts = if forward.contains("max_attempts") {
                ""
            } else {
                "max_attempts = 1000"
            },
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
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        // The first line says where it listens; read on a thread so a gateway that hangs
        // before printing it fails the test at the deadline instead of blocking it. The
        // thread then keeps draining stdout so the gateway never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(Some(line)) => line,
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("gateway did not start: {}", log_of(dir.path()))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "gateway printed nothing within {DEADLINE:?}: {}",
                log_of(dir.path())
            ),
        };
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
            .header("x-repeated", "one")
            .header("x-repeated", "two")
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
