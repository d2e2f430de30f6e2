//! Reading the raw body: the limit is enforced while reading (a declared `Content-Length`
//! over it is refused before reading anything; a chunked body is cut off at the limit), and
//! the whole body must arrive within `server.body_timeout`. The bytes are kept as received.
//!
//! Every body is counted against one budget shared by all routes (`server.max_body_memory`)
//! as its bytes arrive, and a declared `Content-Length` is taken whole once `RESERVE_AFTER`
//! bytes of it (or all of a smaller one) arrived: taken whole before any byte was read,
//! connections declaring bodies they never sent held the budget and real webhooks got 503;
//! counted only as bytes arrive, a burst of large bodies filled it with halves, none could
//! finish, and most were refused part-way. A request that finds no room
//! waits up to `ROOM_WAIT` for bodies ahead of it to finish, then is refused with `503` +
//! `Retry-After`, so many large bodies at once (a retry storm, or a sender trickling them in
//! on purpose) cannot take more memory than that; without it 300 senders of 1 MiB bodies took
//! 330 MB. The hold lasts until the request is answered, or, for an event handed to the
//! store, until the store is done with it (`store::Keep`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::reject::Reject;

/// How long a request waits for room in the budget before it is refused: bodies in flight
/// usually finish within milliseconds.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Bytes of request bodies held at once, across every route and connection.
pub struct BodyBudget {
    used: AtomicUsize,
    limit: AtomicUsize,
    gauge: metrics::Gauge,
    /// Wakes the requests waiting for room whenever bytes are given back.
    freed: Notify,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<BodyBudget> {
        let budget = BodyBudget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            gauge: metrics::gauge!("hookgate_body_memory_bytes"),
            freed: Notify::new(),
        };
        budget.set_limit(limit);
        budget.gauge.set(0.0);
        Arc::new(budget)
    }

    /// A reload's new `server.max_body_memory`: bodies already held keep their bytes; new
    /// bytes are counted against the new limit.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        metrics::gauge!("hookgate_body_memory_limit_bytes").set(limit as f64);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes if they fit under the limit.
    fn take(&self, n: usize) -> bool {
        let limit = self.limit();
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok();
        if taken {
            self.gauge.increment(n as f64);
        }
        taken
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
        self.freed.notify_waiters();
    }
}

/// The bytes one request holds of the budget; given back when dropped (the request answered,
/// or its connection gone).
pub struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Held {
    pub fn none(budget: &Arc<BodyBudget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the hold to `total` bytes, waiting up to a second for room, as a body does (proxy
    /// mode counts the upstream's answer so); false (and unchanged) when they did not fit.
    pub async fn hold(&mut self, total: usize) -> bool {
        self.grow_to(total, ROOM_WAIT).await
    }

    /// Grows the hold to `total` bytes if they fit now, without waiting.
    pub async fn try_hold(&mut self, total: usize) -> bool {
        self.grow_to(total, Duration::ZERO).await
    }

    /// Grows the hold to `total` bytes, waiting up to `wait` for room; false (and unchanged)
    /// when they did not fit by then.
    async fn grow_to(&mut self, total: usize, wait: Duration) -> bool {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        let budget = self.budget.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before trying, so bytes given back in between still wake this.
            let freed = budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if budget.take(more) {
                self.bytes = total;
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

/// `buf` as `Bytes` that keep `held` until the last of them is dropped: a buffer handed to
/// the connection is freed only once written, and so is its count.
pub fn counted(buf: Vec<u8>, held: Held) -> Bytes {
    struct Counted {
        buf: Vec<u8>,
        _held: Held,
    }
    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.buf
        }
    }
    Bytes::from_owner(Counted { buf, _held: held })
}

/// The body as received: one frame kept as it came (the usual case, no copy), or several
/// gathered into one buffer.
enum Gathered {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    fn len(&self) -> usize {
        match self {
            Gathered::Empty => 0,
            Gathered::One(b) => b.len(),
            Gathered::Many(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes, expected: Option<usize>) {
        *self = match std::mem::replace(self, Gathered::Empty) {
            Gathered::Empty => Gathered::One(chunk),
            Gathered::One(first) => {
                // Room for the declared length (within the limit), not counted until it comes.
                let want = expected.unwrap_or(0).max(first.len() + chunk.len());
                let mut buf = BytesMut::with_capacity(want);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                Gathered::Many(buf)
            }
            Gathered::Many(mut buf) => {
                buf.extend_from_slice(&chunk);
                Gathered::Many(buf)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Gathered::Empty => Bytes::new(),
            Gathered::One(b) => b,
            Gathered::Many(b) => b.freeze(),
        }
    }
}

pub async fn read(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    budget: &Arc<BodyBudget>,
) -> Result<(Bytes, Held), Reject> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Reject::BodyTooLarge);
    }
    // Within the limit, so it fits a usize.
    let expected = declared.map(|n| n as usize);
    let mut held = Held::none(budget);
    // Bytes are counted as they arrive, a declared length whole once under way (`gather`):
    // counted whole before any byte came, 64 connections declaring 1 MiB and sending nothing
    // held the whole default budget for `body_timeout`, and every real webhook got 503
    // meanwhile (a review's reproduction).
    let read = gather(body, limit, expected, &mut held);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(Reject::RequestTimeout),
        Ok(Ok(gathered)) => Ok((gathered.into_bytes(), held)),
        Ok(Err(rej)) => Err(rej),
    }
}

/// Bytes of a declared body that must have arrived before the rest of it is held.
const RESERVE_AFTER: usize = 64 * 1024;

async fn gather(
    mut body: Incoming,
    limit: usize,
    expected: Option<usize>,
    held: &mut Held,
) -> Result<Gathered, Reject> {
    let mut gathered = Gathered::Empty;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reject::BadRequest)?;
        // Trailers are not part of the body (and not forwarded).
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let total = gathered.len() + chunk.len();
        if total > limit {
            return Err(Reject::BodyTooLarge);
        }
        // Under way: the rest of a declared body is held now, so it can finish.
        let hold = match expected {
            Some(n) if total >= n.min(RESERVE_AFTER) => n.max(total),
            _ => total,
        };
        if !held.grow_to(hold, ROOM_WAIT).await {
            return Err(Reject::BodyMemoryFull);
        }
        gathered.push(chunk, expected);
    }
    Ok(gathered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_hold_takes_what_fits_and_gives_it_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = Held::none(&budget);
        assert!(a.grow_to(60, NO_WAIT).await);
        assert!(
            a.grow_to(60, NO_WAIT).await,
            "growing to what is held takes nothing"
        );
        let mut b = Held::none(&budget);
        assert!(!b.grow_to(41, NO_WAIT).await, "60 + 41 is over 100");
        assert_eq!(budget.used(), 60, "a refused growth takes nothing");
        assert!(b.grow_to(40, NO_WAIT).await);
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow_to(100, NO_WAIT).await);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_lower_limit_applies_to_new_bytes_only() {
        let budget = BodyBudget::new(100);
        let mut a = Held::none(&budget);
        assert!(a.grow_to(80, NO_WAIT).await);
        budget.set_limit(50);
        assert_eq!(budget.used(), 80, "what is held stays held");
        let mut b = Held::none(&budget);
        assert!(!b.grow_to(1, NO_WAIT).await);
        drop(a);
        assert!(b.grow_to(50, NO_WAIT).await);
        assert!(!b.grow_to(51, NO_WAIT).await);
    }

    /// A request that finds no room waits for bytes given back, up to its wait.
    #[tokio::test]
    async fn a_request_waits_for_room_given_back_and_no_longer_than_its_wait() {
        let budget = BodyBudget::new(100);
        let mut a = Held::none(&budget);
        assert!(a.grow_to(100, NO_WAIT).await);
        let mut b = Held::none(&budget);
        let t0 = std::time::Instant::now();
        assert!(!b.grow_to(10, Duration::from_millis(50)).await);
        assert!(t0.elapsed() >= Duration::from_millis(50), "waited its wait");
        let release = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(a);
        });
        let t0 = std::time::Instant::now();
        assert!(b.grow_to(10, Duration::from_secs(30)).await);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "woken by the bytes given back, long before the wait ends"
        );
        release.await.unwrap();
        assert_eq!(budget.used(), 10);
    }

    /// Bytes made by `counted` keep the hold until the last slice of them is gone, as the
    /// connection slices and drops them while writing.
    #[tokio::test]
    async fn counted_bytes_give_the_hold_back_with_their_last_slice() {
        let budget = BodyBudget::new(100);
        let mut held = Held::none(&budget);
        assert!(held.grow_to(80, NO_WAIT).await);
        let mut bytes = counted(vec![7u8; 80], held);
        let head = bytes.split_to(30);
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(budget.used(), 80);
        drop(head);
        assert_eq!(budget.used(), 80, "a slice is still out");
        assert_eq!(&copy[..], &[7u8; 50][..]);
        drop(copy);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn gathered_frames_keep_their_bytes_in_order() {
        let mut g = Gathered::Empty;
        assert_eq!(g.len(), 0);
        g.push(Bytes::from_static(b"ab"), Some(6));
        assert!(
            matches!(g, Gathered::One(_)),
            "one frame is kept as it came"
        );
        g.push(Bytes::from_static(b"cd"), Some(6));
        g.push(Bytes::from_static(b"ef"), Some(6));
        assert_eq!(g.len(), 6);
        assert_eq!(g.into_bytes(), Bytes::from_static(b"abcdef"));
        assert_eq!(Gathered::Empty.into_bytes(), Bytes::new());
    }
}
