//! Exact-path routing and the per-route runtime state the ingress needs: the validated route,
//! its rate limiter and the wake-up for its delivery worker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use tokio::sync::Notify;

use crate::config::RouteConfig;
use crate::forward::http::HttpSink;
use crate::telemetry::RouteMetrics;

pub struct Route {
    pub cfg: Arc<RouteConfig>,
    pub allow: HeaderValue,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Wakes the route's delivery worker when an event is recorded; `None` when the store
    /// hands recorded events to the worker itself (`Store::handoff`).
    pub wake_on_accept: Option<Arc<Notify>>,
    /// `mode = "proxy"`: the upstream each verified request is forwarded to at once.
    pub proxy: Option<Arc<HttpSink>>,
    /// The route's metric handles, shared with its delivery worker.
    pub metrics: Arc<RouteMetrics>,
}

impl Route {
    pub fn new(cfg: Arc<RouteConfig>, wake_on_accept: Option<Arc<Notify>>) -> Self {
        let limiter = cfg.rate_limit.and_then(|rl| {
            let per_second = NonZeroU32::new(rl.per_second)?;
            let burst = NonZeroU32::new(rl.burst)?;
            Some(RateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ))
        });
        let allow = cfg
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let allow = HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("POST"));
        let metrics = Arc::new(RouteMetrics::new(&cfg.name));
        Route {
            cfg,
            allow,
            limiter,
            wake_on_accept,
            proxy: None,
            metrics,
        }
    }

    /// `Err(wait)` when over the route's rate limit.
    pub fn check_rate(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|nu| nu.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// An unknown client (`None`) passes only a route without an allow-list.
    pub fn ip_allowed(&self, ip: Option<IpAddr>) -> bool {
        self.cfg.allow_ips.is_empty()
            || ip.is_some_and(|ip| self.cfg.allow_ips.iter().any(|n| n.contains(&ip)))
    }
}

#[derive(Default)]
pub struct Router {
    by_path: HashMap<String, Arc<Route>>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = Arc<Route>>) -> Self {
        Router {
            by_path: routes
                .into_iter()
                .map(|r| (r.cfg.path.clone(), r))
                .collect(),
        }
    }

    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }
}

/// Every `X-Forwarded-For` field line, in order, as one comma-separated list (RFC 9110 §5.3:
/// several lines of a list field are one list). A proxy that appends its own line (HAProxy
/// `option forwardfor`) puts the hop it saw last, so reading only the first line would take the
/// client's own, forgeable, value. A line that is not visible ASCII stays in as an entry that
/// does not parse, so the client is unknown.
pub fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let mut lines = headers.get_all("x-forwarded-for").iter().peekable();
    lines.peek()?;
    Some(
        lines
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. `None` when that walk meets an
/// entry that is not an address (`unknown`, garbage): the client is then unknown, and an
/// allow-list refuses it rather than taking the proxy in front of it for the client.
/// Addresses are compared in canonical form (`::ffff:10.0.0.1` is `10.0.0.1`, as a dual-stack
/// listener reports IPv4 peers), and `ip:port` / `[v6]:port` entries (Azure Application
/// Gateway writes those) count by their address.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(xff) = xff else { return Some(peer) };
    let mut client = peer;
    for hop in xff.rsplit(',') {
        client = parse_hop(hop.trim())?;
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, `ip:port`, `[v6]` or `[v6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &trusted),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("9.9.9.9, 10.0.0.2"), &trusted),
            Some(ip("9.9.9.9"))
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("6.6.6.6, 9.9.9.9"), &trusted),
            Some(ip("9.9.9.9"))
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), None, &trusted),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn forwarded_for_entries_with_ports_brackets_or_no_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.0.0.1");
        for (xff, client) in [
            ("6.6.6.6:4711", Some(ip("6.6.6.6"))),
            ("[2001:db8::1]:443", Some(ip("2001:db8::1"))),
            ("[2001:db8::1]", Some(ip("2001:db8::1"))),
            ("::ffff:6.6.6.6", Some(ip("6.6.6.6"))),
            ("10.0.0.7:80", Some(ip("10.0.0.7"))),
            // Not an address: the client is unknown, never the proxy in front of it.
            ("unknown", None),
            ("6.6.6.6, unknown", None),
            ("", None),
            ("unknown, 6.6.6.6", Some(ip("6.6.6.6"))),
        ] {
            assert_eq!(client_ip(proxy, Some(xff), &trusted), client, "{xff:?}");
        }
    }

    #[test]
    fn a_dual_stack_listener_s_ipv4_peers_match_ipv4_networks() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), None, &trusted),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), Some("9.9.9.9"), &trusted),
            Some(ip("9.9.9.9"))
        );
    }

    #[test]
    fn every_forwarded_for_line_counts_in_order() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_for(&h), None);
        // The client forges the first line; the trusted proxy appends its own second line.
        h.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 10.0.0.2"),
        );
        let xff = forwarded_for(&h).unwrap();
        assert_eq!(xff, "10.9.9.9,6.6.6.6, 10.0.0.2");
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(&xff), &trusted),
            Some(ip("6.6.6.6"))
        );
        // A line that is not visible ASCII leaves the client unknown.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        let xff = forwarded_for(&h).unwrap();
        assert_eq!(client_ip(ip("10.0.0.1"), Some(&xff), &trusted), None);
    }
}
