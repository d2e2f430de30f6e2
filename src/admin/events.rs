//! `/admin/routes` and `/admin/events…`: what happened to any event, and replay.

use http::StatusCode;
use serde::Serialize;

use super::{error, error_detail, ok_json, Admin};
use crate::forward::worker::now_ms;
use crate::ingress::reject::Reply;
use crate::store::{ListQuery, State, StoreError};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Longest `key=` looked up (the request line itself must fit an admin request's head).
const MAX_KEY_BYTES: usize = 8 << 10;

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    /// `false` for a route the store holds pending or dead events of that the config no longer
    /// has (removed or renamed): nothing delivers them. (A route switched to proxy mode is
    /// listed as configured; its pending count is what no worker delivers.)
    configured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sink: Option<&'static str>,
    pending: u64,
    delivered: u64,
    dead: u64,
    /// Since when the route's delivery circuit is open (its sink kept failing: pending events
    /// wait past their `next_attempt_at` for the probe); absent while closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_open_since: Option<String>,
}

/// Since when `route`'s delivery circuit is open, in the current config, if it is.
fn circuit_open_since(table: &crate::app::RouteTable, route: &str) -> Option<String> {
    let cfg = table.routes.iter().find(|r| r.name == route)?;
    let ms = table
        .router
        .get(&cfg.path)?
        .metrics
        .circuit_open_since_ms()?;
    Some(crate::store::rfc3339_ms(ms))
}

/// A store operation of the admin API failed: counted with the others, logged, `503`.
fn unavailable(e: StoreError) -> Reply {
    metrics::counter!("hookgate_store_errors_total").increment(1);
    tracing::warn!(error = %e, "admin: store operation failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
}

/// Whether a worker of the current config delivers `route`'s events. A replay of an event no
/// worker delivers (its route removed, renamed, or now in proxy mode) is refused with `409`:
/// it would be marked pending and then wait, stranded, while the answer said "replaying".
fn delivered_by_a_worker(admin: &Admin, route: &str) -> bool {
    admin
        .table
        .load()
        .routes
        .iter()
        .any(|r| r.name == route && crate::app::has_worker(r))
}

pub async fn routes(admin: &Admin) -> Reply {
    let mut out = Vec::new();
    let table = admin.table.load_full();
    let mut stranded = crate::app::stranded_routes(admin.store.as_ref(), &table.routes).await;
    // A route in proxy mode is listed once, as configured.
    stranded.retain(|n| !table.routes.iter().any(|r| &r.name == n));
    let configured = table.routes.iter().map(|r| (r.name.as_str(), Some(r)));
    for (name, r) in configured.chain(stranded.iter().map(|n| (n.as_str(), None))) {
        let c = match admin.store.counts(name).await {
            Ok(c) => c,
            Err(e) => return unavailable(e),
        };
        out.push(RouteView {
            name,
            configured: r.is_some(),
            path: r.map(|r| r.path.as_str()),
            verify: r.map(|r| r.verifier.scheme()),
            sink: r.map(|r| r.forward.target.kind()),
            pending: c.pending,
            delivered: c.delivered,
            dead: c.dead,
            circuit_open_since: circuit_open_since(&table, name),
        });
    }
    ok_json(StatusCode::OK, &serde_json::json!({ "routes": out }))
}

pub async fn list(admin: &Admin, query: Option<&str>) -> Reply {
    let mut q = ListQuery {
        route: None,
        state: None,
        limit: DEFAULT_LIMIT,
        key: None,
        before: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        // Given twice (`state=dead&state=pending`): which one applies would be a guess.
        if seen.iter().any(|s| *s == k) {
            return error_detail(
                StatusCode::BAD_REQUEST,
                "repeated_parameter",
                format!("{k}= is given more than once"),
            );
        }
        seen.push(k.to_string());
        match k.as_ref() {
            "route" if !v.is_empty() => {
                let table = admin.table.load_full();
                if !table.routes.iter().any(|r| r.name == v)
                    && !crate::app::stranded_routes(admin.store.as_ref(), &table.routes)
                        .await
                        .contains(&v.to_string())
                {
                    return error(StatusCode::NOT_FOUND, "unknown_route");
                }
                q.route = Some(v.into_owned());
            }
            "state" if !v.is_empty() => match State::parse(&v) {
                Some(s) => q.state = Some(s),
                None => {
                    return error_detail(
                        StatusCode::BAD_REQUEST,
                        "invalid_state",
                        "state is one of pending, delivered, dead".into(),
                    )
                }
            },
            "key" if !v.is_empty() => match v.len() {
                n if n <= MAX_KEY_BYTES => q.key = Some(v.into_owned()),
                _ => return error(StatusCode::BAD_REQUEST, "invalid_key"),
            },
            // Spelled as event ids are (hyphenated, lowercase), whatever form was sent: the
            // stores compare it as text.
            "before" if !v.is_empty() => match before_cursor(&v) {
                Some(id) => q.before = Some(id),
                None => return error_detail(
                    StatusCode::BAD_REQUEST,
                    "invalid_before",
                    "before is an event id (the last one of the previous page) or an RFC 3339 time"
                        .into(),
                ),
            },
            // Over the most one page holds is refused, not cut short without a word.
            "limit" if !v.is_empty() => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => {
                    return error_detail(
                        StatusCode::BAD_REQUEST,
                        "invalid_limit",
                        format!("limit is 1 to {MAX_LIMIT}"),
                    )
                }
            },
            // Left empty (a script's unset variable): refused, not read as "no filter".
            name @ ("route" | "state" | "key" | "limit" | "before") => {
                return error_detail(
                    StatusCode::BAD_REQUEST,
                    "empty_parameter",
                    format!("{name}= has no value"),
                )
            }
            // A misspelt filter (`rout=`) would otherwise list every event as if it applied.
            other => {
                return error_detail(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!("{other:?} is not one of route, state, key, limit, before"),
                )
            }
        }
    }
    match admin.store.list(&q).await {
        Ok(events) => {
            // A full page may have more behind it: `next` is the `before=` that continues.
            let next = (events.len() == q.limit)
                .then(|| events.last().map(|e| e.event_id.clone()))
                .flatten();
            let mut body = serde_json::json!({ "events": events, "next": next });
            // Nothing found by key reads like "never received"; it may only be past the window.
            if q.key.is_some() && events.is_empty() {
                body["note"] = serde_json::Value::from(
                    "nothing matched: key= finds an event only while its dedupe key is kept (the \
                     route's dedupe ttl), and state= and before= narrow what it finds; an older \
                     event is still listed by route and state",
                );
            }
            ok_json(StatusCode::OK, &body)
        }
        Err(e) => unavailable(e),
    }
}

/// 404 for an event id the store does not hold. An id hookgate answered with may be gone:
/// delivered events go after `store.retention`, and a discarded dead one at once (its dedupe
/// key stays, so a redelivery is still answered as a duplicate with its id).
/// An event id as the stores spell it (hyphenated, lowercase: they compare it as text),
/// whatever form of the UUID was sent (`01A2…`, without hyphens, `{…}`, `urn:uuid:…`); anything
/// else as it came (`unknown_event` says what it is not).
pub fn spelled(id: &str) -> String {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => id.to_string(),
    }
}

/// An id that is not one hookgate gives (a provider's `evt_…`, say: what an operator is
/// handed at 3 a.m.) is said to be so, with where to look it up, rather than "never recorded".
fn unknown_event(id: &str) -> Reply {
    let detail = if uuid::Uuid::parse_str(id).is_err() {
        format!(
            "{id:?} is not a hookgate event id (those are UUIDs: the event_id of the 202 answer, sent upstream as Hookgate-Event-Id); to find an event by the id its sender gave it, list with key= set to it (GET /admin/events?key=…, hookgate events list --key …)"
        )
    } else {
        "no event with this id: never recorded (a mode = \"proxy\" route records none: its Hookgate-Event-Id is in the request's log line only), delivered longer ago than store.retention, or discarded".into()
    };
    error_detail(StatusCode::NOT_FOUND, "unknown_event", detail)
}

/// `before=`: an event id, spelled as event ids are (hyphenated, lowercase: the stores compare
/// it as text), whatever form was sent; or a time (`2026-12-07T03:15:00Z`), which stands for
/// the first id of its millisecond: events received before it.
fn before_cursor(v: &str) -> Option<String> {
    if let Ok(id) = uuid::Uuid::parse_str(v) {
        return (id.get_version_num() == 7).then(|| id.hyphenated().to_string());
    }
    let ms = parse_rfc3339_ms(v).filter(|ms| (0..1 << 48).contains(ms))?;
    Some(format!(
        "{}-7000-8000-000000000000",
        crate::store::id_prefix(ms)
    ))
}

/// An RFC 3339 time with its offset (`Z`, `+01:00`, `-05:00`; `T` and `Z` in either case),
/// as ms since the epoch. No offset is no time: a local time would be read wrongly.
fn parse_rfc3339_ms(v: &str) -> Option<i64> {
    let mut v = v.trim().to_ascii_uppercase();
    if !v.is_ascii() {
        return None;
    }
    // `+01:00` sent unencoded in a query string arrives as ` 01:00`.
    if v.len() > 6 && v.as_bytes()[v.len() - 6] == b' ' {
        v.replace_range(v.len() - 6..v.len() - 5, "+");
    }
    let (local, offset_min) = match v.strip_suffix('Z') {
        Some(local) => (local, 0),
        None => {
            let (local, off) = v.split_at(v.len().checked_sub(6)?);
            let sign = match off.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = off.get(1..)?.split_once(':')?;
            let two_digits = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
            if !two_digits(h) || !two_digits(m) {
                return None;
            }
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h >= 24 || m >= 60 {
                return None;
            }
            (local, sign * (h * 60 + m))
        }
    };
    // `YYYY-MM-DDTHH:MM:SS`, then a fraction of at least one digit or nothing (humantime's
    // parser is lenient past that: trailing text, a bare dot).
    let shape = local.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T' || b == b' ',
        13 | 16 => b == b':',
        19 => b == b'.',
        _ => b.is_ascii_digit(),
    });
    if !shape || local.len() == 20 || (local.len() < 19) {
        return None;
    }
    // The date and time as if in UTC, then moved by the offset.
    let at = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    let ms = i64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(ms - offset_min * 60_000)
}

pub async fn show(admin: &Admin, id: &str) -> Reply {
    match admin.store.get(id).await {
        Ok(Some(mut ev)) => {
            // Every configured route's token header, not only the event's route's: the event
            // may be of a route since removed or changed. GitLab's is known by its scheme.
            let table = admin.table.load();
            let mut credentials: Vec<&str> = table
                .routes
                .iter()
                .filter_map(|r| r.verifier.credential_header())
                .collect();
            if ev.summary.verified == crate::verify::gitlab::SCHEME {
                credentials.push(crate::verify::gitlab::TOKEN_HEADER);
            }
            // Okta's token header is the hook's choice, and the event does not record which
            // it was (the route may have changed it since): every header but the common
            // harmless ones is masked.
            let unknown_token = ev.summary.verified == crate::verify::okta::SCHEME;
            redact_credentials(&mut ev.headers, &credentials, unknown_token);
            // A pending event past its next_attempt_at with no attempt: the route's circuit
            // is open, which the event alone would not say.
            let circuit = (ev.summary.state == State::Pending)
                .then(|| circuit_open_since(&table, &ev.summary.route))
                .flatten();
            match (circuit, serde_json::to_value(&ev)) {
                (Some(since), Ok(mut v)) => {
                    v["route_circuit_open_since"] = serde_json::Value::from(since);
                    ok_json(StatusCode::OK, &v)
                }
                _ => ok_json(StatusCode::OK, &ev),
            }
        }
        Ok(None) => unknown_event(id),
        Err(e) => unavailable(e),
    }
}

/// What a masked header value reads as.
const REDACTED: &str = "[redacted]";

/// Masks, in the stored `[name, value]` pairs, the values that are credentials: a secret
/// itself where a scheme sends it as is (`credentials`: static-token header names), and
/// `Authorization` / `Proxy-Authorization` always (Basic and Bearer routes' secrets, or a
/// credential meant for the upstream). The store keeps them as received, since they are
/// forwarded unchanged.
fn redact_credentials(headers: &mut serde_json::Value, credentials: &[&str], only_known: bool) {
    /// Headers shown even when the token's header is not known (`only_known`).
    const HARMLESS: &[&str] = &[
        "accept",
        "accept-encoding",
        "content-length",
        "content-type",
        "date",
        "traceparent",
        "user-agent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-okta-verification-challenge",
        "x-real-ip",
    ];
    let Some(pairs) = headers.as_array_mut() else {
        return;
    };
    for pair in pairs {
        let Some([name, value]) = pair.as_array_mut().map(|p| p.as_mut_slice()) else {
            continue;
        };
        let secret = name.as_str().map_or(true, |n| {
            n.eq_ignore_ascii_case("authorization")
                || n.eq_ignore_ascii_case("proxy-authorization")
                || credentials.iter().any(|c| n.eq_ignore_ascii_case(c))
                || (only_known && !HARMLESS.iter().any(|h| n.eq_ignore_ascii_case(h)))
        });
        if secret {
            *value = serde_json::Value::from(REDACTED);
        }
    }
}

pub async fn replay(admin: &Admin, id: &str) -> Reply {
    let (route, was, attempts) = match admin.store.get(id).await {
        Ok(Some(ev)) => (ev.summary.route, ev.summary.state, ev.summary.attempts),
        Ok(None) => return unknown_event(id),
        Err(e) => return unavailable(e),
    };
    if !delivered_by_a_worker(admin, &route) {
        return error(StatusCode::CONFLICT, "route_not_delivered");
    }
    match admin.store.replay(id, now_ms()).await {
        Ok(true) if !delivered_by_a_worker(admin, &route) => {
            // A reload removed the route's worker meanwhile: the event is pending and waits
            // for a route of that name, as a stranded one.
            tracing::error!(route = %route, event_id = %id, "replayed, but a reload removed the route's worker meanwhile");
            error(StatusCode::CONFLICT, "route_not_delivered")
        }
        Ok(true) => {
            wake_after_replay(admin, &route);
            tracing::info!(route = %route, event_id = %id, was = was.as_str(), after_attempts = attempts, "replay requested");
            ok_json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "status": "replaying", "event_id": id, "was": was.as_str() }),
            )
        }
        Ok(false) => unknown_event(id),
        Err(e) => unavailable(e),
    }
}

/// `DELETE /admin/events/{id}`: a dead letter nobody wants (the upstream rightly refuses it)
/// is deleted with its attempt log, so it stops counting in `hookgate_dead_events`. Only a
/// dead event: a pending one would be lost undelivered, a delivered one goes with the
/// retention.
pub async fn discard(admin: &Admin, id: &str) -> Reply {
    let ev = match admin.store.get(id).await {
        Ok(Some(ev)) => ev.summary,
        Ok(None) => return unknown_event(id),
        Err(e) => return unavailable(e),
    };
    let not_dead = |state: &str| {
        error_detail(
            StatusCode::CONFLICT,
            "not_dead",
            format!("the event is {state}: only dead events can be discarded"),
        )
    };
    if ev.state != State::Dead {
        return not_dead(ev.state.as_str());
    }
    match admin.store.discard_dead(id).await {
        Ok(true) => {
            tracing::warn!(route = %ev.route, event_id = %id, dedupe_key = ev.dedupe_key.as_deref().unwrap_or(""), "dead event discarded (DELETE /admin/events/{{id}}): deleted with its attempt log");
            ok_json(
                StatusCode::OK,
                &serde_json::json!({ "status": "discarded", "event_id": id, "route": ev.route }),
            )
        }
        // A replay came first, or another discard.
        Ok(false) => match admin.store.get(id).await {
            Ok(Some(ev)) => not_dead(ev.summary.state.as_str()),
            Ok(None) => unknown_event(id),
            Err(e) => unavailable(e),
        },
        Err(e) => unavailable(e),
    }
}

/// Wakes the route's worker to deliver what was replayed, ending an open circuit's pause:
/// the operator replays once the upstream is fixed.
fn wake_after_replay(admin: &Admin, route: &str) {
    let table = admin.table.load();
    if let Some(flag) = table.replayed.get(route) {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(w) = table.wake.get(route) {
        w.notify_one();
    }
}

pub async fn replay_dead(admin: &Admin, name: &str) -> Reply {
    if !delivered_by_a_worker(admin, name) {
        // A route the config has (in proxy mode), or one it no longer has whose events the
        // store still holds (`/admin/routes` lists it), exists: nothing would deliver them.
        let known = admin.table.load().routes.iter().any(|r| r.name == name)
            || match admin.store.counts(name).await {
                Ok(c) => c.pending + c.delivered + c.dead > 0,
                Err(e) => return unavailable(e),
            };
        return if known {
            error(StatusCode::CONFLICT, "route_not_delivered")
        } else {
            error(StatusCode::NOT_FOUND, "unknown_route")
        };
    }
    match admin.store.replay_dead(name, now_ms()).await {
        Ok(n) if !delivered_by_a_worker(admin, name) => {
            tracing::error!(route = %name, replayed = n, "dead events redriven, but a reload removed the route's worker meanwhile");
            error(StatusCode::CONFLICT, "route_not_delivered")
        }
        Ok(n) => {
            wake_after_replay(admin, name);
            tracing::info!(route = %name, replayed = n, "dead events redriven");
            ok_json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "status": "replaying", "replayed": n }),
            )
        }
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_taken_in_any_spelling_of_its_uuid() {
        let id = "01a24fd1-f003-712b-9ee3-10de5f38a24e";
        for form in [
            id.to_string(),
            id.to_uppercase(),
            id.replace('-', ""),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
        ] {
            assert_eq!(spelled(&form), id, "{form}");
        }
        assert_eq!(spelled("evt_1QfinanceX"), "evt_1QfinanceX");
    }

    #[test]
    fn before_is_an_event_id_in_any_spelling_or_a_time() {
        let id = "01a24fd1-f003-712b-9ee3-10de5f38a24e";
        for spelling in [id, &id.to_uppercase(), &id.replace('-', "")] {
            assert_eq!(before_cursor(spelling).as_deref(), Some(id), "{spelling}");
        }
        // A UUID that is not an event id (v4), and neither an id nor a time.
        assert_eq!(before_cursor("0b6f9c2e-3f5d-4c1a-9a57-2f0e4d1b8a6c"), None);
        assert_eq!(before_cursor("evt_1"), None);
        // Offsets other than Z, lowercase; no offset is refused (a local time is ambiguous).
        let utc = before_cursor("2026-12-07T03:15:00.123Z");
        for same in [
            "2026-12-07T04:15:00.123+01:00",
            "2026-12-06T22:15:00.123-05:00",
            "2026-12-07t03:15:00.123z",
            "2026-12-07T03:15:00.123-00:00",
            // `+` unencoded in a query string reads as a space.
            "2026-12-07T04:15:00.123 01:00",
        ] {
            assert_eq!(before_cursor(same), utc, "{same}");
        }
        for bad in [
            "2026-12-07T03:15:00",
            "2026-12-07T03:15:00+1:000",
            "2026-12-07T03:15:00+25:00",
            "2026-12-07T03:15:00+0a:00",
            "2026-12-07T03:15:00Z1234Z",
            "2026-12-07T03:15:00Z+05:00",
            "2026-12-07T03:15:00.Z",
            "2026-12-07T03:15:00+é:00",
            "é",
        ] {
            assert_eq!(before_cursor(bad), None, "{bad}");
        }
        // A time: the first id of its millisecond, which orders below every event id of it.
        let at = before_cursor("2026-12-07T03:15:00.123Z").unwrap();
        let ms = 1_796_613_300_123i64;
        assert_eq!(crate::store::uuid7_ms(&at), Some(ms));
        assert_eq!(
            at,
            format!(
                "{:08x}-{:04x}-7000-8000-000000000000",
                ms >> 16,
                ms & 0xffff
            )
        );
        assert!(at.as_str() < "01a24e7f-5f9b-7000-8000-000000000001");
    }

    #[test]
    fn credentials_are_masked_and_other_headers_kept() {
        let mut h = serde_json::json!([
            ["authorization", "Basic dXNlcjpwYXNz"],
            ["Proxy-Authorization", "Bearer t"],
            ["x-gitlab-token", "s3cret"],
            ["x-okta-token", [1, 2, 3]],
            ["content-type", "application/json"]
        ]);
        redact_credentials(&mut h, &["x-okta-token"], false);
        assert_eq!(
            h,
            serde_json::json!([
                ["authorization", REDACTED],
                ["Proxy-Authorization", REDACTED],
                ["x-gitlab-token", "s3cret"],
                ["x-okta-token", REDACTED],
                ["content-type", "application/json"]
            ])
        );
        redact_credentials(&mut h, &["x-gitlab-token"], false);
        assert_eq!(h[2][1], REDACTED);
        // An okta event: its token header is not known, so only harmless headers are shown.
        let mut h = serde_json::json!([
            ["X-Custom-Okta-Secret", "s3cret"],
            ["Content-Type", "application/json"],
            ["user-agent", "Okta Google-HTTP-Java-Client"]
        ]);
        redact_credentials(&mut h, &[], true);
        assert_eq!(
            h,
            serde_json::json!([
                ["X-Custom-Okta-Secret", REDACTED],
                ["Content-Type", "application/json"],
                ["user-agent", "Okta Google-HTTP-Java-Client"]
            ])
        );
    }
}
