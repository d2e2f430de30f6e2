//! The admin listener (never the public port): `/metrics`, `/healthz`, `/readyz` and the
//! `/admin/*` API of SPEC §7. With `server.admin_token`, `/admin/*` needs
//! `Authorization: Bearer <token>` (compared in constant time); probes and metrics do not.

pub mod client;
mod events;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Secret;
use crate::ingress::reject::{json, Reply};
use crate::store::Store;

pub struct Admin {
    pub store: Arc<dyn Store>,
    /// The current routes (swapped on reload).
    pub table: Arc<arc_swap::ArcSwap<crate::app::RouteTable>>,
    /// `server.admin_token`; swapped on reload, so revoking a leaked token needs no restart.
    pub token: arc_swap::ArcSwapOption<Secret>,
    pub metrics: PrometheusHandle,
    /// Set once the store is open, recovery done and every worker started.
    pub ready: AtomicBool,
}

/// Connections the admin port serves at once: probes, scrapes and operators need few, and a
/// flood of them must not take the file descriptors deliveries need. Past it, new ones wait
/// in the kernel's accept queue.
pub fn connection_cap(nofile: u64) -> usize {
    usize::try_from((nofile / 8).clamp(16, 256)).unwrap_or(256)
}

pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut acceptor = crate::ingress::Acceptor::new(listener, max_connections, "admin");
    while let Some((stream, _, slot)) = acceptor.next(&mut stop).await {
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(route(&admin, req).await) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                // A client that shuts its side once the request is sent still gets the answer
                // (as on the ingress); hyper otherwise drops the request on the EOF.
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn error(status: StatusCode, code: &str) -> Reply {
    json(status, serde_json::json!({ "error": code }).to_string())
}

/// `error` with a `detail` saying what to change.
pub fn error_detail(status: StatusCode, code: &str, detail: String) -> Reply {
    json(
        status,
        serde_json::json!({ "error": code, "detail": detail }).to_string(),
    )
}

pub fn ok_json(status: StatusCode, v: &impl serde::Serialize) -> Reply {
    json(
        status,
        serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
    )
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let token = admin.token.load();
    let Some(token) = token.as_deref() else {
        return true;
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .unwrap_or("");
    crate::verify::ct_eq(given.trim().as_bytes(), token.expose())
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut r = json(StatusCode::OK, admin.metrics.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, ["healthz"]) => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        (&Method::GET, ["readyz"]) => {
            if !admin.ready.load(Ordering::Acquire) {
                return error(StatusCode::SERVICE_UNAVAILABLE, "starting");
            }
            match admin.store.ping().await {
                Ok(()) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "readyz: not ready");
                    error_detail(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        e.to_string(),
                    )
                }
            }
        }
        (_, ["admin", ..]) if !authorized(admin, &req) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        (&Method::GET, ["admin", "routes"]) => events::routes(admin).await,
        (&Method::GET, ["admin", "events"]) => events::list(admin, req.uri().query()).await,
        (&Method::GET, ["admin", "events", id]) => events::show(admin, &events::spelled(id)).await,
        (&Method::DELETE, ["admin", "events", id]) => {
            events::discard(admin, &events::spelled(id)).await
        }
        (&Method::POST, ["admin", "events", id, "replay"]) => {
            events::replay(admin, &events::spelled(id)).await
        }
        (&Method::POST, ["admin", "routes", name, "replay-dead"]) => {
            events::replay_dead(admin, name).await
        }
        (_, ["metrics" | "healthz" | "readyz"]) | (_, ["admin", ..]) if known_path(&segments) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

fn known_path(s: &[&str]) -> bool {
    matches!(
        s,
        ["metrics" | "healthz" | "readyz"]
            | ["admin", "routes"]
            | ["admin", "events"]
            | ["admin", "events", _]
            | ["admin", "events", _, "replay"]
            | ["admin", "routes", _, "replay-dead"]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_connections_are_a_small_share_of_the_open_file_limit() {
        assert_eq!(super::connection_cap(128), 16);
        assert_eq!(super::connection_cap(1024), 128);
        assert_eq!(super::connection_cap(1 << 20), 256);
        // Together with the public cap, a quarter of the limit (up to 512) stays free for
        // deliveries and the store.
        for nofile in [128, 1024, 4096, 1 << 20] {
            let used = super::connection_cap(nofile) + crate::ingress::connection_cap(nofile);
            assert!(
                used as u64 <= nofile - nofile.min(2048) / 4,
                "{nofile}: {used}"
            );
        }
    }
}
