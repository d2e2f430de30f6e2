//! A gateway running in the fuzzer's process (embedded store in a temp dir, a route per scheme
//! of `common`, deliveries to a closed port), started on first use and kept for the run.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Sends `request` to `addr`, shuts the sending side at once (as some senders do), and returns
/// everything the gateway wrote back until it closed (or 10 s passed). Empty when it could not
/// connect.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(request);
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}
