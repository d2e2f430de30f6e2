//! The public listener: HTTP/1.1 on hyper, one task per connection. The request head must
//! arrive within `server.header_timeout` (and fit in 64 KiB), the body within
//! `server.body_timeout`. On shutdown it stops accepting, lets in-flight requests finish
//! within the grace period, then closes what is left. With TLS, each connection takes the
//! certificate of the moment, so a reload's renewed certificate serves new connections.

mod body;
pub use body::{BodyBudget, Held};
mod pipeline;
pub mod reject;
pub mod router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::store::Store;

pub struct Ingress {
    /// The current routes; swapped whole on reload.
    pub table: Arc<arc_swap::ArcSwap<crate::app::RouteTable>>,
    pub store: Arc<dyn Store>,
    /// Public connections open at once, at most ([`connection_cap`]).
    pub max_connections: usize,
    /// `server.max_body_memory`: the bytes of bodies held at once; its limit changes on reload.
    pub bodies: Arc<BodyBudget>,
}

const MAX_HEAD: usize = 64 * 1024;

/// Raises the soft open-file limit to the hard one (a systemd service starts at 1,024) and
/// returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            let soft = rlimit::Resource::NOFILE
                .get()
                .map(|(s, _)| s)
                .unwrap_or(1024);
            tracing::warn!(error = %e, limit = soft, "cannot raise the open-file limit");
            soft
        }
    }
}

/// How many public connections may be open under an open-file limit of `nofile`: the rest
/// stays for deliveries, the store and the admin port, so a flood of idle connections makes
/// new ones wait in the kernel's accept queue instead of failing deliveries with EMFILE.
pub fn connection_cap(nofile: u64) -> usize {
    let keep = (nofile / 2).min(1024);
    usize::try_from(nofile - keep).unwrap_or(usize::MAX).max(1)
}

pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ingress>,
    grace: Duration,
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut acceptor = Acceptor::new(listener, ctx.max_connections, "public");
    while let Some((stream, peer, slot)) = acceptor.next(&mut stop).await {
        let _ = stream.set_nodelay(true);
        // A client that stops reading its answers (pipelining without reading) would hold the
        // connection forever once the socket's buffers fill: a write that makes no progress
        // for body_timeout ends it.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        let (header_timeout, body_timeout) = {
            let t = ctx.table.load();
            (t.header_timeout, t.body_timeout)
        };
        stream.set_write_timeout(Some(body_timeout));
        let stream = Box::pin(stream);
        // The certificate of the moment: a reload swaps in renewed files.
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let (ctx, watcher) = (ctx.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, peer, ctx, header_timeout, watcher).await,
                // The TLS handshake counts against header_timeout too.
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(tls, peer, ctx, header_timeout, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(acceptor);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed with requests still in flight");
    }
}

/// Serves one HTTP/1.1 connection (plain or TLS) until it closes or shutdown ends it.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    ctx: Arc<Ingress>,
    header_timeout: Duration,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(pipeline::handle(ctx, peer, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD)
        // A sender may shut its side of the connection once the request is sent, waiting
        // for the answer: without this hyper took the EOF for a closed connection and
        // dropped the request in flight, so such a sender never got its 202 (and retried
        // forever) though the event may have been recorded.
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        // hyper answers a head it cannot parse itself (431 when too large or with too many
        // headers, else 400), before any route sees it: counted and logged here, as requests
        // no route matched. A header-read timeout is not: it also ends idle keep-alive
        // connections, which is no fault of the client's.
        let refused = if e.is_parse_too_large() {
            Some("headers_too_large")
        } else if e.is_parse() {
            Some("bad_request")
        } else {
            None
        };
        match refused {
            Some(outcome) => {
                metrics::counter!("hookgate_requests_total", "route" => "unmatched", "outcome" => outcome)
                    .increment(1);
                tracing::info!(client = %peer.ip().to_canonical(), outcome, error = %e, "request: refused by the HTTP parser");
            }
            None => tracing::debug!(peer = %peer, error = %e, "connection ended with an error"),
        }
    }
}

/// Accepts connections up to a cap (the public and the admin port each have one): past it,
/// new ones wait in the kernel's accept queue. A failing accept (out of file descriptors,
/// say) is tried again after 50 ms, not at once, which would spin a core; both are logged at
/// most every 10 s.
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
    port: &'static str,
    full: crate::telemetry::Throttle,
    failing: crate::telemetry::Throttle,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limit: usize, port: &'static str) -> Acceptor {
        Acceptor {
            listener,
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            port,
            full: Default::default(),
            failing: Default::default(),
        }
    }

    /// The next connection, with the slot it holds until dropped; `None` once `stop` changes.
    pub async fn next(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if self.full.ready() {
                        tracing::warn!(
                            port = self.port,
                            limit = self.limit,
                            "connection limit reached: new connections wait until one closes"
                        );
                    }
                    tokio::select! {
                        // Closed: never happens, the semaphore lives here.
                        slot = self.slots.clone().acquire_owned() => slot.ok()?,
                        _ = stop.changed() => return None,
                    }
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => return Some((stream, peer, slot)),
                    Err(e) => {
                        if self.failing.ready() {
                            tracing::warn!(port = self.port, error = %e, "accept failed (logged at most every 10 s)");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => return None,
            }
        }
    }
}

/// Binds a listener, naming the config key in the error.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))
}

pub type PeerAddr = SocketAddr;

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn connection_cap_leaves_room_for_deliveries_and_the_store() {
        assert_eq!(connection_cap(1024), 512);
        assert_eq!(connection_cap(4096), 3072);
        assert_eq!(connection_cap(1 << 20), (1 << 20) - 1024);
        assert_eq!(connection_cap(1), 1);
    }
}
