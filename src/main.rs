//! The thin binary: parse the command line, start logging, load config, run, map failures to
//! exit codes (0 ok, 1 invalid config or failed start).

use std::process::ExitCode;

use clap::Parser;
use hookgate::cli::{Cli, Command, EventsArgs, EventsCommand};
use hookgate::{app, config, store, telemetry};

// Many small allocations per request (headers, JSON, futures): mimalloc is measurably cheaper
// than glibc's allocator here (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command {
        Command::Check(c) => match config::load(&c.config) {
            Ok((cfg, mut warnings)) => {
                let (store_warnings, store_errors) = store::check(&cfg.store);
                warnings.extend(store_warnings);
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                if !store_errors.is_empty() {
                    for e in &store_errors {
                        println!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
                println!("{}: ok", c.config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for w in &problems.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &problems.errors {
                    println!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Sign(a) => sign(a),
        Command::Backup(a) => backup(a),
        Command::Events(args) => match runtime().map(|rt| rt.block_on(events(args))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) | Err(e) => {
                eprintln!("hookgate events: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(c) => {
            let (cfg, warnings) = match config::load(&c.config) {
                Ok(ok) => ok,
                Err(problems) => {
                    eprintln!(
                        "hookgate: refusing to start, {} has problems:",
                        c.config.display()
                    );
                    for e in &problems.errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            for w in warnings {
                tracing::warn!("config: {w}");
            }
            hookgate::telemetry::no_huge_pages();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hookgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let served = rt.block_on(serve(cfg, c.config.clone()));
            // Not waiting for a reload's read stuck on a hung mount (given up on after 10 s):
            // dropping the runtime would wait for it, and SIGTERM would never end the process.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hookgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config for a command that only reads it (`sign`, `backup`), or `None` once its problems
/// are printed.
fn load_or_say(path: &std::path::Path) -> Option<config::Config> {
    match config::load(path) {
        Ok((cfg, _)) => Some(cfg),
        Err(problems) => {
            eprintln!("hookgate: {} has problems:", path.display());
            for e in &problems.errors {
                eprintln!("{e}");
            }
            None
        }
    }
}

fn sign(a: hookgate::cli::SignArgs) -> ExitCode {
    let Some(cfg) = load_or_say(&a.config.config) else {
        return ExitCode::FAILURE;
    };
    let now = std::time::SystemTime::now();
    let body = match a.body.as_deref() {
        None => Ok(hookgate::cli::default_sign_body(now)),
        Some("-") => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map(|_| b)
        }
        Some(path) => std::fs::read(path),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hookgate: cannot read the body: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = a.body.as_deref().filter(|b| *b != "-");
    match hookgate::cli::sign_output(&cfg, &a.route, &body, file, now) {
        Ok(out) => {
            print_out(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookgate sign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backup(a: hookgate::cli::BackupArgs) -> ExitCode {
    let Some(cfg) = load_or_say(&a.config.config) else {
        return ExitCode::FAILURE;
    };
    let config::StoreBackend::Embedded { path, .. } = &cfg.store.backend else {
        eprintln!("hookgate backup: the store is Redis (store.backend = \"redis\"): back it up with Redis's own persistence (its AOF or RDB files, BGSAVE), see docs/REDIS.md");
        return ExitCode::FAILURE;
    };
    match store::embedded::backup(path, &a.to) {
        Ok(b) => {
            print_out(&format!(
                "hookgate backup: a consistent copy of {} written to {} ({} bytes): {} pending, {} delivered, {} dead events\n\
                 To restore: stop hookgate, delete hookgate.db, hookgate.db-wal and hookgate.db-shm in {}, copy the backup there as hookgate.db, start hookgate.\n",
                b.source.display(),
                a.to.display(),
                b.bytes,
                b.pending,
                b.delivered,
                b.dead,
                path.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookgate backup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn events(args: EventsArgs) -> anyhow::Result<()> {
    use hookgate::admin::client::{call, q, target};
    use reqwest::Method;
    let t = target(&args.config.config, args.admin, args.token)?;
    let (method, path) = match args.command {
        EventsCommand::List {
            route,
            state,
            limit,
            key,
            before,
        } => {
            let mut path = format!("/admin/events?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={}", q(&b)));
            }
            if let Some(k) = key {
                path.push_str(&format!("&key={}", q(&k)));
            }
            if let Some(r) = route {
                path.push_str(&format!("&route={}", q(&r)));
            }
            if let Some(s) = state {
                path.push_str(&format!("&state={}", q(&s)));
            }
            (Method::GET, path)
        }
        EventsCommand::Show { event_id } => {
            (Method::GET, format!("/admin/events/{}", q(&event_id)))
        }
        EventsCommand::Replay { event_id } => (
            Method::POST,
            format!("/admin/events/{}/replay", q(&event_id)),
        ),
        EventsCommand::Discard { event_id } => {
            (Method::DELETE, format!("/admin/events/{}", q(&event_id)))
        }
        EventsCommand::ReplayDead { route, route_flag } => {
            let route = route.or(route_flag).unwrap_or_default();
            (
                Method::POST,
                format!("/admin/routes/{}/replay-dead", q(&route)),
            )
        }
    };
    let v = call(&t, method, &path).await?;
    print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    Ok(())
}

/// Writes a command's output to stdout. A reader that went away (`hookgate events … | head`)
/// ends the command quietly, as for other Unix tools, instead of a panic with a backtrace.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("hookgate: cannot write the output: {e}");
        std::process::exit(1);
    }
}

async fn serve(cfg: config::Config, path: std::path::PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal's default action ends the process, so a SIGTERM (or a
    // reload's SIGHUP) that came between the ready line and their installation killed it
    // at once, cutting off requests in flight. Installed, one that comes during start is
    // acted on once the gateway is up.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = app::start(cfg).await?;
    tracing::info!(ingress = %running.ingress_addr, admin = %running.admin_addr, version = env!("CARGO_PKG_VERSION"), "hookgate ready");
    // One machine-readable line on stdout, for scripts and tests that bind port 0; a JSON
    // object when the logs are JSON (a container's stdout and stderr end up in one stream).
    if std::env::var("HOOKGATE_LOG_FORMAT").as_deref() == Ok("json") {
        println!(
            "{}",
            serde_json::json!({
                "message": "hookgate listening",
                "ingress": running.ingress_addr.to_string(),
                "admin": running.admin_addr.to_string(),
            })
        );
    } else {
        println!(
            "hookgate listening ingress={} admin={}",
            running.ingress_addr, running.admin_addr
        );
    }
    // The config file and the files it reads (secrets, keys, TLS) are compared by content on
    // a thread of their own, so a Kubernetes ConfigMap or Secret symlink swap and a renewed
    // certificate count too, and a read that hangs cannot hold up the signals.
    let (mut watcher, mut changes) =
        config::watch::Watcher::spawn(running.files.clone(), CONFIG_POLL)?;
    loop {
        let reloaded = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                running.reload(&path).await
            }
            Some(changed) = changes.recv() => {
                if !watcher.current(&changed) {
                    continue;
                }
                let changed = changed.files;
                if changed.iter().any(|f| f == &path) {
                    tracing::info!(path = %path.display(), "config file changed: reloading");
                } else {
                    let files = changed.iter().map(|f| f.display().to_string()).collect::<Vec<_>>();
                    tracing::info!(files = %files.join(", "), "a file the config reads changed: reloading");
                }
                running.reload(&path).await
            }
        };
        // Taken or refused, the files that reload read are watched from what it read: a fix
        // to a refused config's file is taken up, and a refusal is not retried until
        // something changes again. A reload that could not read them in time leaves the
        // watch as it was.
        if let Some(files) = reloaded {
            watcher.reset(files);
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(2);
