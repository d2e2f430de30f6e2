//! The upstream that hookgate delivers to, in the generator's process (so on the generator's
//! core): answers `200` to everything, reads each body to its end, and counts deliveries,
//! both in all and distinct by `Hookgate-Event-Id` (a repeat would be a duplicate delivery).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Counts {
    deliveries: AtomicU64,
    seen: Mutex<HashSet<String>>,
}

impl Counts {
    /// Every delivery request received.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Distinct events delivered.
    pub fn distinct(&self) -> u64 {
        self.seen.lock().map(|s| s.len() as u64).unwrap_or(0)
    }

    /// Forgets the events seen (between levels, so the set stays small).
    pub fn reset(&self) {
        self.deliveries.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

pub async fn start() -> anyhow::Result<(SocketAddr, Arc<Counts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let c = c.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let c = c.clone();
                async move {
                    let id = req
                        .headers()
                        .get("hookgate-event-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    // A body cut short is still answered; hookgate will see the error itself.
                    let _ = req.into_body().collect().await;
                    c.deliveries.fetch_add(1, Ordering::Relaxed);
                    if let (Some(id), Ok(mut seen)) = (id, c.seen.lock()) {
                        seen.insert(id);
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, counts))
}
