//! The relay floor: the ceiling's bare hyper server plus one HTTP round trip to the upstream
//! per request, through hyper-util's pooled client (the client hookgate's HTTP sink uses),
//! answering `202` once the upstream answered. No verification, no store, no retries: what
//! taking a webhook in and handing it on costs on this machine, on one core, before hookgate
//! does any of its own work. hookgate's events each make the same two exchanges (the
//! sender's request and the delivery), so the relay's rate bounds what a gateway that
//! delivers the same way from the same core can reach; hookgate's ratio to it is the share of
//! that bound its verification and durable record leave.
//!
//! Held to what hookgate's HTTP sink does with the bench's route: at most `CONCURRENCY`
//! deliveries in flight and as many idle pooled connections (`forward.concurrency`'s
//! default), the original headers forwarded without hop-by-hop ones and `Host`, plus five
//! `Hookgate-*` headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const ANSWER: &str = r#"{"status":"accepted","event_id":"019a0000-0000-7000-8000-000000000000"}"#;

/// hookgate's `forward.concurrency` default, which the bench's route keeps.
const CONCURRENCY: usize = 32;

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
];

struct Relay {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Uri,
    slots: Semaphore,
    sent: AtomicU64,
}

/// Serves until killed; prints `relay listening ADDR` on stdout once bound.
pub fn serve(upstream: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let target: Uri = format!("http://{upstream}/deliveries").parse()?;
    rt.block_on(async {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let relay = Arc::new(Relay {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CONCURRENCY)
                .build(connector),
            target,
            slots: Semaphore::new(CONCURRENCY),
            sent: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("relay listening {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let relay = relay.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let relay = relay.clone();
                    async move { Ok::<_, Infallible>(relay.forward(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

impl Relay {
    async fn forward(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = |status: StatusCode, body: &'static str| {
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return answer(StatusCode::BAD_REQUEST, r#"{"error":"body"}"#);
        };
        let mut out = Request::new(Full::new(body));
        *out.method_mut() = Method::POST;
        *out.uri_mut() = self.target.clone();
        let headers = out.headers_mut();
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("hookgate-event-id", format!("relay-{n}"));
        set("hookgate-route", "bench".into());
        set("hookgate-attempt", "1".into());
        set("hookgate-verified", "hmac".into());
        set("hookgate-received-at", "2026-01-01T00:00:00.000Z".into());
        let Ok(_slot) = self.slots.acquire().await else {
            return answer(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"closed"}"#);
        };
        match self.client.request(out).await {
            Ok(resp) if resp.status().is_success() => {
                // Read the upstream's answer to its end, so the pooled connection is reused.
                let _ = resp.into_body().collect().await;
                answer(StatusCode::ACCEPTED, ANSWER)
            }
            // The load generator counts anything but 202 as an error, so a failing relay shows.
            _ => answer(StatusCode::BAD_GATEWAY, r#"{"error":"upstream"}"#),
        }
    }
}
