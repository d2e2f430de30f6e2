//! The TOML as written: a serde mirror of SPEC §3 with `deny_unknown_fields` everywhere, so a
//! typo in a security setting is an error, never silently ignored. Every value is kept as the
//! user wrote it; `validate` turns this into typed values and reports every problem at once.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body: Option<String>,
    pub admin_token: Option<String>,
    pub public_url: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub retention: Option<String>,
    /// Embedded only: SQLite page size of a store created from now on.
    pub page_size: Option<String>,
    /// Embedded only: disk space kept free; below it new events get 503 (`"0"` turns it off).
    pub min_free_space: Option<String>,
    pub key_prefix: Option<String>,
    /// Redis only: how long a leased delivery may go without its replica's heartbeat before
    /// another replica takes it over.
    pub visibility_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub mode: Option<String>,
    pub max_body: Option<String>,
    pub allow_ips: Option<Vec<String>>,
    pub rate_limit: Option<RawRateLimit>,
    pub verify: Option<RawVerify>,
    pub dedupe: Option<RawDedupe>,
    pub forward: Option<RawForward>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: u32,
    pub burst: Option<u32>,
}

/// Every key any scheme takes; each scheme's builder says which it uses and rejects the rest.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub scheme: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub public_key: Option<String>,
    pub verify_token: Option<String>,
    pub signature_header: Option<String>,
    pub timestamp_header: Option<String>,
    pub signed_payload: Option<String>,
    pub id_header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub signature_prefix: Option<String>,
    pub tolerance: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    pub key: Option<String>,
    pub ttl: Option<String>,
    pub required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub url: Option<String>,
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
    pub max_age: Option<String>,
    pub concurrency: Option<usize>,
    /// Queue sinks (SPEC §6).
    pub stream: Option<String>,
    pub maxlen: Option<u64>,
    pub subject: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub sign: Option<RawForwardSign>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardSign {
    pub scheme: String,
    pub secret: String,
}
