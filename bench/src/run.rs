//! One benchmark run: for each connection count, the ceiling then a fresh hookgate (fresh
//! store), each warmed up then measured for a fixed window under the same closed-loop load,
//! then hookgate's delivery backlog is waited for (bounded) before it is stopped.
//!
//! During the measured window it samples the server's and the generator's CPU time and the
//! upstream's delivery count; optionally `perf record` profiles hookgate over that window.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::loadgen::{self, LoadResult, LoadSpec, MEASURE, STOP, WARMUP};
use crate::proc;
use crate::target::{self, Backend, HookgateSpec, Server};
use crate::upstream;

pub struct Plan {
    pub hookgate: PathBuf,
    pub levels: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain_timeout: Duration,
    pub body_size: usize,
    pub backend: Backend,
    pub redis_url: String,
    pub page_size: Option<String>,
    pub log: String,
    pub server_cpu: usize,
    pub tmp_dir: PathBuf,
    pub perf_record: Option<PathBuf>,
    pub perf_level: usize,
    /// Measure the relay floor at each level too.
    pub relay: bool,
}

/// One target at one level, over the measured window.
pub struct Measured {
    pub window: Duration,
    pub load: LoadResult,
    pub server_cpu_us: u64,
    pub loadgen_cpu_us: u64,
    /// Distinct events the upstream received during the window (hookgate only).
    pub delivered_in_window: u64,
}

impl Measured {
    /// Two windows of the same target as one (the ceiling is measured before and after
    /// hookgate, so drift of a noisy machine shows and is averaged).
    fn combine(mut a: Measured, b: Measured) -> anyhow::Result<Measured> {
        a.window += b.window;
        a.load.merge(b.load)?;
        a.server_cpu_us += b.server_cpu_us;
        a.loadgen_cpu_us += b.loadgen_cpu_us;
        a.delivered_in_window += b.delivered_in_window;
        Ok(a)
    }

    pub fn rps(&self) -> f64 {
        self.load.ok_measured as f64 / self.window.as_secs_f64()
    }
    pub fn server_us_per_req(&self) -> f64 {
        self.server_cpu_us as f64 / self.load.ok_measured.max(1) as f64
    }
    pub fn server_core(&self) -> f64 {
        self.server_cpu_us as f64 / self.window.as_micros() as f64
    }
    pub fn loadgen_core(&self) -> f64 {
        self.loadgen_cpu_us as f64 / self.window.as_micros() as f64
    }
}

/// What happened to hookgate's deliveries at one level.
pub struct Delivery {
    pub accepted_total: u64,
    pub backlog_at_end: u64,
    /// From the end of the load to the last acknowledged event delivered; `None`: not within
    /// the drain timeout.
    pub drain: Option<Duration>,
    pub drained_after_load: u64,
    pub waited: Duration,
    pub deliveries: u64,
    pub distinct: u64,
}

pub struct Level {
    pub conns: usize,
    pub ceiling: Measured,
    /// Ceiling requests/s before and after hookgate's window.
    pub ceiling_runs: [f64; 2],
    /// The relay floor (a bare server forwarding each request), when measured, and the CPUs
    /// its process was allowed.
    pub relay: Option<Measured>,
    pub relay_cpus: Option<String>,
    pub hookgate: Measured,
    pub delivery: Delivery,
    pub hookgate_warnings: usize,
    pub hookgate_log_bytes: u64,
    pub hookgate_cpus: String,
    /// hookgate's CPU from its start until its backlog drained, per acknowledged event:
    /// the whole cost of an event (accept, delivery, record), whenever it was paid.
    pub hookgate_us_per_event: Option<f64>,
}

pub struct Outcome {
    pub levels: Vec<Level>,
    pub ceiling_cpus: String,
    pub loadavg_after: String,
}

pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let (up_addr, counts) = upstream::start().await?;
    let ceiling = Server::ceiling(plan.server_cpu, &[])
        .await
        .context("ceiling")?;
    let ceiling_cpus = proc::allowed_cpus(ceiling.pid);
    std::fs::create_dir_all(&plan.tmp_dir)
        .with_context(|| format!("create {}", plan.tmp_dir.display()))?;
    let secret = format!("bench-secret-{}", std::process::id());
    let run_tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );

    let mut levels = Vec::new();
    for &conns in &plan.levels {
        let spec = |addr, tag: String| {
            Arc::new(LoadSpec {
                addr,
                path: target::ROUTE_PATH.into(),
                secret: secret.as_bytes().to_vec(),
                body_size: plan.body_size,
                tag,
                expect_status: 202,
            })
        };
        eprintln!("== {conns} connections: ceiling (before)");
        let c1_spec = spec(ceiling.addr, format!("c{conns}a-{run_tag}"));
        let c1 = measure(c1_spec, conns, ceiling.pid, plan, None, None).await?;
        eprintln!("   {:.0} req/s", c1.rps());

        let mut relay_cpus = None;
        let relay = if plan.relay {
            eprintln!("== {conns} connections: relay floor");
            let r = Server::relay(plan.server_cpu, up_addr)
                .await
                .context("relay")?;
            relay_cpus = Some(proc::allowed_cpus(r.pid));
            let m = measure(
                spec(r.addr, format!("r{conns}-{run_tag}")),
                conns,
                r.pid,
                plan,
                None,
                None,
            )
            .await?;
            r.stop().await.context("stopping the relay")?;
            eprintln!(
                "   {:.0} req/s ({:.3}x the ceiling before)",
                m.rps(),
                m.rps() / c1.rps().max(1.0)
            );
            Some(m)
        } else {
            None
        };

        eprintln!("== {conns} connections: hookgate");
        counts.reset();
        let dir = tempfile::Builder::new()
            .prefix("hookgate-bench-")
            .tempdir_in(&plan.tmp_dir)?;
        let tag = format!("h{conns}-{run_tag}");
        let hg_spec = HookgateSpec {
            binary: plan.hookgate.clone(),
            backend: plan.backend.clone(),
            redis_url: plan.redis_url.clone(),
            page_size: plan.page_size.clone(),
            log: plan.log.clone(),
            secret: secret.clone(),
            upstream: up_addr,
            tag: tag.clone(),
        };
        let hg = Server::hookgate(&hg_spec, dir.path(), plan.server_cpu, &[])
            .await
            .context("hookgate")?;
        let hookgate_cpus = proc::allowed_cpus(hg.pid);
        let perf = plan
            .perf_record
            .as_ref()
            .filter(|_| conns == plan.perf_level);
        let h = measure(spec(hg.addr, tag), conns, hg.pid, plan, perf, Some(&counts)).await?;
        eprintln!(
            "   {:.0} req/s ({:.3}x the ceiling before)",
            h.rps(),
            h.rps() / c1.rps().max(1.0)
        );
        let delivery = drain(&counts, &h, plan.drain_timeout).await;
        let hookgate_us_per_event = match (delivery.drain, proc::cpu_us(hg.pid)) {
            (Some(_), Ok(total)) => Some(total as f64 / delivery.accepted_total.max(1) as f64),
            _ => None,
        };
        match delivery.drain {
            Some(d) => eprintln!("   backlog drained {:.1}s after the load", d.as_secs_f64()),
            None => eprintln!(
                "   backlog NOT drained within {:?}: {} of {} delivered",
                plan.drain_timeout, delivery.distinct, delivery.accepted_total
            ),
        }
        let hookgate_warnings = hg.log_lines("WARN") + hg.log_lines("ERROR");
        for line in hg.first_lines(&["WARN", "ERROR"], 3) {
            eprintln!("   hookgate logged: {line}");
        }
        let hookgate_log_bytes = hg.log_bytes();
        hg.stop().await.context("stopping hookgate")?;
        drop(dir);

        eprintln!("== {conns} connections: ceiling (after)");
        let c2_spec = spec(ceiling.addr, format!("c{conns}b-{run_tag}"));
        let c2 = measure(c2_spec, conns, ceiling.pid, plan, None, None).await?;
        eprintln!("   {:.0} req/s", c2.rps());
        let ceiling_runs = [c1.rps(), c2.rps()];
        levels.push(Level {
            conns,
            ceiling: Measured::combine(c1, c2)?,
            ceiling_runs,
            relay,
            relay_cpus,
            hookgate: h,
            delivery,
            hookgate_warnings,
            hookgate_log_bytes,
            hookgate_cpus,
            hookgate_us_per_event,
        });
    }
    ceiling.stop().await.ok();
    Ok(Outcome {
        levels,
        ceiling_cpus,
        loadavg_after: proc::loadavg(),
    })
}

/// Warm-up, then the measured window; stops the load and waits for the last answers.
async fn measure(
    spec: Arc<LoadSpec>,
    conns: usize,
    server_pid: u32,
    plan: &Plan,
    perf: Option<&PathBuf>,
    upstream: Option<&upstream::Counts>,
) -> anyhow::Result<Measured> {
    let delivered = || upstream.map(|c| c.distinct()).unwrap_or(0);
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let load = loadgen::start(spec, conns, phase.clone());
    tokio::time::sleep(plan.warmup).await;

    let me = std::process::id();
    let mut perf_child = match perf {
        Some(out) => Some(start_perf(server_pid, out)?),
        None => None,
    };
    phase.store(MEASURE, Ordering::Relaxed);
    let (s0, g0, d0, t0) = (
        proc::cpu_us(server_pid)?,
        proc::cpu_us(me)?,
        delivered(),
        Instant::now(),
    );
    tokio::time::sleep(plan.duration).await;
    phase.store(STOP, Ordering::Relaxed);
    let (s1, g1, d1, window) = (
        proc::cpu_us(server_pid)?,
        proc::cpu_us(me)?,
        delivered(),
        t0.elapsed(),
    );
    if let Some(child) = perf_child.take() {
        stop_perf(child).await?;
    }
    let load = load.await.context("load generator")??;
    Ok(Measured {
        window,
        load,
        server_cpu_us: s1.saturating_sub(s0),
        loadgen_cpu_us: g1.saturating_sub(g0),
        delivered_in_window: d1.saturating_sub(d0),
    })
}

/// Delivered-events figures; waits (bounded) until every acknowledged event arrived.
async fn drain(counts: &upstream::Counts, h: &Measured, timeout: Duration) -> Delivery {
    let accepted_total = h.load.ok_total;
    let at_end = counts.distinct();
    let t = Instant::now();
    let mut drain = None;
    while t.elapsed() < timeout {
        if counts.distinct() >= accepted_total {
            drain = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let distinct = counts.distinct();
    Delivery {
        accepted_total,
        backlog_at_end: accepted_total.saturating_sub(at_end),
        drain,
        drained_after_load: distinct.saturating_sub(at_end),
        waited: t.elapsed(),
        deliveries: counts.deliveries(),
        distinct,
    }
}

fn start_perf(pid: u32, out: &PathBuf) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-o",
        ])
        .arg(out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn perf")
}

async fn stop_perf(mut child: tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
    }
    child.wait().await?;
    Ok(())
}
