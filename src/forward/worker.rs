//! One worker per route: leases due events (up to `forward.concurrency` in flight), makes one
//! attempt each, and settles it in the store before the lease is released.
//!
//! It wakes when the store hands it a fresh event (`Handoff`, embedded store) or the ingress
//! recorded one (`Notify`, Redis store), on a replay, when the earliest retry falls due, when
//! an attempt finishes, or at the latest every `IDLE_POLL`. On shutdown it stops taking work
//! and lets in-flight attempts finish (each is bounded by `forward.timeout`); an attempt cut
//! short by a crash is made again after restart.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::circuit::Circuit;
use super::{retry, DeliveryError, Sink};
use crate::config::RouteConfig;
use crate::store::{Attempt, Event, Handoff, Next, ScanCursor, Store};

const IDLE_POLL: Duration = Duration::from_secs(5);

/// How often a worker looks for retries scheduled further ahead than `backoff_max` allows
/// (the wall clock was set back), and how far past `backoff_max` one may be: replicas sharing
/// a Redis store whose clocks differ by less than this leave each other's retries alone.
const SCHEDULE_CHECK_EVERY: Duration = Duration::from_secs(10);
const SCHEDULE_SLACK: Duration = Duration::from_secs(60);

/// The shortest wait of a turn that took nothing: whatever such a turn could not take (the
/// circuit or the slots held it back) is not taken sooner by asking again at once.
const MIN_NAP: Duration = Duration::from_millis(10);

/// Attempts that may wait for their record, per `forward.concurrency` slot. Under load a
/// record waits for a group commit (several ms): at 32 slots and a few thousand deliveries
/// a second, a hundred or more wait at once, and a tighter bound throttles delivery below
/// the accept rate. Each holds only the event's ids: the body goes once the sink answered.
const AWAITING_RECORD_PER_SLOT: usize = 8;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Worker {
    pub route: Arc<RouteConfig>,
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn Sink>,
    /// Replays (and, without a handoff, every recorded event) wake the worker through this.
    pub wake: Arc<Notify>,
    /// Set with a wake by an operator's replay: an open circuit probes at once.
    pub replayed: Arc<std::sync::atomic::AtomicBool>,
    /// Fresh events straight from the store, when it offers that (`Store::handoff`).
    pub handoff: Option<Handoff>,
    pub stop: watch::Receiver<bool>,
    /// The route's metric handles (shared with its ingress `Route`).
    pub metrics: Arc<crate::telemetry::RouteMetrics>,
}

/// How an attempt went, as the circuit sees it: a permanent failure (a 4xx) still shows a
/// sink that answers, so only retryable failures count against it.
enum Health {
    Up,
    Down,
}

/// What a finished (recorded) attempt tells the worker: when the event is due again, if it
/// is to be retried. The sink's health arrives earlier, with the freed slot.
type Done = Option<i64>;

/// What a freed slot tells the worker: the sink's health as the attempt saw it (`None`: the
/// attempt ended without an answer), and whether it was the open circuit's probe (an attempt
/// sent before the circuit opened may end while the probe is out: it is not the probe's
/// answer).
struct Freed {
    health: Option<Health>,
    probe: bool,
}

impl Worker {
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.route.forward.concurrency));
        // An attempt gives its slot back (and says how the sink answered) as soon as the
        // sink answered, before the attempt is recorded and done: the next event need not
        // wait for the record, and the circuit knows before it is sent.
        let (freed_tx, mut freed) = tokio::sync::mpsc::unbounded_channel::<Freed>();
        // Past this many attempts whose record is still being written, no new event is
        // taken until records catch up (a store that cannot record stops delivery).
        let most_inflight = AWAITING_RECORD_PER_SLOT * self.route.forward.concurrency;
        let mut inflight: JoinSet<Done> = JoinSet::new();
        let mut circuit = Circuit::default();
        let route = self.route.name.clone();
        // A worker starts closed: a reload replaced one whose circuit may have been open, and
        // only a closing would otherwise set the gauge back.
        self.metrics.circuit(None);
        // With a handoff, fresh events arrive without asking; the store is asked (`lease`)
        // only when it may hold due events the handoff did not bring: at start, after a
        // wake (replay), once a retry falls due, when the store missed a handoff, and at
        // least every IDLE_POLL. Without one, it is asked on every turn. `Some`: a pass over
        // the route's due events is under way, from where it got to.
        let fresh_pass = || Some(ScanCursor::default());
        let mut scan = fresh_pass();
        let mut pass_started = Instant::now();
        let mut retry_due: Option<i64> = None;
        // A replay of an event that is out for delivery takes effect when its attempt is
        // settled; until the attempts out at the wake are done, each one finishing rescans.
        let mut rescan_on_done = false;
        // The first look at once: a restart after the clock went back finds them too.
        let mut schedule_checked: Option<Instant> = None;
        loop {
            if *self.stop.borrow() {
                break;
            }
            if schedule_checked.map_or(true, |t| t.elapsed() >= SCHEDULE_CHECK_EVERY) {
                schedule_checked = Some(Instant::now());
                if self.bring_forward_stranded_retries().await {
                    scan = fresh_pass();
                    retry_due = None;
                }
            }
            while let Ok(h) = freed.try_recv() {
                judge(&mut circuit, h, &self.route.name, &self.metrics);
            }
            while let Some(done) = inflight.try_join_next() {
                record(&mut retry_due, done);
                if rescan_on_done {
                    scan = fresh_pass();
                }
            }
            rescan_on_done &= !inflight.is_empty();
            if retry_due.is_some_and(|at| at <= now_ms())
                || pass_started.elapsed() >= IDLE_POLL
                || self.handoff.as_ref().is_some_and(Handoff::missed)
            {
                scan = fresh_pass();
                retry_due = None;
            }
            let room = |inflight: &JoinSet<Done>| {
                slots
                    .available_permits()
                    .min(most_inflight.saturating_sub(inflight.len()))
            };
            let allowed = circuit.allowance(room(&inflight), Instant::now());
            let mut events = Vec::new();
            // The store first: what it holds was due earlier than what is handed over now.
            if allowed > 0 && (scan.is_some() || self.handoff.is_none()) {
                let mut from = scan.take().unwrap_or_default();
                if from == ScanCursor::default() {
                    // A pass from the front. One still going on after IDLE_POLL starts over,
                    // so an event made due behind its cursor (a lease given back on a reload)
                    // waits no longer than that, however long the backlog ahead of it.
                    pass_started = Instant::now();
                }
                match self
                    .store
                    .lease_from(&route, allowed, now_ms(), &mut from)
                    .await
                {
                    Ok(more) => {
                        // There may be more due right now: the pass goes on from where it got.
                        if more.len() == allowed {
                            scan = Some(from);
                        }
                        events = more;
                    }
                    Err(e) => {
                        scan = Some(from);
                        metrics::counter!("hookgate_store_errors_total").increment(1);
                        tracing::warn!(route = %route, error = %e, "cannot lease events; retrying");
                    }
                }
                if scan.is_none() && self.handoff.is_some() {
                    // Learn when the next retry in the store falls due, once per scan.
                    if let Ok(Some(at)) = self.store.next_due(&route).await {
                        retry_due = Some(retry_due.map_or(at, |r| r.min(at)));
                    }
                }
            }
            if let Some(h) = &mut self.handoff {
                // Spilled events before the queue's: fresh events refill the queue whenever it
                // has room, so taking the queue first could leave spilled ones waiting.
                let ids = h.take_spilled(allowed - events.len());
                if !ids.is_empty() {
                    match self.store.lease_ids(ids, now_ms()).await {
                        Ok(more) => events.extend(more),
                        Err(e) => {
                            scan = fresh_pass(); // a scan finds what these ids named
                            metrics::counter!("hookgate_store_errors_total").increment(1);
                            tracing::warn!(route = %route, error = %e, "cannot lease events; retrying");
                        }
                    }
                }
                events.extend(h.take(allowed - events.len()));
            }
            let leased = events.len();
            if leased > 0 {
                circuit.probe_started();
            }
            let probe = circuit.is_open();
            for ev in events {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break; // cannot happen: no more were taken than permits were free
                };
                let (route, store, sink) =
                    (self.route.clone(), self.store.clone(), self.sink.clone());
                let slot = Slot {
                    permit: Some(permit),
                    health: None,
                    probe,
                    freed: freed_tx.clone(),
                };
                let metrics = self.metrics.clone();
                inflight.spawn(attempt(route, store, sink, ev, slot, metrics));
            }
            if leased > 0 && leased == allowed {
                continue; // there may be more due right now
            }
            if leased == 0 && inflight.is_empty() && circuit.awaits_probe(Instant::now()) {
                self.close_if_nothing_pending(&mut circuit).await;
            }
            // Once the cool-down is over the circuit waits for work like a closed one: the
            // next event taken is its probe.
            let sleep_for = match circuit.reopens_at().filter(|t| *t > Instant::now()) {
                Some(t) => t.saturating_duration_since(Instant::now()),
                None if self.handoff.is_some() => match retry_due {
                    Some(at) => Duration::from_millis((at - now_ms()).max(0) as u64),
                    None => IDLE_POLL,
                }
                .min(IDLE_POLL.saturating_sub(pass_started.elapsed())),
                // Everything due was just leased; those attempts finishing wake this loop.
                None if leased > 0 => IDLE_POLL,
                None => match self.store.next_due(&route).await {
                    Ok(Some(at)) => {
                        Duration::from_millis((at - now_ms()).max(0) as u64).min(IDLE_POLL)
                    }
                    _ => IDLE_POLL,
                },
            };
            // A turn that took nothing never spins on a zero-length nap.
            let sleep_for = if leased == 0 {
                sleep_for.max(MIN_NAP)
            } else {
                sleep_for
            };
            let take_fresh = circuit.allowance(room(&inflight), Instant::now()) > 0;
            let fresh = wait_fresh(self.handoff.as_mut().filter(|_| take_fresh));
            tokio::select! {
                _ = self.wake.notified() => {
                    scan = fresh_pass();
                    rescan_on_done = !inflight.is_empty();
                    if self.replayed.swap(false, std::sync::atomic::Ordering::Relaxed)
                        && circuit.end_pause(Instant::now())
                    {
                        tracing::info!(route = %route, "delivery circuit: an operator's replay ends its pause; probing now");
                    }
                }
                _ = fresh => {}
                Some(h) = freed.recv() => judge(&mut circuit, h, &self.route.name, &self.metrics),
                _ = tokio::time::sleep(sleep_for), if !sleep_for.is_zero() || inflight.is_empty() => {}
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    record(&mut retry_due, done);
                    if rescan_on_done {
                        scan = fresh_pass();
                    }
                }
                _ = self.stop.changed() => {}
            }
        }
        // Stop taking work; let in-flight attempts settle (each bounded by forward.timeout).
        // Dropping the handoff gives its waiting events back to the store.
        drop(self.handoff.take());
        while let Some(done) = inflight.join_next().await {
            record(&mut retry_due, done);
        }
        tracing::debug!(route = %route, "delivery worker stopped");
    }
}

impl Worker {
    /// Retries are scheduled by the wall clock, at most `backoff_max` ahead. Set back by an hour
    /// (NTP stepping a clock that ran fast, a VM restored from a snapshot), the clock left every
    /// scheduled retry an hour further away, so a route's backlog waited that long with its
    /// upstream back up (and its circuit open, with no event due to probe). Any retry scheduled
    /// further ahead than `backoff_max` (and a minute) from now is made due now. True when some
    /// were.
    async fn bring_forward_stranded_retries(&self) -> bool {
        let now = now_ms();
        let ahead = self.route.forward.backoff_max + SCHEDULE_SLACK;
        let beyond = now.saturating_add(ahead.as_millis().min(i64::MAX as u128) as i64);
        match self
            .store
            .bring_forward(&self.route.name, beyond, now)
            .await
        {
            Ok(0) => false,
            Ok(n) => {
                tracing::warn!(
                    route = %self.route.name,
                    events = n,
                    "retries were scheduled further ahead than forward.backoff_max (and a minute) allows now: made due now (the wall clock was set back, backoff_max was lowered by a reload, or another replica's clock is ahead or its backoff_max larger)"
                );
                true
            }
            Err(e) => {
                metrics::counter!("hookgate_store_errors_total").increment(1);
                tracing::warn!(route = %self.route.name, error = %e, "cannot look for retries scheduled too far ahead; looking again later");
                false
            }
        }
    }

    /// An open circuit waits for an event to probe the sink with. When this worker has none
    /// left to take (the events it held went dead, or other replicas sharing a Redis store
    /// delivered them or have them out), nothing would ever close it, and
    /// `hookgate_circuit_open` (with its alert) would stay up while this replica holds nothing
    /// back. Closed then: the next event is sent at once, and a sink still down opens it again
    /// after as many failures as the first time. (On Redis each replica's circuit is its own.)
    async fn close_if_nothing_pending(&self, circuit: &mut Circuit) {
        // `next_due`: one index seek for the earliest pending event nobody has out (embedded:
        // no worker of this process; Redis: no replica).
        match self.store.next_due(&self.route.name).await {
            Ok(None) => {
                if circuit.on_success() {
                    self.metrics.circuit(None);
                    tracing::info!(
                        route = %self.route.name,
                        "delivery circuit closed: nothing left here to deliver (none pending, or all out with other replicas); the next event is sent at once"
                    );
                }
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::debug!(route = %self.route.name, error = %e, "cannot ask for the next due event")
            }
        }
    }
}

async fn wait_fresh(handoff: Option<&mut Handoff>) {
    match handoff {
        Some(h) => h.wait().await,
        None => std::future::pending().await,
    }
}

/// The sink's health, as the attempt's answer showed it, moves the circuit. An attempt that
/// ended without one (its task panicked) says nothing about the sink; if it was the probe,
/// the next event taken is. An attempt sent before the circuit opened that fails while the
/// probe is out counts as a failure, but is not the probe's answer.
/// Opening and closing are logged and shown as `hookgate_circuit_open{route}`: while it is
/// open, pending events' `next_attempt_at` passes with no attempt made.
fn judge(
    circuit: &mut Circuit,
    Freed { health, probe }: Freed,
    route: &str,
    metrics: &crate::telemetry::RouteMetrics,
) {
    match health {
        Some(Health::Up) => {
            if circuit.on_success() {
                metrics.circuit(None);
                tracing::info!(
                    route,
                    "delivery circuit closed: the sink answered the probe; deliveries resume"
                );
            }
        }
        Some(Health::Down) => {
            if let Some((failures, cool)) = circuit.on_failure(Instant::now(), probe) {
                metrics.circuit(Some(now_ms()));
                tracing::warn!(
                    route,
                    failures_in_a_row = failures,
                    pause_ms = cool.as_millis() as u64,
                    "delivery circuit open: the sink keeps failing; no attempts for the pause, then one probe (events due meanwhile wait)"
                );
            }
        }
        None => {
            if probe {
                circuit.probe_abandoned();
            }
        }
    }
}

fn record(retry_due: &mut Option<i64>, done: Result<Done, tokio::task::JoinError>) {
    match done {
        Ok(Some(at)) => *retry_due = Some(retry_due.map_or(at, |r| r.min(at))),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "delivery task failed"),
    }
}

/// An attempt's lease, settled as a retryable failure if the attempt ends (its task panics)
/// before it recorded its own outcome: otherwise the event would stay leased, never
/// delivered, until a restart. Settling is asynchronous, so it runs on a task of its own.
struct Unsettled {
    /// The event's ids (no body), until the attempt is recorded.
    ev: Option<Event>,
    n: u32,
    started_ms: i64,
    started: Instant,
    route: Arc<RouteConfig>,
    store: Arc<dyn Store>,
    metrics: Arc<crate::telemetry::RouteMetrics>,
    /// The attempt's outcome was counted (the sink answered): a panic while it is recorded
    /// must not count it again.
    counted: bool,
}

impl Unsettled {
    fn new(
        ev: &Event,
        n: u32,
        route: &Arc<RouteConfig>,
        store: &Arc<dyn Store>,
        metrics: &Arc<crate::telemetry::RouteMetrics>,
    ) -> Self {
        let ids = Event {
            id: ev.id.clone(),
            route: ev.route.clone(),
            received_at_ms: ev.received_at_ms,
            method: String::new(),
            query: None,
            headers: Default::default(),
            body: bytes::Bytes::new(),
            scheme: String::new(),
            attempts: ev.attempts,
            cycle_attempts: ev.cycle_attempts,
            cycle_started_at_ms: ev.cycle_started_at_ms,
        };
        Unsettled {
            ev: Some(ids),
            n,
            started_ms: now_ms(),
            started: Instant::now(),
            route: route.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            counted: false,
        }
    }

    /// The attempt recorded its outcome: nothing left to do.
    fn settled(mut self) {
        self.ev = None;
    }
}

/// Set once shutdown has waited all it will: a delivery task dropped after it was cut off, not
/// failed.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Drop for Unsettled {
    fn drop(&mut self) {
        let Some(ev) = self.ev.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the process is ending, and leases end with it
        };
        let failed = DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail: "the delivery task failed before the attempt was recorded".to_string(),
        };
        let next = retry::after_failure(
            &self.route.forward,
            &failed,
            ev.cycle_attempts + 1,
            ev.cycle_started_at_ms,
            now_ms(),
            rand::random::<f64>(),
        );
        let outcome = match next {
            Next::Delivered => "delivered",
            Next::Retry { .. } => "retry",
            Next::Dead { .. } => "dead",
        };
        let record = Attempt {
            n: self.n,
            started_at_ms: self.started_ms,
            outcome,
            status: None,
            latency_ms: (now_ms() - self.started_ms).max(0) as u64,
            detail: failed.detail().to_string(),
        };
        // Counted like every attempt (unless it was, before the panic), so an event that dies
        // here shows in the dead count.
        if !self.counted {
            self.metrics.delivery(outcome, self.started.elapsed());
        }
        if !STOPPING.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(route = %self.route.name, event_id = %ev.id, attempt = self.n, outcome, "delivery task failed; recording its attempt as failed");
        } else {
            // Dropped as the runtime ends (an attempt still under way when shutdown_grace ran
            // out): the record below may not get written before the process ends; either way
            // the event stays pending and is attempted again.
            tracing::warn!(route = %self.route.name, event_id = %ev.id, attempt = self.n, "delivery attempt cut off by shutdown before its outcome was known; the event stays pending and is attempted again after restart (the upstream may have it already)");
        }
        let (store, route) = (self.store.clone(), self.route.clone());
        rt.spawn(async move { settle_until_recorded(&*store, &route, &ev, record, &next).await });
    }
}

/// A `forward.concurrency` slot, given back (and the worker told, with how the sink
/// answered) when dropped.
struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    health: Option<Health>,
    /// Sent as the open circuit's probe.
    probe: bool,
    freed: tokio::sync::mpsc::UnboundedSender<Freed>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit first, so a worker woken by the message finds it free.
        drop(self.permit.take());
        let _ = self.freed.send(Freed {
            health: self.health.take(),
            probe: self.probe,
        });
    }
}

/// One attempt: deliver (bounded by `timeout`), decide, log, record. Retries the record until
/// it sticks, since releasing the lease before then could deliver the event twice.
/// The permit (a `forward.concurrency` slot) is given back as soon as the sink answered: it
/// bounds requests to the sink, not the recording that follows.
async fn attempt(
    route: Arc<RouteConfig>,
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    mut ev: Event,
    mut slot: Slot,
    metrics: Arc<crate::telemetry::RouteMetrics>,
) -> Done {
    let n = ev.attempts + 1;
    let mut unsettled = Unsettled::new(&ev, n, &route, &store, &metrics);
    let started_ms = now_ms();
    let t0 = Instant::now();
    let result = match tokio::time::timeout(route.forward.timeout, sink.deliver(&ev, n)).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Retryable {
            status: None,
            retry_after: None,
            detail: format!(
                "timed out after {}",
                humantime::format_duration(route.forward.timeout)
            ),
        }),
    };
    let latency = t0.elapsed();
    let (next, status, detail, health) = match &result {
        Ok(r) => (Next::Delivered, r.status, r.detail.clone(), Health::Up),
        Err(e) => {
            let next = retry::after_failure(
                &route.forward,
                e,
                ev.cycle_attempts + 1,
                ev.cycle_started_at_ms,
                now_ms(),
                rand::random::<f64>(),
            );
            let health = if matches!(e, DeliveryError::Retryable { .. }) {
                Health::Down
            } else {
                Health::Up
            };
            (next, e.status(), e.detail().to_string(), health)
        }
    };
    slot.health = Some(health);
    drop(slot);
    // Recording needs the event's ids, not what was sent: many attempts may wait for their
    // record (see `AWAITING_RECORD_PER_SLOT`), so they do not hold bodies meanwhile.
    ev.body = bytes::Bytes::new();
    ev.headers = Default::default();
    let outcome = match next {
        Next::Delivered => "delivered",
        Next::Retry { .. } => "retry",
        Next::Dead { .. } => "dead",
    };
    metrics.delivery(outcome, latency);
    unsettled.counted = true;
    let latency_ms = latency.as_millis() as u64;
    match &next {
        Next::Delivered => {
            tracing::info!(route = %route.name, event_id = %ev.id, attempt = n, outcome, status, latency_ms, "delivery attempt")
        }
        Next::Retry { at_ms } => {
            tracing::warn!(route = %route.name, event_id = %ev.id, attempt = n, outcome, status, latency_ms, retry_in_ms = at_ms - now_ms(), error = %detail, "delivery attempt")
        }
        Next::Dead { reason } => {
            tracing::error!(route = %route.name, event_id = %ev.id, attempt = n, outcome, status, latency_ms, reason = %reason, "delivery attempt: event is dead")
        }
    }
    let record = Attempt {
        n,
        started_at_ms: started_ms,
        outcome,
        status,
        latency_ms,
        detail: super::truncate_detail(&detail),
    };
    settle_until_recorded(&*store, &route, &ev, record, &next).await;
    unsettled.settled();
    match next {
        Next::Retry { at_ms } => Some(at_ms),
        _ => None,
    }
}

/// Records the attempt and the event's new state, retrying with backoff while the store
/// refuses: the lease is released only with the record.
async fn settle_until_recorded(
    store: &dyn Store,
    route: &RouteConfig,
    ev: &Event,
    record: Attempt,
    next: &Next,
) {
    let mut backoff = Duration::from_millis(50);
    while let Err(e) = store.settle(ev, record.clone(), next.clone()).await {
        metrics::counter!("hookgate_store_errors_total").increment(1);
        tracing::error!(route = %route.name, event_id = %ev.id, error = %e, "cannot record delivery attempt; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::forward::Receipt;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{
        Accept, DedupeKey, EventDetail, EventSummary, ListQuery, NewEvent, RouteCounts, StoreError,
    };

    /// The embedded store, except that every settle waits until the test lets it through.
    struct HeldSettles {
        inner: EmbeddedStore,
        gate: Semaphore,
    }

    #[async_trait]
    impl Store for HeldSettles {
        async fn accept(&self, ev: NewEvent, d: Option<DedupeKey>) -> Result<Accept, StoreError> {
            self.inner.accept(ev, d).await
        }
        async fn lease(&self, r: &str, n: usize, now: i64) -> Result<Vec<Event>, StoreError> {
            self.inner.lease(r, n, now).await
        }
        async fn lease_from(
            &self,
            r: &str,
            n: usize,
            now: i64,
            from: &mut ScanCursor,
        ) -> Result<Vec<Event>, StoreError> {
            self.inner.lease_from(r, n, now, from).await
        }
        async fn next_due(&self, r: &str) -> Result<Option<i64>, StoreError> {
            self.inner.next_due(r).await
        }
        async fn bring_forward(
            &self,
            r: &str,
            beyond_ms: i64,
            now_ms: i64,
        ) -> Result<u64, StoreError> {
            self.inner.bring_forward(r, beyond_ms, now_ms).await
        }
        async fn settle(&self, ev: &Event, a: Attempt, next: Next) -> Result<(), StoreError> {
            drop(self.gate.acquire().await);
            self.inner.settle(ev, a, next).await
        }
        async fn get(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
            self.inner.get(id).await
        }
        async fn list(&self, q: &ListQuery) -> Result<Vec<EventSummary>, StoreError> {
            self.inner.list(q).await
        }
        async fn counts(&self, r: &str) -> Result<RouteCounts, StoreError> {
            self.inner.counts(r).await
        }
        async fn routes_with_undelivered(&self) -> Result<Vec<String>, StoreError> {
            self.inner.routes_with_undelivered().await
        }
        async fn replay(&self, id: &str, now: i64) -> Result<bool, StoreError> {
            self.inner.replay(id, now).await
        }
        async fn replay_dead(&self, r: &str, now: i64) -> Result<u64, StoreError> {
            self.inner.replay_dead(r, now).await
        }
        async fn purge(&self, now: i64) -> Result<(), StoreError> {
            self.inner.purge(now).await
        }
        async fn discard_dead(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.discard_dead(id).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
        async fn lease_ids(&self, ids: Vec<String>, now: i64) -> Result<Vec<Event>, StoreError> {
            self.inner.lease_ids(ids, now).await
        }
        fn handoff(&self, r: &str) -> Option<Handoff> {
            self.inner.handoff(r)
        }
    }

    /// Answers every attempt at once and counts them.
    struct Counting {
        sent: AtomicUsize,
        more: Notify,
    }

    #[async_trait]
    impl Sink for Counting {
        fn kind(&self) -> &'static str {
            "http"
        }
        async fn deliver(&self, _: &Event, _: u32) -> Result<Receipt, DeliveryError> {
            self.sent.fetch_add(1, Ordering::SeqCst);
            self.more.notify_one();
            Ok(Receipt {
                status: Some(200),
                detail: String::new(),
            })
        }
    }

    /// A worker for `one_slot_route(forward)`, running; send `true` to stop it.
    fn run_one_slot_worker(
        store: Arc<dyn Store>,
        sink: Arc<dyn Sink>,
        forward: &str,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop) = watch::channel(false);
        let worker = Worker {
            route: one_slot_route(forward),
            handoff: store.handoff("r"),
            store,
            sink,
            wake: Arc::new(Notify::new()),
            replayed: Default::default(),
            stop,
            metrics: Arc::new(crate::telemetry::RouteMetrics::new("r")),
        };
        (stop_tx, tokio::spawn(worker.run()))
    }

    /// Route "r": no verification, one `forward.concurrency` slot, then `forward`'s lines.
    fn one_slot_route(forward: &str) -> Arc<RouteConfig> {
        let (cfg, _) = crate::config::parse(&format!(
            r#"
[[route]]
name = "r"
path = "/r"
[route.verify]
scheme = "none"
[route.forward]
url = "http://127.0.0.1:9/x"
concurrency = 1
{forward}
"#
        ))
        .unwrap();
        cfg.routes[0].clone()
    }

    /// A fresh event for route "r", received now.
    fn new_event() -> NewEvent {
        let parts = http::Request::post("/r").body(()).unwrap().into_parts().0;
        let verified = crate::verify::Verified {
            scheme: "none",
            event_id: None,
            secret_index: None,
            replay_key: None,
        };
        let body = bytes::Bytes::from_static(b"{}");
        NewEvent::new("r", &parts, body, &verified, now_ms())
    }

    /// Answers each attempt after `delay`, noting the order events arrived in.
    struct Slow {
        delay: Duration,
        order: std::sync::Mutex<Vec<String>>,
        more: Notify,
    }

    #[async_trait]
    impl Sink for Slow {
        fn kind(&self) -> &'static str {
            "http"
        }
        async fn deliver(&self, ev: &Event, _: u32) -> Result<Receipt, DeliveryError> {
            tokio::time::sleep(self.delay).await;
            self.order.lock().unwrap().push(ev.id.clone());
            self.more.notify_one();
            Ok(Receipt {
                status: Some(200),
                detail: String::new(),
            })
        }
    }

    /// Fails (retryably) `fail` times, panics once, then delivers; counts attempts.
    struct FailsThenPanics {
        fail: usize,
        sent: AtomicUsize,
    }

    #[async_trait]
    impl Sink for FailsThenPanics {
        fn kind(&self) -> &'static str {
            "http"
        }
        async fn deliver(&self, _: &Event, _: u32) -> Result<Receipt, DeliveryError> {
            let n = self.sent.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                return Err(DeliveryError::Retryable {
                    status: Some(503),
                    retry_after: None,
                    detail: String::new(),
                });
            }
            if n == self.fail {
                panic!("a sink bug (on purpose, in a test)");
            }
            Ok(Receipt {
                status: Some(200),
                detail: String::new(),
            })
        }
    }

    #[tokio::test]
    async fn an_attempt_that_panics_gives_its_lease_and_the_circuits_probe_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        // Five retryable failures open the circuit; the probe after its cool-down panics.
        let sink = Arc::new(FailsThenPanics {
            fail: 5,
            sent: AtomicUsize::new(0),
        });
        let (stop_tx, running) = run_one_slot_worker(
            store.clone(),
            sink.clone(),
            "backoff_initial = \"10ms\"\nbackoff_max = \"20ms\"",
        );
        let Accept::Accepted(id) = store.accept(new_event(), None).await.unwrap() else {
            panic!("accepted")
        };
        // The panicked attempt is recorded as failed and its lease given back; the circuit
        // lets the next probe through, which delivers.
        tokio::time::timeout(3 * IDLE_POLL, async {
            while store.counts("r").await.unwrap().delivered < 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("delivered after the panicked probe");
        let ev = store.get(&id).await.unwrap().unwrap();
        let outcomes: Vec<_> = ev.attempt_log.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes.len(), 7, "{outcomes:?}");
        assert_eq!(outcomes[5], "retry", "the panicked attempt, recorded");
        assert_eq!(outcomes[6], "delivered");
        assert_eq!(sink.sent.load(Ordering::SeqCst), 7);
        stop_tx.send(true).unwrap();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn an_event_due_behind_a_long_pass_waits_one_idle_poll_not_the_whole_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        // The oldest event is out (leased here) while the worker's first pass steps over it;
        // a backlog takes that pass about twice IDLE_POLL to deliver.
        store.accept(new_event(), None).await.unwrap();
        let first = store.lease("r", 1, now_ms()).await.unwrap().remove(0);
        let delay = Duration::from_millis(40);
        let backlog = (2 * IDLE_POLL.as_millis() / delay.as_millis()) as usize;
        for _ in 0..backlog {
            store.accept(new_event(), None).await.unwrap();
        }
        let sink = Arc::new(Slow {
            delay,
            order: Default::default(),
            more: Notify::new(),
        });
        let (stop_tx, running) = run_one_slot_worker(store.clone(), sink.clone(), "");
        let delivered = |n: usize| {
            let sink = sink.clone();
            async move {
                while sink.order.lock().unwrap().len() < n {
                    sink.more.notified().await;
                }
            }
        };
        tokio::time::timeout(IDLE_POLL, delivered(3))
            .await
            .expect("the pass is under way");
        // Its lease given back with no retry timer of the worker's own (as a reloaded route's
        // old worker gives its queued events back): due at once, behind where the pass is.
        let attempt = Attempt {
            n: 1,
            started_at_ms: now_ms(),
            outcome: "retry",
            status: Some(500),
            latency_ms: 1,
            detail: String::new(),
        };
        let retry = Next::Retry { at_ms: 1_000 };
        store.settle(&first, attempt, retry).await.unwrap();
        let arrived = tokio::time::timeout(4 * IDLE_POLL, async {
            loop {
                if let Some(at) = sink
                    .order
                    .lock()
                    .unwrap()
                    .iter()
                    .position(|id| *id == first.id)
                {
                    return at;
                }
                sink.more.notified().await;
            }
        })
        .await
        .expect("the event given back is delivered");
        assert!(
            arrived < backlog,
            "delivered as number {arrived} of {}, after the whole backlog",
            backlog + 1
        );
        stop_tx.send(true).unwrap();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn a_slot_is_free_again_once_the_sink_answered_not_once_the_attempt_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(HeldSettles {
            inner: EmbeddedStore::open(dir.path(), Duration::from_secs(60)).unwrap(),
            gate: Semaphore::new(0),
        });
        let sink = Arc::new(Counting {
            sent: AtomicUsize::new(0),
            more: Notify::new(),
        });
        let (stop_tx, running) = run_one_slot_worker(store.clone(), sink.clone(), "");
        // One more event than may wait for their record.
        let events = AWAITING_RECORD_PER_SLOT + 1;
        for _ in 0..events {
            store.accept(new_event(), None).await.unwrap();
        }
        // Concurrency 1 and no settle gets through: the next events are still sent, each as
        // the one before is answered. A worker that waited for a record would send no second
        // one, and one woken only by its idle poll (5 s) would take 35 s for the eight; twice
        // the idle poll leaves a loaded machine room and fails either.
        tokio::time::timeout(IDLE_POLL * 2, async {
            while sink.sent.load(Ordering::SeqCst) < AWAITING_RECORD_PER_SLOT {
                sink.more.notified().await;
            }
        })
        .await
        .expect("the next events were sent while the first attempts waited to be recorded");
        // But attempts waiting for their record are bounded: the last event waits for the
        // records to catch up.
        let last = tokio::time::timeout(Duration::from_millis(300), async {
            while sink.sent.load(Ordering::SeqCst) < events {
                sink.more.notified().await;
            }
        })
        .await;
        assert!(
            last.is_err(),
            "no attempt past the bound while {AWAITING_RECORD_PER_SLOT} await their record"
        );
        let pending = store.inner.counts("r").await.unwrap().pending;
        assert_eq!(pending, events as u64, "none is recorded yet");
        store.gate.add_permits(events);
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.inner.counts("r").await.unwrap().delivered < events as u64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("all sent and recorded as delivered once records caught up");
        assert_eq!(sink.sent.load(Ordering::SeqCst), events, "each sent once");
        stop_tx.send(true).unwrap();
        running.await.unwrap();
    }
}
