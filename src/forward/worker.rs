//! One worker per route: leases due events (up to `forward.concurrency` in flight), makes one
//! attempt each, and settles it in the store before the lease is released.
//!
//! It wakes when the ingress records an event (`Notify`), when the earliest retry falls due,
//! when an attempt finishes, or at the latest every `IDLE_POLL`. On shutdown it stops
//! leasing and lets in-flight attempts finish (each is bounded by `forward.timeout`); an
//! attempt cut short by a crash is made again after restart.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::circuit::Circuit;
use super::{retry, DeliveryError, Sink};
use crate::config::RouteConfig;
use crate::store::{Attempt, Event, Next, Store};
use crate::telemetry;

const IDLE_POLL: Duration = Duration::from_secs(5);

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
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

/// How an attempt went, as the circuit sees it: a permanent failure (a 4xx) still shows a
/// sink that answers, so only retryable failures count against it.
enum Health {
    Up,
    Down,
}

impl Worker {
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.route.forward.concurrency));
        let mut inflight: JoinSet<Health> = JoinSet::new();
        let mut circuit = Circuit::default();
        let route = self.route.name.clone();
        loop {
            if *self.stop.borrow() {
                break;
            }
            while let Some(done) = inflight.try_join_next() {
                record_health(&mut circuit, done);
            }
            let allowed = circuit.allowance(slots.available_permits(), Instant::now());
            let mut leased = 0;
            if allowed > 0 {
                match self.store.lease(&route, allowed, now_ms()).await {
                    Ok(events) => {
                        leased = events.len();
                        for ev in events {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                break;
                            };
                            let (route, store, sink) =
                                (self.route.clone(), self.store.clone(), self.sink.clone());
                            inflight.spawn(async move {
                                let h = attempt(&route, &*store, &*sink, ev).await;
                                drop(permit);
                                h
                            });
                        }
                    }
                    Err(e) => {
                        metrics::counter!("hookgate_store_errors_total").increment(1);
                        tracing::warn!(route = %route, error = %e, "cannot lease events; retrying");
                    }
                }
            }
            if leased > 0 && leased == allowed {
                continue; // there may be more due right now
            }
            let sleep_for = match circuit.reopens_at() {
                Some(t) => t.saturating_duration_since(Instant::now()),
                // Everything due was just leased; those attempts finishing wake this loop.
                None if leased > 0 => IDLE_POLL,
                None => match self.store.next_due(&route).await {
                    Ok(Some(at)) => {
                        Duration::from_millis((at - now_ms()).max(0) as u64).min(IDLE_POLL)
                    }
                    _ => IDLE_POLL,
                },
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for), if !sleep_for.is_zero() || inflight.is_empty() => {}
                Some(done) = inflight.join_next(), if !inflight.is_empty() => record_health(&mut circuit, done),
                _ = self.stop.changed() => {}
            }
        }
        // Stop leasing; let in-flight attempts settle (each bounded by forward.timeout).
        while let Some(done) = inflight.join_next().await {
            record_health(&mut circuit, done);
        }
        tracing::debug!(route = %route, "delivery worker stopped");
    }
}

fn record_health(circuit: &mut Circuit, done: Result<Health, tokio::task::JoinError>) {
    match done {
        Ok(Health::Up) => circuit.on_success(),
        Ok(Health::Down) => circuit.on_failure(Instant::now()),
        Err(e) => tracing::error!(error = %e, "delivery task failed"),
    }
}

/// One attempt: deliver (bounded by `timeout`), decide, log, record. Retries the record until
/// it sticks, since releasing the lease before then could deliver the event twice.
async fn attempt(route: &RouteConfig, store: &dyn Store, sink: &dyn Sink, ev: Event) -> Health {
    let n = ev.attempts + 1;
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
    let outcome = match next {
        Next::Delivered => "delivered",
        Next::Retry { .. } => "retry",
        Next::Dead { .. } => "dead",
    };
    telemetry::delivery(&route.name, outcome, latency);
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
    let mut backoff = Duration::from_millis(50);
    while let Err(e) = store.settle(&ev, record.clone(), next.clone()).await {
        metrics::counter!("hookgate_store_errors_total").increment(1);
        tracing::error!(route = %route.name, event_id = %ev.id, error = %e, "cannot record delivery attempt; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    health
}
