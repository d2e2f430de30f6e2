//! The servers under test, each a child process pinned with `taskset -c <server cpu>` (every
//! thread it makes inherits the mask): the ceiling (this binary's `ceiling` command) and
//! hookgate (`hookgate serve -c <temp config>`). Both print one line with their address on
//! stdout when ready; a server that exits or stays silent for `READY_TIMEOUT` fails the run
//! with the end of its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub const ROUTE_PATH: &str = "/webhooks/bench";
pub const SECRET_ENV: &str = "HOOKGATE_BENCH_SECRET";

#[derive(Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Embedded,
    Redis,
}

/// How to start hookgate for one level.
pub struct HookgateSpec {
    pub binary: PathBuf,
    pub backend: Backend,
    pub redis_url: String,
    /// `store.page_size` (embedded), or hookgate's default.
    pub page_size: Option<String>,
    pub log: String,
    pub secret: String,
    pub upstream: SocketAddr,
    /// Unique per level: the Redis key prefix (the embedded store gets a fresh directory).
    pub tag: String,
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    log: Option<PathBuf>,
}

impl Server {
    /// `wrap`: a command the server runs under (`valgrind --tool=callgrind …`), or empty.
    pub async fn ceiling(cpu: usize, wrap: &[String]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .args(wrap)
            .arg(exe)
            .arg("ceiling");
        cmd.stderr(Stdio::inherit());
        Server::spawn(cmd, "ceiling listening ", None).await
    }

    /// The relay floor (`relay.rs`), forwarding to `upstream`.
    pub async fn relay(cpu: usize, upstream: SocketAddr) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg(exe)
            .arg("relay")
            .arg(upstream.to_string());
        cmd.stderr(Stdio::inherit());
        Server::spawn(cmd, "relay listening ", None).await
    }

    /// Starts hookgate with a config written into `dir` (its store lives there too).
    pub async fn hookgate(
        spec: &HookgateSpec,
        dir: &Path,
        cpu: usize,
        wrap: &[String],
    ) -> anyhow::Result<Server> {
        let config = dir.join("hookgate.toml");
        std::fs::write(&config, config_toml(spec, dir))?;
        let log = dir.join("hookgate.log");
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .args(wrap)
            .arg(&spec.binary)
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .env("HOOKGATE_LOG", &spec.log)
            .env(SECRET_ENV, &spec.secret)
            // Logs go to a file, as a real deployment's would go somewhere: writing them is
            // part of the cost being measured.
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        Server::spawn(cmd, "hookgate listening ingress=", Some(log)).await
    }

    async fn spawn(mut cmd: Command, ready: &str, log: Option<PathBuf>) -> anyhow::Result<Server> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn (is taskset installed?)")?;
        let pid = child.id().ok_or_else(|| anyhow!("child exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let addr = match line {
            Ok(Ok(Some(l))) => l
                .strip_prefix(ready)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| anyhow!("unexpected first line {l:?}")),
            Ok(Ok(None)) => Err(anyhow!("exited before it was ready")),
            Ok(Err(e)) => Err(anyhow!("reading its stdout: {e}")),
            Err(_) => Err(anyhow!("not ready within {READY_TIMEOUT:?}")),
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                let _ = child.start_kill();
                let tail = log.as_deref().map(log_tail).unwrap_or_default();
                bail!("{e}\n{tail}");
            }
        };
        // Keep draining stdout so a later line never meets a closed pipe.
        let mut rest = lines.into_inner();
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rest.read_to_end(&mut sink).await;
        });
        Ok(Server {
            child,
            pid,
            addr,
            log,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() && status.code().is_some() {
                    let tail = self.log.as_deref().map(log_tail).unwrap_or_default();
                    bail!("server exited with {status}\n{tail}");
                }
            }
            Err(_) => {
                self.child.kill().await?;
                eprintln!(
                    "warning: server {} did not stop within {STOP_TIMEOUT:?}; killed",
                    self.pid
                );
            }
        }
        Ok(())
    }

    /// `hookgate` or `ceiling`.
    pub fn name(&self) -> &'static str {
        if self.log.is_some() {
            "hookgate"
        } else {
            "ceiling"
        }
    }

    /// Warn-level and worse lines hookgate logged, counted (each is a finding).
    pub fn log_lines(&self, needle: &str) -> usize {
        self.log
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// The first `n` lines that contain any of `needles`, to show what the counts are.
    pub fn first_lines(&self, needles: &[&str], n: usize) -> Vec<String> {
        self.log
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| {
                s.lines()
                    .filter(|l| needles.iter().any(|k| l.contains(k)))
                    .take(n)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log_bytes(&self) -> u64 {
        self.log
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!(
        "--- {} (last lines) ---\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

/// The temp config: both listeners on port 0, one generic-hmac route deduplicated by
/// `Idempotency-Key`, delivering to the generator's upstream.
pub fn config_toml(spec: &HookgateSpec, dir: &Path) -> String {
    let store = match spec.backend {
        Backend::Embedded => format!(
            "backend = \"embedded\"\npath = {:?}\n{}",
            dir.join("data").display().to_string(),
            spec.page_size
                .as_ref()
                .map(|s| format!("page_size = {s:?}\n"))
                .unwrap_or_default()
        ),
        Backend::Redis => format!(
            "backend = \"redis\"\nurl = {:?}\nkey_prefix = {:?}\n",
            spec.redis_url,
            format!("hookgate-bench-{}", spec.tag)
        ),
    };
    format!(
        r#"# Written by hookgate-bench for one benchmark level.
[server]
listen       = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body     = "1MiB"

[store]
{store}
[[route]]
name = "bench"
path = "{ROUTE_PATH}"

[route.verify]
scheme           = "hmac"
secrets          = ["env:{SECRET_ENV}"]
signature_header = "X-Signature"
timestamp_header = "X-Timestamp"
signed_payload   = "{{timestamp}}.{{body}}"
algorithm        = "sha256"
encoding         = "hex"
tolerance        = "5m"

[route.dedupe]
key = "header:Idempotency-Key"
ttl = "24h"

[route.forward]
url             = "http://{upstream}/deliveries"
timeout         = "10s"
max_attempts    = 8
backoff_initial = "1s"
backoff_max     = "10m"
"#,
        upstream = spec.upstream
    )
}
