//! An event as recorded: the request exactly as received (method, query, headers, raw body)
//! plus what the gateway knows of it. `NewEvent` can only be built from a `Verified`, so
//! nothing unverified is ever recorded.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::verify::Verified;

pub type EventId = String;

/// A new time-sortable event id (UUIDv7).
pub fn new_event_id() -> EventId {
    uuid::Uuid::now_v7().to_string()
}

/// Header values as stored: text when they are UTF-8, else their bytes (lossless).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// Whether a header name is one of the gateway's own `Hookgate-*` headers, which no sender
/// may supply. `_` and `.` count as `-`: CGI-style servers (WSGI, Rack, PHP) read
/// `Hookgate_Verified` as the same variable as `Hookgate-Verified`, so a look-alike would
/// reach the upstream's application as the gateway's header. Names arrive lower-cased.
pub fn is_gateway_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 9 && b[..8].eq_ignore_ascii_case(b"hookgate") && matches!(b[8], b'-' | b'_' | b'.')
}

/// The request's headers in order, as a JSON array of `[name, value]` pairs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StoredHeaders(Vec<(String, Value)>);

impl StoredHeaders {
    /// Keeps every header except the gateway's own ([`is_gateway_header`]), which no sender
    /// may forge.
    pub fn from_map(map: &HeaderMap) -> Self {
        StoredHeaders(
            map.iter()
                .filter(|(k, _)| !is_gateway_header(k.as_str()))
                .map(|(k, v)| {
                    let val = match v.to_str() {
                        Ok(s) => Value::Text(s.to_string()),
                        Err(_) => Value::Bytes(v.as_bytes().to_vec()),
                    };
                    (k.as_str().to_string(), val)
                })
                .collect(),
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "[]".into())
    }

    pub fn from_json(s: &str) -> Self {
        serde_json::from_str(s).unwrap_or_default()
    }

    pub fn to_map(&self) -> HeaderMap {
        self.to_map_with(|_| true, 0)
    }

    /// The headers whose (lower-case) name `keep` accepts, with room for `extra` more.
    pub fn to_map_with(&self, keep: impl Fn(&str) -> bool, extra: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.0.len() + extra);
        for (k, v) in self.0.iter().filter(|(k, _)| keep(k)) {
            let value = match v {
                Value::Text(s) => HeaderValue::from_str(s),
                Value::Bytes(b) => HeaderValue::from_bytes(b),
            };
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), value) {
                map.append(name, value);
            }
        }
        map
    }

    /// Every text value of the header `name`, in order (a non-UTF-8 one is skipped: to read a
    /// list whose every item matters, such as `Connection`, use [`Self::get_all_bytes`]).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| match v {
                Value::Text(s) => Some(s.as_str()),
                Value::Bytes(_) => None,
            })
    }

    /// Every value of the header `name` as bytes, text or not, in order.
    pub fn get_all_bytes<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| match v {
                Value::Text(s) => s.as_bytes(),
                Value::Bytes(b) => b.as_slice(),
            })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| match v {
                Value::Text(s) => Some(s.as_str()),
                Value::Bytes(_) => None,
            })
    }
}

/// Something kept alive while an event's record is under way, with the last copy of its
/// `NewEvent`: the request body's share of `server.max_body_memory`. A write still queued in a
/// stalled store outlives its request (answered 503 at its deadline), and its body with it.
#[derive(Clone, Default)]
pub struct Keep {
    /// Only held, never read: its drop is what counts.
    _kept: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl Keep {
    pub fn new<T: Send + Sync + 'static>(t: T) -> Keep {
        Keep {
            _kept: Some(std::sync::Arc::new(t)),
        }
    }
}

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keep")
    }
}

/// A verified request, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub route: String,
    pub received_at_ms: i64,
    pub method: String,
    pub query: Option<String>,
    pub headers: StoredHeaders,
    pub body: Bytes,
    pub scheme: &'static str,
    pub dedupe_key: Option<String>,
    /// Dropped with the event once the store is done with it.
    pub keep: Keep,
}

impl NewEvent {
    pub fn new(
        route: &str,
        req: &Parts,
        body: Bytes,
        verified: &Verified,
        received_at_ms: i64,
    ) -> Self {
        NewEvent {
            id: new_event_id(),
            route: route.to_string(),
            received_at_ms,
            method: req.method.as_str().to_string(),
            query: req.uri.query().map(str::to_string),
            headers: StoredHeaders::from_map(&req.headers),
            body,
            scheme: verified.scheme,
            dedupe_key: None,
            keep: Keep::default(),
        }
    }
}

impl NewEvent {
    /// The event as a sink sees it, without recording it (proxy mode).
    pub fn into_event(self) -> Event {
        Event {
            id: self.id,
            route: self.route,
            received_at_ms: self.received_at_ms,
            method: self.method,
            query: self.query,
            headers: self.headers,
            body: self.body,
            scheme: self.scheme.to_string(),
            attempts: 0,
            cycle_attempts: 0,
            cycle_started_at_ms: self.received_at_ms,
        }
    }
}

/// A recorded event leased for delivery.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub route: String,
    pub received_at_ms: i64,
    pub method: String,
    pub query: Option<String>,
    pub headers: StoredHeaders,
    pub body: Bytes,
    pub scheme: String,
    /// Attempts made so far over the event's life (the next is `attempts + 1`).
    pub attempts: u32,
    /// Attempts since the last replay, counted against `max_attempts`.
    pub cycle_attempts: u32,
    /// Start of the current retry budget (received, or last replayed), for `max_age`.
    pub cycle_started_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_lossless_and_drop_hookgate() {
        let mut m = HeaderMap::new();
        m.append("x-a", HeaderValue::from_static("1"));
        m.append("x-a", HeaderValue::from_static("2"));
        m.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        m.append("hookgate-event-id", HeaderValue::from_static("forged"));
        let s = StoredHeaders::from_map(&m);
        let back = StoredHeaders::from_json(&s.to_json()).to_map();
        assert_eq!(back.get_all("x-a").iter().count(), 2);
        assert_eq!(back.get("x-bin").unwrap().as_bytes(), b"caf\xe9");
        assert!(back.get("hookgate-event-id").is_none());
    }

    #[test]
    fn look_alikes_of_the_gateway_headers_are_dropped_too() {
        let mut m = HeaderMap::new();
        for name in [
            "hookgate_verified",
            "hookgate.route",
            "hookgate-attempt",
            "hookgatex",
            "x-hookgate-a",
            "hookgate",
        ] {
            m.append(name, HeaderValue::from_static("forged"));
        }
        let s = StoredHeaders::from_map(&m);
        let kept: Vec<_> = s.to_map().keys().map(|k| k.to_string()).collect();
        assert_eq!(kept, ["hookgatex", "x-hookgate-a", "hookgate"]);
    }
}
