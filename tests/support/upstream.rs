//! A scriptable upstream HTTP server on 127.0.0.1:0: records every request and answers from a
//! plan (`fail_next(3, 503)`, delays, Retry-After, a random failure rate), or holds every
//! answer until released. A failure of the server itself (a panic in a connection's task, an
//! accept error) is kept and raised in the test by the next look at what it received.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request arrived (its body read), before any hold or planned delay.
    pub arrived: Instant,
    /// When it was answered: after a hold and the plan's delay.
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
    /// Answer `status` with these headers too (values as raw bytes, appended in order).
    Headers(u16, Vec<(&'static str, &'static [u8])>),
}

struct State {
    received: Mutex<Vec<Received>>,
    /// When each request arrived, in order, including those not answered yet.
    arrivals: Mutex<Vec<Instant>>,
    /// While true, requests wait (after arriving) until it is false again.
    hold: watch::Sender<bool>,
    /// What went wrong in the server's own tasks; raised by `check`.
    failures: Mutex<Vec<String>>,
    plan: Mutex<VecDeque<Plan>>,
    /// (probability, status) of a random failure when the plan is empty.
    random_failure: Mutex<Option<(f64, u16)>>,
    default_status: Mutex<Option<u16>>,
    notify: Notify,
}

impl Default for State {
    fn default() -> Self {
        State {
            received: Mutex::default(),
            arrivals: Mutex::default(),
            hold: watch::Sender::new(false),
            failures: Mutex::default(),
            plan: Mutex::default(),
            random_failure: Mutex::default(),
            default_status: Mutex::default(),
            notify: Notify::new(),
        }
    }
}

/// Runs `fut`, keeping a panic's message in `st.failures` instead of losing it with the task.
async fn reporting_panics(st: Arc<State>, what: &'static str, fut: impl Future<Output = ()>) {
    if let Err(p) = std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        st.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{what} panicked: {msg}"));
        st.notify.notify_waiters();
    }
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
        tokio::spawn(reporting_panics(
            st.clone(),
            "the accept loop",
            async move {
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors or the like: note it (the test fails at
                            // its next look) and back off rather than spin.
                            st.failures
                                .lock()
                                .unwrap()
                                .push(format!("upstream accept failed: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let st = st.clone();
                    tokio::spawn(reporting_panics(st.clone(), "a connection", async move {
                        let svc = service_fn(move |req| handle(st.clone(), req));
                        // A connection the gateway dropped (a forward timeout) ends with an
                        // error here; that is the gateway's business, not a fault of this server.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }));
                }
            },
        ));
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

    /// Holds every request from now on (after it arrived, before its plan) until `release`.
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.state.hold.send_replace(false);
    }

    /// Panics with what went wrong in the server's own tasks, if anything did.
    pub fn check(&self) {
        let failures = self.state.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "test upstream failed: {failures:?}");
    }

    /// Requests answered so far, in the order they were answered.
    pub fn received(&self) -> Vec<Received> {
        self.check();
        self.state.received.lock().unwrap().clone()
    }

    /// When each request arrived, answered or not (held, or in a planned delay).
    pub fn arrivals(&self) -> Vec<Instant> {
        self.check();
        self.state.arrivals.lock().unwrap().clone()
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

    /// Waits until at least `n` requests were answered, whatever the answer.
    pub async fn wait_received(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait(n, within, "requests", Self::received).await
    }

    /// Waits until at least `n` requests arrived, before they are answered (so a request
    /// held or in a planned delay counts).
    pub async fn wait_arrived(&self, n: usize, within: Duration) -> Vec<Instant> {
        self.wait(n, within, "arrivals", Self::arrivals).await
    }

    async fn wait<T>(
        &self,
        n: usize,
        within: Duration,
        what: &str,
        get: fn(&Self) -> Vec<T>,
    ) -> Vec<T> {
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
    let arrived = Instant::now();
    st.arrivals.lock().unwrap().push(arrived);
    st.notify.notify_waiters();
    let mut hold = st.hold.subscribe();
    // Err only if the sender is gone, and `st` owns it.
    let _ = hold.wait_for(|held| !*held).await;
    let plan = st.plan.lock().unwrap().pop_front();
    let plan = plan.unwrap_or_else(|| {
        let random = *st.random_failure.lock().unwrap();
        match random {
            Some((p, status)) if rand::random::<f64>() < p => Plan::Status(status),
            _ => Plan::Status(st.default_status.lock().unwrap().unwrap_or(200)),
        }
    });
    let (status, retry_after, extra) = match plan {
        Plan::Status(s) => (s, None, Vec::new()),
        Plan::RetryAfter(s, secs) => (s, Some(secs), Vec::new()),
        Plan::Delay(d, s) => {
            tokio::time::sleep(d).await;
            (s, None, Vec::new())
        }
        Plan::Headers(s, h) => (s, None, h),
    };
    st.received.lock().unwrap().push(Received {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
        arrived,
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
    for (name, value) in extra {
        resp.headers_mut().append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    Ok(resp)
}
