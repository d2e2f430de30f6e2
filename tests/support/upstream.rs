//! A scriptable upstream HTTP server on 127.0.0.1:0: records every request and answers from a
//! plan (`fail_next(3, 503)`, delays, Retry-After, a random failure rate).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status this upstream answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone)]
pub enum Plan {
    Status(u16),
    RetryAfter(u16, u64),
    /// Answer `status` after `delay`.
    Delay(Duration, u16),
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    plan: Mutex<VecDeque<Plan>>,
    /// (probability, status) of a random failure when the plan is empty.
    random_failure: Mutex<Option<(f64, u16)>>,
    default_status: Mutex<Option<u16>>,
    notify: Notify,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn fail_next(&self, n: usize, status: u16) {
        let mut p = self.state.plan.lock().unwrap();
        for _ in 0..n {
            p.push_back(Plan::Status(status));
        }
    }

    pub fn push(&self, plan: Plan) {
        self.state.plan.lock().unwrap().push_back(plan);
    }

    pub fn random_failure(&self, probability: f64, status: u16) {
        *self.state.random_failure.lock().unwrap() = Some((probability, status));
    }

    /// The answer when nothing is planned (200 unless set).
    pub fn always(&self, status: u16) {
        *self.state.default_status.lock().unwrap() = Some(status);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until at least `n` requests were answered 2xx.
    pub async fn wait_delivered(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait(n, within, "deliveries", Self::delivered).await
    }

    /// Waits until at least `n` requests arrived, whatever they were answered.
    pub async fn wait_received(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait(n, within, "requests", Self::received).await
    }

    async fn wait(
        &self,
        n: usize,
        within: Duration,
        what: &str,
        get: fn(&Self) -> Vec<Received>,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.state.notify.notified();
            let got = get(self);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                panic!(
                    "upstream: {} of {n} {what} within {within:?}",
                    get(self).len()
                );
            }
        }
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let plan = st.plan.lock().unwrap().pop_front();
    let plan = plan.unwrap_or_else(|| {
        let random = *st.random_failure.lock().unwrap();
        match random {
            Some((p, status)) if rand::random::<f64>() < p => Plan::Status(status),
            _ => Plan::Status(st.default_status.lock().unwrap().unwrap_or(200)),
        }
    });
    let (status, retry_after) = match plan {
        Plan::Status(s) => (s, None),
        Plan::RetryAfter(s, secs) => (s, Some(secs)),
        Plan::Delay(d, s) => {
            tokio::time::sleep(d).await;
            (s, None)
        }
    };
    st.received.lock().unwrap().push(Received {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        status,
    });
    st.notify.notify_waiters();
    let mut resp = Response::new(Full::new(Bytes::from(format!("upstream says {status}"))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("x-upstream", "test-upstream".parse().unwrap());
    if let Some(s) = retry_after {
        resp.headers_mut().insert("retry-after", s.into());
    }
    Ok(resp)
}
