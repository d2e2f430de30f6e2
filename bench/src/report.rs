//! The results as Markdown: one table of the accept path against the ceiling, one of
//! deliveries, the verdict against the targets, and the run's facts. `write_into` replaces the
//! part of `docs/PERFORMANCE.md` between the result markers, leaving the prose around it.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use crate::run::{Level, Measured, Outcome};

pub const BEGIN: &str =
    "<!-- bench-results:begin (written by hookgate-bench; edits here are overwritten) -->";
pub const END: &str = "<!-- bench-results:end -->";

/// Targets of issue 2, at `TARGET_CONNS` connections.
pub const TARGET_CONNS: usize = 64;
pub const TARGET_RATIO: f64 = 0.35;
pub const TARGET_P99_MS: f64 = 5.0;
pub const GOAL_RATIO: f64 = 0.5;

pub struct Facts {
    pub date: String,
    pub command: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub commit: String,
    pub loadgen_cpu: usize,
    pub server_cpu: usize,
    pub backend: String,
    /// The sync call the binary links (`fdatasync`, `fsync`), as `nm` reads it.
    pub sync: String,
    pub log: String,
    pub warmup: String,
    pub duration: String,
    pub body_size: usize,
    pub loadavg_before: String,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn errors(m: &Measured) -> String {
    if m.load.errors_measured.is_empty() {
        return "0".into();
    }
    m.load
        .errors_measured
        .iter()
        .map(|(k, n)| format!("{n}× {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn row(out: &mut String, conns: usize, name: &str, m: &Measured, ratio: Option<f64>) {
    let h = &m.load.hist;
    let _ = writeln!(
        out,
        "| {conns} | {name} | {} | {} | {} | {} | {:.1} | {:.0}% | {:.0}% | {} | {} |",
        thousands(m.rps()),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        m.server_us_per_req(),
        m.server_core() * 100.0,
        m.loadgen_core() * 100.0,
        errors(m),
        ratio
            .map(|r| format!("**{r:.3}×**"))
            .unwrap_or_else(|| "1×".into()),
    );
}

const RELAY_NOTE: &str = "The **relay floor** is the ceiling's bare server plus one HTTP round trip to the same upstream per request (hyper-util's pooled client, as hookgate's HTTP sink, with its 32 deliveries in flight and the forwarded headers), answering `202` once the upstream answered: no verification, no store. hookgate's events make the same two exchanges, so the relay's rate bounds a gateway that delivers the same way from the same core.";

pub fn ratio(l: &Level) -> f64 {
    l.hookgate.rps() / l.ceiling.rps().max(1.0)
}

pub fn markdown(o: &Outcome, f: &Facts) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run of **{}** on `{}` (hookgate commit `{}`):\n",
        f.date, f.cpu_model, f.commit
    );
    let _ = writeln!(s, "```\n{}\n```\n", f.command);
    let _ = writeln!(
        s,
        "`nproc` = {}; CPU: {}. Generator + upstream pinned to CPU {}, server under test (ceiling, relay floor or hookgate, all its threads) to CPU {} with `taskset` (seen: ceiling `Cpus_allowed_list` = {}, {}hookgate = {}). Store backend: `{}` (hookgate's binary links `{}` for its syncs); `HOOKGATE_LOG={}`; {} warm-up + {} measured per level; {}-byte bodies, unique `Idempotency-Key` each, HMAC-SHA256 signed.\n",
        f.nproc,
        f.cpu_model,
        f.loadgen_cpu,
        f.server_cpu,
        o.ceiling_cpus,
        o.levels
            .first()
            .and_then(|l| l.relay_cpus.as_deref())
            .map(|c| format!("relay floor = {c}, "))
            .unwrap_or_default(),
        o.levels.first().map(|l| l.hookgate_cpus.as_str()).unwrap_or("?"),
        f.backend,
        f.sync,
        f.log,
        f.warmup,
        f.duration,
        f.body_size,
    );
    s.push_str("| conns | target | req/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | server core | generator core | errors | hookgate/ceiling |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for l in &o.levels {
        row(&mut s, l.conns, "ceiling", &l.ceiling, None);
        if let Some(r) = &l.relay {
            let to_ceiling = r.rps() / l.ceiling.rps().max(1.0);
            row(&mut s, l.conns, "relay floor", r, Some(to_ceiling));
        }
        row(&mut s, l.conns, "hookgate", &l.hookgate, Some(ratio(l)));
    }
    s.push('\n');
    let drift: Vec<String> = o
        .levels
        .iter()
        .map(|l| {
            let [a, b] = l.ceiling_runs;
            format!(
                "{}: {} / {} ({:+.0}%)",
                l.conns,
                thousands(a),
                thousands(b),
                (b - a) / a.max(1.0) * 100.0
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "The ceiling is measured just before and just after hookgate at each level and reported combined; before / after req/s (the machine's noise): {}. Load average before / after the run: {} / {}.\n",
        drift.join("; "),
        f.loadavg_before,
        o.loadavg_after,
    );
    if o.levels.iter().any(|l| l.relay.is_some()) {
        s.push_str(RELAY_NOTE);
        let per_level: Vec<String> = o
            .levels
            .iter()
            .filter_map(|l| {
                let r = l.relay.as_ref()?;
                Some(format!(
                    "{}: relay {:.1} µs/req, hookgate {:.3}× the relay's req/s",
                    l.conns,
                    r.server_us_per_req(),
                    l.hookgate.rps() / r.rps().max(1.0)
                ))
            })
            .collect();
        let _ = writeln!(s, " Per level: {}.\n", per_level.join("; "));
    }
    s.push_str("Deliveries (hookgate → upstream in the generator's process):\n\n");
    s.push_str("| conns | events acknowledged | delivered/s during load | backlog at end of load | delivered/s after load | backlog drained | duplicate deliveries | hookgate CPU µs per event, start to drained | sustained ratio | hookgate warn+error lines, log bytes |\n");
    s.push_str("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n");
    for l in &o.levels {
        let d = &l.delivery;
        let during = l.hookgate.delivered_in_window as f64 / l.hookgate.window.as_secs_f64();
        let after = d.drained_after_load as f64 / d.waited.as_secs_f64().max(1e-3);
        let drained = match d.drain {
            Some(t) => format!("yes, in {:.1} s", t.as_secs_f64()),
            None => format!(
                "**no**: {} left after {:.0} s",
                d.accepted_total.saturating_sub(d.distinct),
                d.waited.as_secs_f64()
            ),
        };
        // The ceiling's cost per request over hookgate's whole cost per event: the share of
        // the ceiling's rate hookgate could keep up for good on the same core.
        let (per_event, sustained) = match l.hookgate_us_per_event {
            Some(us) => (
                format!("{us:.1}"),
                format!("{:.3}×", l.ceiling.server_us_per_req() / us.max(1e-9)),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}, {} |",
            l.conns,
            d.accepted_total,
            thousands(during),
            d.backlog_at_end,
            if d.drained_after_load == 0 {
                "–".into()
            } else {
                thousands(after)
            },
            drained,
            d.deliveries.saturating_sub(d.distinct),
            per_event,
            sustained,
            l.hookgate_warnings,
            l.hookgate_log_bytes,
        );
    }
    s.push('\n');
    s.push_str(&verdict(o));
    s
}

pub fn verdict(o: &Outcome) -> String {
    let Some(l) = o.levels.iter().find(|l| l.conns == TARGET_CONNS) else {
        return format!("No level at {TARGET_CONNS} connections: no verdict.\n");
    };
    let r = ratio(l);
    let p99 = l.hookgate.load.hist.value_at_quantile(0.99) as f64 / 1000.0;
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let relay = l
        .relay
        .as_ref()
        .map(|m| {
            let floor = m.rps() / l.ceiling.rps().max(1.0);
            format!(
                " The relay floor reached **{floor:.3}×** the ceiling at {TARGET_CONNS} connections ({:.1} µs/req): the target is {:.0}% of what a gateway that only forwards does on this core, and hookgate reaches **{:.0}%** of it.",
                m.server_us_per_req(),
                TARGET_RATIO / floor.max(1e-9) * 100.0,
                r / floor.max(1e-9) * 100.0,
            )
        })
        .unwrap_or_default();
    format!(
        "At {TARGET_CONNS} connections: throughput **{r:.3}×** the ceiling (target ≥ {TARGET_RATIO}×: {}), p99 **{p99:.2} ms** (target ≤ {TARGET_P99_MS} ms: {}). \
         To reach {GOAL_RATIO}× hookgate needs {:.2}× its current requests/s ({:+.0}%), i.e. about {:.1} server CPU-µs per request instead of {:.1} at the same core use.{relay}\n",
        mark(r >= TARGET_RATIO),
        mark(p99 <= TARGET_P99_MS),
        GOAL_RATIO / r.max(1e-9),
        (GOAL_RATIO / r.max(1e-9) - 1.0) * 100.0,
        l.hookgate.server_us_per_req() * r / GOAL_RATIO,
        l.hookgate.server_us_per_req(),
    )
}

/// Replaces the results between the markers of `path` (creating the file if need be).
pub fn write_into(path: &Path, results: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path)
        .unwrap_or_else(|_| format!("# Performance\n\n{BEGIN}\n{END}\n"));
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        anyhow::bail!("{} has no result markers ({BEGIN} … {END})", path.display());
    };
    let mut out = String::with_capacity(doc.len() + results.len());
    out.push_str(&doc[..b + BEGIN.len()]);
    out.push('\n');
    out.push_str(results);
    out.push_str(&doc[e..]);
    std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
}
