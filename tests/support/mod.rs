//! Test harness: the real `hookgate` binary on 127.0.0.1:0 with a temp data dir, a scriptable
//! upstream HTTP server on loopback, signers, and waiting helpers that poll a condition with a
//! deadline (never a bare sleep).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

#[allow(unused_imports)]
pub use upstream::{Plan, Received, Upstream};

/// Which store a gateway under test uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Embedded,
    /// A Redis URL, e.g. of a private `redis-server` started by the test.
    Redis(String),
}

impl Backend {
    pub fn store_toml(&self, dir: &Path) -> String {
        match self {
            Backend::Embedded => format!(
                "[store]\nbackend = \"embedded\"\npath = {:?}\n",
                dir.join("data")
            ),
            Backend::Redis(url) => {
                let prefix = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                // A short visibility timeout, so a killed gateway's leased events are taken
                // over within the tests' deadlines.
                format!(
                    "[store]\nbackend = \"redis\"\nurl = {url:?}\nkey_prefix = \"hg-{prefix}\"\nvisibility_timeout = \"3s\"\n"
                )
            }
        }
    }
}

/// A full config: loopback listeners on free ports, the backend's store, then `routes`.
pub fn config(backend: &Backend, dir: &Path, server_extra: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n{server_extra}\n{}\n{routes}",
        backend.store_toml(dir)
    )
}

pub struct Gateway {
    child: Option<Child>,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A child process killed and reaped on drop, from the moment it is spawned: a harness step
/// that panics before the child is handed over (a timeout, an unexpected line) leaves no
/// process behind.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    pub fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("child still guarded")
    }

    /// Hands the child over; the caller now kills and reaps it.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("child still guarded")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `contents` to `path` atomically: a temp file in the same directory renamed over it.
/// `serve` polls its config file every 2 s; a plain write could be read half-written.
pub fn write_config(path: &Path, contents: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Gateway {
    /// Writes `config` to `dir/hookgate.toml` and starts `hookgate serve` on it.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        let config_path = dir.join("hookgate.toml");
        write_config(&config_path, config);
        Self::start_with(&config_path, &[])
    }

    pub fn start_with(config_path: &Path, env: &[(&str, &str)]) -> Gateway {
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = config_path.parent().unwrap();
        let log_path = dir.join(format!("gateway-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
        cmd.arg("serve")
            .arg("-c")
            .arg(config_path)
            .env("HOOKGATE_LOG", "info,hookgate=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::new(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn hookgate"),
        );
        let stdout = child.get().stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("hookgate listening") {
                    let _ = tx.send(line);
                }
            }
        });
        // Disconnected (the child closed its stdout: it exited) fails at once; the guard
        // kills and reaps it on a timeout.
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!(
                    "hookgate did not start ({e}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            });
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .unwrap()
        };
        Gateway {
            ingress: addr("ingress="),
            admin: addr("admin="),
            child: Some(child.into_inner()),
            config_path: config_path.to_path_buf(),
            log_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingress, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.admin_url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A series' value in `/metrics` (`name{labels}` as exported), 0 if it is not there yet
    /// (a counter appears with its first increment).
    pub async fn counter(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{series} {v:?}: {e}"))
            })
    }

    /// `hookgate_config_reloads_total{result="<result>"}`.
    pub async fn reloads(&self, result: &str) -> f64 {
        self.counter(&format!(
            "hookgate_config_reloads_total{{result=\"{result}\"}}"
        ))
        .await
    }

    /// Writes `config` over the config file (atomically), sends SIGHUP and waits until that
    /// signal's reload is done and one more reload with `result` ("ok" or "error") was
    /// counted. `serve` also polls the file every 2 s, so a change may be reloaded twice (the
    /// poll, then the signal): waiting for the signal's own reload, and for every reload
    /// begun since to be counted, leaves none still to come that a later step could take
    /// for its own.
    pub async fn reload(&self, config: &str, result: &str) {
        let counts = || async {
            let log = self.log();
            let hups = log.matches("SIGHUP: reloading config").count();
            let begun = hups + log.matches("changed: reloading").count();
            let done = self.reloads("ok").await + self.reloads("error").await;
            (hups, begun as f64, done, self.reloads(result).await)
        };
        let (hups0, begun0, done0, result0) = counts().await;
        write_config(&self.config_path, config);
        signal(self.pid(), "HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (hups, begun, done, n) = counts().await;
            if hups > hups0 && done - done0 >= begun - begun0 && n > result0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SIGHUP's reload ({result}) not done within 10 s: {} of {} reloads begun are done, {result} {result0} -> {n}; log:\n{}",
                done - done0,
                begun - begun0,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The event's admin record, once it is in `state`.
    pub async fn wait_event_state(
        &self,
        id: &str,
        state: &str,
        within: Duration,
    ) -> serde_json::Value {
        let path = format!("/admin/events/{id}");
        let mut last = serde_json::Value::Null;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            last = self.admin_json(&path).await;
            if last["state"] == state {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("event {id} not {state} within {within:?}; last: {last:#}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running (false once it exited, or was waited for).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// Waits for an exit already under way (after a signal sent with `signal`).
    pub fn terminate_wait(&mut self) -> ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Sends a request head on a new connection to `addr` with `Expect: 100-continue` and returns
/// once the server answered `100 Continue`: it has read the head and its handler is reading
/// the body, so the request is in flight. `head` is the request line and headers, without
/// the blank line ending them; the caller sends the body (or part of it) next.
pub fn request_in_flight(addr: SocketAddr, head: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.trim_end().as_bytes()).unwrap();
    s.write_all(b"\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n\r\n") {
        // One byte at a time would be slow; the interim answer is all the server sends now.
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("no 100 Continue within 10 s: {e}"));
        assert!(n > 0, "connection closed before 100 Continue: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n"),
        "expected 100 Continue: {text}"
    );
    s
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The generic `hmac` scheme's signature with its defaults: hex HMAC-SHA256 of "{ts}.{body}".
/// Computed here independently of hookgate's own code.
pub fn hmac_sign(secret: &str, ts: i64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(ts.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// A request signed for the default `hmac` scheme, timestamped now.
pub fn signed(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: impl Into<Vec<u8>>,
) -> reqwest::RequestBuilder {
    let body = body.into();
    let ts = now_secs();
    client
        .post(url)
        .header("X-Timestamp", ts.to_string())
        .header("X-Signature", hmac_sign(secret, ts, &body))
        .body(body)
}

/// Sends `req`, which must be answered `202`, and returns the accepted event's id.
pub async fn accepted(req: reqwest::RequestBuilder) -> String {
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 202);
    r.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls `cond` every 20 ms until it holds or `within` passes (then panics with `what`).
pub async fn wait_until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hookgate-test-")
        .tempdir()
        .unwrap()
}

/// A private `redis-server` on a free port, stopped on drop (for the Redis backend and sink).
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// On a free port. A port found free may be taken by another test's server before this one
    /// binds it (then that one answers there, or this one exits): a fresh port is tried then.
    pub fn start() -> RedisServer {
        let mut why = String::new();
        for _ in 0..5 {
            let (port, dir) = (free_port(), tempdir());
            match Self::try_spawn(port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        child,
                        port,
                        _dir: dir,
                    }
                }
                Err(e) => why = e,
            }
        }
        panic!("redis-server found no port of its own in 5 tries; the last: {why}");
    }

    /// Starts it again after `stop`, on the same port with the same data dir (its AOF).
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port, self._dir.path());
    }

    /// `try_spawn`, failing the test if the port is taken (a restart keeps its port).
    fn spawn(port: u16, dir: &Path) -> Child {
        Self::try_spawn(port, dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `redis-server` on `port` and returns once it answers there. A server that exits
    /// (the port was taken meanwhile) or finds another answering there is an `Err`, killed and
    /// reaped first (the answer is checked to come from this process, never from another that
    /// holds the port); one that does not answer within 10 s fails the test with its log.
    fn try_spawn(port: u16, dir: &Path) -> Result<Child, String> {
        let log_path = dir.join(format!("redis-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = ChildGuard::new(
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                ])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::from(log))
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test.sh installs it)"),
        );
        let pid = child.get().id();
        let url = format!("redis://127.0.0.1:{port}/0");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.get().try_wait().unwrap() {
                return Err(format!(
                    "redis-server on port {port} exited ({status}); log:\n{}",
                    log()
                ));
            }
            if let Some(info) = Self::server_info(&url) {
                if !info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
                {
                    return Err(format!(
                        "port {port} is answered by another Redis than the one started (pid {pid}): {info}"
                    ));
                }
                return Ok(child.into_inner());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}; log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `INFO server` from whatever answers at `url`, if anything does yet.
    fn server_info(url: &str) -> Option<String> {
        let client = redis::Client::open(url).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("INFO").arg("server").query(&mut con).ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
