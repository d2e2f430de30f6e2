//! The ceiling: a bare hyper 1.x HTTP/1.1 server that reads the whole body and answers `202`
//! with a small JSON body the size of hookgate's. It runs in its own process (this binary's
//! hidden `ceiling` command), pinned to the server core, on the same runtime flavour as
//! hookgate (tokio multi-thread, default worker count), with `TCP_NODELAY` as hookgate sets
//! it. No verification, no store, no logging: what HTTP alone costs on this machine.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"status":"accepted","event_id":"019a0000-0000-7000-8000-000000000000"}"#;

/// Serves until killed; prints `ceiling listening ADDR` on stdout once bound.
pub fn serve() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("ceiling listening {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut r = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
