//! The command line of SPEC §2. `main` maps each command's result to an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hookgate",
    version,
    about = "A verifying ingress gateway for webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML).
    #[arg(short, long, env = "HOOKGATE_CONFIG", default_value = "hookgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the config and its secrets: exit 0, or 1 with one line per problem.
    Check(ConfigArg),
}
