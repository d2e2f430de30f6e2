//! Instruction counts (`--instructions`): the same signed requests as the timed run, with each
//! server under `valgrind --tool=callgrind`, counting user-space instructions per request (the
//! ceiling) and per event (hookgate: verify, record, 202, delivery and its record).
//!
//! Seconds on this shared machine swing by ±40% from one minute to the next; instruction
//! counts do not depend on what else runs, so they tell whether a change made hookgate
//! cheaper. They leave out the kernel's share (syscalls, TCP, page cache, fsync), which the
//! timed run includes, and valgrind runs the server's threads one at a time.
//!
//! Per server: a warm-up load, then (hookgate) wait until every warm-up event is delivered;
//! zero the counters (`callgrind_control -z`); the measured load; wait until its events are
//! delivered too; dump (`callgrind_control -d`) and read the dump's total.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::loadgen::{self, LoadResult, LoadSpec, MEASURE, STOP};
use crate::target::{self, Backend, HookgateSpec, Server};
use crate::upstream::{self, Counts};

pub struct Plan {
    pub hookgate: PathBuf,
    pub conns: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain_timeout: Duration,
    pub body_size: usize,
    pub page_size: Option<String>,
    pub server_cpu: usize,
    pub tmp_dir: PathBuf,
}

/// Instructions counted over a measured load, and the requests it got answered.
pub struct Count {
    pub requests: u64,
    pub instructions: u64,
}

impl Count {
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

pub struct Outcome {
    pub ceiling: Count,
    pub hookgate: Count,
}

pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let (upstream_addr, counts) = upstream::start().await?;
    std::fs::create_dir_all(&plan.tmp_dir)
        .with_context(|| format!("create {}", plan.tmp_dir.display()))?;
    let secret = format!("bench-secret-{}", std::process::id());
    let tag = format!("i{}", std::process::id());
    let spec = |addr, phase: &str| {
        Arc::new(LoadSpec {
            addr,
            path: target::ROUTE_PATH.into(),
            secret: secret.as_bytes().to_vec(),
            body_size: plan.body_size,
            tag: format!("{tag}-{phase}"),
            expect_status: 202,
        })
    };

    eprintln!("== ceiling under callgrind");
    let dir = tempfile::Builder::new()
        .prefix("hookgate-instr-")
        .tempdir_in(&plan.tmp_dir)?;
    let c = Server::ceiling(plan.server_cpu, &callgrind(dir.path())).await?;
    let ceiling = count(
        &c,
        dir.path(),
        |p| spec(c.addr, &format!("c{p}")),
        plan,
        None,
    )
    .await?;
    c.stop().await.context("stopping the ceiling")?;

    eprintln!("== hookgate under callgrind");
    let hg_spec = HookgateSpec {
        binary: plan.hookgate.clone(),
        backend: Backend::Embedded,
        redis_url: String::new(),
        page_size: plan.page_size.clone(),
        log: "warn".into(),
        secret: secret.clone(),
        upstream: upstream_addr,
        tag: tag.clone(),
    };
    let hg = Server::hookgate(
        &hg_spec,
        dir.path(),
        plan.server_cpu,
        &callgrind(dir.path()),
    )
    .await?;
    let hookgate = count(
        &hg,
        dir.path(),
        |p| spec(hg.addr, &format!("h{p}")),
        plan,
        Some(&counts),
    )
    .await?;
    hg.stop().await.context("stopping hookgate")?;
    Ok(Outcome { ceiling, hookgate })
}

fn callgrind(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}/callgrind.%p", dir.display()),
    ]
}

async fn count(
    server: &Server,
    dir: &Path,
    spec: impl Fn(&str) -> Arc<LoadSpec>,
    plan: &Plan,
    delivered: Option<&Counts>,
) -> anyhow::Result<Count> {
    let warm = load(spec("warm"), plan.conns, plan.warmup).await?;
    if let Some(c) = delivered {
        wait_delivered(c, warm.ok_total, plan.drain_timeout).await?;
    }
    callgrind_control("-z", server.pid).await?;
    let measured = load(spec("measured"), plan.conns, plan.duration).await?;
    if measured.errors_total > 0 {
        bail!(
            "{} requests failed under callgrind: {:?}",
            measured.errors_total,
            measured.errors_measured
        );
    }
    if let Some(c) = delivered {
        wait_delivered(c, warm.ok_total + measured.ok_total, plan.drain_timeout).await?;
    }
    callgrind_control("-d", server.pid).await?;
    let (dump, instructions) = dumped_total(dir, server.pid)?;
    // Kept beside the temp dir for `callgrind_annotate` (the dir goes with the run).
    let kept = plan.tmp_dir.join(format!("{}.callgrind", server.name()));
    std::fs::copy(&dump, &kept).with_context(|| format!("keep {}", kept.display()))?;
    eprintln!("   profile: callgrind_annotate {}", kept.display());
    eprintln!(
        "   {} requests, {} instructions",
        measured.ok_total, instructions
    );
    Ok(Count {
        requests: measured.ok_total,
        instructions,
    })
}

async fn load(spec: Arc<LoadSpec>, conns: usize, d: Duration) -> anyhow::Result<LoadResult> {
    let phase = Arc::new(AtomicU8::new(MEASURE));
    let running = loadgen::start(spec, conns, phase.clone());
    tokio::time::sleep(d).await;
    phase.store(STOP, Ordering::Relaxed);
    running.await.context("load generator")?
}

async fn wait_delivered(c: &Counts, n: u64, timeout: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while c.distinct() < n {
        if t.elapsed() > timeout {
            bail!(
                "only {} of {n} events delivered after {timeout:?}",
                c.distinct()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn callgrind_control(op: &str, pid: u32) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("callgrind_control")
        .arg(op)
        .arg(pid.to_string())
        .output()
        .await
        .context("run callgrind_control (is valgrind installed?)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {op} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `totals:` line of the newest dump of `pid` (its first event is Ir, instructions).
fn dumped_total(dir: &Path, pid: u32) -> anyhow::Result<(PathBuf, u64)> {
    let prefix = format!("callgrind.{pid}.");
    let newest = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .ok_or_else(|| anyhow!("no callgrind dump for pid {pid} in {}", dir.display()))?;
    let text = std::fs::read_to_string(newest.path())?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no totals line in {}", newest.path().display()))?;
    Ok((newest.path(), total))
}

pub fn markdown(o: &Outcome, command: &str, commit: &str) -> String {
    let (c, h) = (&o.ceiling, &o.hookgate);
    format!(
        "Instruction counts (user space, callgrind), hookgate commit `{commit}`:\n\n\
         ```\n{command}\n```\n\n\
         | target | requests measured | instructions | per request (hookgate: per event, delivery included) |\n\
         |---|---:|---:|---:|\n\
         | ceiling | {} | {} | {:.0} |\n\
         | hookgate | {} | {} | {:.0} |\n\n\
         hookgate costs **{:.1}×** the ceiling's instructions per request (ratio {:.3}×).\n",
        c.requests,
        c.instructions,
        c.per_request(),
        h.requests,
        h.instructions,
        h.per_request(),
        h.per_request() / c.per_request().max(1.0),
        c.per_request() / h.per_request().max(1.0),
    )
}
