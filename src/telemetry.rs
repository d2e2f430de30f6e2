//! Metrics and logs. Every metric of SPEC §8 is declared here once, with bounded labels:
//! `route` comes from config (or `unmatched`), `outcome` from fixed enums — never from request
//! data. `docs/METRICS.md` lists the same names.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often pending histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder (once per process) and declares every metric.
pub fn init() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // A recorder built this way keeps every histogram sample until something drains
            // them; without this, memory would grow with each request between scrapes (or
            // forever, when nothing scrapes /metrics).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("hookgate-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "hookgate_requests_total",
        "Ingress requests by route and outcome (accepted, duplicate or the error code)."
    );
    describe_histogram!(
        "hookgate_request_duration_seconds",
        Unit::Seconds,
        "Ingress request latency, from head received to answer."
    );
    describe_counter!(
        "hookgate_deliveries_total",
        "Delivery attempts by route and outcome (delivered, retry, dead)."
    );
    describe_histogram!(
        "hookgate_delivery_duration_seconds",
        Unit::Seconds,
        "Latency of one delivery attempt."
    );
    describe_gauge!(
        "hookgate_pending_events",
        "Events recorded and not yet delivered or dead."
    );
    describe_gauge!(
        "hookgate_dead_events",
        "Dead-lettered events awaiting replay."
    );
    describe_counter!(
        "hookgate_store_errors_total",
        "Store operations that failed."
    );
    describe_gauge!(
        "hookgate_store_room_bytes",
        Unit::Bytes,
        "Embedded store: bytes new events may still take above store.min_free_space (0: refusing)."
    );
    describe_gauge!(
        "hookgate_store_min_free_space_bytes",
        Unit::Bytes,
        "store.min_free_space: below it new events get 503 (0: no check)."
    );
    describe_gauge!(
        "hookgate_body_memory_bytes",
        Unit::Bytes,
        "Bytes of request bodies being received or checked now, all routes together."
    );
    describe_gauge!(
        "hookgate_body_memory_limit_bytes",
        Unit::Bytes,
        "server.max_body_memory: past it new bodies get 503."
    );
    describe_counter!(
        "hookgate_clock_steps_total",
        "Steps of the wall clock against the monotonic clock, by direction (forward, backward)."
    );
    describe_counter!(
        "hookgate_config_reloads_total",
        "Config reloads by result (ok, error)."
    );
    describe_gauge!(
        "hookgate_config_last_reload_successful",
        "1 when the config serving is the one last read (at start or the last reload); 0 after a refused reload."
    );
    describe_gauge!(
        "hookgate_config_restart_pending",
        "1 when a reload was taken but changed keys only a restart applies (the log's warn line names them); 0 otherwise."
    );
    describe_gauge!(
        "hookgate_unconfigured_events",
        "Events (pending and dead) of a route the config does not deliver (removed, renamed, or in proxy mode): they wait until a route of that name is configured again."
    );
    describe_gauge!("hookgate_build_info", "Build information; always 1.");
    describe_counter!(
        "hookgate_secret_matches_total",
        "Verified requests by route and index of the secret that matched."
    );
    gauge!("hookgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    counter!("hookgate_store_errors_total").absolute(0);
    for direction in ["forward", "backward"] {
        counter!("hookgate_clock_steps_total", "direction" => direction).absolute(0);
    }
    for result in ["ok", "error"] {
        counter!("hookgate_config_reloads_total", "result" => result).absolute(0);
    }
    gauge!("hookgate_config_last_reload_successful").set(1.0);
    gauge!("hookgate_config_restart_pending").set(0.0);
}

/// Turns transparent huge pages off for this process, as Redis does for itself, unless
/// `MIMALLOC_ALLOW_THP` says otherwise. The allocator asks for them on its heap, and the kernel
/// keeps a 2 MB page resident while any of it is in use (and may fold mostly empty ranges into
/// one): in a 2-hour soak 57–67 of ~104 MB of RSS were such pages, and RSS rose in 2 MB steps
/// long after the heap stopped growing, which a sidecar's memory limit sees as growth.
pub fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}

/// One route's busiest series, each looked up once and then kept: a `counter!` call with a
/// `route` label allocates the label, hashes it and searches the registry (~1.9k instructions
/// a request, ~2 % of an event's). The outcomes alerts watch are registered (at 0) with the
/// route, so `rate()`/`increase()` see their first occurrence too; other outcomes go through
/// the macros and appear once they happened.
pub struct RouteMetrics {
    route: String,
    accepted: OnceLock<Counter>,
    duplicate: OnceLock<Counter>,
    request_duration: OnceLock<Histogram>,
    delivered: OnceLock<Counter>,
    retry: OnceLock<Counter>,
    dead: OnceLock<Counter>,
    delivery_duration: OnceLock<Histogram>,
    /// `hookgate_secret_matches_total` for the first few secret indexes (rotation keeps two).
    secrets: [OnceLock<Counter>; 4],
    /// Since when (ms) the route's delivery circuit is open; 0 while closed. The admin API
    /// shows it with the route and its pending events.
    circuit_open_since: std::sync::atomic::AtomicI64,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        // `increment(0)` registers a series without touching its count (a reload makes these
        // again for a route that already has them).
        let kept = |c: Counter| {
            c.increment(0);
            OnceLock::from(c)
        };
        let r = || route.to_string();
        for outcome in ["unavailable", "body_memory_full"] {
            counter!("hookgate_requests_total", "route" => r(), "outcome" => outcome).increment(0);
        }
        RouteMetrics {
            route: r(),
            accepted: kept(
                counter!("hookgate_requests_total", "route" => r(), "outcome" => "accepted"),
            ),
            duplicate: kept(
                counter!("hookgate_requests_total", "route" => r(), "outcome" => "duplicate"),
            ),
            request_duration: OnceLock::new(),
            delivered: kept(
                counter!("hookgate_deliveries_total", "route" => r(), "outcome" => "delivered"),
            ),
            retry: kept(
                counter!("hookgate_deliveries_total", "route" => r(), "outcome" => "retry"),
            ),
            dead: kept(counter!("hookgate_deliveries_total", "route" => r(), "outcome" => "dead")),
            delivery_duration: OnceLock::new(),
            secrets: Default::default(),
            circuit_open_since: Default::default(),
        }
    }

    /// The route's delivery circuit opened (at `now_ms`) or closed: `hookgate_circuit_open`
    /// and what the admin API shows. A failed probe opens it again: it stays open since the
    /// first time.
    pub fn circuit(&self, open_at_ms: Option<i64>) {
        use std::sync::atomic::Ordering;
        let gauge = gauge!("hookgate_circuit_open", "route" => self.route.clone());
        match open_at_ms {
            Some(at) => {
                gauge.set(1.0);
                let _ = self.circuit_open_since.compare_exchange(
                    0,
                    at,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            None => {
                gauge.set(0.0);
                self.circuit_open_since.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Since when the route's delivery circuit is open, if it is.
    pub fn circuit_open_since_ms(&self) -> Option<i64> {
        let at = self
            .circuit_open_since
            .load(std::sync::atomic::Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    pub fn request(&self, outcome: &'static str, elapsed: Duration) {
        let kept = match outcome {
            "accepted" => Some(&self.accepted),
            "duplicate" => Some(&self.duplicate),
            _ => None,
        };
        count(
            kept,
            || counter!("hookgate_requests_total", "route" => self.route.clone(), "outcome" => outcome),
        );
        self.request_duration
            .get_or_init(
                || histogram!("hookgate_request_duration_seconds", "route" => self.route.clone()),
            )
            .record(elapsed.as_secs_f64());
    }

    pub fn delivery(&self, outcome: &'static str, elapsed: Duration) {
        let kept = match outcome {
            "delivered" => Some(&self.delivered),
            "retry" => Some(&self.retry),
            "dead" => Some(&self.dead),
            _ => None,
        };
        count(
            kept,
            || counter!("hookgate_deliveries_total", "route" => self.route.clone(), "outcome" => outcome),
        );
        self.delivery_duration
            .get_or_init(
                || histogram!("hookgate_delivery_duration_seconds", "route" => self.route.clone()),
            )
            .record(elapsed.as_secs_f64());
    }

    pub fn secret_matched(&self, index: usize) {
        count(
            self.secrets.get(index),
            || counter!("hookgate_secret_matches_total", "route" => self.route.clone(), "secret_index" => index.to_string()),
        );
    }
}

/// Adds one to the series `make` registers: through the kept handle when there is a slot for
/// it (registered on first use), else looked up this once.
fn count(kept: Option<&OnceLock<Counter>>, make: impl FnOnce() -> Counter) {
    match kept {
        Some(slot) => slot.get_or_init(make).increment(1),
        None => make().increment(1),
    }
}

pub fn request(route: &str, outcome: &'static str, elapsed: Duration) {
    counter!("hookgate_requests_total", "route" => route.to_string(), "outcome" => outcome)
        .increment(1);
    histogram!("hookgate_request_duration_seconds", "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

/// A step of the wall clock, `forward` or `backward`.
pub fn clock_step(direction: &'static str) {
    counter!("hookgate_clock_steps_total", "direction" => direction).increment(1);
}

pub fn event_counts(route: &str, pending: u64, dead: u64) {
    gauge!("hookgate_pending_events", "route" => route.to_string()).set(pending as f64);
    gauge!("hookgate_dead_events", "route" => route.to_string()).set(dead as f64);
}

/// A route this config does not deliver (removed, renamed, or in proxy mode): its events
/// (pending and dead) wait in the store for a route of that name (`hookgate_unconfigured_events`,
/// alert `HookgateEventsWithoutRoute`), and no circuit of it is open (a removed route's worker
/// stopped; its gauge would otherwise keep the last state, and its alert fire, forever).
pub fn unconfigured(route: &str, events: u64) {
    gauge!("hookgate_unconfigured_events", "route" => route.to_string()).set(events as f64);
    gauge!("hookgate_circuit_open", "route" => route.to_string()).set(0.0);
}

/// Logs: `HOOKGATE_LOG` sets the filter (default `info,async_nats=warn`),
/// `HOOKGATE_LOG_FORMAT=json` JSON lines.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // Unset: hookgate's info lines, and only warnings of async-nats (which logs every
    // connect and close at info, as hookgate does itself).
    let mut filter = EnvFilter::try_from_env("HOOKGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    // lapin logs a returned (unroutable) message whole at warn: every forwarded header,
    // Authorization included, and the body. Never wanted, whatever HOOKGATE_LOG says; the
    // AMQP sink logs its own line without the contents.
    if let Ok(quiet) = "lapin::returned_messages=off".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: escape codes in a log file or journald are noise.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let _ = if std::env::var("HOOKGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Lets a repeated warning through at most every 10 s (a loop failing every few ms, such as
/// accept without file descriptors, would otherwise flood the log).
#[derive(Default)]
pub struct Throttle(Option<std::time::Instant>);

impl Throttle {
    pub fn ready(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .0
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}
