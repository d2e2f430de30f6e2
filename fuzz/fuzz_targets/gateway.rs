//! A gateway running in the fuzzer's process (embedded store in a temp dir, a route per scheme
//! of `common`, deliveries to a closed port), started on first use and kept for the run.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hookgate::config::RouteConfig;

pub struct Gateway {
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub routes: Vec<Arc<RouteConfig>>,
}

pub fn get() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("store");
        let text = super::common::config_text(&store.to_string_lossy(), "http://127.0.0.1:9/");
        let (cfg, _) = hookgate::config::parse(&text).expect("the fuzz config is valid");
        let routes = cfg.routes.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let running = hookgate::app::start(cfg).await.expect("gateway starts");
                tx.send((running.ingress_addr, running.admin_addr))
                    .expect("send addresses");
                let _keep = (running, dir);
                std::future::pending::<()>().await;
            });
        });
        let (ingress, admin) = rx.recv().expect("gateway addresses");
        Gateway {
            ingress,
            admin,
            routes,
        }
    })
}
