//! Delivered events per second for each sink, in one run: `scripts/bench-sinks.sh`.
//!
//! For each sink a fresh gateway (the binary at `$HOOKGATE_BIN`, default
//! `target/release/hookgate`) and a private broker; `$HOOKGATE_BENCH_N` events (default 3000)
//! of 1 KiB are posted 16 at a time, and the clock stops when `/admin/routes` counts them all
//! delivered. The HTTP sink's upstream is an in-process hyper server answering 204. RabbitMQ
//! is the node of `$HOOKGATE_TEST_AMQP_URL` (skipped when unset).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/sinks_support/mod.rs"]
mod sinks_support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use sinks_support::*;

async fn http_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("url = \"http://{addr}/hook\"")
}

/// Two figures per sink. End to end: `n` events posted 16 at a time while the sink delivers
/// (bounded by ingestion, the same for every sink). Drain: `n` events accepted while the
/// route points at a closed port, then the gateway is restarted on the same store with the
/// real sink and the clock runs from "listening" to all delivered (the backlog's retries
/// are all due at once: the accumulating gateway used a 1 ms backoff).
async fn measure(bin: &Path, sink: &str, forward: &str, n: usize) {
    let gw = Gateway::start(bin, forward);
    let t0 = Instant::now();
    gw.post_many(n).await;
    let accepted = t0.elapsed();
    wait_for("all delivered", || async {
        (gw.delivered().await? >= n as u64).then_some(())
    })
    .await;
    let e2e = t0.elapsed();
    drop(gw);

    let nowhere = format!("url = \"http://127.0.0.1:{}/closed\"", free_port());
    // Retries every millisecond, so the whole backlog is due when the real sink takes over.
    let gw = Gateway::start_with(bin, tempfile::tempdir().unwrap(), &nowhere, ("1ms", "1ms"));
    gw.post_many(n).await;
    let dir = gw.kill();
    let gw = Gateway::start_in(bin, dir, forward);
    let t0 = Instant::now();
    wait_for("backlog drained", || async {
        (gw.delivered().await? >= n as u64).then_some(())
    })
    .await;
    let drain = t0.elapsed();
    println!(
        "| {sink} | {n} | {:.0} | {:.0} | {:.0} |",
        n as f64 / accepted.as_secs_f64(),
        n as f64 / e2e.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let bin = PathBuf::from(
        std::env::var("HOOKGATE_BIN").unwrap_or_else(|_| "target/release/hookgate".into()),
    );
    let n: usize = std::env::var("HOOKGATE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    println!(
        "| sink | events | accepted/s | delivered/s end to end | delivered/s draining a backlog |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");

    let forward = http_upstream().await;
    measure(&bin, "http", &forward, n).await;

    let r = Redis::start().await;
    measure(
        &bin,
        "redis",
        &format!("url = {:?}\nstream = \"bench\"", r.url()),
        n,
    )
    .await;
    drop(r);

    let nats = Nats::start().await;
    nats.js()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    measure(
        &bin,
        "nats",
        &format!("url = {:?}\nsubject = \"bench\"", nats.url()),
        n,
    )
    .await;
    drop(nats);

    match std::env::var("HOOKGATE_TEST_AMQP_URL") {
        Ok(url) => {
            // The default exchange routes to the queue named by the routing key.
            let props = lapin::ConnectionProperties::default()
                .with_executor(tokio_executor_trait::Tokio::current())
                .with_reactor(tokio_reactor_trait::Tokio);
            let c = lapin::Connection::connect(&url, props).await.unwrap();
            let ch = c.create_channel().await.unwrap();
            let q = format!("bench-{}", uuid::Uuid::now_v7().simple());
            let opts = lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(&q, opts, Default::default())
                .await
                .unwrap();
            let forward = format!("url = {url:?}\nexchange = \"\"\nrouting_key = {q:?}");
            measure(&bin, "amqp", &forward, n).await;
            let _ = ch.queue_delete(&q, Default::default()).await;
        }
        Err(_) => println!("| amqp | skipped: HOOKGATE_TEST_AMQP_URL is not set | | | |"),
    }
}
