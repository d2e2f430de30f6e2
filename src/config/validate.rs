//! Raw → validated. Each `check_*` function reads one raw section, records every problem in
//! `Problems` with its key path, and returns the typed value (or `None` when it could not).
//! Validation continues past the first error so `hookgate check` reports them all at once.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

use super::raw::*;
use super::secret::SecretSource;
use super::units::{parse_duration, parse_size};
use super::*;
use crate::verify;

pub fn validate(raw: RawConfig) -> Result<(Config, Vec<String>), Problems> {
    let mut p = Problems::default();
    let server = check_server(&raw.server, &mut p);
    let store = check_store(&raw.store, &mut p);
    let public_url = server.as_ref().and_then(|s| s.public_url.clone());
    let default_max_body = server.as_ref().map(|s| s.max_body).unwrap_or(1 << 20);

    if raw.routes.is_empty() {
        p.error("route", "at least one [[route]] is required");
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("route[{i}]");
        // As written, whatever else is wrong with the route: every problem at once (SPEC §2).
        if let Some(name) = &r.name {
            if !names.insert(name.clone()) {
                p.error(
                    format!("{at}.name"),
                    format!("duplicate route name {name:?}"),
                );
            }
        }
        if let Some(path) = &r.path {
            if !paths.insert(path.clone()) {
                p.error(
                    format!("{at}.path"),
                    format!("duplicate route path {path:?}"),
                );
            }
        }
        if let Some(route) = check_route(r, &at, public_url.as_deref(), default_max_body, &mut p) {
            // A route without its own max_body takes server.max_body, checked with the server.
            if let (Some(server), Some(_)) = (&server, &r.max_body) {
                if route.max_body > server.max_body_memory {
                    p.error(
                        format!("{at}.max_body"),
                        over_body_memory(route.max_body, server.max_body_memory),
                    );
                }
            }
            if let Some(store) = &store {
                let keeps_keys =
                    route.mode == Mode::Async && !matches!(route.dedupe.key, DedupeKeySpec::None);
                if keeps_keys && route.dedupe.ttl > store.retention {
                    p.warn(
                        format!("{at}.dedupe.ttl"),
                        format!(
                            "is longer than store.retention ({}): a duplicate of a delivered event that was purged is answered with an event id the admin API no longer knows",
                            humantime::format_duration(store.retention)
                        ),
                    );
                }
            }
            routes.push(Arc::new(route));
        }
    }

    match (server, store) {
        (Some(server), Some(store)) if p.errors.is_empty() => Ok((
            Config {
                server,
                store,
                routes,
                files: p.files,
            },
            p.warnings,
        )),
        _ => Err(p),
    }
}

fn duration(v: &Option<String>, at: &str, default: Duration, p: &mut Problems) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                p.error(at, e);
                default
            }
        },
    }
}

/// A duration where 0 would break something (a timeout that fires at once, a TTL every key is
/// born past); keys where 0 has a meaning use `duration`.
fn nonzero_duration(v: &Option<String>, at: &str, default: Duration, p: &mut Problems) -> Duration {
    let d = duration(v, at, default, p);
    if d.is_zero() {
        p.error(at, "must be greater than 0");
    }
    d
}

/// `server.max_body_memory` when not set: 64 bodies of the default 1 MiB limit at once.
const DEFAULT_MAX_BODY_MEMORY: usize = 64 << 20;

fn over_body_memory(max_body: usize, max_body_memory: usize) -> String {
    format!(
        "{max_body} bytes is more than server.max_body_memory ({max_body_memory} bytes, for all bodies being received at once), so no such body could be taken; raise server.max_body_memory"
    )
}

fn size(v: &Option<String>, at: &str, default: usize, p: &mut Problems) -> usize {
    match v {
        None => default,
        Some(s) => match parse_size(s) {
            Ok(0) => {
                p.error(at, "must be greater than 0");
                default
            }
            Ok(n) => n,
            Err(e) => {
                p.error(at, e);
                default
            }
        },
    }
}

fn addr(v: &Option<String>, at: &str, default: &str, p: &mut Problems) -> Option<SocketAddr> {
    let s = v.as_deref().unwrap_or(default);
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.error(
                at,
                format!("invalid address {s:?} (expected host:port, e.g. 0.0.0.0:8080)"),
            );
            None
        }
    }
}

/// Hides a URL's credentials (`scheme://user:pass@host` → `scheme://***@host`), by text, so
/// it works on a URL that does not parse — error messages never carry a password.
pub(crate) fn mask_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

/// A URL that may carry credentials (`store.url`, `forward.url`): `env:NAME` or `file:/path`
/// for the whole URL (so a broker's password need not sit in the config file), or a literal,
/// warned about when it holds a password. Errors never quote the value.
pub(crate) fn resolve_url(spec: &str, at: &str, p: &mut Problems) -> Option<String> {
    if !(spec.starts_with("env:") || spec.starts_with("file:")) {
        // A NATS URL's user without a password is a token.
        let secret = |u: reqwest::Url| {
            u.password().is_some()
                || (matches!(u.scheme(), "nats" | "tls") && !u.username().is_empty())
        };
        if reqwest::Url::parse(spec).is_ok_and(secret) {
            p.warn(
                at,
                "the URL's password is a literal in the config file; prefer \"env:NAME\" or \"file:/path\" for the whole URL",
            );
        }
        return Some(spec.to_string());
    }
    match p.resolve(spec) {
        Ok((s, _)) => match std::str::from_utf8(s.expose()) {
            Ok(url) => Some(url.trim().to_string()),
            Err(_) => {
                p.error(at, "the URL it names is not UTF-8 text");
                None
            }
        },
        Err(e) => {
            p.error(at, e);
            None
        }
    }
}

/// Resolves a secret spec, warning on a literal (it ends up in the config file).
pub(crate) fn resolve_secret(spec: &str, at: &str, p: &mut Problems) -> Option<Secret> {
    match p.resolve(spec) {
        Ok((s, SecretSource::Literal)) => {
            p.warn(
                at,
                "secret is a literal in the config file; prefer \"env:NAME\" or \"file:/path\"",
            );
            Some(s)
        }
        Ok((s, _)) if s.expose().contains(&b'\n') => {
            // Two secrets in one file (the old and the new one, mid-rotation) would be used as
            // one secret with a newline in it, and every request would get 401.
            p.warn(
                at,
                "holds more than one line; it is used whole, as one secret: put each secret in a file (or variable) of its own and list them all",
            );
            Some(s)
        }
        Ok((s, _)) => Some(s),
        Err(e) => {
            p.error(at, e);
            None
        }
    }
}

fn cidrs(list: &[String], at: &str, p: &mut Problems) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        if let Ok(net) = s.parse::<IpNet>() {
            out.push(net);
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            out.push(IpNet::from(ip));
        } else {
            p.error(
                format!("{at}[{i}]"),
                format!("invalid CIDR or IP address {s:?}"),
            );
        }
    }
    out
}

fn check_server(s: &RawServer, p: &mut Problems) -> Option<ServerConfig> {
    let listen = addr(&s.listen, "server.listen", "0.0.0.0:8080", p);
    let admin_listen = addr(&s.admin_listen, "server.admin_listen", "127.0.0.1:9090", p);
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        // Either side on the unspecified address takes the port on every interface.
        let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        if a.port() != 0 && a.port() == b.port() && overlap {
            p.error(
                "server.admin_listen",
                "must differ from server.listen: admin endpoints stay off the public port",
            );
        }
    }
    let public_url = s
        .public_url
        .as_ref()
        .and_then(|u| match reqwest::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                Some(u.trim_end_matches('/').to_string())
            }
            _ => {
                p.error(
                    "server.public_url",
                    format!(
                        "invalid URL {:?} (expected http(s)://host)",
                        mask_userinfo(u)
                    ),
                );
                None
            }
        });
    let tls = s.tls.as_ref().and_then(|t| super::tls::check(t, p));
    let admin_token = s
        .admin_token
        .as_ref()
        .and_then(|t| resolve_secret(t, "server.admin_token", p));
    let before = p.errors.len();
    let max_body = size(&s.max_body, "server.max_body", 1 << 20, p);
    let body_ok = p.errors.len() == before;
    let before = p.errors.len();
    let max_body_memory = size(
        &s.max_body_memory,
        "server.max_body_memory",
        DEFAULT_MAX_BODY_MEMORY,
        p,
    );
    // Compared only as the user set them (or their defaults), not a fallback after an error.
    let memory_ok = p.errors.len() == before;
    if body_ok && memory_ok && max_body > max_body_memory {
        p.error(
            "server.max_body",
            over_body_memory(max_body, max_body_memory),
        );
    }
    if !memory_ok {
        return None;
    }
    Some(ServerConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        max_body,
        max_body_memory,
        admin_token,
        public_url,
        header_timeout: nonzero_duration(
            &s.header_timeout,
            "server.header_timeout",
            Duration::from_secs(10),
            p,
        ),
        body_timeout: nonzero_duration(
            &s.body_timeout,
            "server.body_timeout",
            Duration::from_secs(30),
            p,
        ),
        // 0 is meaningful: stop at once; unfinished deliveries are durable and run again.
        shutdown_grace: duration(
            &s.shutdown_grace,
            "server.shutdown_grace",
            Duration::from_secs(30),
            p,
        ),
        tls,
        trusted_proxies: cidrs(
            s.trusted_proxies.as_deref().unwrap_or(&[]),
            "server.trusted_proxies",
            p,
        ),
    })
}

fn check_store(s: &RawStore, p: &mut Problems) -> Option<StoreConfig> {
    // 0 is valid: delivered events (and their payloads) go at the next purge; retention never
    // purges pending or dead events.
    let retention = duration(
        &s.retention,
        "store.retention",
        Duration::from_secs(72 * 3600),
        p,
    );
    let backend = match s.backend.as_deref().unwrap_or("embedded") {
        "embedded" => {
            if s.url.is_some() {
                p.error("store.url", "only used with backend = \"redis\"");
            }
            if s.key_prefix.is_some() {
                p.error("store.key_prefix", "only used with backend = \"redis\"");
            }
            if s.visibility_timeout.is_some() {
                p.error(
                    "store.visibility_timeout",
                    "only used with backend = \"redis\"",
                );
            }
            let page_size = size(
                &s.page_size,
                "store.page_size",
                crate::store::embedded::DEFAULT_PAGE_SIZE as usize,
                p,
            );
            if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
                p.error(
                    "store.page_size",
                    format!("{page_size} bytes: SQLite takes a power of two from 512 to 65536 (\"4KiB\", \"16KiB\")"),
                );
            }
            // 0 is a valid value here (the check is off), so not through `size`.
            let min_free_space = match &s.min_free_space {
                None => crate::store::embedded::DEFAULT_MIN_FREE_SPACE,
                Some(v) => match parse_size(v) {
                    Ok(n) => n as u64,
                    Err(e) => {
                        p.error("store.min_free_space", e);
                        crate::store::embedded::DEFAULT_MIN_FREE_SPACE
                    }
                },
            };
            StoreBackend::Embedded {
                path: PathBuf::from(s.path.as_deref().unwrap_or("./hookgate-data")),
                page_size: u32::try_from(page_size)
                    .unwrap_or(crate::store::embedded::DEFAULT_PAGE_SIZE),
                min_free_space,
            }
        }
        "redis" => {
            if s.path.is_some() {
                p.error("store.path", "only used with backend = \"embedded\"");
            }
            if s.page_size.is_some() {
                p.error("store.page_size", "only used with backend = \"embedded\"");
            }
            if s.min_free_space.is_some() {
                p.error(
                    "store.min_free_space",
                    "only used with backend = \"embedded\"",
                );
            }
            let url = match &s.url {
                Some(spec) => resolve_url(spec, "store.url", p),
                None => {
                    // SPEC's default; said out loud, since several replicas must share one
                    // Redis and a local one on each would silently split them.
                    p.warn(
                        "store.url",
                        "not set: using the local Redis, redis://127.0.0.1:6379/0",
                    );
                    Some("redis://127.0.0.1:6379/0".to_string())
                }
            };
            if let Some(u) = &url {
                let expected =
                    "expected redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS";
                match reqwest::Url::parse(u) {
                    Ok(parsed)
                        if matches!(parsed.scheme(), "redis" | "rediss")
                            && parsed.host_str().is_some_and(|h| !h.is_empty()) =>
                    {
                        // As the Redis client reads it.
                        let db = parsed.path().trim_matches('/');
                        if !db.is_empty() && db.parse::<i64>().is_err() {
                            p.error(
                                "store.url",
                                format!(
                                    "invalid Redis URL {:?}: the path is the database number, not {db:?}",
                                    mask_userinfo(u)
                                ),
                            );
                        }
                    }
                    Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => p.error(
                        "store.url",
                        format!(
                            "invalid Redis URL {:?}: no host ({expected})",
                            mask_userinfo(u)
                        ),
                    ),
                    _ => p.error(
                        "store.url",
                        format!("invalid Redis URL {:?} ({expected})", mask_userinfo(u)),
                    ),
                }
            }
            let url = url.unwrap_or_default();
            let key_prefix = s.key_prefix.clone().unwrap_or_else(|| "hookgate".into());
            if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
                p.error(
                    "store.key_prefix",
                    format!("{key_prefix:?} must be non-empty and contain no braces (they are the key's hash tag)"),
                );
            }
            let visibility_timeout = duration(
                &s.visibility_timeout,
                "store.visibility_timeout",
                crate::store::redis::DEFAULT_VISIBILITY_TIMEOUT,
                p,
            );
            if visibility_timeout < Duration::from_secs(1) {
                p.error("store.visibility_timeout", "must be at least 1s");
            }
            StoreBackend::Redis {
                url,
                key_prefix,
                visibility_timeout,
            }
        }
        other => {
            p.error(
                "store.backend",
                format!("unknown backend {other:?} (expected \"embedded\" or \"redis\")"),
            );
            return None;
        }
    };
    Some(StoreConfig { backend, retention })
}

fn check_route(
    r: &RawRoute,
    at: &str,
    public_url: Option<&str>,
    default_max_body: usize,
    p: &mut Problems,
) -> Option<RouteConfig> {
    let name = match r.name.as_deref() {
        None => {
            p.error(format!("{at}.name"), "is required");
            None
        }
        Some(n)
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            p.error(
                format!("{at}.name"),
                format!("{n:?} must be non-empty and use only A-Z a-z 0-9 - _"),
            );
            None
        }
        // The label of requests no route matched, in metrics and logs.
        Some("unmatched") => {
            p.error(
                format!("{at}.name"),
                "\"unmatched\" is reserved: it labels the requests no route matched",
            );
            None
        }
        Some(n) => Some(n.to_string()),
    };
    let path = match r.path.as_deref() {
        None => {
            p.error(format!("{at}.path"), "is required");
            None
        }
        Some(s) if !s.starts_with('/') || s.contains('?') || s.contains('#') => {
            p.error(
                format!("{at}.path"),
                format!("{s:?} must start with / and have no query or fragment"),
            );
            None
        }
        Some(s) => Some(s.to_string()),
    };
    let mode = match r.mode.as_deref().unwrap_or("async") {
        "async" => Mode::Async,
        "proxy" => Mode::Proxy,
        other => {
            p.error(
                format!("{at}.mode"),
                format!("unknown mode {other:?} (expected \"async\" or \"proxy\")"),
            );
            Mode::Async
        }
    };
    let verifier = match &r.verify {
        None => {
            p.error(
                format!("{at}.verify"),
                "is required; an unverified route must say scheme = \"none\"",
            );
            None
        }
        Some(v) => verify::build(
            v,
            &verify::BuildCtx { public_url },
            &format!("{at}.verify"),
            p,
        ),
    };
    // The verifier reads `tolerance`; 0 would reject every request that took a second to arrive.
    if let Some(Ok(t)) = r
        .verify
        .as_ref()
        .and_then(|v| v.tolerance.as_deref())
        .map(parse_duration)
    {
        if t.is_zero() {
            p.error(format!("{at}.verify.tolerance"), "must be greater than 0");
        }
    }
    let methods = check_methods(r.methods.as_deref(), verifier.as_deref(), at, p);
    let dedupe = check_dedupe(r.dedupe.as_ref(), &format!("{at}.dedupe"), p);
    if mode == Mode::Proxy {
        // Nothing is recorded, so there is nothing to find a copy in; `required` still refuses
        // a request without the key (SPEC §5: every rejection row stays in proxy mode).
        let d = r.dedupe.as_ref();
        // `key` names what `required` demands, so it is used then.
        let required = d.is_some_and(|d| d.required == Some(true));
        for (key, set) in [
            ("key", d.is_some_and(|d| d.key.is_some() && !required)),
            ("ttl", d.is_some_and(|d| d.ttl.is_some())),
        ] {
            if set {
                p.warn(
                    format!("{at}.dedupe.{key}"),
                    "is not used with mode = \"proxy\": nothing is recorded, so copies are forwarded too (only `required` applies: a request without the key is refused)",
                );
            }
        }
    }
    let forward = match &r.forward {
        None => {
            p.error(format!("{at}.forward"), "is required");
            None
        }
        Some(f) => check_forward(f, &format!("{at}.forward"), mode, p),
    };
    let rate_limit = r.rate_limit.as_ref().and_then(|rl| {
        if rl.per_second == 0 {
            p.error(
                format!("{at}.rate_limit.per_second"),
                "must be greater than 0",
            );
            return None;
        }
        let burst = rl.burst.unwrap_or(rl.per_second);
        if burst == 0 {
            p.error(format!("{at}.rate_limit.burst"), "must be greater than 0");
            return None;
        }
        Some(RateLimit {
            per_second: rl.per_second,
            burst,
        })
    });
    Some(RouteConfig {
        max_body: size(&r.max_body, &format!("{at}.max_body"), default_max_body, p),
        allow_ips: cidrs(
            r.allow_ips.as_deref().unwrap_or(&[]),
            &format!("{at}.allow_ips"),
            p,
        ),
        name: name?,
        path: path?,
        methods,
        mode,
        rate_limit,
        verifier: verifier?,
        dedupe,
        forward: forward?,
    })
}

fn check_methods(
    list: Option<&[String]>,
    verifier: Option<&dyn verify::Verifier>,
    at: &str,
    p: &mut Problems,
) -> Vec<Method> {
    let Some(list) = list else {
        let mut m = vec![Method::POST];
        if let Some(v) = verifier {
            m.extend(v.extra_methods().iter().cloned());
        }
        return m;
    };
    if list.is_empty() {
        p.error(format!("{at}.methods"), "must name at least one method");
    }
    list.iter()
        .enumerate()
        .filter_map(
            |(i, m)| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    p.error(
                        format!("{at}.methods[{i}]"),
                        format!("invalid HTTP method {m:?}"),
                    );
                    None
                }
            },
        )
        .collect()
}

fn check_dedupe(d: Option<&RawDedupe>, at: &str, p: &mut Problems) -> DedupeConfig {
    let default = RawDedupe::default();
    let d = d.unwrap_or(&default);
    let key = match d.key.as_deref().unwrap_or("auto") {
        "auto" => DedupeKeySpec::Auto,
        "body-sha256" => DedupeKeySpec::BodySha256,
        "none" => DedupeKeySpec::None,
        k if k.starts_with("header:") => {
            match HeaderName::from_bytes(k["header:".len()..].trim().as_bytes()) {
                Ok(h) => DedupeKeySpec::Header(h),
                Err(_) => {
                    p.error(format!("{at}.key"), format!("invalid header name in {k:?}"));
                    DedupeKeySpec::Auto
                }
            }
        }
        k if k.starts_with("json:") => {
            let ptr = &k["json:".len()..];
            // RFC 6901: `~` only as `~0` (a ~) or `~1` (a /); anything else would match no
            // body, and a required key would refuse every request.
            let bad_escape = ptr
                .split('~')
                .skip(1)
                .any(|rest| !rest.starts_with('0') && !rest.starts_with('1'));
            if !ptr.starts_with('/') {
                p.error(
                    format!("{at}.key"),
                    format!("{k:?}: a JSON pointer starts with / (e.g. json:/id)"),
                );
            } else if bad_escape {
                p.error(
                    format!("{at}.key"),
                    format!("{k:?}: in a JSON pointer ~ is written ~0 and / inside a name ~1"),
                );
            }
            DedupeKeySpec::Json(ptr.to_string())
        }
        k => {
            p.error(
                format!("{at}.key"),
                format!("unknown key {k:?} (expected auto, header:NAME, json:/pointer, body-sha256 or none)"),
            );
            DedupeKeySpec::Auto
        }
    };
    let ttl = nonzero_duration(
        &d.ttl,
        &format!("{at}.ttl"),
        Duration::from_secs(24 * 3600),
        p,
    );
    let required = d.required.unwrap_or(false);
    if required && key == DedupeKeySpec::None {
        p.error(
            format!("{at}.required"),
            "cannot be true with key = \"none\"",
        );
    }
    DedupeConfig { key, ttl, required }
}

fn check_forward(f: &RawForward, at: &str, mode: Mode, p: &mut Problems) -> Option<ForwardConfig> {
    let target = check_sink(f, at, mode, p);
    if mode == Mode::Proxy {
        // Retries belong to recorded events; proxy mode sends each request once, at once.
        for (key, set) in [
            ("max_attempts", f.max_attempts.is_some()),
            ("backoff_initial", f.backoff_initial.is_some()),
            ("backoff_max", f.backoff_max.is_some()),
            ("max_age", f.max_age.is_some()),
        ] {
            if set {
                p.warn(
                    format!("{at}.{key}"),
                    "is not used with mode = \"proxy\": each request is sent once, at once, and the upstream's answer (or 502/504) relayed",
                );
            }
        }
    }
    let timeout = nonzero_duration(
        &f.timeout,
        &format!("{at}.timeout"),
        Duration::from_secs(10),
        p,
    );
    // 0 would retry in a tight loop (every delay is a multiple of it).
    let backoff_initial = nonzero_duration(
        &f.backoff_initial,
        &format!("{at}.backoff_initial"),
        Duration::from_secs(1),
        p,
    );
    let backoff_max = duration(
        &f.backoff_max,
        &format!("{at}.backoff_max"),
        Duration::from_secs(600),
        p,
    );
    if backoff_max < backoff_initial {
        p.error(
            format!("{at}.backoff_max"),
            "must be at least backoff_initial",
        );
    }
    let max_attempts = f.max_attempts.unwrap_or(8);
    if max_attempts == 0 {
        p.error(format!("{at}.max_attempts"), "must be at least 1");
    }
    let concurrency = f.concurrency.unwrap_or(32);
    if concurrency == 0 {
        p.error(format!("{at}.concurrency"), "must be at least 1");
    }
    let max_age = f
        .max_age
        .as_ref()
        .map(|_| nonzero_duration(&f.max_age, &format!("{at}.max_age"), Duration::MAX, p));
    let sign = f.sign.as_ref().and_then(|s| {
        if !crate::forward::sign::SCHEMES.contains(&s.scheme.as_str()) {
            p.error(
                format!("{at}.sign.scheme"),
                format!(
                    "unknown scheme {:?} (expected one of {:?})",
                    s.scheme,
                    crate::forward::sign::SCHEMES
                ),
            );
        }
        let secret_at = format!("{at}.sign.secret");
        let secret = resolve_secret(&s.secret, &secret_at, p)?;
        let Some(key) = crate::forward::sign::signing_key(&s.scheme, &secret) else {
            p.error(
                secret_at,
                "is not a Standard Webhooks secret (expected whsec_<base64>, as the receiver's library takes it)",
            );
            return None;
        };
        Some(ForwardSign {
            scheme: s.scheme.clone(),
            secret: key,
        })
    });
    if sign.is_some() && matches!(target, Some(SinkTarget::RedisStream { .. })) {
        p.error(
            format!("{at}.sign"),
            "not supported by a redis:// sink (stream entries carry no signature headers)",
        );
    }
    Some(ForwardConfig {
        target: target?,
        timeout,
        max_attempts,
        backoff_initial,
        backoff_max,
        max_age,
        concurrency,
        sign,
    })
}

/// The sink from `url`'s scheme; each sink's own keys are required, the others refused.
fn check_sink(f: &RawForward, at: &str, mode: Mode, p: &mut Problems) -> Option<SinkTarget> {
    let Some(spec) = f.url.as_deref() else {
        p.error(format!("{at}.url"), "is required");
        return None;
    };
    let resolved = resolve_url(spec, &format!("{at}.url"), p)?;
    let raw_url = resolved.as_str();
    let url = match reqwest::Url::parse(raw_url) {
        Ok(u) => u,
        Err(e) => {
            let hint = if e == url::ParseError::RelativeUrlWithoutBase {
                " (write it whole, with its scheme: http://…, https://…, redis://…, nats://…, amqp://…)"
            } else {
                ""
            };
            p.error(
                format!("{at}.url"),
                format!("invalid URL {:?}: {e}{hint}", mask_userinfo(raw_url)),
            );
            return None;
        }
    };
    let scheme = url.scheme().to_string();
    let mut unused = |key: &str, present: bool| {
        if present {
            p.error(
                format!("{at}.{key}"),
                format!("not used by a {scheme}:// sink"),
            );
        }
    };
    let target = match scheme.as_str() {
        "http" | "https" => {
            unused("stream", f.stream.is_some());
            unused("maxlen", f.maxlen.is_some());
            unused("subject", f.subject.is_some());
            unused("exchange", f.exchange.is_some());
            unused("routing_key", f.routing_key.is_some());
            Some(SinkTarget::Http { url })
        }
        "redis" | "rediss" => {
            unused("subject", f.subject.is_some());
            unused("exchange", f.exchange.is_some());
            unused("routing_key", f.routing_key.is_some());
            match &f.stream {
                Some(s) if !s.is_empty() => Some(SinkTarget::RedisStream {
                    url: raw_url.to_string(),
                    stream: s.clone(),
                    maxlen: f.maxlen,
                }),
                _ => {
                    p.error(
                        format!("{at}.stream"),
                        "is required for a redis:// sink (the stream's key)",
                    );
                    None
                }
            }
        }
        // `tls://` is NATS that must be TLS, as the NATS clients spell it; `nats://` upgrades
        // to TLS when the server asks for it.
        "nats" | "tls" => {
            unused("stream", f.stream.is_some());
            unused("maxlen", f.maxlen.is_some());
            unused("exchange", f.exchange.is_some());
            unused("routing_key", f.routing_key.is_some());
            match &f.subject {
                Some(s) if crate::forward::nats::subject_problem(s).is_none() => {
                    Some(SinkTarget::Nats {
                        url: raw_url.to_string(),
                        subject: s.clone(),
                    })
                }
                Some(s) => {
                    p.error(
                        format!("{at}.subject"),
                        format!(
                            "{s:?} is not a valid subject to publish to: {}",
                            crate::forward::nats::subject_problem(s).unwrap_or_default()
                        ),
                    );
                    None
                }
                None => {
                    p.error(format!("{at}.subject"), "is required for a nats:// sink");
                    None
                }
            }
        }
        "amqp" | "amqps" => {
            unused("stream", f.stream.is_some());
            unused("maxlen", f.maxlen.is_some());
            unused("subject", f.subject.is_some());
            if f.exchange.is_none() {
                p.error(
                    format!("{at}.exchange"),
                    "is required for an amqp:// sink (\"\" for the default exchange)",
                );
            }
            if f.routing_key.is_none() {
                p.error(
                    format!("{at}.routing_key"),
                    "is required for an amqp:// sink",
                );
            }
            // AMQP short strings: a longer name cannot be sent (the frame would be malformed).
            for (key, v) in [("exchange", &f.exchange), ("routing_key", &f.routing_key)] {
                if v.as_ref().is_some_and(|v| v.len() > 255) {
                    p.error(
                        format!("{at}.{key}"),
                        "is longer than 255 bytes, the most AMQP allows",
                    );
                }
            }
            Some(SinkTarget::Amqp {
                url: raw_url.to_string(),
                exchange: f.exchange.clone()?,
                routing_key: f.routing_key.clone()?,
            })
        }
        other => {
            p.error(
                format!("{at}.url"),
                format!("unsupported scheme {other:?} (expected http, https, redis, rediss, nats, tls (NATS over TLS), amqp, amqps)"),
            );
            None
        }
    };
    if let Some(Err((key, msg))) = target.as_ref().map(crate::forward::check_target) {
        p.error(format!("{at}.{key}"), msg);
    }
    if mode == Mode::Proxy && !matches!(target, Some(SinkTarget::Http { .. }) | None) {
        p.error(
            format!("{at}.url"),
            "mode = \"proxy\" needs an http(s):// upstream",
        );
    }
    target
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(p) => p.errors,
        }
    }

    const ROUTE: &str = r#"
[[route]]
name = "orders"
path = "/hooks/orders"
[route.verify]
scheme = "none"
[route.forward]
url = "http://127.0.0.1:3000/x"
"#;

    /// Whatever else is wrong, every problem is listed (SPEC §2): a duplicate route beside an
    /// invalid one too; a value the user did not write is not complained about; serde's and
    /// url's wording gets the fix spelled out.
    #[test]
    fn every_problem_is_listed_in_the_users_terms() {
        let dup = format!(
            "{}{}",
            ROUTE.replace("http://127.0.0.1:3000/x", "htp://x/y"),
            ROUTE
        );
        let e = errors(&dup);
        assert!(
            e.iter().any(|l| l.starts_with("route[0].forward.url:")),
            "{e:?}"
        );
        assert!(
            e.contains(&"route[1].name: duplicate route name \"orders\"".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"route[1].path: duplicate route path \"/hooks/orders\"".to_string()),
            "{e:?}"
        );

        let e = errors(&format!(
            "[server]\nmax_body = \"1.5mb\"\nmax_body_memory = \"512KiB\"\n{ROUTE}"
        ));
        assert_eq!(e.len(), 1, "only the size the user wrote: {e:?}");
        assert!(
            e[0].starts_with("server.max_body: invalid size \"1.5mb\""),
            "{e:?}"
        );

        let e = errors(&ROUTE.replace(
            "[route.forward]",
            "[route.dedupe]\nkey = \"json:/data/~2id\"\n[route.forward]",
        ));
        assert!(
            e[0].ends_with("in a JSON pointer ~ is written ~0 and / inside a name ~1"),
            "{e:?}"
        );
        assert!(errors(&ROUTE.replace(
            "[route.forward]",
            "[route.dedupe]\nkey = \"json:/a~1b/~0c\"\n[route.forward]"
        ))
        .is_empty());

        let e = errors(&ROUTE.replace("name = \"orders\"", "name = \"unmatched\""));
        assert!(
            e[0].starts_with("route[0].name: \"unmatched\" is reserved"),
            "{e:?}"
        );

        let e = errors(&ROUTE.replace("path = ", "rate_limit = 100\npath = "));
        assert!(
            e[0].starts_with("route[0].rate_limit: invalid type: integer `100`, expected a table"),
            "{e:?}"
        );
        let e = errors(&ROUTE.replace("[[route]]", "[route]"));
        assert!(
            e[0].contains("write [[route]], with double brackets"),
            "{e:?}"
        );
        let e = errors(&ROUTE.replace("scheme = \"none\"", "scheme = \"Stripe\""));
        assert!(
            e[0].contains("(expected one of hmac, none, stripe,"),
            "{e:?}"
        );
        let e = errors(&ROUTE.replace("http://127.0.0.1:3000/x", "127.0.0.1:3000/x"));
        assert!(e[0].ends_with("(write it whole, with its scheme: http://…, https://…, redis://…, nats://…, amqp://…)"), "{e:?}");
    }

    #[test]
    fn retry_keys_on_a_proxy_route_are_warned_about() {
        let text = ROUTE
            .replace("path = ", "mode = \"proxy\"\npath = ")
            .replace(
                "[route.forward]",
                "[route.forward]\nmax_attempts = 3\nbackoff_max = \"1m\"\nconcurrency = 4",
            );
        let (cfg, warnings) = crate::config::parse(&text).unwrap();
        assert_eq!(cfg.routes[0].forward.concurrency, 4);
        let ours: Vec<&String> = warnings.iter().filter(|w| w.contains("proxy")).collect();
        assert_eq!(ours.len(), 2, "{warnings:?}");
        assert!(
            ours[0].starts_with("route[0].forward.max_attempts: is not used with mode = \"proxy\"")
        );
        assert!(ours[1].starts_with("route[0].forward.backoff_max: is not used"));
        let (_, async_warnings) = crate::config::parse(
            &ROUTE.replace("[route.forward]", "[route.forward]\nmax_attempts = 3"),
        )
        .unwrap();
        assert!(!async_warnings.iter().any(|w| w.contains("proxy")));
    }

    /// A body limit over the memory all bodies may take together could never be reached: said
    /// at the key that sets it (a route's own, or server.max_body that routes inherit), once.
    #[test]
    fn a_body_limit_over_max_body_memory_is_refused_at_its_key() {
        let (cfg, _) = parse(ROUTE).unwrap();
        assert_eq!(cfg.server.max_body_memory, 64 << 20, "the default");
        let with = |server: &str, route_max_body: &str| {
            let route = ROUTE.replace(
                "path = \"/hooks/orders\"",
                &format!("path = \"/hooks/orders\"\n{route_max_body}"),
            );
            let second = route
                .replace("\"orders\"", "\"b\"")
                .replace("/hooks/orders", "/b");
            errors(&format!("[server]\n{server}\n{route}{second}"))
        };
        assert_eq!(
            with("max_body_memory = \"2MiB\"", "max_body = \"4MiB\""),
            vec![
                "route[0].max_body: 4194304 bytes is more than server.max_body_memory (2097152 bytes, for all bodies being received at once), so no such body could be taken; raise server.max_body_memory",
                "route[1].max_body: 4194304 bytes is more than server.max_body_memory (2097152 bytes, for all bodies being received at once), so no such body could be taken; raise server.max_body_memory",
            ]
        );
        assert_eq!(
            with("max_body = \"100MiB\"", ""),
            vec!["server.max_body: 104857600 bytes is more than server.max_body_memory (67108864 bytes, for all bodies being received at once), so no such body could be taken; raise server.max_body_memory"],
            "two routes inherit it: said once"
        );
        assert!(with("max_body = \"100MiB\"\nmax_body_memory = \"1GiB\"", "").is_empty());
        assert!(with("max_body_memory = \"2MiB\"", "max_body = \"2MiB\"").is_empty());
        assert_eq!(
            with("max_body_memory = \"0\"", ""),
            vec!["server.max_body_memory: must be greater than 0"]
        );
        assert_eq!(
            with(
                "max_body = \"100MiB\"\nmax_body_memory = \"lots\"",
                "max_body = \"5MiB\""
            ),
            vec![
                "server.max_body_memory: invalid size \"lots\": a whole number of B, KiB, MiB or GiB (e.g. \"512\", \"64KiB\", \"1MiB\"; KB, MB and GB are read as KiB, MiB and GiB)"
            ],
            "no comparison with a limit the user did not set"
        );
    }

    /// A dedupe window longer than the store keeps delivered events is said: a duplicate
    /// would be answered with an id the admin API no longer knows.
    #[test]
    fn a_dedupe_ttl_beyond_the_retention_is_warned_about() {
        let cfg = |retention: &str, ttl: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[store]\npath = \"/tmp/x\"\nretention = \"{retention}\"\n{ROUTE}[route.dedupe]\nttl = \"{ttl}\"\n"
            )
        };
        let (_, warnings) = parse(&cfg("1h", "2h")).unwrap();
        assert_eq!(
            warnings,
            vec!["route[0].dedupe.ttl: is longer than store.retention (1h): a duplicate of a delivered event that was purged is answered with an event id the admin API no longer knows".to_string()]
        );
        let (_, warnings) = parse(&cfg("2h", "2h")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// Every file a config reads is noted for `serve` to watch, with what it held: secrets,
    /// public keys, the re-signing secret, the admin token, URLs. A file missing from the list
    /// would keep its old content (a rotated, perhaps leaked, key still verifying) until a
    /// SIGHUP.
    #[test]
    fn every_file_a_config_reads_is_noted_with_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        };
        let pk = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let text = format!(
            r#"
[server]
admin_token = "file:{token}"
[[route]]
name = "a"
path = "/a"
[route.verify]
scheme = "hmac"
secrets = ["file:{s1}", "file:{s2}"]
[route.forward]
url = "file:{url}"
[route.forward.sign]
scheme = "standard-webhooks"
secret = "file:{sign}"
[[route]]
name = "d"
path = "/d"
[route.verify]
scheme = "discord"
public_key = "file:{pk}"
[route.forward]
url = "http://127.0.0.1:3000/d"
"#,
            token = file("token", "admin-t0ken"),
            s1 = file("s1", "one\n"),
            s2 = file("s2", "two"),
            url = file("url", "http://127.0.0.1:3000/a"),
            sign = file("sign", "whsec_dGVzdHNlY3JldA=="),
            pk = file("pk", pk),
        );
        let (cfg, _) = parse(&text).unwrap();
        let mut noted: Vec<_> = cfg
            .files
            .iter()
            .map(|(p, seen)| {
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                let content = std::fs::read(p).unwrap();
                assert_eq!(*seen, super::super::watch::seen(&content), "{name}");
                name
            })
            .collect();
        noted.sort();
        assert_eq!(noted, ["pk", "s1", "s2", "sign", "token", "url"]);
    }

    /// Two secrets in one file (mid-rotation) would be one secret with a newline: warned.
    #[test]
    fn a_secret_file_of_several_lines_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::write(&one, "whsec_old\n").unwrap();
        std::fs::write(&two, "whsec_old\nwhsec_new\n").unwrap();
        let with = |f: &std::path::Path| {
            ROUTE.replace(
                "scheme = \"none\"",
                &format!("scheme = \"hmac\"\nsecrets = [\"file:{}\"]", f.display()),
            )
        };
        let (_, warnings) = parse(&with(&one)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (_, warnings) = parse(&with(&two)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("route[0].verify.secrets[0]: holds more than one line")
                && !warnings[0].contains("whsec"),
            "{warnings:?}"
        );
    }

    /// A broker URL, password and all, may come from a file or the environment; errors and
    /// warnings never quote it.
    #[test]
    fn urls_with_credentials_come_from_file_or_env_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "amqp://hg:s3cr3t@mq.internal:5672/%2f\n").unwrap();
        let with = |url: &str| {
            ROUTE.replace("http://127.0.0.1:3000/x", url)
                + "exchange = \"events\"\nrouting_key = \"k\"\n"
        };
        let (cfg, warnings) = parse(&with(&format!("file:{}", file.display()))).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        match &cfg.routes[0].forward.target {
            crate::config::SinkTarget::Amqp { url, .. } => {
                assert_eq!(url, "amqp://hg:s3cr3t@mq.internal:5672/%2f")
            }
            other => panic!("{other:?}"),
        }
        let token = ROUTE.replace("http://127.0.0.1:3000/x", "nats://t0k3n@nats.internal:4222")
            + "subject = \"events.orders\"\n";
        let (_, warnings) = parse(&token).unwrap();
        assert!(
            warnings.len() == 1 && !warnings[0].contains("t0k3n"),
            "{warnings:?}"
        );
        let (_, warnings) = parse(&with("amqp://hg:s3cr3t@mq.internal:5672/%2f")).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("route[0].forward.url: the URL's password is a literal")
                && !warnings[0].contains("s3cr3t"),
            "{warnings:?}"
        );
        let e = errors(&with("env:HOOKGATE_TEST_URL_UNSET")).join("\n");
        assert_eq!(
            e,
            "route[0].forward.url: environment variable HOOKGATE_TEST_URL_UNSET is not set"
        );
        std::fs::write(&file, "amqp://hg:s3cr3t@[bad\n").unwrap();
        let e = errors(&with(&format!("file:{}", file.display()))).join("\n");
        assert!(
            e.starts_with("route[0].forward.url: invalid URL \"amqp://***@[bad\"")
                && !e.contains("s3cr3t"),
            "{e}"
        );
        let store = |spec: &str| format!("[store]\nbackend = \"redis\"\nurl = \"{spec}\"\n{ROUTE}");
        std::fs::write(&file, "rediss://:pw@redis.internal:6380/0").unwrap();
        let (cfg, warnings) = parse(&store(&format!("file:{}", file.display()))).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        match &cfg.store.backend {
            crate::config::StoreBackend::Redis { url, .. } => {
                assert_eq!(url, "rediss://:pw@redis.internal:6380/0")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            errors(&store("file:/nonexistent/hookgate-url")),
            ["store.url: cannot read secret file /nonexistent/hookgate-url: No such file or directory (os error 2)"]
        );
    }

    #[test]
    fn a_redis_url_says_what_is_wrong_with_it() {
        let store = |url: &str| format!("[store]\nbackend = \"redis\"\n{url}\n{ROUTE}");
        let expected = "(expected redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS)";
        assert_eq!(
            errors(&store("url = \"redis:/127.0.0.1:6379\"")),
            [format!(
                "store.url: invalid Redis URL \"redis:/127.0.0.1:6379\": no host {expected}"
            )]
        );
        assert_eq!(
            errors(&store("url = \"http://127.0.0.1:6379\"")),
            [format!(
                "store.url: invalid Redis URL \"http://127.0.0.1:6379\" {expected}"
            )]
        );
        // What the Redis client itself takes stays valid.
        for ok in [
            "redis://localhost",
            "redis://h:6379/",
            "redis://h:6379/0/",
            "rediss://u:pw@h/0",
        ] {
            let text = store(&format!("url = {ok:?}"));
            assert!(parse(&text).is_ok(), "{ok}");
        }
        assert_eq!(
            errors(&store("url = \"redis://127.0.0.1/orders\"")),
            ["store.url: invalid Redis URL \"redis://127.0.0.1/orders\": the path is the database number, not \"orders\""]
        );
        // Unset: SPEC's default, the local Redis, said out loud.
        let (cfg, warnings) = parse(&store("")).unwrap();
        assert_eq!(
            warnings,
            ["store.url: not set: using the local Redis, redis://127.0.0.1:6379/0"]
        );
        assert!(matches!(
            &cfg.store.backend,
            crate::config::StoreBackend::Redis { url, .. } if url == "redis://127.0.0.1:6379/0"
        ));
    }

    #[test]
    fn a_minimal_config_is_valid_with_defaults() {
        let (cfg, warnings) = parse(ROUTE).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(cfg.server.max_body, 1 << 20);
        let r = &cfg.routes[0];
        assert_eq!(r.methods, vec![http::Method::POST]);
        assert_eq!(r.forward.max_attempts, 8);
        assert_eq!(r.forward.concurrency, 32);
        assert_eq!(r.dedupe.ttl, std::time::Duration::from_secs(86400));
        assert_eq!(r.verifier.scheme(), "none");
    }

    #[test]
    fn the_store_page_size_is_a_power_of_two_sqlite_takes_and_embedded_only() {
        let with = |store: &str| format!("[store]\n{store}\n{ROUTE}");
        let (cfg, _) = parse(&with("page_size = \"16KiB\"")).unwrap();
        assert!(matches!(
            cfg.store.backend,
            crate::config::StoreBackend::Embedded {
                page_size: 16384,
                ..
            }
        ));
        let (cfg, _) = parse(ROUTE).unwrap();
        assert!(matches!(
            cfg.store.backend,
            crate::config::StoreBackend::Embedded {
                page_size: 4096,
                ..
            }
        ));
        for ok in ["512", "64KiB"] {
            let (cfg, _) = parse(&with(&format!("page_size = \"{ok}\""))).unwrap();
            assert!(matches!(
                cfg.store.backend,
                crate::config::StoreBackend::Embedded { page_size, .. } if page_size > 0
            ));
        }
        for (store, expected) in [
            (
                "page_size = \"0\"",
                "store.page_size: must be greater than 0",
            ),
            (
                "page_size = \"big\"",
                "store.page_size: invalid size \"big\"",
            ),
            (
                "page_size = \"256\"",
                "store.page_size: 256 bytes: SQLite takes a power of two from 512 to 65536",
            ),
            (
                "page_size = \"3000\"",
                "store.page_size: 3000 bytes: SQLite takes a power of two from 512 to 65536",
            ),
            (
                "page_size = \"128KiB\"",
                "store.page_size: 131072 bytes: SQLite takes a power of two from 512 to 65536",
            ),
            (
                "backend = \"redis\"\npage_size = \"16KiB\"",
                "store.page_size: only used with backend = \"embedded\"",
            ),
        ] {
            let e = errors(&with(store)).join("\n");
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    #[test]
    fn the_store_min_free_space_is_a_size_zero_turns_it_off_embedded_only() {
        let with = |store: &str| format!("[store]\n{store}\n{ROUTE}");
        let min_free = |text: &str| match parse(text).unwrap().0.store.backend {
            crate::config::StoreBackend::Embedded { min_free_space, .. } => min_free_space,
            other => panic!("not embedded: {other:?}"),
        };
        assert_eq!(
            min_free(ROUTE),
            crate::store::embedded::DEFAULT_MIN_FREE_SPACE
        );
        assert_eq!(min_free(&with("min_free_space = \"1GiB\"")), 1 << 30);
        assert_eq!(min_free(&with("min_free_space = \"0\"")), 0);
        for (store, expected) in [
            (
                "min_free_space = \"plenty\"",
                "store.min_free_space: invalid size \"plenty\"",
            ),
            (
                "backend = \"redis\"\nmin_free_space = \"1GiB\"",
                "store.min_free_space: only used with backend = \"embedded\"",
            ),
        ] {
            let e = errors(&with(store)).join("\n");
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
[server]
max_body = "lots"
admin_listen = "0.0.0.0:8080"
[store]
retention = "forever"
[[route]]
name = "a"
path = "nope"
methods = ["P OST"]
[route.verify]
scheme = "hmac"
secrets = ["env:HOOKGATE_TEST_UNSET_VAR"]
algorithm = "md5"
[route.dedupe]
key = "cookie:x"
[route.forward]
url = "ftp://x"
max_attempts = 0
backoff_initial = "10s"
backoff_max = "1s"
[[route]]
name = "a"
path = "/b"
[route.forward]
url = "redis://localhost"
"#;
        let e = errors(text).join("\n");
        for expected in [
            "server.max_body: invalid size \"lots\"",
            "server.admin_listen: must differ from server.listen",
            "store.retention: invalid duration \"forever\"",
            "route[0].path: \"nope\" must start with /",
            "route[0].methods[0]: invalid HTTP method \"P OST\"",
            "route[0].verify.secrets[0]: environment variable HOOKGATE_TEST_UNSET_VAR is not set",
            "route[0].verify.algorithm: unknown algorithm \"md5\"",
            "route[0].dedupe.key: unknown key \"cookie:x\"",
            "route[0].forward.url: unsupported scheme \"ftp\"",
            "route[0].forward.max_attempts: must be at least 1",
            "route[0].forward.backoff_max: must be at least backoff_initial",
            "route[1].verify: is required; an unverified route must say scheme = \"none\"",
            "route[1].forward.stream: is required for a redis:// sink",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    #[test]
    fn durations_that_break_at_0_are_refused_and_0_stays_valid_where_it_means_something() {
        let text = r#"
[server]
header_timeout = "0s"
body_timeout = "0s"
shutdown_grace = "0s"
[store]
retention = "0s"
[[route]]
name = "a"
path = "/a"
[route.verify]
scheme = "hmac"
secrets = ["x"]
tolerance = "0s"
[route.dedupe]
ttl = "0s"
[route.forward]
url = "http://127.0.0.1:9/"
timeout = "0ms"
backoff_initial = "0s"
max_age = "0s"
"#;
        let e = errors(text);
        let expected: Vec<String> = [
            "server.header_timeout",
            "server.body_timeout",
            "route[0].verify.tolerance",
            "route[0].dedupe.ttl",
            "route[0].forward.timeout",
            "route[0].forward.backoff_initial",
            "route[0].forward.max_age",
        ]
        .iter()
        .map(|k| format!("{k}: must be greater than 0"))
        .collect();
        assert_eq!(e, expected);
        let (cfg, _) = parse(&format!("[server]\nshutdown_grace = \"0s\"\n{ROUTE}")).unwrap();
        assert!(cfg.server.shutdown_grace.is_zero(), "0: stop at once");
    }

    #[test]
    fn durations_longer_than_100_years_are_refused_with_their_key() {
        let text = r#"
[server]
shutdown_grace = "300000000000y"
[store]
retention = "300000000y"
[[route]]
name = "a"
path = "/a"
[route.verify]
scheme = "hmac"
secrets = ["x"]
tolerance = "101y"
[route.dedupe]
ttl = "300000000y"
[route.forward]
url = "http://127.0.0.1:9/"
max_age = "1000y"
backoff_max = "200y"
"#;
        let e = errors(text);
        let expected: Vec<String> = [
            ("server.shutdown_grace", "300000000000y"),
            ("store.retention", "300000000y"),
            ("route[0].verify.tolerance", "101y"),
            ("route[0].dedupe.ttl", "300000000y"),
            ("route[0].forward.backoff_max", "200y"),
            ("route[0].forward.max_age", "1000y"),
        ]
        .iter()
        .map(|(k, v)| format!("{k}: duration {v:?} is too long (the maximum is 100 years)"))
        .collect();
        assert_eq!(e, expected);
        let at_most = ROUTE.replace(
            "[route.forward]",
            "[route.dedupe]\nttl = \"100y\"\n[route.forward]",
        );
        assert_eq!(
            parse(&at_most).unwrap().0.routes[0].dedupe.ttl,
            crate::config::units::MAX_DURATION
        );
    }

    #[test]
    fn listen_and_admin_listen_clash_on_the_same_port_whichever_is_unspecified() {
        let with = |listen: &str, admin: &str| {
            errors(&format!(
                "[server]\nlisten = {listen:?}\nadmin_listen = {admin:?}\n{ROUTE}"
            ))
        };
        let clash = "server.admin_listen: must differ from server.listen: admin endpoints stay off the public port";
        for (listen, admin) in [
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("[::1]:8080", "[::]:8080"),
        ] {
            assert_eq!(with(listen, admin), vec![clash], "{listen} {admin}");
        }
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "0.0.0.0:9090"),
            ("0.0.0.0:0", "127.0.0.1:0"),
        ] {
            assert!(with(listen, admin).is_empty(), "{listen} {admin}");
        }
    }

    #[test]
    fn a_standard_webhooks_re_signing_secret_must_decode() {
        let with = |secret: &str| {
            ROUTE.replace(
                "[route.forward]",
                &format!("[route.forward]\nsign = {{ scheme = \"standard-webhooks\", secret = {secret:?} }}"),
            )
        };
        assert_eq!(
            errors(&with("env:HOOKGATE_TEST_NOT_WHSEC")),
            vec!["route[0].forward.sign.secret: environment variable HOOKGATE_TEST_NOT_WHSEC is not set"]
        );
        for bad in ["whsec_not base64!", "whsec_"] {
            let e = errors(&with(bad));
            assert_eq!(
                e,
                vec!["route[0].forward.sign.secret: is not a Standard Webhooks secret (expected whsec_<base64>, as the receiver's library takes it)"],
                "{bad}"
            );
        }
        // The key is decoded once, here: prefix and padding optional.
        for ok in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            let (cfg, _) = parse(&with(ok)).unwrap();
            let sign = cfg.routes[0].forward.sign.as_ref().unwrap();
            assert_eq!(sign.secret.expose().len(), 24, "{ok}");
        }
    }

    /// The Kubernetes sidecar's ConfigMap holds a config that `serve` accepts (its secrets
    /// come from the pod's Secret and environment, stood in for here).
    #[test]
    fn the_kubernetes_sidecars_config_is_valid() {
        let yaml = include_str!("../../deploy/kubernetes/sidecar.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| l.trim() != "hookgate.toml: |")
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        assert!(toml.contains("[[route]]"), "{toml}");
        // The app's secret is a key of its own: with Stripe's for both, rotating Stripe's made
        // the app refuse every event (400, dead) until it had the new one too.
        assert!(
            toml.contains("secret = \"file:/etc/hookgate/secrets/app-signing-secret\""),
            "{toml}"
        );
        let toml = toml
            .replace("env:HOOKGATE_ADMIN_TOKEN", "admin-token")
            .replace("file:/etc/hookgate/secrets/orders-secret", "whsec_dGVzdA==")
            .replace(
                "file:/etc/hookgate/secrets/app-signing-secret",
                "whsec_YXBw",
            );
        let (cfg, _) = parse(&toml).unwrap();
        let r = &cfg.routes[0];
        assert_eq!(r.verifier.scheme(), "stripe");
        assert_eq!(r.forward.max_attempts, 20);
    }

    #[test]
    fn the_example_configs_redis_store_replaces_its_store_section_as_its_comment_says() {
        let text = include_str!("../../config/hookgate.toml");
        parse(text).unwrap();
        let (start, end) = (
            text.find("[store]\n").unwrap(),
            text.find("[[route]]").unwrap(),
        );
        let redis: String = text[start..end]
            .lines()
            .skip_while(|l| *l != "# [store]")
            .filter_map(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            redis.starts_with("[store]\nbackend = \"redis\"\n"),
            "{redis}"
        );
        let (cfg, _) = parse(&format!("{}{redis}{}", &text[..start], &text[end..])).unwrap();
        assert!(matches!(
            cfg.store.backend,
            crate::config::StoreBackend::Redis { .. }
        ));
    }

    #[test]
    fn amqp_names_past_255_bytes_are_refused() {
        let long = "x".repeat(256);
        let text = ROUTE.replace(
            "url = \"http://127.0.0.1:3000/x\"",
            &format!("url = \"amqp://127.0.0.1:5672/%2f\"\nexchange = \"{long}\"\nrouting_key = \"{long}\""),
        );
        assert_eq!(
            errors(&text),
            [
                "route[0].forward.exchange: is longer than 255 bytes, the most AMQP allows",
                "route[0].forward.routing_key: is longer than 255 bytes, the most AMQP allows"
            ]
        );
        let ok = ROUTE.replace(
            "url = \"http://127.0.0.1:3000/x\"",
            &format!(
                "url = \"amqp://127.0.0.1:5672/%2f\"\nexchange = \"\"\nrouting_key = \"{}\"",
                "k".repeat(255)
            ),
        );
        assert_eq!(errors(&ok), Vec::<String>::new());
    }

    #[test]
    fn unparseable_urls_are_reported_without_their_password() {
        let text = ROUTE.replace("http://127.0.0.1:3000/x", "nats://u:secretpw@host:99999");
        let e = errors(&text).join("\n");
        assert!(
            e.contains("route[0].forward.url: invalid URL \"nats://***@host:99999\""),
            "{e}"
        );
        assert!(!e.contains("secretpw"));
        assert_eq!(
            super::mask_userinfo("redis://:pw@h:1/0"),
            "redis://***@h:1/0"
        );
        assert_eq!(super::mask_userinfo("http://h/p@x"), "http://h/p@x");
    }

    #[test]
    fn duplicates_unknown_keys_and_literal_secrets() {
        let two = format!("{ROUTE}{ROUTE}");
        let e = errors(&two).join("\n");
        assert!(
            e.contains("route[1].name: duplicate route name \"orders\""),
            "{e}"
        );
        assert!(
            e.contains("route[1].path: duplicate route path \"/hooks/orders\""),
            "{e}"
        );
        let typo = ROUTE.replace("[route.forward]", "[route.forward]\nretries = 3");
        let e = errors(&typo).join("\n");
        assert!(
            e.starts_with("route[0].forward.retries: unknown field `retries`"),
            "{e}"
        );
        assert!(e.contains("(line 8)"), "{e}");
        let literal = ROUTE.replace(
            "scheme = \"none\"",
            "scheme = \"hmac\"\nsecrets = [\"plain\"]",
        );
        let (_, warnings) = parse(&literal).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("route[0].verify.secrets[0]: secret is a literal"),
            "{warnings:?}"
        );
        assert!(
            !warnings[0].contains("plain"),
            "a warning never shows the secret"
        );
        assert!(errors("")
            .join("")
            .contains("route: at least one [[route]] is required"));
    }
}
