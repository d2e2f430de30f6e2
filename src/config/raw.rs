//! The TOML as written: a serde mirror of SPEC §3 with `deny_unknown_fields` everywhere, so a
//! typo in a security setting is an error, never silently ignored. Every value is kept as the
//! user wrote it; `validate` turns this into typed values and reports every problem at once.

use serde::Deserialize;

/// The keys that hold secrets (or `env:`/`file:` specs of them), as key paths without
/// indices. A parse error at one of them never quotes the value written there.
pub const SECRET_KEYS: &[&str] = &[
    "server.admin_token",
    "route.verify.secrets",
    "route.verify.verify_token",
    "route.forward.sign.secret",
];

/// Whether the key path of a parse error (`route[0].verify.secrets[1]`) is a secret's.
pub fn holds_secret(path: &str) -> bool {
    let mut bare = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => bare.push(c),
            _ => {}
        }
    }
    SECRET_KEYS.contains(&bare.as_str())
}

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
    pub max_body_memory: Option<String>,
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

#[cfg(test)]
mod tests {
    #[test]
    fn secret_keys_are_recognised_at_any_index() {
        for path in [
            "server.admin_token",
            "route[0].verify.secrets",
            "route[12].verify.secrets[3]",
            "route[0].verify.verify_token",
            "route[1].forward.sign.secret",
        ] {
            assert!(super::holds_secret(path), "{path}");
        }
        for path in [
            "route[0].verify.scheme",
            "server.listen",
            "route[0].forward.url",
        ] {
            assert!(!super::holds_secret(path), "{path}");
        }
    }
}
