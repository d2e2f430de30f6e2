//! The NATS JetStream sink (SPEC §6): one JetStream publish per attempt, delivered on the
//! PubAck. The payload is the raw body; the headers are the HTTP sink's (original headers
//! minus hop-by-hop ones, plus `Hookgate-*`), and `Nats-Msg-Id` is the event id, so a publish
//! retried within the stream's duplicate window is dropped by JetStream (the ack then says
//! `duplicate`), and an event is stored once even when an ack was lost.
//!
//! The client connects in the background (`retry_on_initial_connect`) and reconnects by
//! itself: a server that is down at startup never blocks the gateway; attempts made meanwhile
//! time out and are retried. "No stream for the subject" is permanent only once the JetStream
//! API itself confirms no stream listens on the subject (a server still recovering its
//! streams after a restart also answers "no responders", and that must not kill events).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_trait::async_trait;

use super::{message_headers, redact_url, DeliveryError, Receipt, Sink};
use crate::config::{ForwardSign, RouteConfig};
use crate::store::Event;

pub struct NatsSink {
    js: async_nats::jetstream::Context,
    route: String,
    sign: Option<ForwardSign>,
    url: String,
    subject: String,
}

impl NatsSink {
    pub async fn new(route: &Arc<RouteConfig>, url: &str, subject: &str) -> anyhow::Result<Self> {
        let name = route.name.clone();
        let shown = redact_url(url);
        let (cb_route, cb_url) = (name.clone(), shown.clone());
        let client = async_nats::ConnectOptions::new()
            .name(format!("hookgate route {name}"))
            .retry_on_initial_connect()
            .connection_timeout(route.forward.timeout.min(Duration::from_secs(5)))
            .event_callback(move |event| {
                let (route, url) = (cb_route.clone(), cb_url.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(route = %route, url = %url, "connected to nats (forward.url)")
                        }
                        other => {
                            tracing::warn!(route = %route, url = %url, event = %other, "nats connection (forward.url)")
                        }
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("route {name:?}: forward.url {shown}: {e}"))?;
        let mut js = async_nats::jetstream::new(client);
        // Bounded by forward.timeout anyway; fail a little earlier so the attempt says why.
        js.set_timeout(route.forward.timeout.mul_f64(0.9));
        Ok(NatsSink {
            js,
            sign: route.forward.sign.clone(),
            route: name,
            url: shown,
            subject: subject.to_string(),
        })
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
        h.insert("Nats-Msg-Id", ev.id.as_str());
        h
    }

    async fn publish(&self, ev: &Event, attempt: u32) -> Result<Receipt, PublishErrorKind> {
        let ack = self
            .js
            .publish_with_headers(
                self.subject.clone(),
                self.headers(ev, attempt),
                ev.body.clone(),
            )
            .await
            .map_err(|e| e.kind())?
            .await
            .map_err(|e| e.kind())?;
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

    async fn classify(&self, kind: PublishErrorKind) -> DeliveryError {
        let retry = |detail: String| DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail,
        };
        if kind != PublishErrorKind::StreamNotFound {
            return retry(format!(
                "JetStream publish to {:?} at {} failed: {kind}",
                self.subject, self.url
            ));
        }
        match self.js.stream_by_subject(self.subject.clone()).await {
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
            _ => retry(format!(
                "JetStream at {} has no responder for {:?} (not ready yet?)",
                self.url, self.subject
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
        match self.publish(ev, attempt).await {
            Ok(r) => Ok(r),
            Err(kind) => Err(self.classify(kind).await),
        }
    }
}
