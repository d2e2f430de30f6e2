//! The closed-loop load generator: N persistent HTTP/1.1 keep-alive connections over raw
//! `TcpStream`s, each sending one request and waiting for its whole answer before the next.
//!
//! Every request is a 1 KiB JSON body with a unique `Idempotency-Key` (also inside the body),
//! signed on the fly like the generic `hmac` scheme: `X-Signature` = hex HMAC-SHA256 of
//! `"{timestamp}.{body}"`, `X-Timestamp` = unix seconds. The ceiling gets the very same
//! requests, so both targets see the same load and the generator does the same work.
//!
//! Raw HTTP (not a hyper client) keeps the generator's cost per request low: it shares one
//! core with the upstream, and a generator that saturates its core would understate the
//! ceiling. Its own CPU use is reported so that case is visible.
//!
//! Only answers with the expected status count; anything else (another status, an I/O error,
//! a malformed answer) is an error, keyed by kind. A request counts in the measured window
//! when its answer arrives while the phase is `MEASURE`; its latency runs from the first byte
//! written to the last byte read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const STOP: u8 = 2;

/// Highest latency the histograms track (60 s, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;

pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub secret: Vec<u8>,
    pub body_size: usize,
    /// Makes idempotency keys unique across levels and runs.
    pub tag: String,
    pub expect_status: u16,
}

/// What the connections saw, merged.
pub struct LoadResult {
    /// Latencies (µs) of the correct answers in the measured window.
    pub hist: Histogram<u64>,
    /// Correct answers in the measured window.
    pub ok_measured: u64,
    /// Correct answers from the first request to the last (warm-up and tail included): the
    /// number of events the target acknowledged.
    pub ok_total: u64,
    /// Errors in the measured window, by kind (`status 503`, `io: …`).
    pub errors_measured: BTreeMap<String, u64>,
    /// Errors over the whole level.
    pub errors_total: u64,
}

impl LoadResult {
    fn new() -> anyhow::Result<Self> {
        Ok(LoadResult {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            ok_measured: 0,
            ok_total: 0,
            errors_measured: BTreeMap::new(),
            errors_total: 0,
        })
    }

    pub fn merge(&mut self, other: LoadResult) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.ok_measured += other.ok_measured;
        self.ok_total += other.ok_total;
        for (k, n) in other.errors_measured {
            *self.errors_measured.entry(k).or_default() += n;
        }
        self.errors_total += other.errors_total;
        Ok(())
    }

    fn error(&mut self, kind: String, measured: bool) {
        self.errors_total += 1;
        if measured {
            *self.errors_measured.entry(kind).or_default() += 1;
        }
    }
}

/// Starts `conns` connection loops; they run until `phase` turns `STOP`, then finish the
/// request in flight. Await the handle for the merged result.
pub fn start(
    spec: Arc<LoadSpec>,
    conns: usize,
    phase: Arc<AtomicU8>,
) -> tokio::task::JoinHandle<anyhow::Result<LoadResult>> {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for id in 0..conns {
            set.spawn(conn_loop(spec.clone(), id, phase.clone()));
        }
        let mut total = LoadResult::new()?;
        while let Some(r) = set.join_next().await {
            total.merge(r.context("connection task")??)?;
        }
        Ok(total)
    })
}

async fn conn_loop(
    spec: Arc<LoadSpec>,
    id: usize,
    phase: Arc<AtomicU8>,
) -> anyhow::Result<LoadResult> {
    let mut out = LoadResult::new()?;
    let mac = Hmac::<Sha256>::new_from_slice(&spec.secret).map_err(|e| anyhow!("hmac key: {e}"))?;
    let mut signer = Signer::new(&spec, id, mac);
    let mut stream: Option<TcpStream> = None;
    let mut rbuf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if phase.load(Ordering::Relaxed) == STOP {
            break;
        }
        let conn = match stream.as_mut() {
            Some(s) => s,
            None => match connect(spec.addr).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    out.error(
                        format!("connect: {e}"),
                        phase.load(Ordering::Relaxed) == MEASURE,
                    );
                    // Not a race being hidden: a refused connect must not spin the core.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = signer.next_request();
        let t0 = Instant::now();
        let answer = exchange(conn, req, &mut rbuf).await;
        let us = t0.elapsed().as_micros() as u64;
        let measured = phase.load(Ordering::Relaxed) == MEASURE;
        match answer {
            Ok((status, keep_alive)) => {
                if status == spec.expect_status {
                    out.ok_total += 1;
                    if measured {
                        out.ok_measured += 1;
                        out.hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
                    }
                } else {
                    out.error(format!("status {status}"), measured);
                }
                if !keep_alive {
                    stream = None;
                }
            }
            Err(e) => {
                out.error(format!("io: {e}"), measured);
                stream = None;
            }
        }
    }
    Ok(out)
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes one request, reads one answer; returns its status and whether the connection may
/// be reused. Bodies are framed by `Content-Length` (what hyper sends for a full body).
async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<(u16, bool)> {
    s.write_all(req).await?;
    buf.clear();
    loop {
        if s.read_buf(buf).await? == 0 {
            bail!("connection closed by the server");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => continue,
        };
        let status = resp.code.unwrap_or(0);
        let mut body_len = None;
        let mut keep_alive = true;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("connection")
                && h.value.eq_ignore_ascii_case(b"close")
            {
                keep_alive = false;
            }
        }
        let Some(body_len) = body_len else {
            bail!("answer without Content-Length");
        };
        while buf.len() < head_len + body_len {
            if s.read_buf(buf).await? == 0 {
                bail!("connection closed mid-body");
            }
        }
        if buf.len() > head_len + body_len {
            bail!("unexpected bytes after the answer");
        }
        return Ok((status, keep_alive));
    }
}

/// Builds each connection's requests into one reused buffer.
struct Signer {
    mac: Hmac<Sha256>,
    head_prefix: Vec<u8>,
    body_size: usize,
    key_prefix: String,
    seq: u64,
    body: Vec<u8>,
    req: Vec<u8>,
}

impl Signer {
    fn new(spec: &LoadSpec, id: usize, mac: Hmac<Sha256>) -> Self {
        let head_prefix = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nUser-Agent: hookgate-bench\r\nContent-Length: {}\r\n",
            spec.path, spec.addr, spec.body_size
        )
        .into_bytes();
        Signer {
            mac,
            head_prefix,
            body_size: spec.body_size,
            key_prefix: format!("{}-{id}-", spec.tag),
            seq: 0,
            body: Vec::with_capacity(spec.body_size),
            req: Vec::with_capacity(spec.body_size + 512),
        }
    }

    fn next_request(&mut self) -> &[u8] {
        use std::io::Write;
        self.seq += 1;
        let key = format!("{}{}", self.key_prefix, self.seq);
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();

        self.body.clear();
        let _ = write!(
            self.body,
            r#"{{"type":"bench.event","id":"{key}","created":{ts},"pad":""#
        );
        let tail = br#""}"#;
        let pad = self.body_size.saturating_sub(self.body.len() + tail.len());
        self.body.resize(self.body.len() + pad, b'x');
        self.body.extend_from_slice(tail);

        let mut mac = self.mac.clone();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let mut sig = [0u8; 64];
        let _ = hex::encode_to_slice(mac.finalize().into_bytes(), &mut sig);

        self.req.clear();
        self.req.extend_from_slice(&self.head_prefix);
        let _ = write!(self.req, "X-Timestamp: {ts}\r\nX-Signature: ");
        self.req.extend_from_slice(&sig);
        let _ = write!(self.req, "\r\nIdempotency-Key: {key}\r\n\r\n");
        self.req.extend_from_slice(&self.body);
        &self.req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_signed_sized_and_unique() -> anyhow::Result<()> {
        let spec = LoadSpec {
            addr: "127.0.0.1:8080".parse()?,
            path: "/webhooks/bench".into(),
            secret: b"s3cret".to_vec(),
            body_size: 1024,
            tag: "t".into(),
            expect_status: 202,
        };
        let mac = Hmac::<Sha256>::new_from_slice(&spec.secret)?;
        let mut s = Signer::new(&spec, 3, mac);
        let a = s.next_request().to_vec();
        let b = s.next_request().to_vec();
        for req in [&a, &b] {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut headers);
            let httparse::Status::Complete(n) = r.parse(req)? else {
                bail!("partial request");
            };
            let body = &req[n..];
            assert_eq!(body.len(), 1024);
            let get = |name: &str| {
                r.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_string())
            };
            let ts = get("x-timestamp").ok_or_else(|| anyhow!("no timestamp"))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret")?;
            mac.update(format!("{ts}.").as_bytes());
            mac.update(body);
            assert_eq!(
                get("x-signature"),
                Some(hex::encode(mac.finalize().into_bytes()))
            );
            let key = get("idempotency-key").ok_or_else(|| anyhow!("no key"))?;
            assert!(String::from_utf8_lossy(body).contains(&key));
        }
        assert_ne!(a, b);
        Ok(())
    }
}
