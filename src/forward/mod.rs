//! Delivery: a worker per route leases due events from the store and hands each to the
//! route's `Sink` (HTTP upstream or a queue). Errors are classified where they are born (the
//! sink says retryable or permanent); `retry` decides when; the worker records every attempt
//! and the state it leaves the event in before releasing the lease.
//!
//! Promises: an event is settled (delivered, rescheduled or dead) only after its attempt is
//! recorded; an attempt interrupted by a crash is simply made again after restart (at least
//! once), always with the same `Hookgate-Event-Id`.

pub mod amqp;
pub mod circuit;
pub mod http;
pub mod nats;
pub mod redis_stream;
pub mod retry;
pub mod sign;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{ForwardSign, RouteConfig, SinkTarget};
use crate::store::Event;

/// What a successful attempt returned, for the attempt log.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub status: Option<u16>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryError {
    /// Worth trying again later (5xx, 408/425/429, connection errors, timeouts, broker down).
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Trying again cannot help (other 4xx, no such stream/exchange): dead at once.
    Permanent { status: Option<u16>, detail: String },
}

impl DeliveryError {
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Retryable { status, .. } | DeliveryError::Permanent { status, .. } => {
                *status
            }
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            DeliveryError::Retryable { detail, .. } | DeliveryError::Permanent { detail, .. } => {
                detail
            }
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn kind(&self) -> &'static str;
    /// One attempt (`attempt` is 1-based over the event's life). The worker bounds it with
    /// `forward.timeout`.
    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError>;
}

/// Builds the sink named by the route's `forward.url`.
pub async fn build_sink(route: &Arc<RouteConfig>) -> anyhow::Result<Arc<dyn Sink>> {
    match &route.forward.target {
        SinkTarget::Http { url } => Ok(Arc::new(http::HttpSink::new(route, url.clone())?)),
        SinkTarget::RedisStream {
            url,
            stream,
            maxlen,
        } => Ok(Arc::new(redis_stream::RedisStreamSink::new(
            route, url, stream, *maxlen,
        )?)),
        SinkTarget::Nats { url, subject } => {
            Ok(Arc::new(nats::NatsSink::new(route, url, subject)?))
        }
        SinkTarget::Amqp {
            url,
            exchange,
            routing_key,
        } => Ok(Arc::new(amqp::AmqpSink::new(
            route,
            url,
            exchange,
            routing_key,
        )?)),
    }
}

/// What `hookgate check` adds to the generic URL check: the sink's own client must accept the
/// URL (Redis database number, AMQP vhost and query options, NATS address), so `serve` never
/// fails on a URL that `check` passed. Returns the offending key (`url`, `maxlen`) and why;
/// messages never repeat the URL's password.
pub fn check_target(target: &SinkTarget) -> Result<(), (&'static str, String)> {
    let bad_url = |kind: &str, url: &str, e: &dyn std::fmt::Display| {
        // A parser may quote the URL (lapin's: "Invalid URL: '…'"): never its password.
        let e = e.to_string().replace(url, &redact_url(url));
        (
            "url",
            format!("invalid {kind} URL {}: {e}", redact_url(url)),
        )
    };
    match target {
        SinkTarget::Http { .. } => Ok(()),
        SinkTarget::RedisStream {
            maxlen: Some(0), ..
        } => Err((
            "maxlen",
            "must be at least 1 (0 would trim every event away as soon as it is added)".into(),
        )),
        SinkTarget::RedisStream { url, .. } => redis::Client::open(url.as_str())
            .map(|_| ())
            .map_err(|e| bad_url("redis", url, &e)),
        SinkTarget::Nats { url, .. } => nats::split_credentials(url)
            .and_then(|(addr, _)| {
                addr.parse::<async_nats::ServerAddr>()
                    .map_err(|e| e.to_string())
            })
            .map(|_| ())
            .map_err(|e| bad_url("NATS", url, &e)),
        SinkTarget::Amqp { url, .. } => match amqp::parse_uri(url) {
            Err(e) => Err(bad_url("AMQP", url, &e)),
            Ok(u) if u.query.connection_timeout == Some(0) => Err(bad_url(
                "AMQP",
                url,
                &"connection_timeout=0 would fail every connect (leave it out: the attempt's \
                  time left bounds the connect)",
            )),
            Ok(_) => Ok(()),
        },
    }
}

/// The metadata a queue message carries as headers (SPEC §6): the original headers minus
/// hop-by-hop ones, `Host` and client-sent `Hookgate-*`, plus the gateway's own, with names in
/// the conventional `Title-Case` (`Hookgate-Event-Id`, `Content-Type`). Same as the HTTP sink.
/// With `[route.forward.sign]`, fresh signature headers of that scheme too.
pub fn message_headers(
    ev: &Event,
    route: &str,
    attempt: u32,
    sign: Option<&ForwardSign>,
) -> Vec<(String, Vec<u8>)> {
    let mut h = http::forward_headers(ev, route, attempt);
    if let Some(s) = sign {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        sign::sign(&s.scheme, &s.secret, &ev.id, now, &ev.body, &mut h);
    }
    h.iter()
        .map(|(k, v)| (title_case(k.as_str()), v.as_bytes().to_vec()))
        .collect()
}

/// `hookgate-event-id` → `Hookgate-Event-Id`.
pub fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = true;
    for c in name.chars() {
        out.push(if up { c.to_ascii_uppercase() } else { c });
        up = c == '-';
    }
    out
}

/// A URL with any password replaced, for logs and attempt details (secrets never appear). A
/// user name without a password is replaced too: NATS takes it as a token (`nats://token@h`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        // `scheme:user:pass@host` parses with no authority: all of it is the path.
        Ok(u) if u.cannot_be_a_base() => format!("{}:(not shown)", u.scheme()),
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            } else if !u.username().is_empty() {
                let _ = u.set_username("redacted");
            }
            u.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

/// Cuts a response body or error to at most 1 KiB (on a char boundary) for the attempt log,
/// saying so at its end when anything was cut.
pub fn truncate_detail(s: &str) -> String {
    const MAX: usize = 1024;
    const CUT: &str = " [… cut to 1 KiB]";
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX - CUT.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &s[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_cut_to_1_kib_says_so() {
        let short = "x".repeat(1024);
        assert_eq!(truncate_detail(&short), short, "nothing cut, nothing said");
        for long in ["y".repeat(1025), "é".repeat(600)] {
            let cut = truncate_detail(&long);
            assert!(cut.len() <= 1024, "{}", cut.len());
            assert!(cut.ends_with(" [… cut to 1 KiB]"), "{cut}");
            assert!(long.starts_with(cut.trim_end_matches(" [… cut to 1 KiB]")));
        }
    }

    fn redis(url: &str, maxlen: Option<u64>) -> SinkTarget {
        SinkTarget::RedisStream {
            url: url.into(),
            stream: "s".into(),
            maxlen,
        }
    }

    #[test]
    fn check_target_uses_each_clients_parser_and_hides_passwords() {
        assert!(check_target(&redis("redis://127.0.0.1/0", Some(10))).is_ok());
        assert_eq!(
            check_target(&redis("redis://h/0", Some(0))).unwrap_err().0,
            "maxlen"
        );
        let (key, msg) = check_target(&redis("redis://:hunter2@h/notadb", None)).unwrap_err();
        assert_eq!(key, "url");
        assert!(!msg.contains("hunter2"), "{msg}");
        let amqp = SinkTarget::Amqp {
            url: "amqp://u:hunter2@h:5672/%2f?heartbeat=soon".into(),
            exchange: String::new(),
            routing_key: "q".into(),
        };
        let (key, msg) = check_target(&amqp).unwrap_err();
        assert_eq!(key, "url");
        assert!(!msg.contains("hunter2"), "{msg}");
        for (url, says) in [
            ("amqp:u:hunter2@h", "Invalid URL"),
            (
                "amqp://u:hunter2@h/%2f?connection_timeout=0",
                "connection_timeout=0",
            ),
        ] {
            let amqp = SinkTarget::Amqp {
                url: url.into(),
                exchange: String::new(),
                routing_key: "q".into(),
            };
            let (key, msg) = check_target(&amqp).unwrap_err();
            assert_eq!(key, "url");
            assert!(msg.contains(says) && !msg.contains("hunter2"), "{msg}");
        }
        let nats = SinkTarget::Nats {
            url: "nats://127.0.0.1:4222".into(),
            subject: "a.b".into(),
        };
        assert!(check_target(&nats).is_ok());
    }

    #[test]
    fn redact_url_hides_passwords_and_tokens() {
        assert_eq!(
            redact_url("nats://u:hunter2@h:4222"),
            "nats://u:redacted@h:4222"
        );
        assert_eq!(redact_url("nats://s3cr3t@h:4222"), "nats://redacted@h:4222");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[test]
    fn header_names_in_title_case() {
        assert_eq!(title_case("hookgate-event-id"), "Hookgate-Event-Id");
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x"), "X");
    }
}
