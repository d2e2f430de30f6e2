//! The Redis Streams sink (SPEC §6): one `XADD <stream> [MAXLEN ~ n] * …` per attempt with the
//! fields `event_id`, `route`, `received_at` (RFC 3339), `content_type`, `headers` (the stored
//! headers as JSON), `body` (raw bytes), `attempt` and `verified`. Delivered when `XADD`
//! returns.
//!
//! The connection is made on the first attempt, not at startup, so a Redis that is down when
//! the gateway starts only delays delivery. `WRONGTYPE` (the key holds something else than a
//! stream) is permanent: the operator must fix the key; every other failure (connection
//! refused, reset, timeouts, `OOM`, `LOADING`, auth, `READONLY`) is retryable, so nothing is
//! lost while Redis is fixed, and drops the connection so the next attempt makes a fresh one:
//! the connection manager only reconnects after an I/O error, so it would otherwise keep
//! talking to an old primary that answers `READONLY` after a failover, or keep returning the
//! error of a reconnect the server refused (`WRONGPASS`, max clients) until a restart.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{redact_url, DeliveryError, Receipt, Sink};
use crate::config::RouteConfig;
use crate::store::{rfc3339_ms, Event};

pub struct RedisStreamSink {
    client: redis::Client,
    /// The connection and its generation (so that of several attempts failing on one
    /// connection, only the first drops it, not the fresh one another attempt made since).
    conn: tokio::sync::Mutex<(u64, Option<ConnectionManager>)>,
    route: String,
    url: String,
    stream: String,
    maxlen: Option<u64>,
    timeout: Duration,
}

impl RedisStreamSink {
    pub fn new(
        route: &Arc<RouteConfig>,
        url: &str,
        stream: &str,
        maxlen: Option<u64>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!(
                "route {:?}: forward.url {}: {e}",
                route.name,
                redact_url(url)
            )
        })?;
        Ok(RedisStreamSink {
            client,
            conn: tokio::sync::Mutex::new((0, None)),
            route: route.name.clone(),
            url: redact_url(url),
            stream: stream.to_string(),
            maxlen,
            timeout: route.forward.timeout,
        })
    }

    async fn connection(&self) -> Result<(u64, ConnectionManager), DeliveryError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.1.as_ref() {
            return Ok((slot.0, c.clone()));
        }
        // The connect inside forward.timeout (which the worker enforces), so the attempt says
        // why; one try (a retry waits 1-2 s more). Replies are bounded by `deliver`'s own
        // timer, which drops the connection (the manager's would keep the socket).
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.mul_f64(0.8))
            .set_response_timeout(self.timeout)
            .set_number_of_retries(0);
        let c = self
            .client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(|e| {
                tracing::warn!(route = %self.route, url = %self.url, error = %e, "cannot connect to redis (forward.url)");
                DeliveryError::Retryable {
                    status: None,
                    retry_after: None,
                    detail: format!("cannot connect to redis at {}: {e}", self.url),
                }
            })?;
        slot.0 += 1;
        slot.1 = Some(c.clone());
        Ok((slot.0, c))
    }

    /// Drops connection `generation` if it is still the current one.
    async fn discard(&self, generation: u64) {
        let mut slot = self.conn.lock().await;
        if slot.0 == generation && slot.1.take().is_some() {
            tracing::info!(route = %self.route, url = %self.url, "dropping the redis connection after an error; the next attempt makes a new one");
        }
    }

    fn command(&self, ev: &Event, attempt: u32) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg("event_id")
            .arg(&ev.id)
            .arg("route")
            .arg(&self.route)
            .arg("received_at")
            .arg(rfc3339_ms(ev.received_at_ms))
            .arg("content_type")
            .arg(ev.headers.get("content-type").unwrap_or(""))
            .arg("headers")
            .arg(ev.headers.to_json())
            .arg("body")
            .arg(ev.body.as_ref())
            .arg("attempt")
            .arg(attempt)
            .arg("verified")
            .arg(&ev.scheme);
        cmd
    }

    /// Where the error is born: WRONGTYPE is the operator's to fix, the rest may pass.
    fn classify(&self, e: &redis::RedisError) -> DeliveryError {
        if e.code() == Some("WRONGTYPE") {
            let detail = format!(
                "route {:?}: redis key {:?} (forward.stream) exists and is not a stream: {e}; \
                 delete or rename it, or set another forward.stream",
                self.route, self.stream
            );
            tracing::error!(route = %self.route, stream = %self.stream, "{detail}");
            return DeliveryError::Permanent {
                status: None,
                detail,
            };
        }
        DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail: format!("XADD {} at {} failed: {e}", self.stream, self.url),
        }
    }
}

#[async_trait]
impl Sink for RedisStreamSink {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn deliver(&self, ev: &Event, attempt: u32) -> Result<Receipt, DeliveryError> {
        let (generation, mut conn) = self.connection().await?;
        // Bounded here, a little inside forward.timeout: the manager does not reconnect after
        // a timeout (it retries on the same socket), so a primary gone silent (a network cut,
        // a dead VM after a failover) would hold every attempt until the kernel gives up on
        // the socket. A timed-out XADD may have been applied: the retry may add a duplicate,
        // never lose the event.
        let wait = self.timeout.mul_f64(0.9);
        let cmd = self.command(ev, attempt);
        let id: String = match tokio::time::timeout(wait, cmd.query_async(&mut conn)).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                if e.code() != Some("WRONGTYPE") {
                    self.discard(generation).await;
                }
                return Err(self.classify(&e));
            }
            Err(_) => {
                self.discard(generation).await;
                return Err(DeliveryError::Retryable {
                    status: None,
                    retry_after: None,
                    detail: format!(
                        "XADD {} at {}: no answer within {wait:?}; the connection is dropped",
                        self.stream, self.url
                    ),
                });
            }
        };
        Ok(Receipt {
            status: None,
            detail: format!("XADD {} → {id}", self.stream),
        })
    }
}
