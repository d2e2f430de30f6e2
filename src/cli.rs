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
    /// Inspect and replay events through the admin API.
    Events(EventsArgs),
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Admin API base URL (default: from the config's server.admin_listen).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Admin bearer token (default: the config's server.admin_token).
    #[arg(
        long,
        global = true,
        env = "HOOKGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events, newest first.
    List {
        #[arg(long)]
        route: Option<String>,
        /// pending | delivered | dead
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One event's metadata, state and every attempt.
    Show { event_id: String },
    /// Deliver an event again (any state).
    Replay { event_id: String },
    /// Redrive every dead event of a route.
    ReplayDead {
        #[arg(long)]
        route: String,
    },
}
