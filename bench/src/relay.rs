//! The relay floor: the ceiling's bare hyper server plus one HTTP round trip to the upstream
//! per request, through hyper-util's pooled client (the client hookgate's HTTP sink uses),
//! answering `202` once the upstream answered. No verification, no store, no retries: what
//! taking a webhook in and handing it on costs on this machine, on one core, before hookgate
//! does any of its own work. hookgate's events each make the same two exchanges (the
//! sender's request and the delivery), so the relay's rate bounds what any gateway that
//! delivers from the same core can reach; hookgate's ratio to it is the share of that bound
//! its verification and durable record leave.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"status":"accepted","event_id":"019a0000-0000-7000-8000-000000000000"}"#;

/// Serves until killed; prints `relay listening ADDR` on stdout once bound.
pub fn serve(upstream: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let target: Uri = format!("http://{upstream}/deliveries").parse()?;
    rt.block_on(async {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("relay listening {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (client, target) = (client.clone(), target.clone());
                    async move { Ok::<_, Infallible>(relay(req, &client, target).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn relay(
    req: Request<Incoming>,
    client: &Client<HttpConnector, Full<Bytes>>,
    target: Uri,
) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    };
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, r#"{"error":"body"}"#);
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = Method::POST;
    *out.uri_mut() = target;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    match client.request(out).await {
        Ok(resp) if resp.status().is_success() => {
            // Read the upstream's answer to its end, so the pooled connection is reused.
            let _ = resp.into_body().collect().await;
            answer(StatusCode::ACCEPTED, ANSWER)
        }
        // The load generator counts anything but 202 as an error, so a failing relay shows.
        _ => answer(StatusCode::BAD_GATEWAY, r#"{"error":"upstream"}"#),
    }
}
