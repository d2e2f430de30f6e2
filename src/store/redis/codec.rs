//! Between Redis replies and the store's types: the event hash's fields, attempt JSON, and
//! the summaries the admin API shows. Pure functions; a malformed reply is an error, never a
//! panic.

use std::collections::HashMap;

use ::redis::Value;
use bytes::Bytes;

use crate::store::{
    rfc3339_ms, Attempt, Event, EventSummary, NewEvent, Replay, State, StoreError, StoredHeaders,
};

/// The hash fields `list`/`get` read for a summary, in this order.
pub const SUMMARY_FIELDS: [&str; 9] = [
    "route",
    "state",
    "received_at",
    "attempts",
    "next_attempt_at",
    "last_error",
    "dedupe_key",
    "scheme",
    "body_len",
];

pub fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!("redis: unexpected reply ({what})"))
}

/// The field/value pairs of a new event's hash (without `entry`, which the script sets).
pub fn event_fields(ev: &NewEvent) -> Vec<(&'static str, Vec<u8>)> {
    let at = ev.received_at_ms.to_string().into_bytes();
    let mut f = vec![
        ("id", ev.id.clone().into_bytes()),
        ("route", ev.route.clone().into_bytes()),
        ("received_at", at.clone()),
        ("method", ev.method.clone().into_bytes()),
        ("headers", ev.headers.to_json().into_bytes()),
        ("body", ev.body.to_vec()),
        ("body_len", ev.body.len().to_string().into_bytes()),
        ("scheme", ev.scheme.as_bytes().to_vec()),
        ("state", b"pending".to_vec()),
        ("attempts", b"0".to_vec()),
        ("cycle_attempts", b"0".to_vec()),
        ("cycle_started_at", at.clone()),
        ("next_attempt_at", at.clone()),
        ("updated_at", at),
    ];
    if let Some(q) = &ev.query {
        f.push(("query", q.clone().into_bytes()));
    }
    if let Some(k) = &ev.dedupe_key {
        f.push(("dedupe_key", k.clone().into_bytes()));
    }
    f
}

pub fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub fn string(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        _ => bytes(v).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => bytes(v).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

pub fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("expected an array")),
    }
}

/// A flat `field, value, …` array (HGETALL) as a map.
/// A hash (`HGETALL`, `XINFO`): field/value pairs in RESP2, a map in RESP3 (a `store.url`
/// with `?protocol=resp3` gets maps from commands, arrays from scripts).
pub fn hash(v: Value) -> Result<HashMap<String, Value>, StoreError> {
    let mut out = HashMap::new();
    if let Value::Map(pairs) = v {
        for (k, v) in pairs {
            out.insert(string(&k).ok_or_else(|| bad("hash field"))?, v);
        }
        return Ok(out);
    }
    let mut it = array(v)?.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(string(&k).ok_or_else(|| bad("hash field"))?, v);
    }
    Ok(out)
}

fn field_str(h: &HashMap<String, Value>, k: &str) -> Option<String> {
    h.get(k).and_then(string)
}

fn field_int(h: &HashMap<String, Value>, k: &str) -> Option<i64> {
    h.get(k).and_then(int)
}

/// A leased event from its hash.
pub fn event(h: &HashMap<String, Value>) -> Result<Event, StoreError> {
    let need = |k: &str| field_str(h, k).ok_or_else(|| bad(k));
    let received_at_ms = field_int(h, "received_at").ok_or_else(|| bad("received_at"))?;
    Ok(Event {
        id: need("id")?,
        route: need("route")?,
        received_at_ms,
        method: need("method")?,
        query: field_str(h, "query"),
        headers: StoredHeaders::from_json(&field_str(h, "headers").unwrap_or_default()),
        body: Bytes::from(h.get("body").and_then(bytes).unwrap_or_default().to_vec()),
        scheme: need("scheme")?,
        attempts: field_int(h, "attempts").unwrap_or(0).max(0) as u32,
        cycle_attempts: field_int(h, "cycle_attempts").unwrap_or(0).max(0) as u32,
        cycle_started_at_ms: field_int(h, "cycle_started_at").unwrap_or(received_at_ms),
    })
}

/// A summary from the values of `SUMMARY_FIELDS` (HMGET); `None` when the event is gone.
pub fn summary(id: &str, vals: &[Value]) -> Option<EventSummary> {
    let get = |i: usize| vals.get(i).and_then(string);
    let geti = |i: usize| vals.get(i).and_then(int);
    let state = State::parse(&get(1)?)?;
    Some(EventSummary {
        event_id: id.to_string(),
        route: get(0)?,
        state,
        received_at: rfc3339_ms(geti(2)?),
        attempts: geti(3).unwrap_or(0).max(0) as u32,
        next_attempt_at: if state == State::Pending {
            geti(4).map(rfc3339_ms)
        } else {
            None
        },
        last_error: get(5),
        dedupe_key: get(6),
        verified: get(7).unwrap_or_default(),
        body_bytes: geti(8).unwrap_or(0).max(0) as usize,
    })
}

pub fn attempt_json(a: &Attempt) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "{}".into())
}

pub fn attempt_from_json(s: &[u8]) -> Option<Attempt> {
    let v: serde_json::Value = serde_json::from_slice(s).ok()?;
    Some(Attempt {
        n: v["n"].as_u64()? as u32,
        started_at_ms: v["started_at_ms"].as_i64()?,
        outcome: match v["outcome"].as_str()? {
            "delivered" => "delivered",
            "dead" => "dead",
            _ => "retry",
        },
        status: v["status"].as_u64().map(|s| s as u16),
        latency_ms: v["latency_ms"].as_u64().unwrap_or(0),
        detail: v["detail"].as_str().unwrap_or_default().to_string(),
    })
}

/// A replay's mark in the attempt log (see `replay_fn!`); `None` for an attempt.
pub fn replay_from_json(s: &[u8]) -> Option<Replay> {
    let v: serde_json::Value = serde_json::from_slice(s).ok()?;
    Some(Replay {
        at_ms: v["replayed_at_ms"].as_i64()?,
        after_attempts: v["after_attempts"].as_u64().unwrap_or(0) as u32,
        was: v["was"]
            .as_str()
            .and_then(State::parse)
            .unwrap_or(State::Pending),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attempt_round_trips_through_json() {
        let a = Attempt {
            n: 3,
            started_at_ms: 1_700_000_000_123,
            outcome: "retry",
            status: Some(503),
            latency_ms: 12,
            detail: "HTTP 503: \"nope\"".into(),
        };
        let b = attempt_from_json(attempt_json(&a).as_bytes()).unwrap();
        assert_eq!(
            (
                b.n,
                b.started_at_ms,
                b.outcome,
                b.status,
                b.latency_ms,
                b.detail
            ),
            (3, 1_700_000_000_123, "retry", Some(503), 12, a.detail)
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(hash(Value::Int(3)).is_err());
        assert!(event(&HashMap::new()).is_err());
        assert!(summary("x", &[Value::Nil, Value::Nil]).is_none());
        assert!(attempt_from_json(b"not json").is_none());
    }
}
