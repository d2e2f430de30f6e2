//! The RabbitMQ (AMQP 0-9-1) sink (SPEC §6): one `basic.publish` per attempt on a channel in
//! confirm mode, delivered on the broker's publisher confirm (ack). The message is persistent
//! (`delivery_mode = 2`), `mandatory`, carries the raw body, `content_type`, `message_id` =
//! event id, and the HTTP sink's headers (original minus hop-by-hop, plus `Hookgate-*`) as its
//! header table. AMQP limits field names and `content_type` to 255 bytes: a header with a
//! longer name is left out of the table, a longer `Content-Type` out of the properties (it
//! stays in the table), each noted at debug level.
//!
//! Error classification, where it is born:
//! - no such exchange (the broker closes the channel with 404) → permanent: the operator must
//!   declare the exchange; the attempt detail names it;
//! - unroutable (returned because `mandatory`: no queue bound for the routing key) →
//!   retryable, on purpose: a missing binding is usually an operator's slip that is fixed in
//!   minutes, and the event must not be lost meanwhile; the attempt detail says so;
//! - broker down, connection or channel lost, nack, timeouts → retryable.
//!
//! Each route has its own connection and channel, made on the first attempt (so a broker that
//! is down at startup never blocks the gateway) and made again after any failure that closed
//! them; a broken channel on one route cannot stall another.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{message_headers, redact_url, DeliveryError, Receipt, Sink};
use crate::config::{ForwardSign, RouteConfig};
use crate::store::Event;

/// The longest AMQP short string (field names, `content_type`): its length is one byte.
const SHORT_STRING_MAX: usize = 255;

pub struct AmqpSink {
    uri: String,
    conn: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    route: String,
    sign: Option<ForwardSign>,
    url: String,
    exchange: String,
    routing_key: String,
    timeout: Duration,
}

fn retryable(detail: String) -> DeliveryError {
    DeliveryError::Retryable {
        status: None,
        retry_after: None,
        detail,
    }
}

impl AmqpSink {
    pub fn new(
        route: &Arc<RouteConfig>,
        url: &str,
        exchange: &str,
        routing_key: &str,
    ) -> anyhow::Result<Self> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| {
            anyhow::anyhow!(
                "route {:?}: forward.url {}: {e}",
                route.name,
                redact_url(url)
            )
        })?;
        Ok(AmqpSink {
            uri: url.to_string(),
            conn: tokio::sync::Mutex::new(None),
            route: route.name.clone(),
            sign: route.forward.sign.clone(),
            url: redact_url(url),
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            timeout: route.forward.timeout,
        })
    }

    fn exchange_name(&self) -> &str {
        if self.exchange.is_empty() {
            "(default exchange)"
        } else {
            &self.exchange
        }
    }

    /// The route's channel, (re)connecting when there is none or it was closed.
    async fn channel(&self) -> Result<Channel, DeliveryError> {
        let mut slot = self.conn.lock().await;
        if let Some((c, ch)) = slot.as_ref() {
            if c.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        if let Some((c, _)) = slot.take() {
            if c.status().connected() {
                // The channel died (e.g. a 404); a fresh connection is simplest and cheap.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), c.close(200, "reconnect")).await;
            }
        }
        let made = tokio::time::timeout(self.timeout, async {
            let props = ConnectionProperties::default()
                .with_executor(tokio_executor_trait::Tokio::current())
                .with_reactor(tokio_reactor_trait::Tokio)
                .with_connection_name(format!("hookgate route {}", self.route).into());
            let c = Connection::connect(&self.uri, props).await?;
            let ch = c.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((c, ch))
        })
        .await;
        let err = match made {
            Ok(Ok((c, ch))) => {
                tracing::info!(route = %self.route, url = %self.url, "connected to amqp broker (forward.url)");
                *slot = Some((c, ch.clone()));
                return Ok(ch);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::warn!(route = %self.route, url = %self.url, error = %err, "cannot connect to amqp broker (forward.url)");
        Err(retryable(format!(
            "cannot connect to amqp broker at {}: {err}",
            self.url
        )))
    }

    fn properties(&self, ev: &Event, attempt: u32) -> BasicProperties {
        let mut table = FieldTable::default();
        let mut content_type = None;
        for (k, v) in message_headers(ev, &self.route, attempt, self.sign.as_ref()) {
            // RabbitMQ routes copies of a message by its `CC` / `BCC` headers: no sender may.
            if k.eq_ignore_ascii_case("cc") || k.eq_ignore_ascii_case("bcc") {
                continue;
            }
            // A field name is a short string (one length byte): a longer one would make a
            // frame the broker rejects, closing the connection on every attempt.
            if k.len() > SHORT_STRING_MAX {
                tracing::debug!(route = %self.route, event_id = %ev.id, header_bytes = k.len(), "header name longer than 255 bytes left out of the amqp message");
                continue;
            }
            if k == "Content-Type" {
                let ct = String::from_utf8_lossy(&v).into_owned();
                if ct.len() <= SHORT_STRING_MAX {
                    content_type = Some(ct);
                } else {
                    // Still in the header table (a long string); only the property is left out.
                    tracing::debug!(route = %self.route, event_id = %ev.id, bytes = ct.len(), "content type longer than 255 bytes left out of the amqp message's properties");
                }
            }
            table.insert(
                ShortString::from(k),
                AMQPValue::LongString(LongString::from(v)),
            );
        }
        let mut p = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(ev.id.clone()))
            .with_headers(table);
        if let Some(ct) = content_type {
            p = p.with_content_type(ShortString::from(ct));
        }
        p
    }

    fn classify(&self, e: &lapin::Error) -> DeliveryError {
        let text = e.to_string();
        if text.contains("NOT_FOUND") {
            let detail = format!(
                "route {:?}: exchange {:?} (forward.exchange) does not exist at {}: {text}; \
                 declare it (e.g. `rabbitmqadmin declare exchange name={} type=direct durable=true`)",
                self.route,
                self.exchange,
                self.url,
                self.exchange
            );
            tracing::error!(route = %self.route, exchange = %self.exchange, "{detail}");
            return DeliveryError::Permanent {
                status: None,
                detail,
            };
        }
        retryable(format!(
            "publish to exchange {} at {} failed: {text}",
            self.exchange_name(),
            self.url
        ))
    }
}

#[async_trait]
impl Sink for AmqpSink {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError> {
        let ch = self.channel().await?;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = ch
            .basic_publish(
                &self.exchange,
                &self.routing_key,
                opts,
                &ev.body,
                self.properties(ev, attempt),
            )
            .await
            .map_err(|e| self.classify(&e))?
            .await
            .map_err(|e| self.classify(&e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(Receipt {
                status: None,
                detail: format!(
                    "confirmed by broker (exchange {}, routing key {:?})",
                    self.exchange_name(),
                    self.routing_key
                ),
            }),
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => {
                let detail = format!(
                    "route {:?}: message returned unroutable by exchange {} for routing key {:?} \
                     ({} {}): no queue is bound for it; bind one (forward.routing_key) — the \
                     event is kept and retried until then",
                    self.route,
                    self.exchange_name(),
                    self.routing_key,
                    ret.reply_code,
                    ret.reply_text
                );
                tracing::warn!(route = %self.route, exchange = %self.exchange, routing_key = %self.routing_key, "{detail}");
                Err(retryable(detail))
            }
            Confirmation::Nack(None) => Err(retryable(format!(
                "broker nacked the message (exchange {})",
                self.exchange_name()
            ))),
            Confirmation::NotRequested => Err(retryable(
                "channel is not in confirm mode; reconnecting".to_string(),
            )),
        }
    }
}
