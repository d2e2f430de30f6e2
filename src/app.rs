//! Wires a validated config into a running gateway: store → workers → admin → ingress, in
//! that order, so the ingress never accepts an event before its worker exists, and `/readyz`
//! turns 200 only once everything is up. `Running::shutdown` undoes it in reverse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use crate::config::{Config, Mode, SinkTarget};
use crate::forward::http::HttpSink;
use crate::forward::{self, worker::Worker};
use crate::ingress::{self, router::Route, Ingress};
use crate::store::{self, Store};
use crate::telemetry;

const PURGE_EVERY: Duration = Duration::from_secs(60);
const GAUGES_EVERY: Duration = Duration::from_secs(5);

pub struct Running {
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    ingress: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = telemetry::init();
    let store = store::open(&config.store).await?;
    let (stop, stop_rx) = watch::channel(false);

    let mut wake = HashMap::new();
    let mut routes = Vec::new();
    let mut workers = Vec::new();
    for cfg in &config.routes {
        let notify = Arc::new(Notify::new());
        wake.insert(cfg.name.clone(), notify.clone());
        let mut route = Route::new(cfg.clone(), notify.clone());
        match (&cfg.mode, &cfg.forward.target) {
            (Mode::Proxy, SinkTarget::Http { url }) => {
                route.proxy = Some(Arc::new(HttpSink::new(cfg, url.clone())?));
            }
            _ => {
                let sink = forward::build_sink(cfg).await?;
                let worker = Worker {
                    route: cfg.clone(),
                    store: store.clone(),
                    sink,
                    wake: notify,
                    stop: stop_rx.clone(),
                };
                workers.push(tokio::spawn(worker.run()));
            }
        }
        routes.push(Arc::new(route));
    }

    let admin_listener = ingress::bind(config.server.admin_listen, "server.admin_listen").await?;
    let ingress_listener = ingress::bind(config.server.listen, "server.listen").await?;
    let admin_addr = admin_listener.local_addr()?;
    let ingress_addr = ingress_listener.local_addr()?;

    let admin = Arc::new(Admin {
        store: store.clone(),
        routes: config.routes.clone(),
        wake,
        token: config.server.admin_token.clone(),
        metrics,
        ready: Default::default(),
    });
    let mut background = vec![
        tokio::spawn(admin::serve(admin_listener, admin.clone(), stop_rx.clone())),
        tokio::spawn(purge_loop(store.clone(), stop_rx.clone())),
        tokio::spawn(gauge_loop(
            store.clone(),
            config.routes.iter().map(|r| r.name.clone()).collect(),
            stop_rx.clone(),
        )),
    ];

    let ctx = Arc::new(Ingress {
        router: ingress::router::Router::new(routes),
        store,
        trusted_proxies: config.server.trusted_proxies.clone(),
        body_timeout: config.server.body_timeout,
    });
    let ingress = tokio::spawn(ingress::serve(
        ingress_listener,
        ctx,
        config.server.header_timeout,
        config.server.shutdown_grace,
        stop_rx,
    ));
    admin.ready.store(true, Ordering::Release);
    background.shrink_to_fit();
    Ok(Running {
        ingress_addr,
        admin_addr,
        stop,
        ingress,
        workers,
        background,
        grace: config.server.shutdown_grace,
    })
}

impl Running {
    /// Stops accepting, finishes in-flight requests, stops workers after their in-flight
    /// attempts — all within the grace period. Pending events stay in the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = tokio::time::timeout_at(deadline, self.ingress).await;
        for w in self.workers {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                tracing::warn!("a delivery worker did not stop within the grace period; its attempts will be made again after restart");
            }
        }
        for b in self.background {
            b.abort();
        }
    }
}

async fn purge_loop(store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = store.purge(forward::worker::now_ms()).await {
            metrics::counter!("hookgate_store_errors_total").increment(1);
            tracing::warn!(error = %e, "purge of expired keys and old events failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn gauge_loop(store: Arc<dyn Store>, routes: Vec<String>, mut stop: watch::Receiver<bool>) {
    loop {
        for r in &routes {
            if let Ok(c) = store.counts(r).await {
                telemetry::event_counts(r, c.pending, c.dead);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(GAUGES_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
