//! The NATS JetStream sink (SPEC §6): one JetStream publish per attempt, delivered on the
//! PubAck. The payload is the raw body; the headers are the HTTP sink's (original headers
//! minus hop-by-hop ones, plus `Hookgate-*`), and `Nats-Msg-Id` is the event id, so a publish
//! retried within the stream's duplicate window is dropped by JetStream (the ack then says
//! `duplicate`), and an event is stored once even when an ack was lost. A replay starts a new
//! delivery cycle, and its messages carry `{event id}:{cycle start, ms}`: an operator's
//! "deliver it again" is stored again, while its own retries still dedupe.
//!
//! The client connects on the first attempt, not at startup, so a server that is down when the
//! gateway starts only delays delivery (attempts meanwhile fail and are retried); a sink that
//! never connected leaves nothing running behind it when a reload drops it. Once connected,
//! the client reconnects by itself. "No stream for the subject" is permanent only once the
//! JetStream API itself confirms no stream listens on the subject (a server still recovering
//! its streams after a restart also answers "no responders", and that must not kill events).
//! A message (body and headers) larger than the server's `max_payload` is permanent, decided
//! before publishing: the server would answer it with -ERR and close the connection.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishError, PublishErrorKind};
use async_trait::async_trait;

use super::{message_headers, redact_url, DeliveryError, Receipt, Sink};
use crate::config::{ForwardSign, RouteConfig};
use crate::store::Event;

pub struct NatsSink {
    /// Made on the first attempt that reaches the server; the token tells one connection
    /// from the next (see [`NatsSink::discard`]).
    js: tokio::sync::Mutex<Option<(Arc<()>, async_nats::jetstream::Context)>>,
    /// The address without credentials (async-nats ignores those in the URL).
    addr: String,
    /// The URL's credentials, given to the client as options.
    auth: Option<Credentials>,
    route: String,
    sign: Option<ForwardSign>,
    url: String,
    subject: String,
    timeout: Duration,
}

/// Credentials from a `nats://` URL: `user:password@` or a token as `token@`.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// Splits the credentials off a NATS URL: async-nats 0.46 only authenticates with those given
/// as connect options and ignores any in the address (nats-io/nats.rs#1623), so a URL's
/// `user:password@` or `token@` must be passed as options and the address used without them.
/// Percent-encoded characters in them are decoded. Errors never repeat the credentials.
pub fn split_credentials(url: &str) -> Result<(String, Option<Credentials>), String> {
    let mut u = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    if u.username().is_empty() && u.password().is_none() {
        return Ok((url.to_string(), None));
    }
    let decode = |what: &str, s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the {what} in the URL is not valid UTF-8 once percent-decoded"))
    };
    let user = decode("user name", u.username())?;
    let auth = match u.password() {
        Some(p) => Credentials::UserPassword(user, decode("password", p)?),
        None => Credentials::Token(user),
    };
    if u.set_username("").is_err() || u.set_password(None).is_err() {
        return Err("credentials cannot be taken out of this URL".to_string());
    }
    Ok((u.to_string(), Some(auth)))
}

/// Why `subject` cannot be published to, if it cannot: NATS subjects are tokens separated
/// by single dots, with no whitespace or control characters, and a publish names one concrete
/// subject (no `*` or `>` wildcards).
pub fn subject_problem(subject: &str) -> Option<String> {
    if subject.is_empty() {
        return Some("it is empty".into());
    }
    if let Some((at, c)) = subject
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "it contains whitespace or a control character (U+{:04X} at byte {at}), which \
             NATS subjects cannot",
            c as u32
        ));
    }
    if subject.contains(['*', '>']) {
        return Some(
            "it contains a wildcard ('*' or '>'); a message is published to one concrete \
             subject"
                .into(),
        );
    }
    if subject.split('.').any(str::is_empty) {
        return Some(
            "it has an empty token (a leading or trailing '.', or '..'); tokens are separated \
             by single dots"
                .into(),
        );
    }
    None
}

impl NatsSink {
    pub fn new(route: &Arc<RouteConfig>, url: &str, subject: &str) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        let bad = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("route {:?}: forward.url {shown}: {e}", route.name)
        };
        let (addr, auth) = split_credentials(url).map_err(|e| bad(&e))?;
        addr.parse::<async_nats::ServerAddr>()
            .map_err(|e| bad(&e))?;
        Ok(NatsSink {
            js: tokio::sync::Mutex::new(None),
            addr,
            auth,
            sign: route.forward.sign.clone(),
            route: route.name.clone(),
            url: shown,
            subject: subject.to_string(),
            timeout: route.forward.timeout,
        })
    }

    /// The route's JetStream context, connecting if there is none yet. One try, no retries
    /// of its own in the background: the attempt fails and is retried like any other.
    async fn context(&self) -> Result<(Arc<()>, async_nats::jetstream::Context), DeliveryError> {
        let mut slot = self.js.lock().await;
        if let Some(js) = slot.as_ref() {
            return Ok(js.clone());
        }
        let (cb_route, cb_url) = (self.route.clone(), self.url.clone());
        let mut opts = async_nats::ConnectOptions::new();
        match self.auth.clone() {
            Some(Credentials::UserPassword(user, pass)) => {
                opts = opts.user_and_password(user, pass)
            }
            Some(Credentials::Token(token)) => opts = opts.token(token),
            None => {}
        }
        let client = opts
            .name(format!("hookgate route {}", self.route))
            .connection_timeout(self.timeout.min(Duration::from_secs(5)))
            .event_callback(move |event| {
                let (route, url) = (cb_route.clone(), cb_url.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(route = %route, url = %url, "connected to nats (forward.url)")
                        }
                        // Also how hookgate's own close (a reload, shutdown) shows: no warning.
                        async_nats::Event::Closed => {
                            tracing::info!(route = %route, url = %url, "nats connection closed (forward.url)")
                        }
                        other => {
                            tracing::warn!(route = %route, url = %url, event = %other, "nats connection (forward.url)")
                        }
                    }
                }
            })
            .connect(self.addr.as_str())
            .await
            .map_err(|e| {
                tracing::warn!(route = %self.route, url = %self.url, error = %e, "cannot connect to nats (forward.url)");
                DeliveryError::Retryable {
                    status: None,
                    retry_after: None,
                    detail: format!("cannot connect to nats at {}: {e}", self.url),
                }
            })?;
        let mut js = async_nats::jetstream::new(client);
        // Bounded by forward.timeout anyway; fail a little earlier so the attempt says why.
        js.set_timeout(self.timeout.mul_f64(0.9));
        let made = (Arc::new(()), js);
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Drops the route's connection if it is still the one `token` names (another attempt
    /// may have replaced it), so the next attempt connects again. async-nats notices a
    /// connection that stopped answering without closing only after missed pings, and every
    /// publish puts its next ping off: such a connection held a route's deliveries for ~5 min.
    async fn discard(&self, token: &Arc<()>) {
        let mut slot = self.js.lock().await;
        if slot.as_ref().is_some_and(|(t, _)| Arc::ptr_eq(t, token)) {
            slot.take();
            tracing::warn!(route = %self.route, url = %self.url, "nats connection not answering: dropped");
        }
    }

    fn headers(&self, ev: &Event, attempt: u32) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in message_headers(ev, &self.route, attempt, self.sign.as_ref()) {
            // `Nats-*` headers steer JetStream (`Nats-Rollup` purges, `Nats-Expected-*` fails
            // the publish, `Nats-Msg-Id` dedupes): no sender may set them.
            if k.len() >= 5 && k[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            // NATS header values are text; a non-UTF-8 original value is passed lossily.
            let v = String::from_utf8_lossy(&v);
            h.append(k.as_str(), v.as_ref());
        }
        h.insert("Nats-Msg-Id", msg_id(ev).as_str());
        h
    }

    async fn publish(
        &self,
        js: &async_nats::jetstream::Context,
        headers: async_nats::HeaderMap,
        ev: &Event,
    ) -> Result<Receipt, PublishError> {
        let ack = js
            .publish_with_headers(self.subject.clone(), headers, ev.body.clone())
            .await?
            .await?;
        let dup = if ack.duplicate {
            " (duplicate: already stored, dropped by JetStream)"
        } else {
            ""
        };
        Ok(Receipt {
            status: None,
            detail: format!("stream {} seq {}{dup}", ack.stream, ack.sequence),
        })
    }

    /// No acknowledgement came: the server may be gone (retried), or it answered with nothing
    /// JetStream says. With no stream on the subject the publish reached only plain NATS
    /// subscribers, if any (each retry another copy to them, and the event recorded "timed
    /// out"); a stream with `no_ack` stores the message and never acknowledges it. Both are
    /// permanent, saying so. Asked briefly (in what is left of the attempt): a server that is
    /// gone is not waited for twice.
    async fn why_no_ack(
        &self,
        js: &async_nats::jetstream::Context,
        deadline: tokio::time::Instant,
    ) -> Option<DeliveryError> {
        let ask = async {
            match js.stream_by_subject(self.subject.clone()).await {
                Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => Some(format!(
                    "route {:?}: no JetStream stream captures subject {:?} (forward.subject) at {}, and the publish got no acknowledgement: a plain NATS subscriber on the subject may have received the message without storing it; create a stream, e.g. `nats stream add --subjects {:?}`",
                    self.route, self.subject, self.url, self.subject
                )),
                Ok(name) => match js.get_stream(&name).await {
                    Ok(stream) if stream.cached_info().config.no_ack => Some(format!(
                        "route {:?}: stream {name:?} captures subject {:?} at {} with no_ack set: it stores messages without acknowledging them, so no delivery can be confirmed (this one is likely stored); turn no_ack off",
                        self.route, self.subject, self.url
                    )),
                    _ => None,
                },
                Err(_) => None,
            }
        };
        // Within the attempt's time, less a margin for the answer to be recorded as this
        // attempt's, at most a second.
        let until = deadline
            .checked_sub(Duration::from_millis(20))
            .unwrap_or(deadline)
            .min(tokio::time::Instant::now() + Duration::from_secs(1));
        let detail = tokio::time::timeout_at(until, ask).await.ok().flatten()?;
        tracing::error!(route = %self.route, subject = %self.subject, "{detail}");
        Some(DeliveryError::Permanent {
            status: None,
            detail,
        })
    }

    async fn classify(
        &self,
        js: &async_nats::jetstream::Context,
        e: PublishError,
        deadline: tokio::time::Instant,
    ) -> DeliveryError {
        let kind = e.kind();
        let retry = |detail: String| DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail,
        };
        // A stream's own `max_msg_size` (JetStream error 10054): the server answered, and
        // every retry of this message gets the same answer. Retried, each failure also counted
        // against the route's circuit, so the route's other events waited behind its probes.
        let text = e.to_string();
        if text.contains("error code 10054") || text.contains("message size exceeds maximum") {
            let detail = format!(
                "route {:?}: the JetStream stream capturing {:?} at {} refuses the message as too large ({text}); raise the stream's max_msg_size (`nats stream edit --max-msg-size`)",
                self.route, self.subject, self.url
            );
            tracing::error!(route = %self.route, subject = %self.subject, "{detail}");
            return DeliveryError::Permanent {
                status: None,
                detail,
            };
        }
        if kind == PublishErrorKind::TimedOut {
            if let Some(permanent) = self.why_no_ack(js, deadline).await {
                return permanent;
            }
        }
        if kind != PublishErrorKind::StreamNotFound {
            return retry(format!(
                "JetStream publish to {:?} at {} failed: {e}",
                self.subject, self.url
            ));
        }
        match js.stream_by_subject(self.subject.clone()).await {
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                let detail = format!(
                    "route {:?}: no JetStream stream captures subject {:?} (forward.subject); \
                     create one, e.g. `nats stream add --subjects {:?}`",
                    self.route, self.subject, self.subject
                );
                tracing::error!(route = %self.route, subject = %self.subject, "{detail}");
                DeliveryError::Permanent {
                    status: None,
                    detail,
                }
            }
            looked => retry(format!(
                "JetStream at {} has no responder for {:?} (not ready yet?): {e}; looking up \
                 its stream: {}",
                self.url,
                self.subject,
                match looked {
                    Ok(stream) => format!("stream {stream:?} captures it"),
                    Err(l) => l.to_string(),
                }
            )),
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError> {
        // The worker ends the attempt at `timeout`; what is decided after the publish (the
        // no-ack lookup) must fit before that.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (token, js) = self.context().await?;
        let headers = self.headers(ev, attempt);
        // JetStream's publish does not check the server's max_payload; the server answers a
        // larger message with -ERR and closes the connection, which would fail every publish
        // in flight on the route, at every attempt, until the event died.
        let size = ev.body.len() + header_bytes(&headers);
        let max = js.client().server_info().max_payload;
        if max > 0 && size > max {
            let detail = format!(
                "route {:?}: message of {size} bytes exceeds the NATS server's max_payload \
                 of {max} at {} (body and headers together must fit); raise max_payload on the \
                 server",
                self.route, self.url
            );
            tracing::error!(route = %self.route, event_id = %ev.id, "{detail}");
            return Err(DeliveryError::Permanent {
                status: None,
                detail,
            });
        }
        match self.publish(&js, headers, ev).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // No ack within the attempt, or the socket broke: the next attempt connects
                // again rather than trust this connection (the Redis sink does the same).
                if matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) {
                    self.discard(&token).await;
                }
                Err(self.classify(&js, e, deadline).await)
            }
        }
    }
}

/// The bytes `headers` take in an `HPUB` (what the server counts against max_payload with the
/// payload): `NATS/1.0\r\n`, `Name: value\r\n` per value, and a blank line.
fn header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for v in values {
            let v: &str = v.as_ref();
            n += name.len() + 2 + v.len() + 2;
        }
    }
    n
}

/// The message's `Nats-Msg-Id`: the event id in its first delivery cycle (every retry of it
/// dedupes), the id and the cycle's start after a replay (a new message, stored again).
fn msg_id(ev: &Event) -> String {
    if ev.cycle_started_at_ms == ev.received_at_ms {
        ev.id.clone()
    } else {
        format!("{}:{}", ev.id, ev.cycle_started_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(port: u16) -> Arc<RouteConfig> {
        let (cfg, _) = crate::config::parse(&format!(
            r#"
[[route]]
name = "r"
path = "/r"
[route.verify]
scheme = "none"
[route.forward]
url = "nats://127.0.0.1:{port}"
subject = "a.b"
timeout = "1s"
"#
        ))
        .unwrap();
        cfg.routes[0].clone()
    }

    #[test]
    fn msg_id_is_the_event_id_until_a_replay_starts_a_new_cycle() {
        let mut ev = event();
        assert_eq!(msg_id(&ev), ev.id);
        ev.cycle_started_at_ms = 5_000;
        assert_eq!(msg_id(&ev), format!("{}:5000", ev.id));
    }

    fn event() -> Event {
        let parts = http::Request::post("/r").body(()).unwrap().into_parts().0;
        let verified = crate::verify::Verified {
            scheme: "none",
            event_id: None,
            secret_index: None,
            replay_key: None,
        };
        let body = bytes::Bytes::from_static(b"{}");
        crate::store::NewEvent::new("r", &parts, body, &verified, 1_000).into_event()
    }

    #[tokio::test]
    async fn a_sink_dropped_while_the_server_is_down_stops_trying_to_connect() {
        // A port held by a socket that is bound but not listening, so connects are refused
        // and no other process can take it before the "server" comes back below.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let sink = NatsSink::new(&route(port), &format!("nats://127.0.0.1:{port}"), "a.b").unwrap();
        let failed = sink.deliver(&event(), 1).await.unwrap_err();
        assert!(
            failed.detail().contains("cannot connect to nats"),
            "{failed:?}"
        );
        // A reload drops the sink while the server is down.
        drop(sink);
        let server = socket.listen(16).unwrap();
        // async-nats waits at most 4 s between tries; a sink that kept trying would be here
        // within that.
        let knocked = tokio::time::timeout(Duration::from_secs(5), server.accept()).await;
        assert!(knocked.is_err(), "the dropped sink still connects");
    }

    #[test]
    fn credentials_are_taken_out_of_the_url_and_decoded() {
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222").unwrap(),
            ("nats://127.0.0.1:4222".to_string(), None)
        );
        let (addr, auth) = split_credentials("nats://us%40r:p%3Ass@h:4222").unwrap();
        assert_eq!(addr, "nats://h:4222");
        assert_eq!(
            auth,
            Some(Credentials::UserPassword("us@r".into(), "p:ss".into()))
        );
        let (addr, auth) = split_credentials("nats://s3cr3t@h:4222").unwrap();
        assert_eq!(addr, "nats://h:4222");
        assert_eq!(auth, Some(Credentials::Token("s3cr3t".into())));
        let err = split_credentials("nats://%ff%fe:hunter2@h").unwrap_err();
        assert!(
            err.contains("user name") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn subjects_are_checked_token_by_token() {
        for ok in ["a", "a.b", "webhooks.orders-v2", "a_b.c:d"] {
            assert_eq!(subject_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("a..b", "empty token"),
            (".a", "empty token"),
            ("a.", "empty token"),
            ("a b", "U+0020"),
            ("a\tb", "U+0009"),
            ("a\u{7f}", "U+007F"),
            ("a.\u{a0}", "U+00A0"),
            ("a.*", "wildcard"),
            ("a.>", "wildcard"),
        ] {
            let problem = subject_problem(bad).unwrap_or_default();
            assert!(problem.contains(says), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn a_bad_subject_is_a_config_error_that_says_why() {
        let cfg = |subject: &str| {
            format!(
                "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.verify]\nscheme = \"none\"\n\
                 [route.forward]\nurl = \"nats://127.0.0.1:4222\"\nsubject = {subject:?}\n"
            )
        };
        assert!(crate::config::parse(&cfg("a.b")).is_ok());
        let err = crate::config::parse(&cfg("orders..new"))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("forward.subject") && err.contains("empty token"),
            "{err}"
        );
    }

    #[test]
    fn header_bytes_counts_what_hpub_sends() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("A", "bc");
        h.append("A", "d");
        // "NATS/1.0\r\n" + "A: bc\r\n" + "A: d\r\n" + "\r\n"
        assert_eq!(header_bytes(&h), 10 + 7 + 6 + 2);
    }
}
