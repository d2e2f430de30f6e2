//! Wires a validated config into a running gateway: store → workers → admin → ingress, in
//! that order, so the ingress never accepts an event before its worker exists, and `/readyz`
//! turns 200 only once everything is up. `Running::shutdown` undoes it in reverse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::{self, Admin};
use arc_swap::ArcSwap;

use crate::config::{Config, Mode, RouteConfig, SinkTarget, StoreBackend};
use crate::forward::http::HttpSink;
use crate::forward::{self, worker::Worker};
use crate::ingress::router::{Route, Router};
use crate::ingress::{self, Ingress};
use crate::store::{self, Store};
use crate::telemetry;

const PURGE_EVERY: Duration = Duration::from_secs(60);
const GAUGES_EVERY: Duration = Duration::from_secs(5);

pub struct Running {
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    ingress: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
    store: Arc<dyn Store>,
    table: Arc<ArcSwap<RouteTable>>,
    generation: tokio::sync::Mutex<Generation>,
    /// What a reload cannot change (listeners, store): compared to warn that it needs a restart.
    fixed: Vec<(&'static str, String)>,
    /// Where a reload puts the new `admin_token`.
    admin: Arc<Admin>,
    /// The TLS certificate in use (when TLS is on); a reload swaps in the files' new content.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// Request bodies held at once; a reload sets its new `server.max_body_memory`.
    bodies: Arc<ingress::BodyBudget>,
    /// Workers of earlier generations still finishing their attempts after a reload: awaited
    /// at shutdown as the current ones are (a SIGTERM soon after a reload cut them off, and
    /// their attempts were made again after the restart).
    retired: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The files the config it started with was read from (see `Config::files`).
    pub files: crate::config::watch::Files,
}

/// The routes of one config generation, swapped atomically on reload.
pub struct RouteTable {
    pub router: Router,
    pub routes: Vec<Arc<RouteConfig>>,
    pub wake: HashMap<String, Arc<Notify>>,
    /// Set by an operator's replay before it wakes the route's worker: an open circuit then
    /// probes at once instead of waiting out its pause (the operator fixed the upstream).
    pub replayed: HashMap<String, Arc<std::sync::atomic::AtomicBool>>,
    /// `server.trusted_proxies`, `header_timeout` and `body_timeout`: read per request or
    /// connection, so a reload takes them up.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// The delivery workers of one config generation.
struct Generation {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// The settings a reload cannot change, by key (values only compared, never logged).
fn fixed_part(config: &Config) -> Vec<(&'static str, String)> {
    let s = &config.server;
    // store.min_free_space is applied on reload, so a change of it alone is not reported.
    let mut store = config.store.clone();
    if let StoreBackend::Embedded {
        min_free_space,
        path,
        ..
    } = &mut store.backend
    {
        *min_free_space = 0;
        // `data` and `data/` are one directory.
        *path = path.components().collect();
    }
    vec![
        ("server.listen", s.listen.to_string()),
        ("server.admin_listen", s.admin_listen.to_string()),
        ("server.shutdown_grace", format!("{:?}", s.shutdown_grace)),
        ("server.tls (on or off)", s.tls.is_some().to_string()),
        ("store", format!("{store:?}")),
    ]
}

/// The keys of `fixed_part` whose values differ.
fn restart_needed(
    running: &[(&'static str, String)],
    loaded: &[(&'static str, String)],
) -> Vec<&'static str> {
    running
        .iter()
        .zip(loaded)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

/// Whether a worker delivers the route's accepted events (every route but an HTTP proxy).
pub fn has_worker(r: &RouteConfig) -> bool {
    !matches!(
        (&r.mode, &r.forward.target),
        (Mode::Proxy, SinkTarget::Http { .. })
    )
}

/// Routes the store holds pending or dead events of that no worker of `config` delivers: a
/// route removed or renamed, or now in proxy mode.
pub async fn stranded_routes(store: &dyn Store, config_routes: &[Arc<RouteConfig>]) -> Vec<String> {
    let delivered = |route: &str| {
        config_routes
            .iter()
            .any(|r| r.name == route && has_worker(r))
    };
    match store.routes_with_undelivered().await {
        Ok(routes) => routes.into_iter().filter(|r| !delivered(r)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the routes the store holds undelivered events of");
            Vec::new()
        }
    }
}

/// Logs, at start, what the store holds undelivered for each configured route: after a crash
/// or a restart with the upstream down, what the workers take up again.
async fn report_backlog(store: &dyn Store, config: &Config) {
    // One look for the routes with anything undelivered; counts only for those a worker of
    // this config delivers (the others are `report_stranded`'s).
    let Ok(undelivered) = store.routes_with_undelivered().await else {
        return;
    };
    let delivered_here = config
        .routes
        .iter()
        .filter(|r| has_worker(r) && undelivered.contains(&r.name));
    for route in delivered_here {
        match store.counts(&route.name).await {
            Ok(c) if c.pending + c.dead > 0 => tracing::info!(
                route = %route.name,
                pending = c.pending,
                dead = c.dead,
                "at start, the store holds undelivered events of this route: pending ones are delivered, dead ones wait for a replay"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "cannot count the route's events at start")
            }
        }
    }
}

/// Logs, as errors, each route whose accepted events this config leaves undelivered. They stay
/// in the store (and in `hookgate_pending_events` / `hookgate_dead_events`) until a route of
/// that name with a sink is configured again.
async fn report_stranded(store: &dyn Store, config: &Config) {
    for route in stranded_routes(store, &config.routes).await {
        let c = store.counts(&route).await.unwrap_or_default();
        tracing::error!(
            route = %route,
            pending = c.pending,
            dead = c.dead,
            "the store holds events of a route this config does not deliver (removed, renamed or in proxy mode); they stay undelivered until a route of that name with a sink is configured again"
        );
    }
}

/// Builds a generation's routes (proxy sinks included) and starts its delivery workers.
async fn build(
    config: &Config,
    store: &Arc<dyn Store>,
) -> anyhow::Result<(RouteTable, Generation)> {
    let (stop, stop_rx) = watch::channel(false);
    let mut wake = HashMap::new();
    let mut replayed = HashMap::new();
    let mut routes = Vec::new();
    let mut sinks = Vec::new();
    for cfg in &config.routes {
        let notify = Arc::new(Notify::new());
        wake.insert(cfg.name.clone(), notify.clone());
        let mut route = Route::new(cfg.clone(), Some(notify.clone()));
        match (&cfg.mode, &cfg.forward.target) {
            (Mode::Proxy, SinkTarget::Http { url }) => {
                route.wake_on_accept = None;
                route.proxy = Some(Arc::new(HttpSink::new(cfg, url.clone())?));
            }
            _ => sinks.push((
                routes.len(),
                cfg.clone(),
                forward::build_sink(cfg).await?,
                notify,
            )),
        }
        routes.push(route);
    }
    // Workers start (and take over their route's handoff) only once every sink was built, so
    // a failed build starts and takes nothing.
    let workers = sinks
        .into_iter()
        .map(|(i, route, sink, wake)| {
            let handoff = store.handoff(&route.name);
            if handoff.is_some() {
                routes[i].wake_on_accept = None;
            }
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            replayed.insert(route.name.clone(), flag.clone());
            let worker = Worker {
                route,
                store: store.clone(),
                sink,
                wake,
                replayed: flag,
                handoff,
                stop: stop_rx.clone(),
                metrics: routes[i].metrics.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    let routes: Vec<_> = routes.into_iter().map(Arc::new).collect();
    let table = RouteTable {
        router: Router::new(routes),
        routes: config.routes.clone(),
        wake,
        replayed,
        trusted_proxies: config.server.trusted_proxies.clone(),
        header_timeout: config.server.header_timeout,
        body_timeout: config.server.body_timeout,
    };
    Ok((table, Generation { stop, workers }))
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = telemetry::init();
    let store = store::open(&config.store).await?;
    // Listeners first: a process that cannot serve must not start delivering either.
    let admin_listener = ingress::bind(config.server.admin_listen, "server.admin_listen").await?;
    let ingress_listener = ingress::bind(config.server.listen, "server.listen").await?;
    let (stop, stop_rx) = watch::channel(false);
    let (table, generation) = build(&config, &store).await?;
    let table = Arc::new(ArcSwap::from_pointee(table));

    let admin_addr = admin_listener.local_addr()?;
    let ingress_addr = ingress_listener.local_addr()?;

    let admin = Arc::new(Admin {
        store: store.clone(),
        table: table.clone(),
        token: arc_swap::ArcSwapOption::from(config.server.admin_token.clone().map(Arc::new)),
        metrics,
        ready: Default::default(),
    });
    let nofile = ingress::raise_nofile_limit();
    let background = vec![
        tokio::spawn(admin::serve(
            admin_listener,
            admin.clone(),
            admin::connection_cap(nofile),
            stop_rx.clone(),
        )),
        tokio::spawn(purge_loop(store.clone(), stop_rx.clone())),
        tokio::spawn(clock_watch(stop_rx.clone())),
        tokio::spawn(gauge_loop(store.clone(), table.clone(), stop_rx.clone())),
    ];

    let bodies = ingress::BodyBudget::new(config.server.max_body_memory);
    let ctx = Arc::new(Ingress {
        table: table.clone(),
        store: store.clone(),
        max_connections: ingress::connection_cap(nofile),
        bodies: bodies.clone(),
    });
    let tls = config.server.tls.clone().map(|t| Arc::new(ArcSwap::new(t)));
    let ingress = tokio::spawn(ingress::serve(
        ingress_listener,
        ctx,
        config.server.shutdown_grace,
        tls.clone(),
        stop_rx,
    ));
    report_backlog(store.as_ref(), &config).await;
    report_stranded(store.as_ref(), &config).await;
    admin.ready.store(true, Ordering::Release);
    Ok(Running {
        ingress_addr,
        admin_addr,
        stop,
        ingress,
        background,
        grace: config.server.shutdown_grace,
        store,
        table,
        generation: tokio::sync::Mutex::new(generation),
        fixed: fixed_part(&config),
        admin,
        tls,
        bodies,
        retired: std::sync::Mutex::default(),
        files: config.files.clone(),
    })
}

impl Running {
    /// Reloads routes from `path` (SIGHUP or a changed file): an invalid config is refused and
    /// logged and the old one keeps serving; a valid one is swapped in atomically — requests
    /// see either the old routes or the new, never a mix — and the old workers stop after their
    /// in-flight attempts. Pending events are untouched (they live in the store). The admin
    /// token and the TLS certificate's files are taken as they are now. Listener and store
    /// settings need a restart; a change to them is logged as such. Returns the files this
    /// reload read, with what they held (see `Config::files`), taken or refused; `None` when
    /// they could not be read in time.
    pub async fn reload(&self, path: &std::path::Path) -> Option<crate::config::watch::Files> {
        // Read off the runtime, bounded: a file on a mount that hangs must not hold the task
        // that answers SIGTERM.
        let read = tokio::task::spawn_blocking({
            let path = path.to_path_buf();
            move || crate::config::load(&path)
        });
        let loaded = match tokio::time::timeout(RELOAD_READ_LIMIT, read).await {
            Ok(Ok(loaded)) => loaded,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => format!("reading the config failed: {e}"),
                    _ => format!(
                        "reading the config and the files it names took over {}s (a hung mount?)",
                        RELOAD_READ_LIMIT.as_secs()
                    ),
                };
                tracing::error!(problem = %why, "config reload refused; the previous config keeps serving");
                reload_counted(false);
                return None;
            }
        };
        let config = match loaded {
            Ok((config, warnings)) => {
                for w in warnings {
                    tracing::warn!("config: {w}");
                }
                config
            }
            Err(problems) => {
                for e in &problems.errors {
                    tracing::error!(problem = %e, "config reload refused; the previous config keeps serving");
                }
                reload_counted(false);
                return Some(problems.files);
            }
        };
        let mut current = self.generation.lock().await;
        let (table, generation) = match build(&config, &self.store).await {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the previous config keeps serving");
                reload_counted(false);
                return Some(config.files);
            }
        };
        if let StoreBackend::Embedded { min_free_space, .. } = &config.store.backend {
            self.store.set_min_free_space(*min_free_space);
        }
        self.bodies.set_limit(config.server.max_body_memory);
        self.admin
            .token
            .store(config.server.admin_token.clone().map(Arc::new));
        if let (Some(current), Some(new)) = (&self.tls, &config.server.tls) {
            current.store(new.clone());
        }
        let pending = restart_needed(&self.fixed, &fixed_part(&config));
        if !pending.is_empty() {
            tracing::warn!(keys = ?pending, "config reload: the rest is applied, but these keys keep their running values until a restart: [server] listen, admin_listen, shutdown_grace, turning [server.tls] on or off, and [store] (but min_free_space) take effect only after a restart (store.page_size only for a new store)");
        }
        metrics::gauge!("hookgate_config_restart_pending").set(if pending.is_empty() {
            0.0
        } else {
            1.0
        });
        let routes = table.routes.len();
        self.table.store(Arc::new(table));
        let old = std::mem::replace(&mut *current, generation);
        let _ = old.stop.send(true);
        if let Ok(mut retired) = self.retired.lock() {
            retired.retain(|w| !w.is_finished());
            retired.extend(old.workers);
        }
        reload_counted(true);
        tracing::info!(routes, "config reloaded");
        report_stranded(self.store.as_ref(), &config).await;
        Some(config.files)
    }

    /// Stops accepting, finishes in-flight requests, stops workers after their in-flight
    /// attempts — all within the grace period. Pending events stay in the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // The workers stop leasing at once, not after the ingress drained: a slow request may
        // take the whole grace period, and an attempt started meanwhile would be cut off at
        // the deadline after it reached the upstream (made again after restart, a duplicate).
        // Events accepted while the ingress drains stay pending in the store.
        let generation = self.generation.into_inner();
        let _ = generation.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        // The ingress's own bound is the same grace, begun a moment later: said here, or the
        // process ended before it was said.
        if tokio::time::timeout_at(deadline, self.ingress)
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?self.grace,
                "shutdown grace period elapsed with requests still in flight: their connections are closed unanswered (nothing of them was recorded; senders retry)"
            );
        }
        let retired = self
            .retired
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for w in generation.workers.into_iter().chain(retired) {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                tracing::warn!("a delivery worker did not stop within the grace period; its attempts will be made again after restart");
            }
        }
        crate::forward::worker::STOPPING.store(true, Ordering::Relaxed);
        for b in self.background {
            b.abort();
        }
    }
}

/// Counts a reload and whether the last one was taken: a refused one (a rotated secret's file
/// gone, a renewed certificate that does not match its key) leaves the previous config
/// serving, which `HookgateConfigReloadRefused` says until a reload is taken.
fn reload_counted(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("hookgate_config_reloads_total", "result" => result).increment(1);
    metrics::gauge!("hookgate_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
}

/// Longest a reload waits for the config and the files it names to be read.
const RELOAD_READ_LIMIT: Duration = Duration::from_secs(10);

/// How often the wall clock is compared with the monotonic one, and the difference between
/// their advances that counts as a step (NTP slews by at most 0.5 ms a second).
const CLOCK_WATCH_EVERY: Duration = Duration::from_secs(1);
const CLOCK_STEP: Duration = Duration::from_secs(1);

/// Says when the wall clock steps. Retries, dedupe windows, `max_age`, retention and the
/// senders' timestamps are all reckoned by it, so a step changes what hookgate does in ways an
/// operator would otherwise find only in odd timestamps: logged at warn with its size and
/// counted (`hookgate_clock_steps_total`). Retries a step back left too far ahead are brought
/// forward by the workers (`Worker::bring_forward_stranded_retries`).
async fn clock_watch(mut stop: watch::Receiver<bool>) {
    let mut last = (SystemTime::now(), Instant::now());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CLOCK_WATCH_EVERY) => {}
            _ = stop.changed() => return,
        }
        let now = (SystemTime::now(), Instant::now());
        match clock_step(last, now) {
            Some(step) if step > 0.0 => {
                telemetry::clock_step("forward");
                tracing::warn!(
                    step_s = step.round(),
                    "the wall clock jumped forward (set forward, or the machine was suspended): dedupe windows, max_age and retention of the events received before it end that much sooner; senders' timestamps are checked against the new time"
                );
            }
            Some(step) => {
                telemetry::clock_step("backward");
                tracing::warn!(
                    step_s = (-step).round(),
                    "the wall clock was set back: retries scheduled before it wait up to that much longer, but none more than forward.backoff_max and a minute from now (those are made due); senders' timestamps are checked against the new time"
                );
            }
            None => {}
        }
        last = now;
    }
}

/// Seconds the wall clock advanced more (forward, > 0) or less (backward, < 0) than the
/// monotonic clock between two readings of both, when that is at least `CLOCK_STEP`.
fn clock_step(last: (SystemTime, Instant), now: (SystemTime, Instant)) -> Option<f64> {
    let wall = match now.0.duration_since(last.0) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(back) => -back.duration().as_secs_f64(),
    };
    let step = wall - now.1.saturating_duration_since(last.1).as_secs_f64();
    (step.abs() >= CLOCK_STEP.as_secs_f64()).then_some(step)
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

async fn gauge_loop(
    store: Arc<dyn Store>,
    table: Arc<ArcSwap<RouteTable>>,
    mut stop: watch::Receiver<bool>,
) {
    // Every route refreshed at the last look: one that is neither configured nor stranded now
    // (removed with no events left, or its last ones delivered since) is updated once more,
    // to its counts now (0), so its gauges do not keep a stale count.
    let mut last: Vec<String> = Vec::new();
    loop {
        let configured = table.load().routes.clone();
        // Routes no longer configured keep their gauges while the store holds their events,
        // so the pending and dead-letter alerts still see them.
        let stranded = stranded_routes(store.as_ref(), &configured).await;
        let mut routes: Vec<String> = configured.iter().map(|r| r.name.clone()).collect();
        for r in stranded.iter().chain(&last) {
            if !routes.contains(r) {
                routes.push(r.clone());
            }
        }
        last = configured
            .iter()
            .map(|r| r.name.clone())
            .chain(stranded)
            .collect();
        for r in &routes {
            match store.counts(r).await {
                Ok(c) => {
                    telemetry::event_counts(r, c.pending, c.dead);
                    // The table of now, not of the loop's start: a reload during the awaits may
                    // have configured the route again, its new worker's circuit already open.
                    let delivered = table
                        .load()
                        .routes
                        .iter()
                        .any(|cfg| cfg.name == *r && has_worker(cfg));
                    if !delivered {
                        telemetry::unconfigured(r, c.pending + c.dead);
                    } else {
                        metrics::gauge!("hookgate_unconfigured_events", "route" => r.clone())
                            .set(0.0);
                    }
                }
                // Looked at again next time, whatever the config says by then.
                Err(_) if !last.contains(r) => last.push(r.clone()),
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(GAUGES_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_step_is_the_walls_advance_less_the_monotonic_one() {
        let (t0, i0) = (
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Instant::now(),
        );
        let s = Duration::from_secs;
        let at = |wall_ahead: i64, steady: u64| {
            let wall = if wall_ahead >= 0 {
                t0 + s(wall_ahead as u64)
            } else {
                t0 - s((-wall_ahead) as u64)
            };
            clock_step((t0, i0), (wall, i0 + s(steady)))
        };
        assert_eq!(at(1, 1), None, "both advanced alike");
        assert_eq!(at(3_601, 1), Some(3_600.0), "set forward an hour");
        assert_eq!(at(-3_599, 1), Some(-3_600.0), "set back an hour");
        assert_eq!(at(0, 1), Some(-1.0), "a second lost is a step");
        assert_eq!(
            clock_step((t0, i0), (t0 + Duration::from_millis(1_400), i0 + s(1))),
            None,
            "less than a second: a slew, or the readings' spacing"
        );
    }
}
