//! Configuration: `raw` mirrors the TOML, `validate` turns it into the typed values below,
//! reporting every problem with its key path (`route[0].verify.secrets[0]: …`). Nothing
//! downstream re-parses a string per request: durations, sizes, header names, URLs, secrets
//! and the verifier itself are built here, once.

pub mod raw;
pub mod secret;
mod tls;
pub mod units;
mod validate;
pub mod watch;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

pub use secret::Secret;
pub(crate) use validate::resolve_secret as resolve_secret_at;
pub use validate::validate;

use crate::verify::Verifier;

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub routes: Vec<Arc<RouteConfig>>,
    /// The files this config was read from (its own first when it came from a file, then
    /// `file:` secrets, keys and URLs, the TLS certificate, key and client CA), each with a
    /// digest of the content read: `serve` reloads when one of them changes.
    pub files: watch::Files,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body: usize,
    /// Bytes of request bodies held at once, all routes together (the rest get 503).
    /// Applied on reload.
    pub max_body_memory: usize,
    pub admin_token: Option<Secret>,
    pub public_url: Option<String>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// `[server.tls]`, loaded and checked.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// How long delivered and dead events (and their attempt logs) are kept.
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub enum StoreBackend {
    Embedded {
        path: PathBuf,
        /// SQLite page size for a store created by this run; an existing store keeps its own.
        page_size: u32,
        /// Bytes the store's filesystem keeps available: below it new events are refused
        /// (503) while deliveries, purges and checkpoints go on; 0 turns the check off.
        /// Applied on reload.
        min_free_space: u64,
    },
    Redis {
        url: String,
        key_prefix: String,
        /// A leased delivery without its replica's heartbeat this long is taken over.
        visibility_timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record, answer 202, deliver later.
    Async,
    /// Verify, forward at once and relay the upstream's answer.
    Proxy,
}

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    pub methods: Vec<Method>,
    pub mode: Mode,
    pub max_body: usize,
    pub allow_ips: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    pub verifier: Arc<dyn Verifier>,
    pub dedupe: DedupeConfig,
    pub forward: ForwardConfig,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct DedupeConfig {
    pub key: DedupeKeySpec,
    pub ttl: Duration,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DedupeKeySpec {
    /// The verifier's event id; for generic `hmac`, the `Idempotency-Key` header; else the
    /// body's SHA-256 (SPEC §3).
    Auto,
    Header(HeaderName),
    /// An RFC 6901 JSON pointer into the body.
    Json(String),
    BodySha256,
    None,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub target: SinkTarget,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_age: Option<Duration>,
    pub concurrency: usize,
    pub sign: Option<ForwardSign>,
}

/// The sink, chosen by `forward.url`'s scheme (SPEC §6).
#[derive(Debug, Clone)]
pub enum SinkTarget {
    Http {
        url: reqwest::Url,
    },
    RedisStream {
        url: String,
        stream: String,
        maxlen: Option<u64>,
    },
    Nats {
        url: String,
        subject: String,
    },
    Amqp {
        url: String,
        exchange: String,
        routing_key: String,
    },
}

impl SinkTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::Http { .. } => "http",
            SinkTarget::RedisStream { .. } => "redis",
            SinkTarget::Nats { .. } => "nats",
            SinkTarget::Amqp { .. } => "amqp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ForwardSign {
    pub scheme: String,
    /// The signing key, ready: for `standard-webhooks` already decoded from `whsec_<base64>`
    /// (`forward::sign::signing_key`).
    pub secret: Secret,
}

/// Every problem found in a config, errors and warnings, each with its key path.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Files read while validating (see [`Config::files`]).
    pub files: watch::Files,
}

impl Problems {
    /// Notes a file the config read and what it held (`None`: it could not be read), for
    /// `serve` to watch.
    pub fn reads(&mut self, path: &str, content: Option<&[u8]>) {
        let path = PathBuf::from(path);
        if !self.files.iter().any(|(p, _)| p == &path) {
            self.files.push((path, content.and_then(watch::seen)));
        }
    }

    /// [`secret::resolve`], noting a file it reads.
    pub fn resolve(&mut self, spec: &str) -> Result<(Secret, secret::SecretSource), String> {
        secret::resolve_noting(spec, &mut |path, bytes| self.reads(path, bytes))
    }

    pub fn error(&mut self, path: impl fmt::Display, msg: impl fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    pub fn warn(&mut self, path: impl fmt::Display, msg: impl fmt::Display) {
        self.warnings.push(format!("{path}: {msg}"));
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads, parses and validates a config file. On success returns the warnings too.
/// Its own file comes first in what it notes as read, also when it is refused (so `serve`
/// watches what a refused reload read, and a fix to any of it is taken up).
pub fn load(path: &Path) -> Result<(Config, Vec<String>), Problems> {
    let own = |content: Option<&[u8]>| (path.to_path_buf(), content.and_then(watch::seen));
    let refused = |e: &str, content: Option<&[u8]>| {
        let mut p = Problems::default();
        p.error(path.display(), format!("cannot read config: {e}"));
        p.files.push(own(content));
        p
    };
    let bytes = watch::read_file(path).map_err(|e| refused(&e.to_string(), None))?;
    // Noted with what it held, so a file that is not text is not taken for a new change at
    // every poll.
    let text = String::from_utf8(bytes)
        .map_err(|e| refused("it is not UTF-8 text", Some(e.as_bytes())))?;
    match parse(&text) {
        Ok((mut config, warnings)) => {
            config.files.insert(0, own(Some(text.as_bytes())));
            Ok((config, warnings))
        }
        Err(mut p) => {
            p.files.insert(0, own(Some(text.as_bytes())));
            Err(p)
        }
    }
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<(Config, Vec<String>), Problems> {
    validate(parse_raw(text)?)
}

/// Parses config text into its raw mirror, without validating it (the admin client reads
/// only `[server]`). A type error at a key that holds a secret names the key and the expected
/// type, never the value written there.
pub fn parse_raw(text: &str) -> Result<raw::RawConfig, Problems> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut p = Problems::default();
        let path = e.path().to_string();
        let inner = e.into_inner();
        // One line per problem: toml's syntax messages span two ("invalid array\nexpected `]`").
        let msg = readable(&path, &inner.message().trim().replace('\n', ": "));
        let msg = if raw::holds_secret(&path) {
            redact_value(&msg)
        } else {
            msg
        };
        let line = inner
            .span()
            .map(|s| {
                format!(
                    " (line {})",
                    text[..s.start.min(text.len())].matches('\n').count() + 1
                )
            })
            .unwrap_or_default();
        let path = if path == "." || path.is_empty() {
            "config".to_string()
        } else {
            path
        };
        p.error(path, format!("{msg}{line}"));
        p
    })
}

/// serde's wording in the user's terms: `expected struct RawRateLimit` names a type of ours, not
/// a TOML table; `[route]` written for `[[route]]` gets the fix spelled out.
fn readable(path: &str, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("struct Raw") {
        out.push_str(&rest[..i]);
        out.push_str("a table");
        rest =
            rest[i + "struct Raw".len()..].trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    }
    out.push_str(rest);
    if path == "route" && out.contains("expected a sequence") {
        out.push_str(": write [[route]], with double brackets, for each route");
    }
    out
}

/// serde's `invalid type: string "hunter2", expected a sequence` without the value:
/// `invalid type: string (value not shown), expected a sequence`. Any other message at a
/// secret's key is replaced whole, since it might quote the value too.
fn redact_value(msg: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        let Some(rest) = msg.strip_prefix(lead) else {
            continue;
        };
        // The expectation comes last and is the target type's own text, so the last
        // ", expected " is the separator even when the value contains one.
        let Some(sep) = rest.rfind(", expected ") else {
            break;
        };
        let kind = rest[..sep]
            .split(['"', '`', '\''])
            .next()
            .unwrap_or_default()
            .trim();
        let kind = if kind.is_empty() { "value" } else { kind };
        return format!("{lead}{kind} (value not shown){}", &rest[sep..]);
    }
    "invalid value (not shown: this key holds a secret)".to_string()
}
