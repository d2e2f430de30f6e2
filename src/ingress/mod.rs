//! The public listener: HTTP/1.1 on hyper, one task per connection. The request head must
//! arrive within `server.header_timeout` (and fit in 64 KiB), the body within
//! `server.body_timeout`. On shutdown it stops accepting, lets in-flight requests finish
//! within the grace period, then closes what is left.

mod body;
mod pipeline;
pub mod reject;
pub mod router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Store;

pub struct Ingress {
    /// The current routes; swapped whole on reload.
    pub table: Arc<arc_swap::ArcSwap<crate::app::RouteTable>>,
    pub store: Arc<dyn Store>,
    pub trusted_proxies: Vec<IpNet>,
    pub body_timeout: Duration,
}

const MAX_HEAD: usize = 64 * 1024;

pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ingress>,
    header_timeout: Duration,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let svc = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(pipeline::handle(ctx, peer, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed with requests still in flight");
    }
}

/// Binds a listener, naming the config key in the error.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))
}

pub type PeerAddr = SocketAddr;
