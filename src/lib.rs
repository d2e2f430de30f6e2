//! hookgate: a verifying ingress gateway for webhooks. See `docs/ARCHITECTURE.md` for the
//! request's path through these modules and the guarantees each one keeps.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod forward;
pub mod ingress;
pub mod store;
pub mod telemetry;
pub mod verify;
