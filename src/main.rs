//! The thin binary: parse the command line, start logging, load config, run, map failures to
//! exit codes (0 ok, 1 invalid config or failed start).

use std::process::ExitCode;

use clap::Parser;
use hookgate::cli::{Cli, Command};
use hookgate::{app, config, store, telemetry};

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
