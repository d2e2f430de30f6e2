//! hookgate-bench: the accept-path benchmark of issue 2 (see docs/PERFORMANCE.md).
//!
//! Starts a bare hyper server (the ceiling) and, per level, a fresh release hookgate, both
//! pinned to the server CPU; pins itself (load generator + upstream) to the other CPU; drives
//! both with the same closed-loop load at each connection count; prints a Markdown table with
//! throughput as a ratio to the ceiling, and optionally writes it into docs/PERFORMANCE.md.

mod ceiling;
mod instr;
mod loadgen;
mod proc;
mod relay;
mod report;
mod run;
mod target;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Accept-path benchmark of hookgate against a bare hyper ceiling")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: serve the ceiling (bare hyper, 202) until killed.
    #[command(hide = true)]
    Ceiling,
    /// Internal: serve the relay floor (bare hyper, each body POSTed to UPSTREAM, then 202).
    #[command(hide = true)]
    Relay { upstream: std::net::SocketAddr },
}

#[derive(clap::Args)]
struct Args {
    /// The hookgate binary to measure (a release build).
    #[arg(long, default_value = "target/release/hookgate")]
    hookgate: PathBuf,
    /// Connection counts, one level each.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    levels: Vec<usize>,
    /// Load before each measured window.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measured window per level and target.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait after the load for hookgate's deliveries to catch up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// hookgate's store backend.
    #[arg(long, value_enum, default_value = "embedded")]
    backend: target::Backend,
    /// Redis URL, with `--backend redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// `store.page_size` for the embedded store (e.g. `16KiB`); hookgate's default otherwise.
    #[arg(long)]
    page_size: Option<String>,
    /// `HOOKGATE_LOG` for hookgate (its log goes to a file in the temp dir).
    #[arg(long, default_value = "warn")]
    log: String,
    /// CPU for the load generator and the upstream.
    #[arg(long, default_value_t = 0)]
    loadgen_cpu: usize,
    /// CPU for the server under test.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Where temp configs and stores go (keep it on the repository's disk).
    #[arg(long, default_value = "target/bench-tmp")]
    tmp_dir: PathBuf,
    /// Write the results into this Markdown file, between its result markers.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Profile hookgate with `perf record -g` over the measured window of `--perf-level`.
    #[arg(long)]
    perf_record: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    perf_level: usize,
    /// Count instructions instead of timing (each server under valgrind's callgrind, at
    /// `--instr-conns` connections; `--warmup` and `--duration` apply): repeatable on a
    /// noisy machine, user space only.
    #[arg(long)]
    instructions: bool,
    #[arg(long, default_value_t = 16)]
    instr_conns: usize,
    /// Skip the relay floor (a bare server that forwards each request to the upstream).
    #[arg(long)]
    no_relay: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Ceiling) => ceiling::serve(),
        Some(Cmd::Relay { upstream }) => relay::serve(upstream),
        None => bench(cli.args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(a: Args) -> anyhow::Result<()> {
    if !a.hookgate.exists() {
        anyhow::bail!(
            "{} not found: build it with `cargo build --release` (or run scripts/bench.sh)",
            a.hookgate.display()
        );
    }
    if a.page_size.is_some() && a.backend != target::Backend::Embedded {
        anyhow::bail!("--page-size is for the embedded store only");
    }
    let facts = report::Facts {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: std::env::var("HOOKGATE_BENCH_CMD")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        nproc: proc::nproc(),
        cpu_model: proc::cpu_model(),
        commit: git_commit(),
        loadgen_cpu: a.loadgen_cpu,
        server_cpu: a.server_cpu,
        backend: format!("{:?}", a.backend).to_lowercase(),
        sync: linked_sync(&a.hookgate),
        log: a.log.clone(),
        warmup: humantime::format_duration(a.warmup).to_string(),
        duration: humantime::format_duration(a.duration).to_string(),
        body_size: a.body_size,
        loadavg_before: proc::loadavg(),
    };
    // Before the runtime exists, so every thread it makes inherits the mask.
    proc::pin_self(a.loadgen_cpu)?;
    if a.instructions {
        let plan = instr::Plan {
            hookgate: a.hookgate,
            conns: a.instr_conns,
            warmup: a.warmup,
            duration: a.duration,
            drain_timeout: a.drain_timeout,
            body_size: a.body_size,
            page_size: a.page_size.clone(),
            server_cpu: a.server_cpu,
            tmp_dir: a.tmp_dir,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let outcome = rt.block_on(instr::run(&plan))?;
        println!(
            "{}",
            instr::markdown(&outcome, &facts.command, &facts.commit)
        );
        return Ok(());
    }
    let plan = run::Plan {
        hookgate: a.hookgate,
        levels: a.levels,
        warmup: a.warmup,
        duration: a.duration,
        drain_timeout: a.drain_timeout,
        body_size: a.body_size,
        backend: a.backend,
        redis_url: a.redis_url,
        page_size: a.page_size,
        log: a.log,
        server_cpu: a.server_cpu,
        tmp_dir: a.tmp_dir,
        perf_record: a.perf_record,
        perf_level: a.perf_level,
        relay: !a.no_relay,
    };
    // One thread: the generator and the upstream share the generator's core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(run::run(&plan))?;
    let md = report::markdown(&outcome, &facts);
    println!("{md}");
    if let Some(out) = a.out {
        report::write_into(&out, &md)?;
        eprintln!("results written into {}", out.display());
    }
    Ok(())
}

/// Which sync SQLite in `binary` calls: `fdatasync` when compiled with `HAVE_FDATASYNC`
/// (`.cargo/config.toml`), otherwise `fsync`, read from the binary's dynamic symbols.
fn linked_sync(binary: &std::path::Path) -> String {
    let out = std::process::Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(binary)
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return "unknown (nm failed)".into();
    };
    let symbols = String::from_utf8_lossy(&out.stdout);
    let links = |name: &str| {
        symbols.lines().any(|l| {
            let sym = l.split_whitespace().last().unwrap_or("");
            sym == name || sym.starts_with(&format!("{name}@"))
        })
    };
    if links("fdatasync") {
        "fdatasync".into()
    } else if links("fsync") {
        "fsync".into()
    } else {
        "neither".into()
    }
}

/// The last commit of the gateway's sources and build settings (`.cargo/config.toml` sets
/// SQLite's compile flags), not of the benchmark; `+dirty` when the working tree's differ.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&[
        "log",
        "-1",
        "--format=%h",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ])
    .unwrap_or_else(|| "unknown".into());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ])
    .map(|s| !s.is_empty())
    .unwrap_or(false);
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}
