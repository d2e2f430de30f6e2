//! The thin binary: parse the command line, start logging, load config, run, map failures to
//! exit codes (0 ok, 1 invalid config or failed start).

use std::process::ExitCode;

use clap::Parser;
use hookgate::cli::{Cli, Command};
use hookgate::{app, config, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command {
        Command::Check(c) => match config::load(&c.config) {
            Ok((_, warnings)) => {
                for w in warnings {
                    eprintln!("warning: {w}");
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
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hookgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn sign(a: hookgate::cli::SignArgs) -> ExitCode {
    let cfg = match config::load(&a.config.config) {
        Ok((cfg, _)) => cfg,
        Err(problems) => {
            eprintln!("hookgate: {} has problems:", a.config.config.display());
            for e in &problems.errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
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
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookgate sign: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let running = app::start(cfg).await?;
    tracing::info!(ingress = %running.ingress_addr, admin = %running.admin_addr, version = env!("CARGO_PKG_VERSION"), "hookgate ready");
    // One machine-readable line on stdout, for scripts and tests that bind port 0.
    println!(
        "hookgate listening ingress={} admin={}",
        running.ingress_addr, running.admin_addr
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
