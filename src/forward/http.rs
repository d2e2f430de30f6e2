//! The HTTP sink (SPEC §6): the original method, raw body byte for byte, original headers
//! minus hop-by-hop ones and `Host`, the original query appended to the configured URL, and
//! the `Hookgate-*` headers. 2xx delivers; 408, 425, 429, 5xx, connection errors and
//! timeouts are retryable; any other status is permanent. Redirects are not followed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{sign, truncate_detail, DeliveryError, Receipt, Sink};
use crate::config::{ForwardSign, RouteConfig};
use crate::store::{rfc3339_ms, Event};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Host` and
/// the framing headers the client recomputes.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    route: String,
    sign: Option<ForwardSign>,
}

impl HttpSink {
    pub fn new(route: &Arc<RouteConfig>, url: reqwest::Url) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(route.forward.timeout)
            .pool_max_idle_per_host(route.forward.concurrency)
            .build()?;
        Ok(HttpSink {
            client,
            url,
            route: route.name.clone(),
            sign: route.forward.sign.clone(),
        })
    }

    /// The forwarded request (SPEC §6), re-signed when `[route.forward.sign]` says so.
    fn request(&self, ev: &Event, attempt: u32) -> reqwest::RequestBuilder {
        let method = Method::from_bytes(ev.method.as_bytes()).unwrap_or(Method::POST);
        let mut headers = forward_headers(ev, &self.route, attempt);
        if let Some(s) = &self.sign {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            sign::sign(&s.scheme, &s.secret, &ev.id, now, &ev.body, &mut headers);
        }
        self.client
            .request(method, self.target(ev.query.as_deref()))
            .headers(headers)
            .body(ev.body.clone())
    }

    fn target(&self, query: Option<&str>) -> reqwest::Url {
        let mut url = self.url.clone();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            let joined = match url.query() {
                Some(existing) if !existing.is_empty() => format!("{existing}&{q}"),
                _ => q.to_string(),
            };
            url.set_query(Some(&joined));
        }
        url
    }
}

/// The headers of the forwarded request: the original ones (no hop-by-hop, no `Host`, no
/// client-sent `Hookgate-*`) and the gateway's own.
pub fn forward_headers(ev: &Event, route: &str, attempt: u32) -> HeaderMap {
    let mut h = ev.headers.to_map();
    let connection_named: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    for name in connection_named {
        h.remove(name);
    }
    let own = h
        .keys()
        .filter(|k| k.as_str().starts_with("hookgate-"))
        .cloned()
        .collect::<Vec<_>>();
    for k in own {
        h.remove(k);
    }
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("hookgate-event-id", ev.id.clone());
    set("hookgate-route", route.to_string());
    set("hookgate-attempt", attempt.to_string());
    set("hookgate-verified", ev.scheme.clone());
    set("hookgate-received-at", rfc3339_ms(ev.received_at_ms));
    h
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

pub fn classify(status: u16) -> Option<bool> {
    match status {
        200..=299 => None,
        408 | 425 | 429 | 500..=599 => Some(true),
        _ => Some(false),
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError> {
        let req = self.request(ev, attempt);
        let mut resp = req.send().await.map_err(|e| DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail: format!("request failed: {}", error_chain(&e)),
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // At most 1 KiB of the answer is kept; the rest is not read.
        let mut snippet = Vec::new();
        while snippet.len() < 1024 {
            match resp.chunk().await {
                Ok(Some(c)) => snippet.extend_from_slice(&c[..c.len().min(1024 - snippet.len())]),
                _ => break,
            }
        }
        let detail = truncate_detail(&String::from_utf8_lossy(&snippet));
        match classify(status) {
            None => Ok(Receipt {
                status: Some(status),
                detail,
            }),
            Some(true) => Err(DeliveryError::Retryable {
                status: Some(status),
                retry_after,
                detail: format!("HTTP {status}: {detail}"),
            }),
            Some(false) => Err(DeliveryError::Permanent {
                status: Some(status),
                detail: format!("HTTP {status}: {detail}"),
            }),
        }
    }
}

/// Why a proxied request got no upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Connection refused, reset, DNS, TLS…: 502.
    Unreachable,
    /// No answer within `forward.timeout`: 504.
    Timeout,
}

/// The most of an upstream's answer relayed in proxy mode.
const MAX_PROXY_BODY: usize = 10 << 20;

impl HttpSink {
    /// `mode = "proxy"`: one request now, the upstream's status, headers and body relayed.
    pub async fn proxy(&self, ev: &Event) -> Result<http::Response<bytes::Bytes>, ProxyError> {
        let req = self.request(ev, 1);
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                ProxyError::Timeout
            } else {
                ProxyError::Unreachable
            }
        };
        let mut resp = req.send().await.map_err(classify)?;
        let status = resp.status();
        let mut out_headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_PROXY_BODY {
                return Err(ProxyError::Unreachable);
            }
            body.extend_from_slice(&chunk);
        }
        for name in HOP_BY_HOP {
            out_headers.remove(*name);
        }
        let mut out = http::Response::new(bytes::Bytes::from(body));
        *out.status_mut() = status;
        *out.headers_mut() = out_headers;
        Ok(out)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(200), None);
        assert_eq!(classify(204), None);
        for s in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(s), Some(true), "{s}");
        }
        for s in [301, 400, 401, 404, 410, 422] {
            assert_eq!(classify(s), Some(false), "{s}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("7"), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&date).unwrap(), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("soon"), now),
            None
        );
    }
}
