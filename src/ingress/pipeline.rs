//! One request's path: route → head checks → method → client IP → body (limited, timed) →
//! handshake or verify (on the raw bytes, before any parsing) → rate limit (verified requests
//! only) → dedupe key → record (atomic with the dedupe check, durable) → 202 / 200 duplicate. Each step returns a `Reject` that
//! maps to SPEC §5; the event is recorded only from a `Verified`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::Request;
use hyper::body::Incoming;

use super::reject::{self, Reject, Reply};
use super::router::{client_ip, forwarded_for, Route};
use super::Ingress;
use crate::dedupe;
use crate::store::{Accept, DedupeKey, NewEvent};
use crate::telemetry;

enum Outcome {
    /// The event's id, and its dedupe key (for the log line: the sender's own id, which is
    /// what an operator is handed when an event goes missing).
    Accepted(String, Key),
    /// The original's id, whether this copy carries the original's very signature, and this
    /// copy's dedupe key (it may have matched by the second one: `DedupeKey::also`).
    Duplicate(String, Compared, Key),
    Handshake(Reply),
    /// `mode = "proxy"`: the event id, the answer (the upstream's, or the gateway's 502, 504 or
    /// 503), its outcome, and why there was no upstream answer.
    Proxied {
        id: String,
        reply: Reply,
        outcome: &'static str,
        error: Option<String>,
    },
}

pub async fn handle(ctx: Arc<Ingress>, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    // The whole table, held for the request: a reload mid-request does not mix generations.
    let table = ctx.table.load_full();
    let Some(route) = table.router.get(parts.uri.path()).cloned() else {
        let elapsed = t0.elapsed();
        telemetry::request("unmatched", "not_found", elapsed);
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        tracing::info!(route = "unmatched", path = %parts.uri.path(), outcome = "not_found", latency_ms, "request");
        return Reject::NotFound.response();
    };
    let name = route.cfg.name.as_str();
    let result = process(&ctx, &table, &route, peer, parts, body).await;
    let elapsed = t0.elapsed();
    // Whole microseconds, so a log line reads `3.38` rather than `3.3799170000000003`.
    let latency_ms = elapsed.as_micros() as f64 / 1000.0;
    match result {
        Ok(Outcome::Accepted(id, key)) => {
            route.metrics.request("accepted", elapsed);
            tracing::info!(route = name, event_id = %id, key = %key, outcome = "accepted", latency_ms, "request");
            reject::accepted(&id)
        }
        Ok(Outcome::Duplicate(id, copy, key)) => {
            route.metrics.request("duplicate", elapsed);
            let same_signature = copy.same_signature;
            if let Some(original_key) = copy.under_another_key {
                // Matched by what the signature covers, under an id the original did not
                // have: the provider's own retries keep their id, a captured request sent
                // again may not.
                tracing::warn!(route = name, event_id = %id, key = %key, original_key = %Key(Some(original_key)), outcome = "duplicate", client = %peer.ip().to_canonical(), latency_ms, "request: duplicate by its signed content under another id than the original's: possibly a captured request sent again; not delivered");
            } else if same_signature == Some(true) && route.cfg.verifier.retries_resigned() {
                // The provider re-signs its retries (new timestamp): a byte-identical copy of
                // the signed request is what a replayed capture looks like.
                tracing::warn!(route = name, event_id = %id, key = %key, outcome = "duplicate", client = %peer.ip().to_canonical(), latency_ms, "request: duplicate with the original's signature: possible replay");
            } else if same_signature == Some(true) {
                // GitHub, Shopify, Twilio, Meta… send a redelivery with the same signature: no
                // warning that every redelivery would raise.
                tracing::info!(route = name, event_id = %id, key = %key, outcome = "duplicate", latency_ms, "request: duplicate with the original's signature: a redelivery");
            } else if same_signature == Some(false) {
                tracing::info!(route = name, event_id = %id, key = %key, outcome = "duplicate", latency_ms, "request: duplicate re-signed by the sender: a provider retry");
            } else {
                // No signature to compare (an unsigned route), or the original is gone.
                tracing::info!(route = name, event_id = %id, key = %key, outcome = "duplicate", latency_ms, "request: duplicate");
            }
            reject::duplicate(&id)
        }
        Ok(Outcome::Proxied {
            id,
            reply,
            outcome,
            error,
        }) => {
            route.metrics.request(outcome, elapsed);
            let status = reply.status().as_u16();
            match error {
                None => {
                    tracing::info!(route = name, event_id = %id, outcome, status, latency_ms, "request")
                }
                Some(error) => {
                    tracing::warn!(route = name, event_id = %id, outcome, status, %error, latency_ms, "request: no answer from the upstream to relay")
                }
            }
            reply
        }
        Ok(Outcome::Handshake(reply)) => {
            route.metrics.request("handshake", elapsed);
            tracing::info!(route = name, outcome = "handshake", latency_ms, "request");
            reply
        }
        Err(rej) => {
            route.metrics.request(rej.outcome(), elapsed);
            if rej == Reject::Unavailable {
                tracing::error!(
                    route = name,
                    outcome = rej.code(),
                    latency_ms,
                    "request: event could not be recorded"
                );
            } else if rej == Reject::BodyMemoryFull {
                tracing::warn!(
                    route = name,
                    outcome = rej.outcome(),
                    client = %peer.ip().to_canonical(),
                    held_bytes = ctx.bodies.used(),
                    max_body_memory = ctx.bodies.limit(),
                    latency_ms,
                    "request refused: the bodies being received fill server.max_body_memory; answered 503, to be retried"
                );
            } else if let Reject::Verify(e, claimed) = &rej {
                tracing::warn!(
                    route = name,
                    outcome = rej.code(),
                    key = %Key(claimed.key.clone()),
                    skew_s = claimed.skew_secs,
                    client = %peer.ip().to_canonical(),
                    latency_ms,
                    "{}",
                    refusal(*e, claimed.skew_secs)
                );
            } else {
                tracing::warn!(route = name, outcome = rej.code(), client = %peer.ip().to_canonical(), latency_ms, "request rejected");
            }
            rej.response()
        }
    }
}

async fn process(
    ctx: &Ingress,
    table: &crate::app::RouteTable,
    route: &Route,
    peer: SocketAddr,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Outcome, Reject> {
    let cfg = &route.cfg;
    check_head(&parts)?;
    if !cfg.methods.contains(&parts.method) {
        return Err(Reject::MethodNotAllowed(route.allow.clone()));
    }
    if !cfg.allow_ips.is_empty() {
        let xff = forwarded_for(&parts.headers);
        if !route.ip_allowed(client_ip(peer.ip(), xff.as_deref(), &table.trusted_proxies)) {
            return Err(Reject::Forbidden);
        }
    }
    if let (crate::config::SinkTarget::Http { url }, Some(q)) =
        (&cfg.forward.target, parts.uri.query())
    {
        if !crate::forward::http::query_fits(url, q) {
            return Err(Reject::UriTooLong);
        }
    }
    // Held until the answer (in proxy mode the body is in use until the upstream answered),
    // or, once handed to the store, until the store is done with the event.
    let (body, held) = super::body::read(
        body,
        &parts.headers,
        cfg.max_body,
        table.body_timeout,
        &ctx.bodies,
    )
    .await?;
    let now = SystemTime::now();

    if let Some(hs) = cfg.verifier.handshake(&parts, &body, now) {
        let hs = hs.map_err(|e| refused(route, &parts, &body, now, e))?;
        let mut reply = reject::json(hs.status, String::new());
        *reply.body_mut() = http_body_util::Full::new(hs.body);
        reply.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(hs.content_type),
        );
        return Ok(Outcome::Handshake(reply));
    }
    let verified = cfg
        .verifier
        .verify(&parts, &body, now)
        .map_err(|e| refused(route, &parts, &body, now, e))?;
    if let Some(i) = verified.secret_index {
        route.metrics.secret_matched(i);
    }
    // Counted once verified: requests anyone can forge would otherwise use up the limit and
    // turn the real sender away with 429s.
    route.check_rate().map_err(Reject::RateLimited)?;

    if let Some(upstream) = &route.proxy {
        // Nothing is de-duplicated in proxy mode, but a required key is still required (SPEC
        // §5: every rejection row stays as it is).
        if cfg.dedupe.required {
            dedupe::derive(&cfg.dedupe, &verified, &parts.headers, &body)
                .map_err(|_| Reject::MissingDedupeKey)?;
        }
        return Ok(proxy(upstream, &cfg.name, &parts, body, &verified, now, held).await);
    }

    let key = dedupe::derive(&cfg.dedupe, &verified, &parts.headers, &body)
        .map_err(|_| Reject::MissingDedupeKey)?;
    let received_at_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let dedupe_key = key.map(|key| DedupeKey {
        also: dedupe::replay_key(&cfg.dedupe, &verified, &key),
        key,
        expires_at_ms: received_at_ms.saturating_add(cfg.dedupe.ttl.as_millis() as i64),
    });
    let mut event = NewEvent::new(&cfg.name, &parts, body, &verified, received_at_ms);
    event.dedupe_key = dedupe_key.as_ref().map(|k| k.key.clone());
    let logged = Key(event.dedupe_key.clone());
    event.keep = crate::store::Keep::new(held);
    match ctx.store.accept(event, dedupe_key).await {
        Ok(Accept::Accepted(id)) => {
            if let Some(wake) = &route.wake_on_accept {
                wake.notify_one();
            }
            Ok(Outcome::Accepted(id, logged))
        }
        Ok(Accept::Duplicate(id)) => {
            let copy = compare(&ctx.store, &id, &parts.headers, logged.0.as_deref()).await;
            Ok(Outcome::Duplicate(id, copy, logged))
        }
        Err(e) => {
            metrics::counter!("hookgate_store_errors_total").increment(1);
            tracing::error!(route = %cfg.name, error = %e, "store refused the event");
            Err(Reject::Unavailable)
        }
    }
}

/// A verification failure, with what the request claimed for its log line.
fn refused(
    route: &Route,
    parts: &http::request::Parts,
    body: &[u8],
    now: SystemTime,
    e: crate::verify::VerifyError,
) -> Reject {
    let cfg = &route.cfg;
    let key = dedupe::claimed(
        &cfg.dedupe,
        cfg.verifier.scheme(),
        || cfg.verifier.claimed_id(parts, body),
        &parts.headers,
    );
    let skew_secs = match e {
        crate::verify::VerifyError::StaleTimestamp => {
            cfg.verifier.signed_at(parts, body).map(|at| {
                let now = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                (now.as_secs() as i64).saturating_sub(at)
            })
        }
        _ => None,
    };
    Reject::Verify(e, Box::new(reject::Claimed { key, skew_secs }))
}

/// What a verification failure tells the operator reading its log line (`key` there is the
/// request's claim, not verified).
fn refusal(e: crate::verify::VerifyError, skew_secs: Option<i64>) -> &'static str {
    use crate::verify::VerifyError::*;
    match (e, skew_secs) {
        (MissingSignature, _) => {
            "request rejected: no signature where the route's scheme expects one (a sender not \
             set up to sign, or sent to the wrong route)"
        }
        (InvalidSignature, _) => {
            "request rejected: the signature matches none of the route's secrets (a wrong or \
             rotated secret, a body changed on its way, or a forgery)"
        }
        (StaleTimestamp, Some(s)) if s >= 0 => {
            "request rejected: its signed timestamp is skew_s seconds behind this host's clock, \
             beyond the route's tolerance (a capture sent again, an old request retried with its \
             first signature, or a clock that is wrong)"
        }
        (StaleTimestamp, Some(_)) => {
            "request rejected: its signed timestamp is -skew_s seconds ahead of this host's \
             clock, beyond the route's tolerance (the sender's clock or this host's is wrong)"
        }
        (StaleTimestamp, None) => {
            "request rejected: its signed timestamp is missing, unreadable or beyond the route's \
             tolerance"
        }
    }
}

/// A dedupe key as a log line shows it: quoted (it is the sender's text), `-` for none, cut to
/// 128 bytes (a header's value may be long).
struct Key(Option<String>);

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("-"),
            Some(k) if k.len() <= 128 => write!(f, "{k:?}"),
            Some(k) => {
                let mut end = 128;
                while !k.is_char_boundary(end) {
                    end -= 1;
                }
                write!(f, "{:?}", format!("{}…", &k[..end]))
            }
        }
    }
}

/// Proxy mode: forward now, relay the upstream's answer; 502 unreachable, 504 too slow.
async fn proxy(
    upstream: &crate::forward::http::HttpSink,
    route: &str,
    parts: &http::request::Parts,
    body: bytes::Bytes,
    verified: &crate::verify::Verified,
    now: SystemTime,
    mut held: super::Held,
) -> Outcome {
    use crate::forward::http::ProxyError;
    let received_at_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ev = NewEvent::new(route, parts, body, verified, received_at_ms).into_event();
    let id = ev.id.clone();
    let (reply, outcome, error) = match upstream.proxy(&ev, &mut held).await {
        // The answer's buffer carries its count: given back when the connection drops the
        // last of it, once written to the sender (a slow reader's answer still counts).
        Ok(resp) => (
            resp.map(|buf| http_body_util::Full::new(super::body::counted(buf, held))),
            "proxied",
            None,
        ),
        Err(ProxyError::Unreachable(why)) => (
            reject::json(
                http::StatusCode::BAD_GATEWAY,
                r#"{"error":"bad_gateway"}"#.into(),
            ),
            "bad_gateway",
            Some(why),
        ),
        Err(ProxyError::Timeout) => (
            reject::json(
                http::StatusCode::GATEWAY_TIMEOUT,
                r#"{"error":"gateway_timeout"}"#.into(),
            ),
            "gateway_timeout",
            Some("no answer within forward.timeout".to_string()),
        ),
        Err(ProxyError::Busy) => {
            let mut reply = Reject::Unavailable.response();
            reply.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            (
                reply,
                "upstream_busy",
                Some(
                    "forward.concurrency requests were out to the upstream for half of forward.timeout: not sent"
                        .to_string(),
                ),
            )
        }
    };
    Outcome::Proxied {
        id,
        reply,
        outcome,
        error,
    }
}

/// Headers that carry a signature or its timestamp, by name, for every scheme.
fn signature_fingerprint<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut fp: Vec<String> = headers
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.contains("signature")
                || k.contains("timestamp")
                || k.contains("hmac")
                || k == "authorization"
        })
        .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
        .collect();
    fp.sort();
    fp
}

/// Whether a duplicate carries exactly the original's signature headers (`None`: unknown).
/// A duplicate compared with its original (`Compared::default()` when the original is gone).
#[derive(Default)]
struct Compared {
    /// Whether it carries the original's very signature (`None`: nothing to compare).
    same_signature: Option<bool>,
    /// The original's dedupe key, when this copy's is another (it matched by the second key).
    under_another_key: Option<String>,
}

async fn compare(
    store: &std::sync::Arc<dyn crate::store::Store>,
    original: &str,
    headers: &http::HeaderMap,
    key: Option<&str>,
) -> Compared {
    let Ok(Some(ev)) = store.get(original).await else {
        return Compared::default();
    };
    let under_another_key = ev
        .summary
        .dedupe_key
        .clone()
        .filter(|k| Some(k.as_str()) != key);
    Compared {
        same_signature: same_signature(ev.headers, headers),
        under_another_key,
    }
}

fn same_signature(original: serde_json::Value, headers: &http::HeaderMap) -> Option<bool> {
    let stored: crate::store::StoredHeaders = serde_json::from_value(original).ok()?;
    let map = stored.to_map();
    let old = signature_fingerprint(
        map.iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    let new = signature_fingerprint(
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    if old.is_empty() {
        return None;
    }
    Some(old == new)
}

/// What hyper's read buffer does not bound exactly: the head's size (its buffer takes a head
/// somewhat over `MAX_HEAD`), and transfer codings it passes through undecoded.
fn check_head(parts: &http::request::Parts) -> Result<(), Reject> {
    let size = parts.method.as_str().len()
        + parts.uri.scheme_str().map_or(0, |s| s.len() + 3)
        + parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > super::MAX_HEAD {
        return Err(Reject::HeadersTooLarge);
    }
    for v in parts.headers.get_all(http::header::TRANSFER_ENCODING) {
        let only_chunked = v
            .as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .all(|t| t.eq_ignore_ascii_case(b"chunked"));
        if !only_chunked {
            return Err(Reject::UnsupportedTransferCoding);
        }
    }
    Ok(())
}
