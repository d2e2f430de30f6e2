//! The HTTP sink (SPEC §6): the original method, raw body byte for byte, original headers
//! minus hop-by-hop ones and `Host`, the original query appended to the configured URL, and
//! the `Hookgate-*` headers. 2xx delivers; 408, 425, 429, 5xx, connection errors and
//! timeouts are retryable; any other status is permanent. Redirects are not followed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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
    // Asks the receiver to wait for a 100 before the body: the gateway sends the body whole,
    // and a strict server may answer 417 (permanent, so the event would go dead).
    "expect",
];

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type AnyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How requests leave: hyper-util's pooled client, or, when the environment names an HTTP
/// proxy (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, any case), reqwest, which honours those
/// and `NO_PROXY`.
enum Transport {
    Direct(Box<Client<Connector, Full<Bytes>>>),
    Proxied(reqwest::Client),
}

/// A client per route (its own pool of keep-alive connections, HTTP/1.1, or HTTP/2 when a
/// TLS upstream offers it). Redirects are never followed: a 3xx is an answer.
pub struct HttpSink {
    transport: Transport,
    /// `forward.url` without its `user:password@` (those become `basic`).
    url: reqwest::Url,
    /// `url` as a request target, for events without a query string (most of them).
    base: http::Uri,
    /// `url` without its fragment, up to where an event's query string goes: `…/in?`, or
    /// `…/in?fixed=1&` when the URL has a query of its own.
    query_prefix: String,
    /// `Authorization: Basic …` from the URL's credentials, in place of the sender's own.
    basic: Option<HeaderValue>,
    route: String,
    sign: Option<ForwardSign>,
    timeout: Duration,
    /// `mode = "proxy"`: requests out to the upstream at once, at most `forward.concurrency`
    /// (a legacy app with few workers is not flooded). The worker keeps its own count.
    proxy_slots: tokio::sync::Semaphore,
}

const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether the environment names a proxy (`PROXY_VARS`): then deliveries go through reqwest,
/// which reads it.
fn env_proxy() -> bool {
    PROXY_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

impl HttpSink {
    pub fn new(route: &Arc<RouteConfig>, url: reqwest::Url) -> anyhow::Result<Self> {
        let (url, basic) = split_credentials(url);
        let transport = if env_proxy() {
            Transport::Proxied(
                reqwest::Client::builder()
                    .use_preconfigured_tls({
                        // reqwest sets no ALPN on a config it is given: offer HTTP/2 as its
                        // own config would (hyper-rustls does so for the direct client).
                        let mut tls = client_tls()?;
                        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                        tls
                    })
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_max_idle_per_host(route.forward.concurrency)
                    .pool_idle_timeout(POOL_IDLE)
                    .build()?,
            )
        } else {
            Transport::Direct(Box::new(direct_client(route.forward.concurrency)?))
        };
        let base = url
            .as_str()
            .parse()
            .map_err(|e| anyhow::anyhow!("forward.url: {e}"))?;
        let query_prefix = query_prefix(&url);
        Ok(HttpSink {
            transport,
            base,
            query_prefix,
            url,
            basic,
            route: route.name.clone(),
            sign: route.forward.sign.clone(),
            timeout: route.forward.timeout,
            proxy_slots: tokio::sync::Semaphore::new(route.forward.concurrency.max(1)),
        })
    }

    /// The forwarded request (SPEC §6), re-signed when `[route.forward.sign]` says so.
    fn request(&self, ev: &Event, attempt: u32) -> Result<Request<Bytes>, String> {
        let method = Method::from_bytes(ev.method.as_bytes()).unwrap_or(Method::POST);
        let mut headers = forward_headers(ev, &self.route, attempt);
        // The original Content-Length is dropped with the framing headers and hyper writes
        // none for an empty body, so an empty POST would go out with no length, and a
        // receiver that requires one answers 411, a permanent failure. Every method but GET
        // and HEAD (which define no meaning for content: RFC 9110 §8.6 says to send none)
        // says `Content-Length: 0`, as Go's and curl's clients do for POST and PUT. By method,
        // not by whether the sender sent one: an empty chunked or HTTP/2 request needs it
        // just as much. Queue sinks build their headers without this.
        if ev.body.is_empty() && method != Method::GET && method != Method::HEAD {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        if let Some(s) = &self.sign {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            sign::sign(&s.scheme, &s.secret, &ev.id, now, &ev.body, &mut headers);
        }
        // The credentials written into `forward.url` are what the upstream asked for: they
        // replace a sender's `Authorization`. Only-if-absent sent a `bearer`, `basic` or
        // `okta` route's own inbound token to the upstream instead (it always has one), so an
        // upstream needing the URL's credentials answered 401 (permanent) to every event.
        if let Some(auth) = &self.basic {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        let uri = match ev.query.as_deref().filter(|q| !q.is_empty()) {
            None => self.base.clone(),
            Some(q) => self.target(q)?,
        };
        let mut req = Request::new(ev.body.clone());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Sends one request; the error is the cause chain, for the attempt log.
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<AnyBody>, String> {
        match &self.transport {
            Transport::Direct(client) => client
                .request(req.map(Full::new))
                .await
                .map(|r| r.map(|b| b.map_err(Into::into).boxed()))
                .map_err(|e| error_chain(&e)),
            Transport::Proxied(client) => {
                let req = reqwest::Request::try_from(req.map(reqwest::Body::from))
                    .map_err(|e| error_chain(&e))?;
                let resp = client.execute(req).await.map_err(|e| error_chain(&e))?;
                Ok(http::Response::<reqwest::Body>::from(resp)
                    .map(|b| b.map_err(Into::into).boxed()))
            }
        }
    }

    /// `forward.url` with the event's query string `q` appended as the sender sent it (SPEC
    /// §6), not re-encoded: a receiver that checks a signature over the URL (Twilio-style)
    /// needs the signed bytes, `'` and raw UTF-8 included. A query the ingress took passed
    /// the same parser there, so it joins into a valid target; one that does not (a stored
    /// event hyper cannot send, or one past http::Uri's length limit with the URL) goes out
    /// percent-encoded by the URL parser instead, as before, rather than failing the event.
    /// Through an environment proxy reqwest re-parses the target with that parser anyway, so
    /// there it is encoded either way.
    fn target(&self, q: &str) -> Result<http::Uri, String> {
        target(&self.url, &self.query_prefix, q)
    }
}

/// `url` without its fragment and query, then `?`, its own query and `&` when it has one: what
/// an event's query string is appended to.
fn query_prefix(url: &reqwest::Url) -> String {
    let mut path = url.clone();
    path.set_fragment(None);
    path.set_query(None);
    match url.query().filter(|q| !q.is_empty()) {
        Some(own) => format!("{path}?{own}&"),
        None => format!("{path}?"),
    }
}

fn target(url: &reqwest::Url, query_prefix: &str, q: &str) -> Result<http::Uri, String> {
    // (`#` would start a fragment http::Uri drops: the fallback encodes it.)
    if !q.contains('#') {
        if let Ok(uri) = format!("{query_prefix}{q}").parse() {
            return Ok(uri);
        }
    }
    with_query(url, q)
        .as_str()
        .parse()
        .map_err(|e| format!("invalid upstream URL: {e}"))
}

/// `url` with the event's query string appended to its own, percent-encoded.
fn with_query(url: &reqwest::Url, q: &str) -> reqwest::Url {
    let mut url = url.clone();
    let joined = match url.query() {
        Some(existing) if !existing.is_empty() => format!("{existing}&{q}"),
        _ => q.to_string(),
    };
    url.set_query(Some(&joined));
    url
}

/// Whether an event with query string `q` can be sent to `url` at all: `http::Uri` takes at
/// most 65,534 bytes, so `forward.url` plus a query near the ingress's 64 KiB head limit can
/// be past it. Checked at the ingress, which answers `414` instead of accepting an event no
/// attempt could send (or, in proxy mode, answering `502`). Cheap for every query short
/// enough that even percent-encoding all of it could not reach the limit.
pub fn query_fits(url: &reqwest::Url, q: &str) -> bool {
    const URI_MAX: usize = u16::MAX as usize - 1;
    if url.as_str().len() + 2 + q.len().saturating_mul(3) <= URI_MAX {
        return true;
    }
    // What the sink sends to: the URL without its credentials (sent as `Authorization`).
    let (url, _) = split_credentials(url.clone());
    // Through an environment proxy reqwest re-parses the target, percent-encoding it.
    target(&url, &query_prefix(&url), q).is_ok()
        && (!env_proxy() || with_query(&url, q).as_str().len() <= URI_MAX)
}

/// The CAs an `https://` upstream's certificate may chain to: Mozilla's, built in (so an image
/// without CA certificates still reaches public upstreams), and the system's, read as OpenSSL
/// does — `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the distribution's bundle. The Redis,
/// NATS and AMQP clients read the system's the same way, so one `SSL_CERT_FILE` naming a
/// private CA serves every outgoing TLS connection. Read once, at the first https route (a
/// renewed bundle takes a restart, as for the broker clients' connections already made).
fn trust_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let native = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if !native.errors.is_empty() || ignored > 0 {
                let errors: Vec<String> = native.errors.iter().map(|e| e.to_string()).collect();
                tracing::warn!(
                    added,
                    ignored,
                    errors = %errors.join("; "),
                    "could not read every CA certificate of the system (SSL_CERT_FILE, SSL_CERT_DIR): https upstreams signed by the missing ones are not trusted"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// TLS to upstreams: ring, TLS 1.2 and 1.3, the CAs of `trust_roots`, no client certificate.
fn client_tls() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(trust_roots())
        .with_no_client_auth())
}

/// How long an idle pooled connection to the upstream is kept. Servers close idle keep-alive
/// connections themselves (gunicorn after 2 s, Node and Apache after 5 s), and a request sent
/// on one just as the server closes it fails with nothing answered: a 502 in proxy mode, a
/// needless retry otherwise (3 in 200 requests spaced 0.5 s apart against a server closing
/// after 0.5 s). Giving them up sooner than common servers do avoids that race; under load
/// connections are never idle this long.
const POOL_IDLE: Duration = Duration::from_millis(1500);

fn direct_client(concurrency: usize) -> anyhow::Result<Client<Connector, Full<Bytes>>> {
    let tls = client_tls()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // No connect timeout of its own: every request is bounded by forward.timeout (the
    // worker's, or proxy mode's, which answers 504 when it runs out).
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(POOL_IDLE)
        .build(connector))
}

/// Takes `user:password@` out of the URL (it must not reach the request line or HTTP/2's
/// `:authority`) and turns it into `Authorization: Basic`, as HTTP clients do.
fn split_credentials(mut url: reqwest::Url) -> (reqwest::Url, Option<HeaderValue>) {
    if url.username().is_empty() && url.password().is_none() {
        return (url, None);
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let value = HeaderValue::from_str(&format!("Basic {token}"))
        .ok()
        .map(|mut v| {
            v.set_sensitive(true);
            v
        });
    (url, value)
}

/// The headers of the forwarded request: the original ones (no hop-by-hop, no `Host`, no
/// client-sent `Hookgate-*`) and the gateway's own.
pub fn forward_headers(ev: &Event, route: &str, attempt: u32) -> HeaderMap {
    // Names a `Connection` header lists are hop-by-hop too (rare: only then is it parsed).
    let connection_named = connection_tokens(ev.headers.get_all_bytes("connection"));
    let keep = |name: &str| {
        !HOP_BY_HOP.contains(&name)
            && !crate::store::is_gateway_header(name)
            && !connection_named.iter().any(|n| n == name)
    };
    let mut h = ev.headers.to_map_with(keep, 5);
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set("hookgate-event-id", &ev.id);
    set("hookgate-route", route);
    set("hookgate-attempt", &attempt.to_string());
    set("hookgate-verified", &ev.scheme);
    set("hookgate-received-at", &rfc3339_ms(ev.received_at_ms));
    h
}

/// The names a message's `Connection` header values list (RFC 9110 §7.6.1), lower-case.
/// Read as bytes and split on `,`: a value with a non-UTF-8 byte still names its other
/// tokens (skipping it as not text let the headers it names through). A token that is not a
/// valid header name matches no header, so lossy decoding loses nothing.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
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

/// `None` delivered, `Some(true)` retried, `Some(false)` dead at once. Redirects are not
/// followed but retried (SPEC §6 names only "other 4xx" permanent): a redirect during a deploy
/// passes, and a moved receiver's events wait, pending, for `forward.url` to be corrected by a
/// reload instead of all going to the dead letters.
pub fn classify(status: u16) -> Option<bool> {
    match status {
        200..=299 => None,
        300..=399 | 408 | 425 | 429 | 500..=599 => Some(true),
        _ => Some(false),
    }
}

/// What a redirect's attempt log says besides its answer: where it points, and that it was
/// not followed.
fn redirect_note(status: u16, headers: &http::HeaderMap) -> String {
    if !(300..=399).contains(&status) {
        return String::new();
    }
    // Its first 256 bytes: the attempt log keeps 1 KiB of an answer, and a redirect's URL may
    // carry a token (a presigned URL, an SSO state).
    const KEEP: usize = 256;
    match headers.get(http::header::LOCATION) {
        Some(to) => {
            let to = String::from_utf8_lossy(to.as_bytes());
            let mut end = to.len().min(KEEP);
            while !to.is_char_boundary(end) {
                end -= 1;
            }
            let cut = if end < to.len() { "…" } else { "" };
            format!(
                "redirect to {:?}{cut} not followed (set forward.url to where it points if it moved); ",
                &to[..end]
            )
        }
        None => "redirect not followed; ".into(),
    }
}

/// The most the answer's sample may take once the status is in.
const SAMPLE_WAIT: Duration = Duration::from_secs(1);

/// How long after the attempt began its answer's sample must be read: at most `SAMPLE_WAIT`
/// after the status arrived (`elapsed`), and a margin (a tenth of the timeout, at most 100 ms)
/// before `timeout`, so the worker's bound on the whole attempt never fires first.
fn sample_budget(timeout: Duration, elapsed: Duration) -> Duration {
    let margin = (timeout / 10).min(Duration::from_millis(100));
    (elapsed + SAMPLE_WAIT).min(timeout.saturating_sub(margin))
}

/// Up to 1 KiB of `body` (and one byte more, so that cutting it to 1 KiB says something was
/// left out), read until `deadline`; the rest is not read. A body cut short (the deadline
/// passed or the read failed) keeps what arrived, and says why.
async fn read_sample(mut body: AnyBody, deadline: tokio::time::Instant) -> String {
    const KEEP: usize = 1025;
    let mut snippet = Vec::new();
    let mut cut = None;
    while snippet.len() < KEEP {
        // A frame already in (the usual case: the answer came with its status) needs no
        // timer; only a wait is bounded by the deadline. Once the kept KiB is in, the byte
        // past it is only taken if it is there already.
        let next = match body.frame().now_or_never() {
            Some(frame) => Ok(frame),
            None if snippet.len() >= 1024 => break,
            None => tokio::time::timeout_at(deadline, body.frame()).await,
        };
        match next {
            Ok(Some(Ok(f))) => {
                if let Some(c) = f.data_ref() {
                    snippet.extend_from_slice(&c[..c.len().min(KEEP - snippet.len())]);
                }
            }
            Ok(Some(Err(e))) => {
                cut = Some(format!("reading it failed: {}", error_chain(&*e)));
                break;
            }
            Ok(None) => break,
            Err(_) => {
                cut = Some("it was not complete in time".to_string());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&snippet);
    match cut {
        // First, so cutting the detail to 1 KiB keeps it.
        Some(why) => format!("[answer body cut short: {why}] {text}"),
        None => text.into_owned(),
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError> {
        let failed = |detail: String| DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail: format!("request failed: {detail}"),
        };
        let started = tokio::time::Instant::now();
        let req = self.request(ev, attempt).map_err(failed)?;
        let resp = self.send(req).await.map_err(failed)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let note = redirect_note(status, resp.headers());
        // The status decides the outcome; at most 1 KiB of the answer is kept for the attempt
        // log, read under its own short deadline that ends before forward.timeout, so an
        // upstream that answers 2xx and then withholds its body has still accepted the event.
        let deadline = started + sample_budget(self.timeout, started.elapsed());
        let detail = truncate_detail(&read_sample(resp.into_body(), deadline).await);
        match classify(status) {
            None => Ok(Receipt {
                status: Some(status),
                detail,
            }),
            Some(true) => Err(DeliveryError::Retryable {
                status: Some(status),
                retry_after,
                detail: format!("HTTP {status}: {note}{detail}"),
            }),
            Some(false) => Err(DeliveryError::Permanent {
                status: Some(status),
                detail: format!("HTTP {status}: {detail}"),
            }),
        }
    }
}

/// Why a proxied request got no upstream answer to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No answer that can be relayed, and why: connection refused or cut, not HTTP, over
    /// `MAX_PROXY_BODY` or `server.max_body_memory`, a 1xx as final status, a transfer coding
    /// hookgate does not decode. 502.
    Unreachable(String),
    /// No answer within `forward.timeout`: 504.
    Timeout,
    /// `forward.concurrency` requests were out to the upstream for half of `forward.timeout`,
    /// so this one was not sent: 503.
    Busy,
}

/// The most of an upstream's answer relayed in proxy mode.
const MAX_PROXY_BODY: usize = 10 << 20;

impl HttpSink {
    /// `mode = "proxy"`: one request now, the upstream's status, headers and body relayed.
    /// The answer's bytes are counted in `held` (the request's share of
    /// `server.max_body_memory`) as they arrive.
    pub async fn proxy(
        &self,
        ev: &Event,
        held: &mut crate::ingress::Held,
    ) -> Result<http::Response<Vec<u8>>, ProxyError> {
        let req = self.request(ev, 1).map_err(ProxyError::Unreachable)?;
        // A free slot is waited for up to half the timeout, so a request sent still has at
        // least the other half: waiting until a slot freed at the deadline would send it with
        // milliseconds left, and answer 504 for a request the upstream then acts on.
        let start = tokio::time::Instant::now();
        let deadline = start + self.timeout;
        let Ok(Ok(_slot)) =
            tokio::time::timeout_at(start + self.timeout / 2, self.proxy_slots.acquire()).await
        else {
            return Err(ProxyError::Busy);
        };
        let answer = async {
            let resp = self.send(req).await.map_err(ProxyError::Unreachable)?;
            let (parts, mut body) = resp.into_parts();
            relayable(&parts)?;
            // A HEAD's answer, a 204 and a 304 have no body whatever length they declare (a
            // HEAD's describes what a GET would get).
            let bodiless = ev.method == "HEAD" || matches!(parts.status.as_u16(), 204 | 304);
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .filter(|_| !bodiless);
            let too_big = |n: usize| {
                ProxyError::Unreachable(format!(
                    "the upstream's answer is over the {MAX_PROXY_BODY} bytes relayed ({n} bytes)"
                ))
            };
            if let Some(n) = declared.filter(|n| *n > MAX_PROXY_BODY) {
                return Err(too_big(n));
            }
            let base = held.bytes();
            let no_room = |n: usize| {
                ProxyError::Unreachable(format!(
                    "the upstream's answer ({n} bytes) does not fit in server.max_body_memory now"
                ))
            };
            if let Some(n) = declared {
                if !held.hold(base + n).await {
                    return Err(no_room(n));
                }
            }
            let mut out_body = Vec::with_capacity(declared.unwrap_or(0));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    ProxyError::Unreachable(format!(
                        "reading the answer failed: {}",
                        error_chain(&*e)
                    ))
                })?;
                if let Some(chunk) = frame.data_ref() {
                    let len = out_body.len() + chunk.len();
                    if len > MAX_PROXY_BODY {
                        return Err(too_big(len));
                    }
                    if len > out_body.capacity() {
                        // Grown here as a Vec would grow itself (doubling), and the whole
                        // capacity counted: an answer without a length (chunked) held up to
                        // twice its bytes, uncounted. Where the double does not fit, just what
                        // is needed, if that does.
                        let double = (out_body.capacity() * 2).max(len).min(MAX_PROXY_BODY);
                        let want = if held.try_hold(base + double).await {
                            double
                        } else if held.hold(base + len).await {
                            len
                        } else {
                            return Err(no_room(len));
                        };
                        out_body.reserve_exact(want - out_body.len());
                    }
                    out_body.extend_from_slice(chunk);
                }
            }
            Ok((parts, out_body))
        };
        let (parts, body) = tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| ProxyError::Timeout)??;
        let mut out_headers = parts.headers;
        // A HEAD's Content-Length says what a GET would get: the sender asked for it. (Others
        // are framing, which the connection to the sender writes itself.)
        let head_length = (ev.method == "HEAD" && parts.status != http::StatusCode::NO_CONTENT)
            .then(|| out_headers.get(http::header::CONTENT_LENGTH).cloned())
            .flatten();
        // The upstream's answer is relayed as a new message: what its `Connection` header
        // names belongs to the gateway's connection to it (RFC 9110 §7.6.1), not the client's.
        let listed = connection_tokens(
            out_headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        for name in listed
            .iter()
            .map(String::as_str)
            .chain(HOP_BY_HOP.iter().copied())
        {
            out_headers.remove(name);
        }
        if let Some(length) = head_length {
            out_headers.insert(http::header::CONTENT_LENGTH, length);
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = parts.status;
        *out.headers_mut() = out_headers;
        Ok(out)
    }
}

/// Whether an upstream's answer can be relayed as it is: not a 1xx as final status (a `101`
/// switches protocols for a sender that never asked to, and kills its connection), and no
/// transfer coding but `chunked`, which the client decodes (the body of `gzip, chunked` would
/// reach the sender still gzipped, with nothing saying so).
fn relayable(parts: &http::response::Parts) -> Result<(), ProxyError> {
    if parts.status.is_informational() {
        return Err(ProxyError::Unreachable(format!(
            "the upstream answered {} as its final status, which cannot be relayed",
            parts.status
        )));
    }
    let codings = connection_tokens(
        parts
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    if let Some(c) = codings.iter().find(|c| c.as_str() != "chunked") {
        return Err(ProxyError::Unreachable(format!(
            "the upstream's answer has Transfer-Encoding {c}, which hookgate does not decode"
        )));
    }
    Ok(())
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
    fn a_query_fits_up_to_the_uri_limit_of_the_url_the_sink_sends_to() {
        let path = "p".repeat(1_000);
        // The sink sends without the credentials (they go as `Authorization`).
        let url = reqwest::Url::parse(&format!("http://user:pw@h/{path}")).unwrap();
        let sent = format!("http://h/{path}?");
        let exact = "a".repeat(65_534 - sent.len());
        assert!(query_fits(&url, &exact), "exactly at http::Uri's limit");
        assert!(!query_fits(&url, &format!("{exact}a")), "one byte past it");
        assert!(query_fits(&url, "a=1"), "the common case");
    }

    /// Where a redirect pointed, its first 256 bytes (a URL may carry a token).
    #[test]
    fn a_redirect_note_names_its_location_cut_short() {
        let mut h = http::HeaderMap::new();
        assert_eq!(redirect_note(200, &h), "");
        assert_eq!(redirect_note(302, &h), "redirect not followed; ");
        let long = format!("https://sso.example/cb?state={}", "s".repeat(1000));
        h.insert(http::header::LOCATION, long.parse().unwrap());
        let note = redirect_note(302, &h);
        assert!(
            note.starts_with(&format!("redirect to {:?}…", &long[..256])),
            "{note}"
        );
        assert!(note.len() < 400, "{note}");
        // Cut between characters, not inside one.
        let euros = "€".repeat(100);
        h.insert(
            http::header::LOCATION,
            http::HeaderValue::from_bytes(euros.as_bytes()).unwrap(),
        );
        let note = redirect_note(302, &h);
        assert!(
            note.starts_with(&format!("redirect to {:?}…", "€".repeat(85))),
            "{note}"
        );
    }

    #[test]
    fn classification() {
        assert_eq!(classify(200), None);
        assert_eq!(classify(204), None);
        for s in [301, 302, 307, 308, 408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(s), Some(true), "{s}");
        }
        for s in [400, 401, 404, 410, 422] {
            assert_eq!(classify(s), Some(false), "{s}");
        }
    }

    #[test]
    fn url_credentials_become_basic_auth_and_leave_the_url() {
        let url = reqwest::Url::parse("https://us%40er:p%3Ass@up.example/in?x=1").unwrap();
        let (url, basic) = split_credentials(url);
        assert_eq!(url.as_str(), "https://up.example/in?x=1");
        let basic = basic.unwrap();
        assert!(basic.is_sensitive(), "never shown in Debug output");
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(basic.to_str().unwrap(), format!("Basic {expected}"));
        let plain = reqwest::Url::parse("http://up.example/in").unwrap();
        assert!(split_credentials(plain).1.is_none());
    }

    #[test]
    fn the_answer_sample_ends_a_second_after_the_status_and_before_the_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(sample_budget(ms(10_000), ms(200)), ms(1_200));
        assert_eq!(
            sample_budget(ms(2_000), ms(1_500)),
            ms(1_900),
            "100 ms early"
        );
        assert_eq!(sample_budget(ms(500), ms(400)), ms(450), "a tenth early");
        assert_eq!(sample_budget(ms(500), ms(480)), ms(450), "past it: no wait");
    }

    fn sink(url: &str) -> HttpSink {
        let (cfg, _) = crate::config::parse(&format!(
            r#"
[[route]]
name = "r"
path = "/r"
methods = ["GET", "POST"]
[route.verify]
scheme = "none"
[route.forward]
url = "{url}"
"#
        ))
        .unwrap();
        HttpSink::new(&cfg.routes[0], reqwest::Url::parse(url).unwrap()).unwrap()
    }

    fn event(req: http::request::Builder, body: &'static [u8]) -> Event {
        let parts = req.body(()).unwrap().into_parts().0;
        let verified = crate::verify::Verified {
            scheme: "none",
            event_id: None,
            secret_index: None,
            replay_key: None,
        };
        crate::store::NewEvent::new("r", &parts, Bytes::from_static(body), &verified, 1_000)
            .into_event()
    }

    #[test]
    fn every_name_a_connection_header_lists_is_dropped_even_beside_non_utf8() {
        let ev = event(
            http::Request::post("/r")
                .header(
                    "connection",
                    HeaderValue::from_bytes(b"X-A ,\tcaf\xe9").unwrap(),
                )
                .header("connection", "x-b")
                .header("x-a", "1")
                .header("x-b", "2")
                .header("x-c", "3"),
            b"{}",
        );
        let h = forward_headers(&ev, "r", 1);
        assert!(h.get("x-a").is_none() && h.get("x-b").is_none(), "{h:?}");
        assert_eq!(h["x-c"], "3");
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn the_urls_credentials_replace_a_senders_authorization() {
        let ev = event(
            http::Request::post("/r").header("authorization", "Bearer inbound-token"),
            b"{}",
        );
        let req = sink("http://gw:upstream-pass@up.example/in")
            .request(&ev, 1)
            .unwrap();
        let auth: Vec<_> = req.headers().get_all("authorization").iter().collect();
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("gw:upstream-pass");
        assert_eq!(auth, [format!("Basic {basic}").as_str()]);
        // Without credentials in the URL the sender's header goes through, as every other.
        let req = sink("http://up.example/in").request(&ev, 1).unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer inbound-token");
    }

    #[test]
    fn the_query_goes_out_as_sent_or_encoded_when_it_cannot() {
        let uri = |url: &str, q: &str| {
            let mut ev = event(http::Request::post("/r"), b"{}");
            ev.query = Some(q.to_string());
            sink(url).request(&ev, 1).unwrap().uri().to_string()
        };
        let up = "http://up.example:8080";
        assert_eq!(
            uri(&format!("{up}/in"), "a=b'c&e=caf\u{e9}&s=%20x"),
            format!("{up}/in?a=b'c&e=caf\u{e9}&s=%20x")
        );
        assert_eq!(
            uri(&format!("{up}/in?fixed=1#frag"), "a=b'c"),
            format!("{up}/in?fixed=1&a=b'c"),
            "joined to the URL's own query, without its fragment"
        );
        assert_eq!(uri(&format!("{up}/in?"), "a=1"), format!("{up}/in?a=1"));
        // Not from the ingress (it takes no such query), but a stored event is not failed
        // for it: the URL parser's encoding instead.
        assert_eq!(
            uri(&format!("{up}/in"), "a=b c"),
            format!("{up}/in?a=b%20c")
        );
        assert_eq!(uri(&format!("{up}/in"), "a#b"), format!("{up}/in?a%23b"));
        let mut ev = event(http::Request::post("/r"), b"{}");
        ev.query = None;
        assert_eq!(
            sink(&format!("{up}/in?fixed=1"))
                .request(&ev, 1)
                .unwrap()
                .uri()
                .to_string(),
            format!("{up}/in?fixed=1")
        );
    }

    #[test]
    fn an_empty_body_gets_content_length_zero_but_not_on_get_or_head() {
        let s = sink("http://up.example/in");
        let length = |req: http::request::Builder, body: &'static [u8]| {
            let req = s.request(&event(req, body), 1).unwrap();
            req.headers()
                .get(http::header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().to_string())
        };
        // The sender's own Content-Length never passes; hyper writes a non-empty body's.
        let sent = || http::Request::post("/r").header("content-length", "0");
        assert_eq!(length(sent(), b""), Some("0".into()));
        assert_eq!(length(http::Request::post("/r"), b""), Some("0".into()));
        assert_eq!(length(http::Request::put("/r"), b""), Some("0".into()));
        assert_eq!(length(http::Request::delete("/r"), b""), Some("0".into()));
        assert_eq!(length(http::Request::post("/r"), b"{}"), None);
        assert_eq!(length(http::Request::get("/r"), b""), None);
        assert_eq!(length(http::Request::head("/r"), b""), None);
        let ev = event(sent(), b"");
        assert!(
            super::super::message_headers(&ev, "r", 1, None)
                .iter()
                .all(|(k, _)| !k.eq_ignore_ascii_case("content-length")),
            "queue messages carry no framing headers"
        );
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
