//! The RabbitMQ (AMQP 0-9-1) sink (SPEC §6): one `basic.publish` per attempt on a channel in
//! confirm mode, delivered on the broker's publisher confirm (ack). The message is persistent
//! (`delivery_mode = 2`), `mandatory`, carries the raw body, `content_type`, `message_id` =
//! event id, and the HTTP sink's headers (original minus hop-by-hop, plus `Hookgate-*`) as its
//! header table, a repeated header's values joined with `, ` (a table holds one value per
//! name). AMQP limits field names and `content_type` to 255 bytes: a header with a longer name
//! is left out of the table, a longer `Content-Type` out of the properties (it stays in the
//! table), each noted at debug level.
//!
//! Error classification, where it is born:
//! - no such exchange (the broker closes the channel with 404) → permanent: the operator must
//!   declare the exchange; the attempt detail names it;
//! - unroutable (returned because `mandatory`: no queue bound for the routing key) →
//!   retryable, on purpose: a missing binding is usually an operator's slip that is fixed in
//!   minutes, and the event must not be lost meanwhile; the attempt detail says so;
//! - broker down, connection or channel lost, nack, timeouts → retryable;
//! - the broker blocked the connection (a memory or disk alarm) → retryable, without
//!   publishing: lapin queues a blocked connection's frames and sends them all when the alarm
//!   clears, so every attempt that published meanwhile would add a copy of the message.
//!
//! A publish whose confirm does not come in time cannot be taken back (lapin sends a queued
//! frame even after its channel or connection is closed), so it is parked: the event's next
//! attempt is delivered if the broker confirmed it meanwhile, fails without publishing while
//! the confirm may still come (up to 5 minutes; at most `forward.concurrency` parked per
//! route), and publishes again only once it was returned, nacked or lost with its channel.
//!
//! Each route has its own connection, made on the first attempt (so a broker that is down at
//! startup never blocks the gateway) and made again after any failure that closed it; a
//! broken connection on one route cannot stall another. An attempt publishes on a channel of
//! its own, taken from a small pool (at most `forward.concurrency` idle channels), so each
//! channel has at most one publish awaiting its confirm: with several on one channel, lapin
//! can hand a returned (unroutable) message to the wrong publish when the broker acks them
//! together (`multiple`), making one attempt look unroutable and the other delivered. The
//! publish and its confirm are bounded by 90% of `forward.timeout`; a channel whose confirm
//! did not come in time is not used again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

use super::{message_headers, redact_url, DeliveryError, Receipt, Sink};
use crate::config::{ForwardSign, RouteConfig};
use crate::store::Event;

/// The longest AMQP short string (field names, `content_type`): its length is one byte.
const SHORT_STRING_MAX: usize = 255;

/// How long an attempt waits for the confirm of a message an earlier attempt published
/// before publishing another copy, unless the broker still blocks the connection.
const PARK_MAX: Duration = Duration::from_secs(300);

/// Heartbeat asked for when the URL names none (RabbitMQ takes the lower of its own and ours):
/// a connection that stops answering without closing is noticed after two missed ones.
/// RabbitMQ keeps sending heartbeats during flow control and resource alarms, so a slow or
/// blocked broker is not taken for a dead one (which would publish unconfirmed messages again).
const DEFAULT_HEARTBEAT_SECS: u16 = 5;

/// A publish whose confirm did not come within its attempt's time, kept with its channel
/// until the event's next attempt: if the broker confirmed it meanwhile, that attempt is
/// delivered without publishing a second copy. Dropping it stops waiting.
struct Parked {
    event_id: String,
    ch: Channel,
    task: tokio::task::JoinHandle<lapin::Result<Confirmation>>,
    since: Instant,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connect under way: lapin connects (TCP, TLS, then the AMQP handshake) on a thread an
/// attempt's timeout does not stop, and a peer that accepts but never answers (a proxy with
/// nothing behind it) holds that thread until the peer closes. So the next attempt waits for
/// the connect under way rather than starting another: one such thread per route, not one per
/// attempt. One still under way after `give_up` (2 × `timeout`, at least a minute) is left to
/// itself and a new one made, so a route is never stuck behind a hung one; past
/// `ABANDONED_MAX` of those still hanging, the oldest is let go (its thread stays blocked
/// until the peer closes: at most one more per `give_up`, said at error level).
struct Connecting {
    since: Instant,
    task: tokio::task::JoinHandle<lapin::Result<Connection>>,
}

#[derive(Default)]
struct Connects {
    current: Option<Connecting>,
    /// Left to themselves, still hanging (kept to count them; dropped once finished, which
    /// closes a connection one of them made after all).
    abandoned: Vec<tokio::task::JoinHandle<lapin::Result<Connection>>>,
}

const ABANDONED_MAX: usize = 3;

/// lapin's executor: tokio's, but its blocking work (the connect and the TLS handshake) on
/// threads of its own. A hung connect (see `Connecting`) on tokio's blocking pool held a slot
/// of it; enough of them (many routes, or `amqps://` to a silent peer) filled the pool, which
/// the embedded store's reads share, and stalled every route's deliveries and `/readyz`.
#[derive(Debug, Clone)]
struct LapinExecutor(tokio_executor_trait::Tokio);

impl executor_trait::Executor for LapinExecutor {
    fn block_on(&self, f: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
        self.0.block_on(f)
    }

    fn spawn(
        &self,
        f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Box<dyn executor_trait::Task> {
        self.0.spawn(f)
    }
}

#[async_trait]
impl executor_trait::BlockingExecutor for LapinExecutor {
    async fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send + 'static>) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("hookgate-amqp-connect".into())
            .spawn(move || {
                f();
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = wait.await;
            }
            // The connect then never finishes; its attempt times out and says so.
            Err(e) => {
                tracing::error!(error = %e, "cannot start a thread to connect to the amqp broker")
            }
        }
    }
}

impl executor_trait::FullExecutor for LapinExecutor {}

/// The route's connection and its channels that have no publish in flight.
struct Link {
    conn: Arc<Connection>,
    idle: Vec<Channel>,
}

pub struct AmqpSink {
    uri: String,
    link: tokio::sync::Mutex<Option<Link>>,
    /// Used by `connect`, which runs under `link`'s lock.
    connecting: std::sync::Mutex<Connects>,
    /// At most this many idle channels are kept (`forward.concurrency`), and as many
    /// publishes parked.
    channels_max: usize,
    parked: std::sync::Mutex<Vec<Parked>>,
    route: String,
    sign: Option<ForwardSign>,
    url: String,
    exchange: String,
    routing_key: String,
    timeout: Duration,
}

/// The longest an attempt refused while the broker blocks, or while an earlier publish's
/// confirm may still come, asks to wait (as a `Retry-After`): without it the retry budget
/// (SPEC's default: 8 attempts in ~1 min) would be spent, and the event dead, long before a
/// resource alarm or a parked confirm is over.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(30);

fn retry_later(left: Duration, detail: String) -> DeliveryError {
    DeliveryError::Retryable {
        status: None,
        retry_after: Some(left.clamp(Duration::from_secs(1), REFUSED_RETRY_AFTER)),
        detail,
    }
}

fn retryable(detail: String) -> DeliveryError {
    DeliveryError::Retryable {
        status: None,
        retry_after: None,
        detail,
    }
}

/// The broker's URI as lapin reads it, an IPv6 address included. lapin's parser takes the host
/// from `Url::domain()`, which is empty for an `[address]` host, and falls back to `localhost`:
/// `amqp://[fd00::5]:5672/` connected to port 5672 of the gateway's own host (in a sidecar, the
/// pod's). An IP host is kept in brackets, as the TCP connect reads `host:port`.
pub fn parse_uri(url: &str) -> Result<lapin::uri::AMQPUri, String> {
    let mut uri: lapin::uri::AMQPUri = url.parse()?;
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(url::Host::Ipv6(ip)) = parsed.host() {
            if uri.scheme == lapin::uri::AMQPScheme::AMQPS {
                return Err(format!(
                    "amqps:// to an IPv6 address ([{ip}]) is not supported: TLS checks the broker's host name, so use the name its certificate holds"
                ));
            }
            uri.authority.host = format!("[{ip}]");
        }
    }
    Ok(uri)
}

impl AmqpSink {
    pub fn new(
        route: &Arc<RouteConfig>,
        url: &str,
        exchange: &str,
        routing_key: &str,
    ) -> anyhow::Result<Self> {
        parse_uri(url).map_err(|e| {
            // The parser may quote the URL: never its password.
            let e = e.replace(url, &redact_url(url));
            anyhow::anyhow!(
                "route {:?}: forward.url {}: {e}",
                route.name,
                redact_url(url)
            )
        })?;
        Ok(AmqpSink {
            uri: url.to_string(),
            link: tokio::sync::Mutex::new(None),
            connecting: std::sync::Mutex::new(Connects::default()),
            channels_max: route.forward.concurrency.max(1),
            parked: std::sync::Mutex::new(Vec::new()),
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

    /// A channel in confirm mode with nothing in flight, (re)connecting when there is no
    /// connection or it was closed. Refuses while the broker blocks the connection.
    async fn checkout(&self, deadline: Instant) -> Result<Channel, DeliveryError> {
        let conn = {
            let mut slot = self.link.lock().await;
            if slot.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                // The connection is gone (the broker closed it, or it broke).
                slot.take();
            }
            match slot.as_mut() {
                Some(link) => {
                    if link.conn.status().blocked() {
                        return Err(retry_later(
                            REFUSED_RETRY_AFTER,
                            format!(
                            "broker blocked (resource alarm): the broker at {} blocks publishing \
                             on this connection (memory or disk alarm); not publishing until it \
                             unblocks",
                            self.url
                        ),
                        ));
                    }
                    while let Some(ch) = link.idle.pop() {
                        if ch.status().connected() {
                            return Ok(ch);
                        }
                    }
                    link.conn.clone()
                }
                None => {
                    let conn = Arc::new(self.connect(deadline).await?);
                    *slot = Some(Link {
                        conn: conn.clone(),
                        idle: Vec::new(),
                    });
                    conn
                }
            }
        };
        let made = tokio::time::timeout_at(deadline, async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        })
        .await;
        match made {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => Err(retryable(format!(
                "cannot open a channel to the amqp broker at {}: {e}",
                self.url
            ))),
            Err(_) => Err(retryable(format!(
                "cannot open a channel to the amqp broker at {}: timed out",
                self.url
            ))),
        }
    }

    /// Gives back a channel whose publish is settled, if it is still open and on the current
    /// connection, and the pool is not full.
    fn checkin(&self, ch: Channel) {
        if !ch.status().connected() {
            return;
        }
        // Not waited for: another attempt may hold the lock while it connects, and this
        // attempt's confirm must be recorded before the worker's timeout. A busy lock costs
        // one channel, made again later.
        let Ok(mut slot) = self.link.try_lock() else {
            return;
        };
        if let Some(link) = slot.as_mut() {
            if link.conn.status().connected() && link.idle.len() < self.channels_max {
                link.idle.push(ch);
            }
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a publish whose confirm is late (the oldest parked one goes if there are too
    /// many).
    fn park(&self, parked: Parked) {
        let mut all = self.parked();
        all.retain(|p| p.event_id != parked.event_id);
        if all.len() >= self.channels_max {
            all.remove(0);
        }
        all.push(parked);
    }

    /// What became of the publish an earlier attempt of this event left parked: `Err` while
    /// its confirm may still come, `Ok(Some(..))` once it settled, `Ok(None)` if there is
    /// none (or it is given up: its channel closed, or it waited past `PARK_MAX`).
    fn unpark(&self, event_id: &str) -> Result<Option<Parked>, Duration> {
        let mut all = self.parked();
        let Some(i) = all.iter().position(|p| p.event_id == event_id) else {
            return Ok(None);
        };
        let p = &all[i];
        if p.task.is_finished() {
            return Ok(Some(all.remove(i)));
        }
        if p.ch.status().connected() && p.since.elapsed() < PARK_MAX {
            return Err(PARK_MAX - p.since.elapsed());
        }
        all.remove(i);
        Ok(None)
    }

    fn start_connect(&self, deadline: Instant) -> Connecting {
        let props = ConnectionProperties::default()
            .with_executor(LapinExecutor(tokio_executor_trait::Tokio::current()))
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(format!("hookgate route {}", self.route).into());
        let uri = parse_uri(&self.uri);
        // The attempt's time left, but not next to nothing (an attempt that waited for the
        // link's lock): the connect goes on past its attempt anyway.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(self.timeout.min(Duration::from_secs(5)) / 2);
        let task = tokio::spawn(async move {
            let mut uri =
                uri.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // Without a connect timeout of its own, an unreachable broker (no answer to the
            // SYN) would hold the connect's thread for the OS's ~2 min. The attempt's time
            // left: a TCP connect is over by its end, and only a handshake goes on.
            if uri.query.connection_timeout.is_none() {
                uri.query.connection_timeout = Some(left.as_millis().max(1) as u64);
            }
            // A connection that stops answering without closing (a broker host gone, a NAT
            // entry lost) is noticed by missed heartbeats: RabbitMQ's default of 60 s held a
            // route's deliveries for minutes. `?heartbeat=N` in the URL still decides.
            if uri.query.heartbeat.is_none() {
                uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
            }
            Connection::connect_uri(uri, props).await
        });
        Connecting {
            since: Instant::now(),
            task,
        }
    }

    fn connects(&self) -> std::sync::MutexGuard<'_, Connects> {
        self.connecting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connect(&self, deadline: Instant) -> Result<Connection, DeliveryError> {
        let give_up = (self.timeout * 2).max(Duration::from_secs(60));
        let under_way = {
            let mut c = self.connects();
            c.abandoned.retain(|t| !t.is_finished());
            c.current.take()
        };
        let mut connecting = match under_way {
            // Finished after its attempt ended: a connection still up is taken; an error (or
            // a connection closed since) was that attempt's answer, not this one's.
            Some(c) if c.task.is_finished() => match c.task.await {
                Ok(Ok(conn)) if conn.status().connected() => {
                    tracing::info!(route = %self.route, url = %self.url, "connected to amqp broker (forward.url)");
                    return Ok(conn);
                }
                _ => self.start_connect(deadline),
            },
            Some(c) if c.since.elapsed() < give_up => c,
            Some(c) => {
                let mut connects = self.connects();
                if connects.abandoned.len() >= ABANDONED_MAX {
                    // Never stuck for good behind connects nothing will end (lapin has no
                    // handshake timeout): the oldest is let go (its thread lives on until the
                    // peer closes), and said loudly.
                    connects.abandoned.remove(0);
                    tracing::error!(route = %self.route, url = %self.url, "connects to the amqp broker keep hanging (the peer accepts but does not answer?): one more thread is left blocked; check what answers at forward.url");
                }
                tracing::warn!(route = %self.route, url = %self.url, since_s = c.since.elapsed().as_secs(), "a connect to the amqp broker has not finished (the peer accepts but does not answer?): leaving it and connecting anew");
                connects.abandoned.push(c.task);
                drop(connects);
                self.start_connect(deadline)
            }
            None => self.start_connect(deadline),
        };
        let err = match tokio::time::timeout_at(deadline, &mut connecting.task).await {
            Ok(Ok(Ok(c))) => {
                tracing::info!(route = %self.route, url = %self.url, "connected to amqp broker (forward.url)");
                return Ok(c);
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                let since = connecting.since.elapsed().as_secs();
                self.connects().current = Some(connecting);
                format!("timed out (the connect goes on, {since} s so far: the next attempt waits for it rather than starting another)")
            }
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
        let mut values: Vec<(String, Vec<u8>)> = Vec::new();
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
            if k == "Content-Type" && content_type.is_none() {
                let ct = String::from_utf8_lossy(&v).into_owned();
                if ct.len() <= SHORT_STRING_MAX {
                    content_type = Some(ct);
                } else {
                    // Still in the header table (a long string); only the property is left out.
                    tracing::debug!(route = %self.route, event_id = %ev.id, bytes = ct.len(), "content type longer than 255 bytes left out of the amqp message's properties");
                }
            }
            // A table holds one value per name: a repeated header's values are joined with
            // ", " in their order, as HTTP allows for a list (RFC 9110 §5.3).
            match values.iter_mut().find(|(name, _)| *name == k) {
                Some((_, joined)) => {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(&v);
                }
                None => values.push((k, v)),
            }
        }
        for (k, v) in values {
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
        // RabbitMQ's `max_message_size` (a channel error: 406 PRECONDITION_FAILED "message
        // size … is larger than configured max size …"): the broker answered, and every retry
        // of this message gets the same answer. Retried, each failure also counted against the
        // route's circuit, so the route's other events waited behind its probes.
        if text.contains("larger than configured max size") {
            let detail = format!(
                "route {:?}: the amqp broker at {} refuses the message as too large: {text}; raise max_message_size in rabbitmq.conf",
                self.route, self.url
            );
            tracing::error!(route = %self.route, "{detail}");
            return DeliveryError::Permanent {
                status: None,
                detail,
            };
        }
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
        // A little under forward.timeout (which the worker enforces), so the attempt can say
        // why and park its publish.
        let wait = self.timeout.mul_f64(0.9);
        let deadline = Instant::now() + wait;
        match self.unpark(&ev.id) {
            Err(wait_left) => {
                return Err(retry_later(
                    wait_left,
                    format!(
                        "the broker at {} has not yet confirmed the message an earlier attempt \
                     published (broker blocked or slow); not publishing another copy until it \
                     does",
                        self.url
                    ),
                ))
            }
            Ok(Some(mut p)) => {
                if let Ok(Ok(Confirmation::Ack(None))) = (&mut p.task).await {
                    let ch = p.ch.clone();
                    drop(p);
                    self.checkin(ch);
                    return Ok(Receipt {
                        status: None,
                        detail: format!(
                            "confirmed by broker (exchange {}, routing key {:?}): the message \
                             an earlier attempt published, confirmed after that attempt's time \
                             ran out",
                            self.exchange_name(),
                            self.routing_key
                        ),
                    });
                }
                // Returned, nacked or failed: publish again.
            }
            Ok(None) => {}
        }
        let ch = self.checkout(deadline).await?;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        // On a task of its own, so a publish whose time runs out can be kept (parked).
        let mut task = tokio::spawn({
            let (ch, exchange, routing_key) =
                (ch.clone(), self.exchange.clone(), self.routing_key.clone());
            let (body, props) = (ev.body.clone(), self.properties(ev, attempt));
            async move {
                ch.basic_publish(&exchange, &routing_key, opts, &body, props)
                    .await?
                    .await
            }
        });
        let confirm = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(Ok(c))) => c,
            Ok(Ok(Err(e))) => return Err(self.classify(&e)),
            Ok(Err(e)) => return Err(retryable(format!("publish task failed: {e}"))),
            Err(_) => {
                // The channel awaits this confirm, so it is never reused; lapin sends the
                // message even if it is still queued (a blocked connection), so the next
                // attempt waits for this confirm instead of publishing another copy.
                self.park(Parked {
                    event_id: ev.id.clone(),
                    ch,
                    task,
                    since: Instant::now(),
                });
                return Err(retryable(format!(
                    "no publisher confirm from the broker at {} within {wait:?} (exchange {}); \
                     the next attempt waits for it before publishing again",
                    self.url,
                    self.exchange_name()
                )));
            }
        };
        let outcome = match confirm {
            Confirmation::Ack(None) => Ok(Receipt {
                status: None,
                detail: format!(
                    "confirmed by broker (exchange {}, routing key {:?})",
                    self.exchange_name(),
                    self.routing_key
                ),
            }),
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret))
                if ret
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str())
                    != Some(ev.id.as_str()) =>
            {
                // Cannot happen with one publish per channel; never call it unroutable.
                return Err(retryable(format!(
                    "the broker's confirm came with another message's return (message id {:?}); \
                     retrying",
                    ret.delivery.properties.message_id()
                )));
            }
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => {
                // The default exchange takes no bindings: it routes to the queue named by the
                // routing key, which must exist.
                let fix = if self.exchange.is_empty() {
                    format!(
                        "no queue named {:?} exists; declare it (the default exchange routes to \
                         the queue the routing key names)",
                        self.routing_key
                    )
                } else {
                    "no queue is bound for it; bind one (forward.routing_key)".to_string()
                };
                let detail = format!(
                    "route {:?}: message returned unroutable by exchange {} for routing key {:?} \
                     ({} {}): {fix}, then replay the event if it went dead meanwhile",
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
                "broker nacked the message (exchange {}): a queue it routes to may be full \
                 (x-max-length with x-overflow reject-publish) or the broker failed to store it",
                self.exchange_name()
            ))),
            Confirmation::NotRequested => {
                return Err(retryable(
                    "channel is not in confirm mode; reconnecting".to_string(),
                ))
            }
        };
        self.checkin(ch);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::parse_uri;

    #[test]
    fn the_urls_host_is_the_one_connected_to_an_ipv6_address_included() {
        let host = |url: &str| {
            let uri = parse_uri(url).map_err(|e| e.to_string());
            uri.map(|u| format!("{}:{}", u.authority.host, u.authority.port))
        };
        assert_eq!(
            host("amqp://u:p@[fd00::5]:5673/%2f"),
            Ok("[fd00::5]:5673".into())
        );
        assert_eq!(host("amqp://[::1]/"), Ok("[::1]:5672".into()));
        assert_eq!(
            host("amqp://[::ffff:10.0.0.1]:5672/%2f"),
            Ok("[::ffff:10.0.0.1]:5672".into()),
            "as the TCP connect reads it"
        );
        assert_eq!(host("amqp://10.0.0.1:5673/%2f"), Ok("10.0.0.1:5673".into()));
        assert_eq!(host("amqp://rabbit.svc/%2f"), Ok("rabbit.svc:5672".into()));
        assert_eq!(
            host("amqp:///%2f"),
            Ok("localhost:5672".into()),
            "lapin's default"
        );
        let tls = host("amqps://u:p@[fd00::5]/%2f").unwrap_err();
        assert!(tls.contains("IPv6") && tls.contains("host name"), "{tls}");
        for addr in ["[fd00::5]:5673", "[::ffff:10.0.0.1]:5672"] {
            assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "{addr}");
        }
    }
}
